"""The relay after the login: large random payloads each way with digests compared (echoed
by the fake backend, and independent payloads in both directions at once), pipelined
client bytes, proxy_timeout, and the half-close fastmail keeps where nginx closes both sides.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time

import pytest

from support.fastmail import ScriptedBackend, add_user, mail_block, read_line, server

MiB = 1024 * 1024


def start_imap(proxy, authd, free_port, be_port: int, extra: str = ""):
    add_user(authd, "alice", "secret", {"imap": ("127.0.0.1", be_port)})
    port = free_port()
    p = proxy(mail_block(authd, server(port, "imap", extra)), greetings=[(port, b"* OK")])
    p.port = port
    return p


def send_all(sock: socket.socket, data: bytes, errors: list[BaseException]) -> None:
    try:
        sock.sendall(data)
    except BaseException as exc:  # reported by the test thread
        errors.append(exc)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(1 << 20, n - len(buf)))
        if not chunk:
            raise ConnectionError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


@pytest.mark.parametrize("protocol", ["imap", "smtp"])
def test_echo_of_random_payload(proxy, authd, fake_backend, free_port, line_client, protocol):
    add_user(authd, "alice", "secret", {protocol: ("127.0.0.1", fake_backend.port(protocol))})
    port = free_port()
    extra = "smtp_auth plain;" if protocol == "smtp" else ""
    greeting = b"* OK" if protocol == "imap" else b"220 "
    p = proxy(mail_block(authd, server(port, protocol, extra)), greetings=[(port, greeting)])
    c = line_client(port, timeout=30)
    c.greeting()
    if protocol == "imap":
        assert c.command("a LOGIN alice secret") == b"a OK LOGIN completed\r\n"
    else:
        c.command("EHLO x", until=b"250 ")
        c.read_line()
        assert c.command("AUTH PLAIN AGFsaWNlAHNlY3JldA==").startswith(b"235 ")
    payload = os.urandom(24 * MiB)
    c.send_line(f"t X-ECHO {len(payload)}" if protocol == "imap" else f"X-ECHO {len(payload)}")
    assert c.read_line().endswith(b"ready\r\n")
    errors: list[BaseException] = []
    sender = threading.Thread(target=send_all, args=(c.sock, payload, errors))
    sender.start()
    c.sock.settimeout(30)
    echoed = c.buf + recv_exactly(c.sock, len(payload) - len(c.buf))
    c.buf = b""
    sender.join(30)
    assert not errors
    assert hashlib.sha256(echoed).hexdigest() == hashlib.sha256(payload).hexdigest()
    assert c.read_line().endswith(b"X-ECHO %d bytes\r\n" % len(payload))
    c.close()
    p.wait_log("proxied session done")


def test_independent_payloads_both_ways(proxy, authd, free_port, line_client):
    """The backend streams its own 16 MiB while it takes the client's 16 MiB: both
    directions full at once, neither may stall, lose or reorder a byte."""
    down = os.urandom(16 * MiB)
    up_size = 16 * MiB
    got_up: list[str] = []

    def backend(conn: socket.socket) -> None:
        conn.sendall(b"+OK pop3 ready\r\n")
        assert read_line(conn).startswith(b"USER ")
        conn.sendall(b"+OK\r\n")
        assert read_line(conn).startswith(b"PASS ")
        conn.sendall(b"+OK logged in\r\n")
        errors: list[BaseException] = []
        t = threading.Thread(target=send_all, args=(conn, down, errors))
        t.start()
        conn.settimeout(30)
        got_up.append(hashlib.sha256(recv_exactly(conn, up_size)).hexdigest())
        t.join(30)
        conn.sendall(f"+OK {got_up[0]}\r\n".encode())
        conn.recv(1)  # until the proxy closes

    be = ScriptedBackend(backend)
    try:
        add_user(authd, "alice", "secret", {"pop3": ("127.0.0.1", be.port)})
        port = free_port()
        proxy(mail_block(authd, server(port, "pop3")), greetings=[(port, b"+OK")])
        c = line_client(port, timeout=30)
        c.greeting()
        c.command("USER alice")
        assert c.command("PASS secret") == b"+OK logged in\r\n"
        up = os.urandom(up_size)
        errors: list[BaseException] = []
        sender = threading.Thread(target=send_all, args=(c.sock, up, errors))
        sender.start()
        c.sock.settimeout(30)
        received = c.buf + recv_exactly(c.sock, len(down) - len(c.buf))
        c.buf = b""
        sender.join(30)
        assert not errors
        assert hashlib.sha256(received).digest() == hashlib.sha256(down).digest()
        assert c.read_line() == f"+OK {hashlib.sha256(up).hexdigest()}\r\n".encode()
    finally:
        be.close()


def test_pipelined_commands_after_login(proxy, authd, dovecot, free_port, line_client):
    """Bytes the client sent right behind its login reach the backend first (nginx keeps
    them in its buffer; fastmail hands them to the relay)."""
    p = start_imap(proxy, authd, free_port, dovecot.imap_port)
    c = line_client(p.port)
    c.greeting()
    c.send(b"a LOGIN alice secret\r\nb SELECT INBOX\r\nc LOGOUT\r\n")
    out = c.read_all(timeout=10)
    a, b, end = out.index(b"a OK "), out.index(b"\r\nb OK [READ-WRITE]"), out.index(b"\r\nc OK")
    assert 0 <= a < out.index(b"* 3 EXISTS\r\n") < b < out.index(b"* BYE") < end
    c.close()  # fastmail forwarded Dovecot's FIN and waits for the client's
    p.wait_log("proxied session done")


def test_proxy_timeout_closes_idle_session(proxy, authd, fake_backend, free_port, line_client):
    p = start_imap(proxy, authd, free_port, fake_backend.port("imap"), "proxy_timeout 700ms;")
    c = line_client(p.port)
    c.greeting()
    assert c.command("a LOGIN alice secret") == b"a OK LOGIN completed\r\n"
    assert c.read_all(timeout=5) == b""
    p.wait_log(
        "client timed out (110: Connection timed out) while proxying, client: 127.0.0.1, "
        "server: 127.0.0.1:"
    )
    deadline = time.monotonic() + 3
    while not fake_backend.sessions[-1].closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake_backend.sessions[-1].closed  # the backend side is closed too


def test_client_half_close_still_gets_reply(proxy, authd, dovecot, free_port, line_client):
    p = start_imap(proxy, authd, free_port, dovecot.imap_port)
    if p.kind == "nginx":
        pytest.skip(
            "beyond nginx: it closes both sides on the client's FIN, so LOGOUT's reply is "
            "lost; fastmail forwards the FIN and keeps the reply path open"
        )
    c = line_client(p.port)
    c.greeting()
    assert c.command("a LOGIN alice secret").startswith(b"a OK")
    c.send(b"b LOGOUT\r\n")
    c.sock.shutdown(socket.SHUT_WR)
    out = c.read_all(timeout=5)
    assert out.startswith(b"* BYE Logging out\r\n") and b"\r\nb OK Logout completed" in out
    p.wait_log("proxied session done")
