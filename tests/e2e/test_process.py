"""nginx's process model from the outside: a broken config never listens, a master with
workers serves, reloads on `-s reload` (old workers drain, new ones read the new config),
reopens its log on `-s reopen` and stops on `-s quit`, removing its pid file."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.masters import children as running_children
from support.masters import cpu_seconds, gone, wait_for
from support.ports import free_port

CONF = """\
daemon off;
master_process on;
worker_processes 2;
pid {d}/fastmail.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
mail {{
    auth_http 127.0.0.1:9/auth;
{servers}
}}
"""


def server(port: int) -> str:
    return f"    server {{ listen 127.0.0.1:{port}; protocol imap; }}\n"


def greeting(port: int, timeout: float = 5.0) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                return s.recv(100)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def children(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return {int(x) for x in out.stdout.split()}


def fastmail(d: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "fastmail", "-p", f"{d}/", "-c", f"{d}/fastmail.conf", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


@pytest.fixture
def prefix(tmp_path: Path) -> Path:
    (tmp_path / "logs").mkdir()
    return tmp_path


def test_a_config_with_an_error_never_listens(prefix: Path) -> None:
    port = free_port()
    text = CONF.format(d=prefix, servers=server(port)) + "bogus_directive on;\n"
    (prefix / "fastmail.conf").write_text(text)
    run = fastmail(prefix)
    assert run.returncode == 1
    assert f'unknown directive "bogus_directive" in {prefix}/fastmail.conf:' in run.stderr
    assert refused(port)
    assert not (prefix / "fastmail.pid").exists()


def test_master_workers_reload_reopen_and_quit(prefix: Path) -> None:
    p1, p2 = free_port(), free_port()
    conf = prefix / "fastmail.conf"
    conf.write_text(CONF.format(d=prefix, servers=server(p1)))
    cmd = [sys.executable, "-m", "fastmail", "-p", f"{prefix}/", "-c", str(conf)]
    master = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    try:
        assert greeting(p1) == b"* OK IMAP4 ready\r\n"
        pid = int((prefix / "fastmail.pid").read_text())
        assert pid == master.pid
        first = children(pid)
        assert len(first) == 2

        conf.write_text(CONF.format(d=prefix, servers=server(p1) + server(p2)))
        assert fastmail(prefix, "-s", "reload").returncode == 0
        assert greeting(p2) == b"* OK IMAP4 ready\r\n"
        assert greeting(p1) == b"* OK IMAP4 ready\r\n"
        deadline = time.monotonic() + 10
        while children(pid) & first and time.monotonic() < deadline:
            time.sleep(0.1)
        now = children(pid)
        assert len(now) == 2 and not now & first  # old workers drained and left

        (prefix / "error.log").rename(prefix / "error.log.1")
        assert fastmail(prefix, "-s", "reopen").returncode == 0
        deadline = time.monotonic() + 5
        while not (prefix / "error.log").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (prefix / "error.log").exists()

        assert fastmail(prefix, "-s", "quit").returncode == 0
        assert master.wait(15) == 0
        assert not (prefix / "fastmail.pid").exists()
        assert refused(p1) and refused(p2)
    finally:
        if master.poll() is None:
            os.kill(master.pid, signal.SIGKILL)
            master.wait()


def test_worker_connections_bounds_open_connections(prefix: Path) -> None:
    port = free_port()
    text = (
        CONF.format(d=prefix, servers=server(port))
        .replace("worker_connections 64;", "worker_connections 2;")
        .replace("master_process on;", "master_process off;")
    )
    (prefix / "fastmail.conf").write_text(text)
    cmd = [sys.executable, "-m", "fastmail", "-p", f"{prefix}/", "-c", f"{prefix}/fastmail.conf"]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    try:
        assert greeting(port) == b"* OK IMAP4 ready\r\n"  # a probe, closed again
        time.sleep(0.3)  # ... and reaped by the server
        held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
        for c in held:
            assert c.recv(100) == b"* OK IMAP4 ready\r\n"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as extra:
            assert extra.recv(100) == b""  # closed at once, no greeting
        log = (prefix / "error.log").read_text()
        assert "[alert]" in log and "2 worker_connections are not enough" in log
        for c in held:
            c.close()
        deadline = time.monotonic() + 5
        while True:  # once the others have gone, a new client is served again
            with socket.create_connection(("127.0.0.1", port), timeout=5) as again:
                if again.recv(100) == b"* OK IMAP4 ready\r\n":
                    break
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(10)


# --- signals and respawns, against nginx too ---------------------------------------------

KIND = ["fastmail", "nginx"]
# nginx's signals that must leave a master (and its workers) running; HUP reloads
HARMLESS = (
    signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH, signal.SIGALRM,
    signal.SIGIO, signal.SIGCHLD, signal.SIGPIPE, signal.SIGSYS,
)  # fmt: skip


def no_auth_mail(port: int) -> str:
    return f"auth_http 127.0.0.1:9/auth;\n{server(port)}"


@pytest.mark.parametrize("kind", KIND)
@pytest.mark.parametrize(
    ("mode", "stop"),
    [("master", signal.SIGQUIT), ("master", signal.SIGTERM), ("single", signal.SIGINT)],
)
def test_signals_leave_it_running_until_told_to_stop(kind, mode, stop, master):
    port = free_port()
    m = master(kind, no_auth_mail(port), daemon=False, master=mode == "master")
    pid = m.start(greet=port)
    for sig in HARMLESS:
        if (kind, mode, sig) == ("nginx", "single", signal.SIGHUP):
            continue  # nginx's single process reloads, then writes log lines to clients
        workers = m.watch(pid)
        os.kill(pid, sig)
        for w in workers:
            with contextlib.suppress(ProcessLookupError):  # one a reload retired
                os.kill(w, sig)
        time.sleep(0.1)
        assert not gone(pid), signal.Signals(sig).name
        assert greeting(port) == b"* OK IMAP4 ready\r\n"
    if mode == "master":
        wait_for("the workers after the reload", lambda: len(m.watch(pid)) == 2)
    assert "exited on signal" not in m.log()
    os.kill(pid, stop)
    assert m.proc is not None and m.proc.wait(15) == 0
    assert all(gone(p) for p in m.seen)  # no worker left behind
    assert not m.pid_file.exists()
    assert refused(port)


@pytest.mark.parametrize("kind", KIND)
def test_a_worker_that_cannot_start_is_not_respawned(kind, master):
    """nginx's fatal exit code 2 (here: working_directory missing): logged, not respawned,
    and the master stays."""
    port = free_port()
    m = master(kind, no_auth_mail(port), daemon=False, main="working_directory /nonexistent;")
    pid = m.start()
    wait_for("the fatal exits", lambda: m.log().count("cannot be respawned") == 2)
    time.sleep(0.5)
    log = m.log()
    assert 'chdir("/nonexistent") failed (2: No such file or directory)' in log
    assert "exited with fatal code 2 and cannot be respawned" in log
    assert log.count("start worker process ") == 2
    assert not gone(pid) and not running_children(pid)
    os.kill(pid, signal.SIGQUIT)
    assert m.proc is not None and m.proc.wait(15) == 0


def test_a_crashing_worker_is_respawned_with_a_back_off(master):
    """Beyond nginx (which respawns at once, each time): a worker killed again and again
    as soon as it starts does not make the master spin."""
    port = free_port()
    m = master("fastmail", no_auth_mail(port), daemon=False, workers=1)
    pid = m.start(greet=port)
    cpu = cpu_seconds(pid)
    killed = 0
    end = time.monotonic() + 3.0
    while time.monotonic() < end:
        for w in m.watch(pid):
            os.kill(w, signal.SIGKILL)
            killed += 1
        time.sleep(0.01)
    spawned = m.log().count("start worker process ") - 1
    assert 3 <= spawned <= 8, spawned  # 0, 0.1, 0.2, 0.4, 0.8, 1.6 s apart
    assert killed >= 3
    assert "worker processes in a row exited within 10s of starting, respawning in" in m.log()
    assert cpu_seconds(pid) - cpu < 1.0
    # once the crashes stop, a worker comes back and serves
    assert greeting(port, timeout=10) == b"* OK IMAP4 ready\r\n"
    os.kill(pid, signal.SIGQUIT)
    assert m.proc is not None and m.proc.wait(15) == 0


@pytest.mark.parametrize("kind", KIND)
def test_term_kills_a_worker_that_does_not_stop(kind, master):
    """TERM stops fast: a worker that has not gone after about 1.5 s is killed, so the
    master never waits forever (a stopped worker stands for a hung one)."""
    port = free_port()
    m = master(kind, no_auth_mail(port), daemon=False)
    pid = m.start(greet=port)
    hung, *_ = wait_for("the workers", lambda: len(m.watch(pid)) == 2 and sorted(m.watch(pid)))
    os.kill(hung, signal.SIGSTOP)
    started = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    assert m.proc is not None and m.proc.wait(10) == 0
    assert 1.0 < time.monotonic() - started < 5.0
    assert f"worker process {hung} exited on signal 9" in m.log()
    assert all(gone(p) for p in m.seen)
