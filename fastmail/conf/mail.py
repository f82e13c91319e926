"""ngx_mail_core_module: mail{} and server{} blocks, listen, protocol, resolver, the merge.

Owns address parsing (nginx's ngx_parse_url for listen, auth_http, resolver, syslog), the
listen entries and their duplicate check, protocol inference from well-known ports, the
mail -> server merge in nginx's module order, and the listening-socket plan (nginx's
ngx_mail_optimize_servers). Per-module merge checks live in their module files (ssl.py,
auth_http.py, ...).
"""

from __future__ import annotations

import copy
import ipaddress
import socket
from typing import Any

from fastmail.conf import ssl
from fastmail.conf.errors import ConfigError
from fastmail.conf.model import Listen, ListenSocket, MailConf, Resolver, ServerConf
from fastmail.conf.parser import Ctx, Loader
from fastmail.conf.table import (
    BLOCK,
    MAIL,
    MAIN,
    NOARGS,
    ONE_MORE,
    SERVER,
    TAKE1,
    Directive,
    parse_number,
    parse_size,
    parse_time,
    set_msec,
    set_num,
    set_str,
)
from fastmail.protocols import PROTOCOLS, for_port

MAX_HOSTNAME = 63  # MAXHOSTNAMELEN - 1 on Linux


# ---------------------------------------------------------------- ngx_parse_url


class Url:
    __slots__ = (
        "family",
        "host",
        "port",
        "last_port",
        "no_port",
        "wildcard",
        "uri",
        "path",
        "addrs",
    )

    def __init__(self) -> None:
        self.family: int = socket.AF_INET
        self.host = ""
        self.port = 0
        self.last_port = 0
        self.no_port = False
        self.wildcard = False
        self.uri = ""
        self.path: str | None = None
        self.addrs: list[tuple[int, str]] = []  # (family, address text)


def _port(text: str, listen: bool, u: Url) -> None:
    dash = text.find("-") if listen else -1
    first = text if dash < 0 else text[:dash]
    n = parse_number(first)
    if n is None or not 1 <= n <= 65535:
        raise ValueError("invalid port")
    u.port = u.last_port = n
    if dash >= 0:
        n2 = parse_number(text[dash + 1 :])
        if n2 is None or not 1 <= n2 <= 65535:
            raise ValueError("invalid port")
        if n2 < n:
            raise ValueError("invalid port range")
        u.last_port = n2


def resolve_host(host: str) -> list[tuple[int, str]]:
    """ngx_inet_resolve_host: every address, IPv4 first, as getaddrinfo gives them."""
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_UNSPEC, socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise ValueError("host not found") from None
    v4: list[tuple[int, str]] = [
        (socket.AF_INET, str(i[4][0])) for i in infos if i[0] == socket.AF_INET
    ]
    v6: list[tuple[int, str]] = [
        (socket.AF_INET6, str(ipaddress.IPv6Address(str(i[4][0]).split("%")[0])))
        for i in infos
        if i[0] == socket.AF_INET6
    ]
    if not v4 and not v6:
        raise ValueError("host not found")
    return v4 + v6


def parse_url(
    s: str, *, listen: bool = False, default_port: int = 0, uri_part: bool = False
) -> Url:
    """Raises ValueError(nginx's reason) on failure."""
    u = Url()
    if s[:5].lower() == "unix:":
        path = s[5:]
        if uri_part:
            q = path.find(":")
            if q >= 0:
                path, u.uri = path[:q], path[q + 1 :]
        if not path:
            raise ValueError("no path in the unix domain socket")
        if len(path.encode("utf-8", "surrogateescape")) + 1 > 108:
            raise ValueError("too long path in the unix domain socket")
        u.family, u.path, u.host = socket.AF_UNIX, path, "localhost"
        u.addrs = [(socket.AF_UNIX, path)]
        return u
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            raise ValueError("invalid host")
        rest = s[end + 1 :]
        slash = rest.find("/")
        if slash >= 0:
            if listen or not uri_part:
                raise ValueError("invalid host")
            u.uri, rest = rest[slash:], rest[:slash]
        if rest:
            if rest[0] != ":":
                raise ValueError("invalid host")
            _port(rest[1:], listen, u)
        else:
            u.no_port, u.port = True, default_port
        inner = s[1:end]
        if not inner:
            raise ValueError("no host")
        try:
            a = ipaddress.IPv6Address(inner)
        except ValueError:
            raise ValueError("invalid IPv6 address") from None
        u.family, u.host = socket.AF_INET6, s[: end + 1]
        u.wildcard = a.is_unspecified
        u.addrs = [(socket.AF_INET6, str(a))]
        return u
    host = s
    colon, slash, query = s.find(":"), s.find("/"), s.find("?")
    uri = slash
    if query >= 0 and (uri < 0 or query < uri):
        uri = query
    last = len(s)
    if uri >= 0:
        if listen or not uri_part:
            raise ValueError("invalid host")
        u.uri = s[uri:]
        last = uri
        if colon > uri:
            colon = -1
    if colon >= 0:
        _port(s[colon + 1 : last], listen, u)
        last = colon
    else:
        if uri < 0 and listen:
            n = parse_number(s)
            if n is not None:
                if not 1 <= n <= 65535:
                    raise ValueError("invalid port")
                u.port = u.last_port = n
                u.wildcard = True
                u.host = "*"
                u.addrs = [(socket.AF_INET, "0.0.0.0")]
                return u
        u.no_port, u.port = True, default_port
    host = s[:last]
    if not host:
        raise ValueError("no host")
    u.host = host
    if listen and host == "*":
        u.wildcard = True
        u.addrs = [(socket.AF_INET, "0.0.0.0")]
        return u
    u.addrs = resolve_host(host)
    u.family = u.addrs[0][0]
    if all(ipaddress.ip_address(a).is_unspecified for _, a in u.addrs):
        u.wildcard = True
    return u


def resolve_url(s: str, default_port: int) -> list[tuple[int, str, int]]:
    u = parse_url(s, default_port=default_port)
    return [(f, a, u.port) for f, a in u.addrs]


def addr_text(family: int, addr: str, port: int) -> str:
    if family == socket.AF_UNIX:
        return f"unix:{addr}"
    if family == socket.AF_INET6:
        return f"[{addr}]:{port}"
    return f"{addr}:{port}"


# ---------------------------------------------------------------- blocks


def mail_block(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
    if "mail" in ld.state:
        raise ld.error('"mail" directive is duplicate')
    ld.state["modules_used"] = True
    mctx = Ctx(kind=MAIL, file=ld.file, line=ld.line)
    mctx.extra["servers"] = []
    mctx.extra["listens"] = []
    ld.state["mail"] = mctx
    ld.parse_block(mctx)
    ld.state["mail_conf"] = merge_mail(ld, mctx)


def server_block(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
    sctx = Ctx(kind=SERVER, file=ld.file, line=ld.line)
    sctx.extra["listens"] = []
    sctx.extra["parent"] = ctx
    ctx.extra["servers"].append(sctx)
    ld.parse_block(sctx)
    if not sctx.extra["listens"]:
        raise ConfigError(f'no "listen" is defined for server in {sctx.file}:{sctx.line}')


def listen(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
    text = args[0]
    try:
        u = parse_url(text, listen=True)
    except ValueError as e:
        raise ld.error(f'{e} in "{text}" of the "listen" directive') from None
    mctx: Ctx = ctx.extra["parent"]
    every: list[Listen] = mctx.extra["listens"]
    new: list[Listen] = []
    for port in range(u.port, u.last_port + 1):
        for family, addr in u.addrs:
            for old in every:
                if old.family == family and (old.path or old.host) == addr and old.port == port:
                    dup = ld.error(f'duplicate "{old.addr_text}" address and port pair')
                    if old in ctx.extra["listens"] or old.ssl != ("ssl" in args[1:]):
                        raise dup
                    # beyond nginx: server{} blocks may share a TLS address, chosen by SNI, and
                    # a plain one if both do STARTTLS (known when merging)
                    if not old.ssl:
                        mctx.extra.setdefault("shared_plain", []).append((old, ctx, dup))
            is_unix = family == socket.AF_UNIX
            ls = Listen(
                family=family,
                host="" if is_unix else addr,
                port=0 if is_unix else port,
                path=addr if is_unix else None,
                addr_text=addr_text(family, addr, port),
                wildcard=not is_unix and ipaddress.ip_address(addr).is_unspecified,
                file=ld.file,
                line=ld.line,
            )
            every.append(ls)
            new.append(ls)
    if "protocol" not in ctx.extra:
        proto = for_port(u.port)
        if proto is not None:
            ctx.extra["protocol"] = proto
    for p in args[1:]:
        _listen_param(ld, ctx, new, p)
    ctx.extra["listens"].extend(new)


def _listen_param(ld: Loader, ctx: Ctx, new: list[Listen], p: str) -> None:
    def each(**kw: Any) -> None:
        for ls in new:
            for k, v in kw.items():
                setattr(ls, k, v)

    if p == "bind":
        each(bind=True)
    elif p.startswith("backlog="):
        n = parse_number(p[8:])
        if not n:
            raise ld.error(f'invalid backlog "{p}"')
        each(backlog=n, bind=True)
    elif p.startswith("rcvbuf=") or p.startswith("sndbuf="):
        n = parse_size(p[7:])
        if n is None:
            raise ld.error(f'invalid {p[:6]} "{p}"')
        each(**{p[:6]: n, "bind": True})
    elif p.startswith("ipv6only=o"):
        if p[9:] not in ("on", "off"):
            raise ld.error(f'invalid ipv6only flags "{p[9:]}"')
        each(ipv6only=p[9:] == "on", bind=True)
    elif p == "ssl":
        each(ssl=True)
        ctx.extra["listen_ssl"] = (ld.file, ld.line)
    elif p.startswith("so_keepalive="):
        v = p[13:]
        if v == "on":
            each(so_keepalive=True, bind=True)
        elif v == "off":
            each(so_keepalive=False, bind=True)
        else:
            each(so_keepalive=True, keepalive=_keepalive(ld, v), bind=True)
    elif p == "proxy_protocol":
        each(proxy_protocol=True)
    else:
        raise ld.error(f'the invalid "{p}" parameter')


def _keepalive(ld: Loader, v: str) -> tuple[int, int, int]:
    parts = v.split(":", 2)
    parts += [""] * (3 - len(parts))
    out = [0, 0, 0]
    for i, part in enumerate(parts):
        if not part:
            continue
        n = parse_time(part, is_sec=True) if i < 2 else parse_number(part)
        if n is None:
            raise ld.error(f'invalid so_keepalive value: "{v}"')
        out[i] = n
    if out == [0, 0, 0]:
        raise ld.error(f'invalid so_keepalive value: "{v}"')
    return (out[0], out[1], out[2])


def protocol(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
    if args[0] not in PROTOCOLS:
        raise ld.error(f'unknown protocol "{args[0]}"')
    ctx.extra["protocol"] = args[0]


def resolver(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
    if "resolver" in ctx.values:
        raise ld.error('"resolver" directive is duplicate')
    if args[0] == "off":
        ctx.values["resolver"] = None
        return
    r = Resolver(servers=[])
    for a in args:
        if a.startswith("valid="):
            n = parse_time(a[6:], is_sec=True)
            if n is None:
                raise ld.error(f"invalid parameter: {a}")
            r.valid = n
        elif a.startswith("ipv4=") or a.startswith("ipv6="):
            if a[5:] not in ("on", "off"):
                raise ld.error(f"invalid parameter: {a}")
            setattr(r, a[:4], a[5:] == "on")
        else:
            try:
                r.servers.extend(resolve_url(a, default_port=53))
            except ValueError as e:
                raise ld.error(f'{e} in resolver "{a}"') from None
    if not r.servers:
        raise ld.error("no name servers defined")
    if not r.ipv4 and not r.ipv6:
        raise ld.error('"ipv4" and "ipv6" cannot both be "off"')
    ctx.values["resolver"] = r
    ctx.where["resolver"] = (ld.file, ld.line)


def hostname() -> str:
    return socket.gethostname().lower()[:MAX_HOSTNAME]


DIRECTIVES: tuple[Directive, ...] = (
    Directive(
        "mail",
        MAIN,
        BLOCK | NOARGS,
        mail_block,
        syntax="{ ... }",
        merge=False,
        doc="The mail proxy configuration; one per config.",
        module="mail",
    ),
    Directive(
        "server",
        MAIL,
        BLOCK | NOARGS,
        server_block,
        syntax="{ ... }",
        merge=False,
        doc="One mail server: its listen addresses, protocol and settings.",
        module="mail",
    ),
    Directive(
        "listen",
        SERVER,
        ONE_MORE,
        listen,
        syntax="address[:port] [ssl] [proxy_protocol] "
        "[bind] [backlog=number] [rcvbuf=size] [sndbuf=size] [ipv6only=on|off] "
        "[so_keepalive=on|off|[keepidle]:[keepintvl]:[keepcnt]]",
        merge=False,
        doc="Address and port (or unix:path) to accept connections on; the well-known "
        "ports 143/993, 110/995, 25/465/587 (and 4190, sieve) set the protocol when none is given.",
        module="mail",
    ),
    Directive(
        "protocol",
        SERVER,
        TAKE1,
        protocol,
        syntax="imap | pop3 | smtp | sieve",
        merge=False,
        default_doc="from the listen port",
        doc="The server's mail protocol; `sieve` (ManageSieve, RFC 5804) is an extension.",
        module="mail",
    ),
    Directive(
        "timeout",
        MAIL | SERVER,
        TAKE1,
        set_msec,
        "timeout",
        default=60000,
        default_doc="60s",
        syntax="time",
        module="mail",
        doc="Deadline for the whole dialogue before the backend is reached.",
    ),
    Directive(
        "server_name",
        MAIL | SERVER,
        TAKE1,
        set_str,
        "server_name",
        default="",
        default_doc="hostname",
        syntax="name",
        module="mail",
        doc="Name used in the SMTP greeting and HELO/EHLO replies and the POP3 APOP banner.",
    ),
    Directive(
        "resolver",
        MAIL | SERVER,
        ONE_MORE,
        resolver,
        "resolver",
        default=None,
        default_doc="off",
        syntax="address ... [valid=time] [ipv4=on|off] [ipv6=on|off] | off",
        module="mail",
        doc="DNS servers for the SMTP client host lookup (PTR then A/AAAA).",
    ),
    Directive(
        "resolver_timeout",
        MAIL | SERVER,
        TAKE1,
        set_msec,
        "resolver_timeout",
        default=30000,
        default_doc="30s",
        syntax="time",
        module="mail",
        doc="Timeout of one DNS lookup.",
    ),
    Directive(
        "max_errors",
        MAIL | SERVER,
        TAKE1,
        set_num,
        "max_errors",
        default=5,
        default_doc="5",
        syntax="number",
        module="mail",
        doc="Protocol errors after which the connection is closed.",
    ),
    Directive(
        "max_commands",
        MAIL | SERVER,
        TAKE1,
        set_num,
        "max_commands",
        default=1000,
        default_doc="1000",
        syntax="number",
        module="mail",
        ext=True,
        doc="Commands accepted before login, then the connection is closed; 0 is no limit "
        "(freenginx 1.25.5).",
    ),
)


# ---------------------------------------------------------------- the merge


def merge_field(d: Directive, mctx: Ctx, sctx: Ctx) -> Any:
    assert d.field is not None
    if d.field in sctx.values:
        return sctx.values[d.field]
    if d.merge and d.field in mctx.values:
        return copy.deepcopy(mctx.values[d.field])
    return copy.deepcopy(d.default)


def finalize(ld: Loader, mctx: Ctx, sctx: Ctx, out: dict[str, Any]) -> None:
    proto = sctx.extra.get("protocol")
    if proto is None:
        raise ConfigError(f"unknown mail protocol for server in {sctx.file}:{sctx.line}")
    out["protocol"] = proto
    out["listens"] = sctx.extra["listens"]
    if not out["server_name"]:
        out["server_name"] = hostname()
    if "error_log" in sctx.values:
        out["error_log"] = sctx.values["error_log"]
    elif "error_log" in mctx.values:
        out["error_log"] = mctx.values["error_log"]
    else:
        out["error_log"] = None  # the main error_log; filled in by load()


def merge_mail(ld: Loader, mctx: Ctx) -> MailConf:
    from fastmail.conf import MODULES  # the module order is nginx's merge order

    servers: list[Ctx] = mctx.extra["servers"]
    for old, sctx, dup in mctx.extra.get("shared_plain", ()):
        owner = next(s for s in servers if old in s.extra["listens"])
        if not (_starttls_only(mctx, owner) and _starttls_only(mctx, sctx)):
            raise dup
    outs: list[dict[str, Any]] = [{"file": s.file, "line": s.line} for s in servers]
    for mod in MODULES:
        fields = [d for d in mod.DIRECTIVES if d.field and d.contexts & SERVER]
        for sctx, out in zip(servers, outs, strict=True):
            for d in fields:
                out[d.field] = merge_field(d, mctx, sctx)
            fin = getattr(mod, "finalize", None)
            if fin is not None:
                fin(ld, mctx, sctx, out)
    result = [ServerConf(**out) for out in outs]
    for srv in result:
        for ls in srv.listens:
            ls.server = srv
            if srv.ssl:
                ls.ssl = True
    # an address shared by several servers (SNI) is planned once; the others ride along as
    # further entries of the same socket (entry_for() still answers with the first: the default)
    firsts: dict[tuple[int, str, int], Listen] = {}
    shared: list[tuple[Listen, Listen]] = []
    for ls in mctx.extra["listens"]:
        key = (ls.family, ls.path or ls.host, ls.port)
        if key in firsts:
            shared.append((firsts[key], ls))
        else:
            firsts[key] = ls
    sockets = plan_sockets(list(firsts.values()))
    for first, other in shared:
        for sock in sockets:
            if any(e is first for e in sock.entries):
                sock.entries.append(other)
    ssl.link_tls(result, sockets)
    return MailConf(servers=result, sockets=sockets)


def _starttls_only(mctx: Ctx, sctx: Ctx) -> bool:
    """The server's plain listens do STARTTLS (starttls on|only, no deprecated `ssl on`)."""
    merged = {**mctx.values, **sctx.values}
    return merged.get("starttls", "off") != "off" and not merged.get("ssl", False)


def plan_sockets(listens: list[Listen]) -> list[ListenSocket]:
    """ngx_mail_optimize_servers: group by (family, port); a wildcard serves every address of its
    port that has no `bind`; unix sockets each get their own."""
    groups: dict[tuple[int, int], list[Listen]] = {}
    for ls in listens:
        groups.setdefault((ls.family, ls.port), []).append(ls)
    out: list[ListenSocket] = []
    for addrs in groups.values():
        # nginx's stable sort: bind first, then the rest, the wildcard last
        addrs = sorted(addrs, key=lambda a: 2 if a.wildcard else (0 if a.bind else 1))
        wild = addrs[-1].wildcard and addrs[-1].family != socket.AF_UNIX
        if not wild:
            out.extend(ListenSocket(a, [a]) for a in addrs)
            continue
        out.extend(ListenSocket(a, [a]) for a in addrs[:-1] if a.bind)
        out.append(ListenSocket(addrs[-1], [a for a in addrs if not a.bind or a is addrs[-1]]))
    return out
