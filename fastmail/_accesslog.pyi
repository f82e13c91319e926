"""Stubs for fastmail._accesslog (the access log's formatter and writers)."""

from typing import Any

from typing_extensions import disjoint_base

from fastmail._poll import Loop, Watcher

FIELDS: tuple[str, ...]

@disjoint_base
class Format:
    @property
    def name(self) -> str: ...
    @property
    def json(self) -> bool: ...
    @property
    def needs_local(self) -> bool: ...
    def __init__(self, name: str, json: bool, parts: list[tuple[str, str | None]]) -> None: ...
    def render(self, values: dict[str, Any]) -> bytes: ...

@disjoint_base
class Writer(Watcher):
    mx_lines: int
    mx_dropped: int
    @property
    def name(self) -> str: ...
    @property
    def pending(self) -> int: ...
    def __init__(
        self,
        loop: Loop,
        name: str,
        log: Any,
        *,
        fd: int = -1,
        path: str | None = None,
        size: int = 0,
        flush_ms: int = 0,
        server: tuple[int, str, int] | None = None,
        pri: int = 190,
        head: bytes = b"",
    ) -> None: ...
    def _address(self, family: int, host: str, port: int) -> None: ...
    def flush(self) -> None: ...
    def reopen(self) -> None: ...
    def close(self) -> None: ...
    def put(self, f: Format, values: dict[str, Any]) -> None: ...
