"""ngx_mail_ssl_module directives, the certificate checks and the servers' TLS contexts.

Owns parsing every ssl_* directive (files resolve against the conf prefix), nginx 1.22.1's
deprecated `ssl on` with its starttls conflicts, the "no ssl_certificate" checks
(ngx_mail_ssl_merge_conf) and building, for each server that uses TLS (listen ... ssl, ssl on,
starttls), fastmail's own OpenSSL context (`ServerConf.tls`, fastmail._tlsctx: nginx's merge
order and messages); the backend contexts; the SNI maps of shared addresses. Handshakes and
session resumption are the engine's business.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

from fastmail.conf.errors import ConfigError, strerror
from fastmail.conf.model import ListenSocket, ServerConf, SessionCache
from fastmail.conf.parser import Ctx, Loader
from fastmail.conf.table import (
    FLAG,
    MAIL,
    ONE_MORE,
    PAGESIZE,
    SERVER,
    TAKE1,
    TAKE2,
    TAKE12,
    Directive,
    Handler,
    add_path,
    parse_number,
    parse_size,
    set_bitmask,
    set_enum,
    set_flag,
    set_num,
    set_path,
    set_sec,
    set_str,
)
from fastmail.protocols import PROTOCOLS as MAIL_PROTOCOLS

if TYPE_CHECKING:
    from fastmail._tlsctx import ClientContext, ServerContext

PROTOCOLS = ("SSLv2", "SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")


def ssl_flag(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
    set_flag(ld, ctx, d, args)
    ld.warn('the "ssl" directive is deprecated, use the "listen ... ssl" directive instead')
    if ctx.values["ssl"] and ctx.values.get("starttls", "off") != "off":
        raise ld.error('"starttls" directive conflicts with "ssl on"')  # (sic) nginx 1.22.1 ✔
    if "listen_ssl" not in ctx.extra:
        ctx.extra["ssl_where"] = (ld.file, ld.line)


def starttls(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
    set_enum(ld, ctx, d, args)
    if ctx.values.get("ssl") is True and ctx.values["starttls"] != "off":
        raise ld.error('"ssl" directive conflicts with "starttls"')
    if "listen_ssl" not in ctx.extra:
        ctx.extra["ssl_where"] = (ld.file, ld.line)


def password_file(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
    set_path(ld, ctx, d, args)
    path = ctx.values["ssl_password_file"]
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise ld.error(f'open() "{path}" failed {strerror(e.errno or errno.EIO)}') from None


def session_cache(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
    """nginx's two settings in one: the builtin cache (off, none, builtin[:N]: the last one
    given wins) and the shared zone; a zone alone means "cache, no builtin"."""
    sc: SessionCache = ctx.values.setdefault("ssl_session_cache", SessionCache())
    for a in args:
        if a in ("off", "none"):
            sc.mode, sc.builtin, sc.fixed = a, None, True
        elif a == "builtin":
            sc.mode, sc.builtin, sc.fixed = "cache", -1, True
        elif a.startswith("builtin:") and len(a) > 8:
            n = parse_number(a[8:])
            if n is None:
                raise ld.error(f'invalid session cache "{a}"')
            sc.mode, sc.builtin, sc.fixed = "cache", n, True
        elif a.startswith("shared:") and len(a) > 7:
            name, sep, size_text = a[7:].partition(":")
            size = parse_size(size_text) if sep else None
            if not name or size is None:
                raise ld.error(f'invalid session cache "{a}"')
            if size < 8 * PAGESIZE:
                raise ld.error(f'session cache "{a}" is too small')
            declared = ld.state.setdefault("shm_zones", {}).setdefault(name, size)
            if declared != size:  # ngx_shared_memory_add
                raise ld.error(
                    f'the size {size} of shared memory zone "{name}" conflicts with '
                    f"already declared size {declared}"
                )
            sc.shared_name, sc.shared_size = name, size
            if not sc.fixed:
                sc.mode = "cache"
        else:
            raise ld.error(f'invalid session cache "{a}"')


def conf_command(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
    ctx.values.setdefault("ssl_conf_command", []).append((args[0], args[1]))


def _ssl_dir(
    name: str,
    args: int,
    handler: Handler,
    field: str,
    default: Any = None,
    default_doc: str = "—",
    syntax: str = "file",
    doc: str = "",
    values: Any = None,
) -> Directive:
    return Directive(
        name,
        MAIL | SERVER,
        args,
        handler,
        field,
        values=values,
        default=default,
        default_doc=default_doc,
        syntax=syntax,
        doc=doc,
        module="ssl",
    )


DIRECTIVES: tuple[Directive, ...] = (
    _ssl_dir(
        "ssl",
        FLAG,
        ssl_flag,
        "ssl",
        False,
        "off",
        "on | off",
        "Deprecated (nginx 1.22): TLS on connect for every listen of the server; "
        "use `listen ... ssl`.",
    ),
    _ssl_dir(
        "starttls",
        TAKE1,
        starttls,
        "starttls",
        "off",
        "off",
        "on | off | only",
        "Offer STARTTLS/STLS; `only` requires it before login. Beyond nginx, server{} blocks "
        "doing STARTTLS may share a plain address: the first declared greets, the client's SNI "
        "name in the STARTTLS handshake picks the server{} that goes on.",
        values=("on", "off", "only"),
    ),
    _ssl_dir(
        "ssl_certificate",
        TAKE1,
        add_path,
        "ssl_certificate",
        [],
        "—",
        "file",
        "Certificate chain (PEM); repeat for several key types. Beyond nginx, several "
        "server{} blocks may share one `listen ... ssl` address, each with its own "
        "certificates: the client's SNI name picks the one whose server_name matches "
        "(exact, `*.example.com` or `.example.com`), else the first declared.",
    ),
    _ssl_dir(
        "ssl_certificate_key",
        TAKE1,
        add_path,
        "ssl_certificate_key",
        [],
        "—",
        "file",
        "Private key of the certificate given at the same position.",
    ),
    _ssl_dir(
        "ssl_password_file",
        TAKE1,
        password_file,
        "ssl_password_file",
        None,
        "—",
        "file",
        "Pass phrases for the keys, one per line, tried in order.",
    ),
    _ssl_dir(
        "ssl_dhparam",
        TAKE1,
        set_path,
        "ssl_dhparam",
        None,
        "—",
        "file",
        "DH parameters for DHE ciphers.",
    ),
    _ssl_dir(
        "ssl_ecdh_curve",
        TAKE1,
        set_str,
        "ssl_ecdh_curve",
        "auto",
        "auto",
        "curve",
        "Curve, or `a:b:c` list of curves, for ECDHE; `auto` keeps OpenSSL's list.",
    ),
    _ssl_dir(
        "ssl_protocols",
        ONE_MORE,
        set_bitmask,
        "ssl_protocols",
        ["TLSv1.2", "TLSv1.3"],
        "TLSv1.2 TLSv1.3",
        "[SSLv2] [SSLv3] [TLSv1] [TLSv1.1] [TLSv1.2] [TLSv1.3]",
        "Enabled protocol versions (default as in nginx 1.27.3+).",
        values=PROTOCOLS,
    ),
    _ssl_dir(
        "ssl_ciphers",
        TAKE1,
        set_str,
        "ssl_ciphers",
        "HIGH:!aNULL:!MD5",
        "HIGH:!aNULL:!MD5",
        "ciphers",
        "OpenSSL cipher list for TLS 1.2 and earlier.",
    ),
    _ssl_dir(
        "ssl_prefer_server_ciphers",
        FLAG,
        set_flag,
        "ssl_prefer_server_ciphers",
        False,
        "off",
        "on | off",
        "Prefer the server's cipher order.",
    ),
    _ssl_dir(
        "ssl_session_cache",
        TAKE12,
        session_cache,
        "ssl_session_cache",
        SessionCache(),
        "none",
        "off | none | [builtin[:size]] [shared:name:size]",
        "TLS session cache: OpenSSL's per worker (`builtin`), and/or one store shared by all "
        "workers (`shared`), kept across reloads while its name and size stay.",
    ),
    _ssl_dir(
        "ssl_session_tickets",
        FLAG,
        set_flag,
        "ssl_session_tickets",
        True,
        "on",
        "on | off",
        "Resume sessions with TLS session tickets.",
    ),
    _ssl_dir(
        "ssl_session_ticket_key",
        TAKE1,
        add_path,
        "ssl_session_ticket_key",
        [],
        "—",
        "file",
        "File with a 48- or 80-byte key for tickets (nginx's layouts); the first one "
        "encrypts, all decrypt. Without: one key per master process, kept across reloads.",
    ),
    _ssl_dir(
        "ssl_session_timeout",
        TAKE1,
        set_sec,
        "ssl_session_timeout",
        300,
        "5m",
        "time",
        "How long a session may be resumed.",
    ),
    _ssl_dir(
        "ssl_verify_client",
        TAKE1,
        set_enum,
        "ssl_verify_client",
        "off",
        "off",
        "on | off | optional | optional_no_ca",
        "Ask for (and verify) a client certificate.",
        values=("on", "off", "optional", "optional_no_ca"),
    ),
    _ssl_dir(
        "ssl_verify_depth",
        TAKE1,
        set_num,
        "ssl_verify_depth",
        1,
        "1",
        "number",
        "Depth of the client certificate chain check.",
    ),
    _ssl_dir(
        "ssl_client_certificate",
        TAKE1,
        set_path,
        "ssl_client_certificate",
        None,
        "—",
        "file",
        "CA certificates for client verification (also sent to the client).",
    ),
    _ssl_dir(
        "ssl_trusted_certificate",
        TAKE1,
        set_path,
        "ssl_trusted_certificate",
        None,
        "—",
        "file",
        "CA certificates for client verification (not sent).",
    ),
    _ssl_dir(
        "ssl_crl",
        TAKE1,
        set_path,
        "ssl_crl",
        None,
        "—",
        "file",
        "Revoked certificates (PEM) for client verification.",
    ),
    _ssl_dir(
        "ssl_conf_command",
        TAKE2,
        conf_command,
        "ssl_conf_command",
        [],
        "—",
        "name value",
        "OpenSSL configuration command (SSL_CONF_cmd), applied after the other settings.",
    ),
    # fastmail's own: TLS to the backend (nginx mail speaks plain text to backends)
    Directive(
        "proxy_ssl",
        MAIL | SERVER,
        TAKE1,
        set_enum,
        "proxy_ssl",
        values=("off", "on", "starttls"),
        default="off",
        default_doc="off",
        syntax="off | on | starttls",
        doc="TLS to the backend: `on` on connect, `starttls` after the greeting (STARTTLS/STLS; "
        "bytes the backend sends after its go-ahead are discarded). The auth_http reply header "
        "`Auth-SSL-Backend: off|on|starttls` overrides it per login.",
        ext=True,
        module="ssl",
    ),
    Directive(
        "proxy_ssl_verify",
        MAIL | SERVER,
        FLAG,
        set_flag,
        "proxy_ssl_verify",
        default=False,
        default_doc="off",
        syntax="on | off",
        doc="Verify the backend's certificate and its name (`proxy_ssl_name`).",
        ext=True,
        module="ssl",
    ),
    Directive(
        "proxy_ssl_trusted_certificate",
        MAIL | SERVER,
        TAKE1,
        set_path,
        "proxy_ssl_trusted_certificate",
        default=None,
        syntax="file",
        doc="CA certificates (PEM) for `proxy_ssl_verify`; the system store when unset.",
        ext=True,
        module="ssl",
    ),
    Directive(
        "proxy_ssl_name",
        MAIL | SERVER,
        TAKE1,
        set_str,
        "proxy_ssl_name",
        default=None,
        default_doc="the Auth-Server value",
        syntax="name",
        doc="Name checked against the backend's certificate and sent as SNI (not for addresses).",
        ext=True,
        module="ssl",
    ),
)


def _where(mctx: Ctx, sctx: Ctx) -> tuple[str, int]:
    if "listen_ssl" in sctx.extra:
        where: tuple[str, int] = sctx.extra["listen_ssl"]
    else:
        where = sctx.extra.get("ssl_where") or mctx.extra.get("ssl_where") or ("", 0)
    return where


def finalize(ld: Loader, mctx: Ctx, sctx: Ctx, out: dict[str, Any]) -> None:
    out["tls_backend"] = backend_tls(
        ld, out["proxy_ssl_verify"], out["proxy_ssl_trusted_certificate"]
    )
    if "listen_ssl" in sctx.extra:
        mode = "listen ... ssl"
    elif out["ssl"]:
        mode = "ssl"
    elif out["starttls"] != "off":
        mode = "starttls"
    else:
        out["tls"] = None
        return
    file, line = _where(mctx, sctx)
    certs, keys = out["ssl_certificate"], out["ssl_certificate_key"]
    if not certs:
        raise ConfigError(
            f'no "ssl_certificate" is defined for the "{mode}" directive in {file}:{line}'
        )
    if not keys:
        raise ConfigError(
            f'no "ssl_certificate_key" is defined for the "{mode}" directive in {file}:{line}'
        )
    if len(keys) < len(certs):
        raise ConfigError(
            f'no "ssl_certificate_key" is defined for certificate "{getattr(certs[-1], "written", certs[-1])}" '
            f'and the "{mode}" directive in {file}:{line}'
        )
    out["tls"] = build_tls(ld, out)


def _passwords(path: str | None) -> list[str | None]:
    if path is None:
        return [None]
    with open(path, "rb") as f:
        return [ln.decode("utf-8", "surrogateescape") for ln in f.read().splitlines() if ln] or [
            None
        ]


def build_tls(ld: Loader, out: dict[str, Any]) -> ServerContext:
    """fastmail's own OpenSSL context for the server, in ngx_mail_ssl_merge_conf's order and
    with its messages: OpenSSL's refusals unlocated, file checks at `ld` (the end of mail{},
    where nginx merges)."""
    from fastmail._tlscache import zone
    from fastmail._tlsctx import ServerContext, TlsConfigError

    try:
        proto = MAIL_PROTOCOLS[out["protocol"]]
        ctx = ServerContext(proto.name, out["ssl_protocols"], proto.alpn, proto.cert_replies)
        ctx.set_ciphers(out["ssl_ciphers"], out["ssl_prefer_server_ciphers"])
        passwords = [p.encode("utf-8", "surrogateescape") if p is not None else b""
                     for p in _passwords(out["ssl_password_file"])]  # fmt: skip
        if out["ssl_password_file"] is None:
            passwords = []
        for cert, key in zip(out["ssl_certificate"], out["ssl_certificate_key"], strict=False):
            ctx.add_certificate(str(cert), str(key), passwords)
        verify = out["ssl_verify_client"]
        if verify != "off":
            if not out["ssl_client_certificate"] and verify != "optional_no_ca":
                raise ConfigError("no ssl_client_certificate for ssl_verify_client")  # 1.22.1
            ctx.set_client_verify(
                verify,
                out["ssl_verify_depth"],
                out["ssl_client_certificate"],
                out["ssl_trusted_certificate"],
                out["ssl_crl"],
            )
        if out["ssl_dhparam"]:
            ctx.set_dhparam(out["ssl_dhparam"])
        ctx.set_ecdh_curve(out["ssl_ecdh_curve"])
        sc: SessionCache = out["ssl_session_cache"]
        shared = zone(sc.shared_name, sc.shared_size) if sc.shared_name else None
        ctx.set_session_cache(sc.mode, sc.builtin, shared, out["ssl_session_timeout"])
        ctx.set_session_tickets(out["ssl_session_tickets"], _ticket_keys(ld, out))
        if out["ssl_conf_command"]:
            ctx.conf_commands(out["ssl_conf_command"], ld.conf_prefix)
    except TlsConfigError as e:
        raise ConfigError(str(e)) from None
    return ctx


def backend_tls(ld: Loader, verify: bool, cafile: str | None) -> ClientContext:
    """The context for TLS to the backends (proxy_ssl, or Auth-SSL-Backend per login): one per
    (verify, CA file) in a config, made at load like the servers' (so shared by the workers)."""
    from fastmail._tlsctx import ClientContext, TlsConfigError

    made: dict[tuple[bool, str | None], ClientContext] = ld.state.setdefault("tls_backends", {})
    ctx = made.get((verify, cafile))
    if ctx is None:
        try:
            ctx = made[(verify, cafile)] = ClientContext(verify, cafile)
        except TlsConfigError as e:
            raise ConfigError(str(e)) from None
    return ctx


def link_tls(servers: list[ServerConf], sockets: list[ListenSocket]) -> None:
    """Each server's context answers tls_chosen() with the server; server{} blocks sharing a
    TLS address (beyond nginx) are chosen by the client's SNI name, the first one declared
    being the default: its context gets the SNI map."""
    from fastmail._tlsctx import SniMap

    for srv in servers:
        if srv.tls is not None:
            srv.tls.owner = srv
    for ls in sockets:
        groups: dict[str, list[ServerConf]] = {}
        for e in ls.entries:
            if e.server is not None and e.server.tls is not None:
                group = groups.setdefault(e.addr_text, [])
                if e.server not in group:
                    group.append(e.server)
        for group in groups.values():
            if len(group) > 1:
                sni = SniMap()
                contexts = [srv.tls for srv in group if srv.tls is not None]
                for srv, tls in zip(group, contexts, strict=True):
                    sni.add([srv.server_name], tls)
                contexts[0].set_sni(sni)


def _ticket_keys(ld: Loader, out: dict[str, Any]) -> list[bytes]:
    keys = []
    for path in out["ssl_session_ticket_key"]:
        try:
            with open(path, "rb") as f:
                data = f.read(81)
        except OSError as e:
            raise ld.error(f'open() "{path}" failed {strerror(e.errno or errno.EIO)}') from None
        if len(data) not in (48, 80):
            raise ld.error(f'"{path}" must be 48 or 80 bytes')
        keys.append(data)
    return keys
