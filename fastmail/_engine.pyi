"""Stubs for fastmail._engine (the worker's engine)."""

from typing import Any

from typing_extensions import disjoint_base

from fastmail._poll import Loop
from fastmail._session import Owner, Session

def debug_counters(loop: Loop | None = None) -> dict[str, int]: ...

@disjoint_base
class Engine(Owner):
    sessions: set[Session]
    max_connections: int
    log: Any
    on_idle: Any
    stopping: bool
    mx_dropped: int
    def __init__(self, loop: Loop, log: Any, max_connections: int) -> None: ...
    def close_all(self, reason: str | None = None) -> None: ...
