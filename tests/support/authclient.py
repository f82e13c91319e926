"""The engine's auth_http client (fastmail._auth) under test: canned answers, requests, a Loop
with a client on it and asks run to completion within a bound (`Harness`), the watcher that
collects results, raw-socket servers for faults, and the process's open fds (leak checks).
The fixtures that make them are in tests/unit/conftest.py."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from fastmail._auth import DONE_AUTH, AuthClient
from fastmail._core import AuthRequest
from fastmail._poll import Loop, Watcher
from fastmail.auth_http import ResponseReader

OK = b"HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\nAuth-Port: 143\r\n\r\n"
OK11 = (
    b"HTTP/1.1 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\nAuth-Port: 143\r\n"
    b"Content-Length: 2\r\n\r\nok"
)


def req(protocol: bytes = b"imap", user: bytes = b"alice", passwd: bytes = b"secret",
        method: bytes = b"plain", attempt: int = 1) -> AuthRequest:  # fmt: skip
    return AuthRequest(protocol, method, user, passwd, b"", attempt)


def open_fds() -> list[str]:
    """The process's sockets, epoll sets and pipes (what the client and its loop could leak;
    libuv keeps a spare /dev/null per loop once it listens, which is not counted)."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:  # the listing's own fd
            continue
        if target.startswith(("socket:", "pipe:", "anon_inode:[eventpoll]")):
            out.append(f"{fd} {target}")
    return sorted(out)


class Waiter(Watcher):
    """What a session is to the client: collects the results completed() brings; stops the
    loop when `want` results are in."""

    def __init__(self, loop: Loop, results: list[Any], want: list[int]) -> None:
        self.loop = loop
        self.results = results
        self.want = want
        self.handle: Any = None  # what ask() returned, until completed()

    def completed(self, kind: int, result: Any) -> int:
        assert kind == DONE_AUTH
        self.handle = None
        self.results.append(result)
        if len(self.results) >= self.want[0]:
            self.loop.stop()
        return 0


class Harness:
    """A Loop, a client on it, and asks run to completion within a bound."""

    def __init__(self, host: str | None, port: int, **kw: Any) -> None:
        self.loop = Loop()
        kw.setdefault("reader_factory", ResponseReader)
        timeout_ms = kw.pop("timeout_ms", 2000)
        pool = kw.pop("pool_size", 64)
        self.client = AuthClient(
            self.loop, host, port, b"/auth", b"127.0.0.1", timeout_ms, pool, **kw
        )
        self.results: list[Any] = []
        self._want = [0]

    def waiter(self) -> Waiter:
        return Waiter(self.loop, self.results, self._want)

    def run(self, asks: list[tuple[Waiter, AuthRequest]] | None = None, n: int | None = None,
            timeout: float = 5.0, **kw: Any) -> list[Any]:  # fmt: skip
        """Submits the asks from inside the loop, runs until n more results (default: one per
        ask) or the bound, and returns the new results."""
        asks = asks or []
        start = len(self.results)
        self._want[0] = start + (len(asks) if n is None else n)

        def submit() -> None:
            for w, auth in asks:
                w.handle = self.client.ask(
                    w,
                    auth,
                    b"127.0.0.1",
                    kw.get("client_host"),
                    kw.get("proxy_protocol"),
                    kw.get("ssl_info"),
                )

        self.loop.call_soon(submit)
        bound = self.loop.call_later(timeout, self.loop.stop)
        if len(self.results) < self._want[0] or asks:
            self.loop.run_forever()
        bound.cancel()
        return self.results[start:]

    def ask(self, auth: AuthRequest | None = None, **kw: Any) -> Any:
        got = self.run([(self.waiter(), auth or req())], **kw)
        assert len(got) == 1, "no answer within the bound"
        return got[0]

    def turn(self, seconds: float = 0.05) -> None:
        """Runs the loop for a while (lets closes and server events land)."""
        self._want[0] = 1 << 30
        self.loop.call_later(seconds, self.loop.stop)
        self.loop.run_forever()

    def until(self, pred: Callable[[], bool], timeout: float = 2.0) -> bool:
        deadline = time.monotonic() + timeout
        while not pred() and time.monotonic() < deadline:
            self.turn(0.005)
        return pred()

    def close(self) -> None:
        self.client.close()
        self.turn(0.01)
        self.loop.close()


class RawServer:
    """A TCP server on 127.0.0.1 in threads: `handle(conn, n)` serves the n-th connection.
    Records every request head it reads with `read_head`."""

    def __init__(self, handle: Callable[[socket.socket, int], None]) -> None:
        self.handle = handle
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.requests: list[bytes] = []
        self.connections = 0
        self.stopping = False
        self.threads: list[threading.Thread] = []
        self.conns: list[socket.socket] = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self.conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn, self.connections), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket, n: int) -> None:
        conn.settimeout(5)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.handle(conn, n)
        except OSError:
            pass
        finally:
            conn.close()

    def read_head(self, conn: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return b""
            data += chunk
        self.requests.append(data)
        return data

    def close(self) -> None:
        self.stopping = True
        self.sock.close()
        for conn in self.conns:  # wakes handlers blocked in recv() on kept-alive connections
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self.threads:
            t.join(5)


def keep_answering(srv: list[RawServer], answer: Callable[[int], bytes | None]) -> Callable:
    """A handler answering each request on the connection with answer(request number);
    None closes the connection without answering."""

    def handle(conn: socket.socket, n: int) -> None:
        while True:
            if not srv[0].read_head(conn):
                return
            data = answer(len(srv[0].requests))
            if data is None:
                return
            conn.sendall(data)

    return handle


def serve(raw: Callable[..., RawServer], answer: Callable[[int], bytes | None]) -> RawServer:
    box: list[RawServer] = []
    s = raw(keep_answering(box, answer))
    box.append(s)
    return s
