"""The fake backend's POP3: USER/PASS, XCLIENT, and STAT/LIST/UIDL/RETR/DELE over the server's
mailbox."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from fastmail.testing.backend.session import Session, split_command

if TYPE_CHECKING:  # the server makes the sessions: no import cycle
    from fastmail.testing.backend.server import BackendServer


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
        verb, arg = split_command(line)
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
