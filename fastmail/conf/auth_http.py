"""ngx_mail_auth_http_module directives: auth_http URL, timeout, extra headers, client cert;
fastmail's own: further URLs and https (auth_http), auth_http_send, auth_http_cache,
auth_http_ssl_verify, auth_http_ssl_trusted_certificate.

Owns the auth_http URL parse (resolved once at load; only the first address is used), the
"no auth_http" check and the TLS context of https URLs (made at load, as the backends' is).
The HTTP client itself is fastmail/auth_http.py, not here.
"""

from __future__ import annotations

from typing import Any

from fastmail.conf.errors import ConfigError
from fastmail.conf.mail import parse_url
from fastmail.conf.model import AuthHttpUrl
from fastmail.conf.parser import Ctx, Loader
from fastmail.conf.table import (
    FLAG,
    MAIL,
    ONE_MORE,
    SERVER,
    TAKE1,
    TAKE2,
    TAKE123,
    Directive,
    _dup,
    _store,
    add_pair,
    parse_number,
    parse_time,
    set_flag,
    set_msec,
    set_num,
    set_path,
)


def _url(ld: Loader, url: str) -> AuthHttpUrl:
    # only a lower-case "http://" is stripped, as in nginx; "https://" is fastmail's
    tls = url.startswith("https://")
    text = url[8:] if tls else url[7:] if url.startswith("http://") else url
    try:
        u = parse_url(text, default_port=443 if tls else 80, uri_part=True)
    except ValueError as e:
        raise ld.error(f'{e} in auth_http "{text}"') from None
    family, host = u.addrs[0]
    return AuthHttpUrl(
        url=url,
        family=family,
        host="" if u.path is not None else host,
        port=u.port,
        path=u.path,
        uri=u.uri or "/",
        host_header="localhost" if u.path is not None else u.host,
        tls=tls,
    )


def auth_http(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
    """nginx's one URL; beyond nginx, further URLs asked in turn when one is down."""
    urls = [_url(ld, a) for a in args]
    ctx.values["auth_http"] = urls[0]
    ctx.extra["auth_http_backups"] = urls[1:]
    ctx.where["auth_http"] = (ld.file, ld.line)


SEND_WORDS = ("client_port", "server_addr")


def auth_http_send(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
    _dup(ld, ctx, d)
    if [a.lower() for a in args] == ["off"]:
        _store(ld, ctx, d, [])
        return
    words: list[str] = []
    for a in args:
        if a.lower() not in SEND_WORDS:
            raise ld.error(f'invalid value "{a}" in "{d.name}" directive')
        if a.lower() in words:
            raise ld.error(f'duplicate value "{a}" in "{d.name}" directive')
        words.append(a.lower())
    _store(ld, ctx, d, sorted(words, key=SEND_WORDS.index))


def auth_http_cache(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
    """`off` or `ENTRIES [valid=TIME] [fail=TIME]` (30s and 5s by default)."""
    _dup(ld, ctx, d)
    if args[0].lower() == "off":
        if len(args) > 1:
            raise ld.error(f'invalid parameter "{args[1]}"')
        _store(ld, ctx, d, None)
        return
    size = parse_number(args[0])
    if not size:
        raise ld.error(f'"{d.name}" directive invalid number "{args[0]}"')
    times = {"valid": 30_000, "fail": 5_000}
    for a in args[1:]:
        name, eq, value = a.partition("=")
        ms = parse_time(value) if eq and name in times else None
        if ms is None:
            raise ld.error(f'invalid parameter "{a}"')
        times[name] = ms
    _store(ld, ctx, d, (size, times["valid"], times["fail"]))


DIRECTIVES: tuple[Directive, ...] = (
    Directive(
        "auth_http",
        MAIL | SERVER,
        ONE_MORE,
        auth_http,
        "auth_http",
        default=None,
        default_doc="— (required)",
        syntax="URL [URL...]",
        module="auth_http",
        doc="The HTTP server that authenticates clients and names the backend "
        "(`[http://]host[:port][/uri]` or `unix:/path[:/uri]`). fastmail also takes "
        "`https://host[:port][/uri]` (TLS, verified: `auth_http_ssl_verify`; connections kept "
        "alive and sessions resumed) and more than one URL: a request goes to the next URL "
        "when one is down (connect or TLS failure, no answer within `auth_http_timeout`, which "
        "each URL gets afresh, the connection closed before the answer, or a 5xx status), and "
        "a URL found down is asked last for the next 10 s. nginx takes one `http://` URL.",
    ),
    Directive(
        "auth_http_timeout",
        MAIL | SERVER,
        TAKE1,
        set_msec,
        "auth_http_timeout",
        default=60000,
        default_doc="60s",
        syntax="time",
        module="auth_http",
        doc="Timeout of the auth_http request.",
    ),
    Directive(
        "auth_http_header",
        MAIL | SERVER,
        TAKE2,
        add_pair,
        "auth_http_header",
        default=[],
        syntax="header value",
        module="auth_http",
        doc="An extra header sent to the auth_http server, verbatim.",
    ),
    Directive(
        "auth_http_pass_client_cert",
        MAIL | SERVER,
        FLAG,
        set_flag,
        "auth_http_pass_client_cert",
        default=False,
        default_doc="off",
        syntax="on | off",
        module="auth_http",
        doc="Send the client certificate (PEM, url-encoded) in Auth-SSL-Cert.",
    ),
    Directive(
        "auth_http_keepalive",
        MAIL | SERVER,
        TAKE1,
        set_num,
        "auth_http_keepalive",
        default=64,
        default_doc="64",
        syntax="number",
        module="auth_http",
        ext=True,
        doc="Idle HTTP/1.1 connections to the auth_http server kept for reuse per worker "
        "(at least the logins in flight at once, or the surplus is closed and reopened); 0 sends nginx's one HTTP/1.0 request per connection.",
    ),
    Directive(
        "auth_http_send",
        MAIL | SERVER,
        ONE_MORE,
        auth_http_send,
        "auth_http_send",
        default=[],
        default_doc="off",
        syntax="off | client_port | server_addr ...",
        module="auth_http",
        ext=True,
        doc="Request headers beyond nginx's (nginx#205): `client_port` sends `Client-Port` "
        "(the client's port, after realip, as Client-IP is), `server_addr` sends `Server-IP` "
        "and `Server-Port` (the address the client connected to, as nginx writes addresses). "
        "They come after nginx's lines, before the `auth_http_header` ones; not for a client "
        "on a unix socket.",
    ),
    Directive(
        "auth_http_cache",
        MAIL | SERVER,
        TAKE123,
        auth_http_cache,
        "auth_http_cache",
        default=None,
        default_doc="off",
        syntax="off | entries [valid=time] [fail=time]",
        module="auth_http",
        ext=True,
        doc="Keeps auth_http answers per worker (at most `entries`, the least recently used "
        "dropped first): an OK answer for `valid` (30s), a failure for `fail` (5s; 0: none), "
        "so a client that reconnects in a loop does not reach the auth server each time. The "
        "key is a BLAKE2b hash, keyed per process, of the request without its ports "
        "(credentials, Client-IP, protocol, Auth-Login-Attempt, TLS details...): passwords are "
        "not kept. Never kept: errors, WAIT, APOP and CRAM-MD5 logins (their salt differs per "
        "session), answers whose Auth-Pass differs from the client's. An answer naming a "
        "backend that then fails is dropped. A password changed on the auth server keeps "
        "working through fastmail for up to `valid`.",
    ),
    Directive(
        "auth_http_ssl_verify",
        MAIL | SERVER,
        FLAG,
        set_flag,
        "auth_http_ssl_verify",
        default=True,
        default_doc="on",
        syntax="on | off",
        module="auth_http",
        ext=True,
        doc="For `https://` auth_http URLs: verify the server's certificate and that it "
        "names the URL's host (also the SNI name; an address is checked as an IP).",
    ),
    Directive(
        "auth_http_ssl_trusted_certificate",
        MAIL | SERVER,
        TAKE1,
        set_path,
        "auth_http_ssl_trusted_certificate",
        default=None,
        syntax="file",
        module="auth_http",
        ext=True,
        doc="CA certificates (PEM) for `auth_http_ssl_verify`; the system store when unset.",
    ),
)


def finalize(ld: Loader, mctx: Ctx, sctx: Ctx, out: dict[str, Any]) -> None:
    if out["auth_http"] is None:
        raise ConfigError(f'no "auth_http" is defined for server in {sctx.file}:{sctx.line}')
    # the further URLs go with the first: a server's auth_http replaces mail's whole list
    owner = sctx if "auth_http" in sctx.values else mctx
    out["auth_http_backups"] = list(owner.extra.get("auth_http_backups", []))
    if any(u.tls for u in [out["auth_http"], *out["auth_http_backups"]]):
        from fastmail.conf.ssl import backend_tls

        out["auth_http_tls"] = backend_tls(
            ld, out["auth_http_ssl_verify"], out["auth_http_ssl_trusted_certificate"]
        )
