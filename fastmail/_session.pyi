"""Stubs for fastmail._session (the session engine)."""

from typing import Any

from typing_extensions import disjoint_base

from fastmail._auth import AuthClient
from fastmail._conn import Acceptor
from fastmail._core import Profile
from fastmail._login import LoginConf
from fastmail._poll import Loop
from fastmail._proxy import TrustedNetworks
from fastmail._upstream import Upstream
from fastmail.conf.model import ConnLimit, LoginFailLimit, ServerConf
from fastmail.guard import Guard

DEBUG_BUILD: bool
SERIES: tuple[str, ...]
TLS_MODES: dict[str, int]

def live_count() -> int: ...

@disjoint_base
class Owner(Acceptor):
    loop: Loop
    by_conf: dict[int, Server]
    connections: int
    guard: Guard

@disjoint_base
class Server:
    conf: ServerConf
    profile: Profile
    login_conf: LoginConf
    auth: AuthClient
    resolver: Any
    trusted: TrustedNetworks
    log: Any
    log_level: int
    smtp: bool
    timeout: int
    proxy_timeout: int
    proxy_protocol: str
    auth_limit: int
    tls: Any
    next_tries: int
    alog: tuple[tuple[Any, Any], ...] | None
    alog_local: bool
    alog_name: bytes
    alog_proto: bytes
    def set_series(self, indices: list[int]) -> None: ...
    @property
    def series(self) -> list[int]: ...
    conn_limit: ConnLimit | None
    fail_limit: LoginFailLimit | None
    busy_reply: bytes
    throttle_reply: tuple[bytes, bytes | None]

@disjoint_base
class Entry:
    server: Server
    host: bytes
    port: int
    wildcard: bool
    ssl: bool
    proxy_protocol: bool
    addr_text: str

@disjoint_base
class Session(Upstream):
    @property
    def state(self) -> int: ...
    @property
    def id(self) -> int: ...
    @property
    def ip_key(self) -> bytes | None: ...
    def _resolved(self, result: Any) -> None: ...
