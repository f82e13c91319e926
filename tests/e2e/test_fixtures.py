"""The real-part fixtures work on their own: Dovecot serves its seeded mailbox over IMAP and
POP3, Postfix delivers into it, HAProxy sends a PROXY v2 header, and Debian's nginx proxies a
login to the fake backend chosen by authd. If these fail, the proxy tests' failures mean nothing.
"""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import uuid
from email.message import EmailMessage

from support.dovecot import ALICE_MESSAGES


def crlf(msg: bytes) -> bytes:
    return msg.replace(b"\n", b"\r\n")


def test_dovecot_imap_serves_seeded_messages(dovecot):
    with imaplib.IMAP4("127.0.0.1", dovecot.imap_port, timeout=10) as imap:
        imap.login("alice", "secret")
        typ, data = imap.select("INBOX", readonly=True)
        assert typ == "OK" and data[0] is not None and int(data[0]) == len(ALICE_MESSAGES)
        typ, fetched = imap.fetch("2", "(BODY.PEEK[])")
        assert typ == "OK" and isinstance(fetched[0], tuple)
        assert fetched[0][1] == crlf(ALICE_MESSAGES[1])


def test_dovecot_rejects_wrong_password(dovecot):
    with imaplib.IMAP4("127.0.0.1", dovecot.imap_port, timeout=10) as imap:
        try:
            imap.login("alice", "wrong")
        except imaplib.IMAP4.error as exc:
            assert b"AUTHENTICATIONFAILED" in str(exc).encode()
        else:
            raise AssertionError("login with a wrong password succeeded")


def test_dovecot_pop3_user_pass_and_retr(dovecot):
    pop = poplib.POP3("127.0.0.1", dovecot.pop3_port, timeout=10)
    try:
        pop.user("alice")
        pop.pass_("secret")
        count, _size = pop.stat()
        assert count == len(ALICE_MESSAGES)
        _resp, lines, _octets = pop.retr(2)
        assert b"\r\n".join(lines) + b"\r\n" == crlf(ALICE_MESSAGES[1])
    finally:
        pop.quit()


def test_postfix_delivers_into_dovecot_maildir(postfix, dovecot):
    subject = f"fixture check {uuid.uuid4()}"
    msg = EmailMessage()
    msg["From"] = "sender@example.org"
    msg["To"] = "bob@example.test"
    msg["Subject"] = subject
    msg.set_content("body through postfix\n")
    with smtplib.SMTP("127.0.0.1", postfix.smtp_port, "client.example.net", timeout=10) as smtp:
        code, _ = smtp.docmd("XCLIENT", "ADDR=192.0.2.44 NAME=mua.example.net")
        assert code == 220
        smtp.ehlo("mua-helo.example.net")
        smtp.send_message(msg)
    delivered = postfix.wait_message("bob", subject.encode())
    assert b"body through postfix" in delivered
    assert b"mua.example.net [192.0.2.44]" in delivered  # XCLIENT reached the Received line
    # The same message is visible over IMAP: Postfix and Dovecot share the Maildirs.
    with imaplib.IMAP4("127.0.0.1", dovecot.imap_port, timeout=10) as imap:
        imap.login("bob", "pw")
        imap.select("INBOX", readonly=True)
        typ, data = imap.search(None, "SUBJECT", f'"{subject}"')
        assert typ == "OK" and data[0].split()


def test_postfix_rejects_unknown_recipient(postfix):
    with smtplib.SMTP("127.0.0.1", postfix.smtp_port, timeout=10) as smtp:
        smtp.ehlo("client.example.net")
        smtp.mail("a@example.org")
        code, text = smtp.rcpt("nobody@example.test")
        assert code == 550 and b"User unknown" in text


def test_haproxy_sends_proxy_v2_header(haproxy, fake_backend, loop_thread, line_client):
    port = loop_thread.run(fake_backend.listen("imap", proxy_protocol=True))
    h = haproxy([("127.0.0.1", port)])
    c = line_client(h.port, source="127.0.0.2")
    assert c.greeting() == b"* OK fake imap ready\r\n"
    assert c.command("a1 NOOP") == b"a1 OK NOOP completed\r\n"
    session = fake_backend.sessions[-1]
    assert session.proxy is not None
    assert session.proxy.version == 2 and session.proxy.command == "PROXY"
    assert session.proxy.src[0] == "127.0.0.2"
    assert session.proxy.dst == ("127.0.0.1", h.port)
    assert h.server_states() == {"s1": "no check"}


def _nginx_mail(authd, servers: str) -> str:
    return f"""
    server_name mx.test;
    auth_http {authd.url};
    {servers}
    """


def test_nginx_imap_login_reaches_fake_backend(nginx, authd, fake_backend, free_port, line_client):
    authd.db.add_user("alice", "secret", {}, scrypt_ln=10)
    from fastmail.testing.authd import Backend

    authd.db.set_backend("alice", "imap", Backend("127.0.0.1", fake_backend.port("imap")))
    port = free_port()
    nginx(
        _nginx_mail(authd, f"server {{ listen 127.0.0.1:{port}; protocol imap; }}"),
        greetings=[(port, b"* OK")],
    )
    c = line_client(port)
    assert c.greeting() == b"* OK IMAP4 ready\r\n"
    assert c.command("a LOGIN alice secret") == b"a OK LOGIN completed\r\n"
    assert c.command("b NOOP") == b"b OK NOOP completed\r\n"
    [req] = authd.requests
    assert req.http_version == "1.0"
    assert req.header_names[:2] == ["Host", "Auth-Method"]
    assert (req.auth_method, req.user, req.password, req.protocol) == (
        "plain",
        "alice",
        "secret",
        "imap",
    )
    assert req["Client-IP"] == "127.0.0.1"
    assert fake_backend.sessions[-1].received == (
        b"a LOGIN {5}\r\nalice {6}\r\nsecret\r\nb NOOP\r\n"
    )


def test_nginx_pop3_and_smtp_through_authd(nginx, authd, fake_backend, free_port, line_client):
    from fastmail.testing.authd import Backend

    authd.db.add_user(
        "bob",
        "pw",
        {
            "pop3": Backend("127.0.0.1", fake_backend.port("pop3")),
            "smtp": Backend("127.0.0.1", fake_backend.port("smtp")),
        },
        scrypt_ln=10,
    )
    pop_port, smtp_port = free_port(), free_port()
    nginx(
        _nginx_mail(
            authd,
            f"server {{ listen 127.0.0.1:{pop_port}; protocol pop3; }}\n"
            f"server {{ listen 127.0.0.1:{smtp_port}; protocol smtp; smtp_auth plain; }}",
        ),
        greetings=[(pop_port, b"+OK"), (smtp_port, b"220 ")],
    )
    pop = poplib.POP3("127.0.0.1", pop_port, timeout=10)
    try:
        pop.user("bob")
        assert pop.pass_("pw") == b"+OK logged in"
        assert pop.stat()[0] == len(fake_backend.mailbox)
    finally:
        pop.quit()
    with smtplib.SMTP("127.0.0.1", smtp_port, "cl.example", timeout=10) as smtp:
        smtp.ehlo("cl.example")
        smtp.login("bob", "pw")
        smtp.sendmail("bob@example.test", ["x@example.org"], b"Subject: via nginx\r\n\r\nhi\r\n")
    [msg] = fake_backend.messages
    assert msg.xclient == {"ADDR": "127.0.0.1", "LOGIN": "bob", "NAME": "[UNAVAILABLE]"}
    assert msg.helo == "cl.example" and msg.data == b"Subject: via nginx\r\n\r\nhi\r\n"
    assert [r.protocol for r in authd.requests] == ["pop3", "smtp"]


def test_nginx_gets_authd_failure_with_wait(nginx, authd, free_port, line_client):
    port = free_port()
    n = nginx(
        _nginx_mail(authd, f"server {{ listen 127.0.0.1:{port}; protocol imap; }}"),
        greetings=[(port, b"* OK")],
    )
    c = line_client(port)
    c.greeting()
    # authd's fixture answers failures with Auth-Wait: 1, so nginx keeps the session.
    assert c.command("a LOGIN nobody pw") == b"a NO Invalid login or password\r\n"
    assert c.command("b NOOP") == b"b OK completed\r\n"
    n.wait_log('client login failed: "Invalid login or password"')
