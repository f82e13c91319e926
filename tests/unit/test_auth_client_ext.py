"""The engine's auth_http client beyond nginx, on a real _poll.Loop: several URLs (the next one
on a refused connect, a timeout, a connection closed unanswered, a 5xx status; a URL found down
asked last), https (verified, kept alive, sessions resumed, a failed handshake a down URL), the
cache of answers (what is kept, for how long, what is never kept, forget()), and the request
lines of auth_http_send and a backend failover. Every fd and SSL object is gone at the end."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fastmail import _tls
from fastmail._auth import DOWN_MS
from fastmail._authcache import AuthCache
from fastmail._authproto import AuthResult
from fastmail._authreq import Extra, RequestTemplate
from fastmail._authurl import Target
from fastmail._core import AuthRequest
from fastmail._tlsctx import ClientContext
from fastmail.testing.authd import AuthServer, Backend, Reply
from support.authclient import OK, Harness, RawServer, req, serve
from support.certs import TestCerts


def ask(h: Harness, auth: Any = None, extra: Extra | None = None, **kw: Any) -> Any:
    """One ask with fastmail's own request lines."""
    results: list[Any] = []
    w = h.waiter()

    def submit() -> None:
        w.handle = h.client.ask(w, auth or req(), b"127.0.0.1", None, None, None, None, extra)

    start = len(h.results)
    h._want[0] = start + 1
    h.loop.call_soon(submit)
    bound = h.loop.call_later(kw.get("timeout", 5.0), h.loop.stop)
    h.loop.run_forever()
    bound.cancel()
    results = h.results[start:]
    assert len(results) == 1, "no answer within the bound"
    return results[0]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def more(*ports: int, **kw: Any) -> list[Target]:
    return [Target("127.0.0.1", p, b"/auth", b"127.0.0.1", **kw) for p in ports]


# --- several URLs ----------------------------------------------------------------------------------


def test_refused_url_then_the_next_one(harness: Callable[..., Harness], users: AuthServer) -> None:
    dead = closed_port()
    h = harness("127.0.0.1", dead, more=more(users.port))
    r = h.ask()
    assert (r.status, r.port) == ("ok", 1143)
    assert r.notes == [
        f"auth http server 127.0.0.1:{dead} is down: connect() failed (111: Connection "
        f"refused); trying 127.0.0.1:{users.port}"
    ]
    assert h.client.failovers == 1
    # found down: asked last for DOWN_MS, so the next request goes to the live one at once
    r = h.ask()
    assert r.status == "ok" and r.notes is None and h.client.failovers == 1
    assert [t.connections_made for t in h.client.urls] == [1, 1]  # the pooled one reused
    assert DOWN_MS == 10000


def test_every_url_down_answers_the_last_error(harness: Callable[..., Harness]) -> None:
    a, b = closed_port(), closed_port()
    h = harness("127.0.0.1", a, more=more(b))
    r = h.ask()
    assert r.status == "error" and r.log_message == "connect() failed (111: Connection refused)"
    assert len(r.notes) == 1 and f"127.0.0.1:{a} is down" in r.notes[0]
    # both down now: each is still asked (the first in order), never twice for one request
    r = h.ask()
    assert r.status == "error" and len(r.notes) == 1 and h.client.failovers == 2


def test_timeout_then_the_next_url_with_its_own_deadline(
    harness: Callable[..., Harness], raw: Callable[..., RawServer], users: AuthServer
) -> None:
    def late(n: int) -> None:
        time.sleep(1)  # reads the request, answers nothing in time

    silent = serve(raw, late)
    h = harness("127.0.0.1", silent.port, more=more(users.port), timeout_ms=300)
    t0 = time.monotonic()
    r = h.ask()
    assert r.status == "ok" and 0.3 <= time.monotonic() - t0 < 0.9
    assert "is down: timed out (110: Connection timed out)" in r.notes[0]


def test_closed_unanswered_then_the_next_url(
    harness: Callable[..., Harness], raw: Callable[..., RawServer], users: AuthServer
) -> None:
    closing = serve(raw, lambda n: None)  # reads the request, closes
    h = harness("127.0.0.1", closing.port, more=more(users.port), pool_size=0)
    r = h.ask()
    assert r.status == "ok"
    assert r.notes[0].endswith(f"is down: connection closed before the answer; trying "
                               f"127.0.0.1:{users.port}")  # fmt: skip


def test_5xx_is_down_only_with_another_url(
    harness: Callable[..., Harness], raw: Callable[..., RawServer], users: AuthServer
) -> None:
    """nginx reads any status alike: with one URL, a 503 answer is read as nginx reads it."""
    answer = b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
    busy = serve(raw, lambda n: answer)
    alone = harness("127.0.0.1", busy.port, pool_size=0)
    r = alone.ask()
    assert r.status == "error" and r.log_message.endswith("did not send server or port")
    assert r.notes is None
    h = harness("127.0.0.1", busy.port, more=more(users.port), pool_size=0)
    r = h.ask()
    assert r.status == "ok" and "is down: status 503;" in r.notes[0]


def test_request_goes_to_each_url_with_its_own_line_and_host(
    harness: Callable[..., Harness], raw: Callable[..., RawServer]
) -> None:
    """The same request, under each URL's request line and Host header."""
    second = serve(raw, lambda n: OK)
    first = closed_port()
    other = Target("127.0.0.1", second.port, b"/other?x=1", b"auth.example")
    h = harness("127.0.0.1", first, more=[other], pool_size=0,
                extra_headers=[(b"X-A", b"1")])  # fmt: skip
    assert h.ask().status == "ok"
    want = RequestTemplate(b"/other?x=1", b"auth.example", [(b"X-A", b"1")]).request(
        req(), b"127.0.0.1"
    )
    assert second.requests == [want]


# --- https -------------------------------------------------------------------------------------------


class TlsServer:
    """A threaded https auth server: answers OK, HTTP/1.0 and close, recording for each
    connection whether its TLS session was resumed."""

    def __init__(self, certs: TestCerts, host: str = "127.0.0.1") -> None:
        self.ctx = certs.server_context()
        self.sock = socket.create_server((host, 0))
        self.port = self.sock.getsockname()[1]
        self.resumed: list[bool] = []
        self.requests: list[bytes] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.settimeout(5)
                    data = b""
                    while b"\r\n\r\n" not in data:
                        chunk = tls.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    if not data:
                        continue
                    self.requests.append(data)
                    self.resumed.append(bool(tls.session_reused))
                    tls.sendall(OK)
            except (OSError, ssl.SSLError):
                pass

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() (closing alone would not)
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def tls_server(certs: TestCerts) -> Iterator[Callable[..., TlsServer]]:
    made: list[TlsServer] = []

    def make(host: str = "127.0.0.1") -> TlsServer:
        made.append(TlsServer(certs, host))
        return made[-1]

    yield make
    for s in made:
        s.close()


def test_https_resumes_its_session(
    harness: Callable[..., Harness], tls_server: Callable[..., TlsServer], certs: TestCerts
) -> None:
    """HTTP/1.0 over TLS, a connection per request: the first handshake is full, the next
    ones resume the session the last connection got."""
    srv = tls_server()
    ctx = ClientContext(True, str(certs.ca_cert))
    h = harness("127.0.0.1", srv.port, pool_size=0, tls=ctx, tls_name=b"127.0.0.1")
    assert [h.ask().status for _ in range(3)] == ["ok"] * 3
    assert srv.resumed == [False, True, True]
    assert srv.requests[0].startswith(b"GET /auth HTTP/1.0\r\n")
    assert _tls.live_count() == 0


def test_https_keepalive_one_connection(
    harness: Callable[..., Harness], users: AuthServer, loop_thread: Any, certs: TestCerts
) -> None:
    secure = AuthServer(users.db, fail_wait=2)
    loop_thread.run(secure.start(tls=certs.server_context()))
    try:
        ctx = ClientContext(True, str(certs.ca_cert))
        h = harness("127.0.0.1", secure.port, tls=ctx, tls_name=b"localhost")
        assert [h.ask().status for _ in range(4)] == ["ok"] * 4
        assert h.client.connections_made == 1 and h.client.idle_count() == 1
        assert len({q.peer for q in secure.requests}) == 1
    finally:
        loop_thread.run(secure.stop())


def test_https_failed_check_is_a_down_url(
    harness: Callable[..., Harness], tls_server: Callable[..., TlsServer], users: AuthServer,
    certs: TestCerts,
) -> None:  # fmt: skip
    """The certificate does not name the URL's host: nothing is sent there; the next URL."""
    srv = tls_server()
    ctx = ClientContext(True, str(certs.ca_cert))
    h = harness("127.0.0.1", srv.port, tls=ctx, tls_name=b"mail.example", more=more(users.port))
    r = h.ask()
    assert r.status == "ok" and srv.requests == []
    assert (f"127.0.0.1:{srv.port} is down: SSL certificate verify error: (62:hostname "
            "mismatch)") in r.notes[0]  # fmt: skip
    alone = harness("127.0.0.1", srv.port, tls=ctx, tls_name=b"mail.example")
    r = alone.ask()
    assert r.status == "error" and r.log_message == (
        f"auth http server 127.0.0.1:{srv.port} SSL certificate verify error: (62:hostname "
        "mismatch)"
    )


# --- the cache ---------------------------------------------------------------------------------------


def cached(harness: Callable[..., Harness], port: int, **kw: Any) -> Harness:
    return harness("127.0.0.1", port, cache=AuthCache(kw.pop("size", 16),
                   kw.pop("valid", 30_000), kw.pop("fail", 5_000)), **kw)  # fmt: skip


def test_cache_answers_the_same_request(harness: Callable[..., Harness], users: AuthServer) -> None:
    h = cached(harness, users.port)
    first, second = h.ask(), h.ask()
    assert (first.status, second.status) == ("ok", "ok")
    assert (second.server, second.port, second.addr) == (b"127.0.0.1", 1143, "127.0.0.1")
    assert len(users.requests) == 1 and (h.client.cache_hits, h.client.cache_misses) == (1, 1)
    assert first.cache_key == second.cache_key and len(first.cache_key) == 16
    assert b"secret" not in first.cache_key
    # what the request carried is the key: another attempt number, password or user
    for other in (req(attempt=2), req(passwd=b"other"), req(user=b"bob")):
        h.ask(other)
    assert len(users.requests) == 4
    h.client.forget(first.cache_key)
    assert h.ask().status == "ok" and len(users.requests) == 5


def test_cache_keeps_failures_for_fail_only(
    harness: Callable[..., Harness], users: AuthServer
) -> None:
    h = cached(harness, users.port, fail=200)
    wrong = [h.ask(req(passwd=b"wrong")) for _ in range(2)]
    assert [r.status for r in wrong] == ["fail", "fail"]
    assert wrong[1].error_message == b"Invalid login or password" and wrong[1].wait == 2
    assert wrong[1].log_message == 'client login failed: "Invalid login or password"'
    assert len(users.requests) == 1
    time.sleep(0.25)
    h.ask(req(passwd=b"wrong"))
    assert len(users.requests) == 2
    no_fail = cached(harness, users.port, fail=0)
    no_fail.ask(req(passwd=b"wrong"))
    no_fail.ask(req(passwd=b"wrong"))
    assert len(users.requests) == 4


@pytest.mark.parametrize(
    "answer,kept",
    [
        (Reply.ok(Backend("127.0.0.1", 1143), password="secret"), True),  # the same password
        (Reply.ok(Backend("127.0.0.1", 1143), password="master"), False),
        (Reply.wait(0), False),  # WAIT three times: an error
        (Reply.http_error(), False),  # an error
    ],
)
def test_cache_keeps_no_other_password_nor_errors(
    harness: Callable[..., Harness], users: AuthServer, answer: Reply, kept: bool
) -> None:
    users.add_rule(lambda q: answer)
    h = cached(harness, users.port)
    h.ask()
    asked = len(users.requests)
    h.ask()
    assert len(users.requests) == (asked if kept else 2 * asked)


def test_cache_never_keeps_salted_logins(
    harness: Callable[..., Harness], users: AuthServer
) -> None:
    users.add_rule(lambda q: Reply.ok(Backend("127.0.0.1", 1143), password="secret"))
    h = cached(harness, users.port)
    for _ in range(2):
        salted = AuthRequest(b"imap", b"cram-md5", b"alice", b"0" * 32, b"<1.2@mx>\r\n", 1)
        r = h.ask(salted)
        assert r.status == "ok" and r.cache_key is None
    assert len(users.requests) == 2


def test_cache_lru_bound_and_expiry(users: AuthServer) -> None:
    c = AuthCache(2, 1000, 100)
    ok = AuthResult("ok", server=b"h", port=1, addr="10.0.0.1", passwd=b"x")
    for key in (b"a", b"b", b"c"):
        c.store(key, ok, 0)
    assert len(c) == 2 and c.lookup(b"a", 1) is None  # the least recently used went
    got = c.lookup(b"b", 1)
    assert got is not ok and (got.server, got.addr, got.passwd) == (b"h", "10.0.0.1", None)
    assert c.lookup(b"b", 1000) is None  # expired
    c.store(b"f", AuthResult("fail", error_message=b"no"), 0)
    assert c.lookup(b"f", 99) is not None and c.lookup(b"f", 100) is None
    assert (c.hits, c.misses) == (2, 3)


def test_failover_request_replaces_the_kept_answer(
    harness: Callable[..., Harness], users: AuthServer
) -> None:
    h = cached(harness, users.port)
    key = h.ask().cache_key
    users.add_rule(lambda q: Reply.ok(Backend("127.0.0.1", 2143)) if q.get(
        "Auth-Failed-Server") else None)  # fmt: skip
    r = ask(h, extra=Extra(failed=[b"127.0.0.1:1143"]))
    assert (r.port, r.cache_key) == (2143, key)
    assert users.requests[-1].get_all("Auth-Failed-Server") == ["127.0.0.1:1143"]
    assert h.ask().port == 2143 and len(users.requests) == 2  # kept under the same key


# --- request lines --------------------------------------------------------------------------------


def test_extra_lines_and_key_text() -> None:
    tpl = RequestTemplate(b"/auth", b"h", [(b"X-A", b"1")], True)
    pp = (b"192.0.2.1", 4000, b"192.0.2.2", 143)
    extra = Extra(5555, b"::1", 143, [b"10.0.0.1:143", b"[::2]:143"])
    got = tpl.request(req(), b"192.0.2.1", None, pp, None, extra)
    assert got.endswith(
        b"Proxy-Protocol-Server-Port: 143\r\nClient-Port: 5555\r\nServer-IP: ::1\r\n"
        b"Server-Port: 143\r\nAuth-Failed-Server: 10.0.0.1:143\r\nAuth-Failed-Server: "
        b"[::2]:143\r\nAuth-Backend-Attempt: 3\r\nX-A: 1\r\nConnection: keep-alive\r\n\r\n"
    )
    key = tpl.request(req(), b"192.0.2.1", None, pp, None, extra, True)
    assert b"Client-Port" not in key and b"Auth-Failed" not in key
    assert b"Proxy-Protocol-Port: 0\r\n" in key and b"Server-IP: ::1\r\n" in key
    other = tpl.request(req(), b"192.0.2.1", None, (b"192.0.2.1", 4001, b"192.0.2.2", 143),
                        None, Extra(5556, b"::1", 143), True)  # fmt: skip
    assert other == key  # what changes per connection is not in the key


@pytest.mark.parametrize("header,kept", [("Auth-User", True), ("Auth-Pass", False)])
def test_cache_keeps_the_login_a_wait_answer_left(
    harness: Callable[..., Harness], users: AuthServer, header: str, kept: bool
) -> None:
    """A WAIT answer's Auth-User is the login the kept answer gives again; an Auth-Pass other
    than the client's makes the answer one not to keep (its password would be needed)."""
    wait = Reply([("Auth-Status", "WAIT"), ("Auth-Wait", "0"), (header, "carol")])
    users.add_rule(lambda q: wait, times=1)
    users.add_rule(lambda q: Reply.ok(Backend("127.0.0.1", 1143)))
    h = cached(harness, users.port)
    first, again = req(), req()
    assert h.ask(first).status == "ok" and len(users.requests) == 2
    assert h.ask(again).status == "ok"
    assert len(users.requests) == (2 if kept else 3)
    if kept:
        assert first.user == again.user == b"carol" and again.passwd == b"secret"
