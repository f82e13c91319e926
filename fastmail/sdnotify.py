"""systemd's readiness protocol (sd_notify(3)) for `Type=notify` units, without libsystemd.

Owns the datagrams the master sends to $NOTIFY_SOCKET: `READY=1` (with `MAINPID=`) once it
serves, `RELOADING=1` (with `MONOTONIC_USEC=`, as `Type=notify-reload` wants) when a HUP
starts a reload and `READY=1` when it ended, `STOPPING=1` on QUIT or TERM. Without
NOTIFY_SOCKET nothing is sent; a send that fails is ignored, as sd_notify's callers do: a
service manager that went away must not stop the mail proxy. Must not decide when (the
master and the single process do).
"""

from __future__ import annotations

import os
import socket
import time


def _address() -> str | bytes | None:
    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path or path[0] not in "/@":
        return None  # unset, or a vsock address: not served here
    if path[0] == "@":
        return b"\0" + path[1:].encode()  # the abstract namespace
    return path


def notify(*fields: str) -> bool:
    """Sends `fields` (e.g. "READY=1") as one datagram; True when it went out."""
    addr = _address()
    if addr is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto("\n".join(fields).encode() + b"\n", addr)
    except OSError:
        return False
    return True


def ready() -> bool:
    return notify("READY=1", f"MAINPID={os.getpid()}", "STATUS=serving")


def reloading() -> bool:
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")


def stopping() -> bool:
    return notify("STOPPING=1", "STATUS=stopping")
