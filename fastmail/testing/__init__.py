"""Bundled helpers shared by the tests, the demo and bench/: the reference auth_http server
(`authd`) and a fast fake IMAP/POP3/SMTP backend (`backend`).

This package owns only these test and demo services and the small `LoopThread` runner that
starts them on a private uvloop loop from synchronous code. It must not import the proxy
itself (server, session, machines): the services have to work against nginx too.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["LoopThread", "new_loop"]


def new_loop() -> asyncio.AbstractEventLoop:
    """A fresh event loop: uvloop when installed (it is a dependency), asyncio otherwise."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a hard dependency
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class LoopThread:
    """An event loop running in a daemon thread, for synchronous tests and scripts.

    `run(coro)` executes a coroutine on that loop and returns its result; `call(fn, *args)`
    runs a plain function there (services are not thread-safe, so mutate them through this).
    """

    def __init__(self, name: str = "fastmail-testing") -> None:
        self.loop = new_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._started = threading.Event()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        self.loop.run_forever()
        # Let cancelled callbacks and transports finish closing before the loop goes away.
        self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()

    def start(self) -> LoopThread:
        self._thread.start()
        self._started.wait()
        return self

    def run(self, coro: Awaitable[T], timeout: float = 30.0) -> T:
        fut = asyncio.run_coroutine_threadsafe(_as_coro(coro), self.loop)
        return fut.result(timeout)

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 30.0) -> T:
        async def wrapper() -> T:
            return fn(*args)

        return self.run(wrapper(), timeout)

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)

    def __enter__(self) -> LoopThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _as_coro(aw: Awaitable[T]) -> T:
    return await aw
