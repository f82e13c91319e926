"""The fake backend's session base: the connection, the PROXY header, line and literal framing,
the bulk modes every protocol shares, and what a session records (Message, ProxyHeader, Stats)."""

from __future__ import annotations

import asyncio
import base64
import socket
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:  # the server makes the sessions: no import cycle
    from fastmail.testing.backend.server import BackendServer

MAX_LINE = 64 * 1024
RECORD_LIMIT = 256 * 1024  # bytes of `received` kept per session
PROXY_V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"

# Bulk commands (all protocols). `n` is a byte count; without it the mode lasts until EOF.
#   X-SINK n  -> ready line, the next n bytes are read and discarded, then a done line
#   X-ECHO n  -> ready line, the next n bytes are written back as they arrive, then a done line
#   X-BULK n  -> ready line, n bytes of filler are sent, then a done line
READY = {"imap": b"+ ready\r\n", "pop3": b"+OK ready\r\n", "smtp": b"354 ready\r\n"}


@dataclass
class Message:
    """One message taken by SMTP DATA (dot-unstuffed, CRLF line ends as received)."""

    mail_from: str
    rcpt_to: list[str]
    data: bytes
    helo: str
    xclient: dict[str, str]
    auth_user: str | None
    peer: str


@dataclass
class ProxyHeader:
    version: int  # 1 or 2
    command: str  # "PROXY" or "LOCAL" (v2 health checks); v1 "UNKNOWN" is "LOCAL"
    src: tuple[str, int] | None = None
    dst: tuple[str, int] | None = None


@dataclass
class Stats:
    connections: int = 0
    logins: int = 0
    failed_logins: int = 0
    bytes_sunk: int = 0
    bytes_echoed: int = 0
    bytes_sent_bulk: int = 0
    messages: int = 0


class Session(asyncio.Protocol):
    """Line-based session with the bulk modes shared by all three protocols."""

    protocol = ""
    greeting = b""

    def __init__(self, server: BackendServer, proxy_protocol: bool) -> None:
        self.server = server
        self.expect_proxy = proxy_protocol
        self.proxy: ProxyHeader | None = None
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.buf = bytearray()
        self.received = bytearray()
        self.login: tuple[str, str] | None = None
        self.mode = ""  # "", "sink", "echo" (until EOF)
        self.count = 0  # bytes left in a counted X-SINK / X-ECHO
        self.count_mode = ""
        self.count_total = 0
        self.literal = -1  # IMAP: bytes of a literal still to read
        self.closed = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else ""
        self.server.stats.connections += 1
        self.server.sessions.append(self)
        self.server._live.add(self)
        if not self.expect_proxy:
            self.write(self.greeting)

    def data_received(self, data: bytes) -> None:
        if self.mode == "echo":
            self.server.stats.bytes_echoed += len(data)
            self.transport.write(data)  # type: ignore[union-attr]
            return
        if self.mode == "sink":
            self.server.stats.bytes_sunk += len(data)
            return
        if len(self.received) < RECORD_LIMIT:
            self.received += data[: RECORD_LIMIT - len(self.received)]
        self.buf += data
        self.process()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server._live.discard(self)
        self.transport = None

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # helpers

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def process(self) -> None:
        while self.buf and self.transport is not None and not self.transport.is_closing():
            if self.expect_proxy:
                if not self.read_proxy_header():
                    return
                continue
            if self.count:
                take = min(self.count, len(self.buf))
                if self.count_mode == "echo":
                    self.transport.write(bytes(self.buf[:take]))
                    self.server.stats.bytes_echoed += take
                else:
                    self.server.stats.bytes_sunk += take
                del self.buf[:take]
                self.count -= take
                if not self.count:
                    self.write(self.bulk_done(self.count_mode, self.count_total))
                continue
            if self.mode:
                # The rest of this read belongs to an until-EOF mode entered mid-buffer.
                rest, self.buf = bytes(self.buf), bytearray()
                self.mode, mode = "", self.mode
                self.data_received_mode(mode, rest)
                return
            if self.literal >= 0:
                if len(self.buf) < self.literal:
                    return
                lit = bytes(self.buf[: self.literal])
                del self.buf[: self.literal]
                self.literal = -1
                self.on_literal(lit)
                continue
            nl = self.buf.find(b"\n")
            if nl < 0:
                if len(self.buf) > MAX_LINE:
                    self.write(self.too_long())
                    self.close()
                return
            line = bytes(self.buf[: nl + 1])
            del self.buf[: nl + 1]
            self.on_line(line)

    def data_received_mode(self, mode: str, data: bytes) -> None:
        self.mode = mode
        if data:
            self.data_received(data)

    def read_proxy_header(self) -> bool:
        if self.buf.startswith(PROXY_V2_SIG[: len(self.buf)]) and len(self.buf) < 16:
            return False
        if self.buf.startswith(PROXY_V2_SIG):
            length = struct.unpack("!H", self.buf[14:16])[0]
            if len(self.buf) < 16 + length:
                return False
            ver_cmd, fam = self.buf[12], self.buf[13]
            body = bytes(self.buf[16 : 16 + length])
            del self.buf[: 16 + length]
            if ver_cmd & 0x0F == 0:
                self.proxy = ProxyHeader(2, "LOCAL")
            elif fam >> 4 == 1:
                s, d, sp, dp = struct.unpack("!4s4sHH", body[:12])
                self.proxy = ProxyHeader(
                    2,
                    "PROXY",
                    (socket.inet_ntop(socket.AF_INET, s), sp),
                    (socket.inet_ntop(socket.AF_INET, d), dp),
                )
            elif fam >> 4 == 2:
                s, d, sp, dp = struct.unpack("!16s16sHH", body[:36])
                self.proxy = ProxyHeader(
                    2,
                    "PROXY",
                    (socket.inet_ntop(socket.AF_INET6, s), sp),
                    (socket.inet_ntop(socket.AF_INET6, d), dp),
                )
            else:
                self.proxy = ProxyHeader(2, "LOCAL")
        else:
            nl = self.buf.find(b"\r\n")
            if nl < 0:
                if len(self.buf) > 107 or not b"PROXY ".startswith(bytes(self.buf[:6])):
                    self.close()
                return False
            parts = bytes(self.buf[:nl]).decode("latin-1").split(" ")
            del self.buf[: nl + 2]
            if len(parts) == 6 and parts[0] == "PROXY":
                self.proxy = ProxyHeader(
                    1, "PROXY", (parts[2], int(parts[4])), (parts[3], int(parts[5]))
                )
            else:
                self.proxy = ProxyHeader(1, "LOCAL")
        self.expect_proxy = False
        if self.proxy.command == "LOCAL" and not self.buf:
            # A health check: greet anyway (a real client may follow a LOCAL header).
            pass
        self.write(self.greeting)
        return True

    def logged_in(self, user: str, password: str) -> None:
        self.login = (user, password)
        if self.server.after_login:
            self.mode = self.server.after_login

    def bulk(self, mode: str, arg: str) -> None:
        """X-SINK / X-ECHO / X-BULK with an optional byte count."""
        if arg and not arg.isdigit():
            self.write(self.bad("bad byte count"))
            return
        n = int(arg) if arg else 0
        self.write(READY[self.protocol])
        if mode == "bulk":
            chunk = b"x" * 65536
            left = n
            while left > 0:
                self.write(chunk[: min(left, 65536)])
                left -= 65536
            self.server.stats.bytes_sent_bulk += n
            self.write(self.bulk_done(mode, n))
        elif n:
            self.count, self.count_mode, self.count_total = n, mode, n
        else:
            self.mode = mode

    # per protocol

    def on_line(self, line: bytes) -> None:
        raise NotImplementedError

    def on_literal(self, data: bytes) -> None:
        raise NotImplementedError

    def too_long(self) -> bytes:
        return b""

    def bad(self, text: str) -> bytes:
        raise NotImplementedError

    def bulk_done(self, mode: str, n: int) -> bytes:
        raise NotImplementedError


def split_command(line: bytes) -> tuple[str, str]:
    """(upper-case verb, rest) of a CRLF-terminated command line."""
    text = line.rstrip(b"\r\n").decode("utf-8", "surrogateescape")
    verb, _, rest = text.partition(" ")
    return verb.upper(), rest


def sasl_plain(b64: str) -> tuple[str, str] | None:
    try:
        parts = base64.b64decode(b64, validate=True).split(b"\0")
    except ValueError:
        return None
    if len(parts) != 3:
        return None
    return parts[1].decode("utf-8", "surrogateescape"), parts[2].decode("utf-8", "surrogateescape")
