"""The error log, in nginx's format and with nginx's levels.

Owns: writing `YYYY/MM/DD HH:MM:SS [level] PID#TID: *N message` lines to the targets that
`error_log` names (files, stderr, syslog), filtering by level before anything is formatted,
and reopening files on USR1. Must not decide what is logged: callers pass nginx's wording.
Mirrors src/core/ngx_log.c.
"""

from __future__ import annotations

import errno
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
# send() errors nginx logs at [error] rather than [alert] (ngx_connection_error)
_PEER_GONE = {errno.ECONNREFUSED, errno.ENOTCONN, errno.ECONNRESET, errno.ETIMEDOUT,
              errno.ENETDOWN, errno.ENETUNREACH, errno.EHOSTDOWN, errno.EHOSTUNREACH}  # fmt: skip


# control characters (C0, DEL, C1: client bytes decoded as latin-1) as \xHH in log lines
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}


class _Output:
    __slots__ = ("target", "level", "stream", "sock", "host")

    def __init__(self, target: LogTarget) -> None:
        self.target = target
        self.level = target.level
        if self.level == DEBUG and target.debug and "debug_mail" not in target.debug:
            # nginx: a mask without debug_mail (debug_http, ...) keeps every error level and
            # no mail debug line; every fastmail debug line is a mail one
            self.level = INFO
        self.stream: TextIO | None = None
        self.sock: socket.socket | None = None
        self.host = ""
        self.open()

    def open(self) -> None:
        t = self.target
        if t.kind == "stderr":
            self.stream = sys.stderr
        elif t.kind == "file" and t.path:
            old, self.stream = self.stream, open(t.path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
            if old is not None and old is not sys.stderr:
                old.close()
        elif t.kind == "syslog" and not t.syslog_nohostname:
            # nginx: the cycle's host name, lower-cased; the socket connects at the first line
            self.host = socket.gethostname().lower() + " "

    def _server(self) -> str:
        family, host, port = self.target.syslog_server  # type: ignore[misc]
        if family == socket.AF_UNIX:
            return f"unix:{host}"
        return f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"

    def _connect(self) -> str | None:
        """nginx's ngx_syslog_init_peer: a datagram socket to the server, or the error."""
        family, host, port = self.target.syslog_server  # type: ignore[misc]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect(host if family == socket.AF_UNIX else (host, port))
        except OSError as e:
            sock.close()
            return f"connect() failed ({e.errno}: {e.strerror})"
        self.sock = sock
        return None

    def write(self, level: int, line: str) -> tuple[int, str] | None:
        """Writes one line; for a syslog server that cannot be reached, returns nginx's
        (level, message) for the other outputs."""
        if self.stream is not None:
            try:
                self.stream.write(line)
            except (OSError, ValueError):
                pass
            return None
        t = self.target
        if t.syslog_server is None:
            return None
        if self.sock is None:
            err = self._connect()
            if err is not None:
                return ALERT, f"{err} while logging to syslog, server: {self._server()}"
        pri = _SYSLOG_FACILITY.get(t.syslog_facility, 23) * 8 + _SYSLOG_SEVERITY.get(
            LEVELS[level], 6
        )
        stamp = time.strftime("%b %e %H:%M:%S")
        # nginx sends its whole log line, date included, after the syslog header
        msg = f"<{pri}>{stamp} {self.host}{t.syslog_tag}: {line.rstrip()}"
        try:
            self.sock.send(msg.encode("utf-8", "replace"))  # type: ignore[union-attr]
        except BlockingIOError:
            pass  # the receiver's queue is full: the line is lost, as nginx's would be
        except OSError as e:
            # closed and reconnected at the next line, as nginx does
            self.sock.close()  # type: ignore[union-attr]
            self.sock = None
            lvl = ERROR if e.errno in _PEER_GONE else ALERT
            where = f" while logging to syslog, server: {self._server()}"
            return lvl, f"send() failed ({e.errno}: {e.strerror}){where}"
        return None

    def close(self) -> None:
        if self.stream is not None and self.stream is not sys.stderr:
            self.stream.close()
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class ErrorLog:
    """A set of error_log outputs. `level` is the most verbose level any output takes, so
    `if log.level >= INFO:` skips formatting when nobody would read the line."""

    __slots__ = ("outputs", "level", "pid", "stderr_fd")

    def __init__(self, targets: list[LogTarget]) -> None:
        self.outputs = [_Output(t) for t in targets]
        self.level = max((o.level for o in self.outputs), default=0)
        self.pid = os.getpid()  # set again by the process after a fork (daemon, worker)
        self.stderr_fd = False  # fd 2 is this log's file (redirect_stderr)

    @classmethod
    def stderr(cls, level: int = NOTICE) -> ErrorLog:
        return cls([LogTarget(kind="stderr", level=level)])

    def log(self, level: int, message: str, conn: int = 0) -> None:
        if level > self.level:
            return
        if not message.isprintable():
            # client bytes in a message (a login name, a command) never forge a line
            message = message.translate(_ESCAPES)
        now = time.time()
        stamp = time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(now))
        cid = f"*{conn} " if conn else ""
        line = f"{stamp} [{LEVELS[level]}] {self.pid}#{self.pid}: {cid}{message}\n"
        for out in self.outputs:
            if level <= out.level:
                err = out.write(level, line)
                if err is not None:
                    self._others(out, *err)

    def _others(self, failed: _Output, level: int, message: str) -> None:
        """A syslog server's failure goes to the other outputs (nginx's peer log is busy)."""
        stamp = time.strftime("%Y/%m/%d %H:%M:%S")
        line = f"{stamp} [{LEVELS[level]}] {self.pid}#{self.pid}: {message}\n"
        for out in self.outputs:
            if out is not failed and level <= out.level and out.stream is not None:
                out.write(level, line)

    def redirect_stderr(self) -> None:
        """nginx's ngx_log_redirect_stderr: unless an error_log is stderr, fd 2 becomes the
        first error_log file, so what a library or Python itself writes to stderr is kept
        (a daemon's stderr is lost otherwise). Again after every reopen."""
        if any(o.target.kind == "stderr" for o in self.outputs):
            return
        for out in self.outputs:
            if out.target.kind == "file" and out.stream is not None:
                sys.stderr.flush()
                os.dup2(out.stream.fileno(), 2)
                self.stderr_fd = True
                return

    def reopen(self) -> None:
        self.pid = os.getpid()
        for out in self.outputs:
            if out.target.kind == "file":
                out.open()
        if self.stderr_fd:
            self.redirect_stderr()

    def close(self) -> None:
        for out in self.outputs:
            out.close()
