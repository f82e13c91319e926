"""Stubs for fastmail._session (the session engine)."""

from typing import Any

from typing_extensions import disjoint_base

from fastmail._auth import AuthClient
from fastmail._conn import Acceptor
from fastmail._core import Profile
from fastmail._login import LoginConf
from fastmail._poll import Loop
from fastmail._proxy import TrustedNetworks
from fastmail._relay import Relay
from fastmail.conf.model import ServerConf

DEBUG_BUILD: bool
TLS_MODES: dict[str, int]

def debug_counters(loop: Loop | None = None) -> dict[str, int]: ...

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
    tls: Any

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
class Engine(Acceptor):
    loop: Loop
    sessions: set[Session]
    connections: int
    max_connections: int
    log: Any
    on_idle: Any
    stopping: bool
    by_conf: dict[int, Server]
    def __init__(self, loop: Loop, log: Any, max_connections: int) -> None: ...
    def close_all(self, reason: str | None = None) -> None: ...

@disjoint_base
class Session(Relay):
    @property
    def state(self) -> int: ...
    @property
    def id(self) -> int: ...
    def _resolved(self, result: Any) -> None: ...
