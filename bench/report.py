"""What a person sees of a bench run: progress, the table, and the files under bench/results/.

Owns: the progress display (rich when installed, plain lines otherwise), turning raw runs into
medians, spread and fastmail/nginx ratios checked against the project's targets, and writing
results.json, report.md and PNG plots (matplotlib when installed). Must not start processes or
measure anything itself (targets.py and __main__.py do).
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


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    unit: str
    better: str  # "higher" or "lower"
    goal: float | None = None  # the target's fastmail/nginx ratio bound, if the project set one


# The guide's targets: login CPU per session at most nginx's, p99 no worse; relay >= 1.5x MB/s
# at <= half the CPU per GB; idle logged-in memory <= nginx's, pre-auth <= 2x.
FIGURES = {
    "login": [
        Figure("sessions_per_s", "sessions/s", "1/s", "higher"),
        Figure("proxy_us_per_session", "proxy CPU per session", "µs", "lower", 1.0),
        Figure("p50_ms", "latency p50", "ms", "lower"),
        Figure("p99_ms", "latency p99", "ms", "lower", 1.0),
    ],
    "relay": [
        Figure("mb_per_s", "relay both ways", "MB/s", "higher", 1.5),
        Figure("cpu_s_per_gb", "proxy CPU per GB", "CPU-s/GB", "lower", 0.5),
    ],
    "idle-pre": [
        Figure("kib_per_conn", "RSS per idle pre-auth connection", "KiB", "lower", 2.0),
        Figure("base_rss_mib", "RSS before connections", "MiB", "lower"),
    ],
    "idle-auth": [
        Figure("kib_per_conn", "RSS per idle logged-in session", "KiB", "lower", 1.0),
        Figure("base_rss_mib", "RSS before connections", "MiB", "lower"),
    ],
    # no project goal names a TLS ratio: the table shows the ratio without ok/MISS
    "tls-handshake": [
        Figure("handshakes_per_s", "TLS handshakes/s", "1/s", "higher"),
        Figure("proxy_us_per_handshake", "proxy CPU per handshake", "µs", "lower"),
        Figure("p50_ms", "latency p50", "ms", "lower"),
        Figure("p99_ms", "latency p99", "ms", "lower"),
    ],
    "tls-relay": [
        Figure("mb_per_s", "TLS relay both ways", "MB/s", "higher"),
        Figure("cpu_s_per_gb", "proxy CPU per GB", "CPU-s/GB", "lower"),
    ],
}


def kind_of(scenario: str) -> str:
    for kind in ("idle-pre", "idle-auth", "login", "relay", "tls-handshake", "tls-relay"):
        if scenario.startswith(kind):
            return kind
    return scenario


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
    scenarios = list(dict.fromkeys(r["scenario"] for r in runs))
    for sc in scenarios:
        for fig in FIGURES.get(kind_of(sc), []):
            row: dict[str, Any] = {
                "scenario": sc,
                "figure": fig.key,
                "label": fig.label,
                "unit": fig.unit,
                "better": fig.better,
                "goal": fig.goal,
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
                ratio = f["median"] / n["median"]
                row["ratio"] = ratio
                if fig.goal is not None:
                    row["meets_goal"] = (
                        ratio >= fig.goal if fig.better == "higher" else ratio <= fig.goal
                    )
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


def _ratio(row: dict[str, Any]) -> str:
    if "ratio" not in row:
        return "—"
    mark = ""
    if "meets_goal" in row:
        sign = "≥" if row["better"] == "higher" else "≤"
        mark = f" {'ok' if row['meets_goal'] else 'MISS'} (goal {sign}{row['goal']}x)"
    return f"{row['ratio']:.2f}x{mark}"


def table_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    targets = result["meta"]["targets"]
    head = ["scenario", "figure", *targets, "fastmail/nginx"]
    body = []
    for row in result["summary"]:
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


def print_table(result: dict[str, Any]) -> None:
    head, body = table_rows(result)
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(" | ".join(head))
        for b in body:
            print(" | ".join(b))
        return
    table = Table(title="fastmail bench: medians (min–max) over rounds")
    for h in head:
        table.add_column(h)
    from rich.markup import escape

    for b in body:
        table.add_row(*(escape(c) for c in b))
    Console().print(table)


def markdown(result: dict[str, Any]) -> str:
    m = result["meta"]
    head, body = table_rows(result)
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
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in b) + " |" for b in body]
    lines += [
        "",
        "Reading it: sessions/s, handshakes/s, MB/s and latency are the proxy's only when the "
        "proxy was the busy process; where other processes took cores (the CPU table below), "
        "compare the CPU per session, per handshake and per GB instead: they count the proxy's "
        "own work per unit and vary less under contention (not nothing: a descheduled proxy "
        "handles fewer bytes or sessions per wakeup, which costs more per unit).",
    ]
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
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for row in result["summary"]:
        if row["targets"]:
            by_kind.setdefault(kind_of(row["scenario"]), []).append(row)
    for kind, rows in by_kind.items():
        figs = list(dict.fromkeys(r["figure"] for r in rows))
        fig, axes = plt.subplots(1, len(figs), figsize=(4.2 * len(figs), 3.6), squeeze=False)
        for ax, key in zip(axes[0], figs, strict=True):
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
            ax.set_xticklabels([r["scenario"] for r in sub], rotation=20, fontsize=8)
            ax.set_title(f"{sub[0]['label']} [{sub[0]['unit']}]", fontsize=9)
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = outdir / f"{kind}.png"
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
    out = Path(args[1]) if len(args) > 1 else src.parent
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(markdown(result))
    for path in [out / "report.md", *plot(result, out)]:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
