"""ngx_mail_auth_http_module directives: auth_http URL, timeout, extra headers, client cert.

Owns the auth_http URL parse (resolved once at load; only the first address is used) and the
"no auth_http" check. The HTTP client itself is fastmail/auth_http.py, not here.
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
    SERVER,
    TAKE1,
    TAKE2,
    Directive,
    add_pair,
    set_flag,
    set_msec,
    set_num,
)


def auth_http(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
    url = args[0]
    # only a lower-case "http://" is stripped, as in nginx
    text = url[7:] if url.startswith("http://") else url
    try:
        u = parse_url(text, default_port=80, uri_part=True)
    except ValueError as e:
        raise ld.error(f'{e} in auth_http "{text}"') from None
    family, host = u.addrs[0]
    ctx.values["auth_http"] = AuthHttpUrl(
        url=url,
        family=family,
        host="" if u.path is not None else host,
        port=u.port,
        path=u.path,
        uri=u.uri or "/",
        host_header="localhost" if u.path is not None else u.host,
    )
    ctx.where["auth_http"] = (ld.file, ld.line)


DIRECTIVES: tuple[Directive, ...] = (
    Directive(
        "auth_http",
        MAIL | SERVER,
        TAKE1,
        auth_http,
        "auth_http",
        default=None,
        default_doc="— (required)",
        syntax="URL",
        module="auth_http",
        doc="The HTTP server that authenticates clients and names the backend "
        "(`[http://]host[:port][/uri]` or `unix:/path[:/uri]`).",
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
)


def finalize(ld: Loader, mctx: Ctx, sctx: Ctx, out: dict[str, Any]) -> None:
    if out["auth_http"] is None:
        raise ConfigError(f'no "auth_http" is defined for server in {sctx.file}:{sctx.line}')
