"""The protocol table: one record per mail protocol, as nginx's ngx_mail_protocol_t.

Owns what differs between IMAP, POP3, SMTP and ManageSieve outside the machines: the default
ports (which also choose the protocol of a `listen` without a `protocol` directive), how a
server{} block's directives become the client machine's profile and the backend login's
settings, and whether Client-Host is resolved and sent to auth_http. Everything else (the
engine, the auth client, the config loader) reads this table instead of testing the protocol
name. Must not hold per-connection state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastmail import _imap, _login, _pop3, _sieve, _smtp, _smtplogin
from fastmail._core import Profile
from fastmail._login import LoginConf

if TYPE_CHECKING:  # conf/ reads the ports from here: no import cycle
    from fastmail.conf.model import ServerConf


@dataclass(frozen=True, slots=True)
class Protocol:
    name: str
    ports: tuple[int, ...]  # the first is the plain port
    profile: Callable[[ServerConf], Profile]
    login: Callable[[ServerConf], LoginConf]
    client_host: bool  # nginx resolves the client's name and sends Client-Host (SMTP only)
    alpn: bytes  # the IANA ALPN id a TLS client must offer if it offers any
    cert_replies: tuple[bytes, bytes]  # a bad client certificate's reply, a missing one's
    # beyond nginx: the abuse limits' temporary errors (fastmail/guard.py)
    busy: bytes  # limit_conn_per_ip refused the connection; %s is server_name
    throttled: tuple[bytes, bytes | None]  # login_fail_limit refused: on_auth_fail's text, code


def _imap_profile(c: ServerConf) -> Profile:
    return _imap.ImapProfile(
        capabilities=[s.encode() for s in c.imap_capabilities],
        auth_methods=c.imap_auth,
        starttls=c.starttls,
        tls_available=c.tls is not None,
        client_buffer=c.imap_client_buffer,
        max_errors=c.max_errors,
        max_commands=c.max_commands,
        server_name=c.server_name.encode(),
    )


def _pop3_profile(c: ServerConf) -> Profile:
    return _pop3.Pop3Profile(
        capabilities=[s.encode() for s in c.pop3_capabilities],
        auth_methods=c.pop3_auth,
        starttls=c.starttls,
        tls_available=c.tls is not None,
        max_errors=c.max_errors,
        max_commands=c.max_commands,
        server_name=c.server_name.encode(),
    )


def _smtp_profile(c: ServerConf) -> Profile:
    tls = c.tls is not None
    return _smtp.SmtpProfile(
        capabilities=[s.encode() for s in c.smtp_capabilities],
        auth_methods=c.smtp_auth,
        starttls=c.starttls if tls else "off",
        tls_available=tls,
        client_buffer=c.smtp_client_buffer,
        max_errors=c.max_errors,
        max_commands=c.max_commands,
        server_name=c.server_name.encode(),
        greeting_delay=c.smtp_greeting_delay,
    )


def _sieve_profile(c: ServerConf) -> Profile:
    return _sieve.SieveProfile(
        capabilities=[s.encode() for s in c.sieve_capabilities],
        auth_methods=c.sieve_auth,
        starttls=c.starttls,
        tls_available=c.tls is not None,
        client_buffer=c.sieve_client_buffer,
        max_errors=c.max_errors,
        max_commands=c.max_commands,
    )


def _login_conf(cls: type[LoginConf]) -> Callable[[ServerConf], LoginConf]:
    def make(c: ServerConf) -> LoginConf:
        return cls(
            c.proxy_buffer, c.proxy_pass_error_message, c.proxy_pipelining, c.proxy_client_id
        )

    return make


def _smtp_login(c: ServerConf) -> LoginConf:
    return _smtplogin.SmtpLoginConf(
        c.proxy_buffer,
        c.proxy_pass_error_message,
        c.proxy_pipelining,
        c.proxy_client_id,
        server_name=c.server_name.encode(),
        xclient=c.xclient,
        proxy_smtp_auth=c.proxy_smtp_auth,
        smtp_auth_method=c.proxy_smtp_auth_method.encode(),
    )


_BUSY = b"Too many connections from your address"
_LATER = b"Too many failed logins, try again later"

PROTOCOLS: dict[str, Protocol] = {
    "imap": Protocol(
        "imap", (143, 993), _imap_profile, _login_conf(_login.ImapLoginConf), False, b"imap",
        (b"* BYE SSL certificate error\r\n", b"* BYE No required SSL certificate\r\n"),
        b"* BYE [UNAVAILABLE] " + _BUSY + b"\r\n",  # RFC 5530
        (b"[UNAVAILABLE] " + _LATER, None),
    ),
    "pop3": Protocol(
        "pop3", (110, 995), _pop3_profile, _login_conf(_login.Pop3LoginConf), False, b"pop3",
        (b"-ERR SSL certificate error\r\n", b"-ERR No required SSL certificate\r\n"),
        b"-ERR [SYS/TEMP] " + _BUSY + b"\r\n",  # RFC 3206
        (b"[SYS/TEMP] " + _LATER, None),
    ),
    "smtp": Protocol(
        "smtp", (25, 465, 587), _smtp_profile, _smtp_login, True, b"smtp",
        (b"421 4.7.1 SSL certificate error\r\n", b"421 4.7.1 No required SSL certificate\r\n"),
        b"421 4.7.0 %s " + _BUSY + b"\r\n",  # RFC 5321 4.2.5, RFC 3463 4.7.0
        (b"Temporary authentication failure", b"454 4.7.0"),  # RFC 4954
    ),
    # beyond nginx: ManageSieve (RFC 5804), its BYE as RFC 5804 words it
    "sieve": Protocol(
        "sieve", (4190,), _sieve_profile, _login_conf(_login.SieveLoginConf), False,
        b"managesieve",
        (b'BYE "SSL certificate error"\r\n', b'BYE "No required SSL certificate"\r\n'),
        b'BYE (TRYLATER) "' + _BUSY + b'"\r\n',
        (_LATER, None),
    ),
}  # fmt: skip


def for_port(port: int) -> str | None:
    """The protocol a `listen` port implies when no `protocol` directive says (nginx)."""
    for p in PROTOCOLS.values():
        if port in p.ports:
            return p.name
    return None
