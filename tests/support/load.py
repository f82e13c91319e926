"""Bounded loopback load for the reliability tests: many raw clients driven from one thread
with a selector (a burst of clients streaming bytes, slow clients, a connection flood), and
what those tests read from /proc (a process's RSS and its peak).

Every load here has a count and a deadline, and targets 127.0.0.1 only. `scale()` gives the
count a test runs with: the reduced one by default (CI), the full one with
FASTMAIL_SOAK=full (docs/operations.md, "Protecting it").
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

FULL = os.environ.get("FASTMAIL_SOAK", "") == "full"


def scale(full: int, reduced: int) -> int:
    """The count a reliability test uses: `full` with FASTMAIL_SOAK=full, else `reduced`."""
    return full if FULL else reduced


def _status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def rss(pid: int) -> int:
    """The process's resident set size in bytes."""
    return _status(pid, "VmRSS")


def reset_peak(pid: int) -> None:
    """Sets the process's peak RSS (VmHWM) to its current RSS."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def peak_rss(pid: int) -> int:
    """The process's peak resident set size in bytes since start (or reset_peak)."""
    return _status(pid, "VmHWM")


@dataclass
class Outcome:
    """What each client of a burst saw: bytes received, and how it ended."""

    received: list[bytes] = field(default_factory=list)
    closed: list[bool] = field(default_factory=list)  # the proxy closed (EOF or reset)
    closed_at: list[float] = field(default_factory=list)  # seconds after the start (or -1)
    sent: list[int] = field(default_factory=list)


def burst(
    port: int,
    count: int,
    prefix: bytes,
    body: int,
    *,
    chunk: int = 65536,
    rate: float = 0.0,
    deadline: float = 30.0,
    host: str = "127.0.0.1",
) -> Outcome:
    """`count` clients at once, each sending `prefix` then `body` bytes of b"x" (no line
    end), `chunk` bytes per write (`rate` > 0: one write per 1/rate seconds), reading all the
    proxy says, until each is closed by the proxy or has sent everything and `deadline`
    seconds passed. Clients still open at the deadline are closed here (closed False)."""
    sel = selectors.DefaultSelector()
    out = Outcome()
    socks: list[socket.socket | None] = []
    left: list[int] = []
    nxt: list[float] = []
    start = time.monotonic()
    pad = b"x" * chunk
    for i in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex((host, port))
        if err not in (0, errno.EINPROGRESS):
            s.close()
            raise OSError(err, f"connect {host}:{port}: {os.strerror(err)}")
        socks.append(s)
        out.received.append(b"")
        out.closed.append(False)
        out.closed_at.append(-1.0)
        out.sent.append(0)
        left.append(len(prefix) + body)
        nxt.append(start)
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, i)
    open_count = count
    try:
        while open_count and time.monotonic() - start < deadline:
            now = time.monotonic()
            for key, ev in sel.select(0.05):
                i = key.data
                s = socks[i]
                if s is None:
                    continue
                if ev & selectors.EVENT_READ:
                    try:
                        data = s.recv(65536)
                    except BlockingIOError:
                        data = None
                    except OSError:
                        data = b""
                    if data == b"":
                        out.closed[i] = True
                        out.closed_at[i] = time.monotonic() - start
                        sel.unregister(s)
                        s.close()
                        socks[i] = None
                        open_count -= 1
                        continue
                    if data:
                        out.received[i] += data[: 4096 - len(out.received[i])]
                if ev & selectors.EVENT_WRITE and left[i] > 0 and now >= nxt[i]:
                    done = len(prefix) + body - left[i]
                    piece = (prefix[done:] if done < len(prefix) else b"") + pad
                    piece = piece[: min(chunk, left[i])]
                    try:
                        n = s.send(piece)
                    except BlockingIOError:
                        n = 0
                    except OSError:
                        n = 0
                        left[i] = 0
                    left[i] -= n
                    out.sent[i] += n
                    if rate > 0:
                        nxt[i] = now + 1 / rate
                    if left[i] <= 0:
                        sel.modify(s, selectors.EVENT_READ, i)
                elif ev & selectors.EVENT_WRITE and left[i] <= 0:
                    sel.modify(s, selectors.EVENT_READ, i)
            if rate > 0:
                time.sleep(0.001)
    finally:
        for s in socks:
            if s is not None:
                s.close()
        sel.close()
    return out
