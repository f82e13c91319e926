"""The access log's Python side: files opened by the master, writers made in each worker.

Owns opening every access_log file in the master (before fork, as nginx and the error log
do, so a directory only root may write works; a file that cannot be opened stops a start or
a reload, with nginx's `open() ... failed`), reopening the master's copies on USR1 (for
workers forked later), and in a worker: one Writer per target (shared by the server{}
blocks that name it) with its metrics, the Formats, each server's (Writer, Format) pairs the
engine reads, reopening and the last flush. Must not format a line (fastmail/_accesslog.pyx
does) nor decide what a session logs (fastmail/_report.pyx fills the record).
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

from fastmail import _accesslog, metrics
from fastmail.log import ALERT

if TYPE_CHECKING:
    from fastmail._poll import Loop
    from fastmail.conf.model import AccessLog, Config, LogFormat, ServerConf
    from fastmail.log import ErrorLog

FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC
_FACILITY = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "intern": 5, "lpr": 6,
    "news": 7, "uucp": 8, "clock": 9, "authpriv": 10, "ftp": 11, "ntp": 12, "audit": 13,
    "alert": 14, "cron": 15, "local0": 16, "local1": 17, "local2": 18, "local3": 19,
    "local4": 20, "local5": 21, "local6": 22, "local7": 23,
}  # fmt: skip
_SEVERITY = {"emerg": 0, "alert": 1, "crit": 2, "error": 3, "warn": 4, "notice": 5, "info": 6,
             "debug": 7}  # fmt: skip


def targets(config: Config) -> dict[str, AccessLog]:
    """Every access_log target of a config by name (its path or syslog text), first seen."""
    out: dict[str, AccessLog] = {}
    if config.mail is not None:
        for s in config.mail.servers:
            for a in s.access_log:
                out.setdefault(a.name, a)
    return out


class Files:
    """The master's open access log files of one config, by path."""

    def __init__(self, config: Config) -> None:
        """Raises OSError with nginx's text (`open() "PATH" failed (13: Permission denied)`)."""
        self.fds: dict[str, int] = {}
        try:
            for a in targets(config).values():
                if a.path is not None and a.path not in self.fds:
                    self.fds[a.path] = self._open(a.path)
        except OSError:
            self.close()
            raise

    @staticmethod
    def _open(path: str) -> int:
        try:
            return os.open(path, FLAGS, 0o644)
        except OSError as e:
            raise OSError(e.errno, f'open() "{path}" failed ({e.errno}: {e.strerror})') from None

    def reopen(self, log: ErrorLog) -> None:
        for path, old in list(self.fds.items()):
            try:
                self.fds[path] = self._open(path)
            except OSError as e:
                log.log(ALERT, e.strerror or str(e))
                continue
            os.close(old)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}


class Logs:
    """A worker's access logs: its writers and each server's (Writer, Format) pairs."""

    def __init__(self, loop: Loop, files: Files | None, log: ErrorLog) -> None:
        self.loop = loop
        self.files = files
        self.log = log
        self.writers: dict[str, _accesslog.Writer] = {}
        self.formats: dict[int, _accesslog.Format] = {}

    def _format(self, f: LogFormat) -> _accesslog.Format:
        fmt = self.formats.get(id(f))
        if fmt is None:
            fmt = self.formats[id(f)] = _accesslog.Format(f.name, f.json, f.parts)
        return fmt

    def _writer(self, a: AccessLog) -> _accesslog.Writer:
        w = self.writers.get(a.name)
        if w is not None:
            return w
        if a.syslog is not None:
            t = a.syslog
            assert t.syslog_server is not None
            family, host, port = t.syslog_server
            pri = _FACILITY.get(t.syslog_facility, 23) * 8 + _SEVERITY.get(t.syslog_severity, 6)
            name = "" if t.syslog_nohostname else socket.gethostname().lower() + " "
            head = f" {name}{t.syslog_tag}: ".encode()
            w = _accesslog.Writer(self.loop, a.name, self.log, server=(family, host, port),
                                  pri=pri, head=head)  # fmt: skip
        else:
            assert a.path is not None
            # the master's copy, inherited at fork, becomes the writer's
            fds = self.files.fds if self.files is not None else {}
            fd = fds.pop(a.path, None)
            if fd is None:
                fd = Files._open(a.path)
            w = _accesslog.Writer(self.loop, a.name, self.log, fd=fd, path=a.path,
                                  size=a.buffer, flush_ms=a.flush)  # fmt: skip
        w.mx_lines = metrics.series(metrics.ACCESS_LOG_LINES, a.name)
        w.mx_dropped = metrics.series(metrics.ACCESS_LOG_DROPPED, a.name)
        self.writers[a.name] = w
        return w

    def for_server(
        self, conf: ServerConf
    ) -> tuple[tuple[_accesslog.Writer, _accesslog.Format], ...] | None:
        """What the engine writes a session's line to (None: no access log)."""
        if not conf.access_log:
            return None
        return tuple((self._writer(a), self._format(a.format)) for a in conf.access_log)

    def reopen(self) -> None:
        for w in self.writers.values():
            w.reopen()

    def close(self) -> None:
        for w in self.writers.values():
            w.close()
        self.writers = {}
