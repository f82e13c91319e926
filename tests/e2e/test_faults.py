"""Faults end to end, each with nginx's client reply, a log line and no leaked socket (the
proxy's fds and TCP connections back to their baseline): the auth server down, slow past
auth_http_timeout, answering garbage or 500; the backend down, refusing the login, closing
mid-login or mid-session; the client vanishing at every stage of a session.
"""

from __future__ import annotations

import socket
import struct
import time

import pytest

from fastmail.testing.authd import Reply
from support.fastmail import (
    ScriptedBackend,
    add_user,
    mail_block,
    read_line,
    server,
    wait_eof,
)

GREETING = {"imap": b"* OK", "pop3": b"+OK", "smtp": b"220 "}
INTERNAL_ERROR = {
    "imap": b"* BAD internal server error\r\n",
    "pop3": b"-ERR internal server error\r\n",
    "smtp": b"451 4.3.2 Internal server error\r\n",
}
PROTOCOLS = ["imap", "pop3", "smtp"]


def start(proxy, authd, free_port, protocol: str, extra: str = "", auth_url: str | None = None):
    port = free_port()
    mail = mail_block(authd, server(port, protocol, extra))
    if auth_url is not None:
        mail = mail.replace(authd.url, auth_url)
    p = proxy(mail, greetings=[(port, GREETING[protocol])])
    p.port = port
    p.ignore = [authd.port]
    p.base = p.baseline(p.ignore)
    return p


def login(c, protocol: str, user: str = "alice", password: str = "secret") -> bytes:
    """Greeting and login; returns everything the proxy said after the login command(s)."""
    assert c.greeting().startswith(GREETING[protocol])
    if protocol == "imap":
        c.send_line(f"a LOGIN {user} {password}")
    elif protocol == "pop3":
        assert c.command(f"USER {user}") == b"+OK\r\n"
        c.send_line(f"PASS {password}")
    else:
        c.command("EHLO client.example", until=b"250 ")
        c.read_line()
        import base64

        ir = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        c.send_line(f"AUTH PLAIN {ir}")
    return c.read_all(timeout=5)


def linger0(c) -> None:
    """Close with a reset, as a client that crashed or lost its network."""
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()


# ---------------------------------------------------------------------------------------------
# the auth server


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_auth_server_down(proxy, authd, free_port, line_client, protocol):
    p = start(proxy, authd, free_port, protocol, auth_url=f"127.0.0.1:{free_port()}/auth")
    assert login(line_client(p.port), protocol) == INTERNAL_ERROR[protocol]
    # nginx reports the refused connect on its first recv(); fastmail on connect()
    p.wait_log("failed (111: Connection refused) while in http auth state, client: 127.0.0.1")
    p.assert_no_leaks(p.base, p.ignore)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_auth_server_slow(proxy, authd, free_port, line_client, protocol):
    authd.add_rule(lambda q: Reply.slow(5))
    p = start(proxy, authd, free_port, protocol, "auth_http_timeout 500ms;")
    t0 = time.monotonic()
    assert login(line_client(p.port), protocol) == INTERNAL_ERROR[protocol]
    assert 0.4 < time.monotonic() - t0 < 3
    p.wait_log(
        f"auth http server 127.0.0.1:{authd.port} timed out (110: Connection timed out) "
        "while in http auth state"
    )
    p.assert_no_leaks(p.base, p.ignore)


@pytest.mark.parametrize(
    ("reply", "log"),
    [
        (
            Reply.garbage,
            "sent invalid header in response "
            "while in http auth state, client: 127.0.0.1, server: 127.0.0.1:",
        ),
        # nginx reads the headers of any status; a 500 without Auth-Status names no backend
        (Reply.http_error, "did not send server or port"),
    ],
    ids=["garbage", "500"],
)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_auth_server_bad_answer(proxy, authd, free_port, line_client, protocol, reply, log):
    authd.add_rule(lambda q: reply())
    p = start(proxy, authd, free_port, protocol)
    assert login(line_client(p.port), protocol) == INTERNAL_ERROR[protocol]
    p.wait_log(f"auth http server 127.0.0.1:{authd.port} {log}")
    p.assert_no_leaks(p.base, p.ignore)


# ---------------------------------------------------------------------------------------------
# the backend


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_backend_down(proxy, authd, free_port, line_client, protocol):
    dead = free_port()
    add_user(authd, "alice", "secret", {protocol: ("127.0.0.1", dead)})
    p = start(proxy, authd, free_port, protocol)
    assert login(line_client(p.port), protocol) == INTERNAL_ERROR[protocol]
    p.wait_log(
        "failed (111: Connection refused) while "  # nginx: recv() on reading; fastmail: connect()
    )
    log = p.wait_log(f'login: "alice", upstream: 127.0.0.1:{dead}')
    assert "[error]" in log
    p.assert_no_leaks(p.base, p.ignore)


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
@pytest.mark.parametrize("pass_error", ["off", "on"])
def test_dovecot_refuses_login(proxy, authd, dovecot, free_port, line_client, protocol, pass_error):
    # authd knows mallory, Dovecot does not
    port = dovecot.imap_port if protocol == "imap" else dovecot.pop3_port
    add_user(authd, "mallory", "pw", {protocol: ("127.0.0.1", port)})
    p = start(proxy, authd, free_port, protocol, f"proxy_pass_error_message {pass_error};")
    reply = login(line_client(p.port), protocol, "mallory", "pw")
    if pass_error == "off":
        assert reply == INTERNAL_ERROR[protocol]
    elif protocol == "imap":
        assert reply == b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
    else:
        assert reply == b"-ERR [AUTH] Authentication failed.\r\n"
    log = p.wait_log("upstream sent invalid response: ")
    assert "while reading response from upstream" in log
    p.assert_no_leaks(p.base, p.ignore)


def test_postfix_refuses_xclient(proxy, authd, free_port, line_client):
    def refuse(conn):
        conn.sendall(b"220 strict.example ESMTP\r\n")
        assert read_line(conn).startswith(b"EHLO ")
        conn.sendall(b"250-strict.example\r\n250-XCLIENT ADDR NAME LOGIN\r\n250 8BITMIME\r\n")
        assert read_line(conn).startswith(b"XCLIENT ")
        conn.sendall(b"550 5.7.0 Error: insufficient XCLIENT permissions\r\n")
        wait_eof(conn)

    be = ScriptedBackend(refuse)
    try:
        add_user(authd, "alice", "secret", {"smtp": ("127.0.0.1", be.port)})
        p = start(proxy, authd, free_port, "smtp")
        assert login(line_client(p.port), "smtp") == INTERNAL_ERROR["smtp"]
        p.wait_log(
            'upstream sent invalid response: "550 5.7.0 Error: insufficient XCLIENT '
            'permissions" while reading response from upstream'
        )
        p.assert_no_leaks(p.base, p.ignore)
    finally:
        be.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_backend_closes_mid_login(proxy, authd, free_port, line_client, protocol):
    def greet_then_close(conn):
        conn.sendall(GREETING[protocol] + b" hello\r\n")
        read_line(conn)
        conn.close()

    be = ScriptedBackend(greet_then_close)
    try:
        add_user(authd, "alice", "secret", {protocol: ("127.0.0.1", be.port)})
        p = start(proxy, authd, free_port, protocol)
        assert login(line_client(p.port), protocol) == INTERNAL_ERROR[protocol]
        if p.kind == "fastmail":
            # beyond nginx, which closes without a word (ngx_mail_proxy_upstream_error)
            p.wait_re(
                r"\[error\] .*upstream prematurely closed connection while reading response "
                r"from upstream, client: 127\.0\.0\.1, .*login: \"alice\""
            )
        p.assert_no_leaks(p.base, p.ignore)
    finally:
        be.close()


def test_backend_silent_past_timeout(proxy, authd, free_port, line_client):
    def silent(conn):
        wait_eof(conn)

    be = ScriptedBackend(silent)
    try:
        add_user(authd, "alice", "secret", {"imap": ("127.0.0.1", be.port)})
        p = start(proxy, authd, free_port, "imap", "timeout 1s;")
        assert login(line_client(p.port), "imap") == INTERNAL_ERROR["imap"]
        # the backend accepted but never greeted: nginx's action is still the connect
        p.wait_re(
            r"\[info\] .*upstream timed out \(110: Connection timed out\) while connecting "
            r"to upstream, client: 127\.0\.0\.1, .*upstream: 127\.0\.0\.1:"
        )
        p.assert_no_leaks(p.base, p.ignore)
    finally:
        be.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_backend_closes_mid_session(
    proxy, authd, fake_backend, loop_thread, free_port, line_client, protocol
):
    add_user(authd, "alice", "secret", {protocol: ("127.0.0.1", fake_backend.port(protocol))})
    p = start(proxy, authd, free_port, protocol)
    warm_up(p, protocol, line_client)
    base = p.baseline(p.ignore)
    c = line_client(p.port)
    greet_and_login(c, protocol)
    loop_thread.call(lambda: fake_backend.sessions[-1].abort())
    assert c.read_all(timeout=5) == b""
    c.close()  # fastmail half-closed towards the client and waits for it; nginx closed both
    log = p.wait_count("proxied session done, client: 127.0.0.1, server: 127.0.0.1:", 2)
    assert log.count('login: "alice", upstream: 127.0.0.1:') >= 4  # logged in + done, twice
    p.assert_no_leaks(base, p.ignore)


def greet_and_login(c, protocol: str) -> None:
    assert c.greeting().startswith(GREETING[protocol])
    if protocol == "imap":
        assert c.command("a LOGIN alice secret") == b"a OK LOGIN completed\r\n"
    elif protocol == "pop3":
        c.command("USER alice")
        assert c.command("PASS secret") == b"+OK logged in\r\n"
    else:
        c.command("EHLO client.example", until=b"250 ")
        c.read_line()
        assert c.command("AUTH PLAIN AGFsaWNlAHNlY3JldA==").startswith(b"235 ")


def warm_up(p, protocol: str, line_client) -> None:
    """One whole session first, so that pooled resources (relay pipes, auth connections)
    exist before the baseline is taken."""
    c = line_client(p.port)
    greet_and_login(c, protocol)
    c.close()
    p.wait_log("proxied session done")


# ---------------------------------------------------------------------------------------------
# the client vanishing


def test_client_gone_before_greeting(proxy, authd, free_port, line_client):
    p = start(proxy, authd, free_port, "smtp", "smtp_greeting_delay 500ms;")
    for _ in range(3):
        c = line_client(p.port)
        linger0(c)
    c = line_client(p.port)
    c.close()
    p.wait_log("client 127.0.0.1:", timeout=2)
    p.assert_no_leaks(p.base, p.ignore)
    # the proxy still serves
    c = line_client(p.port)
    assert c.greeting().startswith(b"220 ")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_client_gone_mid_command(proxy, authd, free_port, line_client, protocol):
    p = start(proxy, authd, free_port, protocol)
    c = line_client(p.port)
    c.greeting()
    c.send(b"a LOGIN ali" if protocol == "imap" else b"USER ali" if protocol == "pop3" else b"EH")
    time.sleep(0.1)
    linger0(c)
    p.assert_no_leaks(p.base, p.ignore)
    assert len(authd.requests) == 0  # half a command never reaches the auth server


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_clients_resetting_while_answered_leave_the_server_serving(
    proxy, authd, fake_backend, free_port, protocol
):
    """Clients that send a burst of binary junk (a TLS ClientHello on a plain port) and
    reset before the replies are written: every write to them fails, and the proxy goes on
    serving (fastmail's engine once crashed on a failed write to such a client)."""
    add_user(authd, "alice", "secret", {protocol: ("127.0.0.1", fake_backend.port(protocol))})
    p = start(proxy, authd, free_port, protocol)
    junk = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)) * 2 + b"\r\n" * 20
    for _ in range(40):
        s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
        s.sendall(junk)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s, s.makefile("rb") as f:
        assert f.readline().startswith(GREETING[protocol])
    p.assert_no_leaks(p.base, p.ignore)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_client_gone_during_auth(proxy, authd, fake_backend, free_port, line_client, protocol):
    add_user(authd, "alice", "secret", {protocol: ("127.0.0.1", fake_backend.port(protocol))})
    authd.add_rule(lambda q: Reply.slow(0.5))
    p = start(proxy, authd, free_port, protocol)
    warm_up(p, protocol, line_client)
    base = p.baseline(p.ignore)
    c = line_client(p.port)
    c.greeting()
    if protocol == "imap":
        c.send_line("a LOGIN alice secret")
    elif protocol == "pop3":
        c.command("USER alice")
        c.send_line("PASS secret")
    else:
        c.command("EHLO x", until=b"250 ")
        c.send_line("AUTH PLAIN AGFsaWNlAHNlY3JldA==")
    authd.wait_for_requests(2)
    c.close()
    time.sleep(0.7)  # the auth server answers; nginx then logs in and sees EOF in the relay
    p.assert_no_leaks(base, p.ignore)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_client_gone_during_backend_login(proxy, authd, free_port, line_client, protocol):
    def slow_greeting(conn):
        time.sleep(0.5)
        try:
            conn.sendall(GREETING[protocol] + b" late\r\n")
        except OSError:
            return
        wait_eof(conn)

    be = ScriptedBackend(slow_greeting)
    try:
        add_user(authd, "alice", "secret", {protocol: ("127.0.0.1", be.port)})
        p = start(proxy, authd, free_port, protocol, "timeout 2s;")
        c = line_client(p.port)
        c.greeting()
        if protocol == "imap":
            c.send_line("a LOGIN alice secret")
        elif protocol == "pop3":
            c.command("USER alice")
            c.send_line("PASS secret")
        else:
            c.command("EHLO x", until=b"250 ")
            c.send_line("AUTH PLAIN AGFsaWNlAHNlY3JldA==")
        deadline = time.monotonic() + 5
        while be.connections == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert be.connections == 1
        linger0(c)
        p.assert_no_leaks(p.base, p.ignore, timeout=4)
    finally:
        be.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_client_gone_during_relay(proxy, authd, fake_backend, free_port, line_client, protocol):
    add_user(authd, "alice", "secret", {protocol: ("127.0.0.1", fake_backend.port(protocol))})
    p = start(proxy, authd, free_port, protocol)
    warm_up(p, protocol, line_client)
    base = p.baseline(p.ignore)
    c = line_client(p.port)
    greet_and_login(c, protocol)
    c.send(b"b X-BULK 10000000\r\n" if protocol == "imap" else b"X-BULK 10000000\r\n")
    # the backend is still writing when the client resets
    c.read_until(b"ready\r\n")
    linger0(c)
    deadline = time.monotonic() + 5
    while not fake_backend.sessions[-1].closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake_backend.sessions[-1].closed
    # nginx and fastmail alike: the reset is seen writing to the client (or reading it)
    p.wait_re(
        r"(proxied session done.*\n(.|\n)*proxied session done"
        r"|\] \d+#\d+: \*\d+ \w+\(\) failed \(104: Connection reset by peer\) while proxying)"
    )
    p.assert_no_leaks(base, p.ignore)
