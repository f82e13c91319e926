"""nginx's process model from the outside: a broken config never listens, a master with
workers serves, reloads on `-s reload` (old workers drain, new ones read the new config),
reopens its log on `-s reopen` and stops on `-s quit`, removing its pid file."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

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
