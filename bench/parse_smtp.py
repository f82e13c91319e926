"""Micro-benchmark: recorded SMTP pre-login sessions through the SmtpSession machine.

Feeds each recorded session (greeting to the auth request, plus the auth result) through a
fresh machine, as the driver would, and prints sessions/s, commands/s and CPU microseconds
per session. No sockets, no auth_http: this is what the pre-auth phase costs in fastmail.
Run: python -m bench.parse_smtp [--seconds 2]
"""

from __future__ import annotations

import argparse
import base64
import time
from dataclasses import dataclass

from fastmail._core import ACT_AUTH
from fastmail._smtp import SmtpProfile, SmtpSession


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data)


@dataclass(frozen=True)
class Recorded:
    name: str
    chunks: tuple[bytes, ...]  # client reads, as they arrived
    commands: int
    profile: SmtpProfile


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


def run_once(rec: Recorded) -> None:
    m = SmtpSession(rec.profile)
    m.start()
    m.take_output()
    for chunk in rec.chunks:
        act = m.feed(chunk)
        m.take_output()
        if act & ACT_AUTH:
            m.on_auth_ok()
            m.take_input()
            break


def bench(rec: Recorded, seconds: float) -> tuple[float, float]:
    n = 0
    batch = 2000
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    while time.perf_counter() - wall0 < seconds:
        for _ in range(batch):
            run_once(rec)
        n += batch
    cpu = time.process_time() - cpu0
    return n / cpu, cpu / n * 1e6


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.parse_smtp")
    p.add_argument("--seconds", type=float, default=2.0, help="time per recorded session")
    a = p.parse_args(argv)
    print(f"{'session':48} {'sessions/s':>12} {'commands/s':>12} {'us CPU/session':>15}")
    for rec in SESSIONS:
        rate, us = bench(rec, a.seconds)
        print(f"{rec.name:48} {rate:12,.0f} {rate * rec.commands:12,.0f} {us:15.2f}")


if __name__ == "__main__":
    main()
