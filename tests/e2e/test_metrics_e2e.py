"""Prometheus metrics end to end (beyond nginx: `metrics_listen`): a real master with two
workers, real clients through it to the fake backend and the reference auth server, and the
scrape read with prometheus_client's parser. The counters equal the sessions each test made
(as deltas: the readiness probes count too), summed over both workers, and stay monotonic
across a reload and a killed worker."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fastmail.testing.authd import AuthServer
from support.clients import LineClient
from support.fastmail import add_user, listening_ports
from support.masters import gone, wait_for
from support.ports import free_port

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = r.read().decode()
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in out, f"duplicate sample {key}"
            out[key] = s.value
    return out


def val(m: Samples, name: str, **labels: str) -> float:
    return m[(name, frozenset(labels.items()))]


def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after[key] - before.get(key, 0.0)


def all_closed(port: int, servers: list[dict[str, str]]) -> Samples | None:
    """A scrape once no client connection is open (a session's end is counted before its
    connection stops counting as open)."""
    m = scrape(port)
    if all(val(m, "fastmail_connections_open", **s) == 0 for s in servers):
        return m
    return None


class Setup:
    def __init__(self, master: Callable[..., object], authd: AuthServer, backend: object) -> None:
        self.imap, self.pop3, self.smtp, self.down, self.metrics = (free_port() for _ in range(5))
        be = backend.port  # type: ignore[attr-defined]
        add_user(
            authd,
            "alice",
            "secret",
            {"imap": ("127.0.0.1", be("imap")), "pop3": ("127.0.0.1", be("pop3")),
             "smtp": ("127.0.0.1", be("smtp"))},
            True,
        )  # fmt: skip
        # a user whose backend refuses connections
        closed = free_port()
        add_user(authd, "carl", "secret", {"imap": ("127.0.0.1", closed)}, True)
        mail = f"""
            auth_http {authd.url};
            server_name mx.test;
            access_log access.log;
            server {{ listen 127.0.0.1:{self.imap}; protocol imap; }}
            server {{ listen 127.0.0.1:{self.pop3}; protocol pop3; }}
            server {{ listen 127.0.0.1:{self.smtp}; protocol smtp; smtp_auth plain; }}
            server {{ listen 127.0.0.1:{self.down}; protocol imap;
                      auth_http 127.0.0.1:{closed}/auth; }}
        """
        self.m = master("fastmail", mail, daemon=False, workers=2,
                        main=f"metrics_listen 127.0.0.1:{self.metrics};")  # fmt: skip
        self.pid = self.m.start(greet=self.imap)  # type: ignore[attr-defined]
        self.servers = [
            {"protocol": "imap", "server": f"127.0.0.1:{self.imap}"},
            {"protocol": "pop3", "server": f"127.0.0.1:{self.pop3}"},
            {"protocol": "smtp", "server": f"127.0.0.1:{self.smtp}"},
            {"protocol": "imap", "server": f"127.0.0.1:{self.down}"},
        ]

    def settled(self) -> Samples:
        return wait_for("no open connection", lambda: all_closed(self.metrics, self.servers))


def imap_session(port: int, password: str = "secret") -> tuple[int, int, bool]:
    """A login, a NOOP, a LOGOUT: (bytes relayed up, bytes relayed down, logged in)."""
    with LineClient("127.0.0.1", port) as c:
        greeting = c.greeting()
        login = f"a LOGIN alice {password}\r\n".encode()
        c.send(login)
        reply = c.read_until(b"\r\n")
        if not reply.startswith(b"a OK"):
            c.read_all()
            return 0, 0, False
        sent = [b"b NOOP\r\n", b"c LOGOUT\r\n"]
        c.send(sent[0])
        got = reply + c.read_until(b"b OK")
        c.send(sent[1])
        got += c.read_all()
        assert b"c OK" in got
    del greeting
    return sum(map(len, sent)), len(got), True


def test_counters_equal_the_sessions_made(master, authd0, fake_backend):
    s = Setup(master, authd0, fake_backend)
    imap, pop3, smtp, down = s.servers
    before = s.settled()
    ups = downs = 0
    for _ in range(3):
        up, dn, ok = imap_session(s.imap)
        assert ok
        ups, downs = ups + up, downs + dn
    for _ in range(2):
        assert not imap_session(s.imap, "wrong")[2]
    with LineClient("127.0.0.1", s.imap) as c:  # quits before any login
        c.greeting()
        c.send(b"a LOGOUT\r\n")
        assert b"a OK" in c.read_all()
    for _ in range(2):
        with LineClient("127.0.0.1", s.pop3) as c:
            c.greeting()
            assert c.command("USER alice").startswith(b"+OK")
            assert c.command("PASS secret").startswith(b"+OK")
            c.send(b"QUIT\r\n")
            c.read_all()
    with smtplib.SMTP("127.0.0.1", s.smtp, timeout=10) as cl:
        cl.login("alice", "secret")
    with LineClient("127.0.0.1", s.down) as c:  # auth_http unreachable
        c.greeting()
        c.send(b"a LOGIN alice secret\r\n")
        assert c.read_all() == b"* BAD internal server error\r\n"
    after = s.settled()

    def d(name: str, labels: dict[str, str], **more: str) -> float:
        return delta(after, before, name, **labels, **more)

    assert d("fastmail_connections_accepted_total", imap) == 6
    assert d("fastmail_connections_accepted_total", pop3) == 2
    assert d("fastmail_connections_accepted_total", smtp) == 1
    assert d("fastmail_connections_accepted_total", down) == 1
    assert d("fastmail_logins_total", imap, result="ok", reason="none") == 3
    assert d("fastmail_logins_total", imap, result="failed", reason="credentials") == 2
    assert d("fastmail_logins_total", pop3, result="ok", reason="none") == 2
    assert d("fastmail_logins_total", smtp, result="ok", reason="none") == 1
    assert d("fastmail_logins_total", down, result="tempfailed", reason="auth_http") == 1
    assert d("fastmail_auth_http_request_seconds_count", imap) == 5
    assert d("fastmail_backend_connect_seconds_count", imap) == 3
    assert d("fastmail_backend_login_seconds_count", imap) == 3
    assert d("fastmail_backend_login_seconds_bucket", imap, le="+Inf") == 3
    assert d("fastmail_relay_bytes_total", imap, direction="client_to_backend") == ups
    assert d("fastmail_relay_bytes_total", imap, direction="backend_to_client") == downs
    assert d("fastmail_relays_active", imap) == 0
    ended = {
        r: d("fastmail_sessions_ended_total", imap, reason=r)
        for r in ("backend_closed", "auth_failed", "quit")
    }
    assert ended == {"backend_closed": 3, "auth_failed": 2, "quit": 1}
    assert d("fastmail_sessions_ended_total", down, reason="auth_error") == 1
    assert d("fastmail_sessions_ended_total", pop3, reason="backend_closed") == 2
    # one access log line per session, each counted (the prefix's access.log, both workers)
    assert d("fastmail_access_log_lines_total", {"log": "access.log"}) == 10
    assert d("fastmail_access_log_dropped_lines_total", {"log": "access.log"}) == 0
    written = (s.m.dir / "access.log").read_text().splitlines()  # type: ignore[attr-defined]
    assert len(written) == val(after, "fastmail_access_log_lines_total", log="access.log")
    assert val(after, "fastmail_worker_processes") == 2
    for role in ("master", "worker"):
        assert val(after, "fastmail_process_resident_memory_bytes", role=role) > 1 << 20
        assert val(after, "fastmail_process_open_fds", role=role) > 3


def test_backend_failures_by_kind(master, authd0, fake_backend):
    s = Setup(master, authd0, fake_backend)
    imap = s.servers[0]
    before = s.settled()
    with LineClient("127.0.0.1", s.imap) as c:
        c.greeting()
        c.send(b"a LOGIN carl secret\r\n")  # his backend refuses connections
        assert c.read_all() == b"* BAD internal server error\r\n"
    after = s.settled()
    assert delta(after, before, "fastmail_backend_errors_total", **imap, kind="connect") == 1
    assert delta(after, before, "fastmail_logins_total", **imap,
                 result="tempfailed", reason="backend") == 1  # fmt: skip
    assert delta(after, before, "fastmail_sessions_ended_total", **imap,
                 reason="backend_error") == 1  # fmt: skip
    assert delta(after, before, "fastmail_backend_connect_seconds_count", **imap) == 0


def test_a_backend_failover_counts_each_backend_that_failed(master, authd0, fake_backend):
    """proxy_next_upstream_tries: each backend that could not be reached is a backend error,
    the login one outcome (ok through the next backend, or the last failure's)."""
    imap, mport = free_port(), free_port()
    down1, down2 = free_port(), free_port()
    good = ("127.0.0.1", fake_backend.port("imap"))
    add_user(authd0, "alice", "secret", {"imap": [("127.0.0.1", down1), good]}, True)
    add_user(authd0, "erin", "secret", {"imap": [("127.0.0.1", down1), ("127.0.0.1", down2)]},
             True)  # fmt: skip
    m = master("fastmail", f"auth_http {authd0.url}; proxy_next_upstream_tries 2;\n"
               f"server {{ listen 127.0.0.1:{imap}; protocol imap; }}", daemon=False,
               workers=1, main=f"metrics_listen 127.0.0.1:{mport};")  # fmt: skip
    m.start(greet=imap)
    lead = {"protocol": "imap", "server": f"127.0.0.1:{imap}"}
    before = wait_for("no open connection", lambda: all_closed(mport, [lead]))
    with LineClient("127.0.0.1", imap) as c:
        c.greeting()
        c.send(b"a LOGIN alice secret\r\n")
        assert c.read_until(b"\r\n").startswith(b"a OK")
        c.send(b"b LOGOUT\r\n")
        c.read_all()
    with LineClient("127.0.0.1", imap) as c:
        c.greeting()
        c.send(b"a LOGIN erin secret\r\n")
        assert c.read_all() == b"* BAD internal server error\r\n"
    after = wait_for("no open connection", lambda: all_closed(mport, [lead]))

    def d(name: str, **more: str) -> float:
        return delta(after, before, name, **lead, **more)

    assert d("fastmail_backend_errors_total", kind="connect") == 3
    assert d("fastmail_logins_total", result="ok", reason="none") == 1
    assert d("fastmail_logins_total", result="tempfailed", reason="backend") == 1
    assert d("fastmail_auth_http_request_seconds_count") == 4  # each asked twice
    assert d("fastmail_backend_connect_seconds_count") == 1  # the one that connected
    assert d("fastmail_backend_login_seconds_count") == 1


def test_counters_stay_monotonic_across_a_reload_and_a_killed_worker(master, authd0, fake_backend):
    s = Setup(master, authd0, fake_backend)
    imap = s.servers[0]
    for _ in range(2):
        assert imap_session(s.imap)[2]
    first = s.settled()
    ok = val(first, "fastmail_logins_total", **imap, result="ok", reason="none")
    old = s.m.watch(s.pid)  # type: ignore[attr-defined]
    os.kill(s.pid, signal.SIGHUP)
    wait_for("the old workers to exit", lambda: all(gone(p) for p in old))
    wait_for("two new workers", lambda: len(s.m.watch(s.pid)) == 2)  # type: ignore[attr-defined]
    m = s.settled()
    assert val(m, "fastmail_logins_total", **imap, result="ok", reason="none") == ok
    for key, value in first.items():
        if key[0].endswith(("_total", "_count", "_bucket", "_sum")):
            assert m[key] >= value, key  # nothing went backwards
    assert imap_session(s.imap)[2]
    victim = sorted(s.m.watch(s.pid))[0]  # type: ignore[attr-defined]
    assert imap_session(s.imap)[2]
    os.kill(victim, signal.SIGKILL)
    wait_for("the killed worker's respawn",
             lambda: gone(victim) and len(s.m.watch(s.pid)) == 2)  # type: ignore[attr-defined]  # fmt: skip
    m = s.settled()
    assert val(m, "fastmail_logins_total", **imap, result="ok", reason="none") == ok + 2
    assert val(m, "fastmail_worker_processes") == 2


def test_tls_handshakes_full_resumed_failed(master, authd0, fake_backend, certs):
    port, mport = free_port(), free_port()
    tls = f"ssl_certificate {certs.server_cert}; ssl_certificate_key {certs.server_key};"
    m = master("fastmail", f"auth_http {authd0.url};\nserver {{ listen 127.0.0.1:{port} ssl;"
               f" protocol imap; {tls} }}", daemon=False, workers=1,
               main=f"metrics_listen 127.0.0.1:{mport};")  # fmt: skip
    m.start()
    labels = {"protocol": "imap", "server": f"127.0.0.1:{port}"}
    wait_for("the metrics listener", lambda: _answers(mport))
    before = scrape(mport)
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    ctx.check_hostname = False
    session = None
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as t:
                assert t.recv(100).startswith(b"* OK")  # TLS 1.3: the ticket came with it
                t.sendall(b"a LOGOUT\r\n")
                while t.recv(100):
                    pass
                session = t.session
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(b"a LOGIN not tls\r\n")
        raw.settimeout(10)
        try:
            while raw.recv(100):
                pass
        except ConnectionResetError:
            pass
    after = wait_for("the failed handshake's count",
                     lambda: _at_least(mport, "fastmail_tls_handshakes_total", 1,
                                       **labels, side="client", result="failed"))  # fmt: skip
    got = {r: delta(after, before, "fastmail_tls_handshakes_total", **labels, side="client",
                    result=r) for r in ("full", "resumed", "failed")}  # fmt: skip
    assert got == {"full": 1, "resumed": 1, "failed": 1}


def _answers(port: int) -> bool:
    try:
        scrape(port)
    except (OSError, urllib.error.URLError):
        return False
    return True


def _at_least(port: int, name: str, n: float, **labels: str) -> Samples | None:
    m = scrape(port)
    return m if val(m, name, **labels) >= n else None


def test_only_get_metrics_is_served(master, authd0, fake_backend):
    s = Setup(master, authd0, fake_backend)
    base = f"http://127.0.0.1:{s.metrics}"
    for path, method, code in (("/", "GET", 404), ("/metrics", "POST", 405),
                               ("/other", "GET", 404)):  # fmt: skip
        req = urllib.request.Request(
            base + path, method=method, data=b"" if method == "POST" else None
        )
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=5)
        assert e.value.code == code
    req = urllib.request.Request(base + "/metrics?x=1", method="HEAD")
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 200 and int(r.headers["Content-Length"]) > 1000 and r.read() == b""
    # a client that sends garbage and one that sends nothing get closed, the others go on
    with socket.create_connection(("127.0.0.1", s.metrics), timeout=10) as c:
        c.sendall(b"\x00\xff garbage\r\n\r\n")
        assert c.recv(100).startswith(b"HTTP/1.1 400 Bad Request")
    idle = socket.create_connection(("127.0.0.1", s.metrics), timeout=10)
    assert scrape(s.metrics)
    idle.close()


def test_off_by_default(master, authd0):
    """Without metrics_listen nothing more listens than the mail server."""
    port = free_port()
    m = master("fastmail", f"auth_http {authd0.url};\nserver {{ listen 127.0.0.1:{port};"
               " protocol imap; }", daemon=False, workers=1)  # fmt: skip
    pid = m.start(greet=port)
    for p in (pid, *m.watch(pid)):
        assert listening_ports(p) == {port}


def test_a_binary_upgrade_takes_the_metrics_socket_over(master, authd0, fake_backend):
    """USR2: the new master inherits the metrics listener with the mail sockets (binding it
    again would fail while the old master holds it); once the old master quit, the new
    workers answer, with counters of their own (a new master starts from zero)."""
    port, mport = free_port(), free_port()
    add_user(authd0, "alice", "secret", {"imap": ("127.0.0.1", fake_backend.port("imap"))})
    m = master("fastmail", f"auth_http {authd0.url};\nserver {{ listen 127.0.0.1:{port};"
               " protocol imap; }", main=f"metrics_listen 127.0.0.1:{mport};")  # fmt: skip
    old = m.start(greet=port)
    assert imap_session(port)[2]
    labels = {"protocol": "imap", "server": f"127.0.0.1:{port}"}
    before = wait_for("the old master's login", lambda: _at_least(
        mport, "fastmail_logins_total", 1, **labels, result="ok", reason="none"))  # fmt: skip
    assert val(before, "fastmail_worker_processes") == 2
    os.kill(old, signal.SIGUSR2)
    new = wait_for("the new pid file", lambda: m.read_pid() not in (0, old) and m.read_pid())
    wait_for("the new workers", lambda: len(m.watch(new)) == 2)
    os.kill(old, signal.SIGQUIT)
    wait_for("the old master to exit", lambda: gone(old))
    assert "bind() to" not in m.log()
    after = scrape(mport)
    assert val(after, "fastmail_logins_total", **labels, result="ok", reason="none") == 0
    assert imap_session(port)[2]
    wait_for("the new master's login", lambda: _at_least(
        mport, "fastmail_logins_total", 1, **labels, result="ok", reason="none"))  # fmt: skip
    os.kill(new, signal.SIGQUIT)
    wait_for("the new master to exit", lambda: gone(new))


def test_the_abuse_limits_are_counted(master, authd0, fake_backend):
    """limit_conn_per_ip's refusals and login_fail_limit's delays and refusals, per server{}
    (one worker: the limits are a worker's)."""
    conn, logins, mport = free_port(), free_port(), free_port()
    add_user(authd0, "alice", "secret", {"imap": ("127.0.0.1", fake_backend.port("imap"))}, True)
    m = master("fastmail", f"auth_http {authd0.url};\n"
               f"server {{ listen 127.0.0.1:{conn}; protocol imap; limit_conn_per_ip 1; }}\n"
               f"server {{ listen 127.0.0.1:{logins}; protocol imap; login_fail_limit 1; }}",
               daemon=False, workers=1, main=f"metrics_listen 127.0.0.1:{mport};")  # fmt: skip
    m.start(greet=conn)
    servers = [{"protocol": "imap", "server": f"127.0.0.1:{p}"} for p in (conn, logins)]
    before = wait_for("no open connection", lambda: all_closed(mport, servers))
    with LineClient("127.0.0.1", conn) as c:
        assert c.greeting().startswith(b"* OK")
        for _ in range(2):
            with LineClient("127.0.0.1", conn) as extra:
                assert extra.read_all().startswith(b"* BYE [UNAVAILABLE]")
    replies = []
    for _ in range(3):  # failed at once, failed after a delay, refused
        with LineClient("127.0.0.1", logins) as c:
            c.greeting()
            c.send(b"a LOGIN alice wrong\r\n")
            replies.append(c.read_until(b"\r\n"))
    assert replies[2] == b"a NO [UNAVAILABLE] Too many failed logins, try again later\r\n"
    after = wait_for("no open connection", lambda: all_closed(mport, servers))

    def d(server: dict[str, str], limit: str) -> float:
        return delta(after, before, "fastmail_limited_total", **server, limit=limit)

    assert d(servers[0], "conn_per_ip") == 2
    assert d(servers[1], "login_delayed") == 1
    assert d(servers[1], "login_refused") == 1
    assert d(servers[1], "conn_per_ip") == d(servers[0], "login_delayed") == 0
