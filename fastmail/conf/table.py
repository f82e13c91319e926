"""The directive registry: nginx's ngx_command_t as typed records, plus the generic slots.

Owns `Directive`, the context and arity flags, the value parsers nginx shares between modules
(time, size, number, flag, enum, bitmask) and the generic handlers that store a parsed value in
the current context. Module files (main.py, mail.py, ...) list their directives with these; custom
handlers (listen, resolver, error_log, auth_http) live in the module that owns them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastmail.conf.parser import Ctx, Loader

# contexts (nginx's NGX_MAIN_CONF, NGX_EVENT_CONF, NGX_MAIL_MAIN_CONF, NGX_MAIL_SRV_CONF);
# FOREIGN is everything inside http{} and stream{}: read for syntax only (foreign.py)
MAIN, EVENTS, MAIL, SERVER, FOREIGN = 1, 2, 4, 8, 16
ANY = MAIN | EVENTS | MAIL | SERVER | FOREIGN
CONTEXT_NAMES = {MAIN: "main", EVENTS: "events", MAIL: "mail", SERVER: "server"}

# arities: TAKEn is bit n (n = 0..7)
NOARGS, TAKE1, TAKE2, TAKE3, TAKE4, TAKE5, TAKE6, TAKE7 = (1 << n for n in range(8))
TAKE12, TAKE123 = TAKE1 | TAKE2, TAKE1 | TAKE2 | TAKE3
FLAG, ONE_MORE, TWO_MORE, BLOCK = 1 << 8, 1 << 9, 1 << 10, 1 << 11
MAX_ARGS = 8  # NGX_CONF_MAX_ARGS, the name included

MAX_INT = (1 << 63) - 1  # NGX_MAX_INT_T_VALUE on x86-64
PAGESIZE = 4096

Handler = Callable[["Loader", "Ctx", "Directive", list[str]], None]


@dataclass(frozen=True, slots=True)
class Directive:
    name: str
    contexts: int
    args: int
    handler: Handler
    field: str | None = None  # where the value is stored (the ServerConf/MainConf field)
    values: Any = None  # nginx's `post`: enum/bitmask keywords
    default: Any = None  # the merged value when nothing sets it
    default_doc: str = "—"  # the default as docs/directives.md shows it
    syntax: str = ""  # the arguments as the docs show them
    merge: bool = True  # mail -> server inheritance (False: server-only or main-only)
    ext: bool = False  # fastmail-only or fork-only (freenginx) directive
    doc: str = ""
    module: str = ""


# ---------------------------------------------------------------- value parsers (nginx's ngx_parse_*)


def parse_number(s: str) -> int | None:
    """ngx_atoi: decimal digits only, no sign, overflow is an error."""
    if not s or not s.isascii() or not s.isdigit():
        return None
    n = int(s)
    return n if n <= MAX_INT else None


def parse_size(s: str) -> int | None:
    """ngx_parse_size: digits with an optional k/K/m/M."""
    scale = 1
    if s and s[-1] in "kK":
        s, scale = s[:-1], 1024
    elif s and s[-1] in "mM":
        s, scale = s[:-1], 1024 * 1024
    n = parse_number(s)
    if n is None or n > MAX_INT // scale:
        return None
    return n * scale


def parse_offset(s: str) -> int | None:
    """ngx_parse_offset: as parse_size, plus g/G."""
    if s and s[-1] in "gG":
        n = parse_number(s[:-1])
        return None if n is None or n > MAX_INT >> 30 else n << 30
    return parse_size(s)


_DAY = 86400
# step order: start, year, month, week, day, hour, min, sec, msec, last
_ST = {"y": 1, "M": 2, "w": 3, "d": 4, "h": 5, "m": 6, "s": 7}
_SCALE = {"y": 365 * _DAY, "M": 30 * _DAY, "w": 7 * _DAY, "d": _DAY, "h": 3600, "m": 60, "s": 1}


def parse_time(s: str, is_sec: bool = False) -> int | None:
    """ngx_parse_time: `1h 30m`, `500ms`; units in decreasing order, each once. Returns ms or s."""
    step = 0 if is_sec else 2  # msec times start past "month": y and M are errors
    value = total = 0
    valid = False
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        i += 1
        if "0" <= c <= "9":
            value = value * 10 + ord(c) - 48
            if value > MAX_INT:
                return None
            valid = True
            continue
        if c == "m" and i < n and s[i] == "s":
            if is_sec or step >= 8:
                return None
            i += 1
            step, scale, msec = 8, 1, True
        elif c in _ST:
            st = _ST[c]
            if (c == "y" and step > 0) or (c != "y" and step >= st):
                return None
            step, scale, msec = st, _SCALE[c], False
        elif c == " ":
            if step >= 7:
                return None
            step, scale, msec = 9, 1, False
        else:
            return None
        if not msec and not is_sec:
            scale *= 1000
        value *= scale
        if value > MAX_INT or total > MAX_INT - value:
            return None
        total += value
        value = 0
        while i < n and s[i] == " ":
            i += 1
    if not valid:
        return None
    if not is_sec:
        value *= 1000
    if value > MAX_INT or total > MAX_INT - value:
        return None
    return total + value


# ---------------------------------------------------------------- generic slots


def _dup(ld: Loader, ctx: Ctx, d: Directive) -> None:
    if d.field in ctx.values:
        raise ld.error(f'"{d.name}" directive is duplicate')


def _store(ld: Loader, ctx: Ctx, d: Directive, value: Any) -> None:
    assert d.field is not None
    ctx.values[d.field] = value
    ctx.where[d.field] = (ld.file, ld.line)


def set_flag(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
    _dup(ld, ctx, d)
    v = args[0].lower()
    if v not in ("on", "off"):
        raise ld.error(
            f'invalid value "{args[0]}" in "{d.name}" directive, it must be "on" or "off"'
        )
    _store(ld, ctx, d, v == "on")


def _set_parsed(parse: Callable[[str], int | None], error: str) -> Handler:
    """A setter storing `parse(args[0])`; None from the parser is `"<name>" directive <error>`."""

    def setter(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
        _dup(ld, ctx, d)
        n = parse(args[0])
        if n is None:
            raise ld.error(f'"{d.name}" directive {error}')
        _store(ld, ctx, d, n)

    return setter


set_num = _set_parsed(parse_number, "invalid number")
set_size = _set_parsed(parse_size, "invalid value")
set_msec = _set_parsed(parse_time, "invalid value")
set_sec = _set_parsed(lambda s: parse_time(s, is_sec=True), "invalid value")


def set_str(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
    _dup(ld, ctx, d)
    _store(ld, ctx, d, args[0])


def set_path(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
    """A file an ssl_* directive names: nginx resolves it against the conf prefix."""
    _dup(ld, ctx, d)
    _store(ld, ctx, d, ld.conf_path(args[0]))


class ConfPath(str):
    """A resolved path that remembers how it was written (nginx names certificates as written)."""

    written: str


def add_path(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
    assert d.field is not None
    path = ConfPath(ld.conf_path(args[0]))
    path.written = args[0]
    ctx.values.setdefault(d.field, []).append(path)
    ctx.where.setdefault(d.field, (ld.file, ld.line))


def add_words(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
    """Capabilities: every occurrence appends its words."""
    assert d.field is not None
    ctx.values.setdefault(d.field, []).extend(args)
    ctx.where.setdefault(d.field, (ld.file, ld.line))


def add_pair(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
    assert d.field is not None
    ctx.values.setdefault(d.field, []).append((args[0], args[1]))
    ctx.where.setdefault(d.field, (ld.file, ld.line))


def set_enum(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
    _dup(ld, ctx, d)
    v = args[0].lower()
    if v not in d.values:
        raise ld.error(f'invalid value "{args[0]}"')
    _store(ld, ctx, d, v)


def set_bitmask(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
    """Keywords OR-ed into a set; kept in the table's order (nginx's bit order)."""
    assert d.field is not None
    have: list[str] = ctx.values.setdefault(d.field, [])
    ctx.where.setdefault(d.field, (ld.file, ld.line))
    for a in args:
        key = next((k for k in d.values if k.lower() == a.lower()), None)
        if key is None:
            raise ld.error(f'invalid value "{a}"')
        if key in have:
            ld.warn(f'duplicate value "{a}"')
        else:
            have.append(key)
    have.sort(key=list(d.values).index)


def ignore(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
    """Accepted for nginx compatibility; nothing in fastmail reads it."""


@dataclass(slots=True)
class Registry:
    """All directives by name (several modules may share a name, e.g. error_log)."""

    by_name: dict[str, list[Directive]] = field(default_factory=dict)
    ordered: list[Directive] = field(default_factory=list)

    def add(self, d: Directive) -> None:
        same = self.by_name.setdefault(d.name, [])
        if any(o.contexts & d.contexts for o in same):
            raise RuntimeError(f"directive {d.name!r} registered twice for one context")
        same.append(d)
        self.ordered.append(d)
