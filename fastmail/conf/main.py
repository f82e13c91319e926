"""Main-context and events{} directives a mail-only config uses (ngx_core_module, ngx_errlog,
ngx_events, ngx_event_core, ngx_conf's include is in parser.py).

Owns MainConf/EventsConf building, the error_log parser (shared with mail{} and server{}) and
the checks nginx makes after the parse (no events{}). Process control is not here: cli.py and
process.py read the resulting MainConf.
"""

from __future__ import annotations

import os
import socket

from fastmail.conf.errors import ConfigError
from fastmail.conf.model import LEVELS, EventsConf, Listen, LogTarget, MainConf
from fastmail.conf.parser import Ctx, Loader
from fastmail.conf.table import (
    BLOCK,
    EVENTS,
    FLAG,
    MAIL,
    MAIN,
    NOARGS,
    ONE_MORE,
    SERVER,
    TAKE1,
    TAKE12,
    Directive,
    ignore,
    parse_number,
    parse_offset,
    set_flag,
    set_msec,
    set_num,
)

# compiled-in defaults of a stock build, under the fastmail prefix
DEFAULT_PREFIX = "/usr/local/fastmail/"
DEFAULT_CONF = "conf/fastmail.conf"
DEFAULT_PID = "logs/fastmail.pid"
DEFAULT_ERROR_LOG = "logs/error.log"

DEBUG_LEVELS = (
    "debug_core",
    "debug_alloc",
    "debug_mutex",
    "debug_event",
    "debug_http",
    "debug_mail",
    "debug_stream",
)
SYSLOG_FACILITIES = (
    "kern user mail daemon auth intern lpr news uucp clock authpriv ftp ntp audit alert cron "
    "local0 local1 local2 local3 local4 local5 local6 local7"
).split()
SYSLOG_SEVERITIES = ("emerg", "alert", "crit", "error", "warn", "notice", "info", "debug")


def _dup(ld: Loader, ctx: Ctx, d: Directive, key: str) -> None:
    if key in ctx.values:
        raise ld.error(f'"{d.name}" directive is duplicate')


def worker_processes(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
    _dup(ld, ctx, d, "worker_processes")
    if args[0] == "auto":
        n: int | None = os.cpu_count() or 1
    else:
        n = parse_number(args[0])
        if n is None:
            raise ld.error(f'"{d.name}" directive invalid value')
    ctx.values["worker_processes"] = n


def _syslog(ld: Loader, t: LogTarget, spec: str) -> None:
    from fastmail.conf.mail import resolve_url  # noqa: PLC0415 (mail.py imports this module)

    t.kind = "syslog"
    for part in spec.split(","):
        if part.startswith("server="):
            if t.syslog_server is not None:
                raise ld.error('duplicate syslog "server"')
            addr = part[7:]
            try:
                u = resolve_url(addr, default_port=514)
            except ValueError as e:
                raise ld.error(f'{e} in syslog server "{addr}"') from None
            t.syslog_server = (u[0][0], u[0][1], u[0][2])
        elif part.startswith("facility="):
            if part[9:] not in SYSLOG_FACILITIES:
                raise ld.error(f'unknown syslog facility "{part[9:]}"')
            t.syslog_facility = part[9:]
        elif part.startswith("severity="):
            if part[9:] not in SYSLOG_SEVERITIES:
                raise ld.error(f'unknown syslog severity "{part[9:]}"')
            t.syslog_severity = part[9:]
        elif part.startswith("tag="):
            tag = part[4:]
            if len(tag) > 32:
                raise ld.error("syslog tag length exceeds 32")
            if not all(c.isascii() and (c.isalnum() or c == "_") for c in tag):
                raise ld.error('syslog "tag" only allows alphanumeric characters and underscore')
            t.syslog_tag = tag
        elif part == "nohostname":
            t.syslog_nohostname = True
        else:
            raise ld.error(f'unknown syslog parameter "{part}"')
    if t.syslog_server is None:
        raise ld.error("no syslog server specified")


def parse_syslog(ld: Loader, spec: str) -> LogTarget:
    """`syslog:` parameters (after the prefix) as an error_log or access_log target."""
    t = LogTarget(kind="syslog")
    _syslog(ld, t, spec)
    return t


def parse_error_log(ld: Loader, args: list[str]) -> LogTarget:
    target = args[0]
    t = LogTarget(kind="file")
    if target == "stderr":
        t.kind = "stderr"
    elif target.startswith("memory:"):
        raise ld.error("fastmail was built without debug support")
    elif target.startswith("syslog:"):
        _syslog(ld, t, target[7:])
    else:
        t.path = ld.prefix_path(target)
    if len(args) == 1:
        return t
    level = 0
    debug: list[str] = []
    for a in args[1:]:
        if a in LEVELS[1:]:
            if level or debug:
                raise ld.error(f'duplicate log level "{a}"')
            level = LEVELS.index(a)
        elif a in DEBUG_LEVELS:
            if level:
                raise ld.error(f'invalid log level "{a}"')
            debug.append(a)
        else:
            raise ld.error(f'invalid log level "{a}"')
    t.level = level or 8
    t.debug = tuple(debug)
    return t


def error_log(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
    ctx.values.setdefault("error_log", []).append(parse_error_log(ld, args))
    ctx.where.setdefault("error_log", (ld.file, ld.line))


def pid(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
    _dup(ld, ctx, d, "pid")
    ctx.values["pid"] = None if args[0] == "off" else ld.prefix_path(args[0])


def user(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
    _dup(ld, ctx, d, "user")
    if os.geteuid() != 0:
        ld.warn(
            'the "user" directive makes sense only if the master process runs with '
            "super-user privileges, ignored"
        )
        ctx.values["user"] = None
        return
    import grp
    import pwd

    name = args[0]
    group = args[1] if len(args) > 1 else name
    try:
        pwd.getpwnam(name)
    except KeyError:
        raise ld.error(f'getpwnam("{name}") failed') from None
    try:
        grp.getgrnam(group)
    except KeyError:
        raise ld.error(f'getgrnam("{group}") failed') from None
    ctx.values["user"] = (name, group)


def load_module(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
    # fastmail has the mail modules built in; the line is accepted so Debian configs run as-is
    if ld.state.get("modules_used"):
        raise ld.error('"load_module" directive is specified too late')
    name = os.path.basename(args[0])
    mods = ctx.values.setdefault("load_module", [])
    if name in (os.path.basename(m) for m in mods):
        raise ld.error(f'module "{name.removesuffix(".so")}" is already loaded')
    mods.append(ld.prefix_path(args[0]))


def env(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
    ctx.values.setdefault("env", []).append(args[0])


def set_int_field(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
    _dup(ld, ctx, d, d.field or d.name)
    v = args[0]
    n = parse_number(v[1:] if v.startswith("-") else v)
    if n is None:
        raise ld.error(f'"{d.name}" directive invalid number')
    ctx.values[d.field or d.name] = -n if v.startswith("-") else n


def metrics_listen(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
    """`metrics_listen address[:port] | unix:path | off`: the Prometheus listener (fastmail)."""
    from fastmail.conf.mail import addr_text, parse_url  # noqa: PLC0415 (mail.py imports us)

    _dup(ld, ctx, d, "metrics_listen")
    text = args[0]
    if text == "off":
        ctx.values["metrics_listen"] = None
        return
    try:
        u = parse_url(text, listen=True)
    except ValueError as e:
        raise ld.error(f'{e} in "{text}" of the "metrics_listen" directive') from None
    if u.last_port != u.port:
        raise ld.error(f'invalid port range in "{text}" of the "metrics_listen" directive')
    if not u.port and u.path is None:
        raise ld.error(f'no port in "{text}" of the "metrics_listen" directive')
    family, addr = u.addrs[0]
    unix = family == socket.AF_UNIX
    ctx.values["metrics_listen"] = Listen(
        family=family,
        host="" if unix else addr,
        port=0 if unix else u.port,
        path=addr if unix else None,
        addr_text=addr_text(family, addr, u.port),
        wildcard=u.wildcard,
        file=ld.file,
        line=ld.line,
    )


def set_prefix_path(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
    _dup(ld, ctx, d, d.field or d.name)
    ctx.values[d.field or d.name] = ld.prefix_path(args[0])


def worker_cpu_affinity(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
    for a in args:
        if a == "auto":
            continue
        for c in a:
            if c not in "01":
                raise ld.error(f'invalid character "{c}" in "worker_cpu_affinity"')


def worker_rlimit_core(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
    _dup(ld, ctx, d, "worker_rlimit_core")
    if parse_offset(args[0]) is None:
        raise ld.error(f'"{d.name}" directive invalid value')
    ctx.values["worker_rlimit_core"] = parse_offset(args[0])


def debug_points(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
    _dup(ld, ctx, d, "debug_points")
    if args[0] not in ("stop", "abort"):
        raise ld.error(f'invalid value "{args[0]}"')
    ctx.values["debug_points"] = args[0]


# -- events{}


def events_block(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
    if "events" in ld.state:
        raise ld.error('"events" directive is duplicate')
    ld.state["modules_used"] = True
    ev = Ctx(kind=EVENTS, file=ld.file, line=ld.line)
    ld.state["events"] = ev
    ld.parse_block(ev)


def worker_connections(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
    _dup(ld, ctx, d, "worker_connections")
    n = parse_number(args[0])
    if n is None:
        raise ld.error(f'invalid number "{args[0]}"')
    ctx.values["worker_connections"] = n


def use(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
    _dup(ld, ctx, d, "use")
    if args[0] != "epoll":
        raise ld.error(f'invalid event type "{args[0]}"')
    ctx.values["use"] = args[0]


def _d(name: str, ctx: int, args: int, h, field: str | None = None, **kw) -> Directive:  # type: ignore[no-untyped-def]
    return Directive(name, ctx, args, h, field=field, module=kw.pop("module", "core"), **kw)


DIRECTIVES: tuple[Directive, ...] = (
    _d(
        "worker_processes",
        MAIN,
        TAKE1,
        worker_processes,
        "worker_processes",
        default=1,
        default_doc="1",
        syntax="number | auto",
        doc="Number of worker processes; `auto` uses the number of CPUs.",
    ),
    _d(
        "error_log",
        MAIN | MAIL | SERVER,
        ONE_MORE,
        error_log,
        "error_log",
        default_doc="logs/error.log error",
        syntax="file | stderr | syslog:server=address[,...] [level]",
        doc="Where errors go and from which level (debug info notice warn error crit alert emerg, "
        "or nginx's debug_core ... debug_stream masks: debug_mail takes the mail debug lines, "
        "the others none); in mail{} and server{} it applies to that server's sessions. "
        "Debug lines never show a password (fastmail).",
        module="errlog",
    ),
    _d(
        "pid",
        MAIN,
        TAKE1,
        pid,
        "pid",
        default_doc="logs/fastmail.pid",
        syntax="file | off",
        doc="File holding the master process id (relative to the prefix); `off` writes none (freenginx).",
    ),
    _d(
        "daemon",
        MAIN,
        FLAG,
        set_flag,
        "daemon",
        default=True,
        default_doc="on",
        syntax="on | off",
        doc="Detach from the terminal and run in the background.",
    ),
    _d(
        "master_process",
        MAIN,
        FLAG,
        set_flag,
        "master_process",
        default=True,
        default_doc="on",
        syntax="on | off",
        doc="Run a master process with workers; `off` serves from one process.",
    ),
    _d(
        "user",
        MAIN,
        TAKE12,
        user,
        "user",
        default_doc="nobody nogroup",
        syntax="user [group]",
        doc="User and group the workers run as when started as root.",
    ),
    _d(
        "worker_rlimit_nofile",
        MAIN,
        TAKE1,
        set_num,
        "worker_rlimit_nofile",
        syntax="number",
        doc="RLIMIT_NOFILE for worker processes.",
    ),
    _d(
        "worker_shutdown_timeout",
        MAIN,
        TAKE1,
        set_msec,
        "worker_shutdown_timeout",
        syntax="time",
        doc="Limit for a graceful shutdown; open sessions are closed after it.",
    ),
    _d(
        "load_module",
        MAIN,
        TAKE1,
        load_module,
        "load_module",
        syntax="file",
        doc="Accepted and ignored: the mail modules are built into fastmail "
        "(so Debian's `load_module .../ngx_mail_module.so` lines work).",
    ),
    _d(
        "env",
        MAIN,
        TAKE1,
        env,
        "env",
        syntax="variable[=value]",
        doc="Environment variable kept for (or set in) the workers.",
    ),
    _d(
        "working_directory",
        MAIN,
        TAKE1,
        set_prefix_path,
        "working_directory",
        syntax="directory",
        doc="Working directory of the workers.",
    ),
    _d(
        "worker_priority",
        MAIN,
        TAKE1,
        set_int_field,
        "worker_priority",
        default=0,
        default_doc="0",
        syntax="number",
        doc="Scheduling priority (nice value) of the workers.",
    ),
    _d(
        "lock_file",
        MAIN,
        TAKE1,
        set_prefix_path,
        "lock_file",
        syntax="file",
        doc="Accepted for compatibility; fastmail needs no accept lock file.",
    ),
    _d(
        "worker_cpu_affinity",
        MAIN,
        ONE_MORE,
        worker_cpu_affinity,
        syntax="cpumask ... | auto",
        doc="Accepted for compatibility (CPU binding of workers); not applied.",
    ),
    _d(
        "worker_rlimit_core",
        MAIN,
        TAKE1,
        worker_rlimit_core,
        syntax="size",
        doc="RLIMIT_CORE for worker processes.",
    ),
    _d(
        "debug_points",
        MAIN,
        TAKE1,
        debug_points,
        syntax="abort | stop",
        doc="Accepted for compatibility; no effect.",
    ),
    _d(
        "pcre_jit",
        MAIN,
        FLAG,
        set_flag,
        "pcre_jit",
        default=False,
        default_doc="off",
        syntax="on | off",
        doc="Accepted for compatibility (regex JIT of nginx's http part); no effect.",
        module="regex",
    ),
    _d(
        "timer_resolution",
        MAIN,
        TAKE1,
        set_msec,
        "timer_resolution",
        syntax="interval",
        doc="Accepted for compatibility; no effect.",
    ),
    _d(
        "metrics_listen",
        MAIN,
        TAKE1,
        metrics_listen,
        "metrics_listen",
        default_doc="off",
        syntax="address[:port] | unix:path | off",
        ext=True,
        doc="Serves Prometheus metrics (the text format, `GET /metrics`) on this address, "
        "bound by the master and answered by any worker with the sums of all processes: "
        "connections, logins by outcome, auth_http and backend latencies, backend errors, "
        "bytes relayed, TLS handshakes, sessions by how they ended, memory and fds "
        "(docs/operations.md lists them). Anyone who reaches it reads them: bind it to "
        "loopback or a management network.",
    ),
    _d(
        "events",
        MAIN,
        BLOCK | NOARGS,
        events_block,
        syntax="{ ... }",
        merge=False,
        doc="Connection processing settings; required, as in nginx.",
        module="events",
    ),
    _d(
        "worker_connections",
        EVENTS,
        TAKE1,
        worker_connections,
        "worker_connections",
        default=512,
        default_doc="512",
        syntax="number",
        module="events",
        doc="Most simultaneous connections per worker (client, backend and auth_http sockets count).",
    ),
    _d(
        "use",
        EVENTS,
        TAKE1,
        use,
        "use",
        syntax="epoll",
        module="events",
        doc="Connection processing method; only `epoll` exists on Linux.",
    ),
    _d(
        "multi_accept",
        EVENTS,
        FLAG,
        set_flag,
        "multi_accept",
        default=False,
        default_doc="off",
        syntax="on | off",
        module="events",
        doc="Accept all pending connections at once.",
    ),
    _d(
        "accept_mutex",
        EVENTS,
        FLAG,
        set_flag,
        "accept_mutex",
        default=False,
        default_doc="off",
        syntax="on | off",
        module="events",
        doc="Take turns accepting between workers.",
    ),
    _d(
        "accept_mutex_delay",
        EVENTS,
        TAKE1,
        set_msec,
        "accept_mutex_delay",
        default=500,
        default_doc="500ms",
        syntax="time",
        module="events",
        doc="How long a worker waits before trying to accept again with accept_mutex.",
    ),
    _d(
        "debug_connection",
        EVENTS,
        TAKE1,
        ignore,
        syntax="address | CIDR",
        module="events",
        doc="Accepted for compatibility; debug logging per client is not implemented.",
    ),
)


def build_main(ld: Loader, ctx: Ctx) -> MainConf:
    v = ctx.values
    m = MainConf()
    m.worker_processes = v.get("worker_processes", 1)
    m.error_log = list(v.get("error_log", []))
    if not any(t.kind in ("file", "stderr") for t in m.error_log):
        m.error_log.append(LogTarget(kind="file", path=ld.prefix_path(DEFAULT_ERROR_LOG)))
    m.pid = v["pid"] if "pid" in v else ld.prefix_path(DEFAULT_PID)
    m.daemon = v.get("daemon", True)
    m.master_process = v.get("master_process", True)
    m.user = v.get("user")
    m.worker_rlimit_nofile = v.get("worker_rlimit_nofile")
    m.worker_shutdown_timeout = v.get("worker_shutdown_timeout")
    m.env = v.get("env", [])
    m.load_module = v.get("load_module", [])
    m.working_directory = v.get("working_directory")
    m.worker_priority = v.get("worker_priority", 0)
    m.lock_file = v.get("lock_file")
    m.timer_resolution = v.get("timer_resolution", 0)
    m.metrics_listen = v.get("metrics_listen")
    return m


def build_events(ld: Loader) -> EventsConf:
    ev: Ctx | None = ld.state.get("events")
    if ev is None:
        raise ConfigError('no "events" section in configuration')
    v = ev.values
    return EventsConf(
        worker_connections=v.get("worker_connections", 512),
        use=v.get("use"),
        multi_accept=v.get("multi_accept", False),
        accept_mutex=v.get("accept_mutex", False),
        accept_mutex_delay=v.get("accept_mutex_delay", 500),
    )
