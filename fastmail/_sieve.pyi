"""Stubs for fastmail._sieve (the ManageSieve client session machine)."""

from collections.abc import Iterable

from typing_extensions import disjoint_base

from fastmail._core import Machine, Profile

OK_GREETING: bytes
OK_CAPABILITY: bytes
OK_NOOP: bytes
OK_LOGOUT: bytes
OK_STARTTLS: bytes
OK_TLS_DONE: bytes
NO_UNKNOWN: bytes
NO_AUTH_FIRST: bytes
NO_SYNTAX: bytes
NO_STARTTLS: bytes
NO_ENCRYPT: bytes
NO_MECHANISM: bytes
NO_SASL: bytes
NO_ABORTED: bytes
AUTH_FAILED: bytes
BYE_TOO_LONG: bytes
BYE_ERRORS: bytes
BYE_COMMANDS: bytes
BYE_TIMEOUT: bytes
INTERNAL_ERROR: bytes
CHALLENGE_EMPTY: bytes
CHALLENGE_USERNAME: bytes
CHALLENGE_PASSWORD: bytes
DEFAULT_EXTENSIONS: tuple[str, ...]

def sieve_string(s: bytes) -> bytes: ...

@disjoint_base
class SieveProfile(Profile):
    caps_plain: bytes
    caps_starttls: bytes
    caps_sto: bytes
    methods: int
    starttls: int
    client_buffer: int
    max_errors: int
    max_commands: int
    def __init__(
        self,
        capabilities: Iterable[bytes | str] = ...,
        auth_methods: Iterable[str | bytes] = ...,
        starttls: str = "off",
        tls_available: bool = False,
        client_buffer: int = 4096,
        max_errors: int = 5,
        max_commands: int = 1000,
        implementation: bytes | str = b"fastmail",
    ) -> None: ...

@disjoint_base
class SieveSession(Machine):
    tls: bool
    state: int
    def __init__(self, profile: SieveProfile, tls: bool = False) -> None: ...
    def start(self) -> int: ...
    def feed(self, data: bytes) -> int: ...
    def on_auth_ok(self) -> int: ...
    def on_auth_fail(
        self,
        message: bytes,
        error_code: bytes | None = None,
        retry: bool = False,
        sasl: bytes | None = None,
    ) -> int: ...
    def on_auth_error(self) -> int: ...
    def on_tls_done(self) -> int: ...
    def on_timeout(self) -> int: ...
    def on_timer(self) -> int: ...
