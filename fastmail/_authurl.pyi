"""Stubs for fastmail._authurl (one auth_http URL of the engine's client)."""

from typing_extensions import disjoint_base

from fastmail._tlsctx import ClientContext

@disjoint_base
class Target:
    index: int
    peer: str
    connections_made: int
    def __init__(
        self,
        host: str | None,
        port: int,
        path: bytes,
        host_header: bytes,
        *,
        unix_path: str | None = None,
        tls: ClientContext | None = None,
        tls_name: bytes | None = None,
    ) -> None: ...
    @property
    def idle(self) -> int: ...
