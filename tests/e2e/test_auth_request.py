"""The auth_http request itself, byte for byte: with `auth_http_keepalive 0` fastmail sends
exactly nginx's HTTP/1.0 request; by default it keeps one HTTP/1.1 connection for many logins."""

from __future__ import annotations

import imaplib

from support.fastmail import add_user, fastmail_only, mail_block, server


def login(port: int) -> None:
    with imaplib.IMAP4("127.0.0.1", port, timeout=10) as imap:
        assert imap.login("alice", "secret")[0] == "OK"
        imap.logout()


def test_request_bytes_match_nginx(proxy, authd, fake_backend, free_port, request):
    add_user(authd, "alice", "secret", {"imap": ("127.0.0.1", fake_backend.port("imap"))})
    port = free_port()
    nginx = request.node.callspec.params["proxy"] == "nginx"
    extra = "" if nginx else "auth_http_keepalive 0;"
    proxy(mail_block(authd, server(port, "imap"), extra), greetings=[(port, b"* OK")])
    login(port)
    (req,) = authd.wait_for_requests(1)
    assert req.raw == (
        b"GET /auth HTTP/1.0\r\nHost: 127.0.0.1\r\nAuth-Method: plain\r\n"
        b"Auth-User: alice\r\nAuth-Pass: secret\r\nAuth-Protocol: imap\r\n"
        b"Auth-Login-Attempt: 1\r\nClient-IP: 127.0.0.1\r\n\r\n"
    )


def test_keepalive_reuses_one_connection(proxy, authd, fake_backend, free_port, request):
    fastmail_only(request.node.callspec.params["proxy"], "auth_http keep-alive")
    add_user(authd, "alice", "secret", {"imap": ("127.0.0.1", fake_backend.port("imap"))})
    port = free_port()
    proxy(mail_block(authd, server(port, "imap")), greetings=[(port, b"* OK")])
    for _ in range(3):
        login(port)
    reqs = authd.wait_for_requests(3)
    assert all(r.raw.startswith(b"GET /auth HTTP/1.1\r\n") for r in reqs)
    assert all(r.raw.endswith(b"Connection: keep-alive\r\n\r\n") for r in reqs)
    assert len({r.peer for r in reqs}) == 1  # one client port: one connection


def test_auth_http_send_client_port_and_server_addr(
    proxy, authd, dovecot, free_port, line_client, request
):
    """auth_http_send (nginx#205): the client's port and the address it reached, as Client-IP
    is written, after nginx's lines; the login then goes through to Dovecot as usual."""
    fastmail_only(request.node.callspec.params["proxy"], "auth_http_send")
    add_user(authd, "alice", "secret", {"imap": ("127.0.0.1", dovecot.imap_port)})
    port = free_port()
    extra = 'auth_http_send client_port server_addr; auth_http_header X-Tag "t";'
    proxy(mail_block(authd, server(port, "imap"), extra), greetings=[(port, b"* OK")])
    c = line_client(port)
    c.read_until(b"\r\n")
    c.send_line("a1 LOGIN alice secret")
    assert c.read_until(b"a1 ").startswith(b"a1 ") and c.read_line().startswith(b"OK")
    (req,) = authd.wait_for_requests(1)
    client_port = c.sock.getsockname()[1]
    tail = (
        f"Client-IP: 127.0.0.1\r\nClient-Port: {client_port}\r\nServer-IP: 127.0.0.1\r\n"
        f"Server-Port: {port}\r\nX-Tag: t\r\n"
    ).encode()
    assert tail in req.raw
    c.send_line("a2 LOGOUT")
    c.read_until(b"a2 OK")


def test_auth_http_send_on_a_wildcard_listen_names_the_address_reached(
    proxy, authd, fake_backend, free_port, request
):
    """With `listen PORT` (all addresses) Server-IP is the address the client connected to,
    not 0.0.0.0: a client of 127.0.0.2 is told apart from one of 127.0.0.1."""
    fastmail_only(request.node.callspec.params["proxy"], "auth_http_send")
    add_user(authd, "alice", "secret", {"imap": ("127.0.0.1", fake_backend.port("imap"))})
    port = free_port()
    servers = f"server {{ listen {port}; protocol imap; }}"
    proxy(mail_block(authd, servers, "auth_http_send server_addr;"), greetings=[(port, b"* OK")])
    for host in ("127.0.0.1", "127.0.0.2"):
        with imaplib.IMAP4(host, port, timeout=10) as imap:
            assert imap.login("alice", "secret")[0] == "OK"
            imap.logout()
    first, second = authd.wait_for_requests(2)
    assert first["Server-IP"] == "127.0.0.1" and second["Server-IP"] == "127.0.0.2"
    assert first["Server-Port"] == second["Server-Port"] == str(port)
    assert first.get("Client-Port") is None  # only what was asked for
