"""The C auth_http protocol (fastmail._authreq, _authproto) against its Python reference (auth_http.py):
the same request bytes, the same reading of every answer whole or split at any byte, the same
AuthResult, on the unit tests' cases and on hypothesis-generated ones."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from unit.test_auth_http import OK, READ_CASES

from fastmail import _authproto as P
from fastmail._authproto import MAX_HEADER_BLOCK
from fastmail._authreq import RequestTemplate
from fastmail._core import AuthRequest
from fastmail.auth_http import (
    build_request,
    interpret,
    parse_server_addr,
)
from support.auth_answers import (
    PEER,
    check_answer,
    check_splits,
    fields,
    read_split,
    read_whole,
    req,
)

# --- request bytes -----------------------------------------------------------------------------


def both(auth: AuthRequest, *, uri: bytes = b"/auth", host: bytes = b"127.0.0.1",
         client_ip: bytes = b"127.0.0.1", client_host: bytes | None = None,
         extra: list[tuple[bytes, bytes]] | None = None, ssl_info: dict[str, bytes] | None = None,
         pass_cert: bool = False, keepalive: bool = False,
         pp: tuple[bytes, int, bytes, int] | None = None) -> tuple[bytes, bytes]:  # fmt: skip
    ref = build_request(
        auth,
        uri_path=uri,
        host_header=host,
        client_ip=client_ip,
        client_host=client_host,
        extra_headers=list(extra or []),
        ssl_info=ssl_info,
        pass_client_cert=pass_cert,
        keepalive=keepalive,
        proxy_protocol=pp,
    )
    tpl = RequestTemplate(uri, host, list(extra or []), keepalive, pass_cert)
    return tpl.request(auth, client_ip, client_host, pp, ssl_info), ref


CERT_INFO = {
    "protocol": b"TLSv1.3",
    "cipher": b"TLS_AES_256_GCM_SHA384",
    "verify": b"SUCCESS",
    "subject": b"O=Ex\\, Inc.,CN=client one",
    "issuer": b"CN=TestCA",
    "serial": b"4F15",
    "fingerprint": b"ab" * 20,
    "cert": b"-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n",
}


@pytest.mark.parametrize(
    "auth,kw",
    [
        (req(), {"client_host": b"[UNAVAILABLE]"}),
        (req(method=b"cram-md5", passwd=b"0" * 32, salt=b"<1.2@mx.test>\r\n"), {}),
        (req(protocol=b"pop3", method=b"apop", passwd=b"d" * 32, salt=b"<1.2@mx>\r\n"), {}),
        (req(protocol=b"pop3", method=b"external", passwd=b"", salt=b"<1.2@mx>\r\n"), {}),
        (req(method=b"none", user=b"", passwd=b""), {"client_host": b"mx.example"}),
        (req(user="we ir+d=%\r\nXé".encode(), passwd=b"p a%ss\r\n\x00\x7f\xff"), {}),
        (req(attempt=3), {"uri": b"", "keepalive": True, "extra": [(b"X-A", b"1")]}),
        (req(), {"pp": (b"192.0.2.1", 1234, b"192.0.2.2", 25), "client_ip": b"192.0.2.1"}),
        (req(), {"ssl_info": {"protocol": b"TLSv1.2", "cipher": b"X", "verify": b""}}),
        (req(), {"ssl_info": CERT_INFO}),
        (req(), {"ssl_info": CERT_INFO, "pass_cert": True, "keepalive": True}),
    ],
)
def test_request_bytes_equal_build_request(auth: AuthRequest, kw: dict[str, Any]) -> None:
    mine, ref = both(auth, **kw)
    assert mine == ref


def test_smtp_none_request_carries_helo_from_to_raw() -> None:
    auth = req(method=b"none", user=b"", passwd=b"")
    auth.smtp_helo = b"cl.example"
    auth.smtp_from = b"mail from:<a@b>  SIZE=10"
    auth.smtp_to = b"RCPT  TO:<x@y>  NOTIFY=NEVER"
    mine, ref = both(auth, client_host=b"[UNAVAILABLE]")
    assert mine == ref and b"Auth-SMTP-To: RCPT  TO:<x@y>  NOTIFY=NEVER\r\n\r\n" in mine


value = st.binary(max_size=40)
ssl_values = st.dictionaries(
    st.sampled_from(list(CERT_INFO)), st.one_of(st.just(b""), value), max_size=len(CERT_INFO)
)


@settings(max_examples=300, deadline=None)
@given(
    protocol=st.sampled_from([b"smtp", b"imap", b"pop3"]),
    method=st.sampled_from(
        [b"plain", b"login", b"apop", b"cram-md5", b"external", b"none", b"xoauth2"]
    ),
    user=value,
    passwd=value,
    salt=st.one_of(st.just(b""), value.map(lambda v: b"<" + v + b">\r\n")),
    attempt=st.integers(1, 100000),
    smtp=st.tuples(value, value, value),
    client_ip=st.sampled_from([b"127.0.0.1", b"2001:db8::1", b"unix:"]),
    client_host=st.one_of(st.none(), value),
    pp=st.one_of(st.none(), st.tuples(value, st.integers(0, 65535), value, st.integers(0, 65535))),
    ssl_info=st.one_of(st.none(), ssl_values),
    pass_cert=st.booleans(),
    keepalive=st.booleans(),
    extra=st.lists(st.tuples(st.binary(min_size=1, max_size=8), value), max_size=3),
    uri=st.sampled_from([b"", b"/", b"/auth", b"/a?b=1&c=%20"]),
)
def test_request_bytes_agree_on_random_logins(
    protocol: bytes, method: bytes, user: bytes, passwd: bytes, salt: bytes, attempt: int,
    smtp: tuple[bytes, bytes, bytes], client_ip: bytes, client_host: bytes | None,
    pp: tuple[bytes, int, bytes, int] | None, ssl_info: dict[str, bytes] | None,
    pass_cert: bool, keepalive: bool, extra: list[tuple[bytes, bytes]], uri: bytes,
) -> None:  # fmt: skip
    auth = req(protocol, method, user, passwd, salt, attempt)
    auth.smtp_helo, auth.smtp_from, auth.smtp_to = smtp
    mine, ref = both(
        auth,
        uri=uri,
        client_ip=client_ip,
        client_host=client_host,
        extra=extra,
        ssl_info=ssl_info,
        pass_cert=pass_cert,
        keepalive=keepalive,
        pp=pp,
    )
    assert mine == ref


# --- reading answers ---------------------------------------------------------------------------

OK_BODY = OK.split(b"\r\n", 1)[1]
PAD = b"X-Pad: " + b"a" * 950 + b"\r\n"
FITS = b"HTTP/1.0 200 OK\r\n" + OK_BODY
FITS = FITS[:-2] + b"X-Pad: " + b"a" * (MAX_HEADER_BLOCK - len(FITS) - 9) + b"\r\n\r\n"

# every answer tests/unit/test_auth_http.py reads, and the bench auth server's
UNIT_ANSWERS = [
    OK,
    OK.replace(b"200 OK", b"500 Internal Server Error"),
    OK_BODY,
    OK.replace(b"HTTP/1.0 200 OK", b"HTTP/9 what"),
    b"HTTPX 200 OK\r\n" + OK_BODY,
    b"HTTP/1.0 200 OK\rX\r\nAuth-Status: OK\r\n\r\n",
    b"HTTP/1.0 200 OK\nauth-status: OK\nAUTH-SERVER: ::1\nauth-port: 25\n\n",
    b"HTTP/1.0 200 OK\r\nAuth_Status: OK\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nAuth-Status : OK\r\n\r\n",
    b"HTTP/1.0 200 OK\r\n-Auth: x\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nAuth-Status:Temporary   failure   \r\n\r\n",
    b"HTTP/1.0 200 OK\r\nAuth-Status: bad\x01\x7f\xff msg\r\n\r\n",
    b"Auth-Status: ok\r\n\r\n",
    b"Auth-Status: Bad\r\nAuth-Status: OK\r\nAuth-Server: 1.2.3.4\r\nAuth-Port: 1\r\n\r\n",
    b"Auth-Status: \r\nAuth-Server: 127.0.0.1\r\nAuth-Port: 25\r\n\r\n",
    b"Auth-Status: Bad thing happened\r\nAuth-Error-Code: 550 5.7.1\r\nAuth-Wait: 3\r\n\r\n",
    b"Auth-Status: WAIT\r\nAuth-Wait: 2\r\nAuth-User: new\r\n\r\n",
    OK[:-2] + b"Auth-User: new user%20\r\nAuth-Pass: p%41\r\n\r\n",
    OK[:-2] + b"Auth-SMTP-Auth-Method: LOGIN\r\n\r\n",
    OK[:-2] + b"auth-smtp-auth-method: off\r\n\r\n",
    OK[:-2] + b"Auth-SMTP-Auth-Method: cram-md5\r\n\r\n",
    OK[:-2] + b"Auth-SMTP-Auth-Method:\r\n\r\n",
    b"HTTP/1.0 200 OK\r\n" + PAD + OK_BODY,
    FITS,
    FITS[:-2] + b"a\r\n\r\n",
    OK + b"Auth-Status: nope\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\nAuth-Port: 143\r\n"
    b"Content-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nAuth-Status: Invalid login\r\nAuth-Wait: 3\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
    b"\x00\x01garbage here\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 1100 + b"\r\n" + OK_BODY,
    # longer than nginx's buffer in the status line, or across its end
    b"HTTP/1.1 200 " + b"O" * 1020 + b"\r\n" + OK_BODY,
    b"HTTP/1.1 200 " + b"O" * 1100 + b"\r\n" + OK_BODY,
    b"HTTP/1.1 200 " + b"O" * 1020 + b"\r\n" + OK_BODY + b"x" * 100,
    b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 990 + b"\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 996 + b"\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 997 + b"\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n" + b"X:\r\n" * 260 + b"\r\n",
    # httptools stops at a bad framing header before the block is complete
    b"HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nContent-Length: OK\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n",
    b"HTTP/1.1 200 OK\n" + b"X\n" * 600 + b"\n",
    # bench/servers.c
    b"HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\nAuth-Port: 143\r\n"
    b"Content-Length: 0\r\nConnection: close\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\nAuth-Port: 143\r\n"
    b"Content-Length: 0\r\nConnection: keep-alive\r\n\r\n",
    # the reference server (fastmail.testing.authd)
    b"HTTP/1.1 200 OK\r\nAuth-Status: Invalid login or password\r\nAuth-Wait: 1\r\n"
    b"Auth-Error-Code: 535 5.7.8\r\nContent-Length: 0\r\n\r\n",
]
ANSWERS = (
    UNIT_ANSWERS
    + READ_CASES
    + [
        # hypothesis: an empty line after a 204's header block (kept whole, closed when alone)
        b"HTTP/1.1 204 No Content\r\nAuth-Status: OK\r\nAuth-Status: \n\r\n\r\n",
    ]
)


@pytest.mark.parametrize("data", ANSWERS)
def test_reader_agrees_with_response_reader(data: bytes) -> None:
    check_answer(data)
    check_splits(data)


@pytest.mark.parametrize("data", ANSWERS)
def test_reader_one_byte_at_a_time(data: bytes) -> None:
    whole = read_whole(data)[:3]
    assert read_split([data[i : i + 1] for i in range(len(data))])[:3] == whole


def test_usual_answers_are_read_in_c() -> None:
    for data in UNIT_ANSWERS[-3:] + [OK, FITS, READ_CASES[0], READ_CASES[1]]:
        code, _, _, _, r = read_whole(data)
        assert code == P.R_HEAD and not r.used_fallback, data
    for data in (OK_BODY, READ_CASES[8], UNIT_ANSWERS[6]):  # no status line, chunked, LF only
        assert read_whole(data)[4].used_fallback


def test_connection_fate() -> None:
    ka = b"HTTP/1.1 200 OK\r\nAuth-Status: OK\r\nContent-Length: 3\r\n\r\n"
    assert read_whole(ka + b"abc")[3] == "keep"
    assert read_whole(ka + b"abcd")[3] == "close"  # out of step
    assert read_whole(ka.replace(b"1.1", b"1.0") + b"abc")[3] == "close"
    assert read_whole(ka.replace(b"3\r\n", b"3\r\nConnection: close\r\n") + b"abc")[3] == "close"
    assert read_whole(ka.replace(b"3\r\n", b"70000\r\n"))[3] == "close"  # too much to drain
    code, _, _, verdict, r = read_whole(ka + b"a")
    assert verdict == "drain" and r.feed_body(b"b") == "drain" and r.feed_body(b"c") == "keep"
    assert read_whole(ka + b"abc")[4].verdict(pool=False) == "close"  # auth_http_keepalive 0
    assert read_whole(OK)[3] == "close"  # HTTP/1.0 without length: nginx's answer


# answers made of the pieces nginx, httptools and the fast path treat differently
STATUS = [b"HTTP/1.0 200 OK\r\n", b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 500 Internal\r\n",
          b"HTTP/1.1 204 No Content\r\n", b"HTTP/1.0 200\r\n", b"HTTP/1.1 302 \r\n",
          b"HTTP/9 what\r\n", b"HTTPX 200 OK\r\n", b"", b"HTTP/1.0 200 OK\rX\r\n",
          b"HTTP/1.1 100 Continue\r\n", b"HTTP/1.0 200 OK\n", b"HTTP/1.1 200 \xffK\r\n",
          b"HTTP/1.1 600 X\r\n", b"HTTP/1.1 200 OK\r\nHTTP/1.1 200 OK\r\n"]  # fmt: skip
NAMES = [b"Auth-Status", b"auth-status", b"AUTH-SERVER", b"Auth-Server", b"Auth-Port",
         b"Auth-User", b"Auth-Pass", b"Auth-Wait", b"Auth-Error-Code", b"Auth-Error-SASL",
         b"Auth-SSL-Backend", b"Content-Length", b"content-length", b"Connection",
         b"Transfer-Encoding", b"Upgrade", b"X-Pad", b"X", b"1", b"Auth_Status", b"-x",
         b"Auth-Status ", b"Auth-", b"Keep-Alive", b""]  # fmt: skip
VALUES = [b"OK", b"WAIT", b"ok", b"", b"Invalid login", b"127.0.0.1", b"::1", b"1..2.3",
          b"mail.example.net", b"a_b", b"[::1]", b"255.255.255.255", b"143", b"0", b"70000",
          b"3", b"-1", b"x1", b"close", b"keep-alive", b"Keep-Alive", b"close, keep-alive",
          b"chunked", b"2", b"00", b"0009", b"1234567890", b"550 5.7.1", b"a\tb", b"  a  ",
          b"\x00", b"\x7f\xff", b"a:b"]  # fmt: skip
# mostly well-formed: one odd piece in an answer is enough to take the other path
EOLS = [b"\r\n"] * 12 + [b"\n", b"\rx"]
SEPS = [b": "] * 8 + [b":", b":   ", b" : ", b""]

header_line = st.builds(
    lambda n, s, v, e: n + s + v + e,
    st.sampled_from(NAMES[:17] * 3 + NAMES[17:]),
    st.sampled_from(SEPS),
    st.one_of(st.sampled_from(VALUES), st.sampled_from(VALUES), st.binary(max_size=12)),
    st.sampled_from(EOLS),
)
answer = st.builds(
    lambda s, h, e, b: s + b"".join(h) + e + b,
    st.sampled_from(STATUS[:6] * 2 + STATUS),
    st.lists(header_line, max_size=8),
    st.sampled_from([b"\r\n", b"\n", b"", b"\r\n"]),
    st.sampled_from([b"", b"", b"ok", b"abc", b"HTTP/1.1 200 OK\r\n\r\n", b"0\r\n\r\n"]),
)
usual = st.builds(
    lambda s, h, cl, conn, body: s + b"".join(h) + cl(body) + conn + b"\r\n" + body,
    st.sampled_from(STATUS[:6]),
    st.lists(
        st.builds(
            lambda n, v: n + b": " + v + b"\r\n",
            st.sampled_from(NAMES[:11] + [b"X-Pad"]),
            st.sampled_from(VALUES[:28]),
        ),
        max_size=8,
    ),
    st.sampled_from(
        [lambda b: b"", lambda b: b"Content-Length: %d\r\n" % len(b)]
        + [lambda b: b"Content-Length: %d\r\n" % (len(b) + 1)]
    ),
    st.sampled_from([b"", b"Connection: close\r\n", b"Connection: keep-alive\r\n"]),
    st.sampled_from([b"", b"ok", b"abcdef"]),
)
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(answer)
def test_reader_agrees_on_generated_answers(data: bytes) -> None:
    check_answer(data)
    check_splits(data)


@SETTINGS
@given(usual)
def test_reader_agrees_on_generated_usual_answers(data: bytes) -> None:
    check_answer(data)
    check_splits(data)
    if data.startswith(b"HTTP/1.") and b" 204 " not in data[:13]:
        assert not read_whole(data)[4].used_fallback


# --- interpretation ----------------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(
    headers=st.lists(
        st.tuples(
            st.sampled_from(NAMES[:-3]).map(lambda n: n.swapcase() if len(n) % 3 == 0 else n),
            st.one_of(st.sampled_from(VALUES), st.binary(max_size=12)).map(
                lambda v: v.replace(b"\r", b"").replace(b"\n", b"")
            ),
        ),
        max_size=8,
    ),
    protocol=st.sampled_from([b"smtp", b"imap", b"pop3"]),
    method=st.sampled_from([b"plain", b"apop", b"cram-md5", b"external", b"none"]),
    salt=st.sampled_from([b"", b"<1.2@x>\r\n"]),
    passwd=st.sampled_from([b"", b"pw"]),
    allow=st.booleans(),
)
def test_interpret_agrees(
    headers: list[tuple[bytes, bytes]], protocol: bytes, method: bytes, salt: bytes,
    passwd: bytes, allow: bool,
) -> None:  # fmt: skip
    auth = req(protocol, method, b"u", passwd, salt)
    want = interpret(headers, auth, PEER, allow_names=allow)
    assert fields(P.interpret(headers, auth, PEER, allow)) == fields(want)


@pytest.mark.parametrize(
    "text",
    [b"1.2.3.4", b"1..2.3", b"01.002.3.4", b"0.0.0.0", b"255.255.255.255", b"255.255.255.254",
     b"1.2.3.256", b"1.2.3", b"1.2.3.4.5", b"1.2.3.4 ", b"", b"::1", b"2001:db8::1",
     b"::ffff:1.2.3.4", b"[::1]", b"1:2:3:4:5:6:7:8:9", b"fe80::1%lo", b"::1\x00x",
     b"localhost", b"1.2.3.4\xff", b"9" * 70 + b".1.1.1", b"::" + b"0" * 70],
)  # fmt: skip
def test_server_address_rules_agree(text: bytes) -> None:
    assert P.parse_server_addr(text) == parse_server_addr(text)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="0123456789abcdef.:x%\x00 []", max_size=20).map(str.encode))
def test_server_address_agrees_on_generated_text(text: bytes) -> None:
    assert P.parse_server_addr(text) == parse_server_addr(text)


def test_a_content_length_that_is_no_number_is_an_invalid_header_at_its_line_end() -> None:
    # found by tests/fuzz (authanswer): httptools refuses it before its CRLF; the C reader,
    # judging whole lines as nginx does, waits for the line, then refuses it the same way
    head = b"HTTP/1.1 200 OK\r\nAuth-Status: OK\r\nContent-Length: a"
    assert read_whole(head)[0] == P.R_MORE
    assert read_whole(head + b"\r\n\r\n")[:3] == (P.R_ERROR, None, "invalid header")
