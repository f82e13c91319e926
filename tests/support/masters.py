"""fastmail or Debian's nginx as a real master with workers, for process-model tests: the same
config text (nginx's, `load_module` line included) for both, daemonized or in the foreground,
and what such tests look at from the outside: the pid file, a process's children from /proc,
whether a process still runs, its CPU time.

A daemon's master is not the test's child: `subreaper()` makes the test process the parent
of orphans for a while, so that masters and workers left over are reaped (pid 1 here does not
reap) and `gone()` can tell a dead process from a running one. `Master.stop()` kills every
process it has seen, so a failed test leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal, TypeVar

from . import MissingPackage
from .clients import wait_greeting
from .nginx import MAIL_MODULE
from .process import find_binary, temp_dir

T = TypeVar("T")

CONF = """\
load_module {module};
daemon {daemon};
master_process {master};
worker_processes {workers};
pid {d}/run.pid;
error_log {d}/error.log info;
events {{ worker_connections 256; }}
{main}
mail {{
{mail}
}}
"""

PR_SET_CHILD_SUBREAPER = 36


@contextlib.contextmanager
def subreaper() -> Iterator[None]:
    """Orphans of this process's descendants (a daemon, an old master's new binary) become
    its children while the block runs, and are reaped by `gone()`."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def gone(pid: int) -> bool:
    """The process has exited (reaped here if it was this process's child)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] in "ZX"


def children(pid: int) -> set[int]:
    """The running processes whose parent is `pid`."""
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return set()
    return {int(k) for k in kids if not gone(int(k))}


def started_on(directory: Path) -> set[int]:
    """Every running process whose command line names `directory` (a master a USR2 started,
    a respawned worker, one that outlived its master), and their children (nginx's workers
    are retitled and name nothing)."""
    mark = f"{directory}/".encode()
    found = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError):
                if mark in Path(f"/proc/{name}/cmdline").read_bytes():
                    found.add(int(name))
    for pid in list(found):
        found |= children(pid)
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for(what: str, check: Callable[[], T | Literal[False] | None], timeout: float = 10.0) -> T:
    """Polls `check()` until it returns something true; returns it."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Master:
    """`kind` ("fastmail" or "nginx") started on `mail` (the mail{} body) in a temp prefix."""

    def __init__(
        self,
        kind: str,
        mail: str,
        *,
        daemon: bool = True,
        master: bool = True,
        workers: int = 2,
        main: str = "",
        program: str | None = None,
    ) -> None:
        self.kind = kind
        if kind == "nginx":
            binary = find_binary("nginx", "nginx-light")
            if not os.path.exists(MAIL_MODULE):
                raise MissingPackage("ngx_mail_module", "libnginx-mod-mail")
            self.cmd = [program or binary]
        else:
            self.cmd = [sys.executable, "-m", "fastmail"]
        self.dir = temp_dir(f"fastmail-{kind}-master-")
        self.daemon = daemon
        self.conf = self.dir / "run.conf"
        self.conf.write_text(
            CONF.format(
                module=MAIL_MODULE,
                daemon="on" if daemon else "off",
                master="on" if master else "off",
                workers=workers,
                d=self.dir,
                main=main,
                mail=mail,
            )
        )
        self.cmd += ["-p", f"{self.dir}/", "-c", str(self.conf), "-e", f"{self.dir}/error.log"]
        self.pid_file = self.dir / "run.pid"
        self.oldbin = self.dir / "run.pid.oldbin"
        self.proc: subprocess.Popen[bytes] | None = None
        self.seen: set[int] = set()  # every master and worker pid seen, killed by stop()

    def start(self, greet: int | None = None, timeout: float = 15.0) -> int:
        """Starts it; waits for its pid file (and a greeting on port `greet`); returns the
        master's pid."""
        with open(self.dir / "stderr.log", "ab") as err:
            self.proc = subprocess.Popen(
                self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                cwd=self.dir,
            )  # fmt: skip
        if self.daemon:
            assert self.proc.wait(timeout) == 0, self.log()
        pid = wait_for("the pid file", self.read_pid, timeout)
        if greet is not None:
            wait_greeting("127.0.0.1", greet, b"", timeout, lambda: not gone(pid))
        self.watch(pid)
        return pid

    def read_pid(self, path: Path | None = None) -> int:
        """The pid in the pid file (or `path`), 0 while there is none."""
        try:
            text = (path or self.pid_file).read_text()
        except FileNotFoundError:
            return 0
        return int(text) if text.endswith("\n") else 0

    def watch(self, pid: int) -> set[int]:
        """Remembers `pid` and its children for stop(); returns the children."""
        kids = children(pid)
        self.seen |= {pid} | kids
        return kids

    def log(self) -> str:
        out = []
        for name in ("error.log", "stderr.log"):
            p = self.dir / name
            if p.exists():
                out.append(p.read_text(errors="replace"))
        return "".join(out)

    def stop(self) -> None:
        # shown when the test failed: the process lines, then the last lines of all
        lines = self.log().splitlines()
        keep = [x for x in lines if "[info]" not in x and "SIGCHLD" not in x][-80:]
        print(f"--- {self.kind}'s log ---", *keep, "--- last lines ---", *lines[-10:], sep="\n")
        self.seen |= started_on(self.dir)  # also what the test did not watch
        for pid in sorted(self.seen):
            if not gone(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for pid in self.seen:
            with contextlib.suppress(TimeoutError):
                wait_for(f"process {pid} to end", functools.partial(gone, pid), 5)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)
