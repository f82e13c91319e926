from typing import Any

from fastmail._authproto import AuthResult as AuthResult
from fastmail._core import AuthRequest
from fastmail._poll import Loop

DEBUG_BUILD: bool

def live_connections() -> int: ...

class AuthWaiter:
    @property
    def auth_pending(self) -> bool: ...
    def auth_done(self, result: AuthResult) -> int: ...  # an override must return 0

class AuthClient:
    peer: str
    pool_size: int
    closed: bool
    connections_made: int
    def __init__(
        self,
        loop: Loop,
        host: str | None,
        port: int,
        path: bytes,
        host_header: bytes,
        timeout_ms: int,
        pool_size: int = 64,
        *,
        unix_path: str | None = None,
        extra_headers: list[tuple[bytes, bytes]] | None = None,
        pass_client_cert: bool = False,
        resolver: Any = None,
        reader_factory: Any = None,
    ) -> None: ...
    def close(self) -> None: ...
    def idle_count(self) -> int: ...
    def submit(
        self,
        w: AuthWaiter,
        auth: AuthRequest,
        client_ip: bytes,
        client_host: bytes | None = None,
        proxy_protocol: tuple[bytes, int, bytes, int] | None = None,
        ssl_info: dict[str, bytes] | None = None,
    ) -> None: ...
    def withdraw(self, w: AuthWaiter) -> None: ...
