"""Stubs for fastmail._auth (the engine's auth_http client)."""

from typing import Any

from typing_extensions import disjoint_base

from fastmail._authcache import AuthCache
from fastmail._authproto import AuthResult as AuthResult
from fastmail._authreq import Extra
from fastmail._authurl import Target
from fastmail._core import AuthRequest
from fastmail._poll import Loop, Watcher
from fastmail._tlsctx import ClientContext

DEBUG_BUILD: bool
DONE_AUTH: int
DOWN_MS: int

def live_count() -> int: ...

@disjoint_base
class AuthClient:
    peer: str
    pool_size: int
    closed: bool
    connections_made: int
    failovers: int
    send_client_port: bool
    send_server_addr: bool
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
        tls: ClientContext | None = None,
        tls_name: bytes | None = None,
        more: list[Target] | None = None,
        send: tuple[str, ...] | list[str] = (),
        cache: AuthCache | None = None,
    ) -> None: ...
    def ask(
        self,
        w: Watcher,  # w.completed(DONE_AUTH, result) follows
        auth: AuthRequest,
        client_ip: bytes,
        client_host: bytes | None,
        proxy_protocol: tuple[bytes, int, bytes, int] | None,
        ssl_info: dict[str, bytes] | None,
        trace: Any = None,  # fastmail.debuglog.Trace
        extra: Extra | None = None,
    ) -> object: ...
    def cancel(self, handle: object) -> None: ...
    def forget(self, key: bytes | None) -> None: ...
    def close(self) -> None: ...
    def idle_count(self) -> int: ...
    @property
    def urls(self) -> list[Target]: ...
    @property
    def cache_hits(self) -> int: ...
    @property
    def cache_misses(self) -> int: ...
