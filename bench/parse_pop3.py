"""Micro-benchmark: recorded POP3 pre-login sessions through the Pop3Session machine.

Feeds each recorded session (greeting to the auth request, plus the auth result) through a
fresh machine, as the driver would, and prints sessions/s, commands/s and CPU microseconds
per session. No sockets, no auth_http: this is what the pre-auth phase costs in fastmail.
Run: python -m bench.parse_pop3 [--seconds 2]
"""

from __future__ import annotations

import base64

from bench import machines
from bench.machines import Recorded
from fastmail._pop3 import Pop3Profile, Pop3Session

SALT = b"<1426111606.1795744322@pop.example.com>\r\n"
DEFAULT = Pop3Profile()
FULL = Pop3Profile(
    auth_methods=["plain", "apop", "cram-md5", "external"], server_name=b"pop.example.com"
)


SESSIONS = [
    Recorded("user/pass", (b"USER user@example.com\r\n", b"PASS secret password\r\n"), 2, DEFAULT),
    Recorded(
        "capa, user/pass pipelined",
        (b"CAPA\r\n", b"USER user@example.com\r\nPASS secret\r\nSTAT\r\n"),
        3,
        DEFAULT,
    ),
    Recorded(
        "auth plain ir", (b"AUTH PLAIN " + base64.b64encode(b"\0user\0pw") + b"\r\n",), 1, DEFAULT
    ),
    Recorded(
        "auth login, 3 lines",
        (b"AUTH LOGIN\r\n", base64.b64encode(b"user@example.com") + b"\r\n", b"c2VjcmV0\r\n"),
        3,
        DEFAULT,
    ),
    Recorded("apop (salted greeting)", (b"APOP user " + b"0" * 32 + b"\r\n",), 1, FULL),
    Recorded(
        "failed login, retry, noop",
        (b"USER u\r\nPASS bad\r\nNOOP\r\n", b"USER u\r\nPASS good\r\n"),
        5,
        DEFAULT,
        retry=True,
    ),
]


def make(rec: Recorded) -> Pop3Session:
    return Pop3Session(rec.profile, salt=SALT if rec.profile is FULL else None)


def main(argv: list[str] | None = None) -> None:
    machines.main("POP3 session", SESSIONS, make, argv)


if __name__ == "__main__":
    main()
