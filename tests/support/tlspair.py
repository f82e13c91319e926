"""Driving fastmail's TLS primitives (fastmail._tls.TlsStream) against a real client over a
socket pair: Python's ssl module on one end, the engine's calls on the other, no event loop.
Every wait is bounded (a few seconds at most)."""

from __future__ import annotations

import select
import socket
import ssl
import time
from pathlib import Path

from fastmail._tls import TLS_CODES, TlsStream
from fastmail.conf import load

OK, FAIL = TLS_CODES["OK"], TLS_CODES["FAIL"]
WANT_READ, WANT_WRITE = TLS_CODES["WANT_READ"], TLS_CODES["WANT_WRITE"]
CLOSED = TLS_CODES["CLOSED"]


def server_conf(tmp: Path, servers: str, name: str = "f.conf") -> list:
    """The ServerConf list of `mail { servers }` loaded from config text (contexts built)."""
    p = tmp / name
    p.write_text(f"events {{}} mail {{ auth_http 127.0.0.1:9;\n{servers}\n}}\n")
    mail = load(str(p), str(tmp) + "/").mail
    assert mail is not None
    return mail.servers


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """(server side, client side) of a loopback TCP connection, both nonblocking."""
    with socket.create_server(("127.0.0.1", 0)) as lsn:
        c = socket.create_connection(lsn.getsockname())
        s, _ = lsn.accept()
    for x in (s, c):
        x.setblocking(False)
    return s, c


def unix_pair() -> tuple[socket.socket, socket.socket]:
    s, c = socket.socketpair()
    s.setblocking(False)
    c.setblocking(False)
    return s, c


class Pair:
    """A TlsStream (server) and a Python ssl client on the two ends of a connection."""

    def __init__(
        self,
        server_ctx,
        client_ctx: ssl.SSLContext | None,
        server_hostname: str | None = "localhost",
        session: ssl.SSLSession | None = None,
        tcp: bool = False,
    ) -> None:
        self.s_sock, self.c_sock = tcp_pair() if tcp else unix_pair()
        self.server = TlsStream(server_ctx, self.s_sock.fileno())
        self.client_error: ssl.SSLError | None = None
        if client_ctx is None:  # a raw client: the test writes the bytes
            return
        self.client = client_ctx.wrap_socket(
            self.c_sock,
            server_hostname=server_hostname,
            do_handshake_on_connect=False,
            session=session,
        )
        self.c_sock = self.client  # wrap_socket took the socket over

    def handshake(self, timeout: float = 5.0) -> int:
        """Both handshakes until done or one side fails: the server's last code."""
        deadline = time.monotonic() + timeout
        s_code, c_done = WANT_READ, False
        while time.monotonic() < deadline:
            if s_code not in (OK, FAIL):
                s_code = self.server.handshake()
            if not c_done and self.client_error is None:
                try:
                    self.client.do_handshake()
                    c_done = True
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
                except (ssl.SSLError, OSError) as e:
                    self.client_error = e  # type: ignore[assignment]
            if s_code == FAIL or self.client_error is not None:
                # the other side's last word (an alert) is on the wire: let it be read
                if s_code not in (OK, FAIL):
                    s_code = self._settle()
                return s_code
            if s_code == OK and c_done:
                return OK
            select.select([self.s_sock, self.c_sock], [], [], 0.01)
        raise TimeoutError("handshake did not finish")

    def _settle(self) -> int:
        deadline = time.monotonic() + 2
        code = self.server.handshake()
        while code in (WANT_READ, WANT_WRITE) and time.monotonic() < deadline:
            select.select([self.s_sock], [], [], 0.05)
            code = self.server.handshake()
        return code

    def client_send(self, data: bytes) -> None:
        """A small write (it fits the socket buffers)."""
        self.client.setblocking(True)
        self.client.settimeout(5)
        self.client.sendall(data)
        self.client.setblocking(False)

    def client_recv(self, n: int, timeout: float = 5.0) -> bytes:
        out = b""
        deadline = time.monotonic() + timeout
        while len(out) < n and time.monotonic() < deadline:
            try:
                chunk = self.client.recv(n - len(out))
                if not chunk:
                    break
                out += chunk
            except (ssl.SSLWantReadError, BlockingIOError):
                select.select([self.c_sock], [], [], 0.05)
        return out

    def server_recv(self, n: int, timeout: float = 5.0) -> bytes:
        out = b""
        deadline = time.monotonic() + timeout
        while len(out) < n and time.monotonic() < deadline:
            got = self.server.read(max(n - len(out), 1))
            if isinstance(got, bytes):
                out += got
            elif got == WANT_READ:
                select.select([self.s_sock], [], [], 0.05)
            else:
                break
        return out

    def up(self, data: bytes, timeout: float = 10.0) -> bytes:
        """`data` from the client to the server (both sides nonblocking, interleaved): what
        the server read."""
        view, out = memoryview(data), bytearray()
        deadline = time.monotonic() + timeout
        while len(out) < len(data) and time.monotonic() < deadline:
            if view:
                try:
                    view = view[self.client.send(view[:65536]) :]
                except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                    pass
            got = self.server.read(65536)
            if isinstance(got, bytes):
                out += got
            elif got != WANT_READ:
                break
            else:
                select.select([self.s_sock], [self.c_sock] if view else [], [], 0.01)
        return bytes(out)

    def down(self, data: bytes, timeout: float = 10.0) -> bytes:
        """`data` from the server to the client: what the client read."""
        view, out = memoryview(data), bytearray()
        deadline = time.monotonic() + timeout
        while len(out) < len(data) and time.monotonic() < deadline:
            if view:
                n = self.server.write(view)
                if n > 0:
                    view = view[n:]
                elif n not in (WANT_WRITE, WANT_READ):
                    raise AssertionError(f"write failed: {self.server.error()}")
            try:
                chunk = self.client.recv(65536)
                if not chunk:
                    break
                out += chunk
            except (ssl.SSLWantReadError, BlockingIOError):
                select.select([self.c_sock], [self.s_sock] if view else [], [], 0.01)
        return bytes(out)

    def close(self) -> None:
        self.server.close()
        for x in (self.s_sock, self.c_sock):
            try:
                x.close()
            except OSError:
                pass


def native_handshake(
    server_ctx,
    client_ctx,
    name: bytes | None = b"localhost",
    session: bytes | None = None,
    timeout: float = 5.0,
):
    """fastmail's calls on both ends (a ClientContext connects): (server stream, client
    stream, sockets) after both handshakes."""  # fmt: skip
    a, b = unix_pair()
    s = TlsStream(server_ctx, a.fileno())
    c = TlsStream(client_ctx, b.fileno(), name)
    if session is not None:
        c.set_session(session)
    rs = rc = WANT_READ
    deadline = time.monotonic() + timeout
    while (rs != OK or rc != OK) and time.monotonic() < deadline:
        if rc != OK:
            rc = c.handshake()
        if rs != OK:
            rs = s.handshake()
        if FAIL in (rs, rc):
            raise AssertionError(f"handshake failed: {s.error()} / {c.error(client=False)}")
        if rs != OK or rc != OK:
            select.select([a, b], [], [], 0.01)
    assert rs == rc == OK, "handshake did not finish"
    return s, c, (a, b)
