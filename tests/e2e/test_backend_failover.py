"""Backend failover (proxy_next_upstream_tries, beyond nginx), end to end with real servers: the
backend auth_http names cannot be reached (a closed port, a silent one), fastmail asks the
reference auth server again with Auth-Failed-Server, and the login lands on Dovecot or Postfix.
nginx fails the login instead, which both proxies are held to when the directive is not set."""

from __future__ import annotations

import imaplib
import smtplib
import socket
import time

import pytest

from support.clients import LineClient
from support.fastmail import (
    Proxy,
    ScriptedBackend,
    add_user,
    fastmail_only,
    mail_block,
    server,
)


def imap_reply(port: int) -> bytes:
    """The line that answers LOGIN through the proxy (Dovecot's tagged OK after a login)."""
    with LineClient("127.0.0.1", port, timeout=15) as c:
        c.read_line()
        c.send_line("a LOGIN alice secret")
        line = c.read_line()
        while line.startswith(b"* CAPABILITY"):
            line = c.read_line()
        if line.startswith(b"a OK"):
            c.send_line("b LOGOUT")
            c.read_until(b"b OK")
        return line


def start(proxy, authd, free_port, backends: list[int], extra: str = "") -> tuple[Proxy, int]:
    add_user(authd, "alice", "secret", {"imap": [("127.0.0.1", p) for p in backends]})
    port = free_port()
    return proxy(mail_block(authd, server(port, "imap"), extra), greetings=[(port, b"* OK")]), port


def test_a_backend_down_fails_the_login_as_nginx(proxy, authd, dovecot, free_port):
    """Without proxy_next_upstream_tries, nginx's behaviour: one backend per login; its
    connect failure is the client's internal error, whatever else the auth server knows."""
    closed = free_port()
    _, port = start(proxy, authd, free_port, [closed, dovecot.imap_port])
    assert imap_reply(port) == b"* BAD internal server error\r\n"
    assert len(authd.wait_for_requests(1)) == 1
    time.sleep(0.2)
    assert len(authd.requests) == 1


def test_the_next_backend_is_asked_for_and_used(proxy, authd, dovecot, free_port, request):
    fastmail_only(request.node.callspec.params["proxy"], "proxy_next_upstream_tries")
    closed = free_port()
    p, port = start(proxy, authd, free_port, [closed, dovecot.imap_port],
                 "proxy_next_upstream_tries 2;")  # fmt: skip
    with imaplib.IMAP4("127.0.0.1", port, timeout=15) as imap:
        assert imap.login("alice", "secret")[0] == "OK"
        assert imap.select("INBOX")[0] == "OK"  # a real Dovecot session
        imap.logout()
    first, again = authd.wait_for_requests(2)
    assert first.get("Auth-Failed-Server") is None
    assert again.get_all("Auth-Failed-Server") == [f"127.0.0.1:{closed}"]
    assert again["Auth-Backend-Attempt"] == "2"
    # the same question otherwise: credentials, attempt, client
    for name in ("Auth-User", "Auth-Pass", "Auth-Login-Attempt", "Client-IP", "Auth-Method"):
        assert again[name] == first[name]
    # nginx's line for the backend that failed, then the login through the next one
    p.wait_re(
        rf"\[error\] .*connect\(\) failed \(111: Connection refused\) while connecting to "
        rf'upstream, client: 127\.0\.0\.1, server: 127\.0\.0\.1:{port}, login: "alice", '
        rf"upstream: 127\.0\.0\.1:{closed}\n"
    )
    p.wait_log(f'login: "alice", upstream: 127.0.0.1:{dovecot.imap_port}')


@pytest.mark.parametrize("tries,logged_in,asked", [(2, False, 2), (3, True, 3), (0, True, 3)])
def test_tries_bound_the_backends(proxy, authd, dovecot, free_port, request, tries, logged_in,
                                  asked):  # fmt: skip
    """`N` backends at most, the first included; 0: as many as the auth server names."""
    fastmail_only(request.node.callspec.params["proxy"], "proxy_next_upstream_tries")
    a, b = free_port(), free_port()
    _, port = start(proxy, authd, free_port, [a, b, dovecot.imap_port],
                 f"proxy_next_upstream_tries {tries};")  # fmt: skip
    line = imap_reply(port)
    assert line.startswith(b"a OK") if logged_in else line == b"* BAD internal server error\r\n"
    reqs = authd.wait_for_requests(asked)
    assert [q.get_all("Auth-Failed-Server") for q in reqs] == (
        [[], [f"127.0.0.1:{a}"], [f"127.0.0.1:{a}", f"127.0.0.1:{b}"]][:asked]
    )


def test_no_other_backend_gives_the_first_failure(proxy, authd, free_port, request):
    """The auth server has nothing else (its temporary failure): the client gets the reply of
    the backend failure, as without failover, and both answers are logged."""
    fastmail_only(request.node.callspec.params["proxy"], "proxy_next_upstream_tries")
    closed = free_port()
    p, port = start(proxy, authd, free_port, [closed], "proxy_next_upstream_tries 0;")
    assert imap_reply(port) == b"* BAD internal server error\r\n"
    assert len(authd.wait_for_requests(2)) == 2
    log = p.wait_log('client login failed: "Temporary server problem, try again later"')
    assert log.count("connect() failed (111: Connection refused) while connecting") == 1


def test_a_silent_backend_times_out_into_the_next(proxy, authd, dovecot, free_port, request):
    """A backend that takes the connection and never greets: after `timeout`, the next."""
    fastmail_only(request.node.callspec.params["proxy"], "proxy_next_upstream_tries")

    def silent(conn: socket.socket) -> None:
        conn.settimeout(10)
        conn.recv(1)

    mute = ScriptedBackend(silent)
    try:
        _, port = start(proxy, authd, free_port, [mute.port, dovecot.imap_port],
                     "proxy_next_upstream_tries 2; timeout 1s;")  # fmt: skip
        t0 = time.monotonic()
        assert imap_reply(port).startswith(b"a OK")
        assert time.monotonic() - t0 >= 1.0
        assert mute.connections == 1
    finally:
        mute.close()


def test_smtp_lands_on_postfix(proxy, authd, postfix, free_port, request):
    fastmail_only(request.node.callspec.params["proxy"], "proxy_next_upstream_tries")
    closed = free_port()
    add_user(authd, "alice", "secret",
             {"smtp": [("127.0.0.1", closed), ("127.0.0.1", postfix.smtp_port)]})  # fmt: skip
    port = free_port()
    conf = server(port, "smtp", "smtp_auth plain; proxy_next_upstream_tries 2;")
    proxy(mail_block(authd, conf), greetings=[(port, b"220 ")])
    with smtplib.SMTP("127.0.0.1", port, "client.example.net", timeout=15) as smtp:
        smtp.ehlo("client.example.net")
        assert smtp.login("alice", "secret")[0] == 235
        assert smtp.noop()[0] == 250
    assert authd.wait_for_requests(2)[1].get_all("Auth-Failed-Server") == [f"127.0.0.1:{closed}"]
