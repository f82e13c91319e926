"""A small, fast fake IMAP/POP3/SMTP backend on asyncio (uvloop): one process, any number of ports.

It speaks just enough of each protocol for a proxy to log in the way nginx does (IMAP LOGIN with
synchronizing literals, POP3 USER/PASS, SMTP EHLO/XCLIENT/AUTH), to read a tiny mailbox and to
take mail into memory (or a Maildir). For bench/ it has bulk commands on every protocol:
`X-SINK n` / `X-ECHO n` / `X-BULK n` move n bytes without protocol framing, and `after_login`
turns a session into a pure echo or sink once logged in. It records what each session received
so tests can assert what the proxy sent. It must not import the proxy.

    python -m fastmail.testing.backend --imap 1143 --pop3 1110 --smtp 1025 --user alice:secret
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import ipaddress
import os
import re
import signal
import socket
import struct
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import cast

PROTOCOLS = ("imap", "pop3", "smtp")
MAX_LINE = 64 * 1024
RECORD_LIMIT = 256 * 1024  # bytes of `received` kept per session
PROXY_V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"

DEFAULT_MAILBOX = (
    b"From: Alice <alice@example.test>\r\nTo: Bob <bob@example.test>\r\n"
    b"Subject: first fake message\r\n\r\nHello from the fake backend.\r\n",
    b"From: Carol <carol@example.test>\r\nTo: Bob <bob@example.test>\r\n"
    b"Subject: second fake message\r\n\r\n.leading dot\r\nsecond body line\r\n",
)

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


class BackendServer:
    """The fake backend. `users=None` accepts every login (any password)."""

    def __init__(
        self,
        users: dict[str, str] | None = None,
        mailbox: tuple[bytes, ...] | list[bytes] = DEFAULT_MAILBOX,
        after_login: str | None = None,
        hostname: str = "fake.backend.test",
        maildir: str | None = None,
        keep_sessions: int = 1000,
    ) -> None:
        if after_login not in (None, "echo", "sink"):
            raise ValueError("after_login must be None, 'echo' or 'sink'")
        self.users = users
        self.mailbox = list(mailbox)
        self.after_login = after_login
        self.hostname = hostname
        self.maildir = maildir
        self.stats = Stats()
        self.sessions: deque[Session] = deque(maxlen=keep_sessions)
        self.messages: list[Message] = []
        self.ports: dict[str, list[int]] = {p: [] for p in PROTOCOLS}
        self._servers: list[asyncio.AbstractServer] = []
        self._live: set[Session] = set()

    def check(self, user: str, password: str) -> bool:
        ok = self.users is None or self.users.get(user) == password
        if ok:
            self.stats.logins += 1
        else:
            self.stats.failed_logins += 1
        return ok

    async def listen(
        self, protocol: str, host: str = "127.0.0.1", port: int = 0, proxy_protocol: bool = False
    ) -> int:
        """Serve `protocol` on host:port (0 = any free port); returns the port."""
        cls = {"imap": ImapSession, "pop3": Pop3Session, "smtp": SmtpSession}[protocol]
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: cls(self, proxy_protocol), host, port, reuse_address=True, backlog=1024
        )
        self._servers.append(server)
        bound = server.sockets[0].getsockname()[1]
        self.ports[protocol].append(bound)
        return int(bound)

    def port(self, protocol: str) -> int:
        """The first port serving `protocol`."""
        return self.ports[protocol][0]

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        for s in list(self._live):
            s.abort()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()

    def store(self, msg: Message) -> None:
        self.messages.append(msg)
        self.stats.messages += 1
        if self.maildir:
            for sub in ("tmp", "new", "cur"):
                os.makedirs(os.path.join(self.maildir, sub), exist_ok=True)
            name = f"{time.time():.6f}.{os.getpid()}.{self.stats.messages}.fake"
            tmp = os.path.join(self.maildir, "tmp", name)
            with open(tmp, "wb") as f:
                f.write(msg.data)
            os.rename(tmp, os.path.join(self.maildir, "new", name))


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


def _arg(line: bytes) -> tuple[str, str]:
    """(upper-case verb, rest) of a CRLF-terminated command line."""
    text = line.rstrip(b"\r\n").decode("utf-8", "surrogateescape")
    verb, _, rest = text.partition(" ")
    return verb.upper(), rest


def _sasl_plain(b64: str) -> tuple[str, str] | None:
    try:
        parts = base64.b64decode(b64, validate=True).split(b"\0")
    except ValueError:
        return None
    if len(parts) != 3:
        return None
    return parts[1].decode("utf-8", "surrogateescape"), parts[2].decode("utf-8", "surrogateescape")


# ---------------------------------------------------------------------------------------------
# IMAP

_IMAP_TOKEN = re.compile(rb' *(?:"((?:[^"\\]|\\.)*)"|([^ "]+))')
_LITERAL_END = re.compile(rb"\{(\d+)(\+?)\}\r?\n$")


class ImapSession(Session):
    protocol = "imap"
    greeting = b"* OK fake imap ready\r\n"
    CAPS = b"* CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN X-SINK X-ECHO X-BULK\r\n"

    def __init__(self, server: BackendServer, proxy_protocol: bool) -> None:
        super().__init__(server, proxy_protocol)
        self.tokens: list[bytes] = []
        self.sasl_tag: bytes | None = None
        self.bulk_tag = b"*"
        self.selected = False

    def on_line(self, line: bytes) -> None:
        if self.sasl_tag is not None:
            tag, self.sasl_tag = self.sasl_tag, None
            self.authenticate(tag, line.strip().decode("latin-1"))
            return
        m = _LITERAL_END.search(line)
        head = line[: m.start()] if m else line.rstrip(b"\r\n")
        if not self.tokens and head.startswith(b" "):
            self.tokens.append(b"")  # nginx keeps a client's empty tag: " LOGIN {4}"
        self.tokens += [
            q.replace(b'\\"', b'"').replace(b"\\\\", b"\\") if q or not atom else atom
            for q, atom in _IMAP_TOKEN.findall(head)
        ]
        if m:
            self.literal = int(m.group(1))
            if not m.group(2):
                self.write(b"+ go ahead\r\n")
            return
        tokens, self.tokens = self.tokens, []
        self.command(tokens)

    def on_literal(self, data: bytes) -> None:
        self.tokens.append(data)

    def bad(self, text: str) -> bytes:
        return f"* BAD {text}\r\n".encode()

    def too_long(self) -> bytes:
        return b"* BAD line too long\r\n"

    def bulk_done(self, mode: str, n: int) -> bytes:
        return self.bulk_tag + f" OK X-{mode.upper()} {n} bytes\r\n".encode()

    def command(self, tokens: list[bytes]) -> None:
        if len(tokens) < 2:
            self.write(b"* BAD missing command\r\n")
            return
        tag = tokens[0]
        cmd = tokens[1].upper().decode("latin-1")
        args = tokens[2:]
        t = tag + b" "
        if cmd == "CAPABILITY":
            self.write(self.CAPS + t + b"OK CAPABILITY completed\r\n")
        elif cmd == "NOOP":
            self.write(t + b"OK NOOP completed\r\n")
        elif cmd == "LOGOUT":
            self.write(b"* BYE fake imap bye\r\n" + t + b"OK LOGOUT completed\r\n")
            self.close()
        elif cmd == "ID":
            self.write(b"* ID NIL\r\n" + t + b"OK ID completed\r\n")
        elif cmd == "LOGIN" and len(args) == 2:
            user = args[0].decode("utf-8", "surrogateescape")
            password = args[1].decode("utf-8", "surrogateescape")
            if self.server.check(user, password):
                self.write(t + b"OK LOGIN completed\r\n")
                self.logged_in(user, password)
            else:
                self.write(t + b"NO [AUTHENTICATIONFAILED] Invalid credentials\r\n")
        elif cmd == "AUTHENTICATE" and args and args[0].upper() == b"PLAIN":
            if len(args) > 1:
                self.authenticate(tag, args[1].decode("latin-1"))
            else:
                self.sasl_tag = tag
                self.write(b"+ \r\n")
        elif cmd in ("SELECT", "EXAMINE") and self.login:
            self.selected = True
            n = len(self.server.mailbox)
            mode = b"READ-WRITE" if cmd == "SELECT" else b"READ-ONLY"
            self.write(
                b"* FLAGS (\\Seen \\Deleted)\r\n* %d EXISTS\r\n* 0 RECENT\r\n"
                b"* OK [UIDVALIDITY 1] UIDs valid\r\n%sOK [%s] %s completed\r\n"
                % (n, t, mode, cmd.encode())
            )
        elif cmd == "FETCH" and self.selected and args:
            self.fetch(t, b" ".join(args))
        elif cmd == "UID" and self.selected and len(args) > 1 and args[0].upper() == b"FETCH":
            self.fetch(t, b" ".join(args[1:]), uid=True)  # UIDs equal sequence numbers here
        elif cmd in ("LIST", "LSUB") and self.login:
            self.write(
                b'* %s () "/" INBOX\r\n%sOK %s completed\r\n' % (cmd.encode(), t, cmd.encode())
            )
        elif cmd in ("X-SINK", "X-ECHO", "X-BULK"):
            self.bulk_tag = tag
            self.bulk(cmd[2:].lower(), args[0].decode("latin-1") if args else "")
        else:
            self.write(t + b"BAD unknown command or wrong state\r\n")

    def authenticate(self, tag: bytes, b64: str) -> None:
        creds = _sasl_plain(b64)
        if creds and self.server.check(*creds):
            self.write(tag + b" OK AUTHENTICATE completed\r\n")
            self.logged_in(*creds)
        else:
            self.write(tag + b" NO [AUTHENTICATIONFAILED] Invalid credentials\r\n")

    def fetch(self, t: bytes, spec: bytes, uid: bool = False) -> None:
        seq, _, items = spec.partition(b" ")
        box = self.server.mailbox
        try:
            if seq == b"1:*":
                nums = list(range(1, len(box) + 1))
            else:
                nums = [int(x) for x in seq.split(b",")]
        except ValueError:
            self.write(t + b"BAD bad sequence set\r\n")
            return
        out = bytearray()
        for n in nums:
            if not 0 < n <= len(box):
                continue
            msg = box[n - 1]
            uid_item = b"UID %d " % n if uid else b""
            if b"RFC822.SIZE" in items.upper():
                out += b"* %d FETCH (%sRFC822.SIZE %d)\r\n" % (n, uid_item, len(msg))
            else:
                out += b"* %d FETCH (%sBODY[] {%d}\r\n%s)\r\n" % (n, uid_item, len(msg), msg)
        self.write(bytes(out) + t + b"OK FETCH completed\r\n")


# ---------------------------------------------------------------------------------------------
# POP3


class Pop3Session(Session):
    protocol = "pop3"
    greeting = b"+OK fake pop3 ready\r\n"

    def __init__(self, server: BackendServer, proxy_protocol: bool) -> None:
        super().__init__(server, proxy_protocol)
        self.user: str | None = None
        self.deleted: set[int] = set()

    def bad(self, text: str) -> bytes:
        return f"-ERR {text}\r\n".encode()

    def too_long(self) -> bytes:
        return b"-ERR line too long\r\n"

    def bulk_done(self, mode: str, n: int) -> bytes:
        return f"+OK X-{mode.upper()} {n} bytes\r\n".encode()

    def on_line(self, line: bytes) -> None:
        verb, arg = _arg(line)
        box = self.server.mailbox
        if verb == "USER" and not self.login:
            self.user = arg
            self.write(b"+OK user accepted\r\n")
        elif verb == "PASS" and self.user is not None and not self.login:
            user, self.user = self.user, None
            if self.server.check(user, arg):
                self.write(b"+OK logged in\r\n")
                self.logged_in(user, arg)
            else:
                self.write(b"-ERR [AUTH] Invalid credentials\r\n")
        elif verb == "CAPA":
            self.write(b"+OK Capability list follows\r\nUSER\r\nUIDL\r\nX-SINK\r\n.\r\n")
        elif verb == "NOOP":
            self.write(b"+OK\r\n")
        elif verb == "QUIT":
            self.write(b"+OK fake pop3 bye\r\n")
            self.close()
        elif verb == "XCLIENT":
            self.write(b"+OK Updated\r\n")
        elif verb in ("X-SINK", "X-ECHO", "X-BULK"):
            self.bulk(verb[2:].lower(), arg)
        elif not self.login:
            self.write(b"-ERR not logged in\r\n")
        elif verb == "STAT":
            live = [m for i, m in enumerate(box, 1) if i not in self.deleted]
            self.write(b"+OK %d %d\r\n" % (len(live), sum(map(len, live))))
        elif verb in ("LIST", "UIDL"):
            rows = [
                b"%d %s\r\n" % (i, str(len(m)).encode() if verb == "LIST" else b"fake-%d" % i)
                for i, m in enumerate(box, 1)
                if i not in self.deleted
            ]
            self.write(b"+OK\r\n" + b"".join(rows) + b".\r\n")
        elif verb in ("RETR", "DELE"):
            n = int(arg) if arg.isdigit() else 0
            if not 0 < n <= len(box) or n in self.deleted:
                self.write(b"-ERR no such message\r\n")
            elif verb == "DELE":
                self.deleted.add(n)
                self.write(b"+OK deleted\r\n")
            else:
                msg = box[n - 1]
                body = re.sub(rb"(?m)^\.", b"..", msg)
                if not body.endswith(b"\r\n"):
                    body += b"\r\n"
                self.write(b"+OK %d octets\r\n%s.\r\n" % (len(msg), body))
        elif verb == "RSET":
            self.deleted.clear()
            self.write(b"+OK\r\n")
        else:
            self.write(b"-ERR unknown command\r\n")


# ---------------------------------------------------------------------------------------------
# SMTP


class SmtpSession(Session):
    protocol = "smtp"

    def __init__(self, server: BackendServer, proxy_protocol: bool) -> None:
        super().__init__(server, proxy_protocol)
        self.greeting = f"220 {server.hostname} ESMTP fake ready\r\n".encode()
        self.helo = ""
        self.xclient: dict[str, str] = {}
        self.mail_from: str | None = None
        self.rcpts: list[str] = []
        self.data: bytearray | None = None
        self.sasl: str | None = None  # "plain", "login-user", "login-pass"
        self.sasl_user = ""

    def bad(self, text: str) -> bytes:
        return f"501 5.5.4 {text}\r\n".encode()

    def too_long(self) -> bytes:
        return b"500 5.5.2 line too long\r\n"

    def bulk_done(self, mode: str, n: int) -> bytes:
        return f"250 2.0.0 X-{mode.upper()} {n} bytes\r\n".encode()

    def on_line(self, line: bytes) -> None:
        if self.data is not None:
            if line in (b".\r\n", b".\n"):
                data, self.data = bytes(self.data), None
                self.server.store(
                    Message(
                        self.mail_from or "",
                        self.rcpts,
                        data,
                        self.helo,
                        dict(self.xclient),
                        self.login[0] if self.login else None,
                        self.peer,
                    )
                )
                self.mail_from, self.rcpts = None, []
                self.write(b"250 2.0.0 Ok: queued as FAKE%d\r\n" % self.server.stats.messages)
            else:
                self.data += line[1:] if line.startswith(b".") else line
            return
        if self.sasl is not None:
            self.sasl_step(line.strip().decode("latin-1"))
            return
        verb, arg = _arg(line)
        if verb == "EHLO":
            self.helo = arg
            name = self.server.hostname.encode()
            self.write(
                b"250-%s\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n"
                b"250-XCLIENT NAME ADDR PROTO HELO LOGIN PORT\r\n250-AUTH PLAIN LOGIN\r\n"
                b"250-8BITMIME\r\n250 X-SINK\r\n" % name
            )
        elif verb == "HELO":
            self.helo = arg
            self.write(b"250 %s\r\n" % self.server.hostname.encode())
        elif verb == "XCLIENT":
            for attr in arg.split(" "):
                k, _, v = attr.partition("=")
                if k:
                    self.xclient[k.upper()] = v
            self.helo = ""
            self.write(self.greeting)
        elif verb == "AUTH":
            mech, _, ir = arg.partition(" ")
            mech = mech.upper()
            if mech == "PLAIN":
                if ir:
                    self.sasl = "plain"
                    self.sasl_step(ir)
                else:
                    self.sasl = "plain"
                    self.write(b"334 \r\n")
            elif mech == "LOGIN":
                self.sasl = "login-user"
                if ir:
                    self.sasl_step(ir)
                else:
                    self.write(b"334 VXNlcm5hbWU6\r\n")
            else:
                self.write(b"504 5.5.4 mechanism not supported\r\n")
        elif verb == "MAIL":
            self.mail_from = arg
            self.rcpts = []
            self.write(b"250 2.1.0 Ok\r\n")
        elif verb == "RCPT":
            if self.mail_from is None:
                self.write(b"503 5.5.1 need MAIL first\r\n")
            else:
                self.rcpts.append(arg)
                self.write(b"250 2.1.5 Ok\r\n")
        elif verb == "DATA":
            if not self.rcpts:
                self.write(b"503 5.5.1 need RCPT first\r\n")
            else:
                self.data = bytearray()
                self.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
        elif verb == "RSET":
            self.mail_from, self.rcpts = None, []
            self.write(b"250 2.0.0 Ok\r\n")
        elif verb == "NOOP":
            self.write(b"250 2.0.0 Ok\r\n")
        elif verb == "QUIT":
            self.write(b"221 2.0.0 Bye\r\n")
            self.close()
        elif verb in ("X-SINK", "X-ECHO", "X-BULK"):
            self.bulk(verb[2:].lower(), arg)
        else:
            self.write(b"502 5.5.2 Error: command not recognized\r\n")

    def sasl_step(self, text: str) -> None:
        if text == "*":
            self.sasl = None
            self.write(b"501 5.7.0 Authentication aborted\r\n")
            return
        if self.sasl == "plain":
            creds = _sasl_plain(text)
        elif self.sasl == "login-user":
            try:
                self.sasl_user = base64.b64decode(text, validate=True).decode("utf-8", "replace")
            except ValueError:
                self.sasl = None
                self.write(b"501 5.5.2 bad base64\r\n")
                return
            self.sasl = "login-pass"
            self.write(b"334 UGFzc3dvcmQ6\r\n")
            return
        else:
            try:
                pw = base64.b64decode(text, validate=True).decode("utf-8", "replace")
            except ValueError:
                pw = None
            creds = (self.sasl_user, pw) if pw is not None else None
        self.sasl = None
        if creds and self.server.check(*creds):
            self.write(b"235 2.7.0 Authentication successful\r\n")
            self.logged_in(*creds)
        else:
            self.write(b"535 5.7.8 Error: authentication failed\r\n")


# ---------------------------------------------------------------------------------------------
# Command line


def _user(text: str) -> tuple[str, str]:
    name, sep, password = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError("users are NAME:PASSWORD")
    return name, password


async def _serve(args: argparse.Namespace) -> None:
    users = dict(args.user) if args.user else None
    server = BackendServer(users=users, after_login=args.after_login, maildir=args.maildir)
    ipaddress.ip_address(args.host)
    for proto in PROTOCOLS:
        for port in getattr(args, proto) or ():
            bound = await server.listen(proto, args.host, port, args.proxy_protocol)
            print(f"fake {proto} on {args.host}:{bound}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()
    print(f"fake backend stats: {server.stats}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m fastmail.testing.backend", description="Fake IMAP/POP3/SMTP backend."
    )
    for proto in PROTOCOLS:
        p.add_argument(f"--{proto}", type=int, action="append", metavar="PORT")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--user", type=_user, action="append", help="NAME:PASSWORD (default: any)")
    p.add_argument("--after-login", choices=("echo", "sink"), help="relay-benchmark mode")
    p.add_argument("--proxy-protocol", action="store_true", help="expect a PROXY v1/v2 header")
    p.add_argument("--maildir", help="also write SMTP messages into this Maildir")
    args = p.parse_args(argv)
    if not any(getattr(args, proto) for proto in PROTOCOLS):
        p.error("give at least one of --imap, --pop3, --smtp")
    from fastmail.testing import new_loop

    loop = new_loop()
    try:
        loop.run_until_complete(_serve(args))
    except KeyboardInterrupt:
        pass
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
