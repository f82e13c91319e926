"""CR, LF, NUL and `\\r\\nAuth-Status: OK` in every credential form of every protocol: the
auth_http request carries them escaped, never as a header of their own (nginx too); beyond
nginx, they never reach a backend command raw (refused, or encoded) nor a log line raw
(escaped as \\xHH).
"""

from __future__ import annotations

import base64

import pytest

from fastmail.testing.authd import Backend, Reply
from support.clients import LineClient
from support.fastmail import fastmail_only, mail_block, server

EVIL = [b"a\r\nAuth-Status: OK", b"a\rb", b"a\nb", b"a\0b"]
GREETING = {"imap": b"* OK", "pop3": b"+OK", "smtp": b"220 "}


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def _imap_literal(c: LineClient, user: bytes, pw: bytes) -> None:
    c.send(b"a LOGIN {%d}\r\n" % len(user))
    c.read_until(b"+ ")
    c.read_line()
    c.send(user + b" {%d}\r\n" % len(pw))
    c.read_until(b"+ ")
    c.read_line()
    c.send(pw + b"\r\n")


def _imap_plain(c: LineClient, user: bytes, pw: bytes) -> None:
    c.send(b"a AUTHENTICATE PLAIN " + b64(b"\0" + user + b"\0" + pw) + b"\r\n")


def _imap_login(c: LineClient, user: bytes, pw: bytes) -> None:
    c.send(b"a AUTHENTICATE LOGIN\r\n")
    c.read_until(b"+ ")
    c.read_line()
    c.send(b64(user) + b"\r\n")
    c.read_until(b"+ ")
    c.read_line()
    c.send(b64(pw) + b"\r\n")


def _pop3_user(c: LineClient, user: bytes, pw: bytes) -> None:
    c.send(b"USER " + user.replace(b"\n", b"") + b"\r\n")  # a line ends at its LF
    c.read_line()
    c.send(b"PASS " + pw.replace(b"\n", b"") + b"\r\n")


def _pop3_plain(c: LineClient, user: bytes, pw: bytes) -> None:
    c.send(b"AUTH PLAIN " + b64(b"\0" + user + b"\0" + pw) + b"\r\n")


def _pop3_login(c: LineClient, user: bytes, pw: bytes) -> None:
    c.send(b"AUTH LOGIN " + b64(user) + b"\r\n")
    c.read_until(b"+ ")
    c.read_line()
    c.send(b64(pw) + b"\r\n")


def _smtp_plain(c: LineClient, user: bytes, pw: bytes) -> None:
    c.command("EHLO x", until=b"250 ")
    c.read_line()
    c.send(b"AUTH PLAIN " + b64(b"\0" + user + b"\0" + pw) + b"\r\n")


def _smtp_login(c: LineClient, user: bytes, pw: bytes) -> None:
    c.command("EHLO x", until=b"250 ")
    c.read_line()
    c.send(b"AUTH LOGIN\r\n")
    c.read_until(b"334 ")
    c.read_line()
    c.send(b64(user) + b"\r\n")
    c.read_until(b"334 ")
    c.read_line()
    c.send(b64(pw) + b"\r\n")


FORMS = {
    ("imap", "literal"): _imap_literal,
    ("imap", "plain"): _imap_plain,
    ("imap", "login"): _imap_login,
    ("pop3", "user"): _pop3_user,
    ("pop3", "plain"): _pop3_plain,
    ("pop3", "login"): _pop3_login,
    ("smtp", "plain"): _smtp_plain,
    ("smtp", "login"): _smtp_login,
}
AUTH = {
    "imap": "imap_auth plain login;",
    "pop3": "pop3_auth plain;",
    "smtp": "smtp_auth plain login;",
}


def run(proxy, authd, fake_backend, free_port, protocol: str, form: str):
    """Every EVIL value as login and as password through one credential form, the auth
    server saying OK: returns the proxy."""
    backend = Backend("127.0.0.1", fake_backend.port(protocol))
    authd.add_rule(lambda q: Reply.ok(backend, password="secret"))
    port = free_port()
    p = proxy(
        mail_block(authd, server(port, protocol, AUTH[protocol])), [(port, GREETING[protocol])]
    )
    # a clean login last: the form works, so an evil one that made no request was refused
    for evil in [*EVIL, None]:
        pairs = ((evil, b"secret"), (b"alice", evil)) if evil else ((b"alice", b"secret"),)
        for user, pw in pairs:
            with LineClient("127.0.0.1", port, timeout=5) as c:
                assert c.greeting().startswith(GREETING[protocol])
                try:
                    FORMS[protocol, form](c, user, pw)
                    c.read_line()
                except (ConnectionError, TimeoutError):
                    pass  # refused and closed: fine, as long as nothing leaked
    return p


@pytest.mark.parametrize(("protocol", "form"), list(FORMS), ids=[f"{a}-{b}" for a, b in FORMS])
def test_auth_http_headers_stay_whole(proxy, authd, fake_backend, free_port, protocol, form):
    run(proxy, authd, fake_backend, free_port, protocol, form)
    assert authd.requests[-1].user == "alice", "the clean login made no auth request"
    for q in authd.requests:
        head = q.raw.split(b"\r\n\r\n", 1)[0]
        assert b"\0" not in head and b"\n" not in head.replace(b"\r\n", b""), head
        assert b"\r" not in head.replace(b"\r\n", b""), head
        assert "Auth-Status" not in q.header_names, head


@pytest.mark.parametrize(("protocol", "form"), list(FORMS), ids=[f"{a}-{b}" for a, b in FORMS])
def test_backend_commands_and_log_lines_stay_whole(
    proxy, authd, fake_backend, free_port, protocol, form
):
    p = run(proxy, authd, fake_backend, free_port, protocol, form)
    fastmail_only(p.kind, "nginx passes CR/NUL to POP3 backends and logs login names raw")
    log = p.error_log()
    if protocol != "pop3":  # POP3 refuses such credentials before auth_http
        assert 'login: "a\\x0d\\x0aAuth-Status: OK"' in log  # escaped, on one line
    for line in log.split("\n"):
        assert "\r" not in line and "\0" not in line, line
        assert not line.startswith("Auth-Status"), line
    for s in fake_backend.sessions:
        data = bytes(s.received)
        if protocol == "imap":
            continue  # IMAP carries credentials in literals: data, never a command
        for line in data.split(b"\r\n"):
            assert b"\r" not in line and b"\n" not in line and b"\0" not in line, data
            assert not line.startswith(b"Auth-Status"), data
