from collections.abc import Iterable

from typing_extensions import disjoint_base

from fastmail._core import Machine, Profile

S220_START_TLS: bytes
S221_BYE: bytes
S250_OK: bytes
S334_NEXT: bytes
S334_USERNAME: bytes
S334_PASSWORD: bytes
S451_INTERNAL: bytes
S500_INVALID: bytes
S501_INVALID_ARG: bytes
S503_BAD_SEQUENCE: bytes
S503_PIPELINING: bytes
S530_AUTH_REQUIRED: bytes
S530_STARTTLS_FIRST: bytes
S535_DEFAULT_CODE: bytes

@disjoint_base
class SmtpProfile(Profile):
    greeting: bytes
    helo_reply: bytes
    ehlo_plain: bytes
    ehlo_starttls: bytes
    ehlo_starttls_only: bytes
    server_name: bytes
    greeting_delay: int
    client_buffer: int
    max_errors: int
    max_commands: int
    def __init__(
        self,
        capabilities: Iterable[bytes] = (),
        auth_methods: Iterable[str] = ("plain", "login"),
        starttls: str = "off",
        tls_available: bool = False,
        client_buffer: int = 4096,
        max_errors: int = 5,
        max_commands: int = 1000,
        server_name: bytes = b"localhost",
        greeting_delay: int = 0,
    ) -> None: ...
    def enabled(self, method: str) -> bool: ...

@disjoint_base
class SmtpSession(Machine):
    profile: SmtpProfile
    tls: bool
    helo: bytes
    mail_from: bytes
    rcpt_to: bytes
    esmtp: bool
    def __init__(self, profile: SmtpProfile, tls: bool = False) -> None: ...
    @property
    def state_name(self) -> str: ...
    @property
    def pending(self) -> int: ...
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
