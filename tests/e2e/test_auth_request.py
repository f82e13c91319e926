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
