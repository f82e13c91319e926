"""python -m bench: run the scenarios against fastmail and nginx, alternating, and report.

Owns: the command line, the scenario runners (login storms per protocol, login mode and
concurrency; relay; idle density plain and TLS; TLS handshakes full and resumed; TLS relay),
the round-robin over targets, and the probes' separate runs (syscalls per login under strace,
a perf profile of fastmail's worker). Each run starts a fresh proxy from the shared template,
drives it with the C load generator, and reads the proxy's CPU and RSS from /proc; the
auth_http servers and backend are started once and shared. A target that fails is said once
and skipped from then on (for the TLS scenarios only, when a TLS one failed). Must not write
anywhere but the output dir and a temp dir, or bind anything but 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import probes, report
from bench.targets import (
    FASTMAIL_ONLY,
    LOGIN_MODES,
    MODE_AUTH,
    OBSERVED,
    PROTOCOLS,
    ROOT,
    TLS_GROUP,
    TLS_KEY,
    TLS_SUITE,
    TLS_VERSION,
    Proxy,
    Servers,
    ServersDied,
    TargetError,
    auth_requests,
    build_loadgen,
    cpu_times,
    ensure_nginx,
    machine_cpu_seconds,
    make_cert,
    make_workdir,
    nginx_version,
    process_tree,
    raise_nofile,
    rss_bytes,
    wait_for_ports,
)

KINDS = ("login", "reconnect", "relay", "idle", "tls")
BUSY = 0.85  # a proxy below this share of a core per worker was not the bottleneck
WARMUP = 50  # sessions before each login storm


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # login relay idle-pre idle-auth idle-auth-tls tls-full tls-resume tls-relay
    proto: str
    mode: str | None = None  # login: a LOGIN_MODES value (targets.py)
    concurrency: int = 0  # login storms and handshakes: sessions in flight

    @property
    def tls(self) -> bool:
        return self.kind.startswith("tls") or self.kind == "idle-auth-tls"


class Bench:
    def __init__(self, args: argparse.Namespace, progress: report.Progress) -> None:
        self.a = args
        self.p = progress
        self.notes: list[str] = []
        self.loadgen, self.no_tls = build_loadgen(not args.no_install, self.notes)
        self.workdir = make_workdir()
        self.servers = Servers(args.servers, self.workdir)
        self.cert: tuple[Path, Path] | None = None
        if {"tls", "idle"} & set(args.kinds) and not self.no_tls:
            made = make_cert(self.workdir)
            if isinstance(made, str):
                self.no_tls = made
            else:
                self.cert = made
        self.tls_seen: set[str] = set()
        self.warm_ok = 0  # sessions the last warm-up completed
        # the probes: a reason when off (said once in the notes), and the run goes on without
        self.strace_off = "--syscalls 0" if args.syscalls <= 0 else probes.missing("strace")
        self.perf_off = probes.missing("perf")
        self.profile_name = self._profile_scenario()
        if args.syscalls > 0 and self.strace_off:
            self.notes.append(f"no syscall counts: {self.strace_off}")

    def _profile_scenario(self) -> str | None:
        """The login scenario whose fastmail run is profiled (--profile), if any."""
        logins = [sc for sc in self.scenarios() if sc.kind == "login"]
        if self.a.profile == "none" or not logins:
            return None
        if self.a.profile and self.a.profile not in {sc.name for sc in logins}:
            self.notes.append(f"no profile: --profile {self.a.profile} is no login scenario here")
            return None
        if self.perf_off:
            self.notes.append(f"no profile: {self.perf_off}")
            return None
        keepalive = [sc.name for sc in logins if sc.mode == "keepalive"]
        return self.a.profile or (keepalive or [logins[0].name])[0]

    # -- one loadgen invocation -----------------------------------------------------------------

    def _loadgen(self, argv: list[str], on_line: Any = None) -> dict[str, Any]:
        """Run loadgen; on_line(proc, line) sees the MARK/READY lines as they come."""
        proc = subprocess.Popen(
            [str(self.loadgen), *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=raise_nofile,
        )
        assert proc.stdout is not None
        result: dict[str, Any] | None = None
        try:
            for line in proc.stdout:
                if line.startswith("RESULT "):
                    result = json.loads(line[7:])
                elif on_line:
                    on_line(proc, line.strip())
        except BaseException:
            proc.kill()  # interrupted (SIGTERM, ^C): leave no loadgen behind
            raise
        err = proc.stderr.read() if proc.stderr else ""
        proc.wait()
        if result is None:
            raise TargetError(f"loadgen failed (status {proc.returncode}): {err.strip()[-500:]}")
        return result

    def _sample(self, proxy: Proxy) -> dict[str, float]:
        s = self.servers.cpu()
        s["proxy_user"], s["proxy_sys"] = cpu_times(proxy.pid)
        s["proxy"] = s["proxy_user"] + s["proxy_sys"]
        s["machine"] = machine_cpu_seconds()
        s["t"] = time.monotonic()
        return s

    def _harness(self, s0: dict[str, float], s1: dict[str, float], lg_cpu: float) -> dict[str, Any]:
        wall = max(s1["t"] - s0["t"], 1e-9)
        h = {
            "proxy_busy": (s1["proxy"] - s0["proxy"]) / wall,
            "loadgen_busy": lg_cpu / wall,
            "backend_busy": (s1["backend"] - s0["backend"]) / wall,
            "auth_busy": (s1["auth"] - s0["auth"]) / wall,
            "machine_busy": (s1["machine"] - s0["machine"]) / wall,
            "cores": os.cpu_count() or 1,
        }
        ours = h["proxy_busy"] + h["loadgen_busy"] + h["backend_busy"] + h["auth_busy"]
        # other helpers' tests, profilers...: what the machine did beyond this run
        h["others_busy"] = max(0.0, h["machine_busy"] - ours)
        h["bounded_by_harness"] = h["proxy_busy"] < BUSY * self.a.workers
        return h

    # -- scenarios ------------------------------------------------------------------------------

    def _storm(
        self, proxy: Proxy, base: list[str], count: int, concurrency: int
    ) -> tuple[list[dict[str, Any]], dict[str, float], dict[str, float], int, float]:
        """A warm-up, then `count` sessions at `concurrency` (split over --procs load
        generators): (results, CPU samples before and after, sessions ok, elapsed)."""
        # warm-up: code paths, auth_http cache, first allocations
        warm = self._loadgen([*base, "-c", "2", "-n", str(min(WARMUP, count)), "-t", "10"])
        self.warm_ok = warm["ok"]
        s0 = self._sample(proxy)
        results = self._sessions(base, count, concurrency)
        s1 = self._sample(proxy)
        ok = sum(r["ok"] for r in results)
        elapsed = max(r["elapsed"] for r in results)
        return results, s0, s1, ok, elapsed

    def _sessions(self, base: list[str], count: int, concurrency: int) -> list[dict[str, Any]]:
        procs = max(1, self.a.procs)
        per = ["-c", str(max(1, concurrency // procs))]
        per += ["-n", str(max(1, count // procs)), "-t", str(self.a.max_secs)]
        if procs == 1:
            return [self._loadgen([*base, *per])]
        return self._parallel([[*base, *per]] * procs)

    def login(self, proxy: Proxy, sc: Scenario, first: bool) -> dict[str, Any]:
        port = str(self.servers.ports.proxy[sc.proto])
        base = ["-m", "login", "-p", port, "-P", sc.proto, "-u", "user", "-w", "pass"]
        results, s0, s1, ok, elapsed = self._storm(proxy, base, self.a.sessions, sc.concurrency)
        per = 1e6 / ok if ok else 0.0
        figures = {
            "sessions_per_s": ok / elapsed if elapsed else 0.0,
            "proxy_us_per_session": (s1["proxy"] - s0["proxy"]) * per,
            "proxy_user_us": (s1["proxy_user"] - s0["proxy_user"]) * per,
            "proxy_sys_us": (s1["proxy_sys"] - s0["proxy_sys"]) * per,
            # with several loadgens, the worst one's percentile (conservative)
            "p50_ms": max(r["p50_us"] for r in results) / 1000,
            "p99_ms": max(r["p99_us"] for r in results) / 1000,
        }
        out = self._outcome(figures, results, s0, s1)
        if proxy.observed:
            # it did observe: the logins made so far (warm-up and timed run) are in its
            # metrics, and each has its access log line
            out["observed"] = {"logins": self.warm_ok + ok, **proxy.observed_counts()}
        # the probes slow the proxy: their runs come after the timed one, once per target
        if first and not self.strace_off:
            out["syscalls"] = self._syscalls(proxy, base, sc)
            if out["syscalls"]:
                figures["syscalls_per_login"] = out["syscalls"]["total"]
        if first and proxy.name == "fastmail" and sc.name == self.profile_name:
            out["profile"] = self._profile(proxy, base, sc)
        return out

    def reconnect(self, proxy: Proxy, sc: Scenario) -> dict[str, Any]:
        """The same user logging in again and again, each time on a new connection: fastmail
        with auth_http_cache, nginx as always; how many logins the auth server saw."""
        port = str(self.servers.ports.proxy[sc.proto])
        base = ["-m", "login", "-p", port, "-P", sc.proto, "-u", "user", "-w", "pass"]
        auth_port = self.servers.ports.auth[MODE_AUTH[sc.mode]]
        before = auth_requests(auth_port)
        results, s0, s1, ok, elapsed = self._storm(proxy, base, self.a.sessions, sc.concurrency)
        after = auth_requests(auth_port)
        per = 1e6 / ok if ok else 0.0
        figures = {
            "sessions_per_s": ok / elapsed if elapsed else 0.0,
            "proxy_us_per_session": (s1["proxy"] - s0["proxy"]) * per,
            "p99_ms": max(r["p99_us"] for r in results) / 1000,
        }
        if before is not None and after is not None and ok:
            # the warm-up's logins are counted too: the first one of a run is a miss
            logins = ok + min(WARMUP, self.a.sessions)
            asked = after - before
            figures["auth_per_1000"] = 1000 * asked / logins
            figures["hit_pct"] = 100 * max(0.0, 1 - asked / logins)
        return self._outcome(figures, results, s0, s1)

    def _syscalls(self, proxy: Proxy, base: list[str], sc: Scenario) -> dict[str, Any] | None:
        """A separate run of --syscalls sessions under `strace -f -c`: calls per login."""
        try:
            with probes.Strace(process_tree(proxy.pid), proxy.dir) as st:
                results = self._sessions(base, self.a.syscalls, sc.concurrency)
        except RuntimeError as e:
            self.strace_off = str(e)
            self.notes.append(f"syscall counts stopped: {e}")
            return None
        counts = st.counts()
        ok = sum(r["ok"] for r in results)
        if not ok or not counts:
            return None
        per = {k: v / ok for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}
        errors = sum(r["errors"] + r["unfinished"] for r in results)
        return {"sessions": ok, "errors": errors, "total": sum(per.values()), "per_login": per}

    def _profile(self, proxy: Proxy, base: list[str], sc: Scenario) -> dict[str, Any] | None:
        """A separate run of --sessions sessions with `perf record` on the worker."""
        if self.perf_off:
            return None
        try:
            with probes.Perf(process_tree(proxy.pid), proxy.dir) as pf:
                s0 = self._sample(proxy)
                results = self._sessions(base, self.a.sessions, sc.concurrency)
                s1 = self._sample(proxy)
            out = pf.summary()
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            self.perf_off = str(e)
            self.notes.append(f"no profile: {e}")
            return None
        ok = sum(r["ok"] for r in results)
        out.update(scenario=sc.name, sessions=ok)
        if ok:  # the worker's CPU in the profiled run, which the shares divide
            out["user_us"] = (s1["proxy_user"] - s0["proxy_user"]) / ok * 1e6
            out["sys_us"] = (s1["proxy_sys"] - s0["proxy_sys"]) / ok * 1e6
        return out

    def handshake(self, proxy: Proxy, sc: Scenario) -> dict[str, Any]:
        """TLS handshakes: connect, handshake, IMAP greeting through TLS, close_notify, close."""
        resume = sc.kind == "tls-resume"
        ports = self.servers.ports.tls
        port = ports["imaps_resume" if resume else "imaps_full"]
        base = ["-m", "handshake", "-p", str(port), "-P", "imap", *(["-R"] if resume else [])]
        results, s0, s1, ok, elapsed = self._storm(proxy, base, self.a.handshakes, sc.concurrency)
        figures = {
            "handshakes_per_s": ok / elapsed if elapsed else 0.0,
            "proxy_us_per_handshake": (s1["proxy"] - s0["proxy"]) / ok * 1e6 if ok else 0.0,
            "p50_ms": max(r["p50_us"] for r in results) / 1000,
            "p99_ms": max(r["p99_us"] for r in results) / 1000,
        }
        out = self._outcome(figures, results, s0, s1)
        resumed = sum(r["resumed"] for r in results)
        out["resumed"] = resumed
        # a resumed run that did full handshakes (or the reverse) measured the other thing
        if (resume and resumed < 0.99 * ok) or (not resume and resumed):
            out["invalid"] = True
            out["errsample"].append(f"{resumed} of {ok} handshakes resumed")
        self.tls_seen.update(r["tls"] for r in results if r.get("tls"))
        return out

    def _parallel(self, argvs: list[list[str]]) -> list[dict[str, Any]]:
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(len(argvs)) as ex:
            return list(ex.map(self._loadgen, argvs))

    def relay(self, proxy: Proxy, sc: Scenario) -> dict[str, Any]:
        ports = self.servers.ports
        proto, tls = sc.proto, sc.tls
        port = str(ports.tls["imaps_full"] if tls else ports.proxy[proto])
        n = str(self.a.relay_conns)
        argv = ["-m", "relay", "-p", port, "-P", proto, "-u", "echo", "-w", "pass", "-n", n]
        argv += ["-S"] if tls else []
        argv += ["-d", str(self.a.relay_secs), "-t", str(self.a.relay_secs + 20)]
        marks: dict[str, dict[str, float]] = {}

        def on_line(_: Any, line: str) -> None:
            if line.startswith("MARK "):
                marks[line[5:]] = self._sample(proxy)

        r = self._loadgen(argv, on_line)
        s0, s1 = marks.get("start"), marks.get("end")
        if not s0 or not s1:
            raise TargetError(f"relay never started: {r['errsample']}")
        moved = 2 * r["relay_bytes"]  # every echoed byte crossed the proxy twice
        figures = {
            "mb_per_s": moved / r["elapsed"] / 1e6 if r["elapsed"] else 0.0,
            "cpu_s_per_gb": (s1["proxy"] - s0["proxy"]) / (moved / 1e9) if moved else 0.0,
        }
        out = self._outcome(figures, [r], s0, s1)
        if r.get("tls"):
            self.tls_seen.add(r["tls"])
        return out

    def idle(self, proxy: Proxy, sc: Scenario) -> dict[str, Any]:
        """Idle connections: pre-auth (greeted), logged in, or logged in over implicit TLS
        (the full-handshake listener: no session cache to grow)."""
        ports = self.servers.ports
        tls = sc.kind == "idle-auth-tls"
        port = str(ports.tls["imaps_full"] if tls else ports.proxy[sc.proto])
        state = "pre" if sc.kind == "idle-pre" else "auth"
        base = ["-m", "idle", "-s", state, "-p", port, "-P", sc.proto, "-u", "user", "-w", "pass"]
        base += ["-S"] if tls else []
        measured: dict[str, float] = {}

        def on_ready(proc: subprocess.Popen[str], line: str) -> None:
            if line.startswith("READY"):
                time.sleep(self.a.settle)
                measured["rss"] = rss_bytes(proxy.pid)
                measured["ready"] = int(line.split()[1])
                assert proc.stdin is not None
                proc.stdin.close()

        # warm-up: a few connections of the same kind so first-use allocations are not counted
        self._loadgen([*base, "-n", "20", "-t", "10"], on_ready)
        time.sleep(self.a.settle)
        base_rss = rss_bytes(proxy.pid)
        r = self._loadgen([*base, "-n", str(self.a.idle), "-t", "60"], on_ready)
        n = measured.get("ready", 0)
        figures = {
            "kib_per_conn": (measured["rss"] - base_rss) / n / 1024 if n else 0.0,
            "base_rss_mib": base_rss / 2**20,
        }
        out = self._outcome(figures, [r], None, None)
        out["connections"] = n
        return out

    def _outcome(
        self,
        figures: dict[str, float],
        results: list[dict[str, Any]],
        s0: dict[str, float] | None,
        s1: dict[str, float] | None,
    ) -> dict[str, Any]:
        errors = sum(r["errors"] + r["unfinished"] for r in results)
        ok = sum(r["ok"] for r in results)
        samples = [e for r in results for e in r["errsample"]][:4]
        if errors and not ok:
            # nothing worked: the target cannot do this (e.g. no TLS yet), say so once
            raise TargetError(f"every session failed, e.g. {'; '.join(samples[:2])}")
        tried = ok + errors
        out: dict[str, Any] = {
            "figures": figures,
            "errors": errors,
            # a run with more than 1% failed sessions measured something else: left out
            "invalid": errors > 0.01 * max(tried, 1),
            "errsample": samples,
            "loadgen": results,
        }
        if s0 and s1:
            out["harness"] = self._harness(s0, s1, sum(r["cpu_s"] for r in results))
        return out

    # -- the run --------------------------------------------------------------------------------

    def scenarios(self) -> list[Scenario]:
        """The scenarios in run order: logins by protocol, then mode, then concurrency."""
        out = []
        protos = self.a.protocols
        for kind in self.a.kinds:
            if kind == "login":
                out += [
                    Scenario(f"login-{p}-{m}-c{c}", "login", p, m, c)
                    for p in protos
                    for m in self.a.modes
                    for c in self.a.concurrency
                ]
            elif kind == "reconnect":
                c = self.a.concurrency[0]
                out += [
                    Scenario(f"reconnect-{protos[0]}-c{c}", "reconnect", protos[0], "cached", c)
                ]
            elif kind == "relay":
                out += [Scenario(f"relay-{p}", "relay", p) for p in protos[:1]]
            elif kind == "idle":
                p = protos[0]
                out += [Scenario(f"idle-pre-{p}", "idle-pre", p)]
                out += [Scenario(f"idle-auth-{p}", "idle-auth", p)]
                if p == "imap":  # implicit TLS: the bench's TLS listeners are IMAP
                    out += [Scenario("idle-auth-imaps", "idle-auth-tls", "imap")]
            elif kind == "tls":
                c = self.a.tls_concurrency
                out += [
                    Scenario("tls-handshake-full", "tls-full", "imap", concurrency=c),
                    Scenario("tls-handshake-resumed", "tls-resume", "imap", concurrency=c),
                    Scenario("tls-relay-imap", "tls-relay", "imap"),
                ]
        return out

    def _wait_for_calm(self) -> None:
        """Other helpers' tests share the machine: before a run, wait (at most --calm seconds)
        for a second in which other processes used under a third of a core."""
        if self.a.calm <= 0:
            return
        t_end = time.monotonic() + self.a.calm
        while True:
            m0 = machine_cpu_seconds()
            time.sleep(1.0)
            busy = machine_cpu_seconds() - m0
            if busy < 0.33 or time.monotonic() >= t_end:
                return

    def run_one(self, target: str, sc: Scenario, first: bool) -> dict[str, Any]:
        """One timed run on a fresh proxy (and, in the first round, the probes' runs)."""
        self.servers.check_alive()
        p = self.servers.ports
        wait_for_ports(
            {*p.auth.values(), *p.backend.values(), *p.proxy.values(), *p.tls.values()},
            self.a.max_time_wait,
        )
        self._wait_for_calm()
        cert = self.cert if sc.tls else None
        proxy = Proxy(target, self.workdir, p, self.a.workers, cert, sc.mode)
        proxy.start()
        try:
            if sc.kind == "login":
                out = self.login(proxy, sc, first)
            elif sc.kind == "reconnect":
                out = self.reconnect(proxy, sc)
            elif sc.kind in ("relay", "tls-relay"):
                out = self.relay(proxy, sc)
            elif sc.kind in ("tls-full", "tls-resume"):
                out = self.handshake(proxy, sc)
            else:
                out = self.idle(proxy, sc)
        except TargetError as e:
            raise TargetError(proxy.died() or str(e)) from e  # a crash explains the errors
        finally:
            died = proxy.died()
            proxy.stop()
        if died:
            raise TargetError(died)
        return out

    def run(self, targets: list[str], meta: dict[str, Any]) -> dict[str, Any]:
        runs: list[dict[str, Any]] = []
        failures: list[dict[str, Any]] = []
        unavailable: dict[str, str] = {}
        # a target that failed is skipped from then on: for every scenario, or, when a TLS
        # scenario failed, for the TLS ones (the plain figures still mean something)
        dead: set[str] = set()
        dead_tls: set[str] = set()
        self.servers.start()
        try:
            with self.p.running():
                for sc in self.scenarios():
                    name = sc.name
                    if sc.tls and self.no_tls:
                        unavailable[name] = f"cannot run: {self.no_tls}"
                        continue
                    if sc.proto not in self.servers.ports.proxy:
                        unavailable[name] = f"cannot run: the {self.a.servers} servers lack it"
                        continue
                    task = self.p.scenario(name, self.a.rounds * len(targets))
                    for rnd in range(self.a.rounds):
                        order = targets if rnd % 2 == 0 else targets[::-1]
                        for t in order:
                            if sc.proto in FASTMAIL_ONLY and t == "nginx":
                                self.p.step(task, f"{t}: has no {sc.proto}")  # fastmail alone
                                continue
                            if t == OBSERVED and sc.kind != "login":
                                # observability's cost is measured on logins
                                self.p.step(task, f"{t}: logins only")
                                continue
                            if t in dead or (sc.tls and t in dead_tls):
                                why = "TLS failed before" if t not in dead else "failed before"
                                self.p.step(task, f"{t}: skipped ({why})")
                                continue
                            try:
                                out = self.run_one(t, sc, rnd == 0)
                            except ServersDied as e:
                                failures.append(
                                    {"target": "servers", "scenario": name, "error": str(e)}
                                )
                                self.p.say(f"shared servers died, stopping: {e}")
                                return self._result(meta, runs, targets, failures, unavailable)
                            except TargetError as e:
                                failures.append({"target": t, "scenario": name, "error": str(e)})
                                self.p.say(f"[{t}] {name}: {e}")
                                (dead_tls if sc.tls else dead).add(t)
                                self.p.step(task, f"{t}: FAILED")
                                continue
                            out.update(scenario=name, target=t, round=rnd, kind=sc.kind)
                            out.update(proto=sc.proto, mode=sc.mode, concurrency=sc.concurrency)
                            runs.append(out)
                            figs = ", ".join(f"{k}={v:.4g}" for k, v in out["figures"].items())
                            self.p.step(task, f"{t}: {figs}")
        finally:
            self.servers.stop()
            if not self.a.keep_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
            meta["notes"] += self.notes
            if self.tls_seen:
                meta["tls_negotiated"] = sorted(self.tls_seen)
        return self._result(meta, runs, targets, failures, unavailable)

    @staticmethod
    def _result(
        meta: dict[str, Any],
        runs: list[dict[str, Any]],
        targets: list[str],
        failures: list[dict[str, Any]],
        unavailable: dict[str, str],
    ) -> dict[str, Any]:
        return {
            "meta": meta,
            "runs": runs,
            "summary": report.summarize(runs, targets),
            "failures": failures,
            "unavailable": unavailable,
        }


def _version(cmd: list[str]) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10, cwd=ROOT)
        return (r.stdout or r.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return ""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("kinds", nargs="*", help=f"scenarios among {' '.join(KINDS)} (default: all)")
    p.add_argument("--target", default="fastmail,nginx", help="comma list: fastmail,nginx")
    p.add_argument(
        "--protocols",
        default=",".join(PROTOCOLS),
        help="login storms per protocol (sieve: ManageSieve, fastmail only)",
    )
    p.add_argument(
        "--servers",
        choices=("c", "testing"),
        default="c",
        help="auth_http server and backend: c (bench/servers.c, fast: the default), testing "
        "(fastmail.testing's Python authd and backend)",
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument(
        "--concurrency",
        default="32,256",
        help="login sessions in flight: a comma list, one login scenario per value",
    )
    p.add_argument(
        "--modes",
        default=",".join(LOGIN_MODES),
        help="login modes (comma list): keepalive (keep-alive auth server; fastmail with "
        "proxy_pipelining on), http10 (auth server answers HTTP/1.0 and closes; fastmail with "
        "auth_http_keepalive 0 and nginx's backend bytes)",
    )
    p.add_argument("--sessions", type=int, default=3000, help="login sessions per run")
    p.add_argument(
        "--syscalls",
        type=int,
        default=500,
        help="sessions of the separate run under strace -f -c, per login scenario and target "
        "(first round only; 0: none)",
    )
    p.add_argument(
        "--profile",
        default="",
        help="the login scenario whose fastmail worker is profiled with perf in a separate "
        "run (default: the first keepalive one; none: no profile)",
    )
    p.add_argument("--tls-concurrency", type=int, default=64, help="TLS handshakes in flight")
    p.add_argument(
        "--procs", type=int, default=1, help="loadgen processes for login storms and handshakes"
    )
    p.add_argument("--handshakes", type=int, default=3000, help="TLS handshakes per run")
    p.add_argument("--max-secs", type=float, default=60, help="bound on one login run")
    p.add_argument("--relay-conns", type=int, default=4)
    p.add_argument("--relay-secs", type=float, default=3)
    p.add_argument("--idle", type=int, default=4000, help="idle connections (each kind)")
    p.add_argument(
        "--max-time-wait",
        type=int,
        default=15000,
        help="before a run, wait (up to 65 s) until fewer connections to any of the bench's "
        "ports are in TIME_WAIT",
    )
    p.add_argument("--settle", type=float, default=0.5, help="seconds before reading RSS")
    p.add_argument(
        "--calm",
        type=float,
        default=10,
        help="before each run, wait up to this many seconds for the machine's other load to "
        "drop under a third of a core (0: do not wait)",
    )
    p.add_argument(
        "--observability",
        action="store_true",
        help=f"also run the login scenarios on {OBSERVED}: fastmail with its access log and "
        "metrics listener on, reported beside fastmail (both off) as their CPU cost per login",
    )
    p.add_argument("--smoke", action="store_true", help="tiny counts: checks the harness runs")
    p.add_argument(
        "--no-install", action="store_true", help="never apt-get install nginx or libssl-dev"
    )
    p.add_argument(
        "--keep-workdir",
        action="store_true",
        help="keep the temp dir with configs, logs and certificate (removed by default)",
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    a.kinds = a.kinds or list(KINDS)
    if set(a.kinds) - set(KINDS):
        p.error(f"unknown scenario {sorted(set(a.kinds) - set(KINDS))}")
    a.protocols = [x for x in a.protocols.split(",") if x]
    bad = set(a.protocols) - set(PROTOCOLS)
    if bad:
        p.error(f"unknown protocol {sorted(bad)}")
    try:
        a.concurrency = [int(x) for x in a.concurrency.split(",") if x]
    except ValueError:
        p.error(f"--concurrency takes numbers: {a.concurrency!r}")
    if not a.concurrency or min(a.concurrency) <= 0:
        p.error("--concurrency needs at least one positive number")
    a.modes = [x for x in a.modes.split(",") if x]
    if not a.modes or set(a.modes) - set(LOGIN_MODES):
        p.error(f"--modes takes {','.join(LOGIN_MODES)}")
    if a.smoke:
        a.rounds, a.concurrency, a.sessions, a.max_secs, a.handshakes = 1, [4], 40, 15, 40
        a.relay_conns, a.relay_secs, a.idle, a.settle, a.calm = 2, 0.3, 30, 0.1, 0
        a.tls_concurrency, a.syscalls = 4, min(a.syscalls, 20)
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    raise_nofile()
    # SIGTERM runs the finally blocks that stop the proxy and servers
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from bench.targets import nofile_limit

    # a logged-in idle session holds two fds in the proxy
    a.idle = max(1, min(a.idle, (nofile_limit() - 200) // 2))
    progress = report.Progress(quiet=a.quiet)
    notes: list[str] = []
    targets = [t for t in a.target.split(",") if t]
    if a.observability and "fastmail" in targets and OBSERVED not in targets:
        targets.insert(targets.index("fastmail") + 1, OBSERVED)
    if "nginx" in targets:
        exe = None if a.no_install and not _nginx_ready() else ensure_nginx(notes)
        if a.no_install and not exe:
            notes.append("nginx with the mail module is not installed: skipped (--no-install)")
        if not exe:
            targets.remove("nginx")
    for n in notes:
        progress.say(n)
    if not targets:
        progress.say("no target to run")
        return 2
    from bench.targets import nginx_binary

    nginx_exe = nginx_binary()
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "nginx": nginx_version(nginx_exe) if nginx_exe and "nginx" in targets else None,
        "fastmail": _version(["git", "-C", str(ROOT), "describe", "--always", "--dirty"]),
        "cc": _version([os.environ.get("CC", "cc"), "--version"]),
        "servers": a.servers,
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "rounds": a.rounds,
        "workers": a.workers,
        "targets": targets,
        "command": "python -m bench " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:])),
        "params": {
            k: getattr(a, k)
            for k in (
                "concurrency",
                "modes",
                "tls_concurrency",
                "sessions",
                "syscalls",
                "profile",
                "handshakes",
                "procs",
                "relay_conns",
                "relay_secs",
                "idle",
                "calm",
            )
        },
        "tls": f"{TLS_VERSION}, {TLS_SUITE}, group {TLS_GROUP}, {TLS_KEY} certificate, "
        "pinned in both configs and the load generator",
        "notes": notes,
    }
    try:
        bench = Bench(a, progress)
    except TargetError as e:
        progress.say(str(e))
        return 2
    result = bench.run(targets, meta)
    if not a.quiet:
        report.print_table(result)
    for path in report.write_outputs(result, a.out):
        progress.say(f"wrote {path}")
    return 1 if result["failures"] and not result["runs"] else 0


def _nginx_ready() -> bool:
    from bench.targets import NGINX_MAIL_MODULE, nginx_binary

    return bool(nginx_binary()) and NGINX_MAIL_MODULE.exists()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
