"""Bounded loopback load for the reliability tests: many raw clients driven from one thread
with a selector (a burst of clients streaming bytes, slow clients, a connection flood), and
what those tests read from /proc (a process's RSS and its peak).

Every load here has a count and a deadline, and targets 127.0.0.1 only. `scale()` gives the
count a test runs with: the reduced one by default (CI), the full one with
FASTMAIL_SOAK=full (docs/protecting.md).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import os
import selectors
import socket
import time
from collections.abc import Callable
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
        for left_open in socks:
            if left_open is not None:
                left_open.close()
        sel.close()
    return out


def slow_clients(
    port: int, count: int, data: bytes, interval: float, deadline: float, host: str = "127.0.0.1"
) -> list[float]:
    """`count` clients at once, each sending the next byte of `data` every `interval`
    seconds (slowloris), until the proxy closes it or `deadline` seconds passed. Returns the
    seconds after the start at which the proxy closed each (inf: still open at the
    deadline, then closed here)."""
    sel = selectors.DefaultSelector()
    socks: dict[int, socket.socket] = {}
    sent = [0] * count
    closed = [float("inf")] * count
    start = time.monotonic()
    for i in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex((host, port))
        socks[i] = s
        sel.register(s, selectors.EVENT_READ, i)
    tick = start
    try:
        while socks and time.monotonic() - start < deadline:
            now = time.monotonic()
            if now >= tick:
                tick += interval
                for i, s in socks.items():
                    if sent[i] < len(data):
                        try:
                            sent[i] += s.send(data[sent[i] : sent[i] + 1])
                        except OSError:
                            pass  # not connected yet, or closed: the read side tells
            for key, _ in sel.select(max(0.0, min(0.05, tick - time.monotonic()))):
                i = key.data
                s = socks[i]
                try:
                    got = s.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    got = b""
                if not got:
                    closed[i] = time.monotonic() - start
                    sel.unregister(s)
                    s.close()
                    del socks[i]
    finally:
        for s in socks.values():
            s.close()
        sel.close()
    return closed


# --- whole sessions, many at once (asyncio streams) ------------------------------------------

_PLAIN = base64.b64encode(b"\0alice\0secret")


async def _expect(r: asyncio.StreamReader, prefix: bytes, until: bytes = b"\n") -> bytes:
    line = await r.readuntil(until)
    if not line.startswith(prefix):
        raise AssertionError(f"expected {prefix!r}, got {line[:200]!r}")
    return line


async def _session(protocol: str, port: int, relay: int) -> None:
    """One login as alice/secret through the proxy, `relay` bytes echoed by the fake
    backend after it (0: none), then a clean logout."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        if protocol == "imap":
            await _expect(r, b"* OK")
            w.write(b"a LOGIN alice secret\r\n")
            await _expect(r, b"a OK")
            if relay:
                w.write(b"b X-ECHO %d\r\n" % relay)
                await _expect(r, b"+ ready")
                data = os.urandom(relay)
                w.write(data)
                if await r.readexactly(relay) != data:
                    raise AssertionError("relayed bytes differ")
                await _expect(r, b"b OK")
            w.write(b"c LOGOUT\r\n")
            await _expect(r, b"* BYE")
        elif protocol == "pop3":
            await _expect(r, b"+OK")
            w.write(b"USER alice\r\n")
            await _expect(r, b"+OK")
            w.write(b"PASS secret\r\n")
            await _expect(r, b"+OK")
            w.write(b"QUIT\r\n")
            await _expect(r, b"+OK")
        else:
            await _expect(r, b"220 ")
            w.write(b"EHLO load.test\r\n")
            await _expect(r, b"250", b"\r\n250 ")
            await r.readline()
            w.write(b"AUTH PLAIN " + _PLAIN + b"\r\n")
            await _expect(r, b"235")
            w.write(b"QUIT\r\n")
            await _expect(r, b"221")
    finally:
        w.close()
        with contextlib.suppress(OSError):
            await w.wait_closed()


@dataclass
class Mixed:
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)


def mixed_sessions(
    ports: dict[str, int],
    total: int,
    concurrency: int = 32,
    relay_every: int = 4,
    relay: int = 4096,
    deadline: float = 600.0,
    progress: Callable[[int], None] | None = None,
) -> Mixed:
    """`total` sessions, IMAP/POP3/SMTP in turn (every `relay_every`-th IMAP one relays
    `relay` bytes), `concurrency` at a time, each bounded by 30 s and all by `deadline`.
    `progress(done)` is called after every 1000."""
    out = Mixed()
    protocols = list(ports)

    async def one(n: int) -> None:
        proto = protocols[n % len(protocols)]
        size = relay if proto == "imap" and (n // len(protocols)) % relay_every == 0 else 0
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(_session(proto, ports[proto], size), 30)
            out.ok += 1
            out.latencies.append(time.monotonic() - t0)
        except (OSError, AssertionError, asyncio.IncompleteReadError, TimeoutError) as exc:
            out.failures.append(f"{proto} #{n}: {exc!r}")
        if progress is not None and (n + 1) % 1000 == 0:
            progress(n + 1)

    async def main() -> None:
        end = time.monotonic() + deadline
        numbers = iter(range(total))

        async def worker() -> None:
            for n in numbers:
                if time.monotonic() > end:
                    out.failures.append(f"#{n}: not run before the deadline")
                    continue
                await one(n)

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    asyncio.run(main())
    return out
