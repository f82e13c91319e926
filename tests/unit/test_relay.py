"""The relay (fastmail/_relay.pyx) over socketpairs and loopback TCP on fastmail's own loop:
no byte lost or reordered, half-close, reset, proxy_timeout, pooled pipes, no leaked fd.

The relay runs on a `_poll.Loop` in the test's thread; the client and backend applications
at both ends are plain blocking sockets driven from helper threads."""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from fastmail._poll import Loop
from fastmail._relay import Relay, pool_clear, pool_stats

FIGURES = bool(os.environ.get("FASTMAIL_RELAY_FIGURES"))  # print throughput figures
END_DONE, END_READ_CLIENT, END_READ_BACKEND, END_SEND_CLIENT, END_SEND_BACKEND = range(5)
END_TIMEOUT = 6


def nfds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def loop() -> Iterator[Loop]:
    pool_clear()
    before = nfds()
    lp = Loop()
    yield lp
    lp.close()
    pool_clear()
    assert pool_stats() == (0, 0, 0)
    assert nfds() == before, "leaked file descriptors"


def pair(kind: str) -> tuple[socket.socket, socket.socket]:
    if kind == "unix":
        a, b = socket.socketpair()
    else:
        srv = socket.create_server(("127.0.0.1", 0))
        a = socket.create_connection(srv.getsockname())
        b, _ = srv.accept()
        srv.close()
    return a, b


class Ends:
    """Client app <-> [relay] <-> backend app. The relay gets the middle two fds."""

    def __init__(self, loop: Loop, kind: str = "unix", **kw: object) -> None:
        self.loop = loop
        self.client, cp = pair(kind)
        bp, self.backend = pair(kind)
        cp.setblocking(False)
        bp.setblocking(False)
        self.ended: Relay | None = None
        self.relay = Relay(loop, cp.detach(), bp.detach(), self._closed, **kw)  # type: ignore[arg-type]
        self.errors: list[BaseException] = []
        self.threads: list[threading.Thread] = []

    def _closed(self, relay: Relay) -> None:
        self.ended = relay
        self.loop.stop()

    def app(self, fn: Callable[[], object]) -> None:
        """Runs fn in a thread (a client or backend application, blocking sockets)."""

        def body() -> None:
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - re-raised by run()
                self.errors.append(e)

        self.threads.append(threading.Thread(target=body, daemon=True))

    def run(self, timeout: float = 60) -> None:
        """Runs the loop until the relay ends, then waits for the applications."""
        for t in self.threads:
            t.start()
        self.relay.start()
        guard = self.loop.call_later(timeout, self.loop.stop)
        self.loop.run_forever()
        guard.cancel()
        for t in self.threads:
            t.join(10)
        if self.errors:
            raise self.errors[0]
        assert self.ended is not None, "the relay did not end"

    def close(self) -> None:
        self.client.close()
        self.backend.close()


def send_all(sock: socket.socket, data: bytes, shut: bool = True) -> None:
    sock.sendall(data)
    if shut:
        sock.shutdown(socket.SHUT_WR)


def recv_all(sock: socket.socket) -> bytes:
    out = bytearray()
    while True:
        chunk = sock.recv(1 << 18)
        if not chunk:
            return bytes(out)
        out += chunk


def cpu() -> float:
    t = os.times()
    return t.user + t.system


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_large_payload_each_way_concurrently(loop: Loop, kind: str) -> None:
    up = os.urandom(32 << 20)
    down = os.urandom(32 << 20)
    e = Ends(loop, kind, to_backend=b"PIPELINED\r\n", to_client=b"a1 OK logged in\r\n")
    got: dict[str, bytes] = {}
    e.app(lambda: send_all(e.client, up))
    e.app(lambda: send_all(e.backend, down))
    e.app(lambda: got.__setitem__("up", recv_all(e.backend)))
    e.app(lambda: got.__setitem__("down", recv_all(e.client)))
    t0, c0 = time.perf_counter(), cpu()
    e.run()
    wall, used = time.perf_counter() - t0, cpu() - c0
    assert hashlib.sha256(got["up"]).digest() == hashlib.sha256(b"PIPELINED\r\n" + up).digest()
    assert got["down"] == b"a1 OK logged in\r\n" + down
    assert e.relay.bytes_up == len(up) + 11 and e.relay.bytes_down == len(down) + 17
    assert e.relay.why == END_DONE
    if FIGURES:
        print(f"\n{kind}: {2 * 64 / wall:.0f} MiB/s, {used / (2 * 64 / 1024):.2f} CPU-s/GiB")
    e.close()


def test_half_close_each_way(loop: Loop) -> None:
    """The client shuts down its writing half after QUIT; the reply still comes back."""
    e = Ends(loop)
    got: dict[str, bytes] = {}

    def client() -> None:
        send_all(e.client, b"a2 LOGOUT\r\n")
        got["client"] = recv_all(e.client)

    def backend() -> None:
        got["backend"] = recv_all(e.backend)
        send_all(e.backend, b"* BYE\r\na2 OK LOGOUT\r\n")

    e.app(client)
    e.app(backend)
    e.run()
    assert got == {"backend": b"a2 LOGOUT\r\n", "client": b"* BYE\r\na2 OK LOGOUT\r\n"}
    e.close()


def test_half_close_backend_first(loop: Loop) -> None:
    e = Ends(loop)
    got: dict[str, bytes] = {}

    def backend() -> None:
        send_all(e.backend, b"* BYE going away\r\n")
        got["backend"] = recv_all(e.backend)

    def client() -> None:
        got["client"] = recv_all(e.client)
        send_all(e.client, b"last words\r\n")

    e.app(backend)
    e.app(client)
    e.run()
    assert got == {"client": b"* BYE going away\r\n", "backend": b"last words\r\n"}
    e.close()


def test_nginx_close_mode_ends_both_on_first_eof(loop: Loop) -> None:
    e = Ends(loop, half_close=False)
    got: dict[str, bytes] = {}

    def client() -> None:
        send_all(e.client, b"QUIT\r\n")
        got["client"] = recv_all(e.client)  # the relay closes: EOF without a reply

    e.app(client)
    e.app(lambda: got.__setitem__("backend", recv_all(e.backend)))
    e.run()
    assert got == {"client": b"", "backend": b"QUIT\r\n"}
    e.close()


def test_client_reset_closes_session(loop: Loop) -> None:
    e = Ends(loop, kind="tcp")

    def client() -> None:
        e.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        e.client.close()  # RST

    e.app(client)
    e.app(lambda: recv_all(e.backend))
    e.run()
    assert e.relay.why == END_READ_CLIENT and e.relay.error == 104  # ECONNRESET
    e.backend.close()


def test_write_error_closes_at_once(loop: Loop) -> None:
    e = Ends(loop, kind="tcp")

    def backend() -> None:
        e.backend.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        e.backend.close()

    def client() -> None:
        time.sleep(0.2)
        try:
            for _ in range(50):
                e.client.send(b"x" * 65536)
                time.sleep(0.01)
        except OSError:
            pass

    e.app(backend)
    e.app(client)
    e.run(timeout=20)
    assert e.relay.why in (END_SEND_BACKEND, END_READ_BACKEND)
    e.client.close()


def test_proxy_timeout_counts_client_activity_only(loop: Loop) -> None:
    e = Ends(loop, timeout=0.4)
    t0 = time.monotonic()

    def backend() -> None:
        # the backend chatters every 0.1 s: that does not keep the session alive
        try:
            for _ in range(40):
                e.backend.send(b"* noise\r\n")
                time.sleep(0.1)
        except OSError:
            pass

    def client() -> None:
        # the client speaks every 0.2 s for 0.8 s, then goes quiet
        for _ in range(4):
            e.client.send(b"a NOOP\r\n")
            time.sleep(0.2)

    e.app(backend)
    e.app(client)
    e.run(timeout=10)
    took = time.monotonic() - t0
    assert e.relay.why == END_TIMEOUT and e.relay.error == 110
    assert 1.0 <= took < 2.5, took
    e.close()


def test_idle_session_holds_no_pipe(loop: Loop) -> None:
    e = Ends(loop)
    seen: list[tuple[int, int, int]] = []

    def apps() -> None:
        e.client.sendall(b"hello\r\n")
        assert e.backend.recv(100) == b"hello\r\n"
        time.sleep(0.2)
        seen.append(pool_stats())
        e.client.close()
        e.backend.close()

    e.app(apps)
    e.run(timeout=10)
    # the pipe went back to the pool once drained: open pipes == idle pipes
    assert seen and seen[0][0] == seen[0][1] == 1


def test_many_small_exchanges_each_need_an_edge(loop: Loop) -> None:
    """A ping-pong of 2,000 small lines: every byte arrives as its own edge."""
    e = Ends(loop, kind="tcp")
    n = 2000

    def client() -> None:
        f = e.client.makefile("rb")
        for i in range(n):
            e.client.sendall(b"%d\r\n" % i)
            assert f.readline() == b"ok %d\r\n" % i
        e.client.shutdown(socket.SHUT_WR)
        assert f.read() == b""

    def backend() -> None:
        f = e.backend.makefile("rb")
        for i in range(n):
            assert f.readline() == b"%d\r\n" % i
            e.backend.sendall(b"ok %d\r\n" % i)
        assert f.read() == b""
        e.backend.shutdown(socket.SHUT_WR)

    e.app(client)
    e.app(backend)
    e.run(timeout=60)
    assert e.relay.bytes_up == sum(len(b"%d\r\n" % i) for i in range(n))
    e.close()
