"""The engine's auth_http client (fastmail._auth) on a real _poll.Loop, against the reference
auth server (fastmail.testing.authd) and small raw-socket servers for the faults: answers,
keep-alive reuse, nginx's HTTP/1.0 connection per request, timeouts, refused and dropped
connections, trickled and split answers, WAIT, Auth-Server names, and no fd left behind."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fastmail import _auth
from fastmail._auth import AuthClient
from fastmail._core import AuthRequest
from fastmail.auth_http import ResponseReader, build_request
from fastmail.testing import LoopThread
from fastmail.testing.authd import AuthServer, Backend, UserDB
from support.authclient import (
    OK,
    OK11,
    Harness,
    Waiter,
    req,
    serve,
)

# --- answers through the reference server ------------------------------------------------------


def test_ok_and_keepalive_reuse(harness: Callable[..., Harness], users: AuthServer) -> None:
    h = harness("127.0.0.1", users.port)
    results = [h.ask() for _ in range(5)]
    assert [(r.status, r.server, r.port, r.addr) for r in results] == [
        ("ok", b"127.0.0.1", 1143, "127.0.0.1")
    ] * 5
    assert results[0].log_message is None
    assert h.client.connections_made == 1 and h.client.idle_count() == 1
    peers = {q.peer for q in users.requests}
    assert len(users.requests) == 5 and len(peers) == 1
    raw = users.requests[0].raw
    assert raw.startswith(b"GET /auth HTTP/1.1\r\nHost: 127.0.0.1\r\nAuth-Method: plain\r\n")
    assert raw.endswith(b"Client-IP: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n")
    if _auth.DEBUG_BUILD:
        assert _auth.live_count() == 1


def test_logins_at_once_open_connections_then_reuse_them(
    harness: Callable[..., Harness], users: AuthServer
) -> None:
    h = harness("127.0.0.1", users.port, pool_size=8)
    got = h.run([(h.waiter(), req()) for _ in range(12)])
    assert [r.status for r in got] == ["ok"] * 12
    assert h.client.connections_made == 12 and h.client.idle_count() == 8  # the pool's bound
    got = h.run([(h.waiter(), req()) for _ in range(8)])
    assert [r.status for r in got] == ["ok"] * 8
    assert h.client.connections_made == 12


def test_without_pool_nginx_bytes_one_connection_each(
    harness: Callable[..., Harness], users: AuthServer
) -> None:
    h = harness("127.0.0.1", users.port, pool_size=0)
    assert [h.ask().status for _ in range(3)] == ["ok"] * 3
    assert h.client.connections_made == 3 and h.client.idle_count() == 0
    want = build_request(
        req(),
        uri_path=b"/auth",
        host_header=b"127.0.0.1",
        client_ip=b"127.0.0.1",
        client_host=None,
        extra_headers=[],
        keepalive=False,
    )
    assert [q.raw for q in users.requests] == [want] * 3
    assert len({q.peer for q in users.requests}) == 3


def test_failure_with_auth_wait(harness: Callable[..., Harness], users: AuthServer) -> None:
    h = harness("127.0.0.1", users.port)
    r = h.ask(req(passwd=b"wrong"))
    assert (r.status, r.error_message, r.wait, r.error_code) == (
        "fail",
        b"Invalid login or password",
        2,
        None,
    )
    assert (r.log_message, r.log_level) == (
        'client login failed: "Invalid login or password"',
        "info",
    )
    r = h.ask(req(protocol=b"smtp", passwd=b"wrong"))
    assert r.error_code == b"535 5.7.8"


def test_unix_socket_server(harness: Callable[..., Harness], loop_thread: LoopThread,
                            tmp_path: Path) -> None:  # fmt: skip
    db = UserDB(tmp_path / "u.sqlite")
    db.add_user("alice", "secret", {"imap": Backend("127.0.0.1", 1143)}, scrypt_ln=4)
    server = AuthServer(db)
    path = str(tmp_path / "auth.sock")
    loop_thread.run(server.start(path=path))
    try:
        h = harness(None, 0, unix_path=path)
        assert h.client.peer == f"unix:{path}"
        assert [h.ask().status for _ in range(2)] == ["ok", "ok"]
        assert h.client.connections_made == 1
        h.client.close()
        h.turn(0.01)
    finally:
        loop_thread.run(server.stop())
        db.close()


def test_ipv6_server(harness: Callable[..., Harness]) -> None:
    srv = socket.socket(socket.AF_INET6)
    try:
        srv.bind(("::1", 0))
    except OSError:
        srv.close()
        pytest.skip("no IPv6 loopback")
    srv.listen(1)
    port = srv.getsockname()[1]

    def answer() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(OK)

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    try:
        h = harness("::1", port, pool_size=0)
        assert h.client.peer == f"[::1]:{port}"
        assert h.ask().status == "ok"
    finally:
        t.join(5)
        srv.close()


# --- faults -------------------------------------------------------------------------------------


def test_refused(harness: Callable[..., Harness], free_port: Callable[[], int]) -> None:
    h = harness("127.0.0.1", free_port())
    r = h.ask()
    assert (r.status, r.log_message, r.log_level) == (
        "error",
        "connect() failed (111: Connection refused)",
        "error",
    )


def test_hanging_server_times_out_once(harness: Callable[..., Harness], raw: Any) -> None:
    def hang(conn: socket.socket, n: int) -> None:
        srv.read_head(conn)
        conn.recv(1)  # until the client gives up

    srv = raw(hang)
    h = harness("127.0.0.1", srv.port, timeout_ms=300)
    t0 = time.monotonic()
    r = h.ask()
    assert 0.25 < time.monotonic() - t0 < 1.0
    assert (
        r.log_message
        == f"auth http server 127.0.0.1:{srv.port} timed out (110: Connection timed out)"
    )


def test_trickled_answer_hits_the_one_deadline(harness: Callable[..., Harness], raw: Any) -> None:
    def trickle(conn: socket.socket, n: int) -> None:
        srv.read_head(conn)
        for i in range(len(OK)):
            conn.sendall(OK[i : i + 1])
            time.sleep(0.02)

    srv = raw(trickle)
    h = harness("127.0.0.1", srv.port, timeout_ms=500, pool_size=0)
    t0 = time.monotonic()
    r = h.ask()
    assert "timed out" in r.log_message and time.monotonic() - t0 < 1.2  # not re-armed per byte


def test_answer_one_byte_at_a_time(harness: Callable[..., Harness], raw: Any) -> None:
    def trickle(conn: socket.socket, n: int) -> None:
        while srv.read_head(conn):
            for i in range(len(OK11)):
                conn.sendall(OK11[i : i + 1])
                time.sleep(0.001)

    srv = raw(trickle)
    h = harness("127.0.0.1", srv.port)
    assert h.ask().status == "ok"  # the header block is in; the body still trickles
    assert h.client.idle_count() == 0
    assert h.until(lambda: h.client.idle_count() == 1)  # read to the end of the body, pooled
    assert h.ask().status == "ok"
    assert h.client.connections_made == 1


@pytest.mark.parametrize("keepalive", [True, False])
def test_answer_split_at_every_byte(
    harness: Callable[..., Harness], raw: Any, keepalive: bool
) -> None:
    data = OK11 if keepalive else OK
    cut = [0]

    def split(conn: socket.socket, n: int) -> None:
        while srv.read_head(conn):
            k = cut[0]
            conn.sendall(data[:k])
            time.sleep(0.003)  # the client reads the first part on its own
            conn.sendall(data[k:])
            if not keepalive:
                return

    srv = raw(split)
    h = harness("127.0.0.1", srv.port, pool_size=64 if keepalive else 0)
    for k in range(1, len(data)):
        cut[0] = k
        r = h.ask()
        assert (r.status, r.addr, r.port) == ("ok", "127.0.0.1", 143), k
        if keepalive:  # a split in the body: it is drained before the connection is reused
            assert h.until(lambda: h.client.idle_count() == 1), k
    assert h.client.connections_made == (1 if keepalive else len(data) - 1)


@pytest.mark.parametrize(
    "answer,log,kept",
    [
        (b"\x00\x01garbage here\r\n\r\n", "sent invalid header in response", 0),
        (b"HTTP/1.0 200 OK\r\nAuth Status: OK\r\n\r\n", "sent invalid header in response", 0),
        (b"HTTP/1.0 200 OK\rX\r\n\r\n", "sent invalid response", 0),
        (b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 1100 + b"\r\n\r\n", None, 0),
        (None, None, 0),
        # a well-formed answer that nginx's rules refuse: the connection stays usable
        (b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
         "did not send server or port", 1),
        (b"HTTP/1.1 200 OK\r\nAuth-Status: OK\r\nAuth-Server: localhost\r\nAuth-Port: 143\r\n"
         b"Content-Length: 0\r\n\r\n", 'sent invalid server address:"localhost"', 1),
    ],
)  # fmt: skip
def test_broken_answers(
    harness: Callable[..., Harness], raw: Any, answer: bytes | None, log: str | None, kept: int
) -> None:
    srv = serve(raw, lambda n: answer)
    h = harness("127.0.0.1", srv.port)
    r = h.ask()
    assert r.status == "error"
    if log is None:
        assert (r.log_message, r.log_level) == (None, None)
    else:
        assert r.log_message == f"auth http server 127.0.0.1:{srv.port} {log}"
        assert r.log_level == "error"
    assert h.client.idle_count() == kept


def test_kept_alive_connection_closed_by_server_is_retried_once(
    harness: Callable[..., Harness], raw: Any
) -> None:
    def handle(conn: socket.socket, n: int) -> None:
        srv.read_head(conn)
        conn.sendall(OK11)
        if n == 1:
            srv.read_head(conn)  # the second request: close without answering
            return
        while srv.read_head(conn):
            conn.sendall(OK11)

    srv = raw(handle)
    h = harness("127.0.0.1", srv.port)
    assert h.ask().status == "ok"
    assert h.ask().status == "ok"
    assert (srv.connections, len(srv.requests)) == (2, 3)


def test_idle_connection_closed_by_server_leaves_the_pool(
    harness: Callable[..., Harness], raw: Any
) -> None:
    def handle(conn: socket.socket, n: int) -> None:
        srv.read_head(conn)
        conn.sendall(OK11)  # then close

    srv = raw(handle)
    h = harness("127.0.0.1", srv.port)
    assert h.ask().status == "ok"
    assert h.until(lambda: h.client.idle_count() == 0)
    assert h.ask().status == "ok" and srv.connections == 2


def test_lost_on_fresh_connection_is_not_retried(harness: Callable[..., Harness], raw: Any) -> None:
    srv = serve(raw, lambda n: None)
    h = harness("127.0.0.1", srv.port)
    assert (h.ask().status, srv.connections) == ("error", 1)


def test_body_in_a_later_segment_is_drained_then_reused(
    harness: Callable[..., Harness], raw: Any
) -> None:
    def handle(conn: socket.socket, n: int) -> None:
        while srv.read_head(conn):
            conn.sendall(OK11[:-1])
            time.sleep(0.01)
            conn.sendall(OK11[-1:])

    srv = raw(handle)
    h = harness("127.0.0.1", srv.port)
    for _ in range(3):
        assert h.ask().status == "ok"
        assert h.until(lambda: h.client.idle_count() == 1)
    assert srv.connections == 1


def test_answer_without_length_is_not_reused(harness: Callable[..., Harness], raw: Any) -> None:
    srv = serve(raw, lambda n: OK11.replace(b"Content-Length: 2\r\n", b""))
    h = harness("127.0.0.1", srv.port)
    assert [h.ask().status for _ in range(2)] == ["ok", "ok"]
    assert srv.connections == 2


def test_cancel_drops_the_answer_and_the_connection(
    harness: Callable[..., Harness], raw: Any
) -> None:
    def slow(conn: socket.socket, n: int) -> None:
        srv.read_head(conn)
        time.sleep(0.2)
        conn.sendall(OK11)
        conn.recv(1)

    srv = raw(slow)
    h = harness("127.0.0.1", srv.port)
    w = h.waiter()
    h.run([(w, req())], n=1, timeout=0.05)
    assert w.handle is not None
    h.client.cancel(w.handle)
    h.turn(0.4)
    assert h.results == [] and h.client.idle_count() == 0


# --- WAIT, Auth-User, salts -----------------------------------------------------------------------


def test_wait_then_ok_repeats_with_same_attempt_and_new_user(
    harness: Callable[..., Harness], raw: Any
) -> None:
    wait = (b"HTTP/1.1 200 OK\r\nAuth-Status: WAIT\r\nAuth-Wait: 1\r\nAuth-User: bob\r\n"
            b"Content-Length: 0\r\n\r\n")  # fmt: skip
    srv = serve(raw, lambda n: wait if n == 1 else OK11)
    h = harness("127.0.0.1", srv.port)
    auth = req(protocol=b"smtp", user=b"alice", attempt=2)
    t0 = time.monotonic()
    r = h.ask(auth)
    assert r.status == "ok" and time.monotonic() - t0 >= 0.9
    assert len(srv.requests) == 2
    assert b"Auth-User: bob\r\n" in srv.requests[1]
    assert b"Auth-Login-Attempt: 2\r\n" in srv.requests[1]
    assert auth.user == b"bob"


def test_wait_without_auth_wait_is_bounded(harness: Callable[..., Harness], raw: Any) -> None:
    wait = b"HTTP/1.1 200 OK\r\nAuth-Status: WAIT\r\nContent-Length: 0\r\n\r\n"
    srv = serve(raw, lambda n: wait)
    h = harness("127.0.0.1", srv.port)
    r = h.ask()
    assert r.log_message == (
        f"auth http server 127.0.0.1:{srv.port} sent WAIT without Auth-Wait 4 times"
    )
    assert len(srv.requests) == 4  # the first answer and three repeats


def test_auth_pass_applied_and_salted_password_forgotten(
    harness: Callable[..., Harness], raw: Any
) -> None:
    with_pass = OK11.replace(b"Content-Length", b"Auth-Pass: plain%20pw\r\nContent-Length")
    srv = serve(raw, lambda n: OK11 if n == 1 else with_pass)
    h = harness("127.0.0.1", srv.port)
    auth = AuthRequest(b"imap", b"cram-md5", b"alice", b"0" * 32, b"<1.2@mx>\r\n", 1)
    r = h.ask(auth)
    assert r.log_message == f"auth http server 127.0.0.1:{srv.port} did not send password"
    assert auth.passwd == b"" and b"Auth-Pass: " + b"0" * 32 in srv.requests[0]
    auth = AuthRequest(b"imap", b"cram-md5", b"alice", b"0" * 32, b"<1.2@mx>\r\n", 2)
    r = h.ask(auth)
    assert (r.status, r.passwd, auth.passwd) == ("ok", b"plain%20pw", b"plain%20pw")


# --- Auth-Server host names ---------------------------------------------------------------------


def test_auth_server_name_resolved_through_resolver(
    harness: Callable[..., Harness], raw: Any, loop_thread: LoopThread
) -> None:
    from fastmail.resolver import Resolver
    from support.dns import DnsStub

    named = OK11.replace(b"127.0.0.1", b"backend.example")
    srv = serve(raw, lambda n: named if n < 3 else named.replace(b"backend", b"nope"))
    dns = DnsStub({("backend.example", "A"): [("192.0.2.5", 60)]})
    loop_thread.run(dns.__aenter__())
    try:
        h = harness("127.0.0.1", srv.port)
        res = Resolver(h.loop, [("127.0.0.1", dns.port)], ipv6=False)
        h.client.close()
        h.client = AuthClient(h.loop, "127.0.0.1", srv.port, b"/auth", b"h", 2000, 64,
                              resolver=res, reader_factory=ResponseReader)  # fmt: skip
        r = h.ask()
        assert (r.status, r.server, r.addr, r.port) == ("ok", b"backend.example", "192.0.2.5", 143)
        r = h.ask()  # from the resolver's cache
        assert r.addr == "192.0.2.5" and len(dns.queries) == 1
        r = h.ask()
        assert r.status == "error"
        assert r.log_message == (
            f'auth http server 127.0.0.1:{srv.port} sent server name "nope.example" that '
            "could not be resolved (3: Host not found)"
        )
        res.close()
    finally:
        loop_thread.run(dns.__aexit__(None, None, None))


# --- from the config ----------------------------------------------------------------------------


@pytest.mark.parametrize("keepalive", [0, 2])
def test_client_for_a_server_block(
    harness: Callable[..., Harness], raw: Any, tmp_path: Path, keepalive: int
) -> None:
    from fastmail.auth_http import client_for
    from fastmail.conf import load

    srv = serve(raw, lambda n: OK11 if keepalive else OK)
    conf_file = tmp_path / "f.conf"
    conf_file.write_text(
        "events {}\nmail {\n"
        f"  auth_http http://127.0.0.1:{srv.port}/a/b?c=1;\n"
        "  auth_http_header X-Auth-Key secret;\n"
        f"  auth_http_keepalive {keepalive};\n"
        "  auth_http_timeout 700ms;\n"
        "  server { listen 127.0.0.1:1143; protocol imap; }\n"
        "}\n"
    )
    conf = load(str(conf_file), str(tmp_path)).mail.servers[0]
    h = harness("127.0.0.1", srv.port)
    h.client.close()
    h.client = client_for(h.loop, conf, None)
    assert (h.client.peer, h.client.pool_size) == (f"127.0.0.1:{srv.port}", keepalive)
    assert [h.ask().status for _ in range(2)] == ["ok", "ok"]
    version = b"HTTP/1.1" if keepalive else b"HTTP/1.0"
    assert srv.requests[0].startswith(b"GET /a/b?c=1 " + version + b"\r\nHost: 127.0.0.1\r\n")
    assert b"\r\nX-Auth-Key: secret\r\n" in srv.requests[0]
    assert srv.connections == (1 if keepalive else 2)


def test_immediate_connect_failure_is_delivered_on_a_later_loop_turn(
    harness: Callable[..., Harness], tmp_path: Path
) -> None:
    path = str(tmp_path / "nobody.sock")
    h = harness(None, 0, unix_path=path)
    w = h.waiter()
    seen: list[int] = []

    def submit() -> None:
        w.handle = h.client.ask(w, req(), b"127.0.0.1", None, None, None)
        seen.append(len(h.results))  # completed() did not run inside ask()

    h._want[0] = 1
    h.loop.call_soon(submit)
    h.loop.call_later(2.0, h.loop.stop)
    h.loop.run_forever()
    assert seen == [0] and len(h.results) == 1
    r = h.results[0]
    assert (r.status, r.log_message) == ("error", "connect() failed (2: No such file or directory)")
    assert h.client.connections_made == 1 and w.handle is None


def test_stale_edge_on_an_idle_connection_keeps_it(
    harness: Callable[..., Harness], raw: Any
) -> None:
    """An answer's second segment arriving between epoll_wait and the read leaves an edge
    for bytes already read (epoll reports it as writable only): the idle connection must
    stay pooled."""

    def handle(conn: socket.socket, n: int) -> None:
        srv.read_head(conn)
        conn.sendall(OK11)  # the first round pools both connections
        srv.read_head(conn)
        if n == 1:
            conn.sendall(OK11)  # A: whole, first
        else:
            time.sleep(0.005)
            conn.sendall(OK11[:20])  # B: in the same batch as A ...
            time.sleep(0.04)
            conn.sendall(OK11[20:])  # ... and the rest while A's completed() runs
        srv.read_head(conn)

    srv = raw(handle)
    h = harness("127.0.0.1", srv.port)
    assert [r.status for r in h.run([(h.waiter(), req()), (h.waiter(), req())])] == ["ok"] * 2
    assert h.client.idle_count() == 2

    class Slow(Waiter):
        def completed(self, kind: int, result: Any) -> int:
            if len(self.results) == 2:
                time.sleep(0.03)
            return super().completed(kind, result)

    a, b = Slow(h.loop, h.results, h._want), Slow(h.loop, h.results, h._want)
    # after the requests went out, both answers' first bytes land before the next epoll_wait
    h.loop.call_soon(lambda: h.loop.call_soon(time.sleep, 0.03))
    got = h.run([(a, req()), (b, req())])
    assert [r.status for r in got] == ["ok", "ok"]
    h.turn(0.05)
    assert h.client.idle_count() == 2 and srv.connections == 2


def test_close_ends_a_body_being_drained(harness: Callable[..., Harness], raw: Any) -> None:
    closed = threading.Event()

    def handle(conn: socket.socket, n: int) -> None:
        srv.read_head(conn)
        conn.sendall(OK11[:-1])  # the header block and half the body
        if conn.recv(1) == b"":  # the client closed while draining
            closed.set()

    srv = raw(handle)
    h = harness("127.0.0.1", srv.port)
    assert h.ask().status == "ok"
    assert h.client.idle_count() == 0
    h.client.close()  # reload: nothing of this client stays open
    assert closed.wait(2)


def test_trace_gets_each_request_and_answer(harness: Callable[..., Harness], raw: Any) -> None:
    """At debug level the session passes its debuglog.Trace: every request sent (a WAIT
    repeat too) and every answer's headers go to it."""
    wait = b"HTTP/1.1 200 OK\r\nAuth-Status: WAIT\r\nContent-Length: 0\r\n\r\n"
    srv = serve(raw, lambda n: wait if n == 1 else OK11)
    h = harness("127.0.0.1", srv.port)
    calls: list[tuple[str, Any]] = []

    class Trace:
        def auth_request(self, request: bytes) -> None:
            calls.append(("request", request))

        def auth_answer(self, headers: list[tuple[bytes, bytes]]) -> None:
            calls.append(("answer", headers))

    w = h.waiter()
    h._want[0] = 1
    h.loop.call_soon(lambda: h.client.ask(w, req(), b"127.0.0.1", None, None, None, Trace()))
    h.loop.call_later(2.0, h.loop.stop)
    h.loop.run_forever()
    assert h.results[0].status == "ok"
    assert calls == [
        ("request", srv.requests[0]),
        ("answer", [(b"Auth-Status", b"WAIT"), (b"Content-Length", b"0")]),
        ("request", srv.requests[1]),
        ("answer", [(b"Auth-Status", b"OK"), (b"Auth-Server", b"127.0.0.1"),
                    (b"Auth-Port", b"143"), (b"Content-Length", b"2")]),
    ]  # fmt: skip
