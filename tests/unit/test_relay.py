"""The relay (fastmail/_relay.pyx) over socketpairs and loopback TCP on a uvloop loop:
no byte lost or reordered, half-close, reset, proxy_timeout, pooled pipes, no leaked fd."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import struct
import time
from collections.abc import Iterator

import pytest
import uvloop

from fastmail._relay import BufferRelay, SpliceRelay, pool_clear, pool_stats, take_fd

FIGURES = bool(os.environ.get("FASTMAIL_RELAY_FIGURES"))  # print throughput figures


def nfds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    pool_clear()
    warm = uvloop.new_event_loop()  # uvloop keeps one process-wide pipe from its first loop
    warm.run_until_complete(asyncio.sleep(0))
    warm.close()
    before = nfds()
    lp = uvloop.new_event_loop()
    yield lp
    lp.close()
    pool_clear()
    assert pool_stats() == (0, 0)
    assert nfds() == before, "leaked file descriptors"


def pair(kind: str) -> tuple[socket.socket, socket.socket]:
    if kind == "unix":
        a, b = socket.socketpair()
    else:
        srv = socket.create_server(("127.0.0.1", 0))
        a = socket.create_connection(srv.getsockname())
        b, _ = srv.accept()
        srv.close()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


class Ends:
    """Client app <-> [relay] <-> backend app. The relay gets the middle two fds."""

    def __init__(self, kind: str) -> None:
        self.client, cp = pair(kind)
        bp, self.backend = pair(kind)
        self.fds = (cp.detach(), bp.detach())
        self.closed = asyncio.get_running_loop().create_future()

    def on_close(self, relay: object) -> None:
        if not self.closed.done():
            self.closed.set_result(relay)

    def close(self) -> None:
        self.client.close()
        self.backend.close()


async def send_all(sock: socket.socket, data: bytes, shut: bool = True) -> None:
    loop = asyncio.get_running_loop()
    view = memoryview(data)
    for i in range(0, len(data), 1 << 20):
        await loop.sock_sendall(sock, view[i : i + (1 << 20)])
    if shut:
        sock.shutdown(socket.SHUT_WR)


async def recv_all(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    out = bytearray()
    while True:
        chunk = await loop.sock_recv(sock, 1 << 18)
        if not chunk:
            return bytes(out)
        out += chunk


def run(loop: asyncio.AbstractEventLoop, coro: object, timeout: float = 60) -> object:
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))  # type: ignore[arg-type]


def cpu() -> float:
    t = os.times()
    return t.user + t.system


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_splice_large_payload_each_way_concurrently(
    loop: asyncio.AbstractEventLoop, kind: str
) -> None:
    up = os.urandom(64 << 20)
    down = os.urandom(64 << 20)

    async def main() -> SpliceRelay:
        e = Ends(kind)
        relay = SpliceRelay(
            asyncio.get_running_loop(),
            *e.fds,
            e.on_close,
            to_backend=b"PIPELINED\r\n",
            to_client=b"a1 OK logged in\r\n",
        )
        relay.start()
        t0, c0 = time.perf_counter(), cpu()
        got_up, got_down, _, _ = await asyncio.gather(
            recv_all(e.backend),
            recv_all(e.client),
            send_all(e.client, up),
            send_all(e.backend, down),
        )
        await e.closed
        wall, used = time.perf_counter() - t0, cpu() - c0
        if FIGURES:
            print(f"\n{kind}: 2x64 MiB in {wall:.2f}s wall, {used:.2f} CPU-s (apps included)")
        assert hashlib.sha256(got_up).digest() == hashlib.sha256(b"PIPELINED\r\n" + up).digest()
        assert (
            hashlib.sha256(got_down).digest()
            == hashlib.sha256(b"a1 OK logged in\r\n" + down).digest()
        )
        e.close()
        return relay

    relay = run(loop, main())
    assert isinstance(relay, SpliceRelay)
    assert relay.close_reason is None and relay.closed
    assert relay.bytes_up == len(up) + 11 and relay.bytes_down == len(down) + 17
    idle, total = pool_stats()
    assert idle == total  # every pipe went back to the pool: none held by a session


def test_splice_half_close_each_way(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        lp = asyncio.get_running_loop()
        e = Ends("tcp")
        SpliceRelay(lp, *e.fds, e.on_close).start()
        # Client says QUIT and shuts its write side: the backend sees the bytes, then EOF,
        # and can still answer (nginx would drop the answer; see spec proxy.md §1.3).
        await send_all(e.client, b"QUIT\r\n")
        assert await recv_all(e.backend) == b"QUIT\r\n"
        await lp.sock_sendall(e.backend, b"221 bye\r\n")
        await asyncio.sleep(0.05)
        assert not e.closed.done()
        e.backend.shutdown(socket.SHUT_WR)
        assert await recv_all(e.client) == b"221 bye\r\n"
        relay = await e.closed
        assert relay.close_reason is None
        e.close()

    run(loop, main(), 10)


def test_splice_half_close_backend_first(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        lp = asyncio.get_running_loop()
        e = Ends("unix")
        SpliceRelay(lp, *e.fds, e.on_close).start()
        await send_all(e.backend, b"* BYE shutting down\r\n")
        assert await recv_all(e.client) == b"* BYE shutting down\r\n"
        await send_all(e.client, b"late\r\n")
        assert await recv_all(e.backend) == b"late\r\n"
        await e.closed
        e.close()

    run(loop, main(), 10)


def test_splice_nginx_close_mode_ends_both_on_first_eof(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        e = Ends("tcp")
        SpliceRelay(asyncio.get_running_loop(), *e.fds, e.on_close, half_close=False).start()
        await send_all(e.client, b"QUIT\r\n")
        assert await recv_all(e.backend) == b"QUIT\r\n"  # forwarded, then both closed
        assert await recv_all(e.client) == b""
        assert (await e.closed).close_reason is None
        e.close()

    run(loop, main(), 10)


def test_splice_client_reset_closes_session(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        lp = asyncio.get_running_loop()
        e = Ends("tcp")
        relay = SpliceRelay(lp, *e.fds, e.on_close)
        relay.start()
        await lp.sock_sendall(e.backend, b"x" * 1000)  # unread by the client: close() sends RST
        await asyncio.sleep(0.05)
        e.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        e.client.close()
        await e.closed
        assert relay.close_reason is not None and "104" in relay.close_reason
        assert await recv_all(e.backend) == b""  # the backend is closed too
        e.backend.close()

    run(loop, main(), 10)


def test_splice_write_error_closes_at_once(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        e = Ends("unix")
        relay = SpliceRelay(asyncio.get_running_loop(), *e.fds, e.on_close)
        e.backend.shutdown(socket.SHUT_RD)  # writes toward the backend now fail with EPIPE
        relay.start()
        await asyncio.get_running_loop().sock_sendall(e.client, b"a1 NOOP\r\n")
        await e.closed
        assert relay.close_reason == "send() failed (32: Broken pipe)"
        assert relay.action == "proxying and sending to upstream"
        assert await recv_all(e.client) == b""
        e.close()

    run(loop, main(), 10)


def test_splice_proxy_timeout_counts_client_activity_only(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        lp = asyncio.get_running_loop()
        e = Ends("unix")
        relay = SpliceRelay(lp, *e.fds, e.on_close, timeout=0.4)
        t0 = time.monotonic()
        relay.start()
        await asyncio.sleep(0.25)
        await lp.sock_sendall(e.client, b"a2 NOOP\r\n")  # client activity re-arms
        for _ in range(8):  # backend chatter alone does not
            if e.closed.done():
                break
            await lp.sock_sendall(e.backend, b"* 1 EXISTS\r\n")
            await asyncio.sleep(0.1)
        await e.closed
        elapsed = time.monotonic() - t0
        assert relay.timed_out and relay.close_reason.startswith("client timed out (110")
        assert 0.6 <= elapsed < 0.9, elapsed
        assert abs(relay.last_activity - (t0 + 0.25)) < 0.1
        e.close()

    run(loop, main(), 10)


def test_splice_idle_session_holds_no_pipe(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        lp = asyncio.get_running_loop()
        sessions = [Ends("unix") for _ in range(20)]
        relays = [SpliceRelay(lp, *e.fds, e.on_close) for e in sessions]
        for r in relays:
            r.start()
        for e in sessions:
            await lp.sock_sendall(e.client, b"hello\r\n")
        for e in sessions:
            assert await lp.sock_recv(e.backend, 100) == b"hello\r\n"
        idle, total = pool_stats()
        assert idle == total and total <= 16  # pipes reused, none held while idle
        for r in relays:
            r.close()
        for e in sessions:
            assert e.closed.done()
            e.close()

    run(loop, main(), 10)


def test_take_fd_hands_a_uvloop_transport_over(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        lp = asyncio.get_running_loop()
        client, cp = pair("unix")
        bp, backend = pair("unix")
        got = bytearray()

        class P(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                got.extend(data)

        ct, _ = await lp.create_connection(P, sock=cp)
        bt, _ = await lp.create_connection(P, sock=bp)
        await lp.sock_sendall(client, b"a1 LOGIN u p\r\na2 NOOP\r\n")
        while b"a2" not in got:
            await asyncio.sleep(0.01)
        closed = lp.create_future()
        relay = SpliceRelay(
            lp,
            take_fd(ct),
            take_fd(bt),
            closed.set_result,
            to_backend=bytes(got).split(b"\r\n", 1)[1],
            to_client=b"a1 OK done\r\n",
        )
        relay.start()
        assert await lp.sock_recv(client, 100) == b"a1 OK done\r\n"
        assert await lp.sock_recv(backend, 100) == b"a2 NOOP\r\n"
        client.shutdown(socket.SHUT_WR)
        backend.shutdown(socket.SHUT_WR)
        await closed
        client.close()
        backend.close()
        await asyncio.sleep(0)

    run(loop, main(), 10)


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_splice_many_small_exchanges_each_need_an_edge(
    loop: asyncio.AbstractEventLoop, kind: str
) -> None:
    """Edge-triggered relaying: after a short read the relay waits for the next edge instead
    of reading again; every line of a long dialogue still arrives, in both directions."""

    async def main() -> None:
        lp = asyncio.get_running_loop()
        e = Ends(kind)
        relay = SpliceRelay(lp, *e.fds, e.on_close)
        relay.start()
        for i in range(300):
            line = b"a%d NOOP\r\n" % i
            await lp.sock_sendall(e.client, line)
            got = b""
            while len(got) < len(line):
                got += await lp.sock_recv(e.backend, 100)
            assert got == line
            await lp.sock_sendall(e.backend, got.upper())
            back = b""
            while len(back) < len(line):
                back += await lp.sock_recv(e.client, 100)
            assert back == line.upper()
        assert (relay.bytes_up, relay.bytes_down) == (
            sum(len(b"a%d NOOP\r\n" % i) for i in range(300)),
        ) * 2
        e.client.shutdown(socket.SHUT_WR)
        e.backend.shutdown(socket.SHUT_WR)
        assert (await e.closed).close_reason is None
        e.close()

    run(loop, main(), 20)


def test_backend_socket_connect_login_and_hand_over(loop: asyncio.AbstractEventLoop) -> None:
    """BackendSocket: connect, login dialogue through the login machine's actions, failure
    text for a refused connect, and the move of its fd into a SpliceRelay."""
    from fastmail._core import ACT_BACKEND, ACT_DONE, ACT_SEND
    from fastmail._relay import BackendSocket

    class Login:
        phase = "connecting"

        def __init__(self) -> None:
            self.fed = b""

        def start(self) -> int:
            return 0

        def feed(self, data: bytes) -> int:
            self.fed += data
            if self.fed == b"* OK hi\r\n":
                return ACT_BACKEND
            return ACT_DONE | ACT_SEND if self.fed.endswith(b"a OK\r\n") else 0

        def take_backend_output(self) -> bytes:
            return b"a LOGIN u p\r\n"

    class Session:
        def __init__(self) -> None:
            self.acts: list[int] = []
            self.failed: list[str] = []
            self.event = asyncio.Event()

        def _login_actions(self, acts: int) -> None:
            self.acts.append(acts)
            self.event.set()

        def _backend_failed(self, reason: str) -> None:
            self.failed.append(reason)
            self.event.set()

    async def main() -> None:
        lp = asyncio.get_running_loop()
        srv = socket.create_server(("127.0.0.1", 0))
        port = srv.getsockname()[1]
        srv.close()
        s = Session()
        b = BackendSocket(lp, "127.0.0.1", port, s, Login())
        await asyncio.wait_for(s.event.wait(), 5)
        assert s.failed == ["connect() failed (111: Connection refused)"]
        b.close()

        srv = socket.create_server(("127.0.0.1", 0))
        srv.setblocking(False)
        s = Session()
        b = BackendSocket(lp, "127.0.0.1", srv.getsockname()[1], s, Login())
        peer, _ = await lp.sock_accept(srv)
        srv.close()
        await lp.sock_sendall(peer, b"* OK hi\r\n")
        assert await lp.sock_recv(peer, 100) == b"a LOGIN u p\r\n"
        await lp.sock_sendall(peer, b"a OK\r\n")
        await asyncio.wait_for(s.event.wait(), 5)
        assert s.acts == [ACT_DONE | ACT_SEND] and not s.failed
        client, cp = pair("unix")
        closed = lp.create_future()
        relay = SpliceRelay(lp, cp.detach(), b, closed.set_result, to_client=b"a OK\r\n")
        relay.start()
        assert b.closed and b.fd == -1
        assert await lp.sock_recv(client, 100) == b"a OK\r\n"
        await lp.sock_sendall(client, b"b LOGOUT\r\n")
        assert await lp.sock_recv(peer, 100) == b"b LOGOUT\r\n"
        client.shutdown(socket.SHUT_WR)
        peer.shutdown(socket.SHUT_WR)
        assert (await closed).close_reason is None
        client.close()
        peer.close()

    run(loop, main(), 10)


def test_listener_client_conn_acts_as_a_transport_then_hands_over(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """Listener + ClientConn: connection_made with the peer address, greeting written,
    bytes delivered, pause/resume, EOF closes, connection_lost after abort; a connection
    that is logged in moves into a SpliceRelay with its pipelined bytes."""
    from fastmail._relay import ClientConn, Listener

    events: list[object] = []

    class P(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.t = transport
            events.append(("made", transport.get_extra_info("peername")))
            transport.write(b"* OK hi\r\n")  # type: ignore[attr-defined]

        def data_received(self, data: bytes) -> None:
            events.append(data)

        def eof_received(self) -> bool:
            events.append("eof")
            return False

        def connection_lost(self, exc: Exception | None) -> None:
            events.append(("lost", exc))

    async def main() -> None:
        lp = asyncio.get_running_loop()
        srv = socket.create_server(("127.0.0.1", 0))
        srv.setblocking(False)
        port = srv.getsockname()[1]
        protos: list[P] = []

        def factory() -> P:
            protos.append(P())
            return protos[-1]

        lst = Listener(lp, srv, factory, ("127.0.0.1", port))
        c = socket.create_connection(("127.0.0.1", port))
        c.setblocking(False)
        assert await lp.sock_recv(c, 100) == b"* OK hi\r\n"
        t = protos[0].t
        assert isinstance(t, ClientConn)
        assert events[0] == ("made", c.getsockname())
        assert t.get_extra_info("sockname") == ("127.0.0.1", port)
        await lp.sock_sendall(c, b"a LOGIN u p\r\n")
        while len(events) < 2:
            await asyncio.sleep(0.01)
        assert events[1] == b"a LOGIN u p\r\n"
        t.pause_reading()
        await lp.sock_sendall(c, b"b NOOP\r\n")
        await asyncio.sleep(0.05)
        assert len(events) == 2  # paused: nothing delivered
        t.resume_reading()
        await asyncio.sleep(0.05)
        assert events[2] == b"b NOOP\r\n"
        c.shutdown(socket.SHUT_WR)
        await asyncio.sleep(0.05)
        assert events[3:] == ["eof", ("lost", None)]
        assert await lp.sock_recv(c, 100) == b""
        c.close()

        # the hand-over: pipelined bytes wait in the socket for the relay
        c = socket.create_connection(("127.0.0.1", port))
        c.setblocking(False)
        assert await lp.sock_recv(c, 100) == b"* OK hi\r\n"
        t = protos[1].t
        t.pause_reading()
        await lp.sock_sendall(c, b"c NOOP\r\n")
        await asyncio.sleep(0.05)
        bp, backend = pair("unix")
        closed = lp.create_future()
        relay = SpliceRelay(lp, t, bp.detach(), closed.set_result, to_client=b"a OK\r\n")
        relay.start()
        assert await lp.sock_recv(c, 100) == b"a OK\r\n"
        assert await lp.sock_recv(backend, 100) == b"c NOOP\r\n"
        c.shutdown(socket.SHUT_WR)
        backend.shutdown(socket.SHUT_WR)
        assert (await closed).close_reason is None
        c.close()
        backend.close()
        lst.close()
        assert len(protos) == 2 and not any(e == ("lost", None) for e in events[5:])

    run(loop, main(), 10)


# --- BufferRelay ---------------------------------------------------------------------------


async def buffered(kind: str, **kw: object) -> tuple[Ends, BufferRelay]:
    lp = asyncio.get_running_loop()
    e = Ends(kind)
    ts = []
    for fd in e.fds:
        t, _ = await lp.create_connection(asyncio.Protocol, sock=socket.socket(fileno=fd))
        t.pause_reading()
        ts.append(t)
    return e, BufferRelay(lp, ts[0], ts[1], e.on_close, **kw)  # type: ignore[arg-type]


def test_buffer_relay_large_payload_bounded(loop: asyncio.AbstractEventLoop) -> None:
    up, down = os.urandom(16 << 20), os.urandom(16 << 20)

    async def main() -> None:
        e, relay = await buffered(
            "tcp", to_backend=b"P\r\n", to_client=b"+OK\r\n", buffer_size=4096
        )
        relay.start()
        got_up, got_down, _, _ = await asyncio.gather(
            recv_all(e.backend),
            recv_all(e.client),
            send_all(e.client, up),
            send_all(e.backend, down),
        )
        assert hashlib.sha256(got_up).digest() == hashlib.sha256(b"P\r\n" + up).digest()
        assert hashlib.sha256(got_down).digest() == hashlib.sha256(b"+OK\r\n" + down).digest()
        await e.closed
        assert relay.bytes_up == len(up) + 3 and relay.bytes_down == len(down) + 5
        e.close()
        await asyncio.sleep(0.01)

    run(loop, main())


def test_buffer_relay_half_close_and_timeout(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        e, relay = await buffered("unix")
        relay.start()
        await send_all(e.client, b"QUIT\r\n")
        assert await recv_all(e.backend) == b"QUIT\r\n"
        await send_all(e.backend, b"221 bye\r\n")
        assert await recv_all(e.client) == b"221 bye\r\n"
        assert (await e.closed).close_reason is None
        e.close()

        e, relay = await buffered("unix", timeout=0.2)
        relay.start()
        await e.closed
        assert relay.timed_out
        e.close()
        await asyncio.sleep(0.01)

    run(loop, main(), 10)


def test_splice_throughput_figure(
    loop: asyncio.AbstractEventLoop, capsys: pytest.CaptureFixture
) -> None:
    """One direction, 256 MiB through the relay between loopback TCP pairs; the apps run in
    threads in this process, so the CPU figure is an upper bound for the relay."""
    import threading

    size, chunk = 256 << 20, os.urandom(1 << 20)
    result: dict[str, float] = {}

    async def main() -> None:
        e = Ends("tcp")
        e.client.setblocking(True)
        e.backend.setblocking(True)

        def produce() -> None:
            for _ in range(size >> 20):
                e.client.sendall(chunk)
            e.client.shutdown(socket.SHUT_WR)

        def consume() -> None:
            n = 0
            buf = bytearray(1 << 20)
            while (r := e.backend.recv_into(buf)) > 0:
                n += r
            result["n"] = n
            e.backend.shutdown(socket.SHUT_WR)

        threads = [threading.Thread(target=produce), threading.Thread(target=consume)]
        t0, c0 = time.perf_counter(), time.thread_time()
        SpliceRelay(asyncio.get_running_loop(), *e.fds, e.on_close).start()
        for t in threads:
            t.start()
        await e.closed
        result["wall"] = time.perf_counter() - t0
        result["cpu"] = time.thread_time() - c0  # the loop thread only: the relay's cost
        for t in threads:
            t.join()
        e.close()

    run(loop, main())
    assert result["n"] == size
    gb = size / 1e9
    if not FIGURES:
        return
    with capsys.disabled():
        print(
            f"\nsplice relay: {size / result['wall'] / 1e6:.0f} MB/s, "
            f"{result['cpu'] / gb:.3f} CPU-s/GB in the relay thread"
        )
