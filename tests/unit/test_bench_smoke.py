"""The bench harness in smoke mode (tiny counts, seconds), so it cannot rot.

Runs `python -m bench --smoke` as a user would, against nginx when installed and against
fastmail. While fastmail's proxy cannot start, its test checks that the harness says so
cleanly, then reports itself as xfail with fastmail's error; while fastmail's TLS does not
work, the plain scenarios must be complete and the TLS failure said once. No timing is
asserted. The C servers (bench/servers.c) are also checked directly: the auth_http server's
HTTP/1.0 and keep-alive answers, its HTTP/1.0-close mode, and the backend's one-line logins
(LITERAL+ literals, quoted strings) and pipelined SMTP commands.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.targets import (
    LOGIN_MODES,
    NGINX_MAIL_MODULE,
    SERVERS_SRC,
    build_c,
    free_port,
    nginx_binary,
    openssl_headers,
    wait_listening,
)

ROOT = Path(__file__).resolve().parents[2]
LOGINS = {f"login-{p}-{m}-c4" for p in ("imap", "pop3", "smtp") for m in LOGIN_MODES}
SIEVE_LOGINS = {f"login-sieve-{m}-c4" for m in LOGIN_MODES}  # ManageSieve: fastmail only
SCENARIOS = LOGINS | {"reconnect-imap-c4", "relay-imap", "idle-pre-imap", "idle-auth-imap"}
TLS_SCENARIOS = {"idle-auth-imaps", "tls-handshake-full", "tls-handshake-resumed", "tls-relay-imap"}


def run_bench(target: str, out: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--quiet", "--no-install"]
        + ["--target", target, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    results = out / "results.json"
    assert results.exists(), proc.stderr
    return proc, json.loads(results.read_text())


def check_complete_run(result: dict[str, Any], target: str, out: Path, tls: bool) -> None:
    runs = [r for r in result["runs"] if r["target"] == target]
    expected = SCENARIOS | (SIEVE_LOGINS if target == "fastmail" else set())
    assert {r["scenario"] for r in runs} == expected | (TLS_SCENARIOS if tls else set())
    for r in runs:
        assert r["errors"] == 0 and not r["invalid"], (r["scenario"], r["errsample"])
        figs = r["figures"]
        if r["scenario"].startswith("login"):
            assert figs["sessions_per_s"] > 0 and figs["p99_ms"] >= figs["p50_ms"] > 0
            assert figs["proxy_user_us"] + figs["proxy_sys_us"] == pytest.approx(
                figs["proxy_us_per_session"]
            )
            if shutil.which("strace"):  # the separate run under strace -f -c
                calls = r["syscalls"]
                assert calls["sessions"] == 20 and calls["total"] == figs["syscalls_per_login"]
                # every login accepts the client and connects to the backend, and to the auth
                # server unless fastmail keeps that connection (keepalive mode)
                pooled = target == "fastmail" and "keepalive" in r["scenario"]
                assert calls["per_login"]["connect"] >= (1 if pooled else 2)
                assert calls["total"] > 10
        elif r["scenario"].startswith("reconnect"):
            # one user again and again: fastmail's cache answers all but the first logins
            # (the warm-up's two at once both miss; its 40 logins count), nginx asks the auth
            # server every time
            assert figs["sessions_per_s"] > 0 and sum(lg["ok"] for lg in r["loadgen"]) == 40
            if target == "fastmail":
                assert 1000 / 80 <= figs["auth_per_1000"] <= 2000 / 80
                assert 100 - 200 / 80 <= figs["hit_pct"] <= 100 - 100 / 80
            else:
                assert figs["auth_per_1000"] == 1000 and figs["hit_pct"] == 0
        elif r["scenario"].startswith("tls-handshake"):
            assert figs["handshakes_per_s"] > 0 and figs["p99_ms"] >= figs["p50_ms"] > 0
            resumed = r["scenario"].endswith("resumed")
            assert r["resumed"] == (r["loadgen"][0]["ok"] if resumed else 0)
        elif "relay" in r["scenario"]:
            assert figs["mb_per_s"] > 0 and figs["cpu_s_per_gb"] > 0
        else:
            assert r["connections"] == 30 and figs["base_rss_mib"] > 1
    md = (out / "report.md").read_text()
    assert "| login-imap-keepalive-c4 | " + target in md and "## Goals" in md
    assert "| proxy CPU per login, keepalive ≤ 0.8x |" in md
    if shutil.which("strace"):
        assert "## Syscalls per login" in md
    if target == "fastmail" and shutil.which("perf"):
        prof = next(r["profile"] for r in runs if r.get("profile"))
        assert prof["scenario"] == "login-imap-keepalive-c4" and prof["samples"] > 0
        assert prof["top"] and prof["kernel_pct"] + prof["user_pct"] == pytest.approx(100, 1)
        assert "## Profile: fastmail's worker, login-imap-keepalive-c4" in md
    if tls:
        assert result["unavailable"] == {}
        # the pinned TLS is what both proxies negotiated
        assert result["meta"]["tls_negotiated"] == ["TLSv1.3 TLS_AES_128_GCM_SHA256 X25519"]
    elif not openssl_headers():
        assert set(result["unavailable"]) == TLS_SCENARIOS and "cannot run" in md
    if importlib.util.find_spec("matplotlib"):
        assert (out / "login.png").stat().st_size > 1000


@pytest.mark.skipif(
    not (nginx_binary() and NGINX_MAIL_MODULE.exists()), reason="nginx mail module not installed"
)
def test_smoke_run_against_nginx_measures_every_scenario(tmp_path: Path) -> None:
    proc, result = run_bench("nginx", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert result["failures"] == []
    assert result["meta"]["nginx"] and result["meta"]["cores"] >= 1
    check_complete_run(result, "nginx", tmp_path, openssl_headers())


def test_smoke_run_against_fastmail(tmp_path: Path) -> None:
    proc, result = run_bench("fastmail", tmp_path)
    failures = [f for f in result["failures"] if f["target"] == "fastmail"]
    md = (tmp_path / "report.md").read_text()
    if failures and not result["runs"]:
        # The harness must say what went wrong, once, and still write its report.
        assert proc.returncode == 1
        assert len(failures) == 1 and "fastmail" in failures[0]["error"]
        assert "## Failures" in md
        pytest.xfail(f"fastmail's proxy cannot run yet: {failures[0]['error'][-300:]}")
    assert proc.returncode == 0, proc.stderr
    tls_failed = [f for f in failures if f["scenario"] in TLS_SCENARIOS]
    assert failures == tls_failed
    check_complete_run(result, "fastmail", tmp_path, openssl_headers() and not tls_failed)
    if tls_failed:
        # said once, at the first TLS scenario; the other TLS scenarios were skipped
        assert len(tls_failed) == 1 and tls_failed[0]["scenario"] == "idle-auth-imaps"
        assert md.count("- fastmail / idle-auth-imaps: ") == 1
        pytest.xfail(f"fastmail's TLS does not work yet: {tls_failed[0]['error'][-300:]}")


@contextlib.contextmanager
def _servers(args: list[str], ports: list[int]) -> Iterator[None]:
    proc = subprocess.Popen(
        [str(build_c(SERVERS_SRC)), *args, "-t", "60"], stdout=subprocess.DEVNULL
    )
    try:
        wait_listening(proc, ports, 10, "servers", lambda: "")
        yield
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def auth_server() -> Iterator[int]:
    port = free_port()
    with _servers(["auth", "-a", str(port), "-b", "1143,1110,1025,4190"], [port]):
        yield port


@pytest.fixture
def auth_close_server() -> Iterator[int]:
    port = free_port()
    with _servers(["auth", "-C", "-a", str(port), "-b", "1143,1110,1025"], [port]):
        yield port


@pytest.fixture
def backend() -> Iterator[dict[str, int]]:
    ports = {p: free_port() for p in ("imap", "pop3", "smtp", "sieve")}
    args = ["backend", "-b", ",".join(str(p) for p in ports.values())]
    with _servers(args, list(ports.values())):
        yield ports


def _request(version: str, proto: str, password: str, keep: bool) -> bytes:
    return (
        f"GET /auth {version}\r\nHost: localhost\r\nAuth-Method: plain\r\nAuth-User: u\r\n"
        f"Auth-Pass: {password}\r\nAuth-Protocol: {proto}\r\nAuth-Login-Attempt: 1\r\n"
        f"Client-IP: 127.0.0.1\r\n{'Connection: keep-alive' + chr(13) + chr(10) if keep else ''}"
        "\r\n"
    ).encode()


def _read_all(s: socket.socket) -> bytes:
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    return data


def test_c_auth_server_http10_answers_and_closes(auth_server: int) -> None:
    with socket.create_connection(("127.0.0.1", auth_server), timeout=5) as s:
        s.sendall(_request("HTTP/1.0", "pop3", "pass", keep=False))
        reply = _read_all(s)  # EOF after the answer, as nginx expects
    assert reply.startswith(b"HTTP/1.0 200 OK\r\n")
    assert b"Auth-Status: OK\r\n" in reply and b"Auth-Port: 1110\r\n" in reply


def test_c_auth_server_counts_requests(auth_server: int) -> None:
    """GET /stats: the auth_http requests answered so far (the reconnect scenario's figure);
    asking does not count."""
    from bench.targets import auth_requests

    before = auth_requests(auth_server)
    assert before is not None
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", auth_server), timeout=5) as s:
            s.sendall(_request("HTTP/1.0", "imap", "pass", keep=False))
            _read_all(s)
    assert auth_requests(auth_server) == before + 3


def test_c_auth_server_http11_keep_alive_serves_several_requests(auth_server: int) -> None:
    with socket.create_connection(("127.0.0.1", auth_server), timeout=5) as s:
        f = s.makefile("rb")
        for proto, port, password in (
            ("imap", 1143, "pass"),
            ("smtp", 1025, "nope"),
            ("sieve", 4190, "pass"),
        ):
            s.sendall(_request("HTTP/1.1", proto, password, keep=True))
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                head += f.readline()
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"Connection: keep-alive\r\n" in head
            if password == "pass":
                assert b"Auth-Status: OK\r\n" in head and b"Auth-Port: %d\r\n" % port in head
            else:
                assert b"Auth-Status: Invalid login or password\r\n" in head


def test_c_auth_server_close_mode_answers_http10_and_closes_a_keepalive_request(
    auth_close_server: int,
) -> None:
    with socket.create_connection(("127.0.0.1", auth_close_server), timeout=5) as s:
        s.sendall(_request("HTTP/1.1", "imap", "pass", keep=True))
        reply = _read_all(s)  # EOF after one answer, as nginx-style auth scripts do
    assert reply.startswith(b"HTTP/1.0 200 OK\r\n") and reply.endswith(b"\r\n\r\n")
    assert b"Connection: close\r\n" in reply and b"Auth-Port: 1143\r\n" in reply
    assert reply.count(b"HTTP/1.") == 1


def _lines_until(f: Any, last: bytes) -> bytes:
    out = b""
    while not out.endswith(last):
        line = f.readline()
        assert line, out
        out += line
    return out


@pytest.mark.parametrize(
    "login",
    [
        b"a LOGIN {5+}\r\necho1 {4+}\r\npass\r\n",  # LITERAL+: one packet, no "+" wait
        b'a LOGIN "echo1" "pass"\r\n',  # quoted strings
        b'a LOGIN "ec\\"ho" "pass"\r\n',  # an escaped quote: the name starts "ec"
    ],
)
def test_c_backend_one_line_imap_login(backend: dict[str, int], login: bytes) -> None:
    with socket.create_connection(("127.0.0.1", backend["imap"]), timeout=5) as s:
        f = s.makefile("rb")
        assert f.readline() == b"* OK [CAPABILITY IMAP4rev1 LITERAL+] bench backend ready\r\n"
        s.sendall(login + b"b NOOP\r\n")
        assert f.readline() == b"a OK LOGIN completed\r\n"
        if b"echo1" in login:  # echo* users: the bytes after the login line come back
            assert f.readline() == b"b NOOP\r\n"
        else:
            assert f.readline() == b"b OK done\r\n"


def test_c_backend_nginx_literals_wait_for_go_ahead(backend: dict[str, int]) -> None:
    with socket.create_connection(("127.0.0.1", backend["imap"]), timeout=5) as s:
        f = s.makefile("rb")
        f.readline()
        for part in (b"1 LOGIN {5}\r\n", b"echo1 {4}\r\n"):
            s.sendall(part)
            assert f.readline() == b"+ go ahead\r\n"
        s.sendall(b"pass\r\nhi\r\n")
        assert f.readline() == b"1 OK LOGIN completed\r\n" and f.readline() == b"hi\r\n"


def test_c_backend_smtp_pipelined_mail_from_and_rcpt_to(backend: dict[str, int]) -> None:
    with socket.create_connection(("127.0.0.1", backend["smtp"]), timeout=5) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220 ")
        s.sendall(b"EHLO proxy\r\n")
        assert b"250-PIPELINING\r\n" in _lines_until(f, b"250 8BITMIME\r\n")
        s.sendall(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n")  # one packet
        assert f.readline() == b"250 2.0.0 Ok\r\n" and f.readline() == b"250 2.0.0 Ok\r\n"
        s.sendall(b"QUIT\r\n")
        assert f.readline().startswith(b"221 ")


@pytest.mark.parametrize("mode", ["keepalive", "http10"])
def test_auth_micro_benchmark_runs(auth_server: int, mode: str) -> None:
    """bench/auth_micro.py's client gets every answer from the C auth server (OK for all)."""
    from bench import auth_micro

    assert auth_micro.run_mode(mode, auth_server, 50, 4) == (50, 0)


@pytest.mark.parametrize(
    ("login", "user"),
    [
        (b'AUTHENTICATE "PLAIN" "AGVjaG8xAHBhc3M="\r\n', b"echo1"),  # \0echo1\0pass
        (b'AUTHENTICATE "PLAIN" "dQBlY2hvMgBwYXNz"\r\n', b"echo2"),  # authzid u
        (b'AUTHENTICATE "PLAIN" {16+}\r\nAHVzZXIAcGFzcw==\r\n', b""),  # a literal: no user
    ],
)
def test_c_backend_sieve_login(backend: dict[str, int], login: bytes, user: bytes) -> None:
    with socket.create_connection(("127.0.0.1", backend["sieve"]), timeout=5) as s:
        f = s.makefile("rb")
        assert _lines_until(f, b'OK "bench backend ready"\r\n').startswith(b'"IMPLEMENTATION"')
        s.sendall(login + b"LOGOUT\r\n")
        assert f.readline() == b'OK "Logged in."\r\n'
        if user.startswith(b"echo"):  # echo* users: the bytes after the login line come back
            assert f.readline() == b"LOGOUT\r\n"
        else:
            assert f.readline() == b'OK "Logout completed."\r\n'


def test_smoke_run_with_observability_reports_its_cost(tmp_path: Path) -> None:
    """--observability runs the login scenarios on fastmail-obs too (access log + metrics on):
    it really observed (every login in its metrics, a line for each in its access log), and
    the report sets its CPU per login beside fastmail's."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "login", "--smoke", "--quiet", "--no-install"]
        + ["--target", "fastmail", "--observability", "--protocols", "imap"]
        + ["--syscalls", "0", "--profile", "none", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["failures"] == []
    assert result["meta"]["targets"] == ["fastmail", "fastmail-obs"]
    runs = {(r["scenario"], r["target"]): r for r in result["runs"]}
    expected = {f"login-imap-{m}-c4" for m in LOGIN_MODES}
    assert set(runs) == {(sc, t) for sc in expected for t in ("fastmail", "fastmail-obs")}
    for sc in expected:
        off, on = runs[(sc, "fastmail")], runs[(sc, "fastmail-obs")]
        assert "observed" not in off and on["errors"] == 0
        seen = on["observed"]
        assert seen["logins"] == 40 + 40  # the warm-up's and the timed run's
        assert seen["metrics_logins_ok"] == seen["logins"]
        # one line per session: the logins, and the harness's readiness probes (no login)
        assert seen["logins"] <= seen["access_log_lines"] <= seen["logins"] + 5
        assert on["figures"]["proxy_us_per_session"] >= 0
    md = (tmp_path / "report.md").read_text()
    assert "## Observability cost" in md
    assert "| login-imap-keepalive-c4 | " in md.split("## Observability cost")[1]
