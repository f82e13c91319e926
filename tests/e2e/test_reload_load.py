"""Nothing lost across reloads, upgrades and a killed worker, against nginx too: a login under
way when HUP comes completes; five HUPs a second apart (and a USR2 upgrade) under a login storm
with four long relays lose no login and no relayed byte, and the old workers go once their
sessions end; a SIGKILLed worker is replaced and serving within 2 s. Counts: support/load.py.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time

import pytest
from e2e.test_upgrade import LoginLoop, setup, upgrade

from support.clients import LineClient
from support.load import scale
from support.masters import children, gone, wait_for

KIND = ["fastmail", "nginx"]
MIB = 1 << 20


@pytest.mark.parametrize("kind", KIND)
def test_a_login_under_way_survives_a_reload(kind, master, authd, fake_backend, free_port):
    port, mail = setup(authd, fake_backend, free_port)
    m = master(kind, mail, daemon=False)
    pid = m.start(greet=port)
    first = wait_for("two workers", lambda: len(m.watch(pid)) == 2 and m.watch(pid))
    clients = [LineClient("127.0.0.1", port, timeout=10) for _ in range(4)]
    for c in clients:
        assert c.greeting().startswith(b"* OK")
    os.kill(pid, signal.SIGHUP)
    wait_for("new workers", lambda: len(m.watch(pid) - first) == 2)
    for c in clients:
        assert c.command("a LOGIN alice secret") == b"a OK LOGIN completed\r\n"
        assert c.command("b LOGOUT", until=b"b OK").endswith(b"b OK")
        c.close()
    wait_for("the old workers to exit", lambda: all(gone(w) for w in first))


class Relay(threading.Thread):
    """A logged-in IMAP session echoing `size` random bytes through the proxy, spread over
    about `seconds`; `digest_sent` and `digest_back` must match, `error` stays None."""

    def __init__(self, port: int, size: int, seconds: float) -> None:
        super().__init__(daemon=True)
        self.c = LineClient("127.0.0.1", port, timeout=20)
        assert self.c.greeting().startswith(b"* OK")
        assert self.c.command("a LOGIN alice secret") == b"a OK LOGIN completed\r\n"
        assert self.c.command(f"b X-ECHO {size}").endswith(b"ready\r\n")
        self.size = size
        self.seconds = seconds
        self.sent = hashlib.sha256()
        self.back = hashlib.sha256()
        self.error: str | None = None

    def run(self) -> None:
        chunk = 256 * 1024
        pause = self.seconds / (self.size / chunk)
        left = self.size
        sock = self.c.sock
        try:
            while left:
                data = os.urandom(min(chunk, left))
                self.sent.update(data)
                sock.sendall(data)
                got = 0
                while got < len(data):
                    piece = sock.recv(min(65536, len(data) - got))
                    if not piece:
                        raise ConnectionError(f"closed with {left - got} bytes to go")
                    self.back.update(piece)
                    got += len(piece)
                left -= len(data)
                time.sleep(pause)
            assert self.c.read_line() == b"b OK X-ECHO %d bytes\r\n" % self.size
            self.c.send_line("c LOGOUT")
            assert self.c.read_until(b"c OK").endswith(b"c OK")
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.error = repr(exc)
        finally:
            self.c.close()


def _storm(kind, master, authd, fake_backend, free_port, signals) -> None:
    """A login storm and four long relays while `signals(m, pid)` reloads or upgrades;
    returns once everything ended, having checked that nothing was lost."""
    port, mail = setup(authd, fake_backend, free_port)
    m = master(kind, mail)
    pid = m.start(greet=port)
    first = wait_for("two workers", lambda: len(m.watch(pid)) == 2 and m.watch(pid))
    size = scale(64, 8) * MIB
    relays = [Relay(port, size, 8.0) for _ in range(4)]
    with LoginLoop(port, threads=6, limit=120) as logins:
        for r in relays:
            r.start()
        logins.more()
        signals(m, pid)
        logins.more()
        for r in relays:
            r.join(120)
        logins.more()
    for r in relays:
        assert r.error is None
        assert r.sent.hexdigest() == r.back.hexdigest()
    assert logins.failures == []
    assert logins.ok >= 30
    wait_for("the first workers to exit", lambda: all(gone(w) for w in first), 15)


@pytest.mark.soak
@pytest.mark.parametrize("kind", KIND)
def test_five_reloads_under_load_lose_nothing(kind, master, authd, fake_backend, free_port):
    def reloads(m, pid) -> None:
        for _ in range(5):
            os.kill(pid, signal.SIGHUP)
            time.sleep(1)

    _storm(kind, master, authd, fake_backend, free_port, reloads)


@pytest.mark.soak
@pytest.mark.parametrize("kind", KIND)
def test_an_upgrade_under_load_loses_nothing(kind, master, authd, fake_backend, free_port):
    def upgrade_all(m, old) -> None:
        new = upgrade(m, old)
        time.sleep(1)
        os.kill(old, signal.SIGWINCH)
        time.sleep(1)
        os.kill(old, signal.SIGQUIT)
        m.new = new

    _storm(kind, master, authd, fake_backend, free_port, upgrade_all)


@pytest.mark.parametrize("kind", KIND)
def test_a_killed_worker_is_replaced_at_once(kind, master, authd, fake_backend, free_port):
    port, mail = setup(authd, fake_backend, free_port)
    m = master(kind, mail, daemon=False, workers=1)
    pid = m.start(greet=port)
    with LoginLoop(port, threads=3, limit=60) as logins:
        logins.more()
        (worker,) = m.watch(pid)
        os.kill(worker, signal.SIGKILL)
        killed = time.monotonic()
        wait_for("a new worker", lambda: children(pid) - {worker})
        logins.more(1, timeout=2)
        took = time.monotonic() - killed
    assert took < 2.0, took
    assert f"worker process {worker} exited on signal 9" in m.log()
    # the logins the killed worker had under way are the only ones lost
    assert len(logins.failures) <= 3, logins.failures
