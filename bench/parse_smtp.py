"""Micro-benchmark: recorded SMTP pre-login sessions through the SmtpSession machine.

Feeds each recorded session (greeting to the auth request, plus the auth result) through a
fresh machine, as the driver would, and prints sessions/s, commands/s and CPU microseconds
per session. No sockets, no auth_http: this is what the pre-auth phase costs in fastmail.
Run: python -m bench.parse_smtp [--seconds 2]
"""

from __future__ import annotations

import base64

from bench import machines
from bench.machines import Recorded
from fastmail._smtp import SmtpProfile, SmtpSession


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data)


PLAIN = SmtpProfile(
    server_name=b"mx.example.com",
    capabilities=[b"SIZE 10485760", b"ENHANCEDSTATUSCODES", b"8BITMIME", b"PIPELINING"],
    auth_methods=["plain", "login", "cram-md5"],
)
NONE = SmtpProfile(
    server_name=b"mx.example.com", capabilities=[b"PIPELINING"], auth_methods=["none"]
)

SESSIONS = [
    Recorded(
        "ehlo+auth plain (smtplib)",
        (b"EHLO client.example.org\r\n", b"AUTH PLAIN " + _b64(b"\0user@x\0secret") + b"\r\n"),
        2,
        PLAIN,
    ),
    Recorded(
        "ehlo+auth login, 3 reads",
        (
            b"EHLO client.example.org\r\n",
            b"AUTH LOGIN\r\n",
            _b64(b"user@example.com") + b"\r\n",
            _b64(b"secret password") + b"\r\n",
        ),
        4,
        PLAIN,
    ),
    Recorded(
        "pipelined none: ehlo mail rcpt data",
        (
            b"EHLO mta.example.net\r\n",
            b"MAIL FROM:<a@example.net> SIZE=1200\r\nRCPT TO:<b@example.com>\r\nDATA\r\n",
        ),
        3,
        NONE,
    ),
    Recorded(
        "noisy: helo, noop, rset, bad, auth plain split",
        (
            b"HELO x\r\nNOOP\r\nRSET\r\nDATA\r\n",
            b"AUTH PLAIN\r\n",
            _b64(b"\0user\0pw"),
            b"\r\n",
        ),
        6,
        PLAIN,
    ),
]


def make(rec: Recorded) -> SmtpSession:
    return SmtpSession(rec.profile)


def main(argv: list[str] | None = None) -> None:
    machines.main("SMTP session", SESSIONS, make, argv)


if __name__ == "__main__":
    main()
