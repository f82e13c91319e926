"""auth_http_cache (beyond nginx), end to end with Dovecot behind: a client that logs in again and
again reaches the reference auth server once per `valid`, a wrong password once per `fail`; what
the request carried is the key (another password, client address or attempt is asked about);
salted logins are never kept; an answer whose backend then fails is dropped."""

from __future__ import annotations

import imaplib
import time

import pytest

from support.clients import LineClient
from support.fastmail import add_user, fastmail_only, mail_block, server


def imap_login(port: int, password: str = "secret") -> bytes:
    with imaplib.IMAP4("127.0.0.1", port, timeout=15) as imap:
        try:
            typ, data = imap.login("alice", password)
        except imaplib.IMAP4.error as e:
            return str(e).encode()
        imap.logout()
        return typ.encode() + b" " + data[0]


@pytest.fixture
def cached(proxy, authd, dovecot, free_port, request):
    """`cached(extra)` -> (Proxy, port): IMAP to Dovecot with `auth_http_cache ...` in extra."""
    fastmail_only(request.node.callspec.params["proxy"], "auth_http_cache")
    add_user(authd, "alice", "secret", {"imap": ("127.0.0.1", dovecot.imap_port)}, True)

    def start(extra: str) -> tuple[object, int]:
        port = free_port()
        srv = server(port, "imap", "imap_auth login plain cram-md5;")
        return proxy(mail_block(authd, srv, extra), greetings=[(port, b"* OK")]), port

    return start


def test_reconnecting_client_asks_once(cached, authd):
    _, port = cached("auth_http_cache 100;")
    for _ in range(4):
        assert imap_login(port).startswith(b"OK")
    time.sleep(0.2)
    assert len(authd.requests) == 1


def line_login(port: int, password: str = "secret", source: str | None = None) -> bytes:
    """LOGIN from `source` (a client address): the tagged reply line."""
    with LineClient("127.0.0.1", port, timeout=15, source=source) as c:
        c.read_line()
        c.send_line(f"a LOGIN alice {password}")
        line = c.read_line()
        while not line.startswith(b"a "):
            line = c.read_line()
        return line


def test_key_is_what_the_request_carried(cached, authd):
    """Another password, another client address: asked about, each once."""
    _, port = cached("auth_http_cache 100;")
    logins = [("secret", None), ("wrong", None), ("secret", "127.0.0.2"),
              ("secret", "127.0.0.2"), ("wrong", None), ("secret", None)]  # fmt: skip
    for password, source in logins:
        want = b"a OK" if password == "secret" else b"a NO Invalid login or password"
        assert line_login(port, password, source).startswith(want)
    time.sleep(0.2)
    assert [(q.password, q["Client-IP"]) for q in authd.requests] == [
        ("secret", "127.0.0.1"), ("wrong", "127.0.0.1"), ("secret", "127.0.0.2"),
    ]  # fmt: skip


def test_failure_is_kept_for_fail_and_answered_alike(cached, authd):
    """The same wrong password again within `fail`: the same reply, Auth-Wait included, without
    the auth server; after `fail` it is asked again."""
    _, port = cached("auth_http_cache 100 fail=1500ms;")
    replies = []
    for _ in range(2):
        with LineClient("127.0.0.1", port, timeout=15) as c:
            c.read_line()
            t0 = time.monotonic()
            c.send_line("a LOGIN alice wrong")
            replies.append(c.read_line())
            assert time.monotonic() - t0 >= 0.9  # authd's Auth-Wait: 1 (fixture)
    assert replies[0] == replies[1] == b"a NO Invalid login or password\r\n"
    assert len(authd.requests) == 1
    time.sleep(1.6)
    assert b"Invalid login" in imap_login(port, "wrong")
    assert len(authd.wait_for_requests(2)) == 2


def test_ok_expires_after_valid(cached, authd):
    _, port = cached("auth_http_cache 100 valid=1s;")
    assert imap_login(port).startswith(b"OK")
    assert imap_login(port).startswith(b"OK")
    time.sleep(1.2)
    assert imap_login(port).startswith(b"OK")
    assert len(authd.wait_for_requests(2)) == 2
    time.sleep(0.2)
    assert len(authd.requests) == 2


def test_cram_md5_is_never_kept(cached, authd):
    """Its salt differs per session: every login is asked about."""
    _, port = cached("auth_http_cache 100;")
    for _ in range(2):
        with imaplib.IMAP4("127.0.0.1", port, timeout=15) as imap:
            assert imap.login_cram_md5("alice", "secret")[0] == "OK"
            imap.logout()
    assert len(authd.wait_for_requests(2)) == 2


def test_answer_whose_backend_fails_is_dropped(cached, authd, dovecot, free_port):
    """The backend the kept answer names is down: the next login asks the auth server again
    (which now names a live one) instead of failing from the cache for `valid`."""
    closed = free_port()
    add_user(authd, "alice", "secret", {"imap": ("127.0.0.1", closed)})
    _, port = cached("auth_http_cache 100;")
    with LineClient("127.0.0.1", port, timeout=15) as c:
        c.read_line()
        c.send_line("a LOGIN alice secret")
        assert c.read_line() == b"* BAD internal server error\r\n"
    add_user(authd, "alice", "secret", {"imap": ("127.0.0.1", dovecot.imap_port)})
    assert imap_login(port).startswith(b"OK")
    assert imap_login(port).startswith(b"OK")
    assert len(authd.wait_for_requests(2)) == 2
    time.sleep(0.2)
    assert len(authd.requests) == 2
