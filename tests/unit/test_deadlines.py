"""Deadlines: one loop timer for many same-delay deadlines behaves like one call_later each."""

from __future__ import annotations

import asyncio
import functools

import uvloop

from fastmail.deadlines import Deadlines


def run(loop: asyncio.AbstractEventLoop, seconds: float) -> None:
    loop.run_until_complete(asyncio.sleep(seconds))


def test_each_deadline_fires_once_after_the_delay_in_order() -> None:
    loop = uvloop.new_event_loop()
    try:
        q = Deadlines(loop, 0.05)
        fired: list[tuple[str, float]] = []
        start = loop.time()
        q.add(lambda: fired.append(("a", loop.time())))
        run(loop, 0.02)
        q.add(lambda: fired.append(("b", loop.time())))
        run(loop, 0.1)
        assert [name for name, _ in fired] == ["a", "b"]
        assert fired[0][1] - start >= 0.049
        assert fired[1][1] - start >= 0.069  # b's own delay, not a's
        assert len(q) == 0
    finally:
        loop.close()


def test_cancelled_deadlines_never_fire_and_the_rest_still_do() -> None:
    loop = uvloop.new_event_loop()
    try:
        q = Deadlines(loop, 0.03)
        fired: list[int] = []
        handles = [q.add(functools.partial(fired.append, i)) for i in range(200)]
        for i, h in enumerate(handles):
            if i != 0:
                h.cancel()
                h.cancel()  # idempotent
        assert len(q) == 1
        assert len(q._queue) <= 64  # the dead behind a live head are compacted away
        run(loop, 0.08)
        assert fired == [0]
        assert handles[0].cancelled()
        handles[0].cancel()  # after firing: nothing happens
        assert len(q) == 0
    finally:
        loop.close()


def test_a_deadline_added_while_expiring_waits_its_full_delay() -> None:
    loop = uvloop.new_event_loop()
    try:
        q = Deadlines(loop, 0.03)
        fired: list[str] = []

        def first() -> None:
            fired.append("first")
            q.add(lambda: fired.append("second"))

        q.add(first)
        run(loop, 0.045)
        assert fired == ["first"]
        run(loop, 0.05)
        assert fired == ["first", "second"]
        assert q._timer is None  # nothing left: no timer kept armed
    finally:
        loop.close()


def test_close_drops_everything() -> None:
    loop = uvloop.new_event_loop()
    try:
        q = Deadlines(loop, 0.01)
        fired: list[int] = []
        h = q.add(lambda: fired.append(1))
        q.close()
        run(loop, 0.03)
        assert fired == [] and h.cancelled() and len(q) == 0
    finally:
        loop.close()
