"""`listen` forms beyond a plain IPv4 address: an IPv6 address and a unix socket, each with a
full login through the proxy to the fake backend (the same test against nginx)."""

from __future__ import annotations

import imaplib
import socket
import tempfile
import time
from pathlib import Path

from support.fastmail import add_user, mail_block


def wait_greeting(family: int, addr: str | tuple[str, int], timeout: float = 10.0) -> None:
    """The proxy is up once a connection gets the greeting (no PROXY header here)."""
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            try:
                s.connect(addr)
                if s.recv(5) == b"* OK ":
                    return
            except OSError:
                pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no greeting on {addr}")
        time.sleep(0.05)


class UnixIMAP(imaplib.IMAP4):
    def __init__(self, path: str) -> None:
        self._path = path
        super().__init__("localhost", 0, timeout=10)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(self._path)
        except OSError:
            s.close()
            raise
        return s


def test_ipv6_listen_serves_a_login(proxy, authd, fake_backend, free_port):
    add_user(authd, "alice", "secret", {"imap": ("127.0.0.1", fake_backend.port("imap"))})
    port = free_port("::1")
    servers = f"server {{ listen [::1]:{port}; protocol imap; }}"
    p = proxy(mail_block(authd, servers))
    wait_greeting(socket.AF_INET6, ("::1", port))
    with imaplib.IMAP4("::1", port, timeout=10) as imap:
        assert imap.welcome == b"* OK IMAP4 ready"
        assert imap.login("alice", "secret")[0] == "OK"
        assert imap.noop()[0] == "OK"
        imap.logout()
    assert authd.wait_for_requests(1)[0]["Client-IP"] == "::1"
    p.wait_log("client logged in, client: ::1, server: [::1]:")


def test_unix_socket_listen_serves_a_login(proxy, authd, fake_backend):
    add_user(authd, "alice", "secret", {"imap": ("127.0.0.1", fake_backend.port("imap"))})
    with tempfile.TemporaryDirectory(prefix="fastmail-unix-") as d:
        path = str(Path(d) / "imap.sock")
        servers = f"server {{ listen unix:{path}; protocol imap; }}"
        proxy(mail_block(authd, servers))
        wait_greeting(socket.AF_UNIX, path)
        imap = UnixIMAP(path)
        assert imap.welcome == b"* OK IMAP4 ready"
        assert imap.login("alice", "secret")[0] == "OK"
        imap.logout()
        assert authd.wait_for_requests(1)[0]["Client-IP"] == "unix:"
