"""Backend logins beyond nginx (fastmail/_login.pyx, _smtplogin.pyx): the client's identity in each dialect
(proxy_client_id: IMAP ID, POP3 XCLIENT, the client's own SMTP HELO name) and AUTH LOGIN to
the SMTP backend (proxy_smtp_auth_method, Auth-SMTP-Auth-Method). With both off the bytes are
nginx's: tests/unit/test_login.py checks those."""

from __future__ import annotations

import base64

import pytest

from fastmail._core import ACT_CLOSE, ACT_DONE, ACT_SEND
from fastmail._login import IMAP_INTERNAL_ERROR, ImapLogin, Pop3Login
from fastmail._smtplogin import SMTP_INTERNAL_ERROR, SmtpLogin
from support.logins import Backend, req, run_smtp, smtp

DOVECOT_IMAP = b"* OK [CAPABILITY IMAP4rev1 SASL-IR ID LITERAL+ AUTH=PLAIN] Dovecot ready.\r\n"
ID_V4 = (
    b'I0 ID ("x-originating-ip" "192.0.2.7" "x-originating-port" "40001" '
    b'"x-connected-ip" "127.0.0.3" "x-connected-port" "1143")\r\n'
)
ID_REPLY = b'* ID ("name" "Dovecot")\r\nI0 OK ID completed.\r\n'
LOGGED_IN = b"a1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n"


def imap(pipelining: bool = False, **client: object) -> ImapLogin:
    m = ImapLogin(
        req(b"imap", b"alice", b"secret", tag=b"a1 "), pipelining=pipelining, client_id=True
    )
    peer = {"ip": b"192.0.2.7", "port": 40001, "lip": b"127.0.0.3", "lport": 1143} | client
    m.set_client(peer["ip"], peer["port"], peer["lip"], peer["lport"])  # type: ignore[arg-type]
    return m


# --- IMAP ID -------------------------------------------------------------------------------


@pytest.mark.parametrize("split", [False, True])
def test_imap_id_goes_first_then_nginx_login(split: bool) -> None:
    b = Backend(imap(), split)
    b.reply(DOVECOT_IMAP)
    assert b.sent == [ID_V4]
    b.reply(ID_REPLY)
    assert b.sent[1:] == [b"a1 LOGIN {5}\r\n"]
    b.reply(b"+ OK\r\n")
    b.reply(b"+ OK\r\n")
    assert b.sent[2:] == [b"alice {6}\r\n", b"secret\r\n"]
    assert b.reply(LOGGED_IN) == ACT_SEND | ACT_DONE
    assert b.client == LOGGED_IN  # nothing of the ID dialogue reaches the client


@pytest.mark.parametrize("split", [False, True])
def test_imap_id_in_the_one_line_login_write_when_pipelining(split: bool) -> None:
    b = Backend(imap(pipelining=True), split)
    b.reply(DOVECOT_IMAP)
    assert b.sent == [ID_V4 + b"a1 LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n"]
    # Dovecot answers both in one write; the LOGIN reply is relayed as it is
    assert b.reply(ID_REPLY + LOGGED_IN) == ACT_SEND | ACT_DONE
    assert b.client == LOGGED_IN


def test_imap_id_with_nginx_literals_when_pipelining_cannot_inline() -> None:
    m = ImapLogin(
        req(b"imap", b"alice", b"s\xc3\xa9cret", tag=b"a1 "), pipelining=True, client_id=True
    )
    m.set_client(b"192.0.2.7", 40001, None, 0)
    b = Backend(m)
    b.reply(b"* OK [CAPABILITY IMAP4rev1 ID] hi\r\n")  # no LITERAL+, an 8-bit password
    assert b.sent == [
        b'I0 ID ("x-originating-ip" "192.0.2.7" "x-originating-port" "40001")\r\na1 LOGIN {5}\r\n'
    ]
    b.reply(b"* ID NIL\r\nI0 OK\r\n+ OK\r\n")
    assert b.sent[1:] == [b"alice {7}\r\n"]


@pytest.mark.parametrize("answer", [b"I0 BAD unknown command\r\n", b"I0 NO not now\r\n"])
def test_imap_id_refused_or_unknown_still_logs_in(answer: bytes) -> None:
    b = Backend(imap())
    b.reply(b"* OK hi\r\n")  # no capability list: ID is tried
    assert b.sent[0].startswith(b"I0 ID (")
    b.reply(answer)
    assert b.sent[1:] == [b"a1 LOGIN {5}\r\n"]


def test_imap_no_id_when_the_capabilities_lack_it() -> None:
    b = Backend(imap())
    b.reply(b"* OK [CAPABILITY IMAP4rev1 LITERAL+] hi\r\n")
    assert b.sent == [b"a1 LOGIN {5}\r\n"]


@pytest.mark.parametrize(
    "client,fields",
    [
        (
            {"ip": b"2001:db8::1", "lip": b"::1"},
            b'"x-originating-ip" "2001:db8::1" "x-originating-port" "40001" '
            b'"x-connected-ip" "::1" "x-connected-port" "1143"',
        ),
        ({"lip": None}, b'"x-originating-ip" "192.0.2.7" "x-originating-port" "40001"'),
    ],
)
def test_imap_id_fields(client: dict, fields: bytes) -> None:
    b = Backend(imap(**client))
    b.reply(DOVECOT_IMAP)
    assert b.sent == [b"I0 ID (" + fields + b")\r\n"]


@pytest.mark.parametrize("ip", [b"unix:", b"", b'1.2.3.4" "x', b"1.2.3.4\r\n"])
def test_imap_no_id_for_a_client_without_an_address(ip: bytes) -> None:
    b = Backend(imap(ip=ip))
    b.reply(DOVECOT_IMAP)
    assert b.sent == [b"a1 LOGIN {5}\r\n"]


def test_imap_id_not_sent_without_set_client() -> None:
    b = Backend(ImapLogin(req(b"imap", tag=b"a1 "), client_id=True))
    b.reply(DOVECOT_IMAP)
    assert b.sent == [b"a1 LOGIN {4}\r\n"]


def test_imap_unexpected_answer_to_id_is_an_invalid_response() -> None:
    b = Backend(imap())
    b.reply(DOVECOT_IMAP)
    assert b.reply(b"+ what\r\n") == ACT_SEND | ACT_CLOSE
    assert b.client == IMAP_INTERNAL_ERROR
    assert b.m.close_reason == 'upstream sent invalid response: "+ what"'


# --- POP3 XCLIENT --------------------------------------------------------------------------

DOVECOT_POP3 = b"+OK [XCLIENT] Dovecot (Debian) ready. <1.2.3@vm>\r\n"


def pop3(pipelining: bool = False, ip: bytes = b"192.0.2.7") -> Pop3Login:
    m = Pop3Login(req(b"pop3", b"alice", b"secret"), pipelining=pipelining, client_id=True)
    m.set_client(ip, 40002, b"127.0.0.1", 110)
    return m


@pytest.mark.parametrize("answer", [b"+OK Updated\r\n", b"-ERR Invalid parameters\r\n"])
@pytest.mark.parametrize("split", [False, True])
def test_pop3_xclient_when_the_greeting_announces_it(answer: bytes, split: bool) -> None:
    b = Backend(pop3(), split)
    b.reply(DOVECOT_POP3)
    assert b.sent == [b"XCLIENT ADDR=192.0.2.7 PORT=40002\r\n"]
    b.reply(answer)  # a refusal does not stop the login
    assert b.sent[1:] == [b"USER alice\r\n"]
    b.reply(b"+OK\r\n")
    assert b.sent[2:] == [b"PASS secret\r\n"]
    assert b.reply(b"+OK Logged in.\r\n") == ACT_SEND | ACT_DONE
    assert b.client == b"+OK Logged in.\r\n"


@pytest.mark.parametrize("split", [False, True])
def test_pop3_xclient_with_user_when_pipelining(split: bool) -> None:
    b = Backend(pop3(pipelining=True, ip=b"2001:db8::5"), split)
    b.reply(DOVECOT_POP3)
    # Dovecot takes IPv6 bare (it refuses SMTP's IPV6: prefix)
    assert b.sent == [b"XCLIENT ADDR=2001:db8::5 PORT=40002\r\nUSER alice\r\n"]
    b.reply(b"+OK Updated\r\n+OK\r\n")
    assert b.sent[1:] == [b"PASS secret\r\n"]


@pytest.mark.parametrize(
    "greeting",
    [b"+OK Dovecot (Debian) ready.\r\n", b"+OK [IN-USE] XCLIENT\r\n", b"+OK [XCLIENT\r\n"],
)
def test_pop3_no_xclient_unless_announced(greeting: bytes) -> None:
    b = Backend(pop3())
    b.reply(greeting)
    assert b.sent == [b"USER alice\r\n"]


def test_pop3_no_xclient_for_a_unix_socket_client() -> None:
    b = Backend(pop3(ip=b"unix:"))
    b.reply(DOVECOT_POP3)
    assert b.sent == [b"USER alice\r\n"]


# --- SMTP: the client's own HELO name ------------------------------------------------------

EHLO_XCLIENT = b"250-backend\r\n250-XCLIENT NAME ADDR PROTO HELO LOGIN\r\n250 8BITMIME\r\n"
EHLO_PLAIN = b"250-backend\r\n250-PIPELINING\r\n250 8BITMIME\r\n"


@pytest.mark.parametrize(
    "kw,sent",
    [
        ({"esmtp": True}, [b"EHLO cl.example\r\n"]),
        ({"esmtp": False}, [b"HELO cl.example\r\n"]),
        ({"esmtp": True, "helo": b""}, [b"EHLO mx.test\r\n"]),  # no name given: ours
    ],
)
def test_smtp_client_helo_instead_of_server_name_without_xclient(kw: dict, sent: list) -> None:
    kw = {"helo": b"cl.example"} | kw
    b = run_smtp(smtp(xclient=False, client_id=True, **kw))
    assert b.sent == sent
    assert b.act == ACT_SEND | ACT_DONE


@pytest.mark.parametrize("split", [False, True])
def test_smtp_xclient_not_announced_sends_the_client_helo(split: bool) -> None:
    b = Backend(smtp(helo=b"cl.example", esmtp=True, client_id=True, proxy_smtp_auth=True), split)
    b.reply(b"220 backend\r\n")
    b.reply(EHLO_PLAIN)
    assert b.sent == [b"EHLO mx.test\r\n", b"EHLO cl.example\r\n"]
    b.reply(EHLO_PLAIN)
    assert b.sent[2:] == [b"AUTH PLAIN AHRlc3QAc2VjcmV0\r\n"]
    assert b.reply(b"235 ok\r\n") == ACT_SEND | ACT_DONE


def test_smtp_xclient_not_announced_and_no_client_name() -> None:
    b = Backend(smtp(client_id=True))
    b.reply(b"220 backend\r\n")
    assert b.reply(EHLO_PLAIN) == ACT_SEND | ACT_DONE  # nothing more to say: logged in
    assert b.sent == [b"EHLO mx.test\r\n"] and b.client == b"235 2.0.0 OK\r\n"


def test_smtp_xclient_announced_is_nginx_dialogue() -> None:
    b = Backend(smtp(helo=b"cl.example", esmtp=True, client_id=True))
    b.reply(b"220 backend\r\n")
    b.reply(EHLO_XCLIENT)
    assert b.sent == [
        b"EHLO mx.test\r\n",
        b"XCLIENT ADDR=127.0.0.1 LOGIN=test NAME=[UNAVAILABLE]\r\n",
    ]


def test_smtp_none_replay_after_the_client_helo() -> None:
    m = smtp(b"", b"", b"cl", True, b"none", b"MAIL FROM:<a@b>", b"RCPT TO:<x@y>", client_id=True)
    b = Backend(m)
    b.reply(b"220 backend\r\n")
    b.reply(b"250 backend\r\n")
    b.reply(b"250 hi cl\r\n")
    b.reply(b"250 ok\r\n")
    assert b.reply(b"250 2.1.5 ok\r\n") == ACT_SEND | ACT_DONE
    assert b.sent == [
        b"EHLO mx.test\r\n",
        b"EHLO cl\r\n",
        b"MAIL FROM:<a@b>\r\n",
        b"RCPT TO:<x@y>\r\n",
    ]


# --- SMTP: AUTH LOGIN ----------------------------------------------------------------------


def b64(data: bytes) -> bytes:
    return base64.b64encode(data) + b"\r\n"


@pytest.mark.parametrize("split", [False, True])
def test_smtp_auth_login_dialogue(split: bool) -> None:
    b = Backend(
        smtp(esmtp=True, xclient=False, proxy_smtp_auth=True, smtp_auth_method=b"login"), split
    )
    b.reply(b"220 exchange\r\n")
    b.reply(b"250-exchange\r\n250 AUTH LOGIN\r\n")
    assert b.sent == [b"EHLO mx.test\r\n", b"AUTH LOGIN\r\n"]
    b.reply(b"334 VXNlcm5hbWU6\r\n")
    assert b.sent[2:] == [b64(b"test")]
    b.reply(b"334 UGFzc3dvcmQ6\r\n")
    assert b.sent[3:] == [b64(b"secret")]
    assert b.reply(b"235 2.7.0 Authentication successful\r\n") == ACT_SEND | ACT_DONE
    assert b.client == b"235 2.0.0 OK\r\n"


def test_smtp_auth_login_after_xclient_without_login_attribute() -> None:
    b = run_smtp(smtp(proxy_smtp_auth=True, smtp_auth_method=b"login"))
    assert b.sent[:3] == [
        b"EHLO mx.test\r\n",
        b"XCLIENT ADDR=127.0.0.1 NAME=[UNAVAILABLE]\r\n",
        b"AUTH LOGIN\r\n",
    ]


@pytest.mark.parametrize(
    "replies",
    [
        [b"504 5.7.4 Unrecognized authentication type\r\n"],
        [b"334 VXNlcm5hbWU6\r\n", b"535 5.7.8 no such user\r\n"],
        [b"334 VXNlcm5hbWU6\r\n", b"334 UGFzc3dvcmQ6\r\n", b"535 5.7.8 bad password\r\n"],
    ],
)
def test_smtp_auth_login_refused_fails_the_login(replies: list[bytes]) -> None:
    b = Backend(smtp(xclient=False, proxy_smtp_auth=True, smtp_auth_method=b"login"))
    b.reply(b"220 hi\r\n")
    b.reply(b"250 hi\r\n")
    for r in replies:
        b.reply(r)
    assert b.act == ACT_SEND | ACT_CLOSE and b.client == SMTP_INTERNAL_ERROR
    assert b.m.close_reason == f'upstream sent invalid response: "{replies[-1][:-2].decode()}"'


def test_smtp_auth_login_needs_a_password_and_takes_a_nul() -> None:
    m = smtp(passwd=b"", xclient=False, proxy_smtp_auth=True, smtp_auth_method=b"login")
    b = Backend(m)
    b.reply(b"220 hi\r\n")
    assert b.reply(b"250 hi\r\n") == ACT_SEND | ACT_CLOSE
    assert m.close_reason == "no password available"
    # each credential is its own base64 line: a NUL shifts nothing (PLAIN refuses it)
    m = smtp(passwd=b"a\0b", xclient=False, proxy_smtp_auth=True, smtp_auth_method=b"login")
    assert m.start() == 0


@pytest.mark.parametrize(
    "backend_auth,kw,auth",
    [
        (b"login", {}, b"AUTH LOGIN\r\n"),
        (b"plain", {"proxy_smtp_auth": True, "smtp_auth_method": b"login"}, b"AUTH PLAIN "),
        (b"off", {"proxy_smtp_auth": True}, None),
    ],
)
def test_smtp_auth_method_from_auth_http_overrides_the_config(
    backend_auth: bytes, kw: dict, auth: bytes | None
) -> None:
    a = req(b"smtp", b"test", b"secret", backend_auth=backend_auth)  # as the engine sets it
    b = run_smtp(SmtpLogin(a, server_name=b"mx.test", client_addr="127.0.0.1", **kw))
    login_attr = b"" if auth else b" LOGIN=test"  # XCLIENT names the user when nobody AUTHs
    assert b.sent[1] == b"XCLIENT ADDR=127.0.0.1" + login_attr + b" NAME=[UNAVAILABLE]\r\n"
    assert (b.sent[2][: len(auth)] if auth else b.sent[2:]) == (auth or [])
    assert b.act == ACT_SEND | ACT_DONE and b.client == b"235 2.0.0 OK\r\n"
