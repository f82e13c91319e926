"""What a person sees of a bench run: progress, the tables, and the files under bench/results/.

Owns: the progress display (rich when installed, plain lines otherwise), turning raw runs into
medians, spread and fastmail/nginx ratios, the tables (goals from goals.py, logins, the other
scenarios, syscalls per login, fastmail's profile), and writing results.json, report.md and
PNG plots (matplotlib when installed). Must not start processes or measure anything itself
(targets.py, probes.py and __main__.py do).
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import goals
from bench.targets import OBSERVED


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    unit: str
    better: str  # "higher" or "lower"
    plot: bool = True  # drawn in the kind's PNG


HANDSHAKE = [
    Figure("handshakes_per_s", "TLS handshakes/s", "1/s", "higher"),
    Figure("proxy_us_per_handshake", "proxy CPU per handshake", "µs", "lower"),
    Figure("p50_ms", "latency p50", "ms", "lower"),
    Figure("p99_ms", "latency p99", "ms", "lower"),
]
IDLE_BASE = Figure("base_rss_mib", "RSS before connections", "MiB", "lower")

# What each kind of scenario reports; the targets they are held to are in goals.py.
FIGURES = {
    "login": [
        Figure("sessions_per_s", "sessions/s", "1/s", "higher"),
        Figure("proxy_us_per_session", "proxy CPU per login", "µs", "lower"),
        Figure("proxy_user_us", "user-space CPU per login", "µs", "lower", plot=False),
        Figure("proxy_sys_us", "kernel CPU per login", "µs", "lower", plot=False),
        Figure("p50_ms", "latency p50", "ms", "lower", plot=False),
        Figure("p99_ms", "latency p99", "ms", "lower"),
        Figure("syscalls_per_login", "syscalls per login", "", "lower", plot=False),
    ],
    "reconnect": [
        Figure("sessions_per_s", "sessions/s", "1/s", "higher"),
        Figure("proxy_us_per_session", "proxy CPU per login", "µs", "lower"),
        Figure("p99_ms", "latency p99", "ms", "lower"),
        Figure("auth_per_1000", "auth_http requests", "per 1000 logins", "lower", plot=False),
        Figure("hit_pct", "auth_http cache hit rate", "%", "higher", plot=False),
    ],
    "relay": [
        Figure("mb_per_s", "relay both ways", "MB/s", "higher"),
        Figure("cpu_s_per_gb", "proxy CPU per GB", "CPU-s/GB", "lower"),
    ],
    "idle-pre": [
        Figure("kib_per_conn", "RSS per idle pre-auth connection", "KiB", "lower"),
        IDLE_BASE,
    ],
    "idle-auth": [
        Figure("kib_per_conn", "RSS per idle logged-in session", "KiB", "lower"),
        IDLE_BASE,
    ],
    "idle-auth-tls": [
        Figure("kib_per_conn", "RSS per idle TLS logged-in session", "KiB", "lower"),
        IDLE_BASE,
    ],
    "tls-full": HANDSHAKE,
    "tls-resume": HANDSHAKE,
    "tls-relay": [
        Figure("mb_per_s", "TLS relay both ways", "MB/s", "higher"),
        Figure("cpu_s_per_gb", "proxy CPU per GB", "CPU-s/GB", "lower"),
    ],
}
# PNG file per kind (both handshake kinds in one)
PLOT_FILE = {
    "tls-full": "tls-handshake",
    "tls-resume": "tls-handshake",
    "idle-auth-tls": "idle-auth",
    "reconnect": "login",
}


def kind_of(run: dict[str, Any]) -> str:
    """A run's scenario kind (results.json from before runs carried it: from the name)."""
    if run.get("kind"):
        return str(run["kind"])
    sc = run["scenario"]
    for prefix, kind in (
        ("idle-auth-imaps", "idle-auth-tls"),
        ("idle-pre", "idle-pre"),
        ("idle-auth", "idle-auth"),
        ("login", "login"),
        ("reconnect", "reconnect"),
        ("relay", "relay"),
        ("tls-handshake-full", "tls-full"),
        ("tls-handshake-resumed", "tls-resume"),
        ("tls-relay", "tls-relay"),
    ):
        if sc.startswith(prefix):
            return kind
    return sc


# -- progress -----------------------------------------------------------------------------------


class Progress:
    """One bar per scenario (rich), or one line per step when rich is missing or output is piped."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self._rich: Any = None
        if not quiet and sys.stderr.isatty():
            try:
                from rich.progress import (
                    BarColumn,
                    MofNCompleteColumn,
                    TextColumn,
                    TimeElapsedColumn,
                )
                from rich.progress import Progress as RichProgress

                self._rich = RichProgress(
                    TextColumn("{task.description:<22}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeElapsedColumn(),
                    TextColumn("{task.fields[note]}"),
                )
            except ImportError:
                self._rich = None

    @contextmanager
    def running(self) -> Iterator[Progress]:
        if self._rich is not None:
            with self._rich:
                yield self
        else:
            yield self

    def scenario(self, name: str, steps: int) -> Any:
        if self._rich is not None:
            return self._rich.add_task(name, total=steps, note="")
        return name

    def step(self, task: Any, note: str) -> None:
        if self._rich is not None:
            self._rich.update(task, advance=1, note=note)
        elif not self.quiet:
            print(f"  {task:<22} {note}", file=sys.stderr, flush=True)

    def say(self, text: str) -> None:
        if self.quiet:
            return
        if self._rich is not None:
            self._rich.console.print(text)
        else:
            print(text, file=sys.stderr, flush=True)


# -- summary ------------------------------------------------------------------------------------


def summarize(runs: list[dict[str, Any]], targets: list[str]) -> list[dict[str, Any]]:
    """Per scenario and figure: median, min, max per target, and fastmail/nginx ratio."""
    rows: list[dict[str, Any]] = []
    first = {r["scenario"]: r for r in reversed(runs)}
    for sc in dict.fromkeys(r["scenario"] for r in runs):
        kind = kind_of(first[sc])
        for fig in FIGURES.get(kind, []):
            row: dict[str, Any] = {
                "scenario": sc,
                "kind": kind,
                "proto": first[sc].get("proto"),
                "mode": first[sc].get("mode"),
                "concurrency": first[sc].get("concurrency"),
                "figure": fig.key,
                "label": fig.label,
                "unit": fig.unit,
                "better": fig.better,
                "targets": {},
            }
            for t in targets:
                vals = [
                    r["figures"][fig.key]
                    for r in runs
                    if r["scenario"] == sc
                    and r["target"] == t
                    and fig.key in r.get("figures", {})
                    and not r.get("invalid")
                ]
                if vals:
                    row["targets"][t] = {
                        "median": statistics.median(vals),
                        "min": min(vals),
                        "max": max(vals),
                        "n": len(vals),
                    }
            f, n = row["targets"].get("fastmail"), row["targets"].get("nginx")
            if f and n and n["median"]:
                row["ratio"] = f["median"] / n["median"]
            rows.append(row)
    return rows


def harness_notes(runs: list[dict[str, Any]]) -> list[str]:
    """Say which figures the proxy's CPU did not bound: the proxy was not busy, so the harness,
    the machine's other load, or the proxy's own waiting was the limit."""
    notes = []
    for r in runs:
        h = r.get("harness")
        if not h or not h.get("bounded_by_harness"):
            continue
        busy = h["proxy_busy"] + h["loadgen_busy"] + h["backend_busy"] + h["auth_busy"]
        others = h.get("others_busy", 0.0)
        if busy + others > 0.85 * h.get("cores", 1):
            why = "the cores were all busy: " + (
                "other work on the machine took a share"
                if others > 0.25
                else "the harness took the rest"
            )
        else:
            why = "cores were left idle: the proxy was waiting (latency), not short of CPU"
        notes.append(
            f"{r['scenario']} / {r['target']} round {r['round']}: proxy busy "
            f"{h['proxy_busy']:.0%} of a core per worker; loadgen {h['loadgen_busy']:.0%}, "
            f"backend {h['backend_busy']:.0%}, auth {h['auth_busy']:.0%}, "
            f"other processes {others:.0%}: {why}"
        )
    return notes


def harness_table(runs: list[dict[str, Any]], targets: list[str]) -> list[str]:
    """Per scenario and target: how busy the proxy, loadgen, backend and auth server were."""
    keys = ("proxy_busy", "loadgen_busy", "backend_busy", "auth_busy", "others_busy")
    out = [
        "| scenario | target | proxy | loadgen | backend | auth | other processes |",
        "|---|---|---|---|---|---|---|",
    ]
    for sc in dict.fromkeys(r["scenario"] for r in runs):
        for t in targets:
            hs = [
                r["harness"]
                for r in runs
                if r["scenario"] == sc and r["target"] == t and r.get("harness")
            ]
            if hs:
                cells = [f"{statistics.median(h.get(k, 0.0) for h in hs):.0%}" for k in keys]
                out.append(f"| {sc} | {t} | " + " | ".join(cells) + " |")
    return out


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"


def _cell(stat: dict[str, Any] | None) -> str:
    if not stat:
        return "—"
    if stat["n"] == 1:
        return _fmt(stat["median"])
    return f"{_fmt(stat['median'])} ({_fmt(stat['min'])}–{_fmt(stat['max'])})"


def _ratio(row: dict[str, Any] | None) -> str:
    return f"{row['ratio']:.2f}x" if row and "ratio" in row else "—"


def _is_login(row: dict[str, Any]) -> bool:
    return row.get("kind", kind_of(row)) == "login"


# the login table's columns: figure, and whether a cell shows the min–max spread too
LOGIN_COLUMNS = (
    ("sessions_per_s", "sessions/s", True),
    ("proxy_us_per_session", "CPU µs/login", True),
    ("proxy_user_us", "user µs", False),
    ("proxy_sys_us", "kernel µs", False),
    ("p50_ms", "p50 ms", False),
    ("p99_ms", "p99 ms", True),
    ("syscalls_per_login", "syscalls/login", False),
)


def login_table(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per login scenario: a row per target and one of fastmail/nginx ratios."""
    targets = result["meta"]["targets"]
    rows = [r for r in result["summary"] if _is_login(r)]
    head = ["scenario", "target", *[label for _, label, _ in LOGIN_COLUMNS]]
    body = []
    for sc in dict.fromkeys(r["scenario"] for r in rows):
        by_fig = {r["figure"]: r for r in rows if r["scenario"] == sc}
        for i, t in enumerate(targets):
            cells = []
            for key, _, spread in LOGIN_COLUMNS:
                stat = by_fig[key]["targets"].get(t) if key in by_fig else None
                cells.append(_cell(stat) if spread or not stat else _fmt(stat["median"]))
            body.append([sc if i == 0 else "", t, *cells])
        if len(targets) > 1:
            body.append(
                ["", "fastmail/nginx", *[_ratio(by_fig.get(k)) for k, _, _ in LOGIN_COLUMNS]]
            )
    return head, body


OBSERVABILITY_GOAL = 0.05  # issue 13: access log + metrics cost at most 5% more CPU per login


def observability_table(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per login scenario run with --observability: fastmail's CPU per login with the access
    log and metrics off and on, and what they cost."""
    head = ["scenario", "CPU µs/login, off", "on (access log + metrics)", "cost", "goal ≤ +5%"]
    body = []
    for row in result["summary"]:
        if not _is_login(row) or row["figure"] != "proxy_us_per_session":
            continue
        off, on = row["targets"].get("fastmail"), row["targets"].get(OBSERVED)
        if not off or not on:
            continue
        if not off["median"]:  # under a clock tick of CPU in all (a smoke run)
            body.append([row["scenario"], _cell(off), _cell(on), "—", "not measured"])
            continue
        cost = on["median"] / off["median"] - 1
        verdict = "ok" if round(cost, 3) <= OBSERVABILITY_GOAL else "MISS"
        body.append([row["scenario"], _cell(off), _cell(on), f"{cost:+.1%}", verdict])
    return head, body


def table_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Everything but the logins: a row per scenario and figure."""
    targets = result["meta"]["targets"]
    head = ["scenario", "figure", *targets, "fastmail/nginx"]
    body = []
    for row in result["summary"]:
        if _is_login(row):
            continue
        body.append(
            [
                row["scenario"],
                f"{row['label']} [{row['unit']}]",
                *[_cell(row["targets"].get(t)) for t in targets],
                _ratio(row),
            ]
        )
    for sc, why in result.get("unavailable", {}).items():
        body.append([sc, why, *["—" for _ in targets], "—"])
    return head, body


def syscall_table(result: dict[str, Any], top: int = 8) -> tuple[list[str], list[list[str]]]:
    """Per login scenario: syscalls per login of each target, and each one's top syscalls."""
    targets = result["meta"]["targets"]
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for r in result["runs"]:
        if r.get("syscalls"):
            found.setdefault(r["scenario"], {})[r["target"]] = r["syscalls"]
    head = ["scenario", *[f"{t} per login" for t in targets]]
    head += ["fastmail/nginx"] if len(targets) > 1 else []
    head += [f"{t}: top syscalls per login" for t in targets]
    body = []
    for sc, per in found.items():
        row = [sc]
        for t in targets:
            got = per.get(t)
            failed = f" ({got['errors']} sessions failed)" if got and got.get("errors") else ""
            row.append(f"{got['total']:.1f}{failed}" if got else "—")
        if len(targets) > 1:
            f, n = per.get("fastmail"), per.get("nginx")
            row.append(f"{f['total'] / n['total']:.2f}x" if f and n and n["total"] else "—")
        for t in targets:
            calls = per[t]["per_login"] if t in per else {}
            row.append(", ".join(f"{k} {v:.1f}" for k, v in list(calls.items())[:top]) or "—")
        body.append(row)
    return head, body


def profile_lines(result: dict[str, Any]) -> list[str]:
    """The perf summary of fastmail's worker: where its CPU went, by library and symbol."""
    prof = next((r["profile"] for r in result["runs"] if r.get("profile")), None)
    if not prof:
        return []
    lib = ", ".join(f"{k} {v:.1f}%" for k, v in list(prof["by_dso"].items())[:8])
    cpu = ""
    if "user_us" in prof:
        cpu = (
            f" The worker used {prof['user_us']:.0f} µs of user-space and {prof['sys_us']:.0f} "
            "µs of kernel CPU per login in this run (utime/stime; perf's own cost included)."
        )
    lines = [
        f"## Profile: fastmail's worker, {prof['scenario']}",
        "",
        f"`perf record -e cpu-clock -g` on the worker during a separate run of "
        f"{prof['sessions']} sessions ({prof['samples']} samples): kernel "
        f"{prof['kernel_pct']:.1f}%, user space {prof['user_pct']:.1f}%.{cpu} By library: {lib}.",
        "",
        "Self time by symbol, as a share of all samples: the top ones, then the top user-space "
        "ones (Cython functions show as their C names, `__pyx_...`; libpython as itself).",
        "",
        "| share | library | symbol |",
        "|---|---|---|",
    ]
    seen: list[Any] = []
    for part in (prof["top"], [t for t in prof.get("top_user", []) if t not in prof["top"]]):
        if seen and part:
            lines.append("| | **user space** | |")
        for t in part:
            sym = t["symbol"].replace("|", "/")
            lines.append(f"| {t['pct']:.1f}% | {t['dso']} | {'[k] ' if t['kernel'] else ''}{sym} |")
        seen += part
    return lines


def _tables(result: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, head, body) of every table the terminal shows (the report has them too)."""
    s = result["summary"]
    out = [
        ("Login goals (fastmail/nginx, or fastmail's own figure)", *goals.login_matrix(s)),
        ("Other goals", *goals.other_table(s)),
        ("Logins: medians (min–max) over rounds", *login_table(result)),
        (
            "Observability: fastmail's login CPU, access log + metrics off vs on",
            *observability_table(result),
        ),
        ("Relay, memory, TLS: medians (min–max) over rounds", *table_rows(result)),
    ]
    calls = syscall_table(result, top=4)  # narrower than the report's: a terminal is
    out.append(("Syscalls per login (a separate run under strace -f -c)", *calls))
    return [t for t in out if t[2]]


def print_table(result: dict[str, Any]) -> None:
    try:
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table
    except ImportError:
        for title, head, body in _tables(result):
            print(f"\n{title}\n" + " | ".join(head))
            for b in body:
                print(" | ".join(b))
        return
    console = Console()
    for title, head, body in _tables(result):
        table = Table(title=title)
        for h in head:
            table.add_column(h)
        for b in body:
            table.add_row(*(escape(c) for c in b))
        console.print(table)


def _md(head: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(c.replace("|", "/") for c in b) + " |" for b in body]


def markdown(result: dict[str, Any]) -> str:
    m = result["meta"]
    s = result["summary"]
    lines = [
        "# fastmail bench report",
        "",
        f"Run {m['date']} on {m['cores']} cores, Linux {m['kernel']}, Python {m['python']}, "
        f"nginx {m.get('nginx') or 'absent'}, fastmail {m.get('fastmail') or '?'}, "
        f"servers: {m['servers']}, rounds: {m['rounds']}, workers: {m['workers']}.",
        f"Command: `{m['command']}`",
        f"Load before the run (1/5/15 min): {m.get('load', '?')}.",
        f"TLS: {m.get('tls', '?')}"
        + (f"; negotiated: {', '.join(m['tls_negotiated'])}" if m.get("tls_negotiated") else "")
        + ".",
        "",
        "## Goals",
        "",
        "Ratios are fastmail/nginx of the medians in this run (1 worker each); user-space CPU "
        "per login is fastmail's own figure. " + goals.MODES_LEGEND,
        "",
    ]
    head, body = goals.login_matrix(s)
    if len(head) > 2:
        lines += _md(head, body) + [""]
    lines += _md(*goals.other_table(s))
    head, body = login_table(result)
    if body:
        lines += ["", "## Logins", ""]
        lines += [
            "A session: connect, greeting, login through auth_http and the backend login, "
            "LOGOUT/QUIT. CPU is the proxy's utime+stime over the run (user and kernel), "
            "divided by the sessions; latency is from connect to the logout reply. The kernel "
            "counts CPU time in clock ticks (10 ms), so a per-login figure moves in steps of "
            f"{1e4 / max(1, m['params'].get('sessions') or 1):.2g} µs at "
            f"{m['params'].get('sessions')} sessions; the profile below splits user and kernel "
            "time more finely.",
            "",
        ]
        lines += _md(head, body)
    head, body = observability_table(result)
    if body:
        lines += ["", "## Observability cost", ""]
        lines += [
            f"fastmail (access log and metrics off) beside {OBSERVED}: the same config with "
            "`access_log` (the default combined format, unbuffered: one write per login) and "
            "`metrics_listen` on (`python -m bench --observability`). Cost: the ratio of the "
            "medians of CPU per login, minus one.",
            "",
        ]
        lines += _md(head, body)
    head, body = table_rows(result)
    if body:
        lines += ["", "## Relay, memory, TLS", ""] + _md(head, body)
    lines += [
        "",
        "Reading it: sessions/s, handshakes/s, MB/s and latency are the proxy's only when the "
        "proxy was the busy process; where other processes took cores (the CPU table below), "
        "compare the CPU per session, per handshake and per GB instead: they count the proxy's "
        "own work per unit and vary less under contention (not nothing: a descheduled proxy "
        "handles fewer bytes or sessions per wakeup, which costs more per unit). On a 2-core "
        "machine the load generator shares the CPUs: judge login cost by CPU per login and "
        "syscalls per login.",
    ]
    head, body = syscall_table(result)
    if body:
        n = m["params"].get("syscalls", "?")
        lines += ["", "## Syscalls per login", ""]
        lines += [
            f"From a separate run of {n} sessions per scenario and target (first round, same "
            "proxy, after the timed run) under `strace -f -c` attached to the proxy's process "
            "tree: strace slows the proxy, so these runs are not timed. Calls divided by the "
            "sessions that completed.",
            "",
        ]
        lines += _md(head, body)
    prof = profile_lines(result)
    if prof:
        lines += [""] + prof
    lines += ["", "## CPU use during the measured window (share of one core, median)", ""]
    lines += harness_table(result["runs"], result["meta"]["targets"])
    lines += ["", "## Parameters", "", "```", json.dumps(m["params"], indent=1), "```"]
    failures = result.get("failures", [])
    if failures:
        lines += ["", "## Failures", ""]
        lines += [
            f"- {f['target']} / {f['scenario']}: {f['error']}".replace("\n", " ") for f in failures
        ]
    notes = harness_notes(result["runs"])
    lines += ["", "## Figures not bounded by the proxy's CPU (proxy below 85% of a core)", ""]
    lines += [f"- {n}" for n in notes] or ["- none: the proxy was the busy process in every run"]
    errs = [r for r in result["runs"] if r.get("errors")]
    if errs:
        lines += ["", "## Session errors (runs above 1% are left out of the figures)", ""]
        for r in errs:
            lines.append(
                f"- {r['scenario']} / {r['target']} round {r['round']}: {r['errors']} errors, "
                f"e.g. {'; '.join(r.get('errsample', [])[:2])}"
            )
    for n in m.get("notes", []):
        lines += ["", f"Note: {n}"]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], outdir: Path) -> list[Path]:
    """One PNG per scenario kind: a bar per target and figure, whiskers from min to max."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    targets = result["meta"]["targets"]
    written = []
    plotted = {(k, f.key) for k, figs in FIGURES.items() for f in figs if f.plot}
    by_file: dict[str, list[dict[str, Any]]] = {}
    for row in result["summary"]:
        kind = row.get("kind") or kind_of(row)
        if row["targets"] and (kind, row["figure"]) in plotted:
            by_file.setdefault(PLOT_FILE.get(kind, kind), []).append(row)
    for name, rows in by_file.items():
        figs = list(dict.fromkeys(r["figure"] for r in rows))
        n_sc = len({r["scenario"] for r in rows})
        width_in = max(4.2, 0.5 * n_sc + 1.5)
        if n_sc > 6:  # many scenarios (the logins): one panel under the other
            fig, axes = plt.subplots(len(figs), 1, figsize=(width_in, 3.6 * len(figs)))
        else:
            fig, axes = plt.subplots(1, len(figs), figsize=(width_in * len(figs), 3.8))
        for ax, key in zip(list(getattr(axes, "flat", [axes])), figs, strict=True):
            sub = [r for r in rows if r["figure"] == key]
            width = 0.8 / max(1, len(targets))
            for i, t in enumerate(targets):
                xs, ys, lo, hi = [], [], [], []
                for j, r in enumerate(sub):
                    s = r["targets"].get(t)
                    if s:
                        xs.append(j + i * width)
                        ys.append(s["median"])
                        lo.append(s["median"] - s["min"])
                        hi.append(s["max"] - s["median"])
                if xs:
                    ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=t)
            ax.set_xticks([j + width * (len(targets) - 1) / 2 for j in range(len(sub))])
            rot = 20 if len(sub) <= 4 else 45
            ax.set_xticklabels(
                [r["scenario"] for r in sub],
                rotation=rot,
                fontsize=7 if rot > 20 else 8,
                ha="right",
            )
            ax.set_title(f"{sub[0]['label']} [{sub[0]['unit']}]", fontsize=9)
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = outdir / f"{name}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def write_outputs(result: dict[str, Any], outdir: Path) -> list[Path]:
    outdir.mkdir(parents=True, exist_ok=True)
    paths = [outdir / "results.json", outdir / "report.md"]
    paths[0].write_text(json.dumps(result, indent=1, default=str) + "\n")
    paths[1].write_text(markdown(result))
    return paths + plot(result, outdir)


def main(argv: list[str] | None = None) -> int:
    """python -m bench.report RESULTS.json [OUTDIR]: rewrite report.md and the PNGs."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m bench.report RESULTS.json [OUTDIR]", file=sys.stderr)
        return 2
    src = Path(args[0])
    result = json.loads(src.read_text())
    # summarized again: the summary's layout follows this version of the report
    result["summary"] = summarize(result["runs"], result["meta"]["targets"])
    out = Path(args[1]) if len(args) > 1 else src.parent
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(markdown(result))
    for path in [out / "report.md", *plot(result, out)]:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
