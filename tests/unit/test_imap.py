"""IMAP client session machine: nginx 1.22.1's exact bytes for every command and error path,
the limits at their edges, STARTTLS injection, and the property that any split of the input
gives the same result."""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastmail._core import ACT_AUTH, ACT_CLOSE, ACT_SEND, ACT_STARTTLS
from fastmail._imap import ImapProfile, ImapSession
from support.playbook import Playbook, run

GREETING = b"* OK IMAP4 ready\r\n"
CAP_DEFAULT = b"* CAPABILITY IMAP4 IMAP4rev1 UIDPLUS AUTH=PLAIN\r\n"
BAD = b"BAD invalid command\r\n"


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def session(tls: bool = False, **kw: Any) -> Playbook:
    kw.setdefault("tls_available", True)
    pb = Playbook(ImapSession(ImapProfile(**kw), tls=tls))
    assert pb.start() == GREETING
    return pb


# --- greeting, NOOP, CAPABILITY, LOGOUT -------------------------------------------------


def test_reference_transcript_capability_noop_logout() -> None:
    pb = session()
    assert pb.feed(b"a1 capability\r\n") == CAP_DEFAULT + b"a1 OK completed\r\n"
    assert pb.feed(b"A.b-C_9 NoOp\r\n") == b"A.b-C_9 OK completed\r\n"
    assert not pb.closed
    assert pb.feed(b"a3 LOGOUT\r\n") == b"* BYE\r\na3 OK completed\r\n"
    assert pb.closed


@pytest.mark.parametrize(
    "line,reply",
    [
        (b"a6 NOOP   \r\n", b"a6 OK completed\r\n"),
        (b"a7 NOOP\n", b"a7 OK completed\r\n"),
        (b"a3 NOOP a b c\r\n", b"a3 OK completed\r\n"),
        (b"a1 NOOP a b c d\r\n", b"a1 " + BAD),
        (b" NOOP\r\n", b" OK completed\r\n"),
        (b"  NOOP\r\n", b" OK completed\r\n"),
        (b"x*1 NOOP\r\n", b"* " + BAD),
        (b"\r\n", b"* " + BAD),
        (b"\n", b"* " + BAD),
        (b"a1\r\n", b"* " + BAD),
        (b"a1 \r\n", b"a1 " + BAD),
        (b"a13 NO\x00OP\r\n", b"a13 " + BAD),
        (b"a12 NOOP\rX\r\n", b"a12 " + BAD),
        (b"a14 NOOP\r\r\n", b"a14 " + BAD),
        (b"a2 SELECT INBOX\r\n", b"a2 " + BAD),
        (b"a2 ENABLE x\r\n", b"a2 " + BAD),
        (b"a2 NOOPS\r\n", b"a2 " + BAD),
        (b"a2 1NOOP\r\n", b"a2 " + BAD),
        (b"a\xff NOOP\r\n", b"* " + BAD),
        (b"a\tb NOOP\r\n", b"* " + BAD),
        (b"a1 NOOP {4 }\r\n", b"a1 " + BAD),
        (b"a1 NOOP {4}x\r\n", b"a1 " + BAD),
        (b'a1 NOOP "x\\\r\n', b"a1 " + BAD),
    ],
)
def test_parser_replies(line: bytes, reply: bytes) -> None:
    pb = session()
    assert pb.feed(line) == reply
    assert not pb.closed


def test_tag_length_32_ok_33_bad() -> None:
    pb = session()
    assert pb.feed(b"t" * 32 + b" NOOP\r\n") == b"t" * 32 + b" OK completed\r\n"
    assert pb.feed(b"t" * 33 + b" NOOP\r\n") == b"* " + BAD


def test_arguments_of_argless_commands_are_ignored() -> None:
    pb = session(starttls="on")
    assert pb.feed(b"a1 CAPABILITY x y\r\n").endswith(b"a1 OK completed\r\n")
    assert pb.feed(b"a1 STARTTLS extra args\r\n") == b"a1 OK completed\r\n"
    assert pb.starttls
    pb = session()
    assert pb.feed(b"a10 LOGOUT extra\r\n") == b"* BYE\r\na10 OK completed\r\n"
    assert pb.closed


# --- capabilities --------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw,tls,line",
    [
        ({}, False, CAP_DEFAULT),
        (
            {"auth_methods": ["plain", "login", "cram-md5", "external"]},
            False,
            b"* CAPABILITY IMAP4 IMAP4rev1 UIDPLUS AUTH=PLAIN AUTH=LOGIN AUTH=CRAM-MD5"
            b" AUTH=EXTERNAL\r\n",
        ),
        (
            {"starttls": "on", "auth_methods": ["login", "plain"]},
            False,
            b"* CAPABILITY IMAP4 IMAP4rev1 UIDPLUS AUTH=PLAIN AUTH=LOGIN STARTTLS\r\n",
        ),
        (
            {"starttls": "only", "auth_methods": ["plain", "login"]},
            False,
            b"* CAPABILITY IMAP4 IMAP4rev1 UIDPLUS STARTTLS LOGINDISABLED\r\n",
        ),
        (
            {
                "capabilities": [b"IMAP4rev1", b"SASL-IR", b"ID", b"LITERAL+"],
                "auth_methods": ["login", "cram-md5"],
            },
            False,
            b"* CAPABILITY IMAP4rev1 SASL-IR ID LITERAL+ AUTH=LOGIN AUTH=CRAM-MD5\r\n",
        ),
        (
            {"starttls": "on", "auth_methods": ["plain", "login"]},
            True,
            b"* CAPABILITY IMAP4 IMAP4rev1 UIDPLUS AUTH=PLAIN AUTH=LOGIN\r\n",
        ),
        (
            {"auth_methods": ["oauthbearer", "plain", "xoauth2"]},
            False,
            b"* CAPABILITY IMAP4 IMAP4rev1 UIDPLUS AUTH=PLAIN AUTH=XOAUTH2 AUTH=OAUTHBEARER\r\n",
        ),
    ],
)
def test_capability_lines(kw: dict[str, object], tls: bool, line: bytes) -> None:
    pb = session(tls=tls, **kw)
    assert pb.feed(b"a1 CAPABILITY\r\n") == line + b"a1 OK completed\r\n"


def test_starttls_without_tls_context_is_never_offered() -> None:
    pb = session(starttls="on", tls_available=False)
    assert pb.feed(b"a1 CAPABILITY\r\n") == CAP_DEFAULT + b"a1 OK completed\r\n"
    assert pb.feed(b"a2 STARTTLS\r\n") == b"a2 " + BAD


def test_bad_profile_values() -> None:
    with pytest.raises(ValueError):
        ImapProfile(auth_methods=["apop"])
    with pytest.raises(ValueError):
        ImapProfile(starttls="maybe")


# --- LOGIN and the argument forms ------------------------------------------------------


def login(pb: Playbook, data: bytes) -> tuple[bytes, bytes]:
    out = pb.feed(data)
    assert pb.waiting_auth, out
    a = pb.auths[-1]
    return a.user, a.passwd


def test_login_asks_auth_with_every_field() -> None:
    pb = session()
    assert pb.feed(b"a1 LOGIN user pass\r\n") == b""
    assert pb.acts & ACT_AUTH
    a = pb.auths[0]
    assert (a.protocol, a.method, a.user, a.passwd) == (b"imap", b"plain", b"user", b"pass")
    assert (a.tag, a.salt, a.login_attempt) == (b"a1 ", b"", 1)
    assert pb.machine.phase == "in http auth state"


def test_login_literals_one_by_one() -> None:
    pb = session()
    assert pb.feed(b"a1 LOGIN {4}\r\n") == b"+ OK\r\n"
    assert pb.feed(b"user {4}\r\n") == b"+ OK\r\n"
    assert pb.feed(b"pass\r\n") == b""
    assert (pb.auths[0].user, pb.auths[0].passwd) == (b"user", b"pass")


def test_login_literals_all_at_once() -> None:
    pb = session()
    assert pb.feed(b"a1 LOGIN {4}\r\nuser {4}\r\npass\r\n") == b"+ OK\r\n+ OK\r\n"
    assert pb.waiting_auth


@pytest.mark.parametrize(
    "line,user,passwd",
    [
        (b'a1 LOGIN "us er" "p\\"a\\\\ss"\r\n', b"us er", b'p"a\\ss'),
        (b'a1 LOGIN "user"pass\r\n', b"user", b"pass"),
        (b'a1 LOGIN us"er pa\\ss\r\n', b'us"er', b"pa\\ss"),
        (b"a1 LOGIN us\ter pass\r\n", b"us\ter", b"pass"),
        (b'a1 LOGIN x "user pass\r\n', b"x", b"user pass"),
        (b'a2 LOGIN user ""\r\n', b"user", b""),
        (b"a1 LOGIN {4+}\r\nuser {4+}\r\npass\r\n", b"user", b"pass"),
        (b"a1 LOGIN {4+}\r\nuserXpass\r\n", b"user", b"pass"),
        (b"a1 LOGIN {4+}\r\nuser{4+}\r\npass\r\n", b"user", b"pass"),
        (b'a1 LOGIN {6+}\r\nu"s\r\\\n {3+}\n\x00"}\r\n', b'u"s\r\\\n', b'\x00"}'),
        (b"a1 LOGIN {0+}\r\n x pass\r\n", b" ", b"pass"),  # nginx: {0} takes one byte
        (b"a1 lOgIn user pass\r\n", b"user", b"pass"),
    ],
)
def test_login_argument_forms(line: bytes, user: bytes, passwd: bytes) -> None:
    assert login(session(), line) == (user, passwd)


def test_empty_tag_login_keeps_the_space_tag() -> None:
    pb = session()
    login(pb, b" LOGIN user pass\r\n")
    assert pb.auths[0].tag == b" "


@pytest.mark.parametrize(
    "line",
    [b"a1 LOGIN\r\n", b"a1 LOGIN user\r\n", b"a1 LOGIN a b c\r\n", b'a1 LOGIN "" pass\r\n'],
)
def test_login_handler_errors_do_not_count(line: bytes) -> None:
    pb = session(max_errors=3)
    for _ in range(4):
        assert pb.feed(line) == b"a1 " + BAD
    assert not pb.closed
    assert not pb.waiting_auth


def test_quoted_state_does_not_leak_into_next_command() -> None:
    # nginx: the unterminated quote made `a2 LOGIN user pass` one argument; fixed here
    pb = session()
    assert pb.feed(b'a1 NOOP "x\r\n') == b"a1 OK completed\r\n"
    assert login(pb, b"a2 LOGIN user pass\r\n") == (b"user", b"pass")


def test_login_pipelined_lines_stay_queued_for_the_relay() -> None:
    pb = session()
    assert pb.feed(b"a1 LOGIN user pass\r\na2 NOOP\r\na3 LOGOUT\r\n") == b""
    assert pb.auth_ok() == b""
    assert pb.feed(b"a4 NOOP\r\n") == b""
    assert pb.machine.take_input() == b"a2 NOOP\r\na3 LOGOUT\r\na4 NOOP\r\n"


# --- auth results -----------------------------------------------------------------------


def test_auth_failure_with_retry_then_queued_input_then_second_attempt() -> None:
    pb = session()
    pb.feed(b"a1 LOGIN waituser pass\r\na2 NOOP\r\n")
    out = pb.auth_fail(b"Invalid login or password", None, retry=True)
    assert out == b"a1 NO Invalid login or password\r\na2 OK completed\r\n"
    assert pb.machine.phase == "in auth state"
    login(pb, b"a3 LOGIN user pass\r\n")
    assert pb.auths[1].login_attempt == 2
    assert pb.auths[1].tag == b"a3 "


def test_auth_failure_without_retry_closes() -> None:
    pb = session()
    pb.feed(b"a1 LOGIN user pass\r\n")
    out = pb.auth_fail(b"Temporary server problem, try again later", b"451 4.3.0")
    assert out == b"a1 NO Temporary server problem, try again later\r\n"
    assert pb.closed


def test_auth_error_is_internal_server_error_and_close() -> None:
    pb = session()
    pb.feed(b"a1 LOGIN user pass\r\n")
    assert pb.auth_error() == b"* BAD internal server error\r\n"
    assert pb.closed


@pytest.mark.parametrize("line", [b"\r\n", b"x!y NOOP\r\n"])
def test_no_stale_tag_after_retryable_failure(line: bytes) -> None:
    # nginx answered with bytes of the old tag; fastmail uses "* "
    pb = session()
    pb.feed(b"foobar LOGIN waituser pass\r\n")
    pb.auth_fail(b"Invalid", None, retry=True)
    assert pb.feed(line) == b"* " + BAD


def test_credentials_never_reused_across_attempts() -> None:
    pb = session(auth_methods=["plain", "cram-md5", "external"])
    pb.feed(b"a1 LOGIN user secret\r\n")
    pb.auth_fail(b"Invalid", None, retry=True)
    # CRAM-MD5 response without SP: nginx reused "secret" as the digest
    assert pb.feed(b"a2 AUTHENTICATE CRAM-MD5\r\n").startswith(b"+ ")
    assert pb.feed(b64(b"user") + b"\r\n") == b"a2 " + BAD
    # EXTERNAL: nginx sent the stale password
    login(pb, b"a3 AUTHENTICATE EXTERNAL " + b64(b"user") + b"\r\n")
    assert pb.auths[-1].passwd == b""


def test_timeout_closes_silently() -> None:
    pb = session()
    pb.feed(b"a1 NOO")
    assert pb.timeout() == b""
    assert pb.closed
    assert pb.machine.close_reason == "client timed out"
    assert pb.feed(b"P\r\n") == b""


# --- AUTHENTICATE ---------------------------------------------------------------------------


def test_authenticate_plain_challenge_and_response() -> None:
    pb = session()
    assert pb.feed(b"a1 AUTHENTICATE PLAIN\r\n") == b"+ \r\n"
    assert pb.feed(b"AHVzZXIAcGFzcw==\r\n") == b""
    a = pb.auths[0]
    assert (a.method, a.user, a.passwd, a.tag) == (b"plain", b"user", b"pass", b"a1 ")


@pytest.mark.parametrize(
    "ir,user,passwd",
    [
        (b"AHVzZXIAcGFzcw==", b"user", b"pass"),
        (b"AHVzZXIAcGFzcw", b"user", b"pass"),
        (b"AHVzZXIAcGFzcw=!!garbage", b"user", b"pass"),
        (b64(b"authz\x00u\x00pa\x00ss"), b"u", b"pa\x00ss"),
        (b64(b"\x00\x00"), b"", b""),
    ],
)
def test_authenticate_plain_initial_response(ir: bytes, user: bytes, passwd: bytes) -> None:
    pb = session()
    assert pb.feed(b"a1 AUTHENTICATE PLAIN " + ir + b"\r\n") == b""
    assert (pb.auths[0].user, pb.auths[0].passwd) == (user, passwd)


@pytest.mark.parametrize("resp", [b"*", b"", b"!!!!", b64(b"nonul"), b64(b"one\x00nul"), b"A"])
def test_authenticate_plain_bad_response(resp: bytes) -> None:
    pb = session(max_errors=1)
    pb.feed(b"a1 AUTHENTICATE PLAIN\r\n")
    assert pb.feed(resp + b"\r\n") == b"a1 " + BAD
    assert not pb.closed  # handler-level
    assert pb.feed(b"a2 NOOP\r\n") == b"a2 OK completed\r\n"


def test_sasl_line_is_data_not_a_command() -> None:
    pb = session()
    pb.feed(b"a1 AUTHENTICATE PLAIN\r\n")
    assert pb.feed(b"a2 NOOP\r\n") == b"a1 " + BAD
    pb.feed(b"a3 AUTHENTICATE PLAIN\r\n")
    assert pb.feed(b'"AHVzZXIAcGFzcw=="\r\n') == b"a3 " + BAD


def test_sasl_line_fourth_argument_is_a_parser_error() -> None:
    pb = session(max_errors=1)
    pb.feed(b"a1 AUTHENTICATE PLAIN\r\n")
    assert pb.feed(b"a b c d\r\n") == b"a1 " + BAD
    assert pb.closed


def test_authenticate_plain_pipelined() -> None:
    pb = session()
    out = pb.feed(b"a1 CAPABILITY\r\na2 AUTHENTICATE PLAIN\r\nAHVzZXIAcGFzcw==\r\na3 NOOP\r\n")
    assert out == CAP_DEFAULT + b"a1 OK completed\r\n+ \r\n"
    assert pb.auths[0].tag == b"a2 "
    assert pb.machine.take_input() == b"a3 NOOP\r\n"


def test_authenticate_login_steps() -> None:
    pb = session()
    assert pb.feed(b"a1 AUTHENTICATE LOGIN\r\n") == b"+ VXNlcm5hbWU6\r\n"
    assert pb.feed(b"dXNlcg==\r\n") == b"+ UGFzc3dvcmQ6\r\n"
    assert pb.feed(b"cGFzcw==\r\n") == b""
    a = pb.auths[0]
    assert (a.method, a.user, a.passwd) == (b"plain", b"user", b"pass")


def test_authenticate_login_initial_response_and_empty_values() -> None:
    pb = session()
    assert pb.feed(b"a1 AUTHENTICATE LOGIN dXNlcg==\r\n") == b"+ UGFzc3dvcmQ6\r\n"
    login(pb, b"\r\n")
    assert (pb.auths[0].user, pb.auths[0].passwd) == (b"user", b"")
    pb = session()
    assert pb.feed(b"a1 AUTHENTICATE LOGIN =\r\n") == b"+ UGFzc3dvcmQ6\r\n"
    login(pb, b"cGFzcw==\r\n")
    assert pb.auths[0].user == b""


def test_authenticate_login_errors() -> None:
    pb = session()
    pb.feed(b"a1 AUTHENTICATE LOGIN\r\n")
    assert pb.feed(b"*\r\n") == BAD  # no tag at all, as nginx
    pb.feed(b"a2 AUTHENTICATE LOGIN\r\n")
    pb.feed(b"dXNlcg==\r\n")
    assert pb.feed(b"!\r\n") == b"a2 " + BAD
    assert pb.feed(b"a3 AUTHENTICATE LOGIN !\r\n") == b"a3 " + BAD
    assert not pb.closed


def test_authenticate_cram_md5() -> None:
    pb = session(auth_methods=["cram-md5"], server_name=b"mail.example.com")
    out = pb.feed(b"a1 AUTHENTICATE CRAM-MD5\r\n")
    assert out.startswith(b"+ ") and out.endswith(b"\r\n")
    salt = base64.b64decode(out[2:-2])
    assert salt.startswith(b"<") and salt.endswith(b"@mail.example.com>")
    digest = b"0" * 32
    login(pb, b64(b"user " + digest) + b"\r\n")
    a = pb.auths[0]
    assert (a.method, a.user, a.passwd, a.salt) == (b"cram-md5", b"user", digest, salt + b"\r\n")
    pb.auth_fail(b"Invalid", None, retry=True)
    assert pb.feed(b"a2 AUTHENTICATE CRAM-MD5\r\n") == out  # salt reused in the connection


@pytest.mark.parametrize(
    "resp", [b64(b"us er " + b"0" * 32), b64(b"user " + b"0" * 31), b64(b"user"), b"*"]
)
def test_authenticate_cram_md5_bad_response(resp: bytes) -> None:
    pb = session(auth_methods=["cram-md5"])
    pb.feed(b"a1 AUTHENTICATE CRAM-MD5\r\n")
    assert pb.feed(resp + b"\r\n") == b"a1 " + BAD


def test_authenticate_external() -> None:
    pb = session(auth_methods=["external"])
    assert pb.feed(b"a1 AUTHENTICATE EXTERNAL\r\n") == b"+ VXNlcm5hbWU6\r\n"
    login(pb, b"dXNlcg==\r\n")
    a = pb.auths[0]
    assert (a.method, a.user, a.passwd, a.salt) == (b"external", b"user", b"", b"")
    pb = session(auth_methods=["external"])
    login(pb, b"a1 AUTHENTICATE EXTERNAL dXNlcg==\r\n")


@pytest.mark.parametrize(
    "line",
    [
        b"a1 AUTHENTICATE\r\n",
        b"a1 AUTHENTICATE FOO\r\n",
        b"a1 AUTHENTICATE PLAIN a b\r\n",
        b"a1 AUTHENTICATE LOGIN a b\r\n",
        b"a1 AUTHENTICATE CRAM-MD5\r\n",  # not enabled
        b"a1 AUTHENTICATE EXTERNAL\r\n",  # not enabled
        b"a1 AUTHENTICATE EXTERNAL dXNlcg==\r\n",  # nginx accepted this; refused here
        b"a1 AUTHENTICATE XOAUTH2\r\n",
        b"a1 AUTHENTICATE OAUTHBEARER\r\n",
    ],
)
def test_authenticate_refusals(line: bytes) -> None:
    pb = session(max_errors=1)
    assert pb.feed(line) == b"a1 " + BAD
    assert not pb.closed


def test_authenticate_cram_md5_takes_no_initial_response() -> None:
    pb = session(auth_methods=["cram-md5"])
    assert pb.feed(b"a1 AUTHENTICATE CRAM-MD5 eA==\r\n") == b"a1 " + BAD


def test_authenticate_plain_and_login_accepted_when_not_listed() -> None:
    pb = session(auth_methods=["cram-md5"])  # nginx takes PLAIN and LOGIN whatever imap_auth says
    assert pb.feed(b"a1 AUTHENTICATE PLAIN\r\n") == b"+ \r\n"
    pb = session(auth_methods=["cram-md5"])
    assert pb.feed(b'a1 AUTHENTICATE "login"\r\n') == b"+ VXNlcm5hbWU6\r\n"


def test_authenticate_xoauth2() -> None:
    pb = session(auth_methods=["xoauth2"])
    ir = b64(b"user=someone@example.com\x01auth=Bearer tok3n\x01\x01")
    login(pb, b"a1 AUTHENTICATE XOAUTH2 " + ir + b"\r\n")
    a = pb.auths[0]
    assert (a.method, a.user, a.passwd) == (b"xoauth2", b"someone@example.com", b"tok3n")
    pb = session(auth_methods=["xoauth2"])
    assert pb.feed(b"a1 AUTHENTICATE xoauth2\r\n") == b"+ \r\n"
    assert pb.feed(b64(b"user=u\x01auth=Basic x\x01\x01") + b"\r\n") == b"a1 " + BAD
    assert pb.feed(b"a2 AUTHENTICATE XOAUTH2 " + b64(b"user=u\x01auth=Bearer t\x01") + b"\r\n") == (
        b"a2 " + BAD
    )


def test_authenticate_oauthbearer() -> None:
    pb = session(auth_methods=["oauthbearer"])
    assert pb.feed(b"a1 AUTHENTICATE OAUTHBEARER\r\n") == b"+ \r\n"
    login(pb, b64(b"n,a=us=2Cer=3D,\x01host=x\x01auth=Bearer tok\x01\x01") + b"\r\n")
    a = pb.auths[0]
    assert (a.method, a.user, a.passwd) == (b"oauthbearer", b"us,er=", b"tok")
    pb = session(auth_methods=["oauthbearer"])
    bad = b64(b"n,a=u=41,\x01auth=Bearer tok\x01\x01")
    assert pb.feed(b"a1 AUTHENTICATE OAUTHBEARER " + bad + b"\r\n") == b"a1 " + BAD


def test_auth_error_sasl_challenge_then_no_and_close() -> None:
    pb = session(auth_methods=["xoauth2"])
    login(pb, b"a1 AUTHENTICATE XOAUTH2 dXNlcj1zYXNsZmFpbHVzZXIBYXV0aD1CZWFyZXIgdAEB\r\n")
    assert pb.auths[0].user == b"saslfailuser"
    acts = pb.machine.on_auth_fail(b"Invalid token", None, False, b"eyJzdGF0dXMiOiI0MDEifQ==")
    assert acts == ACT_SEND
    assert pb.machine.take_output() == b"+ eyJzdGF0dXMiOiI0MDEifQ==\r\n"
    assert pb.feed(b"\r\n") == b"a1 NO Invalid token\r\n"
    assert pb.closed


def test_auth_error_sasl_oauthbearer_retry_continues() -> None:
    pb = session(auth_methods=["oauthbearer"])
    login(pb, b"a1 AUTHENTICATE OAUTHBEARER " + b64(b"n,,\x01auth=Bearer t\x01\x01") + b"\r\n")
    pb.machine.on_auth_fail(b"Invalid token", None, True, b"e30=")
    assert pb.machine.take_output() == b"+ e30=\r\n"
    assert pb.feed(b"AQ==\r\na2 NOOP\r\n") == b"a1 NO Invalid token\r\na2 OK completed\r\n"
    assert not pb.closed


def test_auth_error_sasl_wrong_answer_is_bad() -> None:
    pb = session(auth_methods=["xoauth2"])
    login(pb, b"a1 AUTHENTICATE XOAUTH2 " + b64(b"user=u\x01auth=Bearer t\x01\x01") + b"\r\n")
    pb.machine.on_auth_fail(b"Invalid token", None, False, b"e30=")
    pb.machine.take_output()
    assert pb.feed(b"xyz\r\n") == b"a1 " + BAD
    assert pb.closed


def test_auth_error_sasl_ignored_for_other_methods() -> None:
    pb = session()
    pb.feed(b"a1 LOGIN user pass\r\n")
    pb.machine.on_auth_fail(b"Invalid", None, False, b"e30=")
    assert pb.machine.take_output() == b"a1 NO Invalid\r\n"


# --- ID (fastmail answers it, RFC 2971) ------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b'a3 ID ("name" "x")\r\n',
        b"a3 ID NIL\r\n",
        b'a3 ID ("name" "Thunderbird" "version" "115.0" "os" "Linux")\r\n',
        b"a3 id\r\n",
    ],
)
def test_id_is_answered(line: bytes) -> None:
    pb = session(max_errors=1)
    assert pb.feed(line) == b"* ID NIL\r\na3 OK ID completed\r\n"
    assert pb.feed(b"a4 NOOP\r\n") == b"a4 OK completed\r\n"


def test_id_with_literals() -> None:
    pb = session()
    assert pb.feed(b'a3 ID ("name" {5}\r\n') == b"+ OK\r\n"
    assert (
        pb.feed(b"x\r\nyz)\r\na4 NOOP\r\n")
        == b"* ID NIL\r\na3 OK ID completed\r\na4 OK completed\r\n"
    )
    pb = session()
    out = pb.feed(b'a3 ID ("name" {5+}\r\na4 NO)\r\na5 NOOP\r\n')
    assert out == b"* ID NIL\r\na3 OK ID completed\r\na5 OK completed\r\n"
    assert not pb.closed


# --- errors and limits ---------------------------------------------------------------------------


def test_max_errors_pipelined() -> None:
    pb = session(client_buffer=64, max_errors=3)
    out = pb.feed(b"a1 FOO\r\na2 FOO\r\na3 FOO\r\na4 NOOP\r\n")
    assert out == b"a1 " + BAD + b"a2 " + BAD + b"a3 " + BAD
    assert pb.closed
    assert pb.machine.close_reason == "client sent too many invalid commands"


def test_max_errors_default_is_five() -> None:
    pb = session()
    for _ in range(4):
        pb.feed(b"a FOO\r\n")
    assert not pb.closed
    assert pb.feed(b"a FOO\r\n") == b"a " + BAD
    assert pb.closed


def test_max_errors_not_reset_by_starttls() -> None:
    pb = session(max_errors=2, starttls="on")
    pb.feed(b"a FOO\r\n")
    pb.feed(b"a1 STARTTLS\r\n")
    pb.tls_done()
    assert pb.feed(b"b FOO\r\n") == b"b " + BAD
    assert pb.closed


@pytest.mark.parametrize(
    "line",
    [b"a03 FOOBAR {10+}\r\ntest test \r\na04 NOOP\r\n", b"a03 FOOBAR x+}\r\n", b"a03 FOOBAR x+}\n"],
)
def test_invalid_line_ending_in_nonsync_literal_closes(line: bytes) -> None:
    pb = session()
    assert pb.feed(line) == b"a03 " + BAD
    assert pb.closed


def test_invalid_line_with_sync_literal_continues() -> None:
    pb = session()
    assert pb.feed(b"a03 FOOBAR {10}\r\n") == b"a03 " + BAD
    assert pb.feed(b"a04 NOOP\r\n") == b"a04 OK completed\r\n"


def noop_line(size: int) -> bytes:
    line = b"a1 NOOP " + b"x" * (size - 10) + b"\r\n"
    assert len(line) == size
    return line


@pytest.mark.parametrize("size", [4095, 4096])
def test_line_fits_default_buffer(size: int) -> None:
    pb = session()
    assert pb.feed(noop_line(size)) == b"a1 OK completed\r\n"


@pytest.mark.parametrize("buffer", [64, 4096])
def test_line_one_byte_over_buffer(buffer: int) -> None:
    pb = session(client_buffer=buffer)
    assert pb.feed(noop_line(buffer)) == b"a1 OK completed\r\n"
    assert pb.feed(noop_line(buffer - 1)) == b"a1 OK completed\r\n"
    assert pb.feed(noop_line(buffer + 1)) == b"a1 " + BAD
    assert pb.closed
    assert pb.machine.close_reason == "client sent too long command"


def test_too_long_without_tag_and_while_skipping() -> None:
    pb = session(client_buffer=64)
    assert pb.feed(b"a" * 64) == b"* " + BAD
    assert pb.closed
    pb = session(client_buffer=64)
    assert pb.feed(b"a1 FOO " + b"x" * 57) == b"a1 " + BAD
    assert pb.closed


def test_too_long_byte_by_byte() -> None:
    pb = session(client_buffer=64)
    out = pb.feed_chunks(bytes([c]) for c in noop_line(65))
    assert out == b"a1 " + BAD


def test_literal_larger_than_buffer() -> None:
    pb = session(client_buffer=64)
    assert pb.feed(b"a1 LOGIN {100}\r\n") == b"+ OK\r\n"
    assert pb.feed(b"u" * 100) == b"a1 " + BAD
    assert pb.closed


def test_command_and_literals_must_fit_together() -> None:
    head = b"a1 LOGIN {4}\r\n"  # 14 bytes, then "user {N}\r\n" and the password
    pb = session(client_buffer=64)
    out = pb.feed(head + b"user {32}\r\n" + b"p" * 32 + b"\r\n")  # 14 + 11 + 34 = 59
    assert out == b"+ OK\r\n+ OK\r\n"
    assert pb.waiting_auth
    pb = session(client_buffer=64)
    pb.feed(head + b"user {37}\r\n" + b"p" * 37 + b"\r\n")  # 64 + ... exactly 64?
    assert pb.waiting_auth
    pb = session(client_buffer=64)
    out = pb.feed(head + b"user {38}\r\n" + b"p" * 38 + b"\r\n")
    assert out == b"+ OK\r\n+ OK\r\na1 " + BAD
    assert pb.closed


def test_authenticate_exchange_shares_one_buffer() -> None:
    pb = session(client_buffer=64)
    assert pb.feed(b"a1 AUTHENTICATE LOGIN\r\n") == b"+ VXNlcm5hbWU6\r\n"  # 23
    assert pb.feed(b"dXNlcm5hbWVfbG9uZw==\r\n") == b"+ UGFzc3dvcmQ6\r\n"  # 22
    assert pb.feed(b"cGFzc3dvcmRfbG9uZw==\r\n") == b"a1 " + BAD  # 22: 67 > 64
    assert pb.closed
    pb = session(client_buffer=64)
    pb.feed(b"a1 AUTHENTICATE LOGIN\r\n" + b"dXNlcm5hbWVfbG9uZw==\r\n")
    login(pb, b"cGFzc3dvcmRfbG9u=\r\n")  # 23 + 22 + 19 = 64: fits
    assert pb.auths[0].passwd == b"password_lon"


def test_pipelining_across_buffer_end_and_exact_fill() -> None:
    # nginx 1.22.1 answered 8 lines and stalled; fastmail (like freenginx) answers all 9
    pb = session(client_buffer=64)
    out = pb.feed(b"a NOOP\r\n" * 8 + b"x NOOP\r\n")
    assert out == b"a OK completed\r\n" * 8 + b"x OK completed\r\n"
    pb = session(client_buffer=64)
    out = pb.feed(b"a NOOP\r\n" * 7 + b"b1 NOOP " + b"y" * 40 + b"\r\n")
    assert out == b"a OK completed\r\n" * 7 + b"b1 OK completed\r\n"


def test_max_commands() -> None:
    pb = session(max_commands=3)
    out = pb.feed(b"a1 NOOP\r\na2 NOOP\r\na3 NOOP\r\na4 NOOP\r\n")
    assert out == b"a1 OK completed\r\na2 OK completed\r\na3 OK completed\r\na4 " + BAD
    assert pb.closed
    assert pb.machine.close_reason == "client sent too many commands"
    pb = session(max_commands=3)
    out = pb.feed(b"a1 FOO\r\na2 NOOP\r\na3 NOOP\r\na4 NOOP\r\na5 NOOP\r\n")
    assert out.endswith(b"a4 OK completed\r\na5 " + BAD)
    assert pb.closed


def test_max_commands_counts_sasl_lines_and_zero_is_unlimited() -> None:
    pb = session(max_commands=2)
    pb.feed(b"a1 NOOP\r\na2 AUTHENTICATE PLAIN\r\n")
    assert pb.feed(b"AHVzZXIAcGFzcw==\r\n") == b"a2 " + BAD
    pb = session(max_commands=0)
    assert pb.feed(b"a NOOP\r\n" * 2000).count(b"OK completed") == 2000


# --- STARTTLS -----------------------------------------------------------------------------


def test_starttls_only_reference_transcript() -> None:
    pb = session(starttls="only", auth_methods=["plain", "login", "cram-md5"])
    assert pb.feed(b"a1 LOGIN user pass\r\n") == b"a1 " + BAD
    assert pb.feed(b"a2 AUTHENTICATE PLAIN\r\n") == b"a2 " + BAD
    assert pb.feed(b"a4 CAPABILITY\r\n") == (
        b"* CAPABILITY IMAP4 IMAP4rev1 UIDPLUS STARTTLS LOGINDISABLED\r\na4 OK completed\r\n"
    )
    assert pb.feed(b"a5 STARTTLS\r\n") == b"a5 OK completed\r\n"
    assert pb.starttls
    assert pb.tls_done() == b""  # no greeting again
    assert pb.feed(b"a6 CAPABILITY\r\n") == (
        b"* CAPABILITY IMAP4 IMAP4rev1 UIDPLUS AUTH=PLAIN AUTH=LOGIN AUTH=CRAM-MD5\r\n"
        b"a6 OK completed\r\n"
    )
    assert pb.feed(b"a7 STARTTLS\r\n") == b"a7 " + BAD
    login(pb, b"a8 LOGIN user pass\r\n")


def test_starttls_injection_is_discarded() -> None:
    pb = session(starttls="on")
    acts = pb.machine.feed(b"a1 STARTTLS\r\na2 LOGIN user pass\r\na3 NOOP\r\n")
    assert acts == ACT_SEND | ACT_STARTTLS
    assert pb.machine.take_output() == b"a1 OK completed\r\n"
    assert pb.feed(b"a4 NOOP\r\n") == b""  # plaintext during the handshake is dropped too
    assert pb.tls_done() == b""
    assert pb.feed(b"a5 NOOP\r\n") == b"a5 OK completed\r\n"
    assert pb.auths == []
    assert pb.machine.take_input() == b""


@pytest.mark.parametrize("kw,tls", [({"starttls": "off"}, False), ({"starttls": "on"}, True)])
def test_starttls_refused(kw: dict[str, object], tls: bool) -> None:
    pb = session(tls=tls, max_errors=1, **kw)
    assert pb.feed(b"a1 STARTTLS\r\n") == b"a1 " + BAD
    assert not pb.closed and not pb.starttls


# --- any split of the input gives the same result ------------------------------------------------

# STARTTLS is left out: what it discards depends, by design, on what was read before it
PIECES = [
    b"a1 NOOP\r\n",
    b"a2 CAPABILITY\r\n",
    b"a3 LOGIN {4}\r\nuser {4+}\r\npass\r\n",
    b'a4 LOGIN "us\\"er" pass\r\n',
    b"a5 AUTHENTICATE LOGIN\r\ndXNlcg==\r\ncGFzcw==\r\n",
    b"a6 AUTHENTICATE PLAIN AHVzZXIAcGFzcw==\r\n",
    b"a7 FOO\r\n",
    b"\r\n",
    b'a8 ID ("name" {3}\r\nabc)\r\n',
    b"a9 NOOP a b c d\n",
    b"b2 LOGOUT\r\n",
    b"b3 NOOP " + b"z" * 60 + b"\r\n",
    b"b4 AUTHENTICATE CRAM-MD5\r\n" + b64(b"user " + b"0" * 32) + b"\r\n",
    b"x!y NOOP {5+}\r\n",
    b"b5 LOGIN {0}\r\n x pass\r\n",
]


def outcome(chunks: list[bytes], retry: bool) -> tuple[bytes, int, list[tuple], bytes, bool]:
    m = ImapSession(
        ImapProfile(
            client_buffer=96,
            max_errors=4,
            max_commands=12,
            starttls="on",
            auth_methods=["plain", "cram-md5"],
            tls_available=True,
        )
    )
    pb = Playbook(m)
    pb.start()
    for c in chunks:
        pb.feed(c)
        # answer auth right away, the way a driver would, and finish the handshake
        while m.state == 16:  # waiting for auth_http
            pb.auth_fail(b"Nope", None, retry)
    auths = [(a.method, a.user, a.passwd, a.tag, a.login_attempt) for a in pb.auths]
    # the CRAM-MD5 challenge carries a random salt
    transcript = re.sub(rb"\+ PD[A-Za-z0-9+/=]+\r\n", b"+ SALT\r\n", bytes(pb.transcript))
    return transcript, pb.acts, auths, m.take_input(), pb.closed


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(PIECES), min_size=1, max_size=8),
    st.lists(st.integers(min_value=0, max_value=2000), max_size=12),
    st.booleans(),
)
def test_any_split_gives_same_output(pieces: list[bytes], cuts: list[int], retry: bool) -> None:
    data = b"".join(pieces)
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[i:j] for i, j in zip([0, *points], [*points, len(data)], strict=True)]
    assert outcome(chunks, retry) == outcome([data], retry)


def test_byte_by_byte_equals_whole() -> None:
    data = b"".join(PIECES[:7])
    assert outcome([bytes([c]) for c in data], True) == outcome([data], True)


def test_run_helper() -> None:
    pb = run(ImapSession(ImapProfile()), [b"a1 NOOP\r\n", b"a2 LOGOUT\r\n", b"a3 NOOP\r\n"])
    assert bytes(pb.transcript) == GREETING + b"a1 OK completed\r\n* BYE\r\na2 OK completed\r\n"
    assert pb.acts & ACT_CLOSE
