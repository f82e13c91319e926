"""What every process runner in tests/support shares: finding a Debian binary, a temp dir the
daemons' own users can enter, waiting for greetings while the child lives, a sure stop
(SIGTERM, then SIGKILL), reading the log files, polling a log for a text, and telling a port
clash from another start-up failure.

`Runner` holds one child process and its temp dir; each runner keeps its own public names
(`error_log()` or `log()`, `start()`) and calls these. Never touches anything outside the dir.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Self

from . import MissingPackage
from .clients import wait_greeting
from .ports import PortClash, retry_on_port_clash


def find_binary(program: str, package: str) -> str:
    """`program` on PATH or in /usr/sbin (not on a non-root PATH), else MissingPackage."""
    path = shutil.which(program) or (
        f"/usr/sbin/{program}" if os.path.exists(f"/usr/sbin/{program}") else None
    )
    if not path:
        raise MissingPackage(program, package)
    return path


def temp_dir(prefix: str) -> Path:
    d = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(d, 0o755)  # the daemons drop privileges and must still enter it
    return d


def terminate(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def read_logs(directory: Path, names: Iterable[str]) -> str:
    out = []
    for name in names:
        p = directory / name
        if p.exists():
            out.append(p.read_text(errors="replace"))
    return "".join(out)


def wait_text(
    read: Callable[[], str], text: str, what: str, timeout: float, poll: float, tail: int
) -> str:
    """Polls `read()` until it contains `text`; returns what it read."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = read()
        if text in log:
            return log
        time.sleep(poll)
    raise TimeoutError(f"{text!r} not in {what}:\n{read()[-tail:]}")


def start_failure(what: str, exc: BaseException, log: str, tail: int = 2000) -> Exception:
    """A port clash (retried by retry_on_port_clash), else a RuntimeError starting `what`
    (e.g. "dovecot did not start") with the log's tail."""
    if "Address already in use" in log:
        return PortClash(log)
    return RuntimeError(f"{what}: {exc}\n{log[-tail:]}")


_CONFIG_MESSAGE = re.compile(
    r"^(?:(?:nginx|fastmail): |\d{4}/\d\d/\d\d \d\d:\d\d:\d\d )"
    r"\[(?:emerg|crit|alert)\] (?:\d+#\d+: )?(.*)$",
    re.M,
)


def config_messages(stderr: str) -> list[str]:
    """The [emerg]/[crit]/[alert] texts of a `-t` run, without the program name or, when the
    error log is stderr itself, the timestamp and pid: what nginx and fastmail must agree on."""
    return _CONFIG_MESSAGE.findall(stderr)


class Runner:
    """One child process in its own temp dir. Subclasses set `log_names` (files in the dir
    that make up its log, in order) and `grace` (seconds from SIGTERM to SIGKILL); one whose
    daemon is not its child (Postfix) overrides `_kill`."""

    log_names: tuple[str, ...] = ()
    grace = 10.0

    def __init__(self, prefix: str) -> None:
        self.dir = temp_dir(prefix)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        raise NotImplementedError

    def _alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _start_retrying(self, once: Callable[[], None]) -> None:
        """Runs `once` (which picks fresh ports) until its ports do not clash; on any
        failure stops everything and removes the dir before re-raising."""
        try:
            retry_on_port_clash(once)
        except BaseException:
            self.stop()
            raise

    def _wait_greetings(self, greetings: Iterable[tuple[int, bytes]], timeout: float) -> None:
        for port, prefix in greetings:
            wait_greeting("127.0.0.1", port, prefix, timeout, self._alive)

    def _read_logs(self) -> str:
        return read_logs(self.dir, self.log_names)

    def _kill(self) -> None:
        if self.proc is not None:
            terminate(self.proc, self.grace)
            self.proc = None

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after `grace`) and remove the temp dir."""
        self._kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
