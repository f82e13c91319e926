"""The new binary's side of an upgrade (fastmail.upgrade): listening sockets named in
`FASTMAIL` (or nginx's `NGINX`) as `fd;fd;`, matched to `listen` addresses, with nginx's
messages for a variable it cannot read."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastmail.conf.model import Listen, LogTarget
from fastmail.log import ErrorLog
from fastmail.upgrade import inherited_sockets, listen_key


@pytest.fixture
def log(tmp_path: Path) -> Iterator[tuple[ErrorLog, Path]]:
    path = tmp_path / "error.log"
    log = ErrorLog([LogTarget(kind="file", path=str(path), level=8)])
    yield log, path
    log.close()


@pytest.fixture
def listening(tmp_path: Path) -> Iterator[list[socket.socket]]:
    socks = [socket.create_server(("127.0.0.1", 0))]
    if socket.has_ipv6:
        socks.append(socket.create_server(("::1", 0), family=socket.AF_INET6))
    u = socket.socket(socket.AF_UNIX)
    u.bind(str(tmp_path / "imap.sock"))
    u.listen()
    socks.append(u)
    yield socks
    for s in socks:
        s.close()


def listen_of(s: socket.socket) -> Listen:
    if s.family == socket.AF_UNIX:
        return Listen(s.family, "", 0, s.getsockname(), f"unix:{s.getsockname()}")
    host, port = s.getsockname()[:2]
    return Listen(s.family, host, port, None, f"{host}:{port}")


@pytest.mark.parametrize("name", ["FASTMAIL", "NGINX"])
def test_sockets_are_matched_to_their_listen(name, log, listening, monkeypatch) -> None:
    fds = [os.dup(s.fileno()) for s in listening]
    monkeypatch.setenv(name, "".join(f"{fd};" for fd in fds))
    got, inherited = inherited_sockets(log[0])
    try:
        assert inherited
        assert name not in os.environ  # workers and the next upgrade do not see it
        assert set(got) == {listen_key(listen_of(s)) for s in listening}
        for s in listening:
            assert got[listen_key(listen_of(s))].fileno() in fds
        assert not any(os.get_inheritable(fd) for fd in fds)
    finally:
        for s in got.values():
            s.close()
    assert f'using inherited sockets from "{";".join(map(str, fds))};"' in log[1].read_text()


def test_no_variable_no_sockets(log, monkeypatch) -> None:
    monkeypatch.delenv("FASTMAIL", raising=False)
    monkeypatch.delenv("NGINX", raising=False)
    assert inherited_sockets(log[0]) == ({}, False)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{fd};x;7;", 'invalid socket number "x;7;" in FASTMAIL environment variable, '
                      "ignoring the rest of the variable"),
        ("{fd};7", 'invalid socket number "7" in FASTMAIL environment variable, ignoring'),
    ],
)  # fmt: skip
def test_a_bad_number_is_nginx_emerg(text, message, log, monkeypatch) -> None:
    s = socket.create_server(("127.0.0.1", 0))
    fd = os.dup(s.fileno())
    s.close()
    monkeypatch.setenv("FASTMAIL", text.format(fd=fd))
    got, _ = inherited_sockets(log[0])
    assert len(got) == 1  # the valid one before the bad number is kept
    for sock in got.values():
        sock.close()
    assert f"[emerg] {os.getpid()}#{os.getpid()}: {message}" in log[1].read_text()


def test_a_descriptor_that_is_no_socket_is_ignored(log, monkeypatch) -> None:
    r, w = os.pipe()
    try:
        monkeypatch.setenv("FASTMAIL", f"{r};")
        assert inherited_sockets(log[0]) == ({}, True)
        os.fstat(r)  # left open: not ours to close
    finally:
        os.close(r)
        os.close(w)
    text = log[1].read_text()
    assert (
        f"[crit] {os.getpid()}#{os.getpid()}: getsockname() of the inherited socket #{r} failed (88: "
        in text
    )
