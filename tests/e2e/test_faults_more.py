"""More faults end to end, against nginx too: an auth server that hangs or trickles its answer
a byte at a time, backends that never greet or greet with 64 KiB. Every client gets nginx's
reply within the configured timeouts, and the proxy's fds and connections go back to their
baseline (test_faults.py has the rest: refused, garbage, 500, WAIT, closes).
"""

from __future__ import annotations

import time

import pytest
from e2e.test_faults import GREETING, INTERNAL_ERROR, PROTOCOLS, login, start

from fastmail.testing.authd import Reply
from support.fastmail import ScriptedBackend, add_user, read_line, wait_eof


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_auth_server_hangs(proxy, authd, free_port, line_client, protocol):
    authd.add_rule(lambda q: Reply.hang())
    p = start(proxy, authd, free_port, protocol, "auth_http_timeout 1s;")
    t0 = time.monotonic()
    assert login(line_client(p.port), protocol) == INTERNAL_ERROR[protocol]
    assert 0.9 < time.monotonic() - t0 < 3
    p.wait_log(f"auth http server 127.0.0.1:{authd.port} timed out (110: Connection timed out)")
    p.assert_no_leaks(p.base, p.ignore)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_auth_server_trickles(proxy, authd, free_port, line_client, protocol):
    """An answer a byte every 0.2 s: the whole header block must come within
    auth_http_timeout (nginx's read timer is not re-armed by each byte)."""

    def trickle(conn):
        while read_line(conn) not in (b"\r\n", b""):
            pass
        for b in b"HTTP/1.0 200 OK\r\nAuth-Status: Invalid login\r\n\r\n":
            conn.sendall(bytes([b]))
            time.sleep(0.2)

    auth = ScriptedBackend(trickle)
    try:
        p = start(proxy, authd, free_port, protocol, "auth_http_timeout 1s;",
                  auth_url=f"127.0.0.1:{auth.port}/auth")  # fmt: skip
        t0 = time.monotonic()
        assert login(line_client(p.port), protocol) == INTERNAL_ERROR[protocol]
        assert 0.9 < time.monotonic() - t0 < 3
        p.wait_log(f"auth http server 127.0.0.1:{auth.port} timed out")
        p.assert_no_leaks(p.base, [*p.ignore, auth.port])
    finally:
        auth.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_backend_never_greets(proxy, authd, free_port, line_client, protocol):
    be = ScriptedBackend(lambda conn: None if wait_eof(conn) else None)
    try:
        add_user(authd, "alice", "secret", {protocol: ("127.0.0.1", be.port)})
        p = start(proxy, authd, free_port, protocol, "timeout 1s;")
        t0 = time.monotonic()
        assert login(line_client(p.port), protocol) == INTERNAL_ERROR[protocol]
        assert time.monotonic() - t0 < 4
        p.wait_log("upstream timed out (110: Connection timed out)")
        p.assert_no_leaks(p.base, p.ignore)
    finally:
        be.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_backend_greets_with_64k(proxy, authd, free_port, line_client, protocol):
    def huge(conn):
        conn.sendall(GREETING[protocol] + b" " + b"x" * 65536 + b"\r\n")
        wait_eof(conn)

    be = ScriptedBackend(huge)
    try:
        add_user(authd, "alice", "secret", {protocol: ("127.0.0.1", be.port)})
        p = start(proxy, authd, free_port, protocol, "timeout 2s;")
        t0 = time.monotonic()
        assert login(line_client(p.port), protocol) == INTERNAL_ERROR[protocol]
        assert time.monotonic() - t0 < 4
        p.wait_log("upstream sent too long response line")
        p.assert_no_leaks(p.base, p.ignore)
    finally:
        be.close()
