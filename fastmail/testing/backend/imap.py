"""The fake backend's IMAP: LOGIN with synchronizing or LITERAL+ literals or quoted strings,
AUTHENTICATE PLAIN, ID, and SELECT/FETCH/LIST over the server's mailbox."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from fastmail.testing.backend.session import Session, sasl_plain

if TYPE_CHECKING:  # the server makes the sessions: no import cycle
    from fastmail.testing.backend.server import BackendServer

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
        creds = sasl_plain(b64)
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
