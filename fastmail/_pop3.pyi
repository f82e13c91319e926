"""Type stubs for fastmail._pop3 (the POP3 client session machine)."""

from collections.abc import Iterable

from typing_extensions import disjoint_base

from fastmail._core import Machine, Profile

GREETING: bytes
OK: bytes
ERR_INVALID: bytes
ERR_INTERNAL: bytes

@disjoint_base
class Pop3Profile(Profile):
    capa: bytes
    capa_stls: bytes
    capa_only: bytes
    auth_list: bytes
    server_name: bytes
    methods: int
    starttls: int
    client_buffer: int
    max_errors: int
    max_commands: int
    def __init__(
        self,
        capabilities: Iterable[bytes | str] = ...,
        auth_methods: Iterable[str] = ...,
        starttls: str = "off",
        tls_available: bool | None = None,
        client_buffer: int = 128,
        max_errors: int = 5,
        max_commands: int = 1000,
        server_name: bytes | str = b"localhost",
    ) -> None: ...
    @property
    def needs_salt(self) -> bool: ...

@disjoint_base
class Pop3Session(Machine):
    tls: bool
    state: int
    salt: bytes
    def __init__(
        self, profile: Pop3Profile, tls: bool = False, salt: bytes | None = None
    ) -> None: ...
    @property
    def stage(self) -> str: ...
    def start(self) -> int: ...
    def feed(self, data: bytes) -> int: ...
    def on_auth_ok(self) -> int: ...
    def on_auth_fail(
        self,
        message: bytes | None,
        error_code: bytes | None = None,
        retry: bool = False,
        sasl: bytes | None = None,
    ) -> int: ...
    def on_auth_error(self) -> int: ...
    def on_tls_done(self) -> int: ...
    def after_starttls(self) -> int: ...
    def on_timeout(self) -> int: ...
    def on_timer(self) -> int: ...
