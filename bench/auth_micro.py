"""The auth_http client alone: CPU µs per ask and syscalls per request of the engine's C client
(fastmail._auth on a _poll.Loop), with keep-alive connections and with nginx's HTTP/1.0
connection per request, against bench/servers.c's auth server (a separate process: its CPU is
not counted). The asker is a small Python Watcher (completed() asks again), counted in.
Just before it was removed, the asyncio client this one replaced (auth_http.AuthHttpClient on
uvloop) took 21.2 µs and 2.1 syscalls per kept-alive ask, 76.5 µs and 10.5 syscalls with
HTTP/1.0; this one 7.8 µs and 2.06, 43.9 µs and 6.13 (2 cores, busy machine; nginx makes 7
syscalls per request).

    python -m bench.auth_micro                  # CPU table, then syscalls (strace) per request
    python -m bench.auth_micro --no-strace --rounds 5 --count 20000

CPU is this process's user+system time over a run of --count asks kept --concurrency in
flight, the best of --rounds (a busy machine only adds time). Syscalls per request are the
difference between two strace -c -f runs of --count and 2 x --count asks, divided by --count,
so start-up and imports cancel out. Loopback only; every run is bounded by its count and a
deadline.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
from typing import Any

from bench.targets import SERVERS_SRC, build_c, free_port, wait_listening
from fastmail._auth import AuthClient
from fastmail._core import AuthRequest
from fastmail._poll import Loop, Watcher
from fastmail.auth_http import ResponseReader

MODES = ("keepalive", "http10")
DEADLINE_S = 120.0


def login() -> AuthRequest:
    return AuthRequest(b"imap", b"plain", b"user", b"pass", b"", 1)


class _Driver(Watcher):
    """Keeps one ask in flight: each answer submits the next until the count is reached."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.auth = login()

    def completed(self, kind: int, result: Any) -> int:
        run = self.run
        if result.status != "ok":
            run.errors += 1
        run.done += 1
        if run.started < run.count:
            run.started += 1
            run.client.ask(self, self.auth, b"127.0.0.1", None, None, None)
        elif run.done == run.count:
            run.loop.stop()
        return 0


class _Run:
    def __init__(self, port: int, pool: int, count: int, concurrency: int) -> None:
        self.loop = Loop()
        self.client = AuthClient(
            self.loop, "127.0.0.1", port, b"/auth", b"127.0.0.1", 10000, pool,
            reader_factory=ResponseReader,
        )  # fmt: skip
        self.count, self.concurrency = count, concurrency
        self.started = self.done = self.errors = 0

    def go(self) -> None:
        drivers = [_Driver(self) for _ in range(min(self.concurrency, self.count))]

        def start() -> None:
            for d in drivers:
                self.started += 1
                self.client.ask(d, d.auth, b"127.0.0.1", None, None, None)

        self.loop.call_soon(start)
        self.loop.call_later(DEADLINE_S, self.loop.stop)
        self.loop.run_forever()
        self.client.close()
        self.loop.close()


def run_mode(mode: str, port: int, count: int, concurrency: int) -> tuple[int, int]:
    r = _Run(port, 64 if mode == "keepalive" else 0, count, concurrency)
    r.go()
    return r.done, r.errors


def cpu_us_per_ask(mode: str, port: int, count: int, concurrency: int, rounds: int) -> float:
    """CPU µs (user + system: the kernel samples the split, too coarse here) per ask, best
    round."""
    run_mode(mode, port, min(count, 500), concurrency)  # warm-up
    best = float("inf")
    for _ in range(rounds):
        t0 = resource.getrusage(resource.RUSAGE_SELF)
        done, errors = run_mode(mode, port, count, concurrency)
        t1 = resource.getrusage(resource.RUSAGE_SELF)
        if done != count or errors:
            raise SystemExit(f"{mode}: {done}/{count} answered, {errors} not OK")
        used = t1.ru_utime - t0.ru_utime + t1.ru_stime - t0.ru_stime
        best = min(best, used / count * 1e6)
    return best


_STRACE_LINE = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$")


def strace_counts(mode: str, port: int, count: int, concurrency: int) -> dict[str, int]:
    with tempfile.TemporaryDirectory(prefix="fastmail-strace-") as d:
        out = os.path.join(d, "strace.txt")
        subprocess.run(
            ["strace", "-c", "-f", "-o", out, sys.executable, "-m", "bench.auth_micro",
             "--child", mode, "--port", str(port), "--count", str(count),
             "--concurrency", str(concurrency)],
            check=True, timeout=DEADLINE_S * 2,
        )  # fmt: skip
        counts: dict[str, int] = {}
        with open(out) as f:
            for line in f:
                m = _STRACE_LINE.match(line)
                if m and m.group(2) != "total":
                    counts[m.group(2)] = int(m.group(1))
        return counts


def syscalls_per_request(mode: str, port: int, count: int, concurrency: int) -> dict[str, float]:
    one = strace_counts(mode, port, count, concurrency)
    two = strace_counts(mode, port, 2 * count, concurrency)
    per = {k: (two.get(k, 0) - one.get(k, 0)) / count for k in set(one) | set(two)}
    return {k: v for k, v in sorted(per.items(), key=lambda kv: -kv[1]) if v >= 0.05}


def start_auth_server() -> tuple[subprocess.Popen[bytes], int]:
    exe = str(build_c(SERVERS_SRC))
    port = free_port()
    proc = subprocess.Popen(
        [exe, "auth", "-a", str(port), "-b", "1143,1110,1025", "-t", str(DEADLINE_S * 10)],
        stdout=subprocess.DEVNULL,
    )
    wait_listening(proc, [port], 15, "auth", lambda: "")
    return proc, port


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.auth_micro", description=__doc__.split("\n\n")[0])  # fmt: skip
    p.add_argument("--count", type=int, default=5000, help="asks per run (default 5000)")
    p.add_argument("--concurrency", type=int, default=16, help="asks in flight (default 16)")
    p.add_argument("--rounds", type=int, default=3, help="runs per mode; the best counts")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated: " + " ".join(MODES))
    p.add_argument("--no-strace", action="store_true", help="CPU only")
    p.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:  # one bounded run under strace
        done, errors = run_mode(args.child, args.port, args.count, args.concurrency)
        return 0 if done == args.count and not errors else 1
    modes = [m for m in args.modes.split(",") if m]
    proc, port = start_auth_server()
    try:
        print(f"auth_http client, {args.count} asks x {args.rounds} rounds, "
              f"{args.concurrency} in flight; bench/servers.c auth on 127.0.0.1:{port}")  # fmt: skip
        for mode in modes:
            cpu = cpu_us_per_ask(mode, port, args.count, args.concurrency, args.rounds)
            print(f"  {mode:10} {cpu:6.1f} µs CPU per ask")
        if args.no_strace or not shutil.which("strace"):
            return 0
        n = max(200, args.count // 10)
        print(f"syscalls per request (strace -c -f, {2 * n} minus {n} asks):")
        for mode in modes:
            per = syscalls_per_request(mode, port, n, args.concurrency)
            total = sum(per.values())
            text = ", ".join(f"{k} {v:.2f}" for k, v in per.items())
            print(f"  {mode:10} {total:5.2f}: {text}")
    finally:
        proc.kill()
        proc.wait(5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
