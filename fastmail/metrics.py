"""Metrics: the catalog of what fastmail counts, its series planned from the config before
the workers fork, and the text a scrape returns (Prometheus' text format 0.0.4).

Owns the families (name, type, help, labels and the values each label may take), the plan
(an index in the shared region for every series of every server{}, access log and of the
process), the region's life in the master (made when a config first asks for metrics, kept
for the master's life so that counters stay monotonic across reloads and respawns), the
slots given to workers, and the text of a scrape. Must not count (the engine adds with
_metrics' C calls) nor serve HTTP (exporter.py).

How to count something new (any module):

1. Add a `Family` to CATALOG below: its scope ("global", "server": labelled `protocol` and
   `server`, "log": labelled `log`) and every value its own labels may take (a bounded set:
   a series exists for each, made before the workers fork).
2. In the worker, when building what counts: `idx = metrics.series(FAMILY, *labels)`, the
   scope's labels first (`*metrics.server_labels(conf)` for a server{}), then the family's
   own. It returns NONE (counted nowhere) when metrics are off.
3. On the hot path, in Cython: `from fastmail._metrics cimport mx_inc, mx_add, mx_dec,
   mx_observe`; `mx_inc(idx)`. From Python (rare events): `_metrics.add(idx, n)`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastmail import __version__, _metrics

if TYPE_CHECKING:
    from fastmail.conf.model import Config, ServerConf

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
NONE = 0  # the index of a series counted nowhere (_metrics.pxd: NONE)
SCRATCH = 64  # indices below are never shown
HIST_SIZE = len(_metrics.BUCKETS_US) + 2  # a histogram's buckets, +Inf, then the sum
CAPACITY = 16384  # series the region holds (8 bytes each per slot; untouched pages cost nothing)
MIN_SLOTS = 64  # processes counting at once: workers, old ones draining after reloads


@dataclass(frozen=True, slots=True)
class Family:
    """One metric. `values` lists every tuple its own `labels` may take."""

    name: str
    kind: str
    help: str
    labels: tuple[str, ...] = ()
    values: tuple[tuple[str, ...], ...] = ((),)
    scope: str = "global"  # "global", "server" (protocol, server) or "log" (log)
    computed: bool = False  # read at scrape time, not counted in the region

    @property
    def label_names(self) -> tuple[str, ...]:
        lead = {"global": (), "server": ("protocol", "server"), "log": ("log",)}[self.scope]
        return lead + self.labels


def _each(*values: str) -> tuple[tuple[str, ...], ...]:
    return tuple((v,) for v in values)


# --- the catalog ---------------------------------------------------------------------------------

CONNECTIONS_ACCEPTED = Family(
    "fastmail_connections_accepted_total", COUNTER, "Client connections accepted.",
    scope="server",
)  # fmt: skip
CONNECTIONS_OPEN = Family(
    "fastmail_connections_open", GAUGE, "Client connections open now.", scope="server"
)
CONNECTIONS_DROPPED = Family(
    "fastmail_connections_dropped_total", COUNTER,
    "Client connections closed at once, without a session, by why.",
    ("reason",), _each("worker_connections"),
)  # fmt: skip
LOGINS = Family(
    "fastmail_logins_total", COUNTER,
    "Login attempts by outcome. failed: credentials (auth_http said no) or backend (the "
    "backend refused the login); tempfailed: auth_temporary (auth_http's 4xx "
    "Auth-Error-Code), auth_http (no usable answer from it) or backend (unreachable, timed "
    "out, closed, TLS failed).",
    ("result", "reason"),
    (("ok", "none"), ("failed", "credentials"), ("failed", "backend"),
     ("tempfailed", "auth_temporary"), ("tempfailed", "auth_http"), ("tempfailed", "backend")),
    scope="server",
)  # fmt: skip
AUTH_SECONDS = Family(
    "fastmail_auth_http_request_seconds", HISTOGRAM,
    "auth_http requests, from the request to its answer (errors and timeouts included).",
    scope="server",
)  # fmt: skip
BACKEND_CONNECT_SECONDS = Family(
    "fastmail_backend_connect_seconds", HISTOGRAM,
    "Backend connects, from connect() to connected.", scope="server",
)  # fmt: skip
BACKEND_LOGIN_SECONDS = Family(
    "fastmail_backend_login_seconds", HISTOGRAM,
    "Backend logins, from connected to logged in (TLS to the backend included).",
    scope="server",
)  # fmt: skip
BACKEND_ERRORS = Family(
    "fastmail_backend_errors_total", COUNTER,
    "Backend failures by kind: connect, timeout, tls, closed (before the login ended), io "
    "(a send or recv error), refused (the backend refused the login).",
    ("kind",), _each("connect", "timeout", "tls", "closed", "io", "refused"), scope="server",
)  # fmt: skip
RELAY_BYTES = Family(
    "fastmail_relay_bytes_total", COUNTER, "Bytes relayed after login, by direction.",
    ("direction",), _each("client_to_backend", "backend_to_client"), scope="server",
)  # fmt: skip
RELAYS_ACTIVE = Family(
    "fastmail_relays_active", GAUGE, "Logged-in sessions relaying now.", scope="server"
)
TLS_HANDSHAKES = Family(
    "fastmail_tls_handshakes_total", COUNTER,
    "TLS handshakes with clients and with backends: full, resumed or failed.",
    ("side", "result"),
    tuple((side, r) for side in ("client", "backend") for r in ("full", "resumed", "failed")),
    scope="server",
)  # fmt: skip
SESSIONS_ENDED = Family(
    "fastmail_sessions_ended_total", COUNTER,
    "Sessions ended, by why: quit (the client ended it before login), client_closed, "
    "backend_closed, timeout, error, auth_error (auth_http unusable), auth_failed (a failed "
    "login without Auth-Wait, which closes as nginx does), backend_error, shutdown (the "
    "worker stopped).",
    ("reason",),
    _each("quit", "client_closed", "backend_closed", "timeout", "error", "auth_error",
          "auth_failed", "backend_error", "shutdown"),
    scope="server",
)  # fmt: skip
LIMITED = Family(
    "fastmail_limited_total", COUNTER,
    "The abuse limits at work (beyond nginx): conn_per_ip (a connection refused by "
    "limit_conn_per_ip), login_delayed and login_refused (login_fail_limit).",
    ("limit",), _each("conn_per_ip", "login_delayed", "login_refused"), scope="server",
)  # fmt: skip
ACCESS_LOG_LINES = Family(
    "fastmail_access_log_lines_total", COUNTER, "Access log lines made, by log.", scope="log"
)
ACCESS_LOG_DROPPED = Family(
    "fastmail_access_log_dropped_lines_total", COUNTER,
    "Access log lines lost: the file did not take them fast enough, or failed.", scope="log",
)  # fmt: skip
PROCESS_RSS = Family(
    "fastmail_process_resident_memory_bytes", GAUGE,
    "Resident memory of the master and of all workers (each worker's own figure, at most "
    "5 s old).", ("role",), _each("worker"),
)  # fmt: skip
PROCESS_FDS = Family(
    "fastmail_process_open_fds", GAUGE,
    "Open file descriptors of the master and of all workers (each worker's own figure, at "
    "most 5 s old).", ("role",), _each("worker"),
)  # fmt: skip
WORKERS = Family(
    "fastmail_worker_processes", GAUGE,
    "Worker processes counting now (old ones draining after a reload included).",
    computed=True,
)  # fmt: skip
START_TIME = Family(
    "fastmail_start_time_seconds", GAUGE,
    "When the counters started (the master's start, or the reload that enabled metrics).",
    computed=True,
)  # fmt: skip
BUILD_INFO = Family(
    "fastmail_build_info", GAUGE, "fastmail's version.", ("version",), ((__version__,),),
    computed=True,
)  # fmt: skip

CATALOG: tuple[Family, ...] = (
    CONNECTIONS_ACCEPTED, CONNECTIONS_OPEN, CONNECTIONS_DROPPED, LOGINS, AUTH_SECONDS,
    BACKEND_CONNECT_SECONDS, BACKEND_LOGIN_SECONDS, BACKEND_ERRORS, RELAY_BYTES,
    RELAYS_ACTIVE, TLS_HANDSHAKES, SESSIONS_ENDED, LIMITED, ACCESS_LOG_LINES, ACCESS_LOG_DROPPED,
    PROCESS_RSS, PROCESS_FDS, WORKERS,
    START_TIME, BUILD_INFO,
)  # fmt: skip

# What a session counts, in the order of fastmail._report.SERIES (the engine's SM_* enum)
SESSION_SERIES: dict[str, tuple[Family, tuple[str, ...]]] = {
    "accepted": (CONNECTIONS_ACCEPTED, ()),
    "open": (CONNECTIONS_OPEN, ()),
    "login_ok": (LOGINS, ("ok", "none")),
    "login_failed_credentials": (LOGINS, ("failed", "credentials")),
    "login_failed_backend": (LOGINS, ("failed", "backend")),
    "login_tempfailed_auth": (LOGINS, ("tempfailed", "auth_temporary")),
    "login_tempfailed_auth_http": (LOGINS, ("tempfailed", "auth_http")),
    "login_tempfailed_backend": (LOGINS, ("tempfailed", "backend")),
    "auth_seconds": (AUTH_SECONDS, ()),
    "connect_seconds": (BACKEND_CONNECT_SECONDS, ()),
    "login_seconds": (BACKEND_LOGIN_SECONDS, ()),
    **{f"backend_{k}": (BACKEND_ERRORS, (k,)) for (k,) in BACKEND_ERRORS.values},
    "bytes_up": (RELAY_BYTES, ("client_to_backend",)),
    "bytes_down": (RELAY_BYTES, ("backend_to_client",)),
    "relays": (RELAYS_ACTIVE, ()),
    **{f"tls_{s}_{r}": (TLS_HANDSHAKES, (s, r)) for s, r in TLS_HANDSHAKES.values},
    **{f"end_{r}": (SESSIONS_ENDED, (r,)) for (r,) in SESSIONS_ENDED.values},
    **{f"limited_{k}": (LIMITED, (k,)) for (k,) in LIMITED.values},
}


# --- the plan ------------------------------------------------------------------------------------


class _State:
    """This master's metrics (inherited by its workers at fork)."""

    def __init__(self) -> None:
        self.region: _metrics.Region | None = None
        self.index: dict[tuple[str, tuple[str, ...]], int] = {}  # append-only: stable indices
        self.next = SCRATCH
        self.on = False  # the current config asks for metrics
        self.shown: list[tuple[Family, tuple[str, ...], int]] = []  # the current plan's series
        self.servers: dict[int, tuple[str, str]] = {}  # id(ServerConf) -> (protocol, server)
        self.slots: dict[int, int] = {}  # the master's: worker pid -> slot
        self.slot = -1  # a worker's own slot
        self.full = False  # a plan or a worker found no room (said once)


_state = _State()


def reset() -> None:
    """Forgets everything (tests; a new master starts fresh anyway)."""
    global _state
    _metrics.unbind()
    _state = _State()


def enabled() -> bool:
    return _state.on


def server_labels(conf: ServerConf) -> tuple[str, str]:
    """The (protocol, server) labels of a server{}'s series."""
    return _state.servers.get(id(conf), (conf.protocol, _first_listen(conf)))


def _first_listen(conf: ServerConf) -> str:
    return conf.listens[0].addr_text if conf.listens else "-"


def _server_names(servers: list[ServerConf]) -> dict[int, tuple[str, str]]:
    """A server{} is named by its first listen address; servers sharing one (SNI) add their
    server_name, then their position."""
    names: dict[int, tuple[str, str]] = {}
    seen: set[str] = set()
    for i, s in enumerate(servers):
        name = _first_listen(s)
        if name in seen:
            name = f"{name} {s.server_name}"
        if name in seen:
            name = f"{name} #{i + 1}"
        seen.add(name)
        names[id(s)] = (s.protocol, name)
    return names


def _allocate(family: Family, values: tuple[str, ...]) -> int:
    st = _state
    key = (family.name, values)
    idx = st.index.get(key)
    if idx is not None:
        return idx
    size = HIST_SIZE if family.kind == HISTOGRAM else 1
    region = st.region
    assert region is not None
    if st.next + size > region.capacity:
        return NONE
    idx = st.next
    st.next += size
    st.index[key] = idx
    if family.kind == GAUGE:
        region.set_gauge(idx)
    return idx


def log_labels(config: Config) -> list[str]:
    """The `log` labels of the access logs a config writes: each target's name (its path or
    syslog text as written)."""
    names: dict[str, None] = {}
    for s in config.mail.servers if config.mail is not None else []:
        for a in s.access_log:
            names.setdefault(a.name)
    return list(names)


def setup(config: Config, slots_hint: int = 0) -> str | None:
    """Plans the config's series (the master, at start and at every reload, before forking
    workers). Returns an alert text when the region is full, else None."""
    st = _state
    st.on = config.main.metrics_listen is not None
    if not st.on:
        st.shown = []
        return None
    if st.region is None:
        nslots = max(MIN_SLOTS, 4 * max(slots_hint, config.main.worker_processes))
        st.region = _metrics.Region(CAPACITY, nslots)
        st.region.master_pid = os.getpid()
    servers = config.mail.servers if config.mail is not None else []
    st.servers = _server_names(servers)
    shown: list[tuple[Family, tuple[str, ...], int]] = []
    missing = 0
    for family in CATALOG:
        if family.computed:
            continue
        if family.scope == "server":
            leads: Iterable[tuple[str, ...]] = [st.servers[id(s)] for s in servers]
        elif family.scope == "log":
            leads = [(name,) for name in log_labels(config)]
        else:
            leads = [()]
        for lead in leads:
            for combo in family.values:
                values = lead + combo
                idx = _allocate(family, values)
                if idx == NONE:
                    missing += 1
                    continue
                shown.append((family, values, idx))
    st.shown = shown
    assert st.region is not None
    st.region.used = st.next
    if missing:
        return f"metrics: {missing} series do not fit in the {CAPACITY} planned, not counted"
    return None


def series(family: Family, *values: str) -> int:
    """The index of a planned series (NONE when metrics are off). Raises KeyError for one
    that no plan made: a family missing from CATALOG, or a value outside its list."""
    if not _state.on:
        return NONE
    idx = _state.index.get((family.name, values))
    if idx is None:
        raise KeyError(f"metrics: no series {family.name}{values}")
    return idx


def session_series(conf: ServerConf) -> list[int]:
    """A server{}'s indices in the order of the engine's SM_* enum (_report.SERIES)."""
    from fastmail._report import SERIES  # noqa: PLC0415 - the engine imports this module

    lead = server_labels(conf)
    return [series(SESSION_SERIES[name][0], *lead, *SESSION_SERIES[name][1]) for name in SERIES]


# --- slots: one per counting process -------------------------------------------------------------


def reserve() -> int:
    """A slot for a worker about to fork (the master), -1 when metrics are off or none is
    free (that worker counts nowhere)."""
    st = _state
    if not st.on or st.region is None:
        return -1
    return st.region.reserve()


def forked(slot: int, pid: int) -> None:
    """The master, after fork: `pid` counts into `slot`."""
    if slot >= 0 and _state.region is not None:
        _state.region.set_pid(slot, pid)
        _state.slots[pid] = slot


def bind(slot: int) -> None:
    """The worker, after fork: count into `slot` (or nowhere, -1)."""
    st = _state
    st.slot = slot
    st.slots = {}
    if slot >= 0 and st.region is not None:
        st.region.bind(slot)
    else:
        _metrics.unbind()


def exited(pid: int) -> None:
    """The master reaped a worker: its counters join the retired totals."""
    st = _state
    slot = st.slots.pop(pid, -1)
    if slot >= 0 and st.region is not None:
        st.region.retire(slot)


def refresh_self(rss: int, fds: int) -> None:
    """This process's own figures: the master's in the region's header, a worker's in its
    slot (another worker may not read its /proc once it changed user)."""
    st = _state
    if st.region is None:
        return
    if st.slot < 0:
        if os.getpid() == st.region.master_pid:
            st.region.master_fds = fds
        return
    for family, value in ((PROCESS_RSS, rss), (PROCESS_FDS, fds)):
        idx = st.index.get((family.name, ("worker",)))
        if idx is not None:
            own = st.region.value(st.slot, idx)
            _metrics.add(idx, value - own)


# --- the text of a scrape ------------------------------------------------------------------------


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _seconds(us: int) -> str:
    return repr(us / 1e6)


def render(computed: dict[str, list[tuple[tuple[str, ...], float]]] | None = None) -> str:
    """Every series of the current plan summed over all processes, in the text format;
    `computed` adds samples by family name (read at scrape time, not counted)."""
    st = _state
    if st.region is None:
        return ""
    sums = st.region.sums()
    by_family: dict[str, list[tuple[tuple[str, ...], int]]] = {}
    for family, values, idx in st.shown:
        by_family.setdefault(family.name, []).append((values, idx))
    extra = computed or {}
    out: list[str] = []
    for family in CATALOG:
        rows = by_family.get(family.name, [])
        more = extra.get(family.name, [])
        if not rows and not more:
            continue
        out.append(f"# HELP {family.name} {family.help}")
        out.append(f"# TYPE {family.name} {family.kind}")
        names = family.label_names
        for values, idx in rows:
            if family.kind == HISTOGRAM:
                total = 0
                for b, bound in enumerate((*_metrics.BUCKETS_US, None)):
                    total += sums[idx + b]
                    le = "+Inf" if bound is None else _seconds(bound)
                    labels = _labels(names, values, 'le="' + le + '"')
                    out.append(f"{family.name}_bucket{labels} {total}")
                labels = _labels(names, values)
                out.append(f"{family.name}_sum{labels} {_seconds(sums[idx + HIST_SIZE - 1])}")
                out.append(f"{family.name}_count{labels} {total}")
                continue
            value = sums[idx]
            if family.kind == GAUGE and value >= 1 << 63:
                value -= 1 << 64
            out.append(f"{family.name}{_labels(names, values)} {value}")
        for values, number in more:
            text = str(int(number)) if number == int(number) else repr(float(number))
            out.append(f"{family.name}{_labels(names, values)} {text}")
    return "\n".join(out) + "\n"


def scrape() -> str:
    """What the metrics listener answers: the region's sums and the figures read now."""
    st = _state
    if st.region is None:
        return ""
    region = st.region
    master = int(region.master_pid)
    pids = region.pids()
    computed: dict[str, list[tuple[tuple[str, ...], float]]] = {
        WORKERS.name: [((), len(pids))],
        START_TIME.name: [((), float(region.created))],
        BUILD_INFO.name: [((__version__,), 1)],
    }
    if master not in pids:  # master_process off: the one process is a worker
        computed[PROCESS_RSS.name] = [(("master",), rss_of(master))]
        computed[PROCESS_FDS.name] = [(("master",), region.master_fds)]
    return render(computed)


def rss_of(pid: int) -> int:
    """Resident bytes of a process (/proc/PID/statm is readable by anyone), 0 if gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def fds_of_self() -> int:
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # listdir's own fd
    except OSError:
        return 0
