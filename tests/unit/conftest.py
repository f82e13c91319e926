"""Fixtures of the unit tests of the engine's auth_http client (support/authclient.py)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fastmail import _auth, _tls
from fastmail.testing import LoopThread
from fastmail.testing.authd import AuthServer, Backend, UserDB
from support.authclient import Harness, RawServer, open_fds
from support.fastmail import running_authd


@pytest.fixture
def harness(loop_thread: LoopThread) -> Iterator[Callable[..., Harness]]:
    """Harnesses, closed at teardown, which then checks that every fd the test opened in
    this process is closed again: request it first, so the servers stop before it checks
    (the session's loop thread stays)."""
    made: list[Harness] = []
    before = open_fds()

    def make(host: str | None, port: int, **kw: Any) -> Harness:
        h = Harness(host, port, **kw)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()
    assert _auth.live_count() == 0 and _tls.live_count() == 0  # counted in the debug build
    assert open_fds() == before  # no socket, epoll set or pipe left behind


@pytest.fixture
def users(loop_thread: LoopThread, tmp_path: Path) -> Iterator[AuthServer]:
    """authd with alice/secret (IMAP 127.0.0.1:1143) and a cheap password hash."""
    db = UserDB(tmp_path / "users.sqlite")
    db.add_user("alice", "secret", {"imap": Backend("127.0.0.1", 1143)}, scrypt_ln=4)
    with running_authd(loop_thread, db, 2) as server:
        yield server


@pytest.fixture
def raw() -> Iterator[Callable[[Callable[[socket.socket, int], None]], RawServer]]:
    made: list[RawServer] = []

    def make(handle: Callable[[socket.socket, int], None]) -> RawServer:
        s = RawServer(handle)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()
