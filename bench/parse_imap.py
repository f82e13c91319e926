"""Micro-benchmark: recorded IMAP pre-login sessions through the ImapSession machine.

Feeds each recorded session (greeting, client lines up to the auth request, the auth
result) through a fresh machine, as the driver would, and prints sessions/s, commands/s
and CPU microseconds per session (time.process_time). No sockets, no auth_http: this is
what the pre-auth phase costs in fastmail.
Run: python bench/parse_imap.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import time
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fastmail._core import ACT_AUTH  # noqa: E402
from fastmail._imap import ImapProfile, ImapSession  # noqa: E402

DEFAULT = ImapProfile()
FULL = ImapProfile(
    capabilities=[b"IMAP4rev1", b"SASL-IR", b"LITERAL+", b"ID"],
    auth_methods=["plain", "login", "cram-md5", "xoauth2"],
    starttls="on",
    tls_available=True,
    server_name=b"mail.example.com",
)


@dataclass(frozen=True)
class Recorded:
    name: str
    chunks: tuple[bytes, ...]  # what the client sent, one read() each
    commands: int  # lines the machine parsed (literal headers excluded)
    profile: ImapProfile
    retry: bool = False  # answer the first auth request with a retryable failure


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


def run_once(rec: Recorded) -> None:
    m = ImapSession(rec.profile)
    m.start()
    m.take_output()
    retry = rec.retry
    for chunk in rec.chunks:
        act = m.feed(chunk)
        m.take_output()
        if act & ACT_AUTH:
            if retry:
                retry = False
                m.on_auth_fail(b"Invalid login or password", None, True)
                m.take_output()
                continue
            m.on_auth_ok()
            m.take_input()
            break
    else:
        raise AssertionError(f"{rec.name}: no auth request")


def measure(rec: Recorded, seconds: float) -> tuple[float, float]:
    """Returns (sessions per CPU second, CPU µs per session)."""
    run_once(rec)  # warm-up and sanity check
    n = 0
    batch = 1000
    start = time.process_time()
    while True:
        for _ in range(batch):
            run_once(rec)
        n += batch
        used = time.process_time() - start
        if used >= seconds:
            break
    return n / used, used / n * 1e6


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="CPU seconds per session kind")
    args = ap.parse_args(argv)
    print(f"{'IMAP session':<50} {'sessions/s':>12} {'commands/s':>12} {'µs/session':>11}")
    for rec in SESSIONS:
        rate, us = measure(rec, args.seconds)
        print(f"{rec.name:<50} {rate:>12,.0f} {rate * rec.commands:>12,.0f} {us:>11.2f}")


if __name__ == "__main__":
    main()
