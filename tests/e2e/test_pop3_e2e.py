"""POP3 through the proxy to a real Dovecot, every login method (USER/PASS, APOP, AUTH PLAIN,
LOGIN, CRAM-MD5), with poplib, raw lines and curl: the mailbox read through the proxy is the
one Dovecot holds.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import poplib
import shutil
import subprocess

import pytest

from support.dovecot import ALICE_MESSAGES
from support.fastmail import add_user, mail_block, server

# alice's third message has a 5000-byte line; typeshed leaves this private knob out
poplib._MAXLINE = 65536  # type: ignore[attr-defined]


def crlf(msg: bytes) -> bytes:
    return msg.replace(b"\n", b"\r\n")


@pytest.fixture
def pop3_proxy(proxy, authd, dovecot, free_port):
    add_user(authd, "alice", "secret", {"pop3": ("127.0.0.1", dovecot.pop3_port)}, True)
    port = free_port()
    p = proxy(
        mail_block(authd, server(port, "pop3", "pop3_auth plain apop cram-md5;")),
        greetings=[(port, b"+OK")],
    )
    p.port = port
    return p


def read_mailbox(pop: poplib.POP3) -> list[bytes]:
    count, _ = pop.stat()
    out = []
    for i in range(1, count + 1):
        _, lines, _ = pop.retr(i)
        out.append(b"\r\n".join(lines) + b"\r\n")
    return out


def dovecot_mailbox(dovecot) -> list[bytes]:
    pop = poplib.POP3("127.0.0.1", dovecot.pop3_port, timeout=10)
    try:
        pop.user("alice")
        pop.pass_("secret")
        return read_mailbox(pop)
    finally:
        pop.quit()


def test_user_pass_reads_what_dovecot_holds(pop3_proxy, dovecot, authd):
    pop = poplib.POP3("127.0.0.1", pop3_proxy.port, timeout=10)
    try:
        assert pop.getwelcome().startswith(b"+OK POP3 ready <")
        pop.user("alice")
        assert pop.pass_("secret").startswith(b"+OK")
        got = read_mailbox(pop)
    finally:
        pop.quit()
    assert got == [crlf(m) for m in ALICE_MESSAGES]
    assert got == dovecot_mailbox(dovecot)
    [req] = authd.requests
    assert (req.auth_method, req.user, req.protocol) == ("plain", "alice", "pop3")
    pop3_proxy.wait_log("client logged in, client: 127.0.0.1")


def test_apop(pop3_proxy, dovecot, authd):
    pop = poplib.POP3("127.0.0.1", pop3_proxy.port, timeout=10)
    try:
        assert pop.apop("alice", "secret").startswith(b"+OK")
        assert len(read_mailbox(pop)) == len(ALICE_MESSAGES)
    finally:
        pop.quit()
    [req] = authd.requests
    assert req.auth_method == "apop" and req["Auth-Salt"] in pop.getwelcome().decode()


def _login(c, *lines: str) -> bytes:
    assert c.greeting().startswith(b"+OK")
    reply = b""
    for line in lines:
        reply = c.command(line)
    return reply


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN", "CRAM-MD5"])
def test_auth_mechanisms(pop3_proxy, dovecot, line_client, mech):
    c = line_client(pop3_proxy.port)
    assert c.greeting().startswith(b"+OK")
    if mech == "PLAIN":
        reply = c.command("AUTH PLAIN " + base64.b64encode(b"\0alice\0secret").decode())
    elif mech == "LOGIN":
        assert c.command("AUTH LOGIN") == b"+ VXNlcm5hbWU6\r\n"
        assert c.command(base64.b64encode(b"alice")) == b"+ UGFzc3dvcmQ6\r\n"
        reply = c.command(base64.b64encode(b"secret"))
    else:
        challenge = base64.b64decode(c.command("AUTH CRAM-MD5")[2:].strip())
        digest = hmac.new(b"secret", challenge, "md5").hexdigest()
        reply = c.command(base64.b64encode(b"alice " + digest.encode()))
    assert reply.startswith(b"+OK"), reply
    stat = c.command("STAT")
    assert stat == b"+OK %d %d\r\n" % (
        len(ALICE_MESSAGES),
        sum(len(crlf(m)) for m in ALICE_MESSAGES),
    )
    assert c.command("QUIT").startswith(b"+OK")


def test_wrong_password(pop3_proxy, line_client):
    c = line_client(pop3_proxy.port)
    assert c.greeting().startswith(b"+OK")
    assert c.command("USER alice") == b"+OK\r\n"
    assert c.command("PASS nope") == b"-ERR Invalid login or password\r\n"
    pop3_proxy.wait_log('client login failed: "Invalid login or password"')


def test_apop_digest_is_checked(pop3_proxy, line_client):
    c = line_client(pop3_proxy.port)
    c.greeting()
    bad = hashlib.md5(b"<not the salt>secret").hexdigest()
    assert c.command(f"APOP alice {bad}") == b"-ERR Invalid login or password\r\n"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_retrieves_message(pop3_proxy, dovecot):
    out = subprocess.run(
        ["curl", "-sS", "--max-time", "10", f"pop3://alice:secret@127.0.0.1:{pop3_proxy.port}/3"],
        capture_output=True,
        timeout=20,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == crlf(ALICE_MESSAGES[2])
