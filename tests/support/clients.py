"""A raw line client for protocol tests (after nginx-tests' Test::Nginx::IMAP): connect, read
the greeting, send lines, read until a pattern, every step with a deadline.

It adds nothing to what is sent (no CRLF unless `send_line`) so tests control every byte.
Also `wait_greeting`, which fixtures use for readiness.
"""

from __future__ import annotations

import re
import socket
import time


class LineClient:
    def __init__(
        self, host: str, port: int, timeout: float = 5.0, source: str | None = None
    ) -> None:
        self.timeout = timeout
        self.buf = b""
        self.sock = socket.create_connection(
            (host, port), timeout=timeout, source_address=(source, 0) if source else None
        )

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> LineClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_line(self, line: bytes | str) -> None:
        self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")

    def read_until(self, pattern: bytes | re.Pattern[bytes], timeout: float | None = None) -> bytes:
        """Read until `pattern` (a regex, or bytes searched literally) matches; return the
        bytes up to the end of the match and keep the rest buffered."""
        rx = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            m = rx.search(self.buf)
            if m:
                out, self.buf = self.buf[: m.end()], self.buf[m.end() :]
                return out
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {rx.pattern!r} in {self.buf[-300:]!r}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                raise ConnectionError(f"closed before {rx.pattern!r}; got {self.buf[-300:]!r}")
            self.buf += data

    def read_line(self, timeout: float | None = None) -> bytes:
        return self.read_until(b"\n", timeout)

    def greeting(self) -> bytes:
        return self.read_line()

    def read_all(self, timeout: float | None = None) -> bytes:
        """Everything until the peer closes (or raises TimeoutError)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"still open; got {self.buf[-300:]!r}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                out, self.buf = self.buf, b""
                return out
            self.buf += data

    def command(self, line: bytes | str, until: bytes | re.Pattern[bytes] = b"\r\n") -> bytes:
        self.send_line(line)
        return self.read_until(until)


def wait_greeting(
    host: str, port: int, prefix: bytes, timeout: float = 10.0, alive: object = None
) -> bytes:
    """Poll until a connection gets a first line starting with `prefix`.

    `alive` is an optional callable returning False once the daemon died, to fail fast.
    """
    deadline = time.monotonic() + timeout
    last: Exception | bytes | None = None
    while time.monotonic() < deadline:
        if callable(alive) and not alive():
            raise RuntimeError(f"daemon for port {port} exited before greeting")
        try:
            with LineClient(host, port, timeout=max(0.1, deadline - time.monotonic())) as c:
                line = c.read_line()
            if line.startswith(prefix):
                return line
            last = line
        except (OSError, TimeoutError, ConnectionError) as exc:
            last = exc
        time.sleep(0.02)
    raise TimeoutError(f"no {prefix!r} greeting on {host}:{port}: {last!r}")
