"""The binary upgrade, as nginx's "Upgrading Executable on the Fly": USR2 to a daemonized
master starts a new master on the same listening sockets (pid file -> `.oldbin`), WINCH
retires the old workers, QUIT ends the old master once its sessions are done. A session
relaying through an old worker goes on byte for byte until it ends, and a login loop running
all along loses no login. Also the rollback (HUP to the old master, QUIT to the new one) and
a live move from nginx to fastmail (nginx's binary replaced by fastmail, then USR2)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from support.clients import LineClient
from support.fastmail import add_user, mail_block, server
from support.masters import Master, children, gone, wait_for
from support.process import find_binary

KIND = ["fastmail", "nginx"]
CHUNK = 64 * 1024
ECHO = 8 * CHUNK  # bytes the long session has its backend echo


class LoginLoop:
    """`threads` clients logging in and out over and over, a little apart, until stopped
    (at most `limit` seconds): how many logins worked, and every failure."""

    def __init__(self, port: int, threads: int = 3, limit: float = 60.0) -> None:
        self.port = port
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._deadline = time.monotonic() + limit
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> LoginLoop:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)

    def _once(self) -> None:
        with LineClient("127.0.0.1", self.port, timeout=5) as c:
            assert c.greeting().startswith(b"* OK")
            assert c.command("a LOGIN alice secret") == b"a OK LOGIN completed\r\n"
            c.send_line("b LOGOUT")
            assert c.read_until(b"b OK").endswith(b"b OK")

    def _run(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            try:
                self._once()
                with self._lock:
                    self.ok += 1
            except (OSError, AssertionError, ConnectionError) as exc:
                with self._lock:
                    self.failures.append(repr(exc))
            time.sleep(0.01)

    def more(self, n: int = 5, timeout: float = 15.0) -> None:
        """Waits until `n` more logins have worked."""
        target = self.ok + n
        wait_for(f"{n} more logins", lambda: self.ok >= target, timeout)


class Session:
    """A logged-in IMAP session whose backend echoes the next ECHO bytes: `echo()` sends
    random bytes and checks they come back byte for byte; `end()` echoes the rest, reads the
    backend's done line and logs out."""

    def __init__(self, port: int) -> None:
        self.c = LineClient("127.0.0.1", port, timeout=10)
        assert self.c.greeting().startswith(b"* OK")
        assert self.c.command("a LOGIN alice secret") == b"a OK LOGIN completed\r\n"
        assert self.c.command(f"b X-ECHO {ECHO}").endswith(b"ready\r\n")
        self.left = ECHO

    def echo(self, size: int = CHUNK) -> None:
        data = os.urandom(size)
        self.c.send(data)
        assert self.c.read_until(data[-16:], timeout=10) == data
        self.left -= size

    def end(self) -> None:
        if self.left:
            self.echo(self.left)
        assert self.c.read_line() == b"b OK X-ECHO %d bytes\r\n" % ECHO
        self.c.send_line("c LOGOUT")
        assert self.c.read_until(b"c OK").endswith(b"c OK")
        self.c.close()


def setup(authd, fake_backend, free_port) -> tuple[int, str]:
    add_user(authd, "alice", "secret", {"imap": ("127.0.0.1", fake_backend.port("imap"))})
    port = free_port()
    return port, mail_block(authd, server(port, "imap"))


def upgrade(m: Master, old: int) -> int:
    """USR2 to `old`; returns the new master's pid once it has its workers."""
    os.kill(old, signal.SIGUSR2)
    new = wait_for("the new pid file", lambda: m.read_pid() not in (0, old) and m.read_pid())
    assert m.read_pid(m.oldbin) == old
    wait_for("the new workers", lambda: len(m.watch(new)) == 2)
    return new


@pytest.mark.parametrize("kind", KIND)
def test_upgrade_under_load_loses_nothing(kind, master, authd, fake_backend, free_port):
    port, mail = setup(authd, fake_backend, free_port)
    m = master(kind, mail)
    old = m.start(greet=port)
    first = wait_for("two workers", lambda: len(m.watch(old)) == 2 and m.watch(old))
    # the daemon's own pid in its lines, not the pid it had before it forked
    assert f"] {old}#{old}: start worker process" in m.log()
    session = Session(port)
    session.echo()
    early = LineClient("127.0.0.1", port, timeout=10)  # an old worker's, not logged in yet
    assert early.greeting().startswith(b"* OK")
    with LoginLoop(port) as logins:
        logins.more()
        new = upgrade(m, old)
        assert children(new).isdisjoint(first)
        logins.more()  # both sets of workers accept
        session.echo()

        os.kill(old, signal.SIGWINCH)  # the old workers stop accepting; the session's stays
        time.sleep(0.2)
        # a login under way when its worker was told to stop completes, as nginx's do
        assert early.command("a LOGIN alice secret") == b"a OK LOGIN completed\r\n"
        assert early.command("b LOGOUT", until=b"b OK").endswith(b"b OK")
        early.close()
        # (the new master is the old one's child too)
        wait_for("the idle old worker to exit", lambda: len(children(old) - {new}) == 1)
        logins.more()
        session.echo()

        os.kill(old, signal.SIGQUIT)  # the old master waits for its last worker
        logins.more()
        assert not gone(old)
        session.echo()
        session.end()
        wait_for("the old master to exit", lambda: gone(old))
        logins.more()
    assert logins.failures == []
    assert logins.ok >= 25
    assert all(gone(pid) for pid in first)
    assert not m.oldbin.exists()
    assert m.read_pid() == new
    assert len(children(new)) == 2

    os.kill(new, signal.SIGQUIT)
    wait_for("the new master to exit", lambda: gone(new))
    assert not m.pid_file.exists()
    assert all(gone(pid) for pid in m.seen)


@pytest.mark.parametrize("kind", KIND)
def test_rollback_to_the_old_master(kind, master, authd, fake_backend, free_port):
    """After USR2 and WINCH, HUP brings the old master's workers back; once the new master
    has quit, the old one is the master again: its pid file is back in place."""
    port, mail = setup(authd, fake_backend, free_port)
    m = master(kind, mail)
    old = m.start(greet=port)
    new = upgrade(m, old)
    os.kill(old, signal.SIGWINCH)
    wait_for("the old workers to exit", lambda: children(old) == {new})
    # a second USR2 is refused while both masters run
    os.kill(old, signal.SIGUSR2)
    os.kill(new, signal.SIGUSR2)
    wait_for(
        "the refusals",
        lambda: m.log().count("the changing binary signal is ignored") == 2,
    )

    os.kill(old, signal.SIGHUP)
    wait_for("the old master's workers", lambda: len(m.watch(old) - {new}) == 2)
    back = children(old) - {new}
    os.kill(new, signal.SIGQUIT)
    wait_for("the new master to exit", lambda: gone(new))
    wait_for("the pid file to be the old master's", lambda: m.read_pid() == old)
    assert not m.oldbin.exists()
    with LoginLoop(port, threads=1) as logins:
        logins.more(3)
    assert logins.failures == []
    assert children(old) == back
    os.kill(old, signal.SIGQUIT)
    wait_for("the old master to exit", lambda: gone(old))
    assert not m.pid_file.exists()


def test_live_move_from_nginx_to_fastmail(master, authd, fake_backend, free_port, tmp_path):
    """nginx's USR2 runs the program it was started as, with its sockets in `NGINX`: when
    that program is now fastmail, fastmail takes the sockets over and nginx retires."""
    port, mail = setup(authd, fake_backend, free_port)
    path = tmp_path / "mailproxy"  # what nginx runs again on USR2
    path.symlink_to(find_binary("nginx", "nginx-light"))
    m = master("nginx", mail, program=str(path))
    old = m.start(greet=port)
    session = Session(port)
    session.echo()
    path.unlink()  # the "upgrade": the program is fastmail now (nginx passes no PATH)
    path.write_text(f'#!/bin/sh\nexec {sys.executable} -m fastmail "$@"\n')
    path.chmod(0o755)
    new = upgrade(m, old)
    assert b"fastmail" in Path(f"/proc/{new}/cmdline").read_bytes()
    os.kill(old, signal.SIGWINCH)
    os.kill(old, signal.SIGQUIT)
    with LoginLoop(port, threads=1) as logins:
        logins.more(3)
        session.echo()  # nginx's worker still relays it
        session.end()
        wait_for("nginx to exit", lambda: gone(old))
    assert logins.failures == []
    assert 'using inherited sockets from "' in m.log()
    with contextlib.closing(socket.create_connection(("127.0.0.1", port), timeout=5)) as s:
        assert s.recv(100) == b"* OK IMAP4 ready\r\n"
    os.kill(new, signal.SIGQUIT)
    wait_for("fastmail to exit", lambda: gone(new))


@pytest.mark.parametrize("kind", KIND)
def test_a_new_binary_that_fails_leaves_the_old_master_in_charge(
    kind, master, authd, fake_backend, free_port
):
    """USR2 after a bad edit of the config: the new master exits at once, the old one renames
    `.oldbin` back and goes on serving."""
    port, mail = setup(authd, fake_backend, free_port)
    m = master(kind, mail)
    old = m.start(greet=port)
    m.conf.write_text(m.conf.read_text() + "bogus_directive on;\n")
    os.kill(old, signal.SIGUSR2)
    wait_for("the new binary to fail", lambda: "new binary process" in m.log() and (
        "exited with code 1" in m.log()
    ))  # fmt: skip
    wait_for("the pid file back", lambda: m.read_pid() == old)
    assert not m.oldbin.exists()
    assert 'unknown directive "bogus_directive"' in m.log()
    with LoginLoop(port, threads=1) as logins:
        logins.more(3)
    assert logins.failures == []
    assert len(children(old)) == 2
