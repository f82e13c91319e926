"""Debug lines (fastmail/debuglog.py): nginx's wording, and no credential in them whatever
way the client sends it: the client machines, auth_http request and the backend login
machines are the real ones, the lines go through a real ErrorLog into a file."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fastmail import _imap, _pop3, _sieve, _smtp
from fastmail._core import ACT_AUTH, ACT_BACKEND, ACT_SEND, AuthRequest, Machine
from fastmail._login import ImapLogin, Pop3Login, SieveLogin
from fastmail._smtplogin import SmtpLogin
from fastmail.auth_http import build_request
from fastmail.conf.model import LogTarget
from fastmail.debuglog import Trace
from fastmail.log import DEBUG, INFO, ErrorLog

PW = b"Pw-7zQ x"  # with a space: a quoted IMAP string, several words on a POP3 PASS line
B64_PW = base64.b64encode(PW)
B64_PLAIN = base64.b64encode(b"\0alice\0" + PW)


class Logged:
    """A Trace writing through a real ErrorLog at debug into a file; `text()` reads it."""

    def __init__(self, path: Path, protocol: str) -> None:
        self.path = path
        self.log = ErrorLog([LogTarget(kind="file", path=str(path), level=DEBUG)])
        self.trace = Trace(self.log, 7, protocol, 9)

    def text(self) -> str:
        return self.path.read_text()

    def messages(self) -> list[str]:
        return [line.split("*7 ", 1)[1] for line in self.text().splitlines()]


@pytest.fixture
def logged(tmp_path: Path) -> Iterator[object]:
    made: list[Logged] = []

    def make(protocol: str) -> Logged:
        lg = Logged(tmp_path / f"{protocol}{len(made)}.log", protocol)
        made.append(lg)
        return lg

    yield make
    for lg in made:
        lg.log.close()


def no_secret(text: str) -> None:
    for secret in (PW, B64_PW, B64_PLAIN, PW.replace(b" ", b"")):
        assert secret.decode() not in text


MACHINES: dict[str, Callable[[], Machine]] = {
    "imap": lambda: _imap.ImapSession(_imap.ImapProfile(auth_methods=["plain", "login"])),
    "pop3": lambda: _pop3.Pop3Session(_pop3.Pop3Profile(auth_methods=["plain", "apop"])),
    "smtp": lambda: _smtp.SmtpSession(_smtp.SmtpProfile(auth_methods=["plain", "login"])),
    "sieve": lambda: _sieve.SieveSession(_sieve.SieveProfile(auth_methods=["plain", "login"])),
}


def converse(lg: Logged, protocol: str, chunks: list[bytes]) -> AuthRequest:
    """Feeds the chunks to the real client machine as session.py does, with the Trace
    seeing the client bytes and the replies; returns the AuthRequest it produced."""
    m = MACHINES[protocol]()
    acts = m.start()
    for data in chunks:
        if acts & ACT_SEND:
            lg.trace.client_reply(m.take_output())
        lg.trace.client_read(data)
        acts = m.feed(data)
        if acts & ACT_AUTH:
            break
    assert acts & ACT_AUTH, m.take_output()
    assert m.auth is not None and m.auth.passwd == PW
    return m.auth


def split(data: bytes) -> list[bytes]:
    """Byte by byte: lines and IMAP literals cross every read boundary."""
    return [data[i : i + 1] for i in range(len(data))]


@pytest.mark.parametrize(
    ("protocol", "dialogue", "commands"),
    [
        ("imap", [b'a1 LOGIN alice "Pw-7zQ x"\r\n'], ["a1 LOGIN ********"]),
        (
            "imap",
            [b"a1 LOGIN {5}\r\n", b"alice {8}\r\n", PW + b"\r\n"],
            ["a1 LOGIN ********"],
        ),
        ("imap", [b"a1 LOGIN {5+}\r\nalice {8+}\r\n" + PW + b"\r\n"], ["a1 LOGIN ********"]),
        (
            "imap",
            [b"a1 AUTHENTICATE PLAIN\r\n", B64_PLAIN + b"\r\n"],
            ["a1 AUTHENTICATE PLAIN", "********"],
        ),
        (
            "imap",
            [b"a1 AUTHENTICATE PLAIN " + B64_PLAIN + b"\r\n"],
            ["a1 AUTHENTICATE PLAIN ********"],
        ),
        (
            "imap",
            [b"a1 AUTHENTICATE LOGIN\r\n", b"YWxpY2U=\r\n", B64_PW + b"\r\n"],
            ["a1 AUTHENTICATE LOGIN", "********", "********"],
        ),
        ("pop3", [b"USER alice\r\n", b"PASS " + PW + b"\r\n"], ["USER alice", "PASS ********"]),
        ("pop3", [b"AUTH PLAIN\r\n", B64_PLAIN + b"\r\n"], ["AUTH PLAIN", "********"]),
        ("pop3", [b"USER alice\r\nPASS " + PW + b"\r\n"], ["USER alice", "PASS ********"]),
        (
            "smtp",
            [b"EHLO c.example\r\n", b"AUTH LOGIN\r\n", b"YWxpY2U=\r\n", B64_PW + b"\r\n"],
            ["EHLO c.example", "AUTH LOGIN", "********", "********"],
        ),
        (
            "smtp",
            [b"EHLO c.example\r\nAUTH PLAIN\r\n" + B64_PLAIN + b"\r\n"],
            ["EHLO c.example", "AUTH PLAIN", "********"],
        ),
        (
            "smtp",
            [b"EHLO c.example\r\n", b"AUTH LOGIN YWxpY2U=\r\n", B64_PW + b"\r\n"],
            ["EHLO c.example", "AUTH LOGIN ********", "********"],
        ),
        (
            "sieve",
            [b'AUTHENTICATE "PLAIN" "' + B64_PLAIN + b'"\r\n'],
            ['AUTHENTICATE "PLAIN" ********'],
        ),
        (
            "sieve",
            [b'AUTHENTICATE "PLAIN" {%d+}\r\n%s\r\n' % (len(B64_PLAIN), B64_PLAIN)],
            ['AUTHENTICATE "PLAIN" ********'],
        ),
        (
            "sieve",
            [b"CAPABILITY\r\n", b'AUTHENTICATE "PLAIN"\r\n', b'"' + B64_PLAIN + b'"\r\n'],
            ["CAPABILITY", 'AUTHENTICATE "PLAIN"', "********"],
        ),
        (
            "sieve",
            [
                b'AUTHENTICATE "LOGIN"\r\n',
                b'"YWxpY2U="\r\n',
                b"{%d+}\r\n%s\r\n" % (len(B64_PW), B64_PW),
            ],
            ['AUTHENTICATE "LOGIN"', "********", "********"],
        ),
    ],
)
@pytest.mark.parametrize("bytewise", [False, True])
def test_client_commands_are_logged_without_credentials(
    logged, protocol: str, dialogue: list[bytes], commands: list[str], bytewise: bool
) -> None:
    lg = logged(protocol)
    chunks = split(b"".join(dialogue)) if bytewise else dialogue
    if bytewise and protocol == "imap" and b"{5}" in dialogue[0]:
        chunks = dialogue  # a synchronizing literal waits for the server's "+ OK"
    converse(lg, protocol, chunks)
    text = lg.text()
    no_secret(text)
    msgs = lg.messages()
    assert [m.split(": ", 1)[1] for m in msgs if " auth command: " in m] == [
        f'"{c}"' for c in commands
    ]
    assert all(m == f"{protocol} auth state" for m in msgs if " auth command: " not in m)
    assert all("[debug]" in line for line in text.splitlines())


def test_a_sasl_response_that_looks_like_a_command_is_masked(logged) -> None:
    """ "HELP" is base64 for the password b"\\x1cB\\xcf": after AUTH it is a response."""
    lg = logged("smtp")
    m = MACHINES["smtp"]()
    m.start()
    for line in (b"EHLO c\r\n", b"AUTH LOGIN\r\n", b"YWxpY2U=\r\n", b"HELP\r\n"):
        lg.trace.client_read(line)
        acts = m.feed(line)
        if acts & ACT_SEND:
            lg.trace.client_reply(m.take_output())
    assert acts & ACT_AUTH and m.auth.passwd == b"\x1cB\xcf"
    assert lg.messages()[-1] == 'smtp auth command: "********"'


def test_starttls_starts_a_new_stream_of_lines(logged) -> None:
    lg = logged("imap")
    lg.trace.client_read(b"a STARTTLS\r\nb LOGIN {5}")  # the rest is dropped by the machine
    lg.trace.state("in starttls state")
    lg.trace.client_read(b"c CAPABILITY\r\n")
    cmds = [m for m in lg.messages() if "command" in m]
    assert cmds == ['imap auth command: "a STARTTLS"', 'imap auth command: "c CAPABILITY"']


def test_apop_digest_and_literal_length_are_masked(logged) -> None:
    lg = logged("pop3")
    lg.trace.client_read(b"APOP alice 0123456789abcdef0123456789abcdef\r\n")
    assert lg.messages()[-1] == 'pop3 auth command: "APOP alice ********"'


def test_a_huge_unfinished_line_is_dropped_not_logged(logged) -> None:
    lg = logged("pop3")
    lg.trace.client_read(b"PASS " + b"x" * 70000)
    lg.trace.client_read(b"y" * 10 + b" tail\r\nQUIT\r\n")
    cmds = [m for m in lg.messages() if "command" in m]
    assert cmds == ['pop3 auth command: "QUIT"']


def test_auth_http_request_masks_all_but_known_headers(logged) -> None:
    lg = logged("smtp")
    auth = AuthRequest(b"smtp", b"plain", b"alice", PW)
    cert = b"-----BEGIN CERTIFICATE-----\nMIIB" + b"A" * 900 + b"\n-----END CERTIFICATE-----\n"
    request = build_request(
        auth,
        uri_path=b"/auth",
        host_header=b"auth.example",
        client_ip=b"192.0.2.1",
        client_host=b"client.example",
        extra_headers=[(b"X-Auth-Key", b"shared-s3cret")],
        ssl_info={"protocol": b"TLSv1.3", "verify": b"SUCCESS", "cert": cert},
        pass_client_cert=True,
        keepalive=False,
    )
    lg.trace.auth_request(request)
    lg.trace.auth_answer(
        [(b"Auth-Status", b"OK"), (b"Auth-Server", b"192.0.2.9"), (b"Auth-Pass", PW)]
    )
    text = lg.text()
    no_secret(text)
    assert "shared-s3cret" not in text and "MIIBAAAA" not in text
    msgs = lg.messages()
    assert msgs[:4] == [
        'mail auth http request: "GET /auth HTTP/1.0"',
        'mail auth http request: "Host: auth.example"',
        'mail auth http request: "Auth-Method: plain"',
        'mail auth http request: "Auth-User: alice"',
    ]
    assert 'mail auth http request: "Auth-Pass: ********"' in msgs
    assert 'mail auth http request: "Client-Host: client.example"' in msgs
    assert 'mail auth http request: "Auth-SSL-Verify: SUCCESS"' in msgs
    assert 'mail auth http request: "X-Auth-Key: ********"' in msgs
    escaped = len(request.split(b"Auth-SSL-Cert: ")[1].split(b"\r\n")[0])
    assert f'mail auth http request: "Auth-SSL-Cert: ({escaped} bytes)"' in msgs
    assert msgs[-4:] == [
        'mail auth http header: "Auth-Status: OK"',
        'mail auth http header: "Auth-Server: 192.0.2.9"',
        'mail auth http header: "Auth-Pass: ********"',
        "mail auth http header done",
    ]


def drive(login: Any, replies: list[bytes], trace: Trace) -> None:
    """The backend side of a login with its debug lines, as the engine runs it."""

    def sent() -> None:
        trace.upstream_sent(login.phase, login.take_backend_output())

    acts = login.start()
    for r in replies:
        if acts & ACT_BACKEND:
            sent()
        trace.upstream_read(r)
        acts = login.feed(r)
    if acts & ACT_BACKEND:
        sent()
    assert login.done


def test_backend_dialogue_in_nginx_words_without_credentials(logged) -> None:
    lg = logged("imap")
    auth = AuthRequest(b"imap", b"plain", b"alice", PW)
    auth.tag = b"a1 "
    login = ImapLogin(auth, proxy_header=b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n")
    drive(login, [b"* OK ready\r\n", b"+ OK\r\n", b"+ OK\r\n", b"a1 OK done\r\n"], lg.trace)
    assert lg.messages() == [
        'mail proxy send PROXY protocol header: "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\\r\\n"',
        'mail proxy read response: "* OK ready\\r\\n"',
        'mail proxy send login: "a1 LOGIN {5}\\r\\n"',
        'mail proxy read response: "+ OK\\r\\n"',
        'mail proxy send user: "alice {*}\\r\\n"',
        'mail proxy read response: "+ OK\\r\\n"',
        'mail proxy send passwd: "********\\r\\n"',
        'mail proxy read response: "a1 OK done\\r\\n"',
    ]

    lg = logged("pop3")
    drive(
        Pop3Login(AuthRequest(b"pop3", b"plain", b"alice", PW)),
        [b"+OK hi\r\n", b"+OK\r\n", b"+OK\r\n"],
        lg.trace,
    )
    no_secret(lg.text())
    assert 'mail proxy send pass: "PASS ********\\r\\n"' in lg.messages()

    lg = logged("smtp")
    auth = AuthRequest(b"smtp", b"plain", b"alice", PW)
    smtp = SmtpLogin(auth, server_name=b"mx", client_addr=b"192.0.2.1", proxy_smtp_auth=True)
    drive(smtp, [b"220 hi\r\n", b"250 ok\r\n", b"220 ok\r\n", b"235 ok\r\n"], lg.trace)
    no_secret(lg.text())
    msgs = lg.messages()
    assert 'mail proxy send xclient: "XCLIENT ADDR=192.0.2.1 NAME=[UNAVAILABLE]\\r\\n"' in msgs
    assert msgs[-2:] == [
        'mail proxy send auth: "AUTH PLAIN ********\\r\\n"',
        'mail proxy read response: "235 ok\\r\\n"',
    ]

    lg = logged("sieve")
    sieve = SieveLogin(AuthRequest(b"sieve", b"plain", b"alice", PW))
    drive(sieve, [b'"SASL" "PLAIN"\r\nOK "hi"\r\n', b'OK "Logged in."\r\n'], lg.trace)
    no_secret(lg.text())
    assert lg.messages()[-3:] == [
        'mail proxy read response: ""SASL" "PLAIN"\\r\\nOK "hi"\\r\\n"',
        'mail proxy send authenticate: "AUTHENTICATE "PLAIN" ********\\r\\n"',
        'mail proxy read response: "OK "Logged in."\\r\\n"',
    ]


@pytest.mark.parametrize(
    "greeting",
    [b"* OK [CAPABILITY IMAP4rev1 ID LITERAL+] hi\r\n", b"* OK [CAPABILITY IMAP4rev1 ID] hi\r\n"],
)
def test_pipelined_login_and_id_show_no_credentials(logged, greeting: bytes) -> None:
    """proxy_pipelining puts the credentials in the LOGIN's write (LITERAL+ or quoted), after
    the ID of proxy_client_id: everything after `LOGIN` is masked, the ID is shown."""
    lg = logged("imap")
    auth = AuthRequest(b"imap", b"plain", b"alice", PW)
    auth.tag = b"a1 "
    login = ImapLogin(auth, pipelining=True, client_id=True)
    login.set_client(b"192.0.2.7", 1, b"127.0.0.1", 143)
    drive(login, [greeting, b"* ID NIL\r\nI0 OK\r\na1 OK done\r\n"], lg.trace)
    no_secret(lg.text())
    assert (
        'mail proxy send login: "I0 ID ("x-originating-ip" "192.0.2.7" "x-originating-port" "1"'
        ' "x-connected-ip" "127.0.0.1" "x-connected-port" "143")\\r\\na1 LOGIN ********"'
    ) in lg.messages()


def test_smtp_auth_login_to_the_backend_masks_the_password(logged) -> None:
    lg = logged("smtp")
    auth = AuthRequest(b"smtp", b"plain", b"alice", PW)
    login = SmtpLogin(
        auth, server_name=b"mx", client_addr=b"192.0.2.1", xclient=False, proxy_smtp_auth=True,
        smtp_auth_method=b"login",
    )  # fmt: skip
    replies = [b"220 hi\r\n", b"250 ok\r\n", b"334 VXNlcm5hbWU6\r\n", b"334 UGFzc3dvcmQ6\r\n"]
    drive(login, replies + [b"235 ok\r\n"], lg.trace)
    no_secret(lg.text())
    sent = [m for m in lg.messages() if m.startswith("mail proxy send")]
    assert sent[1:] == [
        'mail proxy send auth: "AUTH LOGIN\\r\\n"',
        'mail proxy send user: "YWxpY2U=\\r\\n"',
        'mail proxy send passwd: "********\\r\\n"',
    ]


@pytest.mark.parametrize(
    ("debug", "level"),
    [
        ((), DEBUG),
        (("debug_mail",), DEBUG),
        (("debug_core", "debug_mail"), DEBUG),
        (("debug_http",), INFO),
    ],
)
def test_debug_masks_without_debug_mail_take_no_mail_debug_lines(
    tmp_path: Path, debug: tuple[str, ...], level: int
) -> None:
    log = ErrorLog([LogTarget(kind="file", path=str(tmp_path / "e.log"), level=DEBUG, debug=debug)])
    try:
        assert log.level == level
    finally:
        log.close()
