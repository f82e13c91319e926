"""Backend login machines (fastmail/_login.pyx, _smtplogin.pyx) against nginx 1.22.1's bytes
(ngx_mail_proxy_module.c's IMAP, POP3 and SMTP handlers); and ManageSieve (RFC 5804, beyond
nginx) against what Dovecot's managesieve says."""

from __future__ import annotations

import base64

import pytest

from fastmail import _sieve
from fastmail._core import ACT_BACKEND, ACT_CLOSE, ACT_DONE, ACT_SEND, ACT_STARTTLS
from fastmail._login import (
    IMAP_INTERNAL_ERROR,
    POP3_INTERNAL_ERROR,
    SIEVE_INTERNAL_ERROR,
    ImapLogin,
    Pop3Login,
    SieveLogin,
    SieveLoginConf,
)
from fastmail._smtplogin import SMTP_INTERNAL_ERROR, SmtpLogin, xtext
from support.logins import Backend, req, run_smtp, smtp

# --- IMAP ----------------------------------------------------------------------------------


@pytest.mark.parametrize("split", [False, True])
def test_imap_login_with_literals_and_verbatim_ok(split: bool) -> None:
    b = Backend(ImapLogin(req(b"imap", tag=b"a1 ")), split)
    b.reply(b"* OK fake imap ready\r\n")
    assert b.sent == [b"a1 LOGIN {4}\r\n"]
    b.reply(b"+ go ahead\r\n")
    b.reply(b"+ go ahead\r\n")
    assert b.sent[1:] == [b"user {4}\r\n", b"pass\r\n"]
    act = b.reply(b"a1 OK LOGIN completed\r\n")
    assert act == ACT_SEND | ACT_DONE
    assert b.client == b"a1 OK LOGIN completed\r\n"  # nothing of our own added
    assert b.m.done


def test_imap_raw_credentials_inside_literals_empty_password_and_tag() -> None:
    b = Backend(ImapLogin(req(b"imap", b'u "x"\r\n', b"", tag=b" ")))
    b.reply(b"* OK hi\r\n")
    b.reply(b"+ \r\n")
    b.reply(b"+ \r\n")
    assert b.sent == [b" LOGIN {7}\r\n", b'u "x"\r\n {0}\r\n', b"\r\n"]


def test_imap_one_untagged_line_tolerated_and_relayed() -> None:
    b = Backend(ImapLogin(req(b"imap", tag=b"a1 ")))
    for line in (b"* OK hi\r\n", b"+ \r\n", b"+ \r\n"):
        b.reply(line)
    assert b.reply(b"* CAPABILITY IMAP4rev1 BACKEND\r\n") == 0  # waits for the tagged line
    act = b.reply(b"a1 OK [CAPABILITY IMAP4rev1] logged in\r\n")
    assert act & ACT_DONE
    assert (
        b.client == b"* CAPABILITY IMAP4rev1 BACKEND\r\na1 OK [CAPABILITY IMAP4rev1] logged in\r\n"
    )


def test_imap_second_untagged_line_fails() -> None:
    b = Backend(ImapLogin(req(b"imap", tag=b"a1 "), pass_error_message=True))
    for line in (b"* OK hi\r\n", b"+ \r\n", b"+ \r\n"):
        b.reply(line)
    act = b.reply(b"* ONE\r\n* TWO\r\na1 OK x\r\n")
    assert act == ACT_SEND | ACT_CLOSE


def test_imap_split_tagged_reply() -> None:
    b = Backend(ImapLogin(req(b"imap", tag=b"a1 ")))
    for line in (b"* OK hi\r\n", b"+ \r\n", b"+ \r\n"):
        b.reply(line)
    assert b.reply(b"a1 O") == 0
    assert b.reply(b"K split reply\r\n") & ACT_DONE
    assert b.client == b"a1 OK split reply\r\n"


@pytest.mark.parametrize(
    "pass_error,expected",
    [(False, IMAP_INTERNAL_ERROR), (True, b"a1 NO [AUTHENTICATIONFAILED] backend rejects\r\n")],
)
def test_imap_refused_login(pass_error: bool, expected: bytes) -> None:
    m = ImapLogin(req(b"imap", tag=b"a1 "), pass_error_message=pass_error)
    b = Backend(m)
    for line in (b"* OK hi\r\n", b"+ \r\n", b"+ \r\n"):
        b.reply(line)
    assert b.reply(b"a1 NO [AUTHENTICATIONFAILED] backend rejects\r\n") == ACT_SEND | ACT_CLOSE
    assert b.client == expected
    assert m.close_reason == (
        'upstream sent invalid response: "a1 NO [AUTHENTICATIONFAILED] backend rejects"'
    )
    assert m.log_level == ("info" if pass_error else "error")


@pytest.mark.parametrize(
    "pass_error,expected", [(False, IMAP_INTERNAL_ERROR), (True, b"* BYE backend overloaded\r\n")]
)
def test_imap_bad_greeting(pass_error: bool, expected: bytes) -> None:
    b = Backend(ImapLogin(req(b"imap", tag=b"a1 "), pass_error_message=pass_error))
    assert b.reply(b"* BYE backend overloaded\r\n") == ACT_SEND | ACT_CLOSE
    assert b.client == expected and b.sent == []


def test_imap_overlong_backend_line_is_internal_error_even_with_pass_error() -> None:
    m = ImapLogin(req(b"imap", tag=b"a1 "), proxy_buffer=64, pass_error_message=True)
    b = Backend(m)
    assert b.reply(b"* OK " + b"x" * 40) == 0
    assert b.reply(b"y" * 19) == ACT_SEND | ACT_CLOSE  # exactly 64 bytes, no CRLF
    assert b.client == IMAP_INTERNAL_ERROR
    assert (
        m.close_reason == 'upstream sent too long response line: "* OK ' + "x" * 40 + "y" * 18 + '"'
    )


def test_imap_bare_lf_never_completes_and_backend_error_gives_internal_error() -> None:
    m = ImapLogin(req(b"imap", tag=b"a1 "), pass_error_message=True)
    b = Backend(m)
    assert b.reply(b"* OK hi\n") == 0
    assert m.on_error("upstream timed out") == ACT_SEND | ACT_CLOSE
    assert m.take_output() == IMAP_INTERNAL_ERROR


def test_imap_proxy_header_goes_first_and_ctl_in_tag_refused() -> None:
    b = Backend(ImapLogin(req(b"imap", tag=b"a1 "), proxy_header=b"PROXY UNKNOWN\r\n"))
    assert b.sent == [b"PROXY UNKNOWN\r\n"]
    m = ImapLogin(req(b"imap", tag=b"a\r\n1 "))
    assert m.start() == ACT_SEND | ACT_CLOSE
    assert m.take_output() == IMAP_INTERNAL_ERROR and m.take_backend_output() == b""


# --- POP3 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("split", [False, True])
def test_pop3_user_pass(split: bool) -> None:
    b = Backend(Pop3Login(req(b"pop3", b"user", b"backendsecret")), split)
    b.reply(b"+OK fake pop3 ready <1.2@x>\r\n")
    b.reply(b"+OK user accepted\r\n")
    assert b.sent == [b"USER user\r\n", b"PASS backendsecret\r\n"]
    assert b.reply(b"+OK maildrop locked\r\n") == ACT_SEND | ACT_DONE
    assert b.client == b"+OK maildrop locked\r\n"


@pytest.mark.parametrize(
    "replies,pass_error,expected,sent",
    [
        (
            [b"+OK hi\r\n", b"-ERR [AUTH] unknown user\r\n"],
            True,
            b"-ERR [AUTH] unknown user\r\n",
            1,
        ),
        ([b"+OK hi\r\n", b"-ERR [AUTH] unknown user\r\n"], False, POP3_INTERNAL_ERROR, 1),
        (
            [b"+OK hi\r\n", b"+OK\r\n", b"-ERR [AUTH] invalid password\r\n"],
            True,
            b"-ERR [AUTH] invalid password\r\n",
            2,
        ),
        ([b"-ERR backend overloaded\r\n"], True, b"-ERR backend overloaded\r\n", 0),
        ([b"+ok lowercase\r\n"], False, POP3_INTERNAL_ERROR, 0),
    ],
)
def test_pop3_failures(replies: list[bytes], pass_error: bool, expected: bytes, sent: int) -> None:
    b = Backend(Pop3Login(req(b"pop3"), pass_error_message=pass_error))
    for r in replies:
        b.reply(r)
    assert b.act == ACT_SEND | ACT_CLOSE
    assert b.client == expected
    assert len(b.sent) == sent


@pytest.mark.parametrize("user,passwd", [(b"us\r\ner", b"p"), (b"u", b"p\nQUIT"), (b"u\0", b"p")])
def test_pop3_refuses_ctl_in_credentials(user: bytes, passwd: bytes) -> None:
    m = Pop3Login(req(b"pop3", user, passwd))
    assert m.start() == ACT_SEND | ACT_CLOSE
    assert m.take_output() == POP3_INTERNAL_ERROR
    assert m.feed(b"+OK hi\r\n") == 0 and m.take_backend_output() == b""


# --- SMTP ----------------------------------------------------------------------------------


XC = b"XCLIENT ADDR=127.0.0.1 LOGIN=test NAME=[UNAVAILABLE]\r\n"
XC_NOLOGIN = b"XCLIENT ADDR=127.0.0.1 NAME=[UNAVAILABLE]\r\n"
PLAIN = b"AUTH PLAIN AHRlc3QAc2VjcmV0\r\n"


@pytest.mark.parametrize(
    "kw,sent",
    [
        ({}, [b"EHLO mx.test\r\n", XC]),
        ({"helo": b"cl.example", "esmtp": True}, [b"EHLO mx.test\r\n", XC, b"EHLO cl.example\r\n"]),
        ({"helo": b"cl.example"}, [b"EHLO mx.test\r\n", XC, b"HELO cl.example\r\n"]),
        ({"helo": b"x", "esmtp": True, "xclient": False}, [b"EHLO mx.test\r\n"]),
        ({"helo": b"x", "xclient": False}, [b"HELO mx.test\r\n"]),
        ({"esmtp": True, "xclient": False, "proxy_smtp_auth": True}, [b"EHLO mx.test\r\n", PLAIN]),
        ({"xclient": False, "proxy_smtp_auth": True}, [b"HELO mx.test\r\n", PLAIN]),
        (
            {"helo": b"cl.example", "esmtp": True, "proxy_smtp_auth": True},
            [b"EHLO mx.test\r\n", XC_NOLOGIN, b"EHLO cl.example\r\n", PLAIN],
        ),
    ],
)
@pytest.mark.parametrize("split", [False, True])
def test_smtp_auth_sequences(kw: dict, sent: list[bytes], split: bool) -> None:
    b = run_smtp(smtp(**kw), split=split)
    assert b.sent == sent
    assert b.act == ACT_SEND | ACT_DONE
    assert b.client == b"235 2.0.0 OK\r\n"  # no backend reply from the login is shown


@pytest.mark.parametrize(
    "kw,sent",
    [
        (
            {
                "helo": b"cl.example",
                "esmtp": True,
                "mail": b"mail from:<a@b>  SIZE=10",
                "rcpt": b"RCPT  TO:<x@y>  NOTIFY=NEVER",
            },
            [
                b"EHLO mx.test\r\n",
                XC_NOLOGIN,
                b"EHLO cl.example\r\n",
                b"mail from:<a@b>  SIZE=10\r\n",
                b"RCPT  TO:<x@y>  NOTIFY=NEVER\r\n",
            ],
        ),
        (
            {"mail": b"MAIL FROM:<a@b>", "rcpt": b"RCPT TO:<x@y>"},
            [b"EHLO mx.test\r\n", XC_NOLOGIN, b"MAIL FROM:<a@b>\r\n", b"RCPT TO:<x@y>\r\n"],
        ),
        (
            {"helo": b"cl", "xclient": False, "mail": b"MAIL FROM:<c@d>", "rcpt": b"RCPT TO:<x@y>"},
            [b"HELO mx.test\r\n", b"MAIL FROM:<c@d>\r\n", b"RCPT TO:<x@y>\r\n"],
        ),
    ],
)
def test_smtp_auth_none_replays_mail_and_rcpt(kw: dict, sent: list[bytes]) -> None:
    b = run_smtp(smtp(user=b"", passwd=b"", method=b"none", **kw), last=b"250 2.1.5 rcpt ok\r\n")
    assert b.sent == sent
    assert b.act == ACT_SEND | ACT_DONE
    assert b.client == b"250 2.1.5 rcpt ok\r\n"


def test_smtp_none_rcpt_refusal_is_relayed_and_relay_still_starts() -> None:
    m = smtp(user=b"", passwd=b"", method=b"none", mail=b"MAIL FROM:<a@b>", rcpt=b"RCPT TO:<x@y>")
    b = run_smtp(m, last=b"550 5.1.1 no such user\r\n")
    assert b.act == ACT_SEND | ACT_DONE and b.client == b"550 5.1.1 no such user\r\n"


def test_smtp_xclient_ipv6_and_hostile_values_are_xtext() -> None:
    b = Backend(
        SmtpLogin(
            req(b"smtp", b"we ir+d=%\r\nX\xc3\xa9", b"x"),
            server_name=b"mx.test",
            client_addr="::1",
            client_host=b"evil\r\nQUIT",
        )
    )
    b.reply(b"220 hi\r\n")
    b.reply(b"250 ok\r\n")
    assert b.sent[1] == (
        b"XCLIENT ADDR=IPV6:::1 LOGIN=we+20ir+2Bd+3D%+0D+0AX+C3+A9 NAME=evil+0D+0AQUIT\r\n"
    )


def test_xtext_encodes_exactly_the_rfc3461_set() -> None:
    everything = bytes(range(256))
    out = xtext(everything)
    assert b"\r" not in out and b"\n" not in out and b"\0" not in out and b" " not in out
    plain = bytes(c for c in range(0x21, 0x7F) if c not in (0x2B, 0x3D))
    assert xtext(plain) == plain
    assert xtext(b"+= \x7f\xff") == b"+2B+3D+20+7F+FF"


@pytest.mark.parametrize(
    "pass_error,expected",
    [(False, SMTP_INTERNAL_ERROR), (True, b"550-5.7.0 xclient denied\r\n550 5.7.0 really\r\n")],
)
def test_smtp_multiline_refusal(pass_error: bool, expected: bytes) -> None:
    m = smtp(pass_error_message=pass_error)
    b = Backend(m)
    b.reply(b"220-multi\r\n220 line greeting\r\n")
    b.reply(b"250 ok\r\n")
    assert b.reply(b"550-5.7.0 xclient denied\r\n") == 0  # waits for the last line
    assert b.reply(b"550 5.7.0 really\r\n") == ACT_SEND | ACT_CLOSE
    assert b.client == expected
    assert (
        m.close_reason
        == 'upstream sent invalid response: "550-5.7.0 xclient denied\r\n550 5.7.0 really"'
    )


@pytest.mark.parametrize("greeting", [b"250 wrong greeting code\r\n", b"554 5.3.2 go away\r\n"])
def test_smtp_rejected_greeting(greeting: bytes) -> None:
    b = Backend(smtp(pass_error_message=True))
    assert b.reply(greeting) == ACT_SEND | ACT_CLOSE
    assert b.client == greeting


def test_smtp_auth_plain_refused() -> None:
    b = Backend(smtp(xclient=False, proxy_smtp_auth=True, pass_error_message=True))
    b.reply(b"220 hi\r\n")
    b.reply(b"250 hi\r\n")
    assert b.reply(b"535 5.7.8 backend says no\r\n") == ACT_SEND | ACT_CLOSE
    assert b.client == b"535 5.7.8 backend says no\r\n"


def test_smtp_no_password_available() -> None:
    m = smtp(
        passwd=b"", method=b"external", xclient=False, proxy_smtp_auth=True, pass_error_message=True
    )
    b = Backend(m)
    b.reply(b"220 hi\r\n")
    assert b.reply(b"250 hi\r\n") == ACT_SEND | ACT_CLOSE
    assert b.client == SMTP_INTERNAL_ERROR
    assert m.close_reason == "no password available"


def test_smtp_overlong_and_bare_lf() -> None:
    m = smtp(proxy_buffer=32, pass_error_message=True)
    b = Backend(m)
    assert b.reply(b"220 ok\n") == 0  # never complete: the driver's timeout ends it
    assert b.reply(b"x" * 30) == ACT_SEND | ACT_CLOSE
    assert b.client == SMTP_INTERNAL_ERROR
    assert m.close_reason.startswith("upstream sent too long response line")


@pytest.mark.parametrize(
    "kw",
    [
        {"helo": b"cl\0x"},
        {"method": b"none", "mail": b"MAIL FROM:<a@b>\r\nRSET", "rcpt": b"RCPT TO:<x@y>"},
        {"user": b"a\0b", "xclient": False, "proxy_smtp_auth": True},
    ],
)
def test_smtp_refuses_ctl_reaching_backend_commands(kw: dict) -> None:
    m = smtp(**kw)
    assert m.start() == ACT_SEND | ACT_CLOSE
    assert m.take_output() == SMTP_INTERNAL_ERROR


def test_smtp_xclient_reply_250_accepted_and_stale_login_not_sent_for_none() -> None:
    b = Backend(smtp(user=b"", method=b"none", mail=b"MAIL FROM:<a@b>", rcpt=b"RCPT TO:<c@d>"))
    b.reply(b"220 hi\r\n")
    b.reply(b"250 hi\r\n")
    assert b.sent[-1] == XC_NOLOGIN
    b.reply(b"250 xclient ok\r\n")
    assert b.sent[-1] == b"MAIL FROM:<a@b>\r\n"


# --- proxy_pipelining (beyond nginx): fewer round trips to the backend ------------------------


@pytest.mark.parametrize("split", [False, True])
def test_imap_pipelining_uses_literal_plus_when_the_greeting_announces_it(split: bool) -> None:
    b = Backend(ImapLogin(req(b"imap", b'al "ice"', b"p\r\nw", tag=b"a1 "), pipelining=True), split)
    b.reply(b"* OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR] Dovecot ready.\r\n")
    assert b.sent == [b'a1 LOGIN {8+}\r\nal "ice" {4+}\r\np\r\nw\r\n']
    assert b.reply(b"a1 OK [CAPABILITY IMAP4rev1] Logged in\r\n") == ACT_SEND | ACT_DONE
    assert b.client == b"a1 OK [CAPABILITY IMAP4rev1] Logged in\r\n"


def test_imap_pipelining_quotes_safe_credentials_without_literal_plus() -> None:
    b = Backend(ImapLogin(req(b"imap", b'a"b', b"c\\d", tag=b"t "), pipelining=True))
    b.reply(b"* OK IMAP4rev1 ready\r\n")
    assert b.sent == [b't LOGIN "a\\"b" "c\\\\d"\r\n']
    assert b.reply(b"t OK done\r\n") == ACT_SEND | ACT_DONE


@pytest.mark.parametrize("passwd", [b"p\xc3\xa4ss", b"a\r\nb", b"nul\0"])
def test_imap_pipelining_falls_back_to_nginx_literals_for_unquotable_credentials(
    passwd: bytes,
) -> None:
    b = Backend(ImapLogin(req(b"imap", b"user", passwd, tag=b"a1 "), pipelining=True))
    b.reply(b"* OK IMAP4rev1 ready\r\n")
    assert b.sent == [b"a1 LOGIN {4}\r\n"]
    b.reply(b"+ OK\r\n")
    b.reply(b"+ OK\r\n")
    assert b.sent[1:] == [b"user {%d}\r\n" % len(passwd), passwd + b"\r\n"]


def test_imap_pipelining_refused_login_is_the_same_failure() -> None:
    b = Backend(ImapLogin(req(b"imap", tag=b"a1 "), pipelining=True, pass_error_message=True))
    b.reply(b"* OK [CAPABILITY LITERAL+] hi\r\n")
    assert b.reply(b"a1 NO [AUTHENTICATIONFAILED] nope\r\n") == ACT_SEND | ACT_CLOSE
    assert b.client == b"a1 NO [AUTHENTICATIONFAILED] nope\r\n"


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("together", [False, True])
def test_smtp_pipelining_sends_mail_and_rcpt_in_one_group(split: bool, together: bool) -> None:
    m = smtp(user=b"", passwd=b"", method=b"none", helo=b"cl", esmtp=True,
             mail=b"MAIL FROM:<a@b>", rcpt=b"RCPT TO:<x@y>", pipelining=True)  # fmt: skip
    b = Backend(m, split)
    b.reply(b"220 backend ESMTP\r\n")
    b.reply(b"250-backend\r\n250 XCLIENT NAME ADDR\r\n")
    b.reply(b"220 new greeting\r\n")
    b.reply(b"250-backend\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
    assert b.sent[-1] == b"MAIL FROM:<a@b>\r\nRCPT TO:<x@y>\r\n"
    if together:
        act = b.reply(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n")
    else:
        assert b.reply(b"250 2.1.0 Ok\r\n") == 0
        act = b.reply(b"250 2.1.5 Ok\r\n")
    assert act == ACT_SEND | ACT_DONE and b.client == b"250 2.1.5 Ok\r\n"


def test_smtp_pipelining_only_where_the_backend_announces_it() -> None:
    m = smtp(user=b"", passwd=b"", method=b"none", mail=b"MAIL FROM:<a@b>",
             rcpt=b"RCPT TO:<x@y>", pipelining=True)  # fmt: skip
    b = run_smtp(m, last=b"250 2.1.5 rcpt ok\r\n")
    assert b.sent[-2:] == [b"MAIL FROM:<a@b>\r\n", b"RCPT TO:<x@y>\r\n"]


def test_smtp_pipelining_refused_mail_fails_the_login() -> None:
    m = smtp(user=b"", passwd=b"", method=b"none", xclient=False, mail=b"MAIL FROM:<a@b>",
             rcpt=b"RCPT TO:<x@y>", pipelining=True)  # fmt: skip
    b = Backend(m)
    b.reply(b"220 hi\r\n")
    b.reply(b"250-hi\r\n250 PIPELINING\r\n")
    assert b.reply(b"554 5.7.1 no\r\n554 5.5.1 no valid recipients\r\n") == ACT_SEND | ACT_CLOSE
    assert b.client == SMTP_INTERNAL_ERROR


# --- proxy_ssl (beyond nginx): TLS to the backend, the STARTTLS dialogue ----------------------


@pytest.mark.parametrize(
    ("make", "replies", "commands"),
    [
        (lambda: ImapLogin(req(b"imap", tag=b"a1 ")),
         [b"* OK hi\r\n", b"* CAPABILITY X\r\nS0 OK go\r\n"], [b"S0 STARTTLS\r\n"]),
        (lambda: Pop3Login(req(b"pop3")), [b"+OK hi\r\n", b"+OK go\r\n"], [b"STLS\r\n"]),
        (lambda: smtp(),
         [b"220-a\r\n220 b\r\n", b"250-x\r\n250 STARTTLS\r\n", b"220 go\r\n"],
         [b"EHLO fastmail\r\n", b"STARTTLS\r\n"]),
    ],
)  # fmt: skip
@pytest.mark.parametrize("split", [False, True])
def test_backend_starttls_dialogue_then_login_on_the_saved_greeting(make, replies, commands, split):
    m = make()
    m.tls_mode = 2
    b = Backend(m, split)
    for r in replies[:-1]:
        b.reply(r)
    assert b.sent == commands
    # the go-ahead, and bytes after it that must not be taken as TLS-protected
    if split:
        assert b.reply(replies[-1]) == ACT_STARTTLS
        assert b.reply(b"INJECTED\r\n") == 0  # the handshake runs: nothing is read
    else:
        assert b.reply(replies[-1] + b"INJECTED\r\n") == ACT_STARTTLS
    act = m.on_tls_done()  # the greeting read before STARTTLS starts the login proper
    assert act == ACT_BACKEND
    first = m.take_backend_output()
    assert first in (b"a1 LOGIN {4}\r\n", b"USER user\r\n", b"EHLO mx.test\r\n")


@pytest.mark.parametrize(
    ("make", "greeting", "refusal"),
    [
        (lambda: ImapLogin(req(b"imap", tag=b"a1 ")), b"* OK hi\r\n", b"S0 NO no\r\n"),
        (lambda: Pop3Login(req(b"pop3")), b"+OK hi\r\n", b"-ERR no\r\n"),
        (lambda: smtp(), b"220 hi\r\n", b"250 hi\r\n454 4.7.0 TLS not available\r\n"),
        (lambda: SieveLogin(req(b"sieve")), b'"SASL" "PLAIN"\r\nOK\r\n', b'NO "no TLS"\r\n'),
    ],
)
def test_backend_starttls_refused_is_an_internal_error(make, greeting, refusal):
    m = make()
    m.tls_mode = 2
    b = Backend(m)
    b.reply(greeting)
    # (SMTP's STARTTLS, called for by the 250 in the same read, still goes: ACT_BACKEND)
    assert b.reply(refusal) & ~ACT_BACKEND == ACT_SEND | ACT_CLOSE
    assert m.close_reason.startswith('upstream refused STARTTLS: "')
    assert b.client in (
        IMAP_INTERNAL_ERROR,
        POP3_INTERNAL_ERROR,
        SMTP_INTERNAL_ERROR,
        SIEVE_INTERNAL_ERROR,
    )


@pytest.mark.parametrize("pieces", [1, 2, 40])
def test_backend_starttls_greeting_longer_than_proxy_buffer_is_refused_however_it_arrives(
    pieces: int,
) -> None:
    # found by tests/fuzz (login): in one read such a greeting used to pass the size check
    greeting = b"* OK " + b"x" * 30 + b"\r\n"
    m = ImapLogin(req(b"imap", tag=b"a1 "), proxy_buffer=16)
    m.tls_mode = 2
    m.start()
    step = -(-len(greeting) // pieces)
    acts = 0
    for i in range(0, len(greeting), step):
        acts = m.feed(greeting[i : i + step])
        if acts:
            break
    assert acts == ACT_SEND | ACT_CLOSE
    assert m.close_reason == "upstream sent too long response line during STARTTLS"
    assert m.take_output() == IMAP_INTERNAL_ERROR
    assert m.take_backend_output() == b""


@pytest.mark.parametrize(
    ("make", "replies", "commands"),
    [
        (
            lambda: ImapLogin(req(b"imap", tag=b"a1 ")),
            [b"* OK hi\r\n", b"S0 NO no\r\n"],
            b"S0 STARTTLS\r\n",
        ),
        (lambda: Pop3Login(req(b"pop3")), [b"+OK hi\r\n", b"-ERR no\r\n"], b"STLS\r\n"),
        (lambda: smtp(), [b"220 hi\r\n", b"+\r\n"], b"EHLO fastmail\r\n"),
        (
            lambda: smtp(),
            [b"220 hi\r\n", b"250 ok\r\n", b"454 4.7.0 TLS not available\r\n"],
            b"EHLO fastmail\r\nSTARTTLS\r\n",
        ),
    ],
)
@pytest.mark.parametrize("together", [False, True])
def test_backend_starttls_refusal_sends_the_same_commands_however_the_replies_arrive(
    make, replies: list[bytes], commands: bytes, together: bool
) -> None:
    # found by tests/fuzz (login): replies in one read used to drop the commands the
    # earlier replies called for, which replies read one by one had sent already
    m = make()
    m.tls_mode = 2
    b = Backend(m)
    for r in [b"".join(replies)] if together else replies:
        b.reply(r)
    assert b.act & (ACT_SEND | ACT_CLOSE) == ACT_SEND | ACT_CLOSE
    assert m.close_reason.startswith('upstream refused STARTTLS: "')
    assert b.client in (IMAP_INTERNAL_ERROR, POP3_INTERNAL_ERROR, SMTP_INTERNAL_ERROR)
    assert b"".join(b.sent) == commands


def test_backend_tls_on_starts_tls_after_the_proxy_header():
    m = ImapLogin(req(b"imap", tag=b"a1 "), proxy_header=b"PROXY UNKNOWN\r\n")
    m.tls_mode = 1
    assert m.start() == ACT_BACKEND | ACT_STARTTLS
    assert m.take_backend_output() == b"PROXY UNKNOWN\r\n"
    assert m.on_tls_done() == 0  # the greeting comes over TLS
    assert m.feed(b"* OK over tls\r\n") == ACT_BACKEND
    assert m.take_backend_output() == b"a1 LOGIN {4}\r\n"


def test_login_reply_and_the_relays_first_bytes_in_one_read() -> None:
    """One read may bring the reply that ends the login with the first bytes of the relay
    (a backend that speaks at once): those go to the client after the reply, and a long
    stream of them is no "too long response line"."""
    b = Backend(Pop3Login(req(b"pop3"), proxy_buffer=64))
    b.reply(b"+OK hi\r\n")
    b.reply(b"+OK user\r\n")
    tail = b"* unsolicited " + b"x" * 200
    assert b.reply(b"+OK logged in\r\n" + tail) == ACT_SEND | ACT_DONE
    assert b.client == b"+OK logged in\r\n" + tail


# --- ManageSieve (beyond nginx) ----------------------------------------------------------------

DOVECOT_GREETING = (
    b'"IMPLEMENTATION" "Dovecot (Debian) Pigeonhole"\r\n"SIEVE" "fileinto vacation"\r\n'
    b'"NOTIFY" "mailto"\r\n"SASL" "PLAIN LOGIN CRAM-MD5"\r\n"STARTTLS"\r\n'
    b'"VERSION" "1.0"\r\n"XCLIENT"\r\nOK "Dovecot (Debian) ready."\r\n'
)
DOVECOT_CAPS = DOVECOT_GREETING[: DOVECOT_GREETING.index(b"OK ")]


def authenticate(user: bytes, passwd: bytes) -> bytes:
    return b'AUTHENTICATE "PLAIN" "%s"\r\n' % base64.b64encode(b"\0" + user + b"\0" + passwd)


@pytest.mark.parametrize("split", [False, True])
def test_sieve_login_after_the_capability_greeting_and_verbatim_ok(split: bool) -> None:
    b = Backend(SieveLogin(req(b"sieve", b"alice", b"secret")), split)
    assert b.reply(DOVECOT_CAPS + b"OK") == 0  # the capability lines: wait for the OK
    assert b.reply(DOVECOT_GREETING[len(DOVECOT_CAPS) + 2 :]) == ACT_BACKEND
    assert b.sent == [b'AUTHENTICATE "PLAIN" "AGFsaWNlAHNlY3JldA=="\r\n']
    assert b.m.phase == "sending AUTHENTICATE to upstream"
    assert b.reply(b'OK "Logged in."\r\n') == ACT_SEND | ACT_DONE
    assert b.client == b'OK "Logged in."\r\n'  # the backend's words, nothing of ours
    assert b.m.done


def test_sieve_response_words_are_case_insensitive_and_texts_optional() -> None:
    b = Backend(SieveLogin(req(b"sieve")))
    b.reply(b'"IMPLEMENTATION" "x"\r\n"OKAY" "not a response"\r\noK\r\n')
    assert b.sent == [authenticate(b"user", b"pass")]
    assert b.reply(b'ok (SASL "eA==")\r\n') & ACT_DONE
    assert b.client == b'ok (SASL "eA==")\r\n'


def test_sieve_long_credentials_go_in_a_literal() -> None:
    """RFC 5804's quoted strings hold at most 1024 octets."""
    passwd = b"p" * 800  # 807 bytes of PLAIN message: 1076 of base64
    b = Backend(SieveLogin(req(b"sieve", b"alice", passwd)))
    b.reply(b"OK\r\n")
    plain = base64.b64encode(b"\0alice\0" + passwd)
    assert len(plain) > 1024
    assert b.sent == [b'AUTHENTICATE "PLAIN" {%d+}\r\n%s\r\n' % (len(plain), plain)]
    b = Backend(SieveLogin(req(b"sieve", b"alice", b"p" * 761)))  # 768 -> 1024 octets: quoted
    b.reply(b"OK\r\n")
    assert b.sent == [authenticate(b"alice", b"p" * 761)]


def test_sieve_credentials_with_cr_lf_travel_in_base64_but_nul_is_refused() -> None:
    b = Backend(SieveLogin(req(b"sieve", b"a\r\nb", b"p\nq")))
    b.reply(b"OK\r\n")
    assert b.sent == [authenticate(b"a\r\nb", b"p\nq")]
    m = SieveLogin(req(b"sieve", b"alice", b"p\0q"))
    assert m.start() == ACT_SEND | ACT_CLOSE
    assert m.take_output() == SIEVE_INTERNAL_ERROR


@pytest.mark.parametrize("pass_error", [False, True])
@pytest.mark.parametrize(
    ("replies", "sent"),
    [
        ([b'"SASL" "PLAIN"\r\nBYE "Too busy"\r\n'], 0),
        ([b"NO\r\n"], 0),
        ([b"OK\r\n", b'NO "Authentication failed."\r\n'], 1),
        ([b"OK\r\n", b'""\r\n'], 1),  # a challenge: the initial response was not taken
        ([b"OK\r\n", b'"IMPLEMENTATION" "x"\r\n'], 1),
    ],
)
def test_sieve_refusals(replies: list[bytes], sent: int, pass_error: bool) -> None:
    m = SieveLogin(req(b"sieve"), pass_error_message=pass_error)
    b = Backend(m)
    for r in replies[:-1]:
        b.reply(r)
    assert b.reply(replies[-1]) == ACT_SEND | ACT_CLOSE
    assert len(b.sent) == sent
    if pass_error:
        assert b.client == replies[-1] and m.log_level == "info"
    else:
        assert b.client == SIEVE_INTERNAL_ERROR == _sieve.INTERNAL_ERROR
        assert m.log_level == "error"
    assert m.close_reason.startswith('upstream sent invalid response: "')


def test_sieve_backend_starttls_waits_for_the_new_capabilities() -> None:
    """RFC 5804 §2.2: after TLS the backend announces its capabilities again, with an OK;
    the login starts on that, not on the greeting read before STARTTLS."""
    m = SieveLogin(req(b"sieve", b"alice", b"secret"))
    m.tls_mode = 2
    b = Backend(m)
    assert b.reply(DOVECOT_GREETING) == ACT_BACKEND
    assert b.sent == [b"STARTTLS\r\n"]
    assert b.reply(b'OK "Begin TLS negotiation now."\r\nINJECTED\r\n') == ACT_STARTTLS
    assert m.on_tls_done() == 0
    assert b.reply(DOVECOT_CAPS.replace(b'"STARTTLS"\r\n', b"")) == 0
    assert b.reply(b'OK "TLS negotiation successful."\r\n') == ACT_BACKEND
    assert b.sent[-1] == authenticate(b"alice", b"secret")
    assert b.reply(b'OK "Logged in."\r\n') & ACT_DONE


def test_sieve_login_conf_makes_the_login() -> None:
    conf = SieveLoginConf(128, True, False)
    m = conf.new_login(req(b"sieve"), b"127.0.0.1", b"[UNAVAILABLE]", b"PROXY UNKNOWN\r\n")
    assert isinstance(m, SieveLogin)
    b = Backend(m)
    assert b.sent == [b"PROXY UNKNOWN\r\n"]
    assert b.reply(b"BYE\r\n") == ACT_SEND | ACT_CLOSE
    assert b.client == b"BYE\r\n"  # pass_error_message on


def test_sieve_login_reply_and_the_relays_first_bytes_in_one_read() -> None:
    b = Backend(SieveLogin(req(b"sieve"), proxy_buffer=64))
    b.reply(b"OK\r\n")
    tail = b'"script"\r\n' * 20
    assert b.reply(b'OK "Logged in."\r\n' + tail) == ACT_SEND | ACT_DONE
    assert b.client == b'OK "Logged in."\r\n' + tail
