"""The access log end to end (beyond nginx: nginx's mail modules have none): real clients
through fastmail to the fake backend and the reference auth server; one line per session with
what the client saw (its own address and port, the bytes it sent and read), escaped client
bytes (CR, LF, NUL, non-UTF-8 in a login name), valid JSON, no password nor token for any
login method, syslog to a unix datagram socket, reopen on USR1, and lines lost to a full pipe
counted, said once, and the rest kept."""

from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import json
import os
import re
import signal
import smtplib
import socket
import ssl
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fastmail.testing.authd import AuthServer
from fastmail.testing.backend import BackendServer
from support.clients import LineClient
from support.fastmail import Fastmail, add_user, config_test
from support.masters import gone, wait_for
from support.ports import free_port

PASSWORD = "Pw-9q7Zx"  # distinctive: found nowhere in a log line unless leaked
TOKEN = "ya29.Tok3n-abcdef"


@pytest.fixture
def backend(loop_thread) -> Iterator[BackendServer]:
    """The fake backend, taking any login."""
    be = BackendServer(users=None)
    for proto in ("imap", "pop3", "smtp"):
        loop_thread.run(be.listen(proto))
    try:
        yield be
    finally:
        loop_thread.run(be.stop())


@pytest.fixture
def run() -> Iterator[Callable[..., Fastmail]]:
    """`run(mail_body, main="")`: fastmail (one process) with its prefix's logs/ directory."""
    made: list[Fastmail] = []

    def start(
        mail: str, main: str = "", greetings: list[tuple[int, bytes]] | None = None
    ) -> Fastmail:
        f = Fastmail(mail, greetings or [], main=main)
        made.append(f)
        return f.start()

    yield start
    for f in made:
        f.stop()


def users(authd: AuthServer, backend: BackendServer) -> None:
    be = {p: ("127.0.0.1", backend.port(p)) for p in ("imap", "pop3", "smtp")}
    add_user(authd, "alice", PASSWORD, be, store_plain=True)


def lines(path: Path, n: int, timeout: float = 10.0) -> list[str]:
    """The log's lines once there are `n` (never more)."""

    def read() -> list[str] | None:
        text = path.read_text(errors="surrogateescape") if path.exists() else ""
        got = text.splitlines()
        assert len(got) <= n, got
        return got if len(got) == n and text.endswith("\n") else None

    return wait_for(f"{n} lines in {path.name}", read, timeout)


COMBINED = re.compile(
    r"(?P<client>\S+) \[(?P<time>[^]]+)\] (?P<protocol>\w+) (?P<server>\S+) "
    r'"(?P<login>[^"]*)" (?P<method>\S+) (?P<result>\S+) (?P<reason>\S+) (?P<upstream>\S+) '
    r"(?P<bytes_in>\d+) (?P<bytes_out>\d+) (?P<duration>\d+\.\d{3}) (?P<tls_protocol>\S+) "
    r"(?P<tls_cipher>\S+) (?P<end>\S+) (?P<session>\d+-\d+)"
)


def test_one_line_per_session_with_what_the_client_saw(run, authd0, backend):
    users(authd0, backend)
    port = free_port()
    f = run(f"auth_http {authd0.url};\naccess_log logs/access.log;\n"
            f"server {{ listen 127.0.0.1:{port}; protocol imap; }}", greetings=[(port, b"* OK")])  # fmt: skip
    log = f.dir / "logs" / "access.log"
    probes = len(lines(log, 1))  # the readiness probe's session
    with LineClient("127.0.0.1", port) as c:
        me = c.sock.getsockname()[1]
        sent = received = b""
        received += c.greeting()
        for line in (f"a LOGIN alice {PASSWORD}\r\n".encode(), b"b NOOP\r\n", b"c LOGOUT\r\n"):
            c.send(line)
            sent += line
            received += c.read_until(line[:2] + b"OK")
        received += c.read_all()
    with LineClient("127.0.0.1", port) as c:  # a wrong password: the proxy closes
        c.greeting()
        c.send(b"a LOGIN alice nope\r\n")
        c.read_all()
    got = [COMBINED.fullmatch(x) for x in lines(log, probes + 2)[probes:]]
    assert all(got), lines(log, probes + 2)
    ok, bad = got[0].groupdict(), got[1].groupdict()
    assert ok["client"] == f"127.0.0.1:{me}"
    assert (ok["protocol"], ok["server"], ok["login"], ok["method"]) == (
        "imap", f"127.0.0.1:{port}", "alice", "plain")  # fmt: skip
    assert (ok["result"], ok["reason"], ok["end"]) == ("ok", "none", "backend_closed")
    assert ok["upstream"] == f"127.0.0.1:{backend.port('imap')}"
    assert (int(ok["bytes_in"]), int(ok["bytes_out"])) == (len(sent), len(received))
    assert (ok["tls_protocol"], ok["tls_cipher"]) == ("-", "-")
    assert time.strptime(ok["time"], "%d/%b/%Y:%H:%M:%S %z")
    assert ok["session"].startswith(f"{f.serving_pid}-")
    assert (bad["login"], bad["result"], bad["reason"], bad["upstream"], bad["end"]) == (
        "alice", "failed", "credentials", "-", "auth_failed")  # fmt: skip
    assert PASSWORD not in log.read_text()


def test_tls_and_json(run, authd0, backend, certs):
    users(authd0, backend)
    port = free_port()
    f = run(f"auth_http {authd0.url};\naccess_log logs/access.json json;\n"
            f"server {{ listen 127.0.0.1:{port} ssl; protocol imap; server_name mx.test;"
            f" ssl_certificate {certs.server_cert}; ssl_certificate_key {certs.server_key}; }}")  # fmt: skip
    log = f.dir / "logs" / "access.json"
    wait_for("the listener", lambda: _connects(port))
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="mx.test") as t:
            version, cipher = t.version(), t.cipher()[0]  # type: ignore[index]
            assert t.recv(100).startswith(b"* OK")
            t.sendall(f"a LOGIN alice {PASSWORD}\r\nb LOGOUT\r\n".encode())
            while t.recv(1000):
                pass
    rows = [json.loads(x) for x in lines(log, 2)]  # the listener probe, then the session
    row = rows[1]
    assert (row["tls_protocol"], row["tls_cipher"]) == (version, cipher)
    assert (row["login"], row["auth_result"], row["server_name"]) == ("alice", "ok", "mx.test")
    assert isinstance(row["bytes_in"], int) and isinstance(row["duration"], float)
    assert rows[0]["login"] == "" and rows[0]["end_reason"] == "error"  # no handshake


def _connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def test_client_bytes_are_escaped(run, authd0, backend):
    """A login name with CR, LF, NUL, a quote, a backslash and bytes that are not UTF-8
    stays on its one line: nginx's \\xHH in the default format, JSON's escapes (invalid
    UTF-8 as \\u00HH) in the json one."""
    users(authd0, backend)
    port = free_port()
    f = run(f"auth_http {authd0.url};\naccess_log logs/a.log;\naccess_log logs/a.json json;\n"
            f"server {{ listen 127.0.0.1:{port}; protocol imap; imap_auth login; }}",
            greetings=[(port, b"* OK")])  # fmt: skip
    text, js = f.dir / "logs" / "a.log", f.dir / "logs" / "a.json"
    probes = len(lines(text, 1))
    name = b'ev\r\nil"\\\x00\xff\xfe\xc3\xa9x'
    with LineClient("127.0.0.1", port) as c:
        c.greeting()
        c.send(b"a AUTHENTICATE LOGIN\r\n")
        c.read_until(b"+ ")
        c.read_line()
        c.send(base64.b64encode(name) + b"\r\n")
        c.read_until(b"+ ")
        c.read_line()
        c.send(base64.b64encode(PASSWORD.encode()) + b"\r\n")
        c.read_all()
    [line] = lines(text, probes + 1)[probes:]
    assert '"ev\\x0D\\x0Ail\\x22\\x5C\\x00\\xFF\\xFE\\xC3\\xA9x"' in line
    [row] = [json.loads(x) for x in lines(js, probes + 1)[probes:]]
    assert row["login"] == 'ev\r\nil"\\\x00\xff\xfeéx'  # bytes not UTF-8 as their code points
    assert row["auth_method"] == "plain"  # nginx's Auth-Method for SASL LOGIN too


def _b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def test_no_password_or_token_for_any_login_method(run, authd0, backend):
    users(authd0, backend)
    imap, pop3, smtp, sieve = (free_port() for _ in range(4))
    f = run(
        f"auth_http {authd0.url};\naccess_log logs/a.log;\naccess_log logs/a.json json;\n"
        f"server {{ listen 127.0.0.1:{imap}; protocol imap;"
        " imap_auth plain login cram-md5 xoauth2 oauthbearer; }\n"
        f"server {{ listen 127.0.0.1:{pop3}; protocol pop3; pop3_auth plain apop cram-md5; }}\n"
        f"server {{ listen 127.0.0.1:{smtp}; protocol smtp; smtp_auth plain login cram-md5; }}\n"
        f"server {{ listen 127.0.0.1:{sieve}; protocol sieve; }}\n",
        main="",
        greetings=[(imap, b"* OK")],
    )
    plain = _b64(f"\0alice\0{PASSWORD}")
    xoauth = _b64(f"user=alice\1auth=Bearer {TOKEN}\1\1")
    bearer = _b64(f"n,a=alice,\1auth=Bearer {TOKEN}\1\1")

    def dialogue(port: int, steps: list[bytes]) -> None:
        with LineClient("127.0.0.1", port) as c:
            c.read_until(b"\r\n")
            try:
                for step in steps:
                    c.send(step)
                    time.sleep(0.05)
                c.sock.shutdown(socket.SHUT_WR)
                c.read_all(timeout=10)
            except OSError:
                pass  # the proxy closed first (a refused login)

    def cram(challenge_b64: bytes) -> bytes:
        digest = hmac.new(PASSWORD.encode(), base64.b64decode(challenge_b64), "md5").hexdigest()
        return base64.b64encode(f"alice {digest}".encode())

    dialogue(imap, [f"a LOGIN alice {PASSWORD}\r\n".encode(), b"z LOGOUT\r\n"])
    dialogue(imap, [f"a AUTHENTICATE PLAIN {plain}\r\n".encode(), b"z LOGOUT\r\n"])
    dialogue(imap, [b"a AUTHENTICATE LOGIN\r\n", _b64("alice").encode() + b"\r\n",
                    _b64(PASSWORD).encode() + b"\r\n", b"z LOGOUT\r\n"])  # fmt: skip
    dialogue(imap, [f"a AUTHENTICATE XOAUTH2 {xoauth}\r\n".encode(), b"\r\n"])
    dialogue(imap, [f"a AUTHENTICATE OAUTHBEARER {bearer}\r\n".encode(), b"\r\n"])
    with LineClient("127.0.0.1", imap) as c:  # CRAM-MD5 needs the challenge
        c.greeting()
        c.send(b"a AUTHENTICATE CRAM-MD5\r\n")
        challenge = c.read_line()[2:].strip()
        c.send(cram(challenge) + b"\r\n")
        c.read_until(b"a OK")
        c.send(b"z LOGOUT\r\n")
        c.read_all()
    dialogue(pop3, [b"USER alice\r\n", f"PASS {PASSWORD}\r\n".encode(), b"QUIT\r\n"])
    dialogue(pop3, [f"AUTH PLAIN {plain}\r\n".encode(), b"QUIT\r\n"])
    with LineClient("127.0.0.1", pop3) as c:
        stamp = re.search(rb"<[^>]+>", c.greeting())
        assert stamp is not None
        digest = hashlib.md5(stamp.group(0) + PASSWORD.encode()).hexdigest()
        c.send(f"APOP alice {digest}\r\n".encode())
        c.read_until(b"+OK")
        c.send(b"QUIT\r\n")
        c.read_all()
    with smtplib.SMTP("127.0.0.1", smtp, timeout=10) as cl:
        cl.login("alice", PASSWORD)  # smtplib picks CRAM-MD5 first
    for mech in ("PLAIN", "LOGIN"):
        with smtplib.SMTP("127.0.0.1", smtp, timeout=10) as cl:
            cl.ehlo()
            cl.user, cl.password = "alice", PASSWORD
            auth = cl.auth_plain if mech == "PLAIN" else cl.auth_login
            cl.auth(mech, auth)
    dialogue(sieve, [f'AUTHENTICATE "PLAIN" "{plain}"\r\n'.encode(), b"LOGOUT\r\n"])
    sessions = 13
    a_log = f.dir / "logs" / "a.log"
    probes = 1
    got = lines(a_log, probes + sessions, timeout=15)
    rows = [json.loads(x) for x in lines(f.dir / "logs" / "a.json", probes + sessions)]
    methods = {r["auth_method"] for r in rows}
    assert methods >= {"plain", "cram-md5", "xoauth2", "oauthbearer", "apop"}
    secrets = [PASSWORD, TOKEN, plain, xoauth, bearer, _b64(PASSWORD), _b64(TOKEN)]
    logs = "\n".join(got) + (f.dir / "logs" / "a.json").read_text() + f.error_log()
    for s in secrets:
        assert s not in logs, s


def test_syslog_to_a_unix_socket(run, authd0, backend, tmp_path):
    users(authd0, backend)
    path = tmp_path / "log.sock"
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(str(path))
    rx.settimeout(10)
    port = free_port()
    run(f"auth_http {authd0.url};\n"
        f"access_log syslog:server=unix:{path},facility=mail,tag=mailproxy json;\n"
        f"server {{ listen 127.0.0.1:{port}; protocol imap; }}", greetings=[(port, b"* OK")])  # fmt: skip
    rx.recv(65536)  # the readiness probe's
    with LineClient("127.0.0.1", port) as c:
        c.greeting()
        c.send(f"a LOGIN alice {PASSWORD}\r\nb LOGOUT\r\n".encode())
        c.read_all()
    got = rx.recv(65536)
    rx.close()
    host = socket.gethostname().lower().encode()
    # mail.info = 2 * 8 + 6, nginx's syslog header, then the line (no newline)
    m = re.fullmatch(rb"<22>[A-Z][a-z]{2} [ 123]\d \d\d:\d\d:\d\d " + re.escape(host)
                     + rb" mailproxy: (\{.*\})", got)  # fmt: skip
    assert m, got
    row = json.loads(m.group(1))
    assert (row["login"], row["auth_result"]) == ("alice", "ok")


def test_reopen_on_usr1(run, authd0, backend):
    users(authd0, backend)
    port = free_port()
    f = run(f"auth_http {authd0.url};\naccess_log logs/access.log combined buffer=32k flush=10s;\n"
            f"server {{ listen 127.0.0.1:{port}; protocol imap; }}", greetings=[(port, b"* OK")])  # fmt: skip
    log = f.dir / "logs" / "access.log"
    for _ in range(3):
        _login(port)
    time.sleep(0.2)
    assert not log.read_text()  # buffered: nothing written before the buffer fills or flush=
    log.rename(f.dir / "logs" / "access.log.1")
    os.kill(f.serving_pid, signal.SIGUSR1)
    wait_for("the new file", log.exists)
    old = lines(f.dir / "logs" / "access.log.1", 4)  # the probe and 3 sessions, written at reopen
    assert all("alice" in x for x in old[1:])
    _login(port)
    f.proc.send_signal(signal.SIGQUIT)
    f.proc.wait(10)
    [new] = lines(log, 1)  # written at exit
    assert "alice" in new


def _login(port: int) -> None:
    with LineClient("127.0.0.1", port) as c:
        c.greeting()
        c.send(f"a LOGIN alice {PASSWORD}\r\nb LOGOUT\r\n".encode())
        c.read_all()


def test_a_full_pipe_loses_lines_counted_and_said_once(run, authd0, backend, tmp_path):
    """A FIFO whose reader does not read: the lines that do not fit (the pipe, then a bounded
    pending buffer) are lost, counted in the metrics, said by one [alert]; once the reader
    drains it, every line kept arrives and a [notice] says how many were lost."""
    fifo = tmp_path / "access.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    fcntl.fcntl(reader, 1031, 4096)  # F_SETPIPE_SZ: one page
    port, mport = free_port(), free_port()
    pad = "x" * 4000  # 4 KB lines: the pending bound (256 KiB) holds about 60
    f = run(f"auth_http {authd0.url};\nlog_format big '$session_id {pad}';\n"
        f"access_log {fifo} big;\nserver {{ listen 127.0.0.1:{port}; protocol imap; }}",
        main=f"metrics_listen 127.0.0.1:{mport};", greetings=[(port, b"* OK")])  # fmt: skip
    sessions = 120
    for _ in range(sessions):
        with LineClient("127.0.0.1", port) as c:
            c.greeting()
            c.send(b"a LOGOUT\r\n")
            c.read_all()

    def dropped() -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5) as r:
            text = r.read().decode()
        m = re.search(r'fastmail_access_log_dropped_lines_total\{log="[^"]+"\} (\d+)', text)
        assert m, text
        return float(m.group(1))

    lost = wait_for("lost lines", lambda: dropped() or None)
    got = b""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            chunk = os.read(reader, 65536)
        except BlockingIOError:
            chunk = b""
        got += chunk
        if got.count(b"\n") + lost >= sessions + 1:  # the readiness probe's line too
            break
        if not chunk:
            time.sleep(0.05)
    os.close(reader)
    kept = got.count(b"\n")
    assert kept + lost == sessions + 1
    assert 0 < lost < sessions
    assert all(x.endswith(pad.encode()) for x in got.splitlines())  # whole lines only
    errors = f.error_log()
    assert errors.count("[alert]") == 1, errors
    assert re.search(rf"\[alert\] \d+#\d+: access log {fifo}: the file does not take lines "
                     "fast enough, lines are lost", errors)  # fmt: skip
    f.wait_log("[notice] ", timeout=5)
    assert f"access log {fifo} takes lines again, {int(lost)} were lost" in f.error_log()


def test_a_file_that_cannot_be_opened_stops_the_start(tmp_path):
    (tmp_path / "logs").mkdir()  # the error log and pid file open; the access log cannot
    conf = tmp_path / "f.conf"
    conf.write_text(
        "events {}\nmail { auth_http 127.0.0.1:9/auth;\n"
        f"access_log {tmp_path}/missing/dir/access.log;\n"
        "server { listen 127.0.0.1:1; protocol imap; } }\n"
    )
    out = config_test("-p", f"{tmp_path}/", "-c", str(conf))
    assert out.returncode == 1
    assert (
        f'[emerg] open() "{tmp_path}/missing/dir/access.log" failed (2: No such file or directory)'
        in out.stderr
    )


def test_a_master_and_two_workers_share_the_file_across_reload_and_usr1(master, authd0, backend):
    """The master opens the file before fork; every worker writes whole lines to it; a
    reload that changes the format takes effect in the new workers; USR1 to the master makes
    every worker reopen the path (a rotated file keeps what was written before)."""
    users(authd0, backend)
    port = free_port()
    body = (f"auth_http {authd0.url};\nlog_format short 'FORMAT $login $end_reason';\n"
            f"access_log logs/access.log {{fmt}};\n"
            f"server {{{{ listen 127.0.0.1:{port}; protocol imap; }}}}")  # fmt: skip
    m = master("fastmail", body.format(fmt="combined"), daemon=False, workers=2)
    (m.dir / "logs").mkdir(exist_ok=True)
    pid = m.start(greet=port)
    log = m.dir / "logs" / "access.log"
    probes = len(lines(log, 1))
    for _ in range(6):
        _login(port)
    got = lines(log, probes + 6)[probes:]
    assert all(COMBINED.fullmatch(x) and '"alice"' in x for x in got), got
    old = m.watch(pid)
    m.conf.write_text(m.conf.read_text().replace("access.log combined;", "access.log short;"))
    os.kill(pid, signal.SIGHUP)
    wait_for("the old workers to exit", lambda: all(gone(p) for p in old))
    wait_for("two new workers", lambda: len(m.watch(pid)) == 2)
    _login(port)
    assert lines(log, probes + 7)[-1] == "FORMAT alice backend_closed"
    log.rename(log.with_suffix(".log.1"))
    os.kill(pid, signal.SIGUSR1)
    wait_for("the new file", log.exists)
    for _ in range(4):  # whichever worker takes it, into the new file
        _login(port)
    assert lines(log, 4) == ["FORMAT alice backend_closed"] * 4
    assert len(lines(log.with_suffix(".log.1"), probes + 7)) == probes + 7
