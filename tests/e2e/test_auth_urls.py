"""Beyond nginx, auth_http with several URLs and over https, end to end: fastmail logs a client
in to Dovecot through the reference auth server when the first URL refuses, hangs or answers
503 (a URL found down is then asked last), and over TLS to an auth server it verifies, on one
kept-alive TLS connection. nginx takes one http:// URL (`nginx -t` refuses these configs)."""

from __future__ import annotations

import imaplib
import ssl
import time
from collections.abc import Callable, Iterator

import pytest
import trustme

from fastmail.testing import LoopThread
from fastmail.testing.authd import AuthServer, Reply
from support.clients import LineClient
from support.fastmail import Proxy, add_user, fastmail_only, mail_block, server


@pytest.fixture
def more_authd(loop_thread: LoopThread, authd: AuthServer) -> Iterator[Callable[..., AuthServer]]:
    """Further auth servers on `authd`'s user database: `more_authd(host=..., tls=...)`."""
    made: list[AuthServer] = []

    def make(host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> AuthServer:
        s = AuthServer(authd.db, fail_wait=1)
        loop_thread.run(s.start(host, tls=tls))
        made.append(s)
        return s

    yield make
    for s in made:
        loop_thread.run(s.stop())


def imap_login(port: int) -> bytes:
    """LOGIN through the proxy: Dovecot's OK, or the error the proxy gave."""
    with imaplib.IMAP4("127.0.0.1", port, timeout=15) as imap:
        try:
            typ, data = imap.login("alice", "secret")
        except imaplib.IMAP4.error as e:
            return str(e).encode()
        imap.logout()
        return typ.encode() + b" " + data[0]


def imap_refused(port: int) -> bytes:
    """LOGIN through the proxy when it cannot ask auth_http: its reply line."""
    with LineClient("127.0.0.1", port, timeout=15) as c:
        c.read_line()
        c.send_line("a LOGIN alice secret")
        return c.read_line()


def start(proxy, authd, dovecot, free_port, urls: str, extra: str = "") -> tuple[Proxy, int]:
    add_user(authd, "alice", "secret", {"imap": ("127.0.0.1", dovecot.imap_port)})
    port = free_port()
    mail = mail_block(authd, server(port, "imap"), extra).replace(authd.url, urls)
    return proxy(mail, greetings=[(port, b"* OK")]), port


def test_next_url_when_the_first_refuses(proxy, authd, dovecot, free_port, request):
    fastmail_only(request.node.callspec.params["proxy"], "several auth_http URLs")
    closed = free_port()
    p, port = start(proxy, authd, dovecot, free_port, f"127.0.0.1:{closed}/auth {authd.url}")
    assert imap_login(port).startswith(b"OK")
    assert imap_login(port).startswith(b"OK")
    assert len(authd.wait_for_requests(2)) == 2
    p.wait_re(
        rf"\[warn\] .* auth http server 127\.0\.0\.1:{closed} is down: connect\(\) failed "
        rf"\(111: Connection refused\); trying {authd.host}:{authd.port} while in http auth "
        "state, client: 127.0.0.1, server: "
    )
    log = p.error_log()
    assert log.count(" is down: ") == 1, log  # the second login went to the live URL at once


def test_next_url_when_the_first_hangs(proxy, authd, more_authd, dovecot, free_port, request):
    """The first URL answers nothing within auth_http_timeout: the second gets the request
    with a timeout of its own; the next login does not wait for the first again."""
    fastmail_only(request.node.callspec.params["proxy"], "several auth_http URLs")
    slow = more_authd()
    slow.add_rule(lambda q: Reply.hang())
    p, port = start(
        proxy, authd, dovecot, free_port, f"{slow.url} {authd.url}", "auth_http_timeout 1s;"
    )
    t0 = time.monotonic()
    assert imap_login(port).startswith(b"OK")
    assert time.monotonic() - t0 >= 1.0
    t0 = time.monotonic()
    assert imap_login(port).startswith(b"OK")
    assert time.monotonic() - t0 < 0.9
    assert len(slow.requests) == 1 and len(authd.wait_for_requests(2)) == 2
    p.wait_log(f"auth http server {slow.host}:{slow.port} is down: timed out (110: ")


def test_next_url_on_a_5xx_answer(proxy, authd, more_authd, dovecot, free_port, request):
    fastmail_only(request.node.callspec.params["proxy"], "several auth_http URLs")
    broken = more_authd()
    broken.add_rule(lambda q: Reply.http_error("503 Service Unavailable"))
    p, port = start(proxy, authd, dovecot, free_port, f"{broken.url} {authd.url}")
    assert imap_login(port).startswith(b"OK")
    p.wait_log(f"auth http server {broken.host}:{broken.port} is down: status 503; trying")


def test_every_url_down_is_nginx_internal_error(proxy, authd, dovecot, free_port, request):
    """The last URL's failure is what nginx logs and answers for its one URL."""
    fastmail_only(request.node.callspec.params["proxy"], "several auth_http URLs")
    a, b = free_port(), free_port()
    p, port = start(proxy, authd, dovecot, free_port, f"127.0.0.1:{a}/auth 127.0.0.1:{b}/")
    assert imap_refused(port) == b"* BAD internal server error\r\n"
    log = p.wait_log("[error] ")
    assert f"auth http server 127.0.0.1:{a} is down: connect() failed (111: " in log
    assert "connect() failed (111: Connection refused) while in http auth state" in log


# --- https ----------------------------------------------------------------------------------------


def test_https_keeps_one_verified_tls_connection(
    proxy, authd, more_authd, dovecot, certs, free_port, request
):
    fastmail_only(request.node.callspec.params["proxy"], "https auth_http")
    tls = more_authd(tls=certs.server_context())
    assert tls.url.startswith("https://127.0.0.1:")
    trust = f"auth_http_ssl_trusted_certificate {certs.ca_cert};"
    _, port = start(proxy, authd, dovecot, free_port, tls.url, trust)
    for _ in range(3):
        assert imap_login(port).startswith(b"OK")
    reqs = tls.wait_for_requests(3)
    assert len({q.peer for q in reqs}) == 1  # one TLS connection for the three logins
    assert reqs[0].raw.startswith(b"GET /auth HTTP/1.1\r\nHost: 127.0.0.1\r\n")


@pytest.mark.parametrize("case", ["untrusted", "wrong-name", "verify-off"])
def test_https_certificate_checks(
    proxy, authd, more_authd, dovecot, certs, free_port, tmp_path, request, case
):
    """A certificate from a CA not trusted, or for another name (the URL's host is an address
    not in it), fails the login with nginx's internal error; `auth_http_ssl_verify off` takes
    any certificate."""
    fastmail_only(request.node.callspec.params["proxy"], "https auth_http")
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    host = "127.0.0.2" if case == "wrong-name" else "127.0.0.1"
    tls = more_authd(host=host, tls=certs.server_context())
    extra = {
        "untrusted": f"auth_http_ssl_trusted_certificate {other_ca};",
        "wrong-name": f"auth_http_ssl_trusted_certificate {certs.ca_cert};",
        "verify-off": "auth_http_ssl_verify off;",
    }[case]
    p, port = start(proxy, authd, dovecot, free_port, tls.url, extra)
    if case == "verify-off":
        assert imap_login(port).startswith(b"OK")
        return
    assert imap_refused(port) == b"* BAD internal server error\r\n"
    why = "unable to verify the first certificate" if case == "untrusted" else "IP address mismatch"
    p.wait_log(f"auth http server {host}:{tls.port} SSL certificate verify error: (")
    assert why in p.error_log()
    assert not tls.requests  # no request went out before the certificate was checked
