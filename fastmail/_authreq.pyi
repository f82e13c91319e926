"""Stubs for fastmail._authreq (the auth_http request in C)."""

from typing_extensions import disjoint_base

from fastmail._core import AuthRequest

@disjoint_base
class Extra:
    client_port: int
    server_ip: bytes | None
    server_port: int
    failed: list[bytes] | None
    def __init__(
        self,
        client_port: int = -1,
        server_ip: bytes | None = None,
        server_port: int = 0,
        failed: list[bytes] | None = None,
    ) -> None: ...

@disjoint_base
class RequestTemplate:
    def __init__(
        self,
        uri_path: bytes,
        host_header: bytes,
        extra_headers: list[tuple[bytes, bytes]] | None = None,
        keepalive: bool = False,
        pass_client_cert: bool = False,
    ) -> None: ...
    def request(
        self,
        auth: AuthRequest,
        client_ip: bytes,
        client_host: bytes | None = None,
        proxy_protocol: tuple[bytes, int, bytes, int] | None = None,
        ssl_info: dict[str, bytes] | None = None,
        extra: Extra | None = None,
        key: bool = False,
    ) -> bytes: ...
