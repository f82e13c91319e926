"""Driving a backend login machine (fastmail/_login.pyx, _smtplogin.pyx) from tests, as the
engine does: the backend's replies in (whole or byte by byte), what went to the backend and the
client out."""

from __future__ import annotations

from typing import Any

from fastmail._core import ACT_BACKEND, ACT_CLOSE, ACT_DONE, ACT_SEND, AuthRequest
from fastmail._login import BackendLogin
from fastmail._smtplogin import SmtpLogin


def req(protocol: bytes, user: bytes = b"user", passwd: bytes = b"pass", **kw: Any) -> AuthRequest:
    a = AuthRequest(protocol, kw.pop("method", b"plain"), user, passwd)
    for k, v in kw.items():
        setattr(a, k, v)
    return a


class Backend:
    """Plays the backend: each reply goes in (optionally split byte by byte); records what
    the machine sent to the backend and to the client."""

    def __init__(self, m: BackendLogin, split: bool = False) -> None:
        self.m = m
        self.split = split
        self.sent: list[bytes] = []
        act = m.start()
        if act & ACT_BACKEND:
            self.sent.append(m.take_backend_output())
        self.client = b""
        self.act = act

    def reply(self, data: bytes) -> int:
        chunks = [data[i : i + 1] for i in range(len(data))] if self.split else [data]
        act = 0
        for c in chunks:
            assert not act & (ACT_DONE | ACT_CLOSE), "fed after the end"
            act = self.m.feed(c)
            if act & ACT_BACKEND:
                self.sent.append(self.m.take_backend_output())
            if act & ACT_SEND:
                self.client += self.m.take_output()
        self.act = act
        return act


def smtp(
    user: bytes = b"test",
    passwd: bytes = b"secret",
    helo: bytes = b"",
    esmtp: bool = False,
    method: bytes = b"plain",
    mail: bytes = b"",
    rcpt: bytes = b"",
    addr: str = "127.0.0.1",
    **kw: object,
) -> SmtpLogin:
    a = req(
        b"smtp",
        user,
        passwd,
        method=method,
        smtp_helo=helo,
        esmtp=esmtp,
        smtp_from=mail,
        smtp_to=rcpt,
    )
    return SmtpLogin(a, server_name=b"mx.test", client_addr=addr, **kw)  # type: ignore[arg-type]


def run_smtp(m: SmtpLogin, last: bytes = b"250 ok\r\n", split: bool = False) -> Backend:
    """Greets, then answers each command by its expected code until the machine ends."""
    b = Backend(m, split)
    b.reply(b"220 backend ESMTP\r\n")
    for _ in range(10):
        if b.act & (ACT_DONE | ACT_CLOSE):
            break
        cmd = b.sent[-1]
        if cmd == b"AUTH LOGIN\r\n":
            b.reply(b"334 VXNlcm5hbWU6\r\n")
        elif b.sent[-2:-1] == [b"AUTH LOGIN\r\n"]:
            b.reply(b"334 UGFzc3dvcmQ6\r\n")  # the user name went: the password next
        elif cmd.startswith(b"AUTH") or b.sent[-3:-2] == [b"AUTH LOGIN\r\n"]:
            b.reply(b"235 2.7.0 ok\r\n")
        elif cmd.startswith(b"XCLIENT"):
            b.reply(b"220 new greeting\r\n")
        elif cmd.upper().startswith(b"RCPT"):
            b.reply(last)
        else:
            b.reply(b"250-backend\r\n250 8BITMIME\r\n")
    return b
