"""The access log (fastmail; nginx's mail modules have none): `log_format` and `access_log`
with the syntax of nginx's stream log module.

Owns parsing formats into literal texts and field names (nginx's `$name` and `${name}`,
escape=default|json), the built-in `combined` and `json` formats, and access_log's targets
(a file under the prefix or a syslog server), buffer= and flush=, and `off`. Writing is the
engine's (fastmail/_accesslog.pyx); the field names are its own list.
"""

from __future__ import annotations

from typing import Any

from fastmail._accesslog import FIELDS
from fastmail.conf.model import AccessLog, LogFormat, LogTarget
from fastmail.conf.parser import Ctx, Loader
from fastmail.conf.table import MAIL, ONE_MORE, SERVER, TWO_MORE, Directive, parse_size, parse_time

COMBINED = (
    '$client [$time_local] $protocol $server "$login" $auth_method $auth_result $auth_reason '
    "$upstream $bytes_in $bytes_out $duration $tls_protocol $tls_cipher $end_reason $session_id"
)
JSON = (
    '{"time":"$time_iso8601","session_id":"$session_id","client":"$client",'
    '"server":"$server","protocol":"$protocol","server_name":"$server_name",'
    '"login":"$login","auth_method":"$auth_method","auth_result":"$auth_result",'
    '"auth_reason":"$auth_reason","upstream":"$upstream","bytes_in":$bytes_in,'
    '"bytes_out":$bytes_out,"duration":$duration,"tls_protocol":"$tls_protocol",'
    '"tls_cipher":"$tls_cipher","end_reason":"$end_reason"}'
)
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")


def compile_format(ld: Loader | None, name: str, json: bool, texts: list[str]) -> LogFormat:
    """nginx's ngx_stream_log_compile_format: texts joined, `$name`/`${name}` fields."""

    def fail(message: str) -> Exception:
        return ld.error(message) if ld is not None else ValueError(message)

    parts: list[tuple[str, str | None]] = []
    for text in texts:
        i, n = 0, len(text)
        while i < n:
            if text[i] != "$":
                j = text.find("$", i)
                j = n if j < 0 else j
                if parts and parts[-1][1] is None:
                    parts[-1] = (parts[-1][0] + text[i:j], None)
                else:
                    parts.append((text[i:j], None))
                i = j
                continue
            start = i
            i += 1
            if i == n:
                raise fail(f'invalid parameter "{text[start:]}"')
            bracket = text[i] == "{"
            if bracket:
                i += 1
                if i == n:
                    raise fail(f'invalid parameter "{text[start:]}"')
            j = i
            while j < n and text[j] in _NAME_CHARS:
                j += 1
            var = text[i:j]
            if bracket:
                if j == n or text[j] != "}":
                    raise fail(f'the closing bracket in "{text[i:]}" variable is missing')
                j += 1
            if not var:
                raise fail(f'invalid parameter "{text[start:]}"')
            if var not in FIELDS:
                raise fail(f'unknown "{var}" variable')
            parts.append(("", var))
            i = j
    return LogFormat(name=name, json=json, parts=parts)


BUILTIN = {
    "combined": compile_format(None, "combined", False, [COMBINED]),
    "json": compile_format(None, "json", True, [JSON]),
}


def log_format(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
    formats: dict[str, LogFormat] = ld.state.setdefault("log_formats", dict(BUILTIN))
    name = args[0]
    if name in formats:
        raise ld.error(f'duplicate "log_format" name "{name}"')
    rest = args[1:]
    json = False
    if rest and rest[0].startswith("escape="):
        mode = rest[0][7:]
        if mode == "json":
            json = True
        elif mode == "none":
            # beyond nginx's own choice: a client's CR or LF must never split a line
            raise ld.error('log format escaping "none" is not supported: client bytes are '
                           "always escaped")  # fmt: skip
        elif mode != "default":
            raise ld.error(f'unknown log format escaping "{mode}"')
        rest = rest[1:]
    formats[name] = compile_format(ld, name, json, rest)


def access_log(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
    logs: list[AccessLog] = ctx.values.setdefault("access_log", [])
    ctx.where.setdefault("access_log", (ld.file, ld.line))
    target = args[0]
    if target == "off":
        if len(args) > 1:
            raise ld.error(f'invalid parameter "{args[1]}"')
        ctx.extra["access_log_off"] = True
        return
    syslog: LogTarget | None = None
    path: str | None = None
    if target.startswith("syslog:"):
        from fastmail.conf.main import parse_syslog  # noqa: PLC0415 (main imports mail)

        syslog = parse_syslog(ld, target[7:])
    else:
        if "$" in target:
            raise ld.error("variables in access_log paths are not supported")
        path = ld.prefix_path(target)
    formats: dict[str, LogFormat] = ld.state.setdefault("log_formats", dict(BUILTIN))
    name = args[1] if len(args) > 1 else "combined"
    fmt = next((f for n, f in formats.items() if n.lower() == name.lower()), None)
    if fmt is None:
        raise ld.error(f'unknown log format "{name}"')
    size = flush = 0
    for a in args[2:]:
        if a.startswith("buffer="):
            n = parse_size(a[7:])
            if not n:
                raise ld.error(f'invalid buffer size "{a[7:]}"')
            size = n
        elif a.startswith("flush="):
            ms = parse_time(a[6:])
            if not ms:
                raise ld.error(f'invalid flush time "{a[6:]}"')
            flush = ms
        elif a == "gzip" or a.startswith("gzip="):
            raise ld.error("fastmail does not compress access logs (gzip)")
        elif a.startswith("if="):
            raise ld.error('the "if" parameter of access_log is not supported')
        else:
            raise ld.error(f'invalid parameter "{a}"')
    if flush and not size:
        raise ld.error(f'no buffer is defined for access_log "{target}"')
    if size and syslog is not None:
        raise ld.error("logs to syslog cannot be buffered")
    if size:
        seen: dict[str, tuple[int, int]] = ld.state.setdefault("access_log_buffers", {})
        if seen.setdefault(target, (size, flush)) != (size, flush):
            raise ld.error(f'access_log "{target}" already defined with conflicting parameters')
    logs.append(AccessLog(target, path, syslog, fmt, size, flush))


def finalize(ld: Loader, mctx: Ctx, sctx: Ctx, out: dict[str, Any]) -> None:
    """`access_log off` in a context wins over the logs named there (nginx); a server{}
    with no access_log of its own takes mail{}'s."""
    if "access_log" in sctx.values or sctx.extra.get("access_log_off"):
        own = sctx
    else:
        own = mctx
    out["access_log"] = [] if own.extra.get("access_log_off") else list(out["access_log"])


DIRECTIVES: tuple[Directive, ...] = (
    Directive(
        "log_format",
        MAIL,
        TWO_MORE,
        log_format,
        syntax="name [escape=default|json] string ...",
        merge=False,
        ext=True,
        module="accesslog",
        doc="A format for access_log: texts with fields, as nginx's `log_format`: "
        "`$time_local` `$time_iso8601` `$msec` `$remote_addr` `$remote_port` `$client` "
        "(address:port after PROXY/realip) `$server_addr` `$server_port` `$server` (where "
        "the client connected) `$protocol` `$server_name` `$login` (as the client sent it) "
        "`$auth_method` `$auth_result` (ok, failed, tempfailed) `$auth_reason` (none, "
        "credentials, backend, auth_temporary, auth_http) `$upstream` `$bytes_in` "
        "`$bytes_out` (client side, TLS plaintext) `$upstream_bytes_in` `$upstream_bytes_out` "
        "`$duration` (s.ms) `$tls_protocol` `$tls_cipher` `$end_reason` (quit, client_closed, "
        "backend_closed, timeout, error, auth_error, auth_failed, backend_error, shutdown) "
        "`$session_id` (pid-connection) `$connection` `$pid`. Values are escaped as nginx "
        'does (\\xHH for `"`, `\\`, control and non-ASCII bytes; with escape=json, as JSON, '
        "invalid UTF-8 bytes as \\u00HH); a missing value is `-` (empty in JSON). Built in: "
        "`combined` (one readable line) and `json` (one JSON object per line).",
    ),
    Directive(
        "access_log",
        MAIL | SERVER,
        ONE_MORE,
        access_log,
        "access_log",
        default=[],
        default_doc="off",
        syntax="path [format [buffer=size] [flush=time]] | syslog:server=address[,...] "
        "[format] | off",
        ext=True,
        module="accesslog",
        doc="One line per session when it ends (format `combined` unless named). Written "
        "without blocking the worker: each line at once, or with buffer= when the buffer "
        "fills and every flush=; a pipe or disk that does not keep up loses lines, counted "
        "(fastmail_access_log_dropped_lines_total) with one [alert] per outage. Reopened on "
        "USR1. Passwords and tokens never appear.",
    ),
)
