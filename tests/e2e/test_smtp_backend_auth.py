"""SMTP beyond nginx, end to end through a real Postfix (SASL by Dovecot): AUTH LOGIN to the
backend (`proxy_smtp_auth_method login`, for backends that take only LOGIN, nginx#601),
chosen per login by auth_http's `Auth-SMTP-Auth-Method`; and `starttls only` holding for
`smtp_auth none` (nginx#705: nginx relays the envelope and the message in plain text)."""

from __future__ import annotations

import smtplib
import time
import uuid

import pytest

from fastmail.testing.authd import Backend, Reply
from support.fastmail import add_user, fastmail_only, mail_block, server


def postfix_line(postfix, since: int, text: str) -> str:
    """The first line of Postfix's log after offset `since` holding `text`."""
    deadline = time.monotonic() + 5
    while True:
        for line in postfix.log()[since:].splitlines():
            if text in line:
                return line
        if time.monotonic() > deadline:
            raise TimeoutError(f"{text!r} not in the maillog:\n{postfix.log()[since:][-2000:]}")
        time.sleep(0.02)


def send_as_alice(port: int) -> str:
    subject = f"backend auth {uuid.uuid4()}"
    msg = f"From: alice@example.test\r\nTo: bob@example.test\r\nSubject: {subject}\r\n\r\nhi\r\n"
    with smtplib.SMTP("127.0.0.1", port, "client.example.net", timeout=10) as smtp:
        smtp.login("alice", "secret")
        assert smtp.sendmail("alice@example.test", ["bob@example.test"], msg) == {}
    return subject


def smtp_server(proxy, authd, free_port, extra: str):
    """The proxy under test serving SMTP with `extra`; its `port` attribute is where."""
    port = free_port()
    p = proxy(mail_block(authd, server(port, "smtp", extra)), greetings=[(port, b"220 ")])
    p.port = port
    return p


@pytest.mark.parametrize("xclient", ["on", "off"])
def test_auth_login_to_postfix(proxy, authd, postfix, free_port, request, xclient):
    fastmail_only(request.node.callspec.params["proxy"], "proxy_smtp_auth_method")
    add_user(authd, "alice", "secret", {"smtp": ("127.0.0.1", postfix.smtp_port)})
    extra = f"xclient {xclient}; proxy_smtp_auth on; proxy_smtp_auth_method login;"
    port = smtp_server(proxy, authd, free_port, extra).port
    since = len(postfix.log())
    subject = send_as_alice(port)
    assert postfix.wait_message("bob", subject.encode())
    postfix_line(postfix, since, "sasl_method=LOGIN, sasl_username=alice")


@pytest.mark.parametrize(
    "extra,header,method",
    [
        ("", "login", "LOGIN"),  # proxy_smtp_auth off, XCLIENT: AUTH LOGIN all the same
        ("proxy_smtp_auth on; proxy_smtp_auth_method login;", "PLAIN", "PLAIN"),
        ("proxy_smtp_auth on;", "off", "XCLIENT"),  # no AUTH: XCLIENT's LOGIN= names alice
    ],
)
def test_auth_method_chosen_per_login_by_auth_http(
    proxy, authd, postfix, free_port, request, extra, header, method
):
    fastmail_only(request.node.callspec.params["proxy"], "Auth-SMTP-Auth-Method")
    authd.add_rule(
        lambda q: Reply(
            [("Auth-Status", "OK"), ("Auth-Server", "127.0.0.1"),
             ("Auth-Port", str(postfix.smtp_port)), ("Auth-SMTP-Auth-Method", header)]
        )
    )  # fmt: skip
    port = smtp_server(proxy, authd, free_port, extra).port
    since = len(postfix.log())
    subject = send_as_alice(port)
    assert postfix.wait_message("bob", subject.encode())
    postfix_line(postfix, since, f"sasl_method={method}, sasl_username=alice")


def test_unknown_auth_method_from_auth_http_is_an_internal_error(
    proxy, authd, postfix, free_port, request
):
    fastmail_only(request.node.callspec.params["proxy"], "Auth-SMTP-Auth-Method")
    authd.add_rule(
        lambda q: Reply(
            [("Auth-Status", "OK"), ("Auth-Server", "127.0.0.1"),
             ("Auth-Port", str(postfix.smtp_port)), ("Auth-SMTP-Auth-Method", "cram-md5")]
        )
    )  # fmt: skip
    p = smtp_server(proxy, authd, free_port, "")
    with smtplib.SMTP("127.0.0.1", p.port, "client.example.net", timeout=10) as smtp:
        smtp.ehlo()
        assert smtp.docmd("AUTH", "PLAIN AGFsaWNlAHNlY3JldA==") == (
            451,
            b"4.3.2 Internal server error",
        )
    p.wait_log('sent invalid SMTP auth method:"cram-md5" while in http auth state')


# --- starttls only with smtp_auth none (nginx#705) -------------------------------------------


def none_server(proxy, authd, postfix, certs, free_port) -> int:
    authd.db.set_domain("example.test", Backend("127.0.0.1", postfix.smtp_port))
    extra = (
        f"smtp_auth none; starttls only; ssl_certificate {certs.server_cert};"
        f" ssl_certificate_key {certs.server_key};"
    )
    return smtp_server(proxy, authd, free_port, extra).port


def test_starttls_only_refuses_plain_text_mail(proxy, authd, postfix, certs, free_port, request):
    fastmail_only(request.node.callspec.params["proxy"], "starttls only for smtp_auth none")
    port = none_server(proxy, authd, postfix, certs, free_port)
    with smtplib.SMTP("127.0.0.1", port, "sender.example.org", timeout=10) as smtp:
        assert smtp.ehlo()[0] == 250 and smtp.has_extn("starttls")
        assert smtp.docmd("MAIL", "FROM:<someone@example.org>") == (
            530,
            b"5.7.0 Must issue a STARTTLS command first",
        )
        assert smtp.docmd("RCPT", "TO:<bob@example.test>")[0] == 503
        assert smtp.noop()[0] == 250  # not an error that counts: the session goes on
    assert not authd.requests  # nothing reached auth_http, nor the backend


def test_starttls_only_relays_mail_after_starttls(proxy, authd, postfix, certs, free_port):
    """Needs TLS in the engine (the lead's TLS work); nginx passes it already."""
    port = none_server(proxy, authd, postfix, certs, free_port)
    subject = f"after starttls {uuid.uuid4()}"
    msg = f"From: someone@example.org\r\nTo: bob@example.test\r\nSubject: {subject}\r\n\r\nhi\r\n"
    with smtplib.SMTP("127.0.0.1", port, "sender.example.org", timeout=10) as smtp:
        assert smtp.starttls(context=certs.client_context())[0] == 220
        assert smtp.sendmail("someone@example.org", ["bob@example.test"], msg) == {}
    assert postfix.wait_message("bob", subject.encode())
    [req] = authd.requests
    assert (req.auth_method, req["Auth-SSL"]) == ("none", "on")
