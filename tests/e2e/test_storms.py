"""Nothing lost under load, against nginx too: a soak of mixed logins and short relays through
one worker (fds back where they were, RSS within 5%, no failed session); slowloris clients
sending a byte a second, all closed within `timeout` while normal logins stay fast; a flood
past worker_connections (nginx's alert, the extras refused at once, the sessions already
there unharmed, full service again within a second). Counts: support/load.py (CI runs reduced
ones; FASTMAIL_SOAK=full the full ones).
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from fastmail.testing.authd import Backend, Reply
from support.clients import LineClient
from support.fastmail import mail_block, server
from support.load import FULL, mixed_sessions, rss, scale, slow_clients

GREETING = {"imap": b"* OK", "pop3": b"+OK", "smtp": b"220 "}
MIB = 1 << 20


def start(proxy, authd, fake_backend, free_port, protocols, extra="", **kw):
    """The proxy with one server{} per protocol; auth_http answers OK at once for alice
    (no password hashing: the proxy is what is measured)."""
    backends = {p: Backend("127.0.0.1", fake_backend.port(p)) for p in protocols}
    authd.add_rule(lambda q: Reply.ok(backends[q.protocol]) if q.user == "alice" else None)
    ports = {p: free_port() for p in protocols}
    servers = "".join(server(ports[p], p) for p in protocols)
    p = proxy(
        mail_block(authd, servers, extra),
        greetings=[(ports[x], GREETING[x]) for x in protocols],
        **kw,
    )
    p.ports = ports
    p.ignore = [authd.port]
    return p


@pytest.mark.soak
@pytest.mark.timeout(3600 if FULL else 300)
def test_soak_mixed_logins_and_relays(proxy, authd, fake_backend, free_port):
    p = start(proxy, authd, fake_backend, free_port, ["imap", "pop3", "smtp"])
    total = scale(100_000, 3_000)
    warm = mixed_sessions(p.ports, 1500, concurrency=32)
    assert warm.failures == []
    base_fds = p.baseline(p.ignore)
    base_rss = rss(p.pid)
    out = mixed_sessions(p.ports, total, concurrency=32, deadline=1800 if FULL else 300)
    assert out.failures == [], out.failures[:10]
    assert out.ok == total
    p.assert_no_leaks(base_fds, p.ignore, timeout=10)
    grown = rss(p.pid) - base_rss
    print(f"{p.kind}: {total} sessions, RSS {base_rss / MIB:.1f} MiB + {grown / MIB:.2f}")
    assert grown <= base_rss * 0.05, f"RSS grew {grown / MIB:.2f} MiB from {base_rss / MIB:.1f}"
    # and no session went missing from fake_backend's point of view either
    assert not [s for s in fake_backend.sessions if not s.closed]


class Logins(threading.Thread):
    """IMAP logins one after another until stopped: each one's seconds, and failures."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.took: list[float] = []
        self.failures: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                with LineClient("127.0.0.1", self.port, timeout=5) as c:
                    assert c.greeting().startswith(b"* OK")
                    assert c.command("a LOGIN alice secret").startswith(b"a OK")
                    c.send_line("b LOGOUT")
                    c.read_until(b"b OK")
                self.took.append(time.monotonic() - t0)
            except (OSError, AssertionError, ConnectionError) as exc:
                self.failures.append(repr(exc))
            time.sleep(0.05)


@pytest.mark.soak
def test_slowloris_clients_are_closed_within_timeout(proxy, authd, fake_backend, free_port):
    p = start(proxy, authd, fake_backend, free_port, ["imap"], "timeout 5s;",
              worker_connections=4096)  # fmt: skip
    assert mixed_sessions(p.ports, 100, concurrency=8).failures == []  # pools filled
    base = p.baseline(p.ignore)
    logins = Logins(p.ports["imap"])
    logins.start()
    count = scale(1500, 500)
    try:
        closed = slow_clients(p.ports["imap"], count, b"a LOGIN alice " + b"x" * 100, 1.0, 12)
    finally:
        logins.stop.set()
        logins.join(10)
    late = [t for t in closed if t > 6.5]
    assert not late, f"{len(late)} of {count} slow clients still open after 6.5 s"
    assert logins.failures == []
    took = sorted(logins.took)
    p99 = took[int(len(took) * 0.99)]
    print(f"{p.kind}: {len(took)} logins meanwhile, p99 {p99 * 1000:.0f} ms")
    assert len(took) >= 20 and p99 < 1.0
    p.assert_no_leaks(base, p.ignore, timeout=10)


def test_a_flood_past_worker_connections(proxy, authd, fake_backend, free_port):
    p = start(proxy, authd, fake_backend, free_port, ["imap"], worker_connections=64)
    port = p.ports["imap"]
    assert mixed_sessions(p.ports, 100, concurrency=8).failures == []  # pools filled
    base = p.baseline(p.ignore)
    # sessions already there: logged in, relaying
    held = []
    for _ in range(5):
        c = LineClient("127.0.0.1", port, timeout=5)
        assert c.greeting().startswith(b"* OK")
        assert c.command("a LOGIN alice secret").startswith(b"a OK")
        held.append(c)
    flood = []
    for _ in range(200):
        s = socket.socket()
        s.settimeout(5)
        s.connect(("127.0.0.1", port))
        flood.append(s)
    t0 = time.monotonic()
    refused = greeted = 0
    for s in flood:
        try:
            got = s.recv(100)
        except OSError:
            got = b""
        if got.startswith(b"* OK"):
            greeted += 1
        else:
            refused += 1
    assert time.monotonic() - t0 < 3  # the extras were refused at once, not left hanging
    assert refused >= 100 and greeted >= 1, (refused, greeted)
    p.wait_log("64 worker_connections are not enough")
    # the sessions already there go on
    for c in held:
        assert c.command("b NOOP").startswith(b"b OK")
    for s in flood:
        s.close()
    # full service again within a second of the flood's end
    t_end = time.monotonic()
    while True:
        try:
            with LineClient("127.0.0.1", port, timeout=1) as c:
                assert c.greeting().startswith(b"* OK")
                assert c.command("a LOGIN alice secret").startswith(b"a OK")
            break
        except (OSError, AssertionError, ConnectionError):
            assert time.monotonic() - t_end < 1.0, "no service 1 s after the flood"
            time.sleep(0.02)
    assert time.monotonic() - t_end < 1.0
    for c in held:
        c.send_line("c LOGOUT")
        c.read_until(b"c OK")
        c.close()
    p.assert_no_leaks(base, p.ignore, timeout=5)
