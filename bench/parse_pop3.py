"""Micro-benchmark: recorded POP3 pre-login sessions through the Pop3Session machine.

Feeds each recorded session (greeting to the auth request, plus the auth result) through a
fresh machine, as the driver would, and prints sessions/s, commands/s and CPU microseconds
per session. No sockets, no auth_http: this is what the pre-auth phase costs in fastmail.
Run: python -m bench.parse_pop3 [--seconds 2]
"""

from __future__ import annotations

import argparse
import base64
import time
from dataclasses import dataclass

from fastmail._core import ACT_AUTH
from fastmail._pop3 import Pop3Profile, Pop3Session

SALT = b"<1426111606.1795744322@pop.example.com>\r\n"
DEFAULT = Pop3Profile()
FULL = Pop3Profile(
    auth_methods=["plain", "apop", "cram-md5", "external"], server_name=b"pop.example.com"
)


@dataclass(frozen=True)
class Recorded:
    name: str
    chunks: tuple[bytes, ...]  # what the client sent, one read() each
    commands: int  # lines the machine parsed
    profile: Pop3Profile
    retry: bool = False  # answer the first auth request with a retryable failure


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


def run_once(rec: Recorded) -> None:
    m = Pop3Session(rec.profile, salt=SALT if rec.profile is FULL else None)
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
    p = argparse.ArgumentParser(prog="python -m bench.parse_pop3")
    p.add_argument("--seconds", type=float, default=2.0, help="time per recorded session")
    a = p.parse_args(argv)
    print(f"{'session':48} {'sessions/s':>12} {'commands/s':>12} {'us CPU/session':>15}")
    for rec in SESSIONS:
        rate, us = bench(rec, a.seconds)
        print(f"{rec.name:48} {rate:12,.0f} {rate * rec.commands:12,.0f} {us:15.2f}")


if __name__ == "__main__":
    main()
