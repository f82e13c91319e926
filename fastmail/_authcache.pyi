"""Stubs for fastmail._authcache (auth_http_cache)."""

from typing_extensions import disjoint_base

from fastmail._authproto import AuthResult

@disjoint_base
class AuthCache:
    size: int
    valid_ms: int
    fail_ms: int
    hits: int
    misses: int
    def __init__(self, size: int, valid_ms: int, fail_ms: int) -> None: ...
    def __len__(self) -> int: ...
    def lookup(self, text: bytes, now: int) -> AuthResult | None: ...
    def store(self, text: bytes, r: AuthResult, now: int) -> None: ...
