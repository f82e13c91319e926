"""Stubs for fastmail._core (action bits, the Machine base, AuthRequest, SASL helpers)."""

import enum

from typing_extensions import disjoint_base

class Action(enum.IntEnum):
    ACT_SEND = 1
    ACT_AUTH = 2
    ACT_STARTTLS = 4
    ACT_CLOSE = 8
    ACT_TIMER = 16
    ACT_BACKEND = 32
    ACT_DONE = 64

# the same bits as plain ints, for the drivers
ACT_SEND: int
ACT_AUTH: int
ACT_STARTTLS: int
ACT_CLOSE: int
ACT_TIMER: int
ACT_BACKEND: int
ACT_DONE: int

@disjoint_base
class AuthRequest:
    method: bytes
    user: bytes
    passwd: bytes
    salt: bytes
    protocol: bytes
    login_attempt: int
    smtp_helo: bytes
    smtp_from: bytes
    smtp_to: bytes
    tag: bytes
    esmtp: bool
    backend_auth: bytes
    def __init__(
        self,
        protocol: bytes = b"",
        method: bytes = b"plain",
        user: bytes = b"",
        passwd: bytes = b"",
        salt: bytes = b"",
        login_attempt: int = 1,
    ) -> None: ...

@disjoint_base
class Machine:
    errors: int
    max_errors: int
    commands: int
    max_commands: int
    auth: AuthRequest | None
    phase: str
    close_reason: str | None
    timer_ms: int
    login_attempt: int
    @property
    def buffered(self) -> int: ...
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
    def take_output(self) -> bytes: ...
    def take_input(self) -> bytes: ...
    def room(self) -> int: ...
    log_info: bool

@disjoint_base
class Profile:
    def new_session(self, tls: bool) -> Machine: ...

def decode_base64(data: bytes) -> bytes | None: ...
def encode_base64(data: bytes) -> bytes: ...
def sasl_plain(data: bytes) -> tuple[bytes, bytes] | None: ...
def sasl_cram_md5(data: bytes) -> tuple[bytes, bytes | None]: ...
def make_salt(server_name: bytes) -> bytes: ...
def has_ctl(data: bytes) -> bool: ...
def sasl_xoauth2(data: bytes) -> tuple[bytes, bytes] | None: ...
def sasl_name(s: bytes) -> bytes | None: ...
def sasl_oauthbearer(
    data: bytes, need_end: bool, need_user: bool
) -> tuple[bytes, bytes] | None: ...
