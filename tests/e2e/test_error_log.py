"""Where a daemon's messages go, against nginx: fd 2 of the master and the workers is the
error log file (nginx's ngx_log_redirect_stderr), `error_log syslog:server=unix:PATH` sends
nginx's datagrams to a unix socket (and says so in the file log when nobody listens there),
and an exception nobody caught reaches the error log as one `[alert]` line."""

from __future__ import annotations

import os
import re
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.clients import LineClient
from support.masters import wait_for
from support.ports import free_port
from support.process import temp_dir

KIND = ["fastmail", "nginx"]


def no_auth_mail(port: int, extra: str = "") -> str:
    return f"auth_http 127.0.0.1:9/auth;\nserver {{ listen 127.0.0.1:{port}; protocol imap; }}\n{extra}"


@pytest.mark.parametrize("kind", KIND)
def test_stderr_of_a_daemon_is_its_error_log(kind, master):
    port = free_port()
    m = master(kind, no_auth_mail(port))
    pid = m.start(greet=port)
    workers = wait_for("the workers", lambda: len(m.watch(pid)) == 2 and m.watch(pid))
    for p in (pid, *workers):
        assert os.readlink(f"/proc/{p}/fd/2") == str(m.dir / "error.log")


@pytest.fixture
def syslog_dir() -> Iterator[Path]:
    d = temp_dir("fastmail-syslog-")
    yield d
    for p in d.iterdir():
        p.unlink()
    d.rmdir()


@pytest.mark.parametrize("kind", KIND)
def test_syslog_to_a_unix_socket(kind, master, syslog_dir):
    path = syslog_dir / "log.sock"
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(str(path))
    path.chmod(0o777)  # nginx's workers are nobody
    rx.settimeout(10)
    port = free_port()
    m = master(kind, no_auth_mail(port), main=f"error_log syslog:server=unix:{path} info;")
    m.start(greet=port)
    with LineClient("127.0.0.1", port) as c:
        c.greeting()
        local = c.sock.getsockname()[1]
    host = re.escape(socket.gethostname().lower())
    # local7.info = 190, the host name, nginx's default tag, then the whole log line
    shape = re.compile(
        rb"<190>[A-Z][a-z]{2} [ 123]\d \d\d:\d\d:\d\d " + host.encode() + rb" nginx: "
        rb"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[info\] \d+#\d+: \*\d+ client 127\.0\.0\.1:%d connected to 127\.0\.0\.1:%d"
        % (local, port)
    )
    deadline = time.monotonic() + 10
    while True:
        got = rx.recv(4096)
        if b"connected to" in got and b":%d " % local in got:
            break
        assert time.monotonic() < deadline
    rx.close()
    assert shape.fullmatch(got), got


@pytest.mark.parametrize("kind", KIND)
def test_syslog_socket_missing(kind, master, syslog_dir):
    """Nobody listens: the proxy serves all the same, and its file log says why syslog gets
    nothing (mainline nginx adds where: ` while logging to syslog, server: ...`)."""
    port = free_port()
    missing = syslog_dir / "missing.sock"
    m = master(kind, no_auth_mail(port), main=f"error_log syslog:server=unix:{missing} info;")
    m.start(greet=port)
    with LineClient("127.0.0.1", port) as c:
        assert c.greeting() == b"* OK IMAP4 ready\r\n"
    log = m.log()
    assert re.search(r"\[alert\] \d+#\d+: connect\(\) failed \(2: No such file or directory\)", log)


def test_a_non_ascii_sni_name_gets_the_default_server(master, certs):
    """A daemon with two server{} on one TLS address: a client's SNI name that is not ASCII
    (Python's ssl module used to raise inside its servername callback here) matches no
    server_name, so the first server{} answers, and the daemon goes on serving; uncaught
    exceptions reach the error log as [alert] lines (tests/unit/test_uncaught.py)."""
    port = free_port()
    tls = f"ssl_certificate {certs.server_cert}; ssl_certificate_key {certs.server_key};"
    servers = "".join(
        f"server {{ listen 127.0.0.1:{port} ssl; protocol imap; server_name {n}; {tls} }}\n"
        for n in ("a.test", "b.test")  # two names on one address: SNI chooses (beyond nginx)
    )
    m = master("fastmail", f"auth_http 127.0.0.1:9/auth;\n{servers}")
    m.start()
    wait_for("the listener", lambda: _connects(port))
    out = subprocess.run(
        [b"openssl", b"s_client", b"-connect", b"127.0.0.1:%d" % port, b"-ign_eof",
         b"-servername", "é.test".encode()],
        input=b"a LOGOUT\r\n", capture_output=True, timeout=20,
    )  # fmt: skip
    assert b"* OK IMAP4 ready" in out.stdout
    assert "[alert]" not in m.log() and "Traceback" not in m.log()
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="b.test") as t:
            assert t.recv(100) == b"* OK IMAP4 ready\r\n"


def _connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True
