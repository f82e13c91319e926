"""fastmail itself as a process under test: `python -m fastmail` with a given mail config in a
temp prefix (master_process off, daemon off, error_log at info), the same shape as nginx.py's
runner so one test can drive either. Also what a leak check needs: the serving process's open
fds and its TCP connections, read from /proc.

Never touches the source tree or system paths; everything lives in the runner's temp dir.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from fastmail._session import DEBUG_BUILD

from .nginx import Nginx
from .process import Runner, wait_text

if TYPE_CHECKING:
    from fastmail.testing import LoopThread
    from fastmail.testing.authd import AuthServer, UserDB

CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {T}/fastmail.pid;
error_log {T}/error.log {level};
events {{
    worker_connections {connections};
}}
{main}
mail {{
{mail}
}}
"""

_TCP_STATES = {
    "01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1",
    "05": "FIN_WAIT2", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT",
    "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING",
}  # fmt: skip


def config_test(
    *args: str,
    cwd: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`fastmail -t ARGS` (`python -m fastmail`), as support.nginx.config_test runs nginx."""
    return subprocess.run(
        [sys.executable, "-m", "fastmail", "-t", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=env,
    )


class Fastmail(Runner):
    """fastmail running `mail { <mail> }`. `greetings` are (port, first-line prefix) pairs
    that must answer before `start()` returns, e.g. [(p, b"* OK")]."""

    name = "fastmail"
    log_names = ("error.log", "stderr.log")

    def __init__(
        self,
        mail: str,
        greetings: Iterable[tuple[int, bytes]] = (),
        main: str = "",
        log_level: str = "info",
        worker_connections: int = 1024,
    ) -> None:
        self.mail = mail
        self.main = main
        self.greetings = list(greetings)
        super().__init__("fastmail-proxy-")
        (self.dir / "logs").mkdir()  # the prefix's default log directory
        self.conf = self.dir / "fastmail.conf"
        self.conf.write_text(
            CONF.format(
                T=self.dir, level=log_level, main=main, mail=mail, connections=worker_connections
            )
        )

    def _cmd(self, *extra: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "fastmail",
            "-p",
            f"{self.dir}/",
            "-c",
            str(self.conf),
            *extra,
        ]

    def start(self, timeout: float = 15.0) -> Fastmail:
        # no separate `-t` run: a config error ends the process, and its log says why
        with open(self.dir / "stderr.log", "wb") as err:
            # cwd: in a source checkout `-m fastmail` must not pick up a stray ./fastmail; and
            # not the config's directory either, so that a path resolved against the cwd
            # instead of the prefix or the config's directory is found out
            cwd = self.dir / "cwd"
            cwd.mkdir(exist_ok=True)
            self.proc = subprocess.Popen(
                self._cmd(), stdout=subprocess.DEVNULL, stderr=err, cwd=cwd
            )
        try:
            self._wait_greetings(self.greetings, timeout)
        except BaseException as exc:
            log = self.error_log()
            self.stop()
            raise RuntimeError(f"fastmail did not start: {exc}\n{log[-3000:]}") from exc
        return self

    @property
    def serving_pid(self) -> int:
        """The process that holds the client sockets (the only one: master_process off)."""
        assert self.proc is not None and self.proc.poll() is None, "fastmail is not running"
        return self.proc.pid

    def error_log(self) -> str:
        return self._read_logs()

    def wait_log(self, text: str, timeout: float = 5.0) -> str:
        return wait_text(self.error_log, text, "fastmail error log", timeout, 0.02, 3000)

    def stop(self) -> None:
        """Stops fastmail; on the debug build, also its leak check: every worker that ended
        by its signal logged its counters at exit, and none was left alive."""
        if not DEBUG_BUILD or self.proc is None:
            super().stop()
            return
        proc = self.proc
        self._kill()
        log = self._read_logs()
        ended = proc.returncode in (0, -signal.SIGTERM)
        super().stop()
        leaks = [
            ln for ln in log.splitlines() if "debug counters at exit" in ln and "[alert]" in ln
        ]
        assert not leaks, "debug build: objects left alive at exit:\n" + "\n".join(leaks)
        if ended:
            assert "debug counters at exit" in log, "debug build: no counters logged at exit"


# ---------------------------------------------------------------------------------------------
# /proc: what a process holds open


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            out.add(target[8:-1])
    return out


def _addr(hexaddr: str) -> tuple[str, int]:
    host, port = hexaddr.split(":")
    if len(host) == 8:
        ip = ".".join(str(int(host[i : i + 2], 16)) for i in (6, 4, 2, 0))
    else:
        ip = host  # IPv6 left in /proc's form: tests only compare ports
    return ip, int(port, 16)


def _tcp_rows(pid: int) -> list[list[str]]:
    """The /proc/net/tcp{,6} rows of the TCP sockets the process holds."""
    inodes = _socket_inodes(pid)
    rows: list[list[str]] = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        rows.extend(cols for cols in map(str.split, lines) if cols[9] in inodes)
    return rows


def tcp_connections(pid: int) -> list[tuple[tuple[str, int], tuple[str, int], str]]:
    """(local, remote, state) of every TCP socket the process holds, listeners excluded."""
    return [
        (_addr(c[1]), _addr(c[2]), _TCP_STATES.get(c[3], c[3]))
        for c in _tcp_rows(pid)
        if c[3] != "0A"
    ]


def listening_ports(pid: int) -> set[int]:
    """The TCP ports the process listens on."""
    return {_addr(c[1])[1] for c in _tcp_rows(pid) if c[3] == "0A"}


# ---------------------------------------------------------------------------------------------
# The proxy under test, whichever it is


class Proxy:
    """A running proxy under test (fastmail or nginx), stopped by the fixture."""

    def __init__(self, runner: Fastmail | Nginx, kind: str) -> None:
        self.runner = runner
        self.kind = kind

    @property
    def pid(self) -> int:
        """The process holding client sockets: fastmail's only process, nginx's worker."""
        if isinstance(self.runner, Fastmail):
            return self.runner.serving_pid
        assert self.runner.proc is not None
        master = self.runner.proc.pid
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            kids = Path(f"/proc/{master}/task/{master}/children").read_text().split()
            if kids:
                return int(kids[0])
            time.sleep(0.02)
        raise RuntimeError("nginx has no worker process")

    def error_log(self) -> str:
        return self.runner.error_log()

    def wait_log(self, text: str, timeout: float = 5.0) -> str:
        return self.runner.wait_log(text, timeout)

    def wait_re(self, pattern: str, timeout: float = 5.0) -> re.Match[str]:
        """Waits until a log line matches the regex `pattern`; returns the match."""
        rx = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.error_log())
            if m:
                return m
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {pattern!r} in the log:\n{self.error_log()[-2000:]}")
            time.sleep(0.02)

    def wait_count(self, text: str, count: int, timeout: float = 5.0) -> str:
        """Waits until `text` occurs `count` times in the error log."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.error_log()
            if log.count(text) >= count:
                return log
            if time.monotonic() > deadline:
                raise TimeoutError(f"{text!r} not {count} times in the log:\n{log[-2000:]}")
            time.sleep(0.02)

    def fd_count(self) -> int:
        return fd_count(self.pid)

    def connections(self, ignore_ports: Iterable[int] = ()) -> list[object]:
        """TCP connections the proxy holds, except those to `ignore_ports` (e.g. the
        auth server, to which fastmail keeps idle keep-alive connections by design)."""
        skip = set(ignore_ports)
        return [c for c in tcp_connections(self.pid) if c[1][1] not in skip]

    def _settled(
        self, ignore: list[int]
    ) -> tuple[list[tuple[tuple[str, int], tuple[str, int], str]], int]:
        """(connections not to `ignore`, fds not counting connections to `ignore`)."""
        all_conns = tcp_connections(self.pid)
        conns = [c for c in all_conns if c[1][1] not in ignore]
        return conns, self.fd_count() - (len(all_conns) - len(conns))

    def baseline(self, ignore_ports: Iterable[int] = (), timeout: float = 3.0) -> int:
        """The fd count once no client or backend connection is open (readiness probes
        closed), not counting connections to `ignore_ports`: the auth server, to which
        fastmail keeps idle keep-alive connections by design."""
        ignore = list(ignore_ports)
        deadline = time.monotonic() + timeout
        while True:
            conns, fds = self._settled(ignore)
            if not conns or time.monotonic() > deadline:
                assert not conns, f"{self.kind} still holds {conns}"
                return fds
            time.sleep(0.02)

    def assert_no_leaks(
        self, baseline: int, ignore_ports: Iterable[int] = (), timeout: float = 3.0
    ) -> None:
        """Every client and backend socket is closed and the fd count is back to
        `baseline` (from `baseline()`, with the same `ignore_ports`)."""
        ignore = list(ignore_ports)
        deadline = time.monotonic() + timeout
        while True:
            conns, fds = self._settled(ignore)
            if not conns and fds <= baseline:
                return
            if time.monotonic() > deadline:
                targets = []
                for fd in sorted(os.listdir(f"/proc/{self.pid}/fd"), key=int):
                    try:
                        targets.append(f"{fd}->{os.readlink(f'/proc/{self.pid}/fd/{fd}')}")
                    except OSError:
                        pass
                raise AssertionError(
                    f"{self.kind} leaked: connections {conns}, {fds} fds > {baseline}: "
                    f"{targets}\n{self.error_log()[-2000:]}"
                )
            time.sleep(0.02)


def fastmail_only(proxy_kind: str, reason: str) -> None:
    """Skip the nginx parameter of a test of something nginx does not do."""
    if proxy_kind == "nginx":
        pytest.skip(f"beyond nginx: {reason}")


def mail_block(authd: AuthServer, servers: str, extra: str = "") -> str:
    return f"""
    server_name mx.test;
    auth_http {authd.url};
    {extra}
    {servers}
    """


def server(port: int, protocol: str, extra: str = "") -> str:
    return f"server {{ listen 127.0.0.1:{port}; protocol {protocol}; {extra} }}\n"


@contextlib.contextmanager
def running_authd(loop_thread: LoopThread, db: UserDB, fail_wait: int) -> Iterator[AuthServer]:
    """The reference auth_http server on `db` (closed with it), its failures answered with
    Auth-Wait: `fail_wait` (0: none, the proxy closes)."""
    from fastmail.testing.authd import AuthServer

    server = AuthServer(db, fail_wait=fail_wait)
    loop_thread.run(server.start())
    try:
        yield server
    finally:
        loop_thread.run(server.stop())
        db.close()


def add_user(
    authd: AuthServer,
    name: str,
    password: str,
    backends: Mapping[str, tuple[str, int] | list[tuple[str, int]]],
    store_plain: bool = False,
) -> None:
    """`backends` per protocol: (host, port), or a list of them (the next ones handed out
    when the proxy reports the earlier ones down)."""
    from fastmail.testing.authd import Backend

    def made(v: tuple[str, int] | list[tuple[str, int]]) -> Backend | list[Backend]:
        return [Backend(h, p) for h, p in v] if isinstance(v, list) else Backend(*v)

    authd.db.add_user(
        name,
        password,
        {p: made(v) for p, v in backends.items()},
        store_plain=store_plain,
        scrypt_ln=4,
    )


# ---------------------------------------------------------------------------------------------
# A backend that misbehaves on cue


class ScriptedBackend:
    """A TCP backend whose every connection runs `handler(conn)` in a thread: for faults the
    fake backend does not do (silence after the greeting, refusing XCLIENT, closing
    mid-login). `connections` counts accepts; `closed` is set when a handler saw EOF."""

    def __init__(self, handler: Callable[[socket.socket], None]) -> None:
        self.handler = handler
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.connections = 0
        self.closed = threading.Event()
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self._conns.append(conn)
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        try:
            self.handler(conn)
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()
        for c in self._conns:
            c.close()


def read_line(conn: socket.socket, timeout: float = 5.0) -> bytes:
    """One line from a raw socket (b"" at EOF), byte by byte: backends in tests are slow."""
    conn.settimeout(timeout)
    out = b""
    while not out.endswith(b"\n"):
        b = conn.recv(1)
        if not b:
            return out
        out += b
    return out


def wait_eof(conn: socket.socket, timeout: float = 10.0) -> bool:
    """True once the peer closed (EOF or reset), False on timeout."""
    conn.settimeout(timeout)
    try:
        while conn.recv(65536):
            pass
    except TimeoutError:
        return False
    except OSError:
        pass
    return True
