"""Run the fuzz targets (tests/fuzz/targets) under atheris; scripts/fuzz builds, then calls this.

Each target runs in a child process (the instrumented build on PYTHONPATH, atheris' ASan and
UBSan runtime preloaded, every Python object in malloc so ASan sees it) for its share of
time, over its committed corpus (tests/fuzz/corpus/TARGET, read) and a work corpus
(build/fuzz/corpus/TARGET, where new inputs go). A crash or hang ends the child: its input is
saved under tests/fuzz/crashes/ and the target starts again for the time left, up to
MAX_FINDINGS times. One line per target:

    TARGET: N inputs, C crashes, H hangs, peak RSS M MiB, coverage E edges

and the exit status is 1 when any target crashed or hung.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAIN = ROOT / "tests/fuzz/atheris_main.py"
CORPUS = ROOT / "tests/fuzz/corpus"
CRASHES = ROOT / "tests/fuzz/crashes"
WORK = ROOT / "build/fuzz"
TARGETS = ("imap", "pop3", "smtp", "sieve", "login", "proxy", "authanswer", "conf", "debuglog")
# the longest input per target: a client's dialogue, a header block, a config file
MAX_LEN = {"conf": 4096, "authanswer": 2048, "debuglog": 1024}
TIMEOUT = 10  # seconds one input may take (a hang past it is a finding)
RSS_LIMIT_MB = 2048
MAX_FINDINGS = 10

ARTIFACT = re.compile(r"Test unit written to (\S+)")
STATUS = re.compile(r"^#(\d+)\s.*\bcov: (\d+)(?:.*\brss: (\d+)Mb)?")
EXECUTED = re.compile(r"stat::number_of_executed_units: (\d+)")
PEAK = re.compile(r"stat::peak_rss_mb: (\d+)")


@dataclass
class Result:
    target: str
    inputs: int = 0
    crashes: int = 0
    hangs: int = 0
    rss: int = 0
    edges: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        return (
            f"{self.target}: {self.inputs} inputs, {self.crashes} crashes, {self.hangs} hangs, "
            f"peak RSS {self.rss} MiB, coverage {self.edges} edges"
        )


def child_env(lib: Path, runtime: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(lib),
        LD_PRELOAD=str(runtime),
        PYTHONMALLOC="malloc",
        # Python frees little at exit (no leak report); a smaller quarantine keeps RSS about
        # the target, not ASan; a UB report is a crash
        ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:handle_abort=1:quarantine_size_mb=64",
        UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1",
        FASTMAIL_FUZZ_CHECK_BUILD=str(lib),
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def run_target(
    py: str, env: dict[str, str], target: str, seconds: float, runs: int, log: Path
) -> Result:
    res = Result(target)
    work = WORK / "corpus" / target
    work.mkdir(parents=True, exist_ok=True)
    committed = CORPUS / target
    committed.mkdir(parents=True, exist_ok=True)
    CRASHES.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with log.open("w") as out:
        while res.crashes + res.hangs < MAX_FINDINGS:
            left = seconds - (time.monotonic() - start)
            if left < 1:
                break
            cmd = [
                py,
                str(MAIN),
                target,
                str(work),
                str(committed),
                f"-max_total_time={int(left)}",
                f"-timeout={TIMEOUT}",
                f"-rss_limit_mb={RSS_LIMIT_MB}",
                f"-max_len={MAX_LEN.get(target, 512)}",
                f"-artifact_prefix={CRASHES}/{target}-",
                "-print_final_stats=1",
            ]
            if runs:
                cmd.append(f"-runs={runs - res.inputs}")
            proc = subprocess.run(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                errors="replace", timeout=left + 4 * TIMEOUT + 120,
            )  # fmt: skip
            out.write(proc.stdout)
            executed = 0
            for line in proc.stdout.splitlines():
                if m := STATUS.match(line):
                    executed = max(executed, int(m.group(1)))
                    res.edges = max(res.edges, int(m.group(2)))
                    res.rss = max(res.rss, int(m.group(3) or 0))
                elif m := EXECUTED.search(line):
                    executed = max(executed, int(m.group(1)))
                elif m := PEAK.search(line):
                    res.rss = max(res.rss, int(m.group(1)))
            res.inputs += executed
            artifacts = ARTIFACT.findall(proc.stdout)
            for path in artifacts:
                kind = Path(path).name[len(target) + 1 :].split("-", 1)[0]
                if kind == "timeout":
                    res.hangs += 1
                else:
                    res.crashes += 1
                print(f"{target}: {kind}: {path} (log: {log})", file=sys.stderr)
            if not artifacts:
                if proc.returncode != 0:
                    # died without an artifact (the runtime itself failed): a crash to read
                    res.crashes += 1
                    print(f"{target}: exit {proc.returncode} (log: {log})", file=sys.stderr)
                break
            if runs and res.inputs >= runs:
                break
    res.seconds = time.monotonic() - start
    return res


def minimize(py: str, env: dict[str, str], target: str, log: Path) -> None:
    """The committed corpus becomes the smallest set with the coverage of both corpora."""
    committed = CORPUS / target
    fresh = WORK / "merged" / target
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(parents=True)
    cmd = [py, str(MAIN), target, "-merge=1", f"-max_len={MAX_LEN.get(target, 512)}"]
    cmd += [f"-timeout={TIMEOUT}", str(fresh), str(committed), str(WORK / "corpus" / target)]
    with log.open("a") as out:
        subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, check=True)
    if not any(fresh.iterdir()):
        print(f"{target}: the merge kept nothing; corpus left as it was (log: {log})")
        return
    shutil.rmtree(committed)
    shutil.copytree(fresh, committed)
    print(f"{target}: corpus {len(list(committed.iterdir()))} inputs", file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(prog="scripts/fuzz", description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=60, help="per target (default 60)")
    ap.add_argument("--runs", type=int, default=0, help="stop a target after N inputs")
    ap.add_argument("--minimize", action="store_true", help="merge into the committed corpus")
    ap.add_argument("--seed", action="store_true", help="add the seed corpora first")
    ap.add_argument("--lib", required=True, help="the instrumented build's lib dir")
    ap.add_argument("--runtime", required=True, help="atheris' asan_with_fuzzer.so")
    ap.add_argument("targets", nargs="*", metavar="TARGET", help=f"of {', '.join(TARGETS)}")
    args = ap.parse_args()
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown:
        ap.error(f"unknown target {unknown[0]!r} (targets: {', '.join(TARGETS)})")
    env = child_env(Path(args.lib).resolve(), Path(args.runtime))
    (WORK / "logs").mkdir(parents=True, exist_ok=True)
    failed = False
    for target in args.targets or TARGETS:
        log = WORK / "logs" / f"{target}.log"
        if args.seed:
            seeds = [sys.executable, str(MAIN), target, "--write-seeds", str(CORPUS / target)]
            subprocess.run(seeds, env=env, check=True)
        res = run_target(sys.executable, env, target, args.seconds, args.runs, log)
        print(res.line(), flush=True)
        print(f"{target}: {res.seconds:.0f} s (log: {log})", file=sys.stderr)
        failed |= bool(res.crashes or res.hangs)
        if args.minimize and not (res.crashes or res.hangs):
            minimize(sys.executable, env, target, log)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
