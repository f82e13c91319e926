"""ManageSieve client session machine (fastmail/_sieve.pyx, RFC 5804): every command and error
path, fed three ways (whole, byte by byte, and with the next command's first bytes behind it),
the capability lines, the SASL mechanisms, the limits at their edges, STARTTLS injection, and
the property that any split of the input gives the same result."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastmail._core import ACT_AUTH, ACT_CLOSE, ACT_SEND, ACT_STARTTLS
from fastmail._sieve import (
    BYE_COMMANDS,
    BYE_ERRORS,
    BYE_TIMEOUT,
    BYE_TOO_LONG,
    CHALLENGE_EMPTY,
    CHALLENGE_PASSWORD,
    CHALLENGE_USERNAME,
    INTERNAL_ERROR,
    NO_ABORTED,
    NO_AUTH_FIRST,
    NO_ENCRYPT,
    NO_MECHANISM,
    NO_SASL,
    NO_STARTTLS,
    NO_SYNTAX,
    NO_UNKNOWN,
    OK_CAPABILITY,
    OK_GREETING,
    OK_LOGOUT,
    OK_NOOP,
    OK_STARTTLS,
    OK_TLS_DONE,
    SieveProfile,
    SieveSession,
    sieve_string,
)
from support.playbook import Playbook

CAPS = (
    b'"IMPLEMENTATION" "fastmail"\r\n'
    b'"SIEVE" "fileinto reject envelope encoded-character vacation subaddress '
    b"comparator-i;ascii-numeric relational regex imap4flags copy include variables body "
    b"enotify environment mailbox date index ihave duplicate mime foreverypart extracttext"
    b'"\r\n"NOTIFY" "mailto"\r\n"SASL" "PLAIN"\r\n"VERSION" "1.0"\r\n'
)
ALL = ["plain", "login", "external", "xoauth2", "oauthbearer"]


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def tag(text: bytes) -> bytes:
    return b"OK (TAG " + text + b') "Done"\r\n'


def session(tls: bool = False, **kw: Any) -> Playbook:
    kw.setdefault("tls_available", True)
    pb = Playbook(SieveSession(SieveProfile(**kw), tls=tls))
    pb.start()
    return pb


def three_ways(data: bytes, **kw: Any) -> tuple[bytes, Playbook]:
    """The client's bytes for `data` fed whole, byte by byte, and with the next command's
    first bytes behind it: the same every way (the trailing NOOP is answered once its line
    ends). Returns the reply and a session that got `data` whole."""
    whole = session(**kw)
    out = whole.feed(data)
    bytewise = session(**kw)
    assert bytewise.feed_chunks(data[i : i + 1] for i in range(len(data))) == out
    assert bytewise.closed == whole.closed
    trailing = session(**kw)
    assert trailing.feed(data + b"NOO") == out
    if not trailing.closed and not trailing.waiting_auth:
        assert trailing.feed(b"P\r\n") == OK_NOOP
    return out, whole


# --- the greeting, CAPABILITY, NOOP, LOGOUT and the parser --------------------------------------


def test_greeting_is_the_capability_list_then_ok() -> None:
    pb = Playbook(SieveSession(SieveProfile()))
    assert pb.start() == CAPS + OK_GREETING
    assert pb.feed(b"CAPABILITY\r\n") == CAPS + OK_CAPABILITY
    assert pb.feed(b"LOGOUT\r\n") == OK_LOGOUT
    assert pb.closed
    assert pb.feed(b"NOOP\r\n") == b""


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"capability\r\n", CAPS + OK_CAPABILITY),
        (b"CaPaBiLiTy\n", CAPS + OK_CAPABILITY),
        (b"NOOP\r\n", OK_NOOP),
        (b"NOOP   \r\n", OK_NOOP),
        (b'NOOP "STARTTLS-SYNC-42"\r\n', tag(b'"STARTTLS-SYNC-42"')),
        (b'NOOP "a\\"b\\\\c"\r\n', tag(b'"a\\"b\\\\c"')),
        (b"NOOP {3+}\r\nabc\r\n", tag(b'"abc"')),
        (b"NOOP {3}\r\nabc\r\n", tag(b'"abc"')),  # no go-ahead: {n} is read as {n+}
        (b"NOOP {0+}\r\n\r\n", tag(b'""')),
        (b"NOOP {2+}\r\n\r\n\r\n", tag(b"{2}\r\n\r\n")),  # CRLF cannot be quoted
        (b'NOOP {3+}\n"}\n\n', tag(b'{3}\r\n"}\n')),  # bare LFs; LF is no quoted char
        (b"NOOP 42\r\n", tag(b'"42"')),
        (b'NOOP "\xc3\xbc"\r\n', tag(b'"\xc3\xbc"')),
        (b'NOOP "a" "b"\r\n', NO_SYNTAX),
        (b'NOOP "a\\x"\r\n', NO_SYNTAX),  # only \" and \\ are escapes
        (b'NOOP "abc\r\n', NO_SYNTAX),
        (b'NOOP "a\x00b"\r\n', NO_SYNTAX),
        (b'NOOP "a"b\r\n', NO_SYNTAX),
        (b"NOOP {3x}\r\n", NO_SYNTAX),
        (b"NOOP {}\r\n", NO_SYNTAX),
        (b"NOOP {+}\r\n", NO_SYNTAX),
        (b"NOOP {3}x\r\n", NO_SYNTAX),
        (b"NOOP {3}\rx\r\n", NO_SYNTAX),
        (b"NOOP (x)\r\n", NO_SYNTAX),
        (b"NOOP\rX\r\n", NO_SYNTAX),
        (b"FOO\r\n", NO_UNKNOWN),
        (b"NOOPS\r\n", NO_UNKNOWN),
        (b"1NOOP\r\n", NO_UNKNOWN),
        (b" NOOP\r\n", NO_UNKNOWN),
        (b"\r\n", NO_UNKNOWN),
        (b"NO\x00OP\r\n", NO_UNKNOWN),
        (b"X-FOO\r\n", NO_UNKNOWN),
        (b"LISTSCRIPTS\r\n", NO_AUTH_FIRST),
        (b'havespace "x" 100\r\n', NO_AUTH_FIRST),
        (b"UNAUTHENTICATE\r\n", NO_AUTH_FIRST),
        (b"STARTTLS\r\n", NO_STARTTLS),  # starttls off
        (b"AUTHENTICATE\r\n", NO_SYNTAX),
        (b'AUTHENTICATE "PLAIN" "a" "b"\r\n', NO_SYNTAX),
        (b'AUTHENTICATE "CRAM-MD5"\r\n', NO_MECHANISM),
        (b'AUTHENTICATE "LOGIN"\r\n', NO_MECHANISM),  # not in sieve_auth
    ],
)
def test_replies(line: bytes, reply: bytes) -> None:
    out, pb = three_ways(line)
    assert out == reply
    assert not pb.closed


@pytest.mark.parametrize(
    "data",
    [
        b'PUTSCRIPT "x" {6+}\r\nNOOP\r\n\r\n',  # the script's lines are data, never commands
        b'PUTSCRIPT "x" {6}\r\nNOOP\r\n\r\n',
        b'FOO "x" {6+}\r\nNOOP\r\n\r\n',
        b'NOOP "a\\x" {6+}\r\nNOOP\r\n\r\n',  # a rejected line still skips what it announced
        b'NOOP "a\\x" {7+}\r\nNO\nOP\r\n junk\r\n',  # the line goes on after it
    ],
)
def test_literals_of_refused_commands_are_skipped(data: bytes) -> None:
    out, pb = three_ways(data)
    assert out in (NO_AUTH_FIRST, NO_UNKNOWN, NO_SYNTAX)
    assert pb.feed(b"NOOP\r\n") == OK_NOOP


def test_arguments_of_argless_commands_are_ignored() -> None:
    pb = session(starttls="on")
    assert pb.feed(b'CAPABILITY "x"\r\n').endswith(OK_CAPABILITY)
    assert pb.feed(b"STARTTLS x\r\n") == OK_STARTTLS
    assert pb.starttls
    out, pb = three_ways(b"LOGOUT 1 2 3\r\n")
    assert out == OK_LOGOUT and pb.closed


# --- the capability lines (RFC 5804 §1.7) -------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "tls", "sasl", "starttls"),
    [
        ({}, False, b'"SASL" "PLAIN"\r\n', False),
        ({"auth_methods": ALL[::-1]}, False, b'"SASL" "PLAIN LOGIN EXTERNAL XOAUTH2 OAUTHBEARER"\r\n', False),
        ({"starttls": "on"}, False, b'"SASL" "PLAIN"\r\n', True),
        ({"starttls": "on"}, True, b'"SASL" "PLAIN"\r\n', False),
        ({"starttls": "only"}, False, b'"SASL" ""\r\n', True),  # no mechanism before TLS
        ({"starttls": "only"}, True, b'"SASL" "PLAIN"\r\n', False),
        ({"starttls": "on", "tls_available": False}, False, b'"SASL" "PLAIN"\r\n', False),
    ],
)  # fmt: skip
def test_capability_lines(kw: dict[str, Any], tls: bool, sasl: bytes, starttls: bool) -> None:
    kw.setdefault("capabilities", ["fileinto", "vacation"])
    pb = session(tls, **kw)
    want = (
        b'"IMPLEMENTATION" "fastmail"\r\n"SIEVE" "fileinto vacation"\r\n'
        + sasl
        + (b'"STARTTLS"\r\n' if starttls else b"")
        + b'"VERSION" "1.0"\r\n'
    )
    assert bytes(pb.transcript) == want + OK_GREETING
    assert pb.feed(b"CAPABILITY\r\n") == want + OK_CAPABILITY


def test_capability_values_are_rfc_5804_strings() -> None:
    pb = session(capabilities=["a\\b", 'c"d', "ENOTIFY"], implementation="x y")
    assert bytes(pb.transcript).startswith(
        b'"IMPLEMENTATION" "x y"\r\n"SIEVE" "a\\\\b c\\"d ENOTIFY"\r\n"NOTIFY" "mailto"\r\n'
    )
    many = [f"vnd.example.ext{i:04}" for i in range(60)]  # over 1024 octets: a literal
    pb = session(capabilities=many)
    words = " ".join(many).encode()
    assert b'"SIEVE" {%d}\r\n%s\r\n' % (len(words), words) in bytes(pb.transcript)


def test_sieve_string() -> None:
    assert sieve_string(b"") == b'""'
    assert sieve_string(b'a"b\\c') == b'"a\\"b\\\\c"'
    assert sieve_string(b"x" * 1024) == b'"' + b"x" * 1024 + b'"'
    assert sieve_string(b"x" * 1025) == b"{1025}\r\n" + b"x" * 1025
    assert sieve_string(b"a\r\nb") == b"{4}\r\na\r\nb"
    assert sieve_string(b"a\0b") == b"{3}\r\na\0b"


def test_bad_profile_values() -> None:
    with pytest.raises(ValueError, match="sieve_auth"):
        SieveProfile(auth_methods=["cram-md5"])
    with pytest.raises(ValueError, match="starttls"):
        SieveProfile(starttls="maybe")
    with pytest.raises(ValueError, match="client_buffer"):
        SieveProfile(client_buffer=0)


# --- AUTHENTICATE -------------------------------------------------------------------------------


def auth_of(pb: Playbook) -> tuple[bytes, bytes, bytes, bytes, int]:
    a = pb.machine.auth
    return a.protocol, a.method, a.user, a.passwd, a.login_attempt


@pytest.mark.parametrize(
    "data",
    [
        b'AUTHENTICATE "PLAIN" "' + b64(b"\0alice\0secret") + b'"\r\n',
        b"authenticate plain " + b64(b"\0alice\0secret") + b"\r\n",  # atoms taken too
        b'AUTHENTICATE "PLAIN" {20+}\r\n' + b64(b"\0alice\0secret") + b"\r\n",
        b'AUTHENTICATE "PLAIN" "' + b64(b"admin\0alice\0secret") + b'"\r\n',  # authzid ignored
        b'AUTHENTICATE "plain"\r\n"' + b64(b"\0alice\0secret") + b'"\r\n',
        b'AUTHENTICATE "PLAIN"\r\n{20+}\r\n' + b64(b"\0alice\0secret") + b"\r\n",
        b'AUTHENTICATE "PLAIN"\r\n{20}\r\n' + b64(b"\0alice\0secret") + b"\r\n",
    ],
)
def test_authenticate_plain(data: bytes) -> None:
    out, pb = three_ways(data)
    assert out in (b"", CHALLENGE_EMPTY)
    assert pb.acts & ACT_AUTH and pb.machine.phase == "in http auth state"
    assert auth_of(pb) == (b"sieve", b"plain", b"alice", b"secret", 1)
    assert pb.machine.auth.salt == b"" and pb.machine.auth.tag == b""


def test_authenticate_login_steps_and_initial_response() -> None:
    data = b'AUTHENTICATE "LOGIN"\r\n"YWxpY2U="\r\n{8+}\r\nc2VjcmV0\r\n'
    out, pb = three_ways(data, auth_methods=["login"])
    assert out == CHALLENGE_USERNAME + CHALLENGE_PASSWORD
    assert auth_of(pb) == (b"sieve", b"plain", b"alice", b"secret", 1)  # as nginx: "plain"
    out, pb = three_ways(
        b'AUTHENTICATE "LOGIN" "YWxpY2U="\r\n"c2VjcmV0"\r\n', auth_methods=["login"]
    )
    assert out == CHALLENGE_PASSWORD
    assert auth_of(pb)[2:4] == (b"alice", b"secret")


def test_authenticate_external_xoauth2_oauthbearer() -> None:
    out, pb = three_ways(b'AUTHENTICATE "EXTERNAL"\r\n"YWxpY2U="\r\n', auth_methods=ALL)
    assert out == CHALLENGE_EMPTY
    assert auth_of(pb) == (b"sieve", b"external", b"alice", b"", 1)
    out, pb = three_ways(b'AUTHENTICATE "EXTERNAL" ""\r\n', auth_methods=ALL)
    assert auth_of(pb)[1:4] == (b"external", b"", b"")
    xo = b64(b"user=alice\x01auth=Bearer tok\x01\x01")
    out, pb = three_ways(b'AUTHENTICATE "XOAUTH2" "' + xo + b'"\r\n', auth_methods=ALL)
    assert auth_of(pb)[1:4] == (b"xoauth2", b"alice", b"tok")
    ob = b64(b"n,a=alice,\x01auth=Bearer tok\x01\x01")
    out, pb = three_ways(b'AUTHENTICATE "OAUTHBEARER"\r\n"' + ob + b'"\r\n', auth_methods=ALL)
    assert out == CHALLENGE_EMPTY
    assert auth_of(pb)[1:4] == (b"oauthbearer", b"alice", b"tok")


@pytest.mark.parametrize(
    ("data", "reply"),
    [
        (b'AUTHENTICATE "PLAIN" "!!"\r\n', NO_SASL),
        (b'AUTHENTICATE "PLAIN" "' + b64(b"alice") + b'"\r\n', NO_SASL),
        (b'AUTHENTICATE "PLAIN"\r\n"*"\r\n', CHALLENGE_EMPTY + NO_ABORTED),
        (b'AUTHENTICATE "PLAIN"\r\n*\r\n', CHALLENGE_EMPTY + NO_ABORTED),
        (b'AUTHENTICATE "PLAIN"\r\n\r\n', CHALLENGE_EMPTY + NO_SYNTAX),
        (b'AUTHENTICATE "PLAIN"\r\n"a" "b"\r\n', CHALLENGE_EMPTY + NO_SYNTAX),
        (b'AUTHENTICATE "PLAIN"\r\n"a\r\n', CHALLENGE_EMPTY + NO_SYNTAX),
        (b'AUTHENTICATE "LOGIN"\r\n"!"\r\n', CHALLENGE_USERNAME + NO_SASL),
        (b'AUTHENTICATE "LOGIN" "!"\r\n', NO_SASL),
        (b'AUTHENTICATE "XOAUTH2" "' + b64(b"user=a") + b'"\r\n', NO_SASL),
        (b'AUTHENTICATE "OAUTHBEARER" "' + b64(b"n,,") + b'"\r\n', NO_SASL),
        (b'AUTHENTICATE "DIGEST-MD5"\r\n', NO_MECHANISM),
    ],
)
def test_authenticate_refusals_return_to_the_start(data: bytes, reply: bytes) -> None:
    out, pb = three_ways(data, auth_methods=ALL)
    assert out == reply
    assert not pb.waiting_auth and not pb.closed
    assert pb.feed(b"NOOP\r\n") == OK_NOOP


def test_a_sasl_line_is_data_not_a_command() -> None:
    pb = session()
    pb.feed(b'AUTHENTICATE "PLAIN"\r\n')
    assert pb.feed(b"LOGOUT\r\n") == NO_SASL  # base64 of nothing useful, not a LOGOUT
    assert not pb.closed


def test_auth_failure_with_retry_then_a_new_login() -> None:
    pb = session()
    pb.feed(b'AUTHENTICATE "PLAIN" "' + b64(b"\0alice\0bad") + b'"\r\nNOOP\r\n')
    assert pb.waiting_auth
    assert pb.auth_fail(b'Invalid "login"', None, retry=True) == (
        b'NO "Invalid \\"login\\""\r\n' + OK_NOOP  # the queued NOOP runs after the NO
    )
    pb.feed(b'AUTHENTICATE "PLAIN" "' + b64(b"\0alice\0good") + b'"\r\n')
    assert [(a.passwd, a.login_attempt) for a in pb.auths] == [(b"bad", 1), (b"good", 2)]


def test_auth_failure_without_retry_says_bye_and_closes() -> None:
    pb = session()
    pb.feed(b'AUTHENTICATE "PLAIN" "' + b64(b"\0alice\0bad") + b'"\r\n')
    assert pb.auth_fail(b"", None, retry=False) == b'BYE "Authentication failed."\r\n'
    assert pb.closed
    assert pb.feed(b"NOOP\r\n") == b""


def test_auth_error_is_an_internal_error_and_close() -> None:
    pb = session()
    pb.feed(b'AUTHENTICATE "PLAIN" "' + b64(b"\0alice\0pw") + b'"\r\n')
    assert pb.auth_error() == INTERNAL_ERROR == b'BYE (TRYLATER) "Internal server error."\r\n'
    assert pb.closed


@pytest.mark.parametrize(
    ("mech", "answer", "retry", "reply"),
    [
        (b"XOAUTH2", b'""', True, b'NO "nope"\r\n'),
        (b"XOAUTH2", b'"*"', True, b'NO "nope"\r\n'),
        (b"OAUTHBEARER", b'"AQ=="', False, b'BYE "nope"\r\n'),
        (b"OAUTHBEARER", b"{4+}\r\nAQ==", True, b'NO "nope"\r\n'),
    ],
)
def test_auth_error_sasl_challenge_then_the_failure(
    mech: bytes, answer: bytes, retry: bool, reply: bytes
) -> None:
    pb = session(auth_methods=ALL)
    token = (
        b"user=a\x01auth=Bearer t\x01\x01"
        if mech == b"XOAUTH2"
        else b"n,,\x01auth=Bearer t\x01\x01"
    )
    pb.feed(b'AUTHENTICATE "' + mech + b'" "' + b64(token) + b'"\r\n')
    m = pb.machine
    assert pb._take(m.on_auth_fail(b"nope", None, retry, b"eyJzdGF0dXMiOiI0MDEifQ==")) == (
        b'"eyJzdGF0dXMiOiI0MDEifQ=="\r\n'
    )
    assert pb.feed(answer + b"\r\n") == reply
    assert pb.closed != retry


def test_auth_error_sasl_is_ignored_for_other_mechanisms() -> None:
    pb = session()
    pb.feed(b'AUTHENTICATE "PLAIN" "' + b64(b"\0a\0b") + b'"\r\n')
    assert pb._take(pb.machine.on_auth_fail(b"no", None, True, b"e30=")) == b'NO "no"\r\n'


def test_auth_ok_keeps_pipelined_input_for_the_relay() -> None:
    pb = session()
    pb.feed(b'AUTHENTICATE "PLAIN" "' + b64(b"\0a\0b") + b'"\r\nLISTSCRIPTS\r\nGETSC')
    assert pb.feed(b'RIPT "x"\r\n') == b""  # held, not parsed
    assert pb.auth_ok() == b""
    assert pb.machine.take_input() == b'LISTSCRIPTS\r\nGETSCRIPT "x"\r\n'


def test_credentials_never_reused_across_attempts() -> None:
    pb = session(auth_methods=ALL)
    pb.feed(b'AUTHENTICATE "PLAIN" "' + b64(b"\0alice\0secret") + b'"\r\n')
    pb.auth_fail(b"no", None, retry=True)
    pb.feed(b'AUTHENTICATE "EXTERNAL" "' + b64(b"bob") + b'"\r\n')
    assert auth_of(pb) == (b"sieve", b"external", b"bob", b"", 2)


def test_timeout_says_bye() -> None:
    pb = session()
    pb.feed(b"NOO")
    assert pb.timeout() == BYE_TIMEOUT
    assert pb.closed and pb.machine.close_reason == "client timed out"


# --- STARTTLS -----------------------------------------------------------------------------------


def test_starttls_drops_injected_input_and_announces_again() -> None:
    pb = session(starttls="on")
    assert pb.feed(b'STARTTLS\r\nAUTHENTICATE "PLAIN" "eA=="\r\n') == OK_STARTTLS
    assert pb.starttls and not pb.waiting_auth
    assert pb.feed(b"NOOP\r\n") == b""  # plaintext while the handshake runs: dropped
    after = pb.tls_done()
    assert after.endswith(OK_TLS_DONE) and b'"STARTTLS"' not in after
    assert after == SieveProfile(tls_available=True).caps_plain + OK_TLS_DONE
    assert pb.feed(b'NOOP "STARTTLS-RESYNC-CAPA"\r\n') == tag(b'"STARTTLS-RESYNC-CAPA"')
    assert pb.feed(b"STARTTLS\r\n") == NO_STARTTLS


def test_starttls_only_needs_tls_before_authenticate() -> None:
    pb = session(starttls="only")
    assert pb.feed(b'AUTHENTICATE "PLAIN" "' + b64(b"\0a\0b") + b'"\r\n') == NO_ENCRYPT
    assert pb.feed(b"NOOP\r\nCAPABILITY\r\n").startswith(OK_NOOP)
    pb.feed(b"STARTTLS\r\n")
    pb.tls_done()
    pb.feed(b'AUTHENTICATE "PLAIN" "' + b64(b"\0a\0b") + b'"\r\n')
    assert pb.waiting_auth


def test_implicit_tls_session_offers_no_starttls() -> None:
    pb = session(True, starttls="on")
    assert b'"STARTTLS"' not in bytes(pb.transcript)
    assert pb.feed(b"STARTTLS\r\n") == NO_STARTTLS


# --- limits -------------------------------------------------------------------------------------


def test_max_errors_says_bye_on_the_last_one() -> None:
    out, pb = three_ways(b"A\r\nB\r\nC\r\nD\r\nE\r\nF\r\n")
    assert out == NO_UNKNOWN * 4 + BYE_ERRORS
    assert pb.closed and pb.machine.close_reason == "client sent too many invalid commands"


def test_handler_refusals_do_not_count_and_starttls_keeps_the_count() -> None:
    pb = session(starttls="on", max_errors=2)
    for _ in range(5):
        assert pb.feed(b'AUTHENTICATE "X"\r\nNOOP "a" "b"\r\n') == NO_MECHANISM + NO_SYNTAX
    assert pb.feed(b"FOO\r\n") == NO_UNKNOWN
    pb.feed(b"STARTTLS\r\n")
    pb.tls_done()
    assert pb.feed(b"LISTSCRIPTS\r\n") == BYE_ERRORS


def test_max_commands_counts_sasl_lines_and_zero_is_unlimited() -> None:
    pb = session(max_commands=3)
    assert pb.feed(b'NOOP\r\nAUTHENTICATE "PLAIN"\r\n"*"\r\n') == (
        OK_NOOP + CHALLENGE_EMPTY + NO_ABORTED
    )
    assert pb.feed(b"NOOP\r\n") == BYE_COMMANDS
    assert pb.closed and pb.machine.close_reason == "client sent too many commands"
    pb = session(max_commands=0)
    assert pb.feed(b"NOOP\r\n" * 2000) == OK_NOOP * 2000


@pytest.mark.parametrize("size", [32, 100])
def test_a_line_fits_the_buffer_and_one_byte_more_does_not(size: int) -> None:
    line = b'NOOP "' + b"x" * (size - 9) + b'"\r\n'
    assert len(line) == size
    out, pb = three_ways(line, client_buffer=size)
    assert out == tag(b'"' + b"x" * (size - 9) + b'"')
    line = b'NOOP "' + b"x" * (size - 8) + b'"\r\n'
    out, pb = three_ways(line, client_buffer=size)
    assert out == BYE_TOO_LONG
    assert pb.closed and pb.machine.close_reason == "client sent too long command"


def test_a_literal_that_cannot_fit_is_refused_before_its_octets() -> None:
    pb = session(client_buffer=64)
    assert pb.feed(b"NOOP {60+}\r\n") == BYE_TOO_LONG  # 11 + 60 > 64
    assert pb.closed
    pb = session(client_buffer=64)
    assert pb.feed(b"NOOP {99999999999999999999+}") == BYE_TOO_LONG  # no overflow
    pb = session(client_buffer=64)
    assert pb.feed(b"FOO x {60+}\r\n") == BYE_TOO_LONG  # skipping a refused line too
    pb = session(client_buffer=64)
    assert pb.feed(b"NOOP {50+}\r\n" + b"x" * 50 + b"\r\n") == tag(b'"' + b"x" * 50 + b'"')


def test_the_authenticate_exchange_shares_one_buffer() -> None:
    pb = session(client_buffer=64)
    assert pb.feed(b'AUTHENTICATE "PLAIN"\r\n') == CHALLENGE_EMPTY  # 22 bytes used
    assert pb.feed(b'"' + b"A" * 40 + b'"\r\n') == BYE_TOO_LONG  # 22 + 44 > 64
    pb = session(client_buffer=64)
    pb.feed(b'AUTHENTICATE "PLAIN"\r\n"*"\r\n')
    assert pb.feed(b'NOOP "' + b"x" * 50 + b'"\r\n').startswith(b"OK (TAG")  # a fresh buffer


def test_pipelining_at_any_buffer_boundary() -> None:
    pb = session(client_buffer=16)
    data = b"NOOP\r\n" * 40 + b'NOOP "abcdefg"\r\n' * 10
    assert pb.feed(data) == OK_NOOP * 40 + tag(b'"abcdefg"') * 10


# --- any split gives the same result ------------------------------------------------------------

PIECES = [
    b"CAPABILITY\r\n",
    b'NOOP "a\\"b"\r\n',
    b"NOOP {3+}\r\nx\ry\r\n",
    b'PUTSCRIPT "s" {12+}\r\nLOGOUT\r\nFOO\r\n\r\n',
    b"BAD\r\n",
    b'AUTHENTICATE "PLAIN"\r\n"*"\r\n',
    b'AUTHENTICATE "LOGIN"\r\n"YWxpY2U="\r\n{8+}\r\nc2VjcmV0\r\n',
    b'AUTHENTICATE "PLAIN" "' + b64(b"\0alice\0pw") + b'"\r\n',
    b'AUTHENTICATE "PLAIN" {12+}\r\n' + b64(b"\0a\0pwd") + b"\r\n",
    b'NOOP "a\\x" {4+}\r\nNOOP\r\n',
    b"STARTTLS\r\n",
    b"NOOP\n",
]


def outcome(chunks: list[bytes], retry: bool) -> tuple[bytes, int, list[Any], bytes, bool]:
    pb = Playbook(SieveSession(SieveProfile(auth_methods=ALL, max_errors=50)))
    pb.start()
    m = pb.machine
    for c in chunks:
        pb.feed(c)
        # answer auth right away, the way the engine would
        while m.state == 16:
            pb.auth_fail(b"Nope", None, retry)
    auths = [(a.method, a.user, a.passwd, a.login_attempt) for a in pb.auths]
    return bytes(pb.transcript), pb.acts, auths, m.take_input(), pb.closed


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
    data = b"".join(p for p in PIECES if p != b"STARTTLS\r\n")
    whole = outcome([data], True)
    assert outcome([bytes([c]) for c in data], True) == whole
    assert whole[1] & ACT_SEND and whole[1] & ACT_AUTH and not whole[1] & ACT_STARTTLS
    assert not whole[1] & ACT_CLOSE
