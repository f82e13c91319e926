"""The fake backend's server: the listening ports per protocol, the users, the mailbox it
serves and the messages it takes, the sessions it keeps for the tests to read."""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque

from fastmail.testing.backend.imap import ImapSession
from fastmail.testing.backend.pop3 import Pop3Session
from fastmail.testing.backend.session import Message, Session, Stats
from fastmail.testing.backend.smtp import SmtpSession

PROTOCOLS = ("imap", "pop3", "smtp")

DEFAULT_MAILBOX = (
    b"From: Alice <alice@example.test>\r\nTo: Bob <bob@example.test>\r\n"
    b"Subject: first fake message\r\n\r\nHello from the fake backend.\r\n",
    b"From: Carol <carol@example.test>\r\nTo: Bob <bob@example.test>\r\n"
    b"Subject: second fake message\r\n\r\n.leading dot\r\nsecond body line\r\n",
)


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
