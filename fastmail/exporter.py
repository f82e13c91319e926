"""The metrics listener in a worker: answers `GET /metrics` with the sums of every process.

Owns the HTTP/1.1 exchange on the socket `metrics_listen` names (bound by the master, served
by every worker: whichever accepts answers), one request per connection, bounded in size and
time, and the worker's own memory and fd figures (published into its slot every few
seconds, since a worker that changed user cannot read another's /proc/PID/fd). Must not
count nor name metrics (metrics.py does). Python on the worker's loop: a scrape is rare.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

from fastmail import __version__, metrics
from fastmail.log import ERROR

if TYPE_CHECKING:
    from fastmail._poll import Handle, Loop
    from fastmail.log import ErrorLog

REQUEST_MAX = 8192  # bytes of request head read at most
DEADLINE = 10.0  # s for a whole exchange
REFRESH = 5.0  # s between two updates of this worker's memory and fd figures
ACCEPT_BATCH = 16
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


class _Exchange:
    """One client connection: read the request head, write the answer, close."""

    __slots__ = ("exporter", "sock", "fd", "data", "out", "timer", "done")

    def __init__(self, exporter: Exporter, sock: socket.socket) -> None:
        self.exporter = exporter
        self.sock = sock
        self.fd = sock.fileno()
        self.data = b""
        self.out = b""
        self.done = False  # the answer is written: reading only to see the client's end
        loop = exporter.loop
        self.timer: Handle = loop.call_later(DEADLINE, self.close)
        loop.add_reader(self.fd, self._read)

    def _read(self) -> None:
        try:
            chunk = self.sock.recv(REQUEST_MAX)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        if not chunk:
            self.close()
            return
        if self.done:
            return  # what a client sends after its request is read and dropped
        self.data += chunk
        end = self.data.find(b"\r\n\r\n")
        if end < 0:
            end = self.data.find(b"\n\n")
        if end >= 0:
            self._answer(self.data[:end])
        elif len(self.data) >= REQUEST_MAX:
            self._reply(400, b"request head too long\n")

    def _answer(self, head: bytes) -> None:
        line = head.split(b"\n", 1)[0].rstrip(b"\r").split(b" ")
        if len(line) != 3 or not line[2].startswith(b"HTTP/1."):
            self._reply(400, b"bad request\n")
            return
        method, target = line[0], line[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            self._reply(405, b"only GET and HEAD\n", ["Allow: GET, HEAD"])
            return
        if target != b"/metrics":
            self._reply(404, b"the metrics are at /metrics\n")
            return
        self.exporter.refresh()
        body = metrics.scrape().encode()
        self._reply(200, body, head_only=method == b"HEAD", ctype=CONTENT_TYPE)

    def _reply(
        self,
        status: int,
        body: bytes,
        headers: list[str] | None = None,
        head_only: bool = False,
        ctype: str = "text/plain",
    ) -> None:
        lines = [
            f"HTTP/1.1 {status} {_REASONS[status]}",
            f"Server: fastmail/{__version__}",
            f"Content-Type: {ctype}",
            f"Content-Length: {len(body)}",
            "Connection: close",
            *(headers or []),
        ]
        self.out = ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head_only else body)
        self.done = True
        self._write()

    def _write(self) -> None:
        try:
            n = self.sock.send(self.out)
        except BlockingIOError:
            n = 0
        except OSError:
            self.close()
            return
        self.out = self.out[n:]
        loop = self.exporter.loop
        if self.out:
            loop.add_writer(self.fd, self._write)
            return
        loop.remove_writer(self.fd)
        # the client reads to our FIN; closing with its bytes unread would reset the answer
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close()

    def close(self) -> None:
        if self.fd < 0:
            return
        loop = self.exporter.loop
        loop.remove_reader(self.fd)
        loop.remove_writer(self.fd)
        self.timer.cancel()
        self.sock.close()
        self.fd = -1
        self.exporter.exchanges.discard(self)


class Exporter:
    """The worker's side of `metrics_listen`: accepts on the master's socket."""

    def __init__(self, loop: Loop, sock: socket.socket, log: ErrorLog) -> None:
        self.loop = loop
        self.sock = sock
        self.log = log
        self.exchanges: set[_Exchange] = set()
        self.listening = True
        self.refresh()
        self._timer: Handle | None = loop.call_later(REFRESH, self._tick)
        loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return  # another worker took it
            except OSError as e:
                self.log.log(ERROR, f"accept() on the metrics listener failed ({e.errno}: "
                             f"{e.strerror})")  # fmt: skip
                return
            conn.setblocking(False)
            self.exchanges.add(_Exchange(self, conn))

    def refresh(self) -> None:
        """This worker's memory and fds, into its slot."""
        metrics.refresh_self(metrics.rss_of(os.getpid()), metrics.fds_of_self())

    def _tick(self) -> None:
        self.refresh()
        self._timer = self.loop.call_later(REFRESH, self._tick)

    def stop_listening(self) -> None:
        """A stopping worker answers no new scrape (the new workers do); exchanges end."""
        if self.listening:
            self.listening = False
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()  # this process's copy: the master's stays open

    def close(self) -> None:
        self.stop_listening()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for ex in list(self.exchanges):
            ex.close()
