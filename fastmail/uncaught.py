"""Exceptions nobody caught, as `[alert]` lines in the error log.

Owns the hooks Python calls for them: sys.excepthook (the process is about to die),
sys.unraisablehook (an exception in a callback from C that cannot propagate, e.g. in the ssl
module's servername callback), threading.excepthook, and the event loop's exception handler
(a protocol or loop callback, and what _relay.pyx's poller reports). Their default is a
traceback on stderr, which a daemon does not have. Must not decide anything else: the
callers keep running (or die) as they would have.

One line per exception, as every nginx line is: the exception and the innermost frames it
came through (`file:line function`, innermost first), which locate it in the source.
Multi-line tracebacks would break log readers, at any level.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from fastmail.log import ALERT, ErrorLog

FRAMES = 6  # innermost frames named in the line
_REPR = 100  # characters of an object's repr in an unraisable's line


def describe(exc: BaseException | None, tb: TracebackType | None = None) -> str:
    """`Type: text (at file:line function < file:line function ...)`, on one line."""
    if exc is None:
        return "no exception"
    text = str(exc).replace("\r", " ").replace("\n", " ")
    out = f"{type(exc).__qualname__}: {text}" if text else type(exc).__qualname__
    frames: list[str] = []
    tb = tb if tb is not None else exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        frames.append(f"{os.path.basename(code.co_filename)}:{tb.tb_lineno} {code.co_name}")
        tb = tb.tb_next
    if frames:
        out += " (at " + " < ".join(reversed(frames[-FRAMES:])) + ")"
    return out


def install(log: ErrorLog) -> None:
    """Routes the process's uncaught exceptions to `log` from now on (workers inherit it)."""

    def excepthook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        log.log(ALERT, f"unhandled exception: {describe(exc, tb)}")

    def unraisablehook(u: Any) -> None:
        what = u.err_msg or "Exception ignored in"
        if u.object is not None:
            try:
                obj = repr(u.object)
            except Exception:  # noqa: BLE001 - a repr that raises must not hide the error
                obj = f"<{type(u.object).__name__} object>"
            what += f": {obj[:_REPR]}"
        log.log(ALERT, f"{what}: {describe(u.exc_value, u.exc_traceback)}")

    def thread_hook(a: Any) -> None:
        name = a.thread.name if a.thread is not None else "?"
        log.log(
            ALERT, f"unhandled exception in thread {name}: {describe(a.exc_value, a.exc_traceback)}"
        )

    sys.excepthook = excepthook
    sys.unraisablehook = unraisablehook
    threading.excepthook = thread_hook


def loop_handler(
    log: ErrorLog,
) -> Callable[[Any, dict[str, Any]], None]:
    """An event loop exception handler writing to `log`; the connection's `*N` when the
    failing protocol is a session (it has an `id`)."""

    def handler(loop: Any, ctx: dict[str, Any]) -> None:
        proto = ctx.get("protocol")
        conn = getattr(proto, "id", 0)
        message = ctx.get("message") or "unhandled exception in event loop"
        exc = ctx.get("exception")
        if exc is not None:
            message += f": {describe(exc)}"
        log.log(ALERT, message, conn if isinstance(conn, int) else 0)

    return handler
