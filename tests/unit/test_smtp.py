"""Transcript tests for the SMTP client session machine (fastmail/_smtp.pyx).

Replies are nginx 1.22.1's bytes; the tests marked "beyond nginx" check the deliberate
differences listed in docs/differences.md.
"""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastmail._core import ACT_AUTH, ACT_CLOSE, ACT_SEND, ACT_STARTTLS, ACT_TIMER
from fastmail._smtp import SmtpProfile, SmtpSession

OK = b"250 2.0.0 OK\r\n"
INVALID = b"500 5.5.1 Invalid command\r\n"
BAD_ARG = b"501 5.5.4 Invalid argument\r\n"
BAD_SEQ = b"503 5.5.1 Bad sequence of commands\r\n"
AUTH_REQUIRED = b"530 5.7.1 Authentication required\r\n"
USERNAME = b"334 VXNlcm5hbWU6\r\n"
PASSWORD = b"334 UGFzc3dvcmQ6\r\n"
INTERNAL = b"451 4.3.2 Internal server error\r\n"


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


class Client:
    """Drives one SmtpSession as the session driver would, recording actions."""

    def __init__(self, tls: bool = False, **profile: Any) -> None:
        profile.setdefault("server_name", b"mx.test")
        self.m = SmtpSession(SmtpProfile(**profile), tls=tls)
        self.act = self.m.start()
        self.greeting = self.m.take_output()

    def send(self, data: bytes) -> bytes:
        self.act = self.m.feed(data)
        return self.m.take_output()

    def fail(
        self, msg: bytes = b"Nope", code: bytes | None = None, retry: bool = False, **kw: Any
    ) -> bytes:
        self.act = self.m.on_auth_fail(msg, code, retry, **kw)
        return self.m.take_output()

    @property
    def closed(self) -> bool:
        return bool(self.act & ACT_CLOSE)

    @property
    def asks_auth(self) -> bool:
        return bool(self.act & ACT_AUTH)


# --- greeting, HELO/EHLO ------------------------------------------------------------------


def test_greeting_uses_server_name() -> None:
    c = Client()
    assert c.greeting == b"220 mx.test ESMTP ready\r\n"
    assert c.act == ACT_SEND


EHLO_CASES = [
    ({}, b"250-mx.test\r\n250 AUTH PLAIN LOGIN\r\n"),
    (
        {
            "auth_methods": ["login", "plain", "cram-md5", "external"],
            "capabilities": [b"SIZE 10485760", b"ENHANCEDSTATUSCODES", b"8BITMIME", b"DSN"],
        },
        b"250-mx.test\r\n250-SIZE 10485760\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n"
        b"250-DSN\r\n250 AUTH PLAIN LOGIN CRAM-MD5 EXTERNAL\r\n",
    ),
    ({"auth_methods": ["none"]}, b"250 mx.test\r\n"),
    (
        {"auth_methods": ["none"], "capabilities": [b"PIPELINING"]},
        b"250-mx.test\r\n250 PIPELINING\r\n",
    ),
    ({"auth_methods": ["cram-md5"]}, b"250-mx.test\r\n250 AUTH CRAM-MD5\r\n"),
    (
        {"starttls": "on", "tls_available": True, "capabilities": [b"SIZE 1000", b"8BITMIME"]},
        b"250-mx.test\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-AUTH PLAIN LOGIN\r\n250 STARTTLS\r\n",
    ),
    (
        {"starttls": "only", "tls_available": True, "capabilities": [b"SIZE 1000", b"8BITMIME"]},
        b"250-mx.test\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250 STARTTLS\r\n",
    ),
    (
        {"starttls": "only", "tls_available": True, "auth_methods": ["none"]},
        b"250-mx.test\r\n250 STARTTLS\r\n",
    ),
    (
        {"starttls": "on", "tls_available": True, "auth_methods": ["none"]},
        b"250-mx.test\r\n250 STARTTLS\r\n",
    ),
    (
        {"auth_methods": ["plain", "xoauth2", "oauthbearer"]},
        b"250-mx.test\r\n250 AUTH PLAIN XOAUTH2 OAUTHBEARER\r\n",
    ),
]


@pytest.mark.parametrize(("profile", "reply"), EHLO_CASES)
def test_ehlo_reply(profile: dict[str, Any], reply: bytes) -> None:
    assert Client(**profile).send(b"EHLO client.example\r\n") == reply


def test_ehlo_after_starttls_and_on_tls_listener() -> None:
    kw: dict[str, Any] = {
        "starttls": "on",
        "tls_available": True,
        "capabilities": [b"SIZE 1000", b"8BITMIME"],
    }
    c = Client(**kw)
    assert c.send(b"STARTTLS\r\n") == b"220 2.0.0 Start TLS\r\n"
    assert c.act == ACT_SEND | ACT_STARTTLS
    c.m.on_tls_done()
    plain = b"250-mx.test\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250 AUTH PLAIN LOGIN\r\n"
    assert c.send(b"EHLO x\r\n") == plain
    assert Client(tls=True, **kw).send(b"EHLO x\r\n") == plain
    c = Client(starttls="on", tls_available=True, auth_methods=["plain", "none"])
    c.send(b"STARTTLS\r\n")
    c.m.on_tls_done()
    assert c.send(b"EHLO x\r\n") == b"250-mx.test\r\n250 AUTH PLAIN\r\n"


def test_helo_and_argument_counts() -> None:
    c = Client()
    assert c.send(b"HELO x\r\n") == b"250 mx.test\r\n"
    assert c.send(b"HELO\r\n") == BAD_ARG
    assert c.send(b"EHLO a b\r\n") == BAD_ARG
    assert c.send(b"HELO \xff\xfe\r\n") == b"250 mx.test\r\n"
    assert c.send(b"HELO x   \r\n") == b"250 mx.test\r\n"
    assert c.m.errors == 0  # 501s are not parse errors


def test_helo_with_nul_refused_beyond_nginx() -> None:
    # Beyond nginx: a NUL would reach Auth-SMTP-Helo and the backend's HELO line.
    c = Client()
    assert c.send(b"HELO a\0b\r\n") == BAD_ARG
    assert c.m.helo == b""


def test_noop_rset_quit() -> None:
    c = Client()
    assert c.send(b"NOOP\r\n") == OK
    assert c.send(b"noop with args\r\n") == OK
    assert c.send(b"NOOP\n") == OK
    assert c.send(b"RSET x\r\n") == OK
    assert c.send(b"QUIT\r\n") == b"221 2.0.0 Bye\r\n"
    assert c.closed
    assert c.send(b"NOOP\r\n") == b"" and c.act == 0


# --- parser -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b"H3LO x\r\n",
        b"NOOP\tx\r\n",
        b"NOOP\0x\r\n",
        b"\r\n",
        b" NOOP\r\n",
        b"NOOP\rX\r\n",
        b"DATA\r\n",
        b"FOO\r\n",
        b"NOOPS\r\n",
        b"STARTTL\r\n",
        b"NOOP 1 2 3 4 5 6 7 8 9 10 11 12\r\n",
    ],
)
def test_parse_errors(line: bytes) -> None:
    c = Client()
    assert c.send(line) == INVALID
    assert c.m.errors == 1
    assert not c.closed


def test_eleven_arguments_are_fine() -> None:
    assert Client().send(b"NOOP 1 2 3 4 5 6 7 8 9 10 11\r\n") == OK


def test_handler_500s_not_counted() -> None:
    c = Client()
    for line in (b"VRFY x\r\n", b"EXPN x\r\n", b"HELP\r\n", b"STARTTLS\r\n", b"AUTH FOO\r\n"):
        assert c.send(line) == INVALID
    assert c.m.errors == 0


def test_invalid_command_split_across_reads_gives_one_error() -> None:
    c = Client()
    assert c.send(b"FOO B") == b""
    assert c.send(b"AR\r\n") == INVALID
    assert c.send(b"HEL") == b""
    assert c.send(b"O example.com\r\n") == b"250 mx.test\r\n"


def test_max_errors_closes_on_the_last_error() -> None:
    c = Client(max_errors=3)
    assert c.send(b"DATA\r\nDATA\r\n") == INVALID * 2 and not c.closed
    assert c.send(b"DATA\r\nNOOP\r\n") == INVALID
    assert c.closed
    assert c.m.close_reason == "client sent too many invalid commands"


def test_max_commands_at_its_edge() -> None:
    c = Client(max_commands=3)
    assert c.send(b"NOOP\r\nDATA\r\nNOOP\r\nAUTH LOGIN\r\n") == OK + INVALID + OK + USERNAME
    assert c.send(b"dXNy\r\n") == INVALID  # SASL lines count, parse errors do not
    assert c.closed and c.m.close_reason == "client sent too many commands"
    assert Client(max_commands=0).send(b"NOOP\r\n" * 2000) == OK * 2000


# --- limits: smtp_client_buffer --------------------------------------------------------------


def line_of(size: int, verb: bytes = b"NOOP ") -> bytes:
    return verb + b"x" * (size - len(verb) - 2) + b"\r\n"


@pytest.mark.parametrize(("size", "ok"), [(63, True), (64, True), (65, False)])
def test_buffer_limit_edge(size: int, ok: bool) -> None:
    c = Client(client_buffer=64)
    out = c.send(line_of(size))
    assert out == (OK if ok else INVALID)
    assert c.closed is (not ok)
    if not ok:
        assert c.m.close_reason.startswith('client sent too long command "NOOP xxx')


def test_buffer_limit_incomplete_line_closes_when_full() -> None:
    c = Client(client_buffer=64)
    assert c.send(b"NOOP " + b"x" * 58) == b""  # 63 bytes, still room
    assert c.send(b"x") == INVALID and c.closed


@pytest.mark.parametrize(("size", "ok"), [(63, True), (64, True), (65, False)])
def test_buffer_limit_sasl_line(size: int, ok: bool) -> None:
    c = Client(client_buffer=64)
    assert c.send(b"AUTH LOGIN\r\n") == USERNAME
    n = size - 2
    k = n - 1 if n % 4 == 1 else n  # keep the base64 valid: what is after `=` is ignored
    out = c.send(b"A" * k + b"=" * (n - k) + b"\r\n")
    if ok:
        assert out == PASSWORD
    else:
        assert out == INVALID and c.closed


def test_pipeline_longer_than_buffer_beyond_nginx() -> None:
    # nginx closes on the 11th NOOP (no compaction); fastmail answers all twelve.
    c = Client(client_buffer=64)
    assert c.send(b"NOOP\r\n" * 12) == OK * 12
    assert not c.closed


# --- MAIL / RCPT and smtp_auth none ----------------------------------------------------------


def test_mail_without_none_is_530_and_pipelining_survives() -> None:
    c = Client()
    # Beyond nginx: at any log level the pipelined NOOP is answered.
    assert c.send(b"MAIL FROM:<a@b>\r\nNOOP\r\n") == AUTH_REQUIRED + OK
    assert c.send(b"RCPT TO:<x@y>\r\n") == BAD_SEQ


def test_smtp_auth_none_flow() -> None:
    c = Client(auth_methods=["none"])
    assert c.send(b"EHLO cl.example\r\n") == b"250 mx.test\r\n"
    assert c.send(b"RCPT TO:<x@y>\r\n") == BAD_SEQ
    assert c.send(b"MAIL\r\n") == BAD_ARG
    assert c.send(b"mail from:<a@b>  SIZE=10   \r\n") == OK
    assert c.send(b"MAIL FROM:<c@d>\r\n") == BAD_SEQ
    assert c.send(b"RCPT\r\n") == BAD_ARG
    assert c.send(b"RCPT  TO:<x@y>  NOTIFY=NEVER\r\nDATA\r\nbody\r\n") == b""
    assert c.act == ACT_AUTH
    a = c.m.auth
    assert (a.protocol, a.method, a.user, a.passwd, a.salt) == (b"smtp", b"none", b"", b"", b"")
    assert a.smtp_helo == b"cl.example" and a.esmtp
    assert a.smtp_from == b"mail from:<a@b>  SIZE=10"
    assert a.smtp_to == b"RCPT  TO:<x@y>  NOTIFY=NEVER"
    assert a.login_attempt == 1
    assert c.m.on_auth_ok() == 0
    assert c.m.take_input() == b"DATA\r\nbody\r\n"


def test_none_mail_with_empty_address_and_rset_helo_forget() -> None:
    c = Client(auth_methods=["none"])
    assert c.send(b"MAIL FROM:\r\n") == OK
    assert c.send(b"RSET\r\n") == OK
    assert c.send(b"MAIL FROM:<a@b>\r\n") == OK
    assert c.send(b"HELO x\r\n") == b"250 mx.test\r\n"
    assert c.send(b"RCPT TO:<x@y>\r\n") == BAD_SEQ


def test_none_retry_keeps_mail_and_never_sends_stale_credentials() -> None:
    c = Client(auth_methods=["plain", "none"])
    c.send(b"AUTH PLAIN " + b64(b"\0bob\0bad") + b"\r\n")
    assert c.m.auth.user == b"bob"
    assert c.fail(b"Nope", retry=True) == b"535 5.7.0 Nope\r\n"
    c.send(b"MAIL FROM:<a@b>\r\n")
    c.send(b"RCPT TO:<x@y>\r\n")
    a = c.m.auth
    assert (a.method, a.user, a.passwd, a.login_attempt) == (b"none", b"", b"", 2)
    assert c.fail(b"Again", retry=True) == b"535 5.7.0 Again\r\n"
    assert c.send(b"MAIL FROM:<z@z>\r\n") == BAD_SEQ  # MAIL still stored
    c.send(b"RCPT TO:<q@q>\r\n")
    assert c.asks_auth and c.m.auth.smtp_from == b"MAIL FROM:<a@b>"


STARTTLS_FIRST = b"530 5.7.0 Must issue a STARTTLS command first\r\n"


def test_none_under_starttls_only_needs_starttls_first_beyond_nginx() -> None:
    """nginx#705: nginx takes MAIL and RCPT in plain text under `starttls only` when
    `smtp_auth none`; fastmail answers as Postfix does until STARTTLS."""
    c = Client(auth_methods=["none"], starttls="only", tls_available=True)
    assert c.send(b"MAIL FROM:<a@b>\r\n") == STARTTLS_FIRST
    assert c.send(b"RCPT TO:<x@y>\r\n") == BAD_SEQ
    assert not c.asks_auth and not c.closed and c.m.errors == 0
    assert c.send(b"STARTTLS\r\n") == b"220 2.0.0 Start TLS\r\n"
    c.m.on_tls_done()
    assert c.send(b"EHLO x\r\nMAIL FROM:<a@b>\r\n").endswith(OK)
    c.send(b"RCPT TO:<x@y>\r\n")
    assert c.asks_auth and c.m.auth.smtp_from == b"MAIL FROM:<a@b>"


@pytest.mark.parametrize("tls,starttls", [(True, "only"), (False, "on"), (False, "off")])
def test_none_mail_needs_no_starttls_otherwise(tls: bool, starttls: str) -> None:
    c = Client(tls=tls, auth_methods=["none"], starttls=starttls, tls_available=True)
    assert c.send(b"MAIL FROM:<a@b>\r\n") == OK


def test_starttls_only_without_none_is_still_auth_required() -> None:
    c = Client(auth_methods=["plain"], starttls="only", tls_available=True)
    assert c.send(b"MAIL FROM:<a@b>\r\n") == AUTH_REQUIRED  # nginx's order: 530 5.7.1 first


def test_mail_with_nul_refused_beyond_nginx() -> None:
    c = Client(auth_methods=["none"])
    assert c.send(b"MAIL FROM:<a\0@b>\r\n") == BAD_ARG
    assert c.send(b"MAIL FROM:<a@b>\r\n") == OK
    assert c.send(b"RCPT TO:<x\0@y>\r\n") == BAD_ARG


# --- AUTH --------------------------------------------------------------------------------------


def test_auth_plain_initial_response() -> None:
    c = Client()
    c.send(b"EHLO cl\r\n")
    assert c.send(b"AUTH PLAIN " + b64(b"authz\0test\0secret") + b"\r\n") == b""
    assert c.act == ACT_AUTH
    a = c.m.auth
    assert (a.method, a.user, a.passwd, a.salt, a.login_attempt) == (
        b"plain",
        b"test",
        b"secret",
        b"",
        1,
    )
    assert a.smtp_helo == b"cl" and a.esmtp and a.protocol == b"smtp"
    assert c.m.phase == "in http auth state"


def test_auth_plain_challenge_and_quirks() -> None:
    c = Client()
    assert c.send(b"AUTH PLAIN\r\n") == b"334 \r\n"
    assert c.send(b64(b"\0\0secret") + b" extra\r\n") == b""
    assert (c.m.auth.user, c.m.auth.passwd) == (b"", b"secret")
    c = Client()
    assert c.send(b"AUTH PLAIN AHVzZXIAcGFzcw=!!garbage\r\n") == b""
    assert (c.m.auth.user, c.m.auth.passwd) == (b"user", b"pass")


@pytest.mark.parametrize("resp", [b64(b"nonul"), b64(b"ab\0"), b64(b"\0only"), b"*", b"abcde"])
def test_auth_plain_bad_response(resp: bytes) -> None:
    c = Client()
    c.send(b"AUTH PLAIN\r\n")
    assert c.send(resp + b"\r\nNOOP\r\n") == INVALID + OK
    assert c.m.errors == 0


def test_auth_login_both_forms() -> None:
    c = Client()
    assert c.send(b"AUTH LOGIN\r\n") == USERNAME
    assert c.send(b64(b"test") + b"\r\n") == PASSWORD
    assert c.send(b64(b"secret") + b"\r\n") == b""
    assert (c.m.auth.method, c.m.auth.user, c.m.auth.passwd) == (b"plain", b"test", b"secret")
    c = Client()
    assert c.send(b"auth login " + b64(b"test") + b"\r\n") == PASSWORD
    assert c.send(b"\r\n") == b""
    assert (c.m.auth.user, c.m.auth.passwd) == (b"test", b"")


def test_sasl_line_is_never_a_command() -> None:
    c = Client()
    c.send(b"AUTH LOGIN\r\n")
    assert c.send(b"QUIT\r\n") == PASSWORD
    assert c.send(b"NOOP\r\n") == b""
    assert (c.m.auth.user, c.m.auth.passwd) == (b"AB\x13", b"4\xe3\x8f")
    c = Client()
    c.send(b"AUTH LOGIN\r\n")
    c.send(b" dXNy\r\n")
    c.send(b"=\r\n")
    assert (c.m.auth.user, c.m.auth.passwd) == (b"", b"")
    c = Client()
    c.send(b"AUTH LOGIN =\r\n")
    c.send(b"dXNy extra\r\n")
    assert (c.m.auth.user, c.m.auth.passwd) == (b"", b"usr")


def test_parse_error_in_sasl_exchange_counts_and_resets() -> None:
    c = Client()
    c.send(b"AUTH LOGIN\r\n")
    assert c.send(b"a\rb\r\n") == INVALID
    assert c.m.errors == 1
    assert c.send(b"NOOP\r\n") == OK


@pytest.mark.parametrize(
    "line",
    [
        b"AUTH LOGIN a b\r\n",
        b"AUTH PLAIN a b\r\n",
        b"AUTH CRAM-MD5\r\n",
        b"AUTH EXTERNAL\r\n",
        b"AUTH EXTERNAL " + b64(b"carol") + b"\r\n",
        b"AUTH XOAUTH2\r\n",
        b"AUTH OAUTHBEARER\r\n",
        b"AUTH GSSAPI\r\n",
        b"AUTH LOGIN *\r\n",
    ],
)
def test_auth_refused_500_not_counted(line: bytes) -> None:
    c = Client()
    assert c.send(line) == INVALID
    assert c.m.errors == 0 and not c.asks_auth


def test_auth_needs_argument_and_starttls_only() -> None:
    assert Client().send(b"AUTH\r\n") == BAD_ARG
    c = Client(starttls="only", tls_available=True)
    assert c.send(b"AUTH PLAIN " + b64(b"\0a\0b") + b"\r\n") == INVALID
    assert c.send(b"MAIL FROM:<a@b>\r\n") == AUTH_REQUIRED
    assert Client(tls=True, starttls="only", tls_available=True).send(b"AUTH LOGIN\r\n") == USERNAME


def test_plain_login_accepted_when_not_listed() -> None:
    c = Client(auth_methods=["cram-md5"])
    assert c.send(b"AUTH LOGIN\r\n") == USERNAME


def test_cram_md5() -> None:
    c = Client(auth_methods=["cram-md5"])
    out = c.send(b"AUTH CRAM-MD5\r\n")
    m = re.fullmatch(rb"334 ([A-Za-z0-9+/=]+)\r\n", out)
    assert m
    salt = base64.b64decode(m.group(1))
    assert re.fullmatch(rb"<\d+\.\d+@mx\.test>", salt)
    digest = b"0123456789abcdef" * 2
    c.send(b64(b"test " + digest) + b"\r\n")
    a = c.m.auth
    assert (a.method, a.user, a.passwd, a.salt) == (b"cram-md5", b"test", digest, salt + b"\r\n")
    c.fail(retry=True)
    assert c.send(b"AUTH CRAM-MD5\r\n") == out  # same challenge all session (nginx)
    assert c.send(b64(b"test") + b"\r\n") == INVALID  # no digest: never a stale password
    c.send(b"AUTH CRAM-MD5\r\n")
    assert c.send(b64(b"us er " + digest) + b"\r\n") == INVALID  # 35-byte digest


def test_external() -> None:
    c = Client(auth_methods=["external"])
    assert c.send(b"AUTH EXTERNAL\r\n") == USERNAME
    c.send(b64(b"carol") + b"\r\n")
    assert (c.m.auth.method, c.m.auth.user, c.m.auth.passwd) == (b"external", b"carol", b"")


def test_external_never_reuses_password_beyond_nginx() -> None:
    c = Client(auth_methods=["plain", "external"])
    c.send(b"AUTH PLAIN " + b64(b"\0bob\0oldsecret") + b"\r\n")
    c.fail(retry=True)
    c.send(b"AUTH EXTERNAL " + b64(b"carol") + b"\r\n")
    a = c.m.auth
    assert (a.method, a.user, a.passwd, a.login_attempt) == (b"external", b"carol", b"", 2)


# --- XOAUTH2 / OAUTHBEARER (freenginx 1.27.1) --------------------------------------------------

OAUTH: dict[str, Any] = {"auth_methods": ["plain", "xoauth2", "oauthbearer"]}
XO_TOKEN = b64(b"user=test@example.com\x01auth=Bearer secretok\x01\x01")
OB_TOKEN = b64(b"n,a=test@example.com,\x01auth=Bearer secretok\x01\x01")


def test_xoauth2_and_oauthbearer_forms() -> None:
    for mech, tok, method in (
        (b"XOAUTH2", XO_TOKEN, b"xoauth2"),
        (b"OAUTHBEARER", OB_TOKEN, b"oauthbearer"),
    ):
        c = Client(**OAUTH)
        c.send(b"AUTH " + mech + b" " + tok + b"\r\n")
        assert (c.m.auth.method, c.m.auth.user, c.m.auth.passwd) == (
            method,
            b"test@example.com",
            b"secretok",
        )
        c = Client(**OAUTH)
        assert c.send(b"AUTH " + mech + b"\r\n") == b"334 \r\n"
        c.send(tok + b"\r\n")
        assert c.asks_auth and c.m.auth.passwd == b"secretok"


def test_oauthbearer_escaped_login() -> None:
    c = Client(**OAUTH)
    c.send(
        b"AUTH OAUTHBEARER "
        + b64(b"n,a=test=3D=2C@example.com,\x01auth=Bearer t\x01\x01")
        + b"\r\n"
    )
    assert c.m.auth.user == b"test=,@example.com"


@pytest.mark.parametrize(
    ("mech", "raw"),
    [
        (b"XOAUTH2", b"usr=a\x01auth=Bearer t\x01\x01"),
        (b"XOAUTH2", b"user=a\x01auth=Basic t\x01\x01"),
        (b"XOAUTH2", b"user=a\x01auth=Bearer t\x01"),
        (b"OAUTHBEARER", b"n,a=x=41,\x01auth=Bearer t\x01\x01"),
        (b"OAUTHBEARER", b"n,,\x01auth=Bearer t\x01\x01"),
        (b"OAUTHBEARER", b"n,a=x,\x01host=h\x01\x01"),
    ],
)
def test_oauth_invalid_is_500(mech: bytes, raw: bytes) -> None:
    c = Client(**OAUTH)
    assert c.send(b"AUTH " + mech + b" " + b64(raw) + b"\r\n") == INVALID
    assert not c.asks_auth


def test_auth_error_sasl() -> None:
    sasl = b"eyJzdGF0dXMiOiI0MDEifQ=="
    c = Client(**OAUTH)
    c.send(b"AUTH XOAUTH2 " + XO_TOKEN + b"\r\n")
    assert c.fail(b"auth-failed", sasl=sasl) == b"334 " + sasl + b"\r\n"
    assert not c.closed
    assert c.send(b"\r\n") == b"535 5.7.0 auth-failed\r\n" and c.closed
    # OAUTHBEARER with Auth-Wait: dummy AQ== then failure, session continues.
    c = Client(**OAUTH)
    c.send(b"AUTH OAUTHBEARER " + OB_TOKEN + b"\r\n")
    c.fail(b"auth-failed", retry=True, sasl=sasl)
    assert c.send(b"AQ==\r\n") == b"535 5.7.0 auth-failed\r\n" and not c.closed
    c.send(b"AUTH OAUTHBEARER " + OB_TOKEN + b"\r\n")
    c.fail(b"auth-failed", retry=True, sasl=sasl)
    assert c.send(b"foo\r\n") == INVALID and not c.closed
    c.send(b"AUTH OAUTHBEARER " + OB_TOKEN + b"\r\n")
    assert c.asks_auth and c.m.auth.login_attempt == 3
    # Without Auth-Wait a wrong answer closes; SASL error ignored for other methods.
    c = Client(**OAUTH)
    c.send(b"AUTH XOAUTH2 " + XO_TOKEN + b"\r\n")
    c.fail(sasl=sasl)
    assert c.send(b"foo\r\n") == INVALID and c.closed
    c = Client(**OAUTH)
    c.send(b"AUTH PLAIN " + b64(b"\0a\0b") + b"\r\n")
    assert c.fail(b"x", sasl=sasl) == b"535 5.7.0 x\r\n" and c.closed


# --- auth results --------------------------------------------------------------------------------


def test_auth_fail_closes() -> None:
    c = Client()
    c.send(b"AUTH PLAIN " + b64(b"\0a\0b") + b"\r\nNOOP\r\n")
    assert c.fail(b"bad\x01\x7f\xff msg") == b"535 5.7.0 bad\x01\x7f\xff msg\r\n"
    assert c.act == ACT_SEND | ACT_CLOSE


def test_auth_fail_with_error_code() -> None:
    c = Client()
    c.send(b"AUTH PLAIN " + b64(b"\0a\0b") + b"\r\n")
    assert c.fail(b"Bad thing happened", b"550 5.7.1") == b"550 5.7.1 Bad thing happened\r\n"


def test_auth_fail_retry_processes_queued_input() -> None:
    c = Client()
    assert c.send(b"AUTH PLAIN " + b64(b"\0a\0b") + b"\r\nNOOP\r\n") == b""
    assert c.send(b"RSET\r\n") == b""  # not parsed while auth_http runs
    assert c.fail(retry=True) == b"535 5.7.0 Nope\r\n" + OK + OK
    assert c.m.phase == "in auth state"
    c.send(b"AUTH LOGIN " + b64(b"a") + b"\r\n" + b64(b"b") + b"\r\n")
    assert c.m.auth.login_attempt == 2


def test_auth_error_is_451_and_close() -> None:
    c = Client()
    c.send(b"AUTH PLAIN " + b64(b"\0a\0b") + b"\r\n")
    assert c.m.on_auth_error() == ACT_SEND | ACT_CLOSE
    assert c.m.take_output() == INTERNAL


def test_auth_ok_keeps_pipelined_input_for_relay() -> None:
    c = Client()
    c.send(b"AUTH PLAIN " + b64(b"\0a\0b") + b"\r\nMAIL FROM:<a@b>\r\n")
    c.send(b"RCPT TO:<c@d>\r\n")
    assert c.m.on_auth_ok() == 0
    assert c.m.take_output() == b""
    assert c.m.take_input() == b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n"


# --- STARTTLS ------------------------------------------------------------------------------------


def test_starttls_injection_is_discarded() -> None:
    c = Client(starttls="on", tls_available=True, auth_methods=["none"])
    c.send(b"EHLO first\r\n")
    assert (
        c.send(b"STARTTLS\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<v@x>\r\n") == b"220 2.0.0 Start TLS\r\n"
    )
    assert c.act == ACT_SEND | ACT_STARTTLS
    assert c.m.pending == 0
    assert c.m.on_tls_done() == 0
    assert c.m.take_output() == b""
    assert c.send(b"RCPT TO:<v@x>\r\n") == BAD_SEQ  # the injected MAIL never ran
    c.send(b"MAIL FROM:<good@x>\r\nRCPT TO:<v@x>\r\n")
    a = c.m.auth
    assert a.smtp_helo == b"" and a.esmtp and a.smtp_from == b"MAIL FROM:<good@x>"


def test_starttls_refused() -> None:
    assert Client().send(b"STARTTLS\r\n") == INVALID
    assert Client(tls=True, starttls="on", tls_available=True).send(b"STARTTLS\r\n") == INVALID
    c = Client(starttls="on", tls_available=True)
    assert c.send(b"starttls ignored args\r\n") == b"220 2.0.0 Start TLS\r\n"
    c.m.on_tls_done()
    assert c.send(b"STARTTLS\r\n") == INVALID


# --- greeting delay and timeout ------------------------------------------------------------------


def test_greeting_delay_silent_client() -> None:
    c = Client(greeting_delay=1000)
    assert c.act == ACT_TIMER and c.m.timer_ms == 1000 and c.greeting == b""
    assert c.m.phase == "in delay pipelining state"
    assert c.m.on_timer() == ACT_SEND
    assert c.m.take_output() == b"220 mx.test ESMTP ready\r\n"
    assert c.send(b"EHLO x\r\n") == b"250-mx.test\r\n250 AUTH PLAIN LOGIN\r\n"


def test_greeting_delay_early_talker() -> None:
    c = Client(greeting_delay=1000)
    assert c.send(b"EHLO x\r\n") == b"503 5.5.0 Improper use of SMTP command pipelining\r\n"
    assert c.act == ACT_SEND | ACT_CLOSE
    assert c.m.close_reason == 'client was rejected before greeting: "EHLO x__"'
    assert c.m.on_timer() == 0


def test_timeout_closes_without_reply() -> None:
    c = Client()
    assert c.m.on_timeout() == ACT_CLOSE
    assert c.m.take_output() == b""
    assert c.m.close_reason == "client timed out (110: Connection timed out)"


def test_profile_rejects_bad_config() -> None:
    with pytest.raises(ValueError):
        SmtpProfile(auth_methods=["apop"])
    with pytest.raises(ValueError):
        SmtpProfile(starttls="on")  # no TLS context


# --- any chunking gives the same result -----------------------------------------------------------

LINES = [
    b"EHLO cl\r\n",
    b"HELO x\r\n",
    b"NOOP\r\n",
    b"RSET\r\n",
    b"DATA\r\n",
    b"VRFY a\r\n",
    b"MAIL FROM:<a@b>\r\n",
    b"RCPT TO:<c@d>\r\n",
    b"AUTH LOGIN\r\n",
    b"AUTH PLAIN\r\n",
    b"dGVzdA==\r\n",
    b"AHRlc3QAc2VjcmV0\r\n",
    b"AUTH PLAIN AHRlc3QAc2VjcmV0\r\n",
    b"*\r\n",
    b"NOOP\rX\r\n",
    b"\r\n",
    b"\n",
    b"STARTTLS\r\n",
    b"AUTH CRAM-MD5\r\n",
    b"QUIT\r\n",
    b"NOOP " + b"y" * 40 + b"\r\n",
    b"NOOP " + b"z" * 70 + b"\r\n",
    b"FOO B",
    b"AR\n",
    b"AUTH XOAUTH2 " + XO_TOKEN + b"\r\n",
]


def run_chunks(
    chunks: list[bytes], profile: SmtpProfile
) -> tuple[bytes, list[tuple[object, ...]], int]:
    m = SmtpSession(profile)
    out = bytearray()
    auths: list[tuple[object, ...]] = []
    act = m.start()
    out += m.take_output()
    for chunk in chunks:
        if act & ACT_CLOSE:
            break
        act = m.feed(chunk)
        while act & ACT_AUTH:
            a = m.auth
            auths.append(
                (a.method, a.user, a.passwd, a.smtp_helo, a.smtp_from, a.smtp_to, a.login_attempt)
            )
            out += m.take_output()
            act = (act & ~ACT_AUTH) | m.on_auth_fail(b"no", None, True)
        out += m.take_output()
    return bytes(out), auths, act & ACT_CLOSE


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(LINES), max_size=25),
    st.lists(st.integers(min_value=1, max_value=80), max_size=40),
    st.sampled_from([["plain", "login"], ["none", "plain", "xoauth2"]]),
)
def test_any_chunking_same_result(lines: list[bytes], cuts: list[int], methods: list[str]) -> None:
    profile = SmtpProfile(
        server_name=b"mx.test",
        client_buffer=64,
        max_errors=6,
        auth_methods=methods,
        max_commands=30,
    )
    data = b"".join(lines)
    chunks, i = [], 0
    for n in cuts:
        if i >= len(data):
            break
        chunks.append(data[i : i + n])
        i += n
    chunks.append(data[i:])
    assert run_chunks(chunks, profile) == run_chunks([data], profile)
    assert run_chunks([bytes([b]) for b in data], profile) == run_chunks([data], profile)
