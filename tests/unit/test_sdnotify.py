"""sd_notify without libsystemd (fastmail/sdnotify.py): a path or an abstract socket name in
NOTIFY_SOCKET gets the datagram; without it, or with a socket nobody reads, nothing fails.
The master's messages end to end: tests/e2e/test_service.py."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from fastmail import sdnotify


def test_abstract_and_path_sockets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"fastmail-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.ready()
        assert s.recv(100) == f"READY=1\nMAINPID={os.getpid()}\nSTATUS=serving\n".encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(tmp_path / "n"))
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "n"))
        assert sdnotify.stopping()
        assert s.recv(100) == b"STOPPING=1\nSTATUS=stopping\n"


def test_nothing_to_tell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not sdnotify.ready()
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody"))
    assert not sdnotify.reloading()  # no such socket: ignored
