"""Stubs for fastmail._report (what a session reports; its server{})."""

from typing import Any

from typing_extensions import disjoint_base

from fastmail._auth import AuthClient
from fastmail._core import Profile
from fastmail._login import LoginConf
from fastmail._proxy import TrustedNetworks
from fastmail._upstream import Upstream
from fastmail.conf.model import ConnLimit, LoginFailLimit, ServerConf

SERIES: tuple[str, ...]

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
class Reporter(Upstream):
    @property
    def id(self) -> int: ...
