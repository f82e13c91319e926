"""The client's identity at the backend: with `proxy_client_id on` Dovecot logs (and `doveadm
who` lists) the real client, which connects from 127.0.0.2 (IMAP ID, POP3 XCLIENT), and Postfix
without XCLIENT for the proxy records the client's own EHLO name; with it off the backends see
nginx's bytes. The PROXY header (`proxy_protocol on|v2`) reaches Dovecot's and Postfix's
PROXY listeners for every protocol."""

from __future__ import annotations

import base64
import imaplib
import poplib
import re
import smtplib
import socket
import subprocess
import time
import uuid

import pytest

from support.dovecot import ALICE_MESSAGES
from support.fastmail import add_user, fastmail_only, mail_block

CLIENT = "127.0.0.2"  # the client's own address: the proxy listens on 127.0.0.1 and 127.0.0.3


class ImapFrom(imaplib.IMAP4):
    def _create_socket(self, timeout):
        return socket.create_connection((self.host, self.port), timeout, (CLIENT, 0))


class Pop3From(poplib.POP3):
    def _create_socket(self, timeout):
        return socket.create_connection((self.host, self.port), timeout, (CLIENT, 0))

    def __enter__(self) -> Pop3From:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start(proxy, authd, free_port, protocol: str, extra: str, greeting: bytes) -> int:
    port = free_port()
    servers = (
        f"server {{ listen 127.0.0.1:{port}; listen 127.0.0.3:{port}; protocol {protocol};"
        f" {extra} }}\n"
    )
    proxy(mail_block(authd, servers), greetings=[(port, greeting)])
    return port


def login_line(dovecot, since: int) -> str:
    """Dovecot's `Login: user=<alice>, ...` line written after offset `since` of its log."""
    deadline = time.monotonic() + 5
    while True:
        m = re.search(r"^.*Login: user=<alice>, .*$", dovecot.log()[since:], re.M)
        if m:
            return m.group()
        if time.monotonic() > deadline:
            raise TimeoutError(f"no login line in dovecot's log:\n{dovecot.log()[since:]}")
        time.sleep(0.02)


def login(dovecot, protocol: str, port: int) -> tuple[str, str]:
    """alice logs in from 127.0.0.2 through the proxy's 127.0.0.3: Dovecot's login line, and
    `doveadm who alice` while she is in."""
    since = len(dovecot.log())
    if protocol == "imap":
        with ImapFrom("127.0.0.3", port, timeout=10) as imap:
            imap.login("alice", "secret")
            assert imap.select("INBOX", readonly=True)[0] == "OK"
            listed = who(dovecot, "alice")
            imap.logout()
    else:
        with Pop3From("127.0.0.3", port, timeout=10) as pop:
            pop.user("alice")
            pop.pass_("secret")
            assert pop.stat()[0] == len(ALICE_MESSAGES)
            listed = who(dovecot, "alice")
            pop.quit()
    return login_line(dovecot, since), listed


def who(dovecot, user: str) -> str:
    out = subprocess.run(
        ["doveadm", "-c", str(dovecot.conf), "who", user],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return out.stdout


# --- IMAP ID, POP3 XCLIENT ------------------------------------------------------------------

DOVECOT_PORT = {"imap": "imap_port", "pop3": "pop3_port"}
GREETING = {"imap": b"* OK", "pop3": b"+OK"}


@pytest.mark.parametrize(
    "protocol,pipelining", [("imap", "off"), ("imap", "on"), ("pop3", "off"), ("pop3", "on")]
)
def test_dovecot_sees_the_client(proxy, authd, dovecot, free_port, request, protocol, pipelining):
    """IMAP ID (x-connected-ip too: Dovecot's lip is where the client reached the proxy),
    POP3 XCLIENT (Dovecot 2.3 takes no DESTADDR there: lip stays the proxy's)."""
    fastmail_only(request.node.callspec.params["proxy"], "proxy_client_id")
    add_user(
        authd,
        "alice",
        "secret",
        {protocol: ("127.0.0.1", getattr(dovecot, DOVECOT_PORT[protocol]))},
    )
    extra = f"proxy_client_id on; proxy_pipelining {pipelining};"
    port = start(proxy, authd, free_port, protocol, extra, GREETING[protocol])
    line, listed = login(dovecot, protocol, port)
    lip = "127.0.0.3" if protocol == "imap" else "127.0.0.1"
    assert f"user=<alice>, method=PLAIN, rip=127.0.0.2, lip={lip}," in line
    assert re.search(rf"^alice +\d+ +{protocol} +\([\d ]+\) +\([^)]*127\.0\.0\.2", listed, re.M)


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_by_default_dovecot_sees_the_proxy(proxy, authd, dovecot, free_port, protocol):
    """nginx's bytes: no ID, no XCLIENT, so Dovecot has the proxy's own address."""
    add_user(
        authd,
        "alice",
        "secret",
        {protocol: ("127.0.0.1", getattr(dovecot, DOVECOT_PORT[protocol]))},
    )
    port = start(proxy, authd, free_port, protocol, "", GREETING[protocol])
    line, listed = login(dovecot, protocol, port)
    assert "user=<alice>, method=PLAIN, rip=127.0.0.1, lip=127.0.0.1," in line
    assert "(127.0.0.1)" in listed and "127.0.0.2" not in listed


# --- SMTP: the client's EHLO name where XCLIENT is not granted -------------------------------


def send(port: int, subject: str) -> None:
    msg = f"From: a@example.org\r\nTo: bob@example.test\r\nSubject: {subject}\r\n\r\nhi\r\n"
    with smtplib.SMTP("127.0.0.1", port, "client.example.net", timeout=10) as smtp:
        smtp.login("alice", "secret")
        smtp.sendmail("a@example.org", ["bob@example.test"], msg)


@pytest.mark.parametrize(
    "xclient,backend", [("on", "noxclient_port"), ("off", "smtp_port")], ids=["unannounced", "off"]
)
def test_smtp_backend_gets_the_client_ehlo_name(
    proxy, authd, postfix, free_port, request, xclient, backend
):
    """nginx#1652: with XCLIENT off, or not in the backend's EHLO reply, the backend's
    Received line names the client as it greeted, not the proxy's server_name."""
    fastmail_only(request.node.callspec.params["proxy"], "proxy_client_id")
    add_user(authd, "alice", "secret", {"smtp": ("127.0.0.1", getattr(postfix, backend))})
    port = start(
        proxy, authd, free_port, "smtp", f"xclient {xclient}; proxy_client_id on;", b"220 "
    )
    subject = f"ehlo name {uuid.uuid4()}"
    send(port, subject)
    got = postfix.wait_message("bob", subject.encode())
    assert b"Received: from client.example.net (unknown [127.0.0.1])" in got


def test_smtp_by_default_the_backend_gets_server_name(proxy, authd, postfix, free_port):
    add_user(authd, "alice", "secret", {"smtp": ("127.0.0.1", postfix.smtp_port)})
    port = start(proxy, authd, free_port, "smtp", "xclient off;", b"220 ")
    subject = f"server name {uuid.uuid4()}"
    send(port, subject)
    assert b"Received: from mx.test (unknown [127.0.0.1])" in postfix.wait_message(
        "bob", subject.encode()
    )


def test_smtp_by_default_xclient_refused_fails_the_login(proxy, authd, postfix, free_port):
    """nginx sends XCLIENT whatever the EHLO reply says: a backend that does not grant it
    refuses, and the client gets the internal error (what proxy_client_id avoids)."""
    add_user(authd, "alice", "secret", {"smtp": ("127.0.0.1", postfix.noxclient_port)})
    port = start(proxy, authd, free_port, "smtp", "", b"220 ")
    with smtplib.SMTP("127.0.0.1", port, "client.example.net", timeout=10) as smtp:
        code, text = smtp.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0alice\0secret").decode())
        assert (code, text) == (451, b"4.3.2 Internal server error")


# --- PROXY protocol to the backends ---------------------------------------------------------


@pytest.mark.parametrize("version", ["on", "v2"])
@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_proxy_header_to_dovecot(proxy, authd, dovecot, free_port, request, version, protocol):
    """Dovecot's `haproxy = yes` listeners take v1 and v2: its rip is the client and its lip
    the header's destination, where the client reached the proxy."""
    if version == "v2":
        fastmail_only(request.node.callspec.params["proxy"], "proxy_protocol v2 (mainline)")
    backend = getattr(dovecot, f"{protocol}_proxy_port")
    add_user(authd, "alice", "secret", {protocol: ("127.0.0.1", backend)})
    extra = f"proxy_protocol {version};"
    port = start(proxy, authd, free_port, protocol, extra, GREETING[protocol])
    line, listed = login(dovecot, protocol, port)
    assert "user=<alice>, method=PLAIN, rip=127.0.0.2, lip=127.0.0.3," in line
    assert "(127.0.0.2)" in listed


@pytest.mark.parametrize("version", ["on", "v2"])
def test_proxy_header_to_postfix(proxy, authd, postfix, free_port, request, version):
    """Postfix's smtpd_upstream_proxy_protocol listener: the Received line names the client."""
    if version == "v2":
        fastmail_only(request.node.callspec.params["proxy"], "proxy_protocol v2 (mainline)")
    add_user(authd, "alice", "secret", {"smtp": ("127.0.0.1", postfix.proxy_port)})
    extra = f"proxy_protocol {version}; xclient off;"
    port = start(proxy, authd, free_port, "smtp", extra, b"220 ")
    subject = f"proxy header {version} {uuid.uuid4()}"
    msg = f"From: a@example.org\r\nTo: bob@example.test\r\nSubject: {subject}\r\n\r\nhi\r\n"
    with smtplib.SMTP("127.0.0.3", port, "client.example.net", 10, (CLIENT, 0)) as smtp:
        smtp.login("alice", "secret")
        smtp.sendmail("a@example.org", ["bob@example.test"], msg)
    got = postfix.wait_message("bob", subject.encode())
    assert b"Received: from mx.test (unknown [127.0.0.2])" in got
