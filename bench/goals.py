"""The project's performance targets, checked against a bench run's summary.

Owns: the targets of issue 11 (login engine), issue 12 (TLS) and the project's overall ones,
as fastmail/nginx ratios of the medians in the same run (or, for user-space CPU per login, a
bound on fastmail's own figure), and the two goals tables: logins as a matrix (one column per
protocol and concurrency, one row per target), everything else one row per target.
Must not: measure anything, or format anything but these tables (report.py does the rest).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PROTO_ORDER = {"imap": 0, "pop3": 1, "smtp": 2}


@dataclass(frozen=True)
class Goal:
    label: str
    kind: str  # the scenario kind it is checked on (login, relay, idle-auth-tls, ...)
    figure: str
    bound: float
    better: str  # "higher" or "lower"
    mode: str | None = None  # login: keepalive or http10
    protos: tuple[str, ...] | None = None  # login: only these protocols
    absolute: str = ""  # a unit: the bound is on fastmail's own median, not the ratio

    def text(self) -> str:
        sign = "≥" if self.better == "higher" else "≤"
        bound = f"{self.bound:g} {self.absolute}" if self.absolute else f"{_ratio(self.bound)}x"
        return f"{self.label} {sign} {bound}"

    def check(self, row: dict[str, Any]) -> tuple[float, bool] | None:
        """(the measured value, whether it meets the bound), or None when not measured."""
        if self.absolute:
            f = row["targets"].get("fastmail")
            if not f:
                return None
            value = f["median"]
        elif "ratio" in row:
            value = row["ratio"]
        else:
            return None
        # judged as shown (2 decimals): a "1.00x" is never a MISS of "≤ 1.0x"
        shown = float(f"{value:.3g}") if self.absolute else round(value, 2)
        ok = shown >= self.bound if self.better == "higher" else shown <= self.bound
        return value, ok

    def cell(self, row: dict[str, Any] | None) -> str:
        got = self.check(row) if row else None
        if got is None:
            return "—"
        value, ok = got
        shown = f"{value:.3g} {self.absolute}" if self.absolute else f"{value:.2f}x"
        return f"{shown} {'ok' if ok else 'MISS'}"


# what the login modes mean, for the legend under the matrix
MODES_LEGEND = (
    "keepalive: the keep-alive auth_http server, fastmail with auth_http_keepalive (default) "
    "and proxy_pipelining on (one-line IMAP LOGIN with LITERAL+); http10: the auth server "
    "answers HTTP/1.0 and closes, fastmail with auth_http_keepalive 0 and proxy_pipelining off "
    "(nginx's exact bytes to the auth server and the backend). nginx is the same in both."
)

LOGIN_GOALS = (
    Goal(
        "proxy CPU per login, keepalive",
        "login",
        "proxy_us_per_session",
        0.8,
        "lower",
        "keepalive",
    ),
    Goal("proxy CPU per login, http10", "login", "proxy_us_per_session", 1.0, "lower", "http10"),
    Goal(
        "user-space CPU per login (fastmail), keepalive",
        "login",
        "proxy_user_us",
        20,
        "lower",
        "keepalive",
        absolute="µs",
    ),
    Goal(
        "user-space CPU per login (fastmail), http10",
        "login",
        "proxy_user_us",
        20,
        "lower",
        "http10",
        absolute="µs",
    ),
    Goal("sessions/s, keepalive", "login", "sessions_per_s", 1.0, "higher", "keepalive"),
    Goal("sessions/s, http10", "login", "sessions_per_s", 1.0, "higher", "http10"),
    Goal(
        "login p99, keepalive, one-line backend LOGIN (IMAP)",
        "login",
        "p99_ms",
        0.8,
        "lower",
        "keepalive",
        ("imap",),
    ),
    Goal("login p99, keepalive", "login", "p99_ms", 1.0, "lower", "keepalive", ("pop3", "smtp")),
    Goal("login p99, http10", "login", "p99_ms", 1.0, "lower", "http10"),
)

OTHER_GOALS = (
    Goal("relay MB/s (issue 11: no worse than today)", "relay", "mb_per_s", 1.9, "higher"),
    Goal("relay MB/s (project)", "relay", "mb_per_s", 2.0, "higher"),
    Goal("relay CPU per GB", "relay", "cpu_s_per_gb", 0.35, "lower"),
    Goal("RSS per idle logged-in session", "idle-auth", "kib_per_conn", 0.3, "lower"),
    Goal("RSS per idle pre-auth connection", "idle-pre", "kib_per_conn", 1.4, "lower"),
    Goal("RSS per idle TLS logged-in session", "idle-auth-tls", "kib_per_conn", 1.0, "lower"),
    Goal("TLS full handshake CPU", "tls-full", "proxy_us_per_handshake", 1.0, "lower"),
    Goal("TLS resumed handshake CPU", "tls-resume", "proxy_us_per_handshake", 0.9, "lower"),
    Goal("TLS full handshakes/s", "tls-full", "handshakes_per_s", 1.0, "higher"),
    Goal("TLS resumed handshakes/s", "tls-resume", "handshakes_per_s", 1.0, "higher"),
    Goal("TLS full handshake p99", "tls-full", "p99_ms", 1.0, "lower"),
    Goal("TLS resumed handshake p99", "tls-resume", "p99_ms", 1.0, "lower"),
    Goal("TLS relay MB/s", "tls-relay", "mb_per_s", 2.0, "higher"),
    Goal("TLS relay CPU per GB", "tls-relay", "cpu_s_per_gb", 0.5, "lower"),
)


def _ratio(x: float) -> str:
    """0.8 -> 0.8, 1 -> 1.0, 0.35 -> 0.35: ratios as the issues write them."""
    text = f"{x:.2f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def login_columns(summary: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """(protocol, concurrency) of the login scenarios run, in protocol then concurrency order."""
    cols = {
        (r["proto"], r["concurrency"])
        for r in summary
        if r.get("kind") == "login" and r.get("mode") and r.get("proto")
    }
    return sorted(cols, key=lambda c: (PROTO_ORDER.get(c[0], 9), c[0], c[1]))


def _find(summary: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    for r in summary:
        if all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def _verdict(results: list[bool]) -> str:
    if not results:
        return "not measured"
    missed = results.count(False)
    return "ok" if not missed else f"MISS ({missed} of {len(results)})"


def login_matrix(summary: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """One row per login target, one column per protocol and concurrency, and the row's
    verdict (ok when every measured cell is)."""
    cols = login_columns(summary)
    head = ["login goal", *[f"{p.upper()} c{c}" for p, c in cols], "row"]
    body = []
    for g in LOGIN_GOALS:
        cells, results = [], []
        for proto, conc in cols:
            row = None
            if g.protos is None or proto in g.protos:
                row = _find(
                    summary,
                    kind="login",
                    mode=g.mode,
                    proto=proto,
                    concurrency=conc,
                    figure=g.figure,
                )
            got = g.check(row) if row else None
            if got:
                results.append(got[1])
            cells.append(g.cell(row))
        body.append([g.text(), *cells, _verdict(results)])
    return head, body


def other_table(summary: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """One row per goal outside the logins: the scenario, both medians, the verdict."""
    head = ["goal", "scenario", "fastmail", "nginx", "measured"]
    body = []
    for g in OTHER_GOALS:
        row = _find(summary, kind=g.kind, figure=g.figure)
        if row is None:
            body.append([g.text(), "not run", "—", "—", "—"])
            continue
        f, n = row["targets"].get("fastmail"), row["targets"].get("nginx")
        body.append(
            [
                g.text(),
                row["scenario"],
                f"{f['median']:.3g} {row['unit']}" if f else "—",
                f"{n['median']:.3g} {row['unit']}" if n else "—",
                g.cell(row),
            ]
        )
    return head, body
