from typing_extensions import disjoint_base

from fastmail._core import AuthRequest

IMAP_INTERNAL_ERROR: bytes
POP3_INTERNAL_ERROR: bytes
SIEVE_INTERNAL_ERROR: bytes
READING: str
CTL_REASON: str
TLS_MODES: dict[str, int]

@disjoint_base
class BackendLogin:
    auth: AuthRequest
    phase: str
    close_reason: str | None
    log_level: str
    tls_mode: int
    @property
    def done(self) -> bool: ...
    def start(self) -> int: ...
    def on_tls_done(self) -> int: ...
    def feed(self, data: bytes) -> int: ...
    def on_error(self, reason: str | None = None) -> int: ...
    def take_output(self) -> bytes: ...
    def take_backend_output(self) -> bytes: ...
    def set_client(
        self, client_ip: bytes, client_port: int, local_ip: bytes | None, local_port: int
    ) -> None: ...

@disjoint_base
class ImapLogin(BackendLogin):
    def __init__(
        self,
        auth: AuthRequest,
        *,
        proxy_buffer: int = 4096,
        pass_error_message: bool = False,
        proxy_header: bytes = b"",
        pipelining: bool = False,
        client_id: bool = False,
    ) -> None: ...

@disjoint_base
class Pop3Login(BackendLogin):
    def __init__(
        self,
        auth: AuthRequest,
        *,
        proxy_buffer: int = 4096,
        pass_error_message: bool = False,
        proxy_header: bytes = b"",
        pipelining: bool = False,
        client_id: bool = False,
    ) -> None: ...

@disjoint_base
class LoginConf:
    proxy_buffer: int
    pass_error_message: bool
    pipelining: bool
    client_id: bool
    def __init__(
        self,
        proxy_buffer: int = 4096,
        pass_error_message: bool = False,
        pipelining: bool = False,
        client_id: bool = False,
    ) -> None: ...
    def new_login(
        self, auth: AuthRequest, client_addr: bytes, client_host: bytes, proxy_header: bytes
    ) -> BackendLogin: ...

class ImapLoginConf(LoginConf): ...
class Pop3LoginConf(LoginConf): ...
class SieveLoginConf(LoginConf): ...

class SieveLogin(BackendLogin):
    def __init__(
        self,
        auth: AuthRequest,
        *,
        proxy_buffer: int = 4096,
        pass_error_message: bool = False,
        proxy_header: bytes = b"",
    ) -> None: ...
    def on_tls_done(self) -> int: ...
