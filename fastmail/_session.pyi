"""Stubs for fastmail._session (the session engine)."""

from typing import Any

from typing_extensions import disjoint_base

from fastmail._conn import Acceptor
from fastmail._poll import Loop
from fastmail._report import Reporter, Server
from fastmail.guard import Guard

DEBUG_BUILD: bool
TLS_MODES: dict[str, int]

def live_count() -> int: ...

@disjoint_base
class Owner(Acceptor):
    loop: Loop
    by_conf: dict[int, Server]
    connections: int
    guard: Guard

@disjoint_base
class Session(Reporter):
    @property
    def state(self) -> int: ...
    @property
    def ip_key(self) -> bytes | None: ...
    def _resolved(self, result: Any) -> None: ...
