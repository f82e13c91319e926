"""IMAP through the proxy to a real Dovecot, every login method, with real clients (imaplib,
curl): what a client reads through the proxy is what Dovecot holds.
"""

from __future__ import annotations

import base64
import imaplib
import shutil
import socket
import subprocess

import pytest

from support.dovecot import ALICE_MESSAGES
from support.fastmail import add_user, fastmail_only, mail_block, server


def crlf(msg: bytes) -> bytes:
    return msg.replace(b"\n", b"\r\n")


@pytest.fixture
def imap_proxy(proxy, authd, dovecot, free_port):
    add_user(authd, "alice", "secret", {"imap": ("127.0.0.1", dovecot.imap_port)}, True)
    port = free_port()
    p = proxy(
        mail_block(authd, server(port, "imap", "imap_auth plain login cram-md5;")),
        greetings=[(port, b"* OK")],
    )
    p.port = port
    return p


def read_inbox(imap: imaplib.IMAP4) -> list[bytes]:
    typ, data = imap.select("INBOX", readonly=True)
    assert typ == "OK" and data[0] is not None
    typ, fetched = imap.fetch(f"1:{int(data[0])}", "(BODY.PEEK[])")
    assert typ == "OK"
    return [part[1] for part in fetched if isinstance(part, tuple)]


def dovecot_inbox(dovecot) -> list[bytes]:
    with imaplib.IMAP4("127.0.0.1", dovecot.imap_port, timeout=10) as imap:
        imap.login("alice", "secret")
        return read_inbox(imap)


def test_login_reads_what_dovecot_holds(imap_proxy, dovecot, authd):
    with imaplib.IMAP4("127.0.0.1", imap_proxy.port, timeout=10) as imap:
        assert imap.welcome == b"* OK IMAP4 ready"
        typ, _ = imap.login("alice", "secret")
        assert typ == "OK"
        got = read_inbox(imap)
        imap.logout()
    assert got == [crlf(m) for m in ALICE_MESSAGES]
    assert got == dovecot_inbox(dovecot)
    [req] = authd.requests
    assert (req.auth_method, req.user, req.protocol, req["Client-IP"]) == (
        "plain",
        "alice",
        "imap",
        "127.0.0.1",
    )
    imap_proxy.wait_log("client logged in, client: 127.0.0.1, server: 127.0.0.1:")


def test_authenticate_plain(imap_proxy, dovecot):
    with imaplib.IMAP4("127.0.0.1", imap_proxy.port, timeout=10) as imap:
        typ, _ = imap.authenticate("PLAIN", lambda _: b"\0alice\0secret")
        assert typ == "OK"
        assert len(read_inbox(imap)) == len(ALICE_MESSAGES)


def test_authenticate_login(imap_proxy, dovecot):
    answers = iter([b"alice", b"secret"])
    with imaplib.IMAP4("127.0.0.1", imap_proxy.port, timeout=10) as imap:
        typ, _ = imap.authenticate("LOGIN", lambda _: next(answers))
        assert typ == "OK"
        assert len(read_inbox(imap)) == len(ALICE_MESSAGES)


def test_authenticate_cram_md5(imap_proxy, dovecot, authd):
    with imaplib.IMAP4("127.0.0.1", imap_proxy.port, timeout=10) as imap:
        typ, _ = imap.login_cram_md5("alice", "secret")
        assert typ == "OK"
        assert read_inbox(imap) == [crlf(m) for m in ALICE_MESSAGES]
    [req] = authd.requests
    assert req.auth_method == "cram-md5" and req["Auth-Salt"].startswith("<")


def test_wrong_password_gets_nginx_reply(imap_proxy, authd):
    with imaplib.IMAP4("127.0.0.1", imap_proxy.port, timeout=10) as imap:
        with pytest.raises(imaplib.IMAP4.error, match="Invalid login or password"):
            imap.login("alice", "wrong")
    imap_proxy.wait_log('client login failed: "Invalid login or password"')


def test_sasl_plain_initial_response_raw(imap_proxy, line_client):
    c = line_client(imap_proxy.port)
    assert c.greeting() == b"* OK IMAP4 ready\r\n"
    ir = base64.b64encode(b"\0alice\0secret").decode()
    reply = c.command(f"a1 AUTHENTICATE PLAIN {ir}", until=b"a1 ")
    assert reply.endswith(b"a1 ")
    assert c.read_line().startswith(b"OK")
    assert c.command("a2 SELECT INBOX", until=b"a2 OK").count(b"EXISTS") == 1


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_fetches_message(imap_proxy, dovecot):
    out = subprocess.run(
        [
            "curl", "-sS", "--max-time", "10",
            f"imap://alice:secret@127.0.0.1:{imap_proxy.port}/INBOX;UID=2",
        ],
        capture_output=True,
        timeout=20,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout == crlf(ALICE_MESSAGES[1])


def test_pipelined_login_to_dovecot_reads_the_same_mailbox(
    proxy, authd, dovecot, free_port, request
):
    """proxy_pipelining (beyond nginx): Dovecot's greeting announces LITERAL+, so the login goes
    to it as one line; the client sees the same session."""
    fastmail_only(request.node.callspec.params["proxy"], "proxy_pipelining")
    add_user(authd, "alice", "secret", {"imap": ("127.0.0.1", dovecot.imap_port)}, True)
    port = free_port()
    proxy(
        mail_block(authd, server(port, "imap", "proxy_pipelining on;")),
        greetings=[(port, b"* OK")],
    )
    with imaplib.IMAP4("127.0.0.1", port, timeout=10) as imap:
        assert imap.login("alice", "secret")[0] == "OK"
        got = read_inbox(imap)
        imap.logout()
    assert got == dovecot_inbox(dovecot)


@pytest.mark.parametrize(
    "password,sent",
    [
        (b'se"cret', b'a1 LOGIN "alice" "se\\"cret"\r\n'),  # quoted: one line
        (b"s\xc3\xa9cret", b"a1 LOGIN {5}\r\n"),  # 8-bit: nginx's synchronizing literals
    ],
)
def test_pipelined_login_bytes_without_literal_plus(
    proxy, authd, fake_backend, free_port, request, password, sent
):
    fastmail_only(request.node.callspec.params["proxy"], "proxy_pipelining")
    fake_backend.users["alice"] = password.decode("utf-8")
    add_user(
        authd,
        "alice",
        password.decode("utf-8"),
        {"imap": ("127.0.0.1", fake_backend.port("imap"))},
        True,
    )
    port = free_port()
    proxy(
        mail_block(authd, server(port, "imap", "proxy_pipelining on;")),
        greetings=[(port, b"* OK")],
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s, s.makefile("rb") as f:
        f.readline()
        s.sendall(b"a1 LOGIN alice {%d+}\r\n%s\r\n" % (len(password), password))
        assert f.readline().startswith(b"a1 OK")
    assert bytes(fake_backend.sessions[-1].received).startswith(sent)
