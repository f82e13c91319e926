"""What the bench attaches to a running proxy besides /proc: strace's syscall counts and perf's
profile.

Owns: starting `strace -f -c` and `perf record -e cpu-clock -g` on a proxy's process tree,
knowing when they are attached, stopping them (SIGINT: both then write what they gathered),
and reading their output into plain data (syscall -> calls; top symbols with their share).
Both slow the proxy down, so the runs they watch are separate from the timed ones (callers
see to that). Must not: measure time or CPU itself, or keep the raw files anywhere but the
run's work dir.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Self

ATTACH_TIMEOUT = 10.0
STOP_TIMEOUT = 60.0  # perf writes its file on SIGINT; strace prints its table


def missing(tool: str) -> str | None:
    """Why `tool` cannot be used here, or None."""
    if not shutil.which(tool):
        return f"{tool} is not installed"
    return None


class _Attached:
    """A tool process watching pids; stop() with SIGINT makes it write its output."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.log = log
        with log.open("wb") as f:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT
            )

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Strace(_Attached):
    """`strace -f -c` on pids (all their threads, and children they fork while traced)."""

    def __init__(self, pids: list[int], workdir: Path) -> None:
        self.out = workdir / "strace.txt"
        self.out.unlink(missing_ok=True)
        argv = ["strace", "-f", "-c", "-o", str(self.out)]
        for p in pids:
            argv += ["-p", str(p)]
        super().__init__(argv, workdir / "strace.log")
        self._wait_attached(len(pids))

    def _wait_attached(self, n: int) -> None:
        deadline = time.monotonic() + ATTACH_TIMEOUT
        while self.log_text().count(" attached") < n:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"strace did not attach: {self.log_text().strip()[-300:]}")
            time.sleep(0.02)

    def counts(self) -> dict[str, int]:
        """syscall -> calls, from the summary strace wrote when stopped."""
        try:
            text = self.out.read_text()
        except OSError:
            return {}
        return parse_strace_summary(text)


def parse_strace_summary(text: str) -> dict[str, int]:
    """strace -c's table: `% time seconds usecs/call calls [errors] syscall` rows."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) not in (5, 6) or not f[-1].replace("_", "").isalnum() or f[-1] == "total":
            continue
        try:
            float(f[0])
            out[f[-1]] = out.get(f[-1], 0) + int(f[3])
        except ValueError:
            continue
    return out


class Perf(_Attached):
    """`perf record -e cpu-clock -g` on pids: software clock samples with call chains."""

    def __init__(self, pids: list[int], workdir: Path) -> None:
        self.out = workdir / "perf.data"
        self.out.unlink(missing_ok=True)
        argv = ["perf", "record", "-e", "cpu-clock", "-g", "-o", str(self.out)]
        argv += ["-p", ",".join(str(p) for p in pids)]
        super().__init__(argv, workdir / "perf.log")
        # perf has no "attached" line: give it the moment it needs to open its events
        time.sleep(0.5)
        if self.proc.poll() is not None:
            raise RuntimeError(f"perf record failed: {self.log_text().strip()[-300:]}")

    def summary(self, top: int = 15, top_user: int = 10) -> dict[str, Any]:
        """Self time by symbol: the top ones with their share (and the top user-space ones),
        and shares by library and by kernel/user space."""
        r = subprocess.run(
            ["perf", "report", "-i", str(self.out), "--stdio", "--no-children", "-n"]
            + ["--sort", "dso,sym", "-g", "none", "--percent-limit", "0"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if r.returncode:
            raise RuntimeError(f"perf report failed: {r.stderr.strip()[-300:]}")
        return parse_perf_report(r.stdout, top, top_user)


# `perf report -n --sort dso,sym` rows: `12.34%  123  dso  [k|.] symbol`
_PERF_ROW = re.compile(r"^\s*([\d.]+)%\s+(\d+)\s+(\S+)\s+\[(.)\]\s+(.*?)\s*$")


def _short_dso(dso: str) -> str:
    """_session.cpython-311-x86_64-linux-gnu.so -> _session.so"""
    return re.sub(r"\.cpython-[^.]*\.so$", ".so", dso)


def parse_perf_report(text: str, top: int = 15, top_user: int = 10) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for line in text.splitlines():
        m = _PERF_ROW.match(line)
        if m:
            share, n, dso, space, sym = m.groups()
            rows.append(
                {"pct": float(share), "samples": int(n), "dso": _short_dso(dso), "symbol": sym,
                 "kernel": space == "k"}
            )  # fmt: skip
    rows.sort(key=lambda r: -r["pct"])
    by_dso: dict[str, float] = {}
    for r in rows:
        key = "kernel" if r["kernel"] else r["dso"]
        by_dso[key] = by_dso.get(key, 0.0) + r["pct"]
    return {
        "samples": sum(r["samples"] for r in rows),
        "kernel_pct": sum(r["pct"] for r in rows if r["kernel"]),
        "user_pct": sum(r["pct"] for r in rows if not r["kernel"]),
        "by_dso": dict(sorted(by_dso.items(), key=lambda kv: -kv[1])),
        "top": rows[:top],
        "top_user": [r for r in rows if not r["kernel"]][:top_user],
    }
