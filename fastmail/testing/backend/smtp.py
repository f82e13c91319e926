"""The fake backend's SMTP: EHLO/HELO, XCLIENT, AUTH PLAIN and LOGIN, and MAIL/RCPT/DATA into
the server's store."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

from fastmail.testing.backend.session import Message, Session, sasl_plain, split_command

if TYPE_CHECKING:  # the server makes the sessions: no import cycle
    from fastmail.testing.backend.server import BackendServer


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
        verb, arg = split_command(line)
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
            creds = sasl_plain(text)
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
