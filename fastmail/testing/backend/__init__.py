"""A small, fast fake IMAP/POP3/SMTP backend on asyncio (uvloop): one process, any number of ports.

It speaks just enough of each protocol for a proxy to log in the way nginx does (IMAP LOGIN with
synchronizing literals, POP3 USER/PASS, SMTP EHLO/XCLIENT/AUTH), to read a tiny mailbox and to
take mail into memory (or a Maildir). For bench/ it has bulk commands on every protocol:
`X-SINK n` / `X-ECHO n` / `X-BULK n` move n bytes without protocol framing, and `after_login`
turns a session into a pure echo or sink once logged in. It records what each session received
so tests can assert what the proxy sent. It must not import the proxy.
Its parts: server.py (BackendServer: ports, users, mailbox, store), session.py (the framing,
PROXY header and bulk modes every protocol shares), imap.py, pop3.py, smtp.py, cli.py.

    python -m fastmail.testing.backend --imap 1143 --pop3 1110 --smtp 1025 --user alice:secret
"""

from fastmail.testing.backend.cli import main
from fastmail.testing.backend.imap import ImapSession
from fastmail.testing.backend.pop3 import Pop3Session
from fastmail.testing.backend.server import DEFAULT_MAILBOX, PROTOCOLS, BackendServer
from fastmail.testing.backend.session import READY, Message, ProxyHeader, Session, Stats
from fastmail.testing.backend.smtp import SmtpSession

__all__ = [
    "DEFAULT_MAILBOX",
    "PROTOCOLS",
    "READY",
    "BackendServer",
    "ImapSession",
    "Message",
    "Pop3Session",
    "ProxyHeader",
    "Session",
    "SmtpSession",
    "Stats",
    "main",
]
