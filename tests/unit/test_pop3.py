"""POP3 client session machine: nginx 1.22.1's exact replies, the limits at their edges, STLS
injection, auth results, and chunking independence."""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastmail._core import ACT_AUTH, ACT_CLOSE, ACT_SEND, ACT_STARTTLS
from fastmail._pop3 import Pop3Profile, Pop3Session

SALT = b"<1426111606.1795744322@pop.example.com>\r\n"
ERR = b"-ERR invalid command\r\n"
CAPA_HEAD = b"+OK Capability list follows\r\n"
DEFAULT_CAPA = CAPA_HEAD + b"TOP\r\nUSER\r\nUIDL\r\nSASL PLAIN LOGIN\r\n.\r\n"
DIGEST = b"0" * 32


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


class Client:
    """A tiny playbook: bytes in, (actions, bytes out) per step; auth results in."""

    def __init__(self, tls: bool = False, **kw: Any) -> None:
        profile = Pop3Profile(**kw)
        self.m = Pop3Session(profile, tls=tls, salt=SALT if profile.needs_salt else None)
        self.acts = self.m.start()
        self.greeting = self.m.take_output()

    def __call__(self, data: bytes) -> bytes:
        self.acts = self.m.feed(data)
        out = self.m.take_output()
        assert bool(self.acts & ACT_SEND) == bool(out)
        return out

    def event(self, name: str, *args: object, **kw: object) -> bytes:
        self.acts = getattr(self.m, name)(*args, **kw)
        return self.m.take_output()

    @property
    def closed(self) -> bool:
        return bool(self.acts & ACT_CLOSE)

    @property
    def asked(self) -> tuple[bytes, bytes, bytes, bytes, int] | None:
        if not self.acts & ACT_AUTH:
            return None
        a = self.m.auth
        assert a.protocol == b"pop3"
        return a.method, a.user, a.passwd, a.salt, a.login_attempt


# --- greeting, CAPA, AUTH lists ----------------------------------------------------------------


def test_greeting_plain() -> None:
    c = Client()
    assert c.greeting == b"+OK POP3 ready\r\n"
    assert c.acts == ACT_SEND


@pytest.mark.parametrize("methods", [["plain", "apop"], ["cram-md5"]])
def test_greeting_with_salt(methods: list[str]) -> None:
    c = Client(auth_methods=methods)
    assert c.greeting == b"+OK POP3 ready " + SALT


def test_real_salt_format() -> None:
    m = Pop3Session(Pop3Profile(auth_methods=["apop"], server_name=b"pop.example.com"))
    m.start()
    assert re.fullmatch(rb"\+OK POP3 ready <\d+\.\d+@pop\.example\.com>\r\n", m.take_output())
    assert m.salt.endswith(b"@pop.example.com>\r\n")


@pytest.mark.parametrize(
    ("kw", "capa"),
    [
        ({}, DEFAULT_CAPA),
        (
            {"auth_methods": ["plain", "apop", "cram-md5", "external"]},
            CAPA_HEAD + b"TOP\r\nUSER\r\nUIDL\r\nSASL PLAIN LOGIN CRAM-MD5 EXTERNAL\r\n.\r\n",
        ),
        (
            {"starttls": "on"},
            CAPA_HEAD + b"TOP\r\nUSER\r\nUIDL\r\nSASL PLAIN LOGIN\r\nSTLS\r\n.\r\n",
        ),
        (
            {"starttls": "only", "auth_methods": ["plain", "cram-md5"]},
            CAPA_HEAD + b"TOP\r\nUIDL\r\nSTLS\r\n.\r\n",
        ),
        (
            {"capabilities": [b"TOP", b"UIDL", b"RESP-CODES", b"user"], "auth_methods": ["apop"]},
            CAPA_HEAD + b"TOP\r\nUIDL\r\nRESP-CODES\r\nuser\r\nSASL\r\n.\r\n",
        ),
        (
            {"auth_methods": ["cram-md5"]},
            CAPA_HEAD + b"TOP\r\nUSER\r\nUIDL\r\nSASL CRAM-MD5\r\n.\r\n",
        ),
        ({"tls": True}, DEFAULT_CAPA),
        ({"tls": True, "starttls": "on"}, DEFAULT_CAPA),
        (
            {"auth_methods": ["plain", "xoauth2", "oauthbearer"]},
            CAPA_HEAD + b"TOP\r\nUSER\r\nUIDL\r\nSASL PLAIN LOGIN XOAUTH2 OAUTHBEARER\r\n.\r\n",
        ),
    ],
)
def test_capa(kw: dict[str, Any], capa: bytes) -> None:
    c = Client(**kw)
    assert c(b"CAPA\r\n") == capa
    assert c(b"capa extra args\n") == capa


@pytest.mark.parametrize(
    ("methods", "reply"),
    [
        (["plain"], b"+OK methods supported:\r\nPLAIN\r\nLOGIN\r\n.\r\n"),
        (
            ["plain", "apop", "cram-md5", "external"],
            b"+OK methods supported:\r\nPLAIN\r\nLOGIN\r\nCRAM-MD5\r\nEXTERNAL\r\n.\r\n",
        ),
        (["apop"], b"+OK methods supported:\r\n.\r\n"),
        (["cram-md5"], b"+OK methods supported:\r\nCRAM-MD5\r\n.\r\n"),
    ],
)
def test_auth_list(methods: list[str], reply: bytes) -> None:
    assert Client(auth_methods=methods)(b"AUTH\r\n") == reply


def test_profile_rejects_unknown_values() -> None:
    with pytest.raises(ValueError):
        Pop3Profile(auth_methods=["login"])
    with pytest.raises(ValueError):
        Pop3Profile(starttls="maybe")


# --- the START state and the parser --------------------------------------------------------------


def test_reference_transcript_1() -> None:
    c = Client()
    assert c(b"CAPA\r\n") == DEFAULT_CAPA
    assert c(b"AUTH\r\n") == b"+OK methods supported:\r\nPLAIN\r\nLOGIN\r\n.\r\n"
    assert c(b"NOOP\r\n") == b"+OK\r\n"
    assert not c.closed
    assert c(b"QUIT\r\n") == b"+OK\r\n"
    assert c.closed
    assert c(b"NOOP\r\n") == b""  # nothing after close


@pytest.mark.parametrize(
    "line",
    [
        b" NOOP\r\n",
        b"USER\tx\r\n",
        b"US3R x\r\n",
        b"STAT\r\n",
        b"LIST\r\n",
        b"RETR 1\r\n",
        b"\r\n",
        b"\n",
        b"NOOP\rX\r\n",
        b"NOOP\r\r\n",
        b"NOOPS\r\n",
        b"NOO\r\n",
        b"NOOP a b c d\r\n",
        b"PASS pass\r\n",
        b"USER\r\n",
        b"USER   \r\n",
        b"APOP user d\r\n",  # apop not enabled
        b"AUTH CRAM-MD5\r\n",
        b"AUTH EXTERNAL\r\n",
        b"AUTH EXTERNAL dXNlcg==\r\n",  # fastmail: refused when not enabled (nginx: accepted)
        b"AUTH XOAUTH2\r\n",
        b"AUTH OAUTHBEARER\r\n",
        b"AUTH FOO\r\n",
        b"AUTH PLAIN a b\r\n",
        b"AUTH LOGIN a b\r\n",
        b"STLS\r\n",  # starttls off
    ],
)
def test_invalid_lines(line: bytes) -> None:
    c = Client()
    assert c(line) == ERR
    assert not c.closed
    assert c(b"NOOP\r\n") == b"+OK\r\n"


@pytest.mark.parametrize(
    "line",
    [b"NOOP\r\n", b"noop\r\n", b"NoOp\n", b"NOOP \r\n", b"NOOP a b c\r\n", b"NOOP   a\r\n"],
)
def test_noop_forms(line: bytes) -> None:
    assert Client()(line) == b"+OK\r\n"


def test_quit_with_argument_closes() -> None:
    c = Client()
    assert c(b"QUIT extra\r\n") == b"+OK\r\n"
    assert c.closed


# --- USER / PASS --------------------------------------------------------------------------------


def test_user_pass() -> None:
    c = Client()
    assert c(b"USER user\r\n") == b"+OK\r\n"
    assert c(b"PASS pass\r\n") == b""
    assert c.asked == (b"plain", b"user", b"pass", b"", 1)
    assert c.m.phase == "in http auth state"


@pytest.mark.parametrize(
    ("lines", "user", "passwd"),
    [
        (b"USER  user\r\nPASS pass\r\n", b"user", b"pass"),
        (b"USER us er\r\nPASS pa ss  \r\n", b"us er", b"pa ss  "),
        (b'USER a b\r\nPASS "q\\\r\n', b"a b", b'"q\\'),
        (b"user x\npass y\n", b"x", b"y"),
    ],
)
def test_user_pass_arguments(lines: bytes, user: bytes, passwd: bytes) -> None:
    c = Client()
    c(lines)
    assert c.asked == (b"plain", user, passwd, b"", 1)


def test_user_state_commands() -> None:
    c = Client(starttls="on")
    assert c(b"USER user\r\n") == b"+OK\r\n"
    assert c(b"CAPA\r\n") == DEFAULT_CAPA  # no STLS in the USER state
    assert c(b"NOOP\r\n") == b"+OK\r\n"
    assert c(b"PASS pass\r\n") == b""
    assert c.asked is not None


@pytest.mark.parametrize(
    "second",
    [b"AUTH\r\n", b"USER other\r\n", b"APOP a b\r\n", b"STLS\r\n", b"PASS\r\n", b"FOO\r\n"],
)
def test_user_state_errors_forget_user(second: bytes) -> None:
    c = Client(starttls="on", auth_methods=["plain", "apop"])
    assert c(b"USER user\r\n") == b"+OK\r\n"
    assert c(second) == ERR
    assert c(b"PASS pass\r\n") == ERR
    assert c.asked is None


def test_user_state_quit() -> None:
    c = Client()
    c(b"USER user\r\n")
    assert c(b"QUIT\r\n") == b"+OK\r\n"
    assert c.closed


# --- APOP -----------------------------------------------------------------------------------------


def test_apop() -> None:
    c = Client(auth_methods=["plain", "apop", "cram-md5", "external"])
    assert c(b"APOP user " + DIGEST + b"\r\n") == b""
    assert c.asked == (b"apop", b"user", DIGEST, SALT, 1)


def test_apop_digest_not_checked() -> None:
    c = Client(auth_methods=["apop"])
    c(b"apop user short\r\n")
    assert c.asked == (b"apop", b"user", b"short", SALT, 1)


@pytest.mark.parametrize("line", [b"APOP user\r\n", b"APOP\r\n", b"APOP a b c\r\n"])
def test_apop_argument_count(line: bytes) -> None:
    c = Client(auth_methods=["apop"])
    assert c(line) == ERR


# --- SASL -------------------------------------------------------------------------------------------


def test_auth_plain() -> None:
    c = Client()
    assert c(b"AUTH PLAIN\r\n") == b"+ \r\n"
    assert c(b"AHVzZXIAcGFzcw==\r\n") == b""
    assert c.asked == (b"plain", b"user", b"pass", b"", 1)


def test_auth_plain_ir_and_authzid() -> None:
    c = Client()
    assert c(b"AUTH PLAIN " + b64(b"admin\0user\0pass") + b"\r\n") == b""
    assert c.asked == (b"plain", b"user", b"pass", b"", 1)


def test_auth_plain_accepted_when_not_listed() -> None:
    c = Client(auth_methods=["apop"])
    c(b"AUTH PLAIN AHVzZXIAcGFzcw\r\n")
    assert c.asked == (b"plain", b"user", b"pass", SALT[:0], 1)


@pytest.mark.parametrize("resp", [b"*", b"", b"!!!!", b64(b"nonul"), b64(b"one\0"), b"QUIT"])
def test_auth_plain_bad_response(resp: bytes) -> None:
    c = Client()
    c(b"AUTH PLAIN\r\n")
    assert c(resp + b"\r\n") == ERR
    assert c(b"NOOP\r\n") == b"+OK\r\n"  # back in START


def test_auth_login() -> None:
    c = Client()
    assert c(b"auth login\r\n") == b"+ VXNlcm5hbWU6\r\n"
    assert c(b"dXNlcg==\r\n") == b"+ UGFzc3dvcmQ6\r\n"
    assert c(b"cGFzcw==\r\n") == b""
    assert c.asked == (b"plain", b"user", b"pass", b"", 1)


def test_auth_login_ir_and_extra_arguments() -> None:
    c = Client()
    assert c(b"AUTH LOGIN dXNlcg==\r\n") == b"+ UGFzc3dvcmQ6\r\n"
    assert c(b"cGFzcw== ignored\r\n") == b""  # only the first argument is used
    assert c.asked == (b"plain", b"user", b"pass", b"", 1)
    c = Client()
    c(b"AUTH LOGIN\r\n")
    assert c(b"dXNl cg==\r\n") == b"+ UGFzc3dvcmQ6\r\n"
    c(b"\r\n")
    assert c.asked == (b"plain", b"use", b"", b"", 1)


@pytest.mark.parametrize("step", [0, 1])
def test_auth_login_bad_base64(step: int) -> None:
    c = Client()
    c(b"AUTH LOGIN\r\n")
    if step:
        c(b"dXNlcg==\r\n")
    assert c(b"*\r\n") == ERR
    assert c(b"cGFzcw==\r\n") == ERR  # START again: read as a command
    assert c.m.errors == 1


def test_auth_login_bad_ir() -> None:
    assert Client()(b"AUTH LOGIN *\r\n") == ERR


def test_sasl_line_with_four_arguments_is_a_parser_error() -> None:
    c = Client()
    c(b"AUTH LOGIN\r\n")
    assert c(b"a b c d\r\n") == ERR
    assert c.m.errors == 1


def test_cram_md5() -> None:
    c = Client(auth_methods=["plain", "cram-md5"])
    challenge = b"+ PDE0MjYxMTE2MDYuMTc5NTc0NDMyMkBwb3AuZXhhbXBsZS5jb20+\r\n"
    assert c(b"AUTH CRAM-MD5\r\n") == challenge
    assert c(b"dXNlciAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMA==\r\n") == b""
    assert c.asked == (b"cram-md5", b"user", DIGEST, SALT, 1)


@pytest.mark.parametrize(
    "resp", [b64(b"user " + b"0" * 31), b64(b"user " + b"0" * 33), b64(b"user"), b"*"]
)
def test_cram_md5_bad_response(resp: bytes) -> None:
    c = Client(auth_methods=["cram-md5"])
    c(b"AUTH CRAM-MD5\r\n")
    assert c(resp + b"\r\n") == ERR


def test_cram_md5_with_ir_refused() -> None:
    assert Client(auth_methods=["cram-md5"])(b"AUTH CRAM-MD5 eA==\r\n") == ERR


def test_external() -> None:
    c = Client(auth_methods=["external"])
    assert c(b"AUTH EXTERNAL\r\n") == b"+ VXNlcm5hbWU6\r\n"
    assert c(b"dXNlcg==\r\n") == b""
    assert c.asked == (b"external", b"user", b"", b"", 1)
    c = Client(auth_methods=["external", "apop"])
    c(b"AUTH EXTERNAL dXNlcg==\r\n")
    assert c.asked == (b"external", b"user", b"", b"", 1)  # no salt (mainline)


XOAUTH2_IR = b64(b"user=someone\x01auth=Bearer tok123\x01\x01")
OAUTHBEARER_IR = b"bixhPXNhc2xmYWlsd2FpdHVzZXIsAWhvc3Q9eAFwb3J0PTEBYXV0aD1CZWFyZXIgdAEB"


def test_xoauth2() -> None:
    c = Client(auth_methods=["plain", "xoauth2"])
    c(b"AUTH XOAUTH2 " + XOAUTH2_IR + b"\r\n")
    assert c.asked == (b"xoauth2", b"someone", b"tok123", b"", 1)
    c = Client(auth_methods=["xoauth2"])
    assert c(b"AUTH XOAUTH2\r\n") == b"+ \r\n"
    c(XOAUTH2_IR + b"\r\n")
    assert c.asked == (b"xoauth2", b"someone", b"tok123", b"", 1)


@pytest.mark.parametrize(
    "msg",
    [
        b"user=x\x01auth=Bearer t\x01",
        b"usr=x\x01auth=Bearer t\x01\x01",
        b"user=x\x01auth=Basic t\x01\x01",
    ],
)
def test_xoauth2_bad(msg: bytes) -> None:
    c = Client(auth_methods=["xoauth2"])
    assert c(b"AUTH XOAUTH2 " + b64(msg) + b"\r\n") == ERR


def test_oauthbearer() -> None:
    c = Client(auth_methods=["oauthbearer"])
    c(b"AUTH OAUTHBEARER " + OAUTHBEARER_IR + b"\r\n")
    assert c.asked == (b"oauthbearer", b"saslfailwaituser", b"t", b"", 1)
    c = Client(auth_methods=["oauthbearer"])
    assert c(b"AUTH OAUTHBEARER\r\n") == b"+ \r\n"
    c(b64(b"n,a=us=2Cer=3D,\x01auth=Bearer tk\x01\x01") + b"\r\n")
    assert c.asked == (b"oauthbearer", b"us,er=", b"tk", b"", 1)


@pytest.mark.parametrize(
    "msg", [b"n,a=u=41,\x01auth=Bearer t\x01\x01", b"n,a=u,\x01host=x\x01\x01"]
)
def test_oauthbearer_bad(msg: bytes) -> None:
    c = Client(auth_methods=["oauthbearer"])
    assert c(b"AUTH OAUTHBEARER " + b64(msg) + b"\r\n") == ERR


def test_auth_error_sasl_with_wait() -> None:
    c = Client(auth_methods=["oauthbearer"])
    c(b"AUTH OAUTHBEARER " + OAUTHBEARER_IR + b"\r\n")
    out = c.event("on_auth_fail", b"Invalid token", None, True, b"eyJzdGF0dXMiOiI0MDEifQ==")
    assert out == b"+ eyJzdGF0dXMiOiI0MDEifQ==\r\n"
    assert c(b"AQ==\r\n") == b"-ERR Invalid token\r\n"
    assert not c.closed
    assert c(b"NOOP\r\n") == b"+OK\r\n"


def test_auth_error_sasl_without_wait_closes() -> None:
    c = Client(auth_methods=["xoauth2"])
    c(b"AUTH XOAUTH2 " + XOAUTH2_IR + b"\r\n")
    assert c.event("on_auth_fail", b"Bad", None, False, b"e30=") == b"+ e30=\r\n"
    assert not c.closed
    assert c(b"\r\n") == b"-ERR Bad\r\n"
    assert c.closed


def test_auth_error_sasl_wrong_ack() -> None:
    c = Client(auth_methods=["xoauth2"])
    c(b"AUTH XOAUTH2 " + XOAUTH2_IR + b"\r\n")
    c.event("on_auth_fail", b"Bad", None, True, b"e30=")
    assert c(b"AQ==\r\n") == ERR
    assert c(b"NOOP\r\n") == b"+OK\r\n"


def test_auth_error_sasl_ignored_for_other_methods() -> None:
    c = Client()
    c(b"USER u\r\nPASS p\r\n")
    assert c.event("on_auth_fail", b"No", None, False, b"e30=") == b"-ERR No\r\n"
    assert c.closed


# --- auth results -----------------------------------------------------------------------------------


def test_auth_fail_closes() -> None:
    c = Client()
    c(b"USER user\r\nPASS x\r\n")
    assert c.event("on_auth_fail", b"Invalid login or password", None, False) == (
        b"-ERR Invalid login or password\r\n"
    )
    assert c.closed


def test_auth_fail_error_code_ignored() -> None:
    c = Client()
    c(b"USER user\r\nPASS x\r\n")
    assert (
        c.event("on_auth_fail", b"bad\x01\xff msg", b"550 5.7.1", False)
        == b"-ERR bad\x01\xff msg\r\n"
    )


def test_reference_transcript_retry() -> None:
    c = Client()
    assert c(b"USER waituser\r\n") == b"+OK\r\n"
    assert c(b"PASS x\r\n") == b""
    assert c.asked == (b"plain", b"waituser", b"x", b"", 1)
    out = c.event("on_auth_fail", b"Invalid login or password", None, True)
    assert out == b"-ERR Invalid login or password\r\n"
    assert not c.closed
    assert c(b"PASS y\r\n") == ERR
    assert c(b"USER user\r\n") == b"+OK\r\n"
    c(b"PASS z\r\n")
    assert c.asked == (b"plain", b"user", b"z", b"", 2)


def test_queued_input_processed_after_retry() -> None:
    c = Client()
    assert c(b"USER waituser\r\nPASS x\r\nNOOP\r\n") == b"+OK\r\n"
    assert c.acts & ACT_AUTH
    assert c(b"CAPA\r\n") == b""  # buffered while auth_http runs
    out = c.event("on_auth_fail", b"Invalid login or password", None, True)
    assert out == b"-ERR Invalid login or password\r\n+OK\r\n" + DEFAULT_CAPA


def test_auth_ok_keeps_pipelined_input() -> None:
    c = Client()
    assert c(b"USER user\r\nPASS pass\r\nSTAT\r\nQUIT\r\n") == b"+OK\r\n"
    assert c.event("on_auth_ok") == b""
    c(b"LIST\r\n")
    assert c.m.take_input() == b"STAT\r\nQUIT\r\nLIST\r\n"
    assert not c.closed


def test_auth_error_is_internal_error() -> None:
    c = Client()
    c(b"USER user\r\nPASS pass\r\n")
    assert c.event("on_auth_error") == b"-ERR internal server error\r\n"
    assert c.closed


def test_no_credential_reuse_after_failure() -> None:
    c = Client(auth_methods=["apop", "external"])
    c(b"APOP user secretdigest\r\n")
    c.event("on_auth_fail", b"No", None, True)
    c(b"AUTH EXTERNAL dXNlcg==\r\n")
    assert c.asked == (b"external", b"user", b"", b"", 2)


@pytest.mark.parametrize(
    "line",
    [
        b"AUTH PLAIN " + b64(b"\0us\r\ner\0pass") + b"\r\n",
        b"AUTH PLAIN " + b64(b"\0user\0pa\0ss") + b"\r\n",
        b"USER us\0er\r\nPASS x\r\n",
    ],
)
def test_control_bytes_in_credentials_refused(line: bytes) -> None:
    c = Client()
    assert c(line).endswith(ERR)
    assert c.asked is None


def test_timeout_closes_silently() -> None:
    c = Client()
    c(b"NOOP\r\n")
    assert c.event("on_timeout") == b""
    assert c.closed
    assert c.m.close_reason == "client timed out"


# --- STLS ---------------------------------------------------------------------------------------------


def test_stls_discards_pipelined_input() -> None:
    c = Client(starttls="on")
    assert c(b"STLS\r\nUSER evil\r\nPASS evil\r\n") == b"+OK\r\n"
    assert c.acts & ACT_STARTTLS
    assert c(b"NOOP\r\n") == b""  # plaintext before the handshake is never executed
    assert c.m.take_input() == b""
    assert c.event("on_tls_done") == b""
    assert c(b"NOOP\r\n") == b"+OK\r\n"
    assert c(b"CAPA\r\n") == DEFAULT_CAPA
    assert c(b"STLS\r\n") == ERR
    assert c.asked is None


def test_stls_in_user_state_is_refused() -> None:
    c = Client(starttls="on")
    c(b"USER user\r\n")
    assert c(b"STLS\r\n") == ERR
    assert c(b"PASS pass\r\n") == ERR


def test_stls_arguments_ignored_and_tls_listener_refuses() -> None:
    c = Client(starttls="on")
    assert c(b"stls now please\r\n") == b"+OK\r\n"
    assert c.acts & ACT_STARTTLS
    assert Client(tls=True, starttls="on")(b"STLS\r\n") == ERR
    assert Client(starttls="on", tls_available=False)(b"STLS\r\n") == ERR


def test_reference_transcript_starttls_only() -> None:
    c = Client(starttls="only", auth_methods=["plain", "cram-md5"])
    assert c.greeting == b"+OK POP3 ready " + SALT
    assert c(b"USER user\r\n") == ERR
    for line in (b"APOP user d\r\n", b"AUTH\r\n", b"AUTH PLAIN\r\n"):
        assert c(line) == ERR
    assert c(b"CAPA\r\n") == CAPA_HEAD + b"TOP\r\nUIDL\r\nSTLS\r\n.\r\n"
    assert c(b"NOOP\r\n") == b"+OK\r\n"
    assert c(b"stls\r\n") == b"+OK\r\n"
    assert c.event("on_tls_done") == b""
    assert (
        c(b"CAPA\r\n") == CAPA_HEAD + b"TOP\r\nUSER\r\nUIDL\r\nSASL PLAIN LOGIN CRAM-MD5\r\n.\r\n"
    )
    assert c(b"AUTH\r\n") == b"+OK methods supported:\r\nPLAIN\r\nLOGIN\r\nCRAM-MD5\r\n.\r\n"
    c(b"USER user\r\nPASS p\r\n")
    assert c.asked == (b"plain", b"user", b"p", b"", 1)


# --- limits at their edges --------------------------------------------------------------------------


@pytest.mark.parametrize(("extra", "ok"), [(120, True), (121, True), (122, False)])
def test_line_limit(extra: int, ok: bool) -> None:
    c = Client()
    out = c(b"USER " + b"u" * extra + b"\r\n")
    if ok:
        assert out == b"+OK\r\n" and not c.closed
    else:
        assert out == ERR and c.closed
        assert c.m.close_reason.startswith("client sent too long command")
        assert c.m.errors == 0


@pytest.mark.parametrize(("size", "ok"), [(127, True), (128, True), (129, False)])
def test_line_limit_sasl_and_partial(size: int, ok: bool) -> None:
    c = Client()
    c(b"AUTH PLAIN\r\n")
    # an unfinished line is answered only once it reaches the limit
    assert c(b"A" * (size - 2)) == b""
    out = c(b"\r\n")
    assert c.closed != ok
    assert out == ERR  # bad PLAIN data (no NUL) or too long
    assert c.m.errors == 0


def test_line_limit_is_the_profile_buffer() -> None:
    c = Client(client_buffer=16)
    assert c(b"NOOP " + b"a" * 9 + b"\r\n") == b"+OK\r\n"
    assert c(b"NOOP " + b"a" * 10 + b"\r\n") == ERR
    assert c.closed


def test_pipelining_across_the_buffer() -> None:
    c = Client()
    assert c(b"NOOP\r\n" * 22) == b"+OK\r\n" * 22  # freenginx; nginx 1.22.1 closes at 128 bytes
    c = Client()
    assert c(b"NOOP\r\n" * 21 + b"NO") == b"+OK\r\n" * 21
    assert c(b"OP\r\nCAPA\r\n") == b"+OK\r\n" + DEFAULT_CAPA


@pytest.mark.parametrize("errors", [2, 3])
def test_max_errors(errors: int) -> None:
    c = Client(max_errors=3)
    out = c(b"FOO\r\n" * errors + b"NOOP\r\n")
    if errors < 3:
        assert out == ERR * errors + b"+OK\r\n" and not c.closed
    else:
        assert out == ERR * 3 and c.closed
        assert c.m.close_reason == "client sent too many invalid commands"


def test_max_errors_reference_transcript() -> None:
    c = Client(max_errors=3)
    assert c(b"FOO\r\n") == ERR
    assert c(b"BAR\r\n") == ERR
    assert not c.closed
    assert c(b"BAZ\r\n") == ERR
    assert c.closed


def test_handler_errors_do_not_count() -> None:
    c = Client(max_errors=3)
    out = c(b"USER x\r\nPASS\r\nPASS y\r\nNOOP\r\nAPOP a b\r\nAUTH FOO\r\nNOOP\r\n")
    assert out == b"+OK\r\n" + ERR + ERR + b"+OK\r\n" + ERR + ERR + b"+OK\r\n"
    assert not c.closed


@pytest.mark.parametrize(("count", "closed"), [(2, False), (3, False), (4, True)])
def test_max_commands(count: int, closed: bool) -> None:
    c = Client(max_commands=3)
    out = c(b"NOOP\r\n" * count)
    assert c.closed == closed
    assert out == (b"+OK\r\n" * 3 + ERR if closed else b"+OK\r\n" * count)


def test_max_commands_skips_invalid_lines() -> None:
    c = Client(max_commands=3)
    assert c(b"NOOP\r\nNOOP\r\nFOO\r\nNOOP\r\n") == b"+OK\r\n+OK\r\n" + ERR + b"+OK\r\n"
    assert c(b"NOOP\r\n") == ERR
    assert c.closed
    assert c.m.close_reason == "client sent too many commands"


def test_max_commands_zero_is_unlimited() -> None:
    c = Client(max_commands=0)
    assert c(b"NOOP\r\n" * 2000) == b"+OK\r\n" * 2000


# --- chunking ---------------------------------------------------------------------------------------

LINES = [
    b"NOOP\r\n",
    b"CAPA\r\n",
    b"AUTH\r\n",
    b"FOO\r\n",
    b"USER u s\r\n",
    b"PASS p\r\n",
    b"APOP a " + DIGEST + b"\r\n",
    b"AUTH LOGIN\r\n",
    b"dXNlcg==\r\n",
    b"AUTH PLAIN\r\n",
    b"AHVzZXIAcGFzcw==\r\n",
    b"AUTH CRAM-MD5\r\n",
    b"*\r\n",
    b"\r\n",
    b"NOOP\r",
    b"\n",
    b"AUTH PLAIN AHVzZXIAcGFzcw==\r\n",
    b"QUIT\r\n",
    b"x" * 60,
    b"STLS\r\n",
]


def drive(chunks: list[bytes]) -> tuple[bytes, int, list[tuple[bytes, bytes, bytes]]]:
    """A driver that answers every auth request with a retryable failure."""
    m = Pop3Session(
        Pop3Profile(auth_methods=["plain", "apop", "cram-md5"], max_errors=6), salt=SALT
    )
    acts = m.start()
    out = m.take_output()
    asked = []
    for chunk in chunks:
        a = m.feed(chunk)
        while a & ACT_AUTH:
            acts |= a
            asked.append((m.auth.method, m.auth.user, m.auth.passwd))
            out += m.take_output()
            a = m.on_auth_fail(b"No", None, True)
        acts |= a
        out += m.take_output()
    return out, acts, asked


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(LINES), max_size=40), st.data())
def test_any_chunking_gives_the_same_result(lines: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(lines)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    chunks = [stream[i:j] for i, j in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert drive(chunks) == drive([stream])
    assert drive([bytes([b]) for b in stream]) == drive([stream])
