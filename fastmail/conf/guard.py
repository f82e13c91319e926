"""fastmail's abuse limits (beyond nginx): limit_conn_per_ip and login_fail_limit.

Owns parsing the two directives into their settings (ConnLimit, LoginFailLimit); the
counting and the decisions live in fastmail/guard.py, the refusals in the engine. Both are
off by default, and nothing of them runs unless configured.
"""

from __future__ import annotations

from fastmail.conf.model import ConnLimit, LoginFailLimit
from fastmail.conf.parser import Ctx, Loader
from fastmail.conf.table import (
    MAIL,
    SERVER,
    TAKE1,
    TAKE2,
    TAKE3,
    TAKE4,
    TAKE5,
    Directive,
    parse_number,
    parse_time,
)


def _keywords(ld: Loader, d: Directive, args: list[str], allowed: dict[str, str]) -> dict[str, int]:
    """`name=value` arguments: times (ms) or prefix lengths, each once."""
    out: dict[str, int] = {}
    for a in args:
        name, eq, value = a.partition("=")
        kind = allowed.get(name)
        if not eq or kind is None or name in out:
            raise ld.error(f'invalid parameter "{a}"')
        n = parse_time(value) if kind == "time" else parse_number(value.lstrip("/"))
        if n is None or (kind == "prefix" and n > 128) or (kind == "time" and n == 0):
            raise ld.error(f'invalid value "{a}" in "{d.name}" directive')
        out[name] = n
    return out


def _count(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> int:
    assert d.field is not None
    if d.field in ctx.values:
        raise ld.error(f'"{d.name}" directive is duplicate')
    n = parse_number(args[0])
    if n is None:
        raise ld.error(f'"{d.name}" directive invalid number')
    return n


def set_conn_limit(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
    n = _count(ld, ctx, d, args)
    kw = _keywords(ld, d, args[1:], {"ipv6_prefix": "prefix"})
    ctx.values["limit_conn_per_ip"] = ConnLimit(n, kw.get("ipv6_prefix", 64)) if n else None
    ctx.where["limit_conn_per_ip"] = (ld.file, ld.line)


def set_login_fail_limit(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
    n = _count(ld, ctx, d, args)
    kw = _keywords(
        ld,
        d,
        args[1:],
        {"window": "time", "delay": "time", "block": "time", "ipv6_prefix": "prefix"},
    )
    limit = LoginFailLimit(
        n,
        kw.get("window", 600_000),
        kw.get("delay", 15_000),
        kw.get("block", 600_000),
        kw.get("ipv6_prefix", 64),
    )
    ctx.values["login_fail_limit"] = limit if n else None
    ctx.where["login_fail_limit"] = (ld.file, ld.line)


DIRECTIVES: tuple[Directive, ...] = (
    Directive(
        "limit_conn_per_ip",
        MAIL | SERVER,
        TAKE1 | TAKE2,
        set_conn_limit,
        "limit_conn_per_ip",
        default=None,
        default_doc="0",
        syntax="number [ipv6_prefix=64]",
        module="mail",
        ext=True,
        doc="Connections one client address may have open at once in a worker (0: no "
        "limit); IPv6 clients are counted by their /64 (or the given prefix). The address "
        "is the real one after the PROXY protocol. One more is refused with the protocol's "
        "temporary error (IMAP `* BYE [UNAVAILABLE]`, POP3 `-ERR [SYS/TEMP]`, SMTP `421 "
        "4.7.0`) and an error line `limiting connections from ADDRESS`.",
    ),
    Directive(
        "login_fail_limit",
        MAIL | SERVER,
        TAKE1 | TAKE2 | TAKE3 | TAKE4 | TAKE5,
        set_login_fail_limit,
        "login_fail_limit",
        default=None,
        default_doc="0",
        syntax="number [window=10m] [delay=15s] [block=10m] [ipv6_prefix=64]",
        module="mail",
        ext=True,
        doc="Login throttling, Dovecot's auth penalty as the model (0: off): after `number` "
        "failed logins from one client address, or for one login name, within `window`, "
        "each further login waits before auth_http is asked (1 s, doubling up to `delay`); "
        "from twice `number` failures on, logins are refused with the protocol's temporary "
        "error (IMAP `NO [UNAVAILABLE]`, POP3 `-ERR [SYS/TEMP]`, SMTP `454 4.7.0`) until "
        "`block` has passed since the last failure. State is kept per worker, in bounded "
        "tables that drop the least recently used entries.",
    ),
)
