"""The error log, in nginx's format and with nginx's levels.

Owns: writing `YYYY/MM/DD HH:MM:SS [level] PID#TID: *N message` lines to the targets that
`error_log` names (files, stderr, syslog), filtering by level before anything is formatted,
and reopening files on USR1. Must not decide what is logged: callers pass nginx's wording.
Mirrors src/core/ngx_log.c.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import TextIO

from fastmail.conf.model import LEVELS, LogTarget

EMERG, ALERT, CRIT, ERROR, WARN, NOTICE, INFO, DEBUG = range(1, 9)
_SYSLOG_SEVERITY = {name: i - 1 for i, name in enumerate(LEVELS) if name}
_SYSLOG_FACILITY = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "intern": 5, "lpr": 6,
    "news": 7, "uucp": 8, "clock": 9, "authpriv": 10, "ftp": 11, "ntp": 12, "audit": 13,
    "alert": 14, "cron": 15, "local0": 16, "local1": 17, "local2": 18, "local3": 19,
    "local4": 20, "local5": 21, "local6": 22, "local7": 23,
}  # fmt: skip


class _Output:
    __slots__ = ("target", "level", "stream", "sock")

    def __init__(self, target: LogTarget) -> None:
        self.target = target
        self.level = target.level
        self.stream: TextIO | None = None
        self.sock: socket.socket | None = None
        self.open()

    def open(self) -> None:
        t = self.target
        if t.kind == "stderr":
            self.stream = sys.stderr
        elif t.kind == "file" and t.path:
            old, self.stream = self.stream, open(t.path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
            if old is not None and old is not sys.stderr:
                old.close()
        elif t.kind == "syslog" and t.syslog_server is not None:
            family, host, port = t.syslog_server
            self.sock = socket.socket(family, socket.SOCK_DGRAM)
            self.sock.setblocking(False)
            self.sock.connect((host, port))

    def write(self, level: int, line: str) -> None:
        if self.stream is not None:
            try:
                self.stream.write(line)
            except (OSError, ValueError):
                pass
        elif self.sock is not None:
            t = self.target
            pri = _SYSLOG_FACILITY.get(t.syslog_facility, 23) * 8 + _SYSLOG_SEVERITY.get(
                LEVELS[level], 6
            )
            host = "" if t.syslog_nohostname else socket.gethostname() + " "
            stamp = time.strftime("%b %e %H:%M:%S")
            # nginx sends the message without its own date: "<pri>stamp host tag: [level] ..."
            msg = f"<{pri}>{stamp} {host}{t.syslog_tag}: {line[20:].rstrip()}"
            try:
                self.sock.send(msg.encode("utf-8", "replace"))
            except OSError:
                pass

    def close(self) -> None:
        if self.stream is not None and self.stream is not sys.stderr:
            self.stream.close()
        if self.sock is not None:
            self.sock.close()


class ErrorLog:
    """A set of error_log outputs. `level` is the most verbose level any output takes, so
    `if log.level >= INFO:` skips formatting when nobody would read the line."""

    __slots__ = ("outputs", "level", "pid")

    def __init__(self, targets: list[LogTarget]) -> None:
        self.outputs = [_Output(t) for t in targets]
        self.level = max((o.level for o in self.outputs), default=0)
        self.pid = os.getpid()

    @classmethod
    def stderr(cls, level: int = NOTICE) -> ErrorLog:
        return cls([LogTarget(kind="stderr", level=level)])

    def log(self, level: int, message: str, conn: int = 0) -> None:
        if level > self.level:
            return
        now = time.time()
        stamp = time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(now))
        cid = f"*{conn} " if conn else ""
        line = f"{stamp} [{LEVELS[level]}] {self.pid}#{self.pid}: {cid}{message}\n"
        for out in self.outputs:
            if level <= out.level:
                out.write(level, line)

    def reopen(self) -> None:
        self.pid = os.getpid()
        for out in self.outputs:
            if out.target.kind == "file":
                out.open()

    def close(self) -> None:
        for out in self.outputs:
            out.close()
