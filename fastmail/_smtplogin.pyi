from typing_extensions import disjoint_base

from fastmail._core import AuthRequest
from fastmail._login import BackendLogin, LoginConf

SMTP_INTERNAL_ERROR: bytes
SMTP_AUTH_OK: bytes

def xtext(value: bytes) -> bytes: ...

@disjoint_base
class SmtpLogin(BackendLogin):
    def __init__(
        self,
        auth: AuthRequest,
        *,
        server_name: bytes | str,
        client_addr: bytes | str,
        client_host: bytes | str = b"[UNAVAILABLE]",
        xclient: bool = True,
        proxy_smtp_auth: bool = False,
        proxy_buffer: int = 4096,
        pass_error_message: bool = False,
        proxy_header: bytes = b"",
        pipelining: bool = False,
        client_id: bool = False,
        smtp_auth_method: bytes = b"plain",
    ) -> None: ...

@disjoint_base
class SmtpLoginConf(LoginConf):
    server_name: bytes
    xclient: bool
    proxy_smtp_auth: bool
    smtp_auth_method: bytes
    def __init__(
        self,
        proxy_buffer: int = 4096,
        pass_error_message: bool = False,
        pipelining: bool = False,
        client_id: bool = False,
        *,
        server_name: bytes | str = b"localhost",
        xclient: bool = True,
        proxy_smtp_auth: bool = False,
        smtp_auth_method: bytes | str = b"plain",
    ) -> None: ...
