"""Stubs for fastmail._authproto (the auth_http answer in C)."""

from typing import Any

from typing_extensions import disjoint_base

from fastmail._core import AuthRequest

MAX_HEADER_BLOCK: int
MAX_DRAIN_BODY: int
WAIT_IMMEDIATE_RETRIES: int
R_MORE: int
R_HEAD: int
R_ERROR: int

@disjoint_base
class AuthResult:
    status: str
    server: bytes | None
    port: int | None
    addr: str | None
    user: bytes | None
    passwd: bytes | None
    error_message: bytes | None
    error_code: bytes | None
    sasl_error: bytes | None
    wait: int
    log_message: str | None
    log_level: str | None
    ssl_backend: bytes | None
    backend_auth: bytes | None
    notes: list[str] | None
    cache_key: bytes | None
    def __init__(self, status: str = "error", **fields: Any) -> None: ...

@disjoint_base
class AnswerReader:
    used_fallback: bool
    received: int
    code: int
    def __init__(self, factory: Any) -> None: ...
    def feed(self, data: bytes) -> tuple[int, list[tuple[bytes, bytes]] | None]: ...
    def feed_body(self, data: bytes) -> str: ...
    def verdict(self, pool: bool = True) -> str: ...
    def error_text(self) -> str | None: ...
    def result(self, auth: AuthRequest, peer: str, allow_names: bool = False) -> AuthResult: ...
    def clear(self) -> None: ...

def interpret(
    headers: list[tuple[bytes, bytes]], auth: AuthRequest, peer: str, allow_names: bool = False
) -> AuthResult: ...
def parse_server_addr(text: bytes) -> str | None: ...
