"""Stubs for fastmail._imap (the IMAP client session machine)."""

from collections.abc import Iterable

from typing_extensions import disjoint_base

from fastmail._core import Machine, Profile

GREETING: bytes
OK_COMPLETED: bytes
BAD_INVALID: bytes
STAR_TAG: bytes
BYE: bytes
NEXT: bytes
PLUS_EMPTY: bytes
PLUS_USERNAME: bytes
PLUS_PASSWORD: bytes
INTERNAL_ERROR: bytes
ID_NIL: bytes
OK_ID: bytes

@disjoint_base
class ImapProfile(Profile):
    greeting: bytes
    cap_plain: bytes
    cap_starttls: bytes
    cap_sto: bytes
    methods: int
    starttls: int
    client_buffer: int
    max_errors: int
    max_commands: int
    server_name: bytes
    def __init__(
        self,
        capabilities: Iterable[bytes | str] = ...,
        auth_methods: Iterable[str | bytes] = ...,
        starttls: str = "off",
        tls_available: bool = False,
        client_buffer: int = 4096,
        max_errors: int = 5,
        max_commands: int = 1000,
        server_name: bytes | str = b"localhost",
    ) -> None: ...

@disjoint_base
class ImapSession(Machine):
    tls: bool
    state: int
    tag: bytes
    def __init__(self, profile: ImapProfile, tls: bool = False) -> None: ...
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
    def after_starttls(self) -> int: ...
    def on_timeout(self) -> int: ...
    def on_timer(self) -> int: ...
