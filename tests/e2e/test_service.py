"""The shipped service files (contrib/): both systemd units (Type=forking, Type=notify) pass
`systemd-analyze verify`; the very commands they run start, reload and stop fastmail (a
daemonized one; one in the foreground that tells a NOTIFY_SOCKET READY=1, RELOADING=1 and
STOPPING=1, through a binary upgrade too); the logrotate snippet is accepted by logrotate and
its postrotate makes fastmail reopen its logs."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.masters import gone, wait_for
from support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "contrib" / "systemd" / "fastmail.service"
NOTIFY_UNIT = ROOT / "contrib" / "systemd" / "fastmail-notify.service"
LOGROTATE = ROOT / "contrib" / "logrotate" / "fastmail"


def fastmail_bin() -> str:
    """The `fastmail` script of the Python running the tests (its venv's)."""
    path = Path(sys.executable).parent / "fastmail"
    if not path.exists():
        pytest.skip("no fastmail script next to the tests' Python (not an installed package)")
    return str(path)


def unit_for(tmp: Path, unit: Path = UNIT) -> str:
    """A shipped unit with its paths moved into `tmp` (binary, config, pid file)."""
    text = unit.read_text()
    text = text.replace("/opt/fastmail/bin/fastmail", fastmail_bin())
    text = text.replace("/etc/fastmail/fastmail.conf", str(tmp / "fastmail.conf"))
    return text.replace("/run/fastmail.pid", str(tmp / "fastmail.pid"))


def exec_lines(unit: str, key: str) -> list[list[str]]:
    """The commands of `key=` lines, split as systemd does for these simple lines."""
    out = []
    for line in unit.splitlines():
        if line.startswith(key + "="):
            cmd = line.split("=", 1)[1].lstrip("-")
            out.append(re.findall(r"'[^']*'|\S+", cmd))
    return [[w.strip("'") for w in c] for c in out]


@pytest.mark.parametrize("shipped", [UNIT, NOTIFY_UNIT], ids=["forking", "notify"])
def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path, shipped: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed (Debian's systemd package)")
    unit = tmp_path / "fastmail.service"
    unit.write_text(unit_for(tmp_path, shipped))
    (tmp_path / "fastmail.conf").write_text("events {}\n")
    out = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    # verify reports problems of the unit itself on stderr; an unrelated unit of the host
    # (missing from this container) must not count against ours
    ours = [ln for ln in out.stderr.splitlines() if "fastmail.service" in ln]
    assert out.returncode == 0 or not ours, out.stderr
    assert not ours, ours


def test_the_units_commands_start_reload_and_stop_fastmail(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "logs").mkdir()
    (tmp_path / "fastmail.conf").write_text(
        f"pid {tmp_path}/fastmail.pid;\nerror_log {tmp_path}/logs/error.log info;\n"
        "events { worker_connections 64; }\n"
        "mail { auth_http 127.0.0.1:9/auth;\n"
        f" server {{ listen 127.0.0.1:{port}; protocol imap; }} }}\n"
    )
    unit = unit_for(tmp_path)
    env = dict(os.environ, MAINPID="")
    (check,) = exec_lines(unit, "ExecStartPre")
    assert subprocess.run(check, cwd=tmp_path, timeout=60).returncode == 0
    (start,) = exec_lines(unit, "ExecStart")
    assert subprocess.run(start, cwd=tmp_path, timeout=60).returncode == 0  # daemonizes
    pidfile = tmp_path / "fastmail.pid"
    wait_for("the pid file", lambda: pidfile.exists() and pidfile.read_text().strip())
    master = int(pidfile.read_text())
    try:
        log = tmp_path / "logs" / "error.log"
        wait_for("a worker", lambda: "start worker process" in log.read_text())
        # reload: the config check, then HUP to $MAINPID
        test_cmd, kill_cmd = exec_lines(unit, "ExecReload")
        assert subprocess.run(test_cmd, cwd=tmp_path, timeout=60).returncode == 0
        kill_cmd = [w.replace("$MAINPID", str(master)) for w in kill_cmd]
        assert subprocess.run(kill_cmd, env=env, timeout=10).returncode == 0
        wait_for("the reload", lambda: "reconfiguring" in log.read_text())
        # logrotate's postrotate: USR1 reopens the log (a moved file is not written again)
        old = tmp_path / "logs" / "error.log.1"
        log.rename(old)
        rotate = re.search(r"postrotate\n(.*?)\n\s*endscript", LOGROTATE.read_text(), re.S)
        assert rotate is not None
        script = rotate.group(1).replace("/run/fastmail.pid", str(pidfile))
        assert subprocess.run(["sh", "-c", script], timeout=10).returncode == 0
        wait_for("the old log's last line", lambda: "reopening logs" in old.read_text())
        wait_for("the reopened log", log.exists)
        time.sleep(0.2)  # the workers got the signal too
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            assert c.recv(100).startswith(b"* OK")
        wait_for("a worker's line in the new log", lambda: "connected to" in log.read_text())
    finally:
        (stop,) = exec_lines(unit, "ExecStop")
        subprocess.run(stop, timeout=30)
    wait_for("the master's exit", lambda: gone(master), timeout=15)
    assert not pidfile.exists()


def test_logrotate_accepts_the_snippet(tmp_path: Path) -> None:
    if shutil.which("logrotate") is None:
        pytest.skip("logrotate not installed (Debian's logrotate package)")
    conf = tmp_path / "fastmail"
    conf.write_text(LOGROTATE.read_text().replace("/var/log/fastmail", str(tmp_path)))
    (tmp_path / "error.log").write_text("x\n")
    out = subprocess.run(
        ["logrotate", "-d", "-s", str(tmp_path / "state"), str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "error" not in out.stderr.lower().replace("error.log", ""), out.stderr


class NotifySocket:
    """A unix datagram socket standing for systemd's NOTIFY_SOCKET: the messages it got."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[dict[str, str]] = []

    def next(self, timeout: float = 10.0) -> dict[str, str]:
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode()
        msg = dict(line.split("=", 1) for line in data.splitlines() if line)
        self.messages.append(msg)
        return msg

    def close(self) -> None:
        self.sock.close()


def test_the_notify_units_commands_and_readiness(tmp_path: Path) -> None:
    """Type=notify: READY=1 from the master (MAINPID its pid) once it serves, RELOADING=1
    then READY=1 around a reload (a refused config too), STOPPING=1 on the stop command."""
    port = free_port()
    (tmp_path / "logs").mkdir()
    (tmp_path / "fastmail.conf").write_text(
        f"pid {tmp_path}/fastmail.pid;\nerror_log {tmp_path}/logs/error.log info;\n"
        "events { worker_connections 64; }\n"
        "mail { auth_http 127.0.0.1:9/auth;\n"
        f" server {{ listen 127.0.0.1:{port}; protocol imap; }} }}\n"
    )
    unit = unit_for(tmp_path, NOTIFY_UNIT)
    assert "Type=notify" in unit
    ns = NotifySocket(tmp_path / "notify")
    env = dict(os.environ, NOTIFY_SOCKET=str(ns.path))
    (check,) = exec_lines(unit, "ExecStartPre")
    assert subprocess.run(check, cwd=tmp_path, timeout=60, env=env).returncode == 0
    (start,) = exec_lines(unit, "ExecStart")
    proc = subprocess.Popen(start, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL)
    pids = {proc.pid}
    try:
        msg = ns.next()
        assert msg["READY"] == "1" and msg["MAINPID"] == str(proc.pid)  # in the foreground
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            assert c.recv(100).startswith(b"* OK")
        # reload: the check, then HUP to $MAINPID
        test_cmd, kill_cmd = exec_lines(unit, "ExecReload")
        assert subprocess.run(test_cmd, cwd=tmp_path, timeout=60, env=env).returncode == 0
        kill_cmd = [w.replace("$MAINPID", str(proc.pid)) for w in kill_cmd]
        assert subprocess.run(kill_cmd, timeout=10).returncode == 0
        msg = ns.next()
        assert msg["RELOADING"] == "1" and int(msg["MONOTONIC_USEC"]) > 0
        assert ns.next()["READY"] == "1"
        # a reload whose config is refused: the old one serves on, and says so
        conf = tmp_path / "fastmail.conf"
        conf.write_text(conf.read_text() + "bogus;\n")
        os.kill(proc.pid, signal.SIGHUP)
        assert ns.next()["RELOADING"] == "1"
        assert ns.next()["READY"] == "1"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            assert c.recv(100).startswith(b"* OK")
        (stop,) = exec_lines(unit, "ExecStop")
        stop = [w.replace("$MAINPID", str(proc.pid)) for w in stop]
        assert subprocess.run(stop, timeout=10).returncode == 0
        assert ns.next()["STOPPING"] == "1"
        assert proc.wait(15) == 0
    finally:
        for pid in pids:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait(5)
        ns.close()
