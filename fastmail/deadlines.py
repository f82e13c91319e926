"""Deadlines that all lie the same delay ahead, kept in one loop timer.

Owns: `Deadlines`, a FIFO of per-session (or per-request) deadlines with one shared delay, so
adding one is order-preserving: the oldest is always the next to expire and a single
`call_at` handle serves them all (a uvloop TimerHandle per session costs more than the rest
of its bookkeeping). Must not know what expires: it only calls the callback it was given.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

_RESOLUTION = 0.001  # uvloop (libuv) timers count whole milliseconds


class Deadline:
    """One pending deadline; `cancel()` drops it (idempotent)."""

    __slots__ = ("when", "callback", "owner")

    def __init__(self, owner: Deadlines, when: float, callback: Callable[[], object]) -> None:
        self.owner = owner
        self.when = when
        self.callback: Callable[[], object] | None = callback

    def cancel(self) -> None:
        if self.callback is not None:
            self.callback = None
            self.owner._cancelled()

    def cancelled(self) -> bool:
        return self.callback is None


class Deadlines:
    """`add(callback)` calls `callback()` `delay` seconds later on `loop`, unless cancelled.
    Cancelled entries are dropped lazily, and the queue is compacted once most of it is dead,
    so it never holds more than about twice the live deadlines."""

    __slots__ = ("loop", "delay", "_queue", "_live", "_timer", "_busy")

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self.loop = loop
        self.delay = delay
        self._queue: deque[Deadline] = deque()
        self._live = 0
        self._timer: asyncio.TimerHandle | None = None
        self._busy = False  # in _expire: it arms the timer itself when done

    def add(self, callback: Callable[[], object]) -> Deadline:
        d = Deadline(self, self.loop.time() + self.delay, callback)
        self._queue.append(d)
        self._live += 1
        if self._timer is None and not self._busy:
            self._arm(d.when)
        return d

    def __len__(self) -> int:
        return self._live

    def _arm(self, when: float) -> None:
        self._timer = self.loop.call_at(when, self._expire)

    def _cancelled(self) -> None:
        self._live -= 1
        q = self._queue
        while q and q[0].callback is None:
            q.popleft()
        if not q:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        elif len(q) > 64 and len(q) > 2 * self._live:
            self._queue = deque(d for d in q if d.callback is not None)

    def _expire(self) -> None:
        self._timer = None
        self._busy = True
        # as asyncio's loop does: what is due within the clock resolution runs now, or a
        # timer rounded to whole milliseconds would wake early and re-arm for ~0 in a spin
        now = self.loop.time() + _RESOLUTION
        try:
            while self._queue:
                d = self._queue[0]
                callback = d.callback
                if callback is not None and d.when > now:
                    break
                self._queue.popleft()
                if callback is not None:
                    d.callback = None
                    self._live -= 1
                    callback()
        finally:
            self._busy = False
            q = self._queue
            while q and q[0].callback is None:
                q.popleft()
            if q and self._timer is None:
                self._arm(q[0].when)

    def close(self) -> None:
        """Drops every deadline (worker shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for d in self._queue:
            d.callback = None
        self._queue.clear()
        self._live = 0
