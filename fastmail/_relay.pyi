"""Stubs for fastmail._relay (the relay and the pipe pool)."""

from collections.abc import Callable

from typing_extensions import disjoint_base

from fastmail._poll import Loop, Watcher

@disjoint_base
class Relay(Watcher):
    why: int
    error: int
    def __init__(
        self,
        loop: Loop,
        client_fd: int,
        backend_fd: int,
        on_close: Callable[[Relay], object] | None,
        *,
        to_backend: bytes = b"",
        to_client: bytes = b"",
        timeout: float | None = None,
        half_close: bool = True,
    ) -> None: ...
    def start(self) -> None: ...
    def close(self) -> None: ...
    @property
    def bytes_up(self) -> int: ...
    @property
    def bytes_down(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    def _resume(self) -> None: ...

def pool_stats() -> tuple[int, int, int]: ...
def pool_configure(idle_max: int = 16, pipe_size: int = ...) -> None: ...
def pool_clear() -> None: ...
