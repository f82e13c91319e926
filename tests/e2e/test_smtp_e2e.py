"""SMTP through the proxy to a real Postfix (XCLIENT allowed from loopback), delivering into
the Maildirs Dovecot serves: every AUTH mechanism, `smtp_auth none` with the replayed
envelope, with smtplib, swaks and curl. The message arrives intact.
"""

from __future__ import annotations

import base64
import hmac
import imaplib
import shutil
import smtplib
import subprocess
import uuid

import pytest

from support.fastmail import add_user, fastmail_only, mail_block, server


def message(subject: str) -> bytes:
    body = b"".join(b"line %d of the body\r\n" % i for i in range(200))
    return (
        b"From: Alice <alice@example.test>\r\nTo: Bob <bob@example.test>\r\n"
        b"Subject: " + subject.encode() + b"\r\n\r\n"
        b".a line starting with a dot\r\n..two dots\r\n" + body + b"\xc3\xa9 8bit\r\nend\r\n"
    )


def assert_intact(stored: bytes, sent: bytes) -> None:
    """The body arrived byte for byte, the headers we wrote are all there (Postfix adds
    Received, Return-Path, Date and Message-ID around them; the Maildir has LF line ends)."""
    stored = stored.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    head, _, body = stored.partition(b"\r\n\r\n")
    sent_head, _, sent_body = sent.partition(b"\r\n\r\n")
    assert body == sent_body
    for line in sent_head.split(b"\r\n"):
        assert line in head.split(b"\r\n")


@pytest.fixture
def smtp_proxy(proxy, authd, postfix, free_port):
    add_user(authd, "alice", "secret", {"smtp": ("127.0.0.1", postfix.smtp_port)}, True)
    port = free_port()
    p = proxy(
        mail_block(authd, server(port, "smtp", "smtp_auth plain login cram-md5;")),
        greetings=[(port, b"220 ")],
    )
    p.port = port
    return p


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN", "CRAM-MD5"])
def test_auth_and_delivery_intact(smtp_proxy, postfix, authd, mech):
    subject = f"via proxy {mech} {uuid.uuid4()}"
    msg = message(subject)
    with smtplib.SMTP("127.0.0.1", smtp_proxy.port, "client.example.net", timeout=10) as smtp:
        assert smtp.ehlo("client.example.net")[0] == 250
        assert b"AUTH PLAIN LOGIN CRAM-MD5" in (smtp.ehlo_resp or b"")
        smtp.user, smtp.password = "alice", "secret"
        # smtplib's own login() picks auth_plain/auth_login/auth_cram_md5 this way
        answer = getattr(smtp, "auth_" + mech.lower().replace("-", "_"))
        code, _ = smtp.auth(mech, answer, initial_response_ok=mech != "CRAM-MD5")
        assert code == 235
        refused = smtp.sendmail("alice@example.test", ["bob@example.test"], msg)
        assert refused == {}
    got = postfix.wait_message("bob", subject.encode())
    assert_intact(got, msg)
    # XCLIENT gave Postfix the client's address, and the client's HELO followed it
    assert b"Received: from client.example.net (unknown [127.0.0.1])" in got, got[:400]
    [req] = authd.requests
    # nginx names AUTH LOGIN "plain" to the auth server: both carry a clear-text password
    method = "cram-md5" if mech == "CRAM-MD5" else "plain"
    assert (req.auth_method, req.user, req.protocol) == (method, "alice", "smtp")
    assert req.get("Auth-SMTP-Helo") is None  # sent under smtp_auth none only


def test_delivery_readable_over_imap(smtp_proxy, postfix, dovecot):
    subject = f"read back {uuid.uuid4()}"
    msg = message(subject)
    with smtplib.SMTP("127.0.0.1", smtp_proxy.port, timeout=10) as smtp:
        smtp.login("alice", "secret")
        smtp.sendmail("alice@example.test", ["carol@example.test"], msg)
    postfix.wait_message("carol", subject.encode())
    with imaplib.IMAP4("127.0.0.1", dovecot.imap_port, timeout=10) as imap:
        imap.login("carol", "carol-pass")
        imap.select("INBOX", readonly=True)
        _, data = imap.search(None, "SUBJECT", f'"{subject}"')
        [num] = data[0].split()
        _, fetched = imap.fetch(num, "(BODY.PEEK[])")
    assert isinstance(fetched[0], tuple)
    assert_intact(fetched[0][1], msg)


def test_wrong_password(smtp_proxy, line_client):
    c = line_client(smtp_proxy.port)
    assert c.greeting().startswith(b"220 ")
    c.command("EHLO x", until=b"250 ")
    c.read_line()
    ir = base64.b64encode(b"\0alice\0bad").decode()
    assert c.command(f"AUTH PLAIN {ir}") == b"535 5.7.8 Invalid login or password\r\n"
    smtp_proxy.wait_log('client login failed: "Invalid login or password"')


def test_cram_md5_raw(smtp_proxy, postfix, line_client):
    c = line_client(smtp_proxy.port)
    c.greeting()
    c.command("EHLO raw.example", until=b"250 ")
    c.read_line()
    challenge = base64.b64decode(c.command("AUTH CRAM-MD5")[4:].strip())
    digest = hmac.new(b"secret", challenge, "md5").hexdigest()
    assert c.command(base64.b64encode(b"alice " + digest.encode())).startswith(b"235 ")
    assert c.command("MAIL FROM:<alice@example.test>").startswith(b"250 ")
    c.command("QUIT")


def test_smtp_auth_none_replays_envelope(proxy, authd, postfix, free_port):
    from fastmail.testing.authd import Backend

    authd.db.set_domain("example.test", Backend("127.0.0.1", postfix.smtp_port))
    port = free_port()
    proxy(
        mail_block(authd, server(port, "smtp", "smtp_auth none;")),
        greetings=[(port, b"220 ")],
    )
    subject = f"unauthenticated {uuid.uuid4()}"
    msg = message(subject)
    with smtplib.SMTP("127.0.0.1", port, "sender.example.org", timeout=10) as smtp:
        smtp.ehlo("sender.example.org")
        assert smtp.sendmail("someone@example.org", ["bob@example.test"], msg) == {}
    got = postfix.wait_message("bob", subject.encode())
    assert_intact(got, msg)
    assert b"Return-Path: <someone@example.org>" in got
    [req] = authd.requests
    assert req.auth_method == "none"
    assert req["Auth-SMTP-Helo"] == "sender.example.org"
    # the raw command lines, as smtplib wrote them
    assert req["Auth-SMTP-From"] == "mail FROM:<someone@example.org>"
    assert req["Auth-SMTP-To"] == "rcpt TO:<bob@example.test>"


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks not installed")
def test_swaks(smtp_proxy, postfix):
    subject = f"swaks {uuid.uuid4()}"
    out = subprocess.run(
        [
            "swaks", "--server", f"127.0.0.1:{smtp_proxy.port}", "--auth", "LOGIN",
            "--auth-user", "alice", "--auth-password", "secret",
            "--from", "alice@example.test", "--to", "bob@example.test",
            "--header", f"Subject: {subject}", "--body", "sent by swaks", "--timeout", "10",
        ],
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()
    assert b"sent by swaks" in postfix.wait_message("bob", subject.encode())


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl(smtp_proxy, postfix):
    subject = f"curl {uuid.uuid4()}"
    out = subprocess.run(
        [
            "curl", "-sS", "--max-time", "10", f"smtp://127.0.0.1:{smtp_proxy.port}",
            "-u", "alice:secret", "--mail-from", "alice@example.test",
            "--mail-rcpt", "bob@example.test", "-T", "-",
        ],
        input=f"Subject: {subject}\r\n\r\nsent by curl\r\n".encode(),
        capture_output=True,
        timeout=20,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert b"sent by curl" in postfix.wait_message("bob", subject.encode())


def test_pipelined_envelope_after_auth(smtp_proxy, postfix, line_client):
    """AUTH, MAIL and RCPT in one packet: the proxy answers AUTH itself and the envelope,
    read ahead during the login, reaches Postfix first thing in the relay."""
    c = line_client(smtp_proxy.port)
    c.greeting()
    c.command("EHLO pipelining.example", until=b"250 ")
    c.read_line()
    ir = base64.b64encode(b"\0alice\0secret").decode()
    c.send(
        f"AUTH PLAIN {ir}\r\nMAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\n"
        "DATA\r\n".encode()
    )
    assert c.read_line() == b"235 2.0.0 OK\r\n"
    assert c.read_line().startswith(b"250 2.1.0")
    assert c.read_line().startswith(b"250 2.1.5")
    assert c.read_line().startswith(b"354 ")
    subject = f"pipelined {uuid.uuid4()}"
    assert c.command(f"Subject: {subject}\r\n\r\npipelined body\r\n.").startswith(b"250 2.0.0")
    assert c.command("QUIT").startswith(b"221 ")
    assert b"pipelined body" in postfix.wait_message("bob", subject.encode())


def test_pipelined_envelope_replay_to_postfix(proxy, authd, postfix, free_port, request):
    """proxy_pipelining (beyond nginx): Postfix announces PIPELINING, so the replayed MAIL FROM
    and RCPT TO go as one group; the message arrives as without it."""
    fastmail_only(request.node.callspec.params["proxy"], "proxy_pipelining")
    from fastmail.testing.authd import Backend

    authd.db.set_domain("example.test", Backend("127.0.0.1", postfix.smtp_port))
    port = free_port()
    proxy(
        mail_block(authd, server(port, "smtp", "smtp_auth none; proxy_pipelining on;")),
        greetings=[(port, b"220 ")],
    )
    subject = f"pipelined {uuid.uuid4()}"
    msg = message(subject)
    with smtplib.SMTP("127.0.0.1", port, "sender.example.org", timeout=10) as smtp:
        smtp.ehlo("sender.example.org")
        assert smtp.sendmail("someone@example.org", ["bob@example.test"], msg) == {}
        # a refused recipient is the backend's own reply, relayed
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            smtp.sendmail("someone@example.org", ["nobody@example.test"], msg)
    assert_intact(postfix.wait_message("bob", subject.encode()), msg)
