import asyncio
from collections.abc import Callable
from typing import Any

def pool_stats() -> tuple[int, int]: ...
def pool_configure(idle_max: int = 16, pipe_size: int = 1048576) -> None: ...
def pool_clear() -> None: ...
def take_fd(transport: asyncio.Transport) -> int: ...

class BackendSocket:
    fd: int
    closed: bool
    def __init__(
        self, loop: asyncio.AbstractEventLoop, host: str, port: int, session: Any, login: Any
    ) -> None: ...
    def write(self, data: bytes) -> None: ...
    def fail(self, reason: str) -> None: ...
    def close(self) -> None: ...

class SpliceRelay:
    closed: bool
    timed_out: bool
    close_reason: str | None
    action: str
    error: int
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client_fd: int,
        backend_fd: int | BackendSocket,
        on_close: Callable[[SpliceRelay], Any],
        *,
        to_backend: bytes = b"",
        to_client: bytes = b"",
        timeout: float | None = None,
        half_close: bool = True,
        nonblocking: bool = False,
    ) -> None: ...
    def start(self) -> None: ...
    def close(self, reason: str | None = None) -> None: ...
    @property
    def bytes_up(self) -> int: ...
    @property
    def bytes_down(self) -> int: ...
    @property
    def last_activity(self) -> float: ...

class BufferRelay:
    closed: bool
    timed_out: bool
    close_reason: str | None
    action: str
    error: int
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client_transport: asyncio.Transport,
        backend_transport: asyncio.Transport,
        on_close: Callable[[BufferRelay], Any],
        *,
        to_backend: bytes = b"",
        to_client: bytes = b"",
        timeout: float | None = None,
        half_close: bool = True,
        buffer_size: int = 4096,
    ) -> None: ...
    def start(self) -> None: ...
    def close(self, reason: str | None = None) -> None: ...
    @property
    def bytes_up(self) -> int: ...
    @property
    def bytes_down(self) -> int: ...
    @property
    def last_activity(self) -> float: ...
