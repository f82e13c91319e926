"""Micro-benchmark: recorded IMAP pre-login sessions through the ImapSession machine.

Feeds each recorded session (greeting, client lines up to the auth request, the auth
result) through a fresh machine, as the driver would, and prints sessions/s, commands/s
and CPU microseconds per session (time.process_time). No sockets, no auth_http: this is
what the pre-auth phase costs in fastmail.
Run: python -m bench.parse_imap [--seconds 2]
"""

from __future__ import annotations

import base64

from bench import machines
from bench.machines import Recorded
from fastmail._imap import ImapProfile, ImapSession

DEFAULT = ImapProfile()
FULL = ImapProfile(
    capabilities=[b"IMAP4rev1", b"SASL-IR", b"LITERAL+", b"ID"],
    auth_methods=["plain", "login", "cram-md5", "xoauth2"],
    starttls="on",
    tls_available=True,
    server_name=b"mail.example.com",
)


SESSIONS = [
    Recorded(
        "capability, login",
        (b"a1 CAPABILITY\r\n", b"a2 LOGIN user@example.com secret\r\n"),
        2,
        DEFAULT,
    ),
    Recorded("login only", (b"a1 LOGIN user@example.com secret\r\n",), 1, DEFAULT),
    Recorded(
        "thunderbird-like: capability, id, login literals",
        (
            b"1 capability\r\n",
            b'2 ID ("name" "Thunderbird" "version" "115.0")\r\n',
            b"3 login {16}\r\n",
            b"user@example.com {6}\r\n",
            b"secret\r\n",
        ),
        3,
        FULL,
    ),
    Recorded(
        "authenticate plain sasl-ir, pipelined",
        (
            b"a1 CAPABILITY\r\na2 AUTHENTICATE PLAIN "
            + base64.b64encode(b"\0user@example.com\0secret")
            + b"\r\na3 SELECT INBOX\r\n",
        ),
        2,
        FULL,
    ),
    Recorded(
        "authenticate login, 3 lines",
        (
            b"a1 AUTHENTICATE LOGIN\r\n",
            base64.b64encode(b"user@example.com") + b"\r\n",
            b"c2VjcmV0\r\n",
        ),
        3,
        FULL,
    ),
    Recorded(
        "failed login, retry, noop",
        (b"a1 LOGIN u bad\r\na2 NOOP\r\n", b"a3 LOGIN u good\r\n"),
        3,
        DEFAULT,
        retry=True,
    ),
]


def make(rec: Recorded) -> ImapSession:
    return ImapSession(rec.profile)


def main(argv: list[str] | None = None) -> None:
    machines.main("IMAP session", SESSIONS, make, argv)


if __name__ == "__main__":
    main()
