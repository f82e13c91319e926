"""What bench/parse_imap.py, parse_pop3.py and parse_smtp.py share: a recorded pre-login
session, driving a fresh machine through it as session.py would (greeting, client reads, the
auth result), and timing that in CPU seconds. No sockets and no auth_http: this is what the
pre-auth phase costs in fastmail."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastmail._core import ACT_AUTH


@dataclass(frozen=True)
class Recorded:
    name: str
    chunks: tuple[bytes, ...]  # what the client sent, one read() each
    commands: int  # lines the machine parsed (IMAP literal headers excluded)
    profile: Any  # the protocol's *Profile
    retry: bool = False  # answer the first auth request with a retryable failure


def drive(m: Any, rec: Recorded) -> None:
    """One session through machine `m`, up to the auth result and the hand-over."""
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
            return
    raise AssertionError(f"{rec.name}: no auth request")


def measure(make: Callable[[Recorded], Any], rec: Recorded, seconds: float) -> tuple[float, float]:
    """(sessions per CPU second, CPU µs per session) over at least `seconds` of CPU."""
    drive(make(rec), rec)  # warm-up and sanity check
    n, batch = 0, 1000
    start = time.process_time()
    while True:
        for _ in range(batch):
            drive(make(rec), rec)
        n += batch
        used = time.process_time() - start
        if used >= seconds:
            return n / used, used / n * 1e6


def main(
    title: str,
    sessions: Sequence[Recorded],
    make: Callable[[Recorded], Any],
    argv: list[str] | None = None,
) -> None:
    ap = argparse.ArgumentParser(description=f"{title}: recorded sessions through the machine")
    ap.add_argument("--seconds", type=float, default=1.0, help="CPU seconds per session kind")
    args = ap.parse_args(argv)
    print(f"{title:<50} {'sessions/s':>12} {'commands/s':>12} {'µs/session':>11}")
    for rec in sessions:
        rate, us = measure(make, rec, args.seconds)
        print(f"{rec.name:<50} {rate:>12,.0f} {rate * rec.commands:>12,.0f} {us:>11.2f}")
