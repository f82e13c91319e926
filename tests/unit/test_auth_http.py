"""auth_http's Python reference: request bytes as nginx writes them, answers read as nginx
reads them (the C client is held to these in test_auth_proto.py and runs against real
servers in test_auth_client.py)."""

from __future__ import annotations

import pytest

from fastmail._authproto import MAX_HEADER_BLOCK
from fastmail._core import AuthRequest
from fastmail.auth_http import (
    AuthResult,
    build_request,
    escape,
    parse_response,
    parse_server_addr,
)

PEER = "127.0.0.1:9000"


def req(protocol: bytes = b"smtp", method: bytes = b"plain", user: bytes = b"test",
        passwd: bytes = b"secret", salt: bytes = b"", attempt: int = 1) -> AuthRequest:  # fmt: skip
    return AuthRequest(protocol, method, user, passwd, salt, attempt)


def build(auth: AuthRequest, uri: bytes = b"/auth/path?x=1", **kw: object) -> bytes:
    args: dict[str, object] = dict(
        uri_path=uri,
        host_header=b"127.0.0.1",
        client_ip=b"127.0.0.1",
        client_host=b"[UNAVAILABLE]" if auth.protocol == b"smtp" else None,
        extra_headers=[],
        keepalive=False,
    )
    args.update(kw)
    return build_request(auth, **args)  # type: ignore[arg-type]


# --- request bytes -----------------------------------------------------------------------------


def test_smtp_plain_matches_verified_example() -> None:
    assert build(req()) == (
        b"GET /auth/path?x=1 HTTP/1.0\r\nHost: 127.0.0.1\r\nAuth-Method: plain\r\n"
        b"Auth-User: test\r\nAuth-Pass: secret\r\nAuth-Protocol: smtp\r\n"
        b"Auth-Login-Attempt: 1\r\nClient-IP: 127.0.0.1\r\nClient-Host: [UNAVAILABLE]\r\n\r\n"
    )


def test_cram_md5_sends_salt_with_its_own_crlf() -> None:
    auth = req(method=b"cram-md5", passwd=b"0" * 32, salt=b"<192932268.1795744097@mx.test>\r\n")
    assert build(auth) == (
        b"GET /auth/path?x=1 HTTP/1.0\r\nHost: 127.0.0.1\r\nAuth-Method: cram-md5\r\n"
        b"Auth-User: test\r\nAuth-Pass: 00000000000000000000000000000000\r\n"
        b"Auth-Salt: <192932268.1795744097@mx.test>\r\nAuth-Protocol: smtp\r\n"
        b"Auth-Login-Attempt: 1\r\nClient-IP: 127.0.0.1\r\nClient-Host: [UNAVAILABLE]\r\n\r\n"
    )


def test_smtp_auth_none_sends_helo_from_to_raw() -> None:
    auth = req(method=b"none", user=b"", passwd=b"")
    auth.smtp_helo = b"cl.example"
    auth.smtp_from = b"mail from:<a@b>  SIZE=10"
    auth.smtp_to = b"RCPT  TO:<x@y>  NOTIFY=NEVER"
    assert build(auth) == (
        b"GET /auth/path?x=1 HTTP/1.0\r\nHost: 127.0.0.1\r\nAuth-Method: none\r\nAuth-User: \r\n"
        b"Auth-Pass: \r\nAuth-Protocol: smtp\r\nAuth-Login-Attempt: 1\r\nClient-IP: 127.0.0.1\r\n"
        b"Client-Host: [UNAVAILABLE]\r\nAuth-SMTP-Helo: cl.example\r\n"
        b"Auth-SMTP-From: mail from:<a@b>  SIZE=10\r\nAuth-SMTP-To: RCPT  TO:<x@y>  NOTIFY=NEVER\r\n"
        b"\r\n"
    )


def test_imap_login_has_no_client_host() -> None:
    auth = req(protocol=b"imap", user=b"bad", passwd=b"pw")
    assert build(auth, uri=b"/a") == (
        b"GET /a HTTP/1.0\r\nHost: 127.0.0.1\r\nAuth-Method: plain\r\nAuth-User: bad\r\n"
        b"Auth-Pass: pw\r\nAuth-Protocol: imap\r\nAuth-Login-Attempt: 1\r\nClient-IP: 127.0.0.1\r\n"
        b"\r\n"
    )


def test_imap_cram_md5_example() -> None:
    salt = b"<1345679681.1795744130@mail.example.com>\r\n"
    auth = req(protocol=b"imap", method=b"cram-md5", user=b"user", passwd=b"0" * 32, salt=salt)
    assert build(auth, uri=b"/auth") == (
        b"GET /auth HTTP/1.0\r\nHost: 127.0.0.1\r\nAuth-Method: cram-md5\r\nAuth-User: user\r\n"
        b"Auth-Pass: 00000000000000000000000000000000\r\n"
        b"Auth-Salt: <1345679681.1795744130@mail.example.com>\r\nAuth-Protocol: imap\r\n"
        b"Auth-Login-Attempt: 1\r\nClient-IP: 127.0.0.1\r\n\r\n"
    )


def test_pop3_apop_sends_salt_and_external_does_not() -> None:
    salt = b"<1.2@mx>\r\n"
    apop = build(req(protocol=b"pop3", method=b"apop", passwd=b"d" * 32, salt=salt))
    assert b"Auth-Method: apop\r\n" in apop and b"Auth-Salt: <1.2@mx>\r\nAuth-Protocol" in apop
    # mainline 1.29.1: Auth-Salt only for apop/cram-md5, not EXTERNAL or none
    ext = build(req(protocol=b"pop3", method=b"external", passwd=b"", salt=salt))
    assert b"Auth-Salt" not in ext and b"Auth-Pass: \r\n" in ext
    none = build(req(method=b"none", salt=salt))
    assert b"Auth-Salt" not in none


def test_escaping_of_user_and_password() -> None:
    auth = req(user="we ir+d=%\r\nXé".encode(), passwd=b"p a%ss\r\n")
    out = build(auth)
    assert b"Auth-User: we%20ir+d=%25%0D%0AX\xc3\xa9\r\n" in out
    assert b"Auth-Pass: p%20a%25ss%0D%0A\r\n" in out
    assert escape(bytes(range(0x30))) == (
        b"".join(b"%%%02X" % i for i in range(0x21)) + b"!\"#$%25&'()*+,-./"
    )
    assert escape(b"\x7f\xff+=/") == b"\x7f\xff+=/"


def test_proxy_protocol_lines_follow_client_host() -> None:
    out = build(
        req(), client_ip=b"192.0.2.1", proxy_protocol=(b"192.0.2.1", 1234, b"192.0.2.2", 25)
    )
    assert out.endswith(
        b"Client-IP: 192.0.2.1\r\nClient-Host: [UNAVAILABLE]\r\n"
        b"Proxy-Protocol-Addr: 192.0.2.1\r\nProxy-Protocol-Port: 1234\r\n"
        b"Proxy-Protocol-Server-Addr: 192.0.2.2\r\nProxy-Protocol-Server-Port: 25\r\n\r\n"
    )


def test_ssl_lines_after_smtp_lines_then_extra_headers() -> None:
    auth = req(method=b"none", user=b"", passwd=b"")
    ssl = {"protocol": b"TLSv1.2", "cipher": b"ECDHE-RSA-AES256-GCM-SHA384"}
    out = build(auth, ssl_info=ssl, extra_headers=[(b"X-A", b"1"), (b"X-B", b"two words")])
    assert out.endswith(
        b"Auth-SMTP-Helo: \r\nAuth-SMTP-From: \r\nAuth-SMTP-To: \r\nAuth-SSL: on\r\n"
        b"Auth-SSL-Protocol: TLSv1.2\r\nAuth-SSL-Cipher: ECDHE-RSA-AES256-GCM-SHA384\r\n"
        b"X-A: 1\r\nX-B: two words\r\n\r\n"
    )


def test_client_certificate_lines() -> None:
    ssl = {
        "protocol": b"TLSv1.3",
        "cipher": b"TLS_AES_256_GCM_SHA384",
        "verify": b"SUCCESS",
        "subject": b"O=Ex\\, Inc.,CN=client one",
        "issuer": b"CN=TestCA",
        "serial": b"4F15",
        "fingerprint": b"ab" * 20,
        "cert": b"-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n",
    }
    without = build(req(), ssl_info=ssl)
    assert (
        b"Auth-SSL-Verify: SUCCESS\r\nAuth-SSL-Subject: O=Ex\\, Inc.,CN=client one\r\n" in without
    )
    assert b"Auth-SSL-Issuer: CN=TestCA\r\nAuth-SSL-Serial: 4F15\r\n" in without
    assert b"Auth-SSL-Fingerprint: " + b"ab" * 20 + b"\r\n\r\n" in without
    with_cert = build(req(), ssl_info=ssl, pass_client_cert=True)
    assert with_cert.endswith(
        b"Auth-SSL-Cert: -----BEGIN%20CERTIFICATE-----%0AMIIC%0A-----END%20CERTIFICATE-----%0A"
        b"\r\n\r\n"
    )
    no_verify = build(req(), ssl_info={"protocol": b"TLSv1.2", "cipher": b"X", "verify": b""})
    assert b"Auth-SSL-Verify" not in no_verify


def test_keepalive_form_only_changes_version_and_adds_connection_last() -> None:
    plain = build(req(), extra_headers=[(b"X-A", b"1")])
    ka = build(req(), extra_headers=[(b"X-A", b"1")], keepalive=True)
    assert ka == plain.replace(b" HTTP/1.0\r\n", b" HTTP/1.1\r\n", 1)[:-2] + (
        b"Connection: keep-alive\r\n\r\n"
    )


def test_empty_uri_is_slash_and_attempt_counts() -> None:
    assert build(req(attempt=3), uri=b"").startswith(b"GET / HTTP/1.0\r\n")
    assert b"Auth-Login-Attempt: 3\r\n" in build(req(attempt=3))


# --- reading answers ---------------------------------------------------------------------------

OK = b"HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\nAuth-Port: 143\r\n\r\n"


def parse(data: bytes, auth: AuthRequest | None = None, **kw: bool) -> AuthResult:
    return parse_response(data, auth or req(), PEER, **kw)


def test_ok_answer() -> None:
    r = parse(OK)
    assert (r.status, r.server, r.port, r.addr, r.log_message) == (
        "ok",
        b"127.0.0.1",
        143,
        "127.0.0.1",
        None,
    )


def test_status_line_is_ignored_and_optional() -> None:
    assert parse(OK.replace(b"200 OK", b"500 Internal Server Error")).status == "ok"
    assert parse(OK.split(b"\r\n", 1)[1]).status == "ok"
    assert parse(OK.replace(b"HTTP/1.0 200 OK", b"HTTP/9 what")).status == "ok"
    r = parse(b"HTTPX 200 OK\r\n" + OK.split(b"\r\n", 1)[1])
    assert r.status == "error"
    assert r.log_message == f"auth http server {PEER} sent invalid header in response"


def test_bad_cr_in_status_line_is_invalid_response() -> None:
    r = parse(b"HTTP/1.0 200 OK\rX\r\nAuth-Status: OK\r\n\r\n")
    assert r.log_message == f"auth http server {PEER} sent invalid response"


def test_lf_only_and_case_insensitive_names() -> None:
    r = parse(b"HTTP/1.0 200 OK\nauth-status: OK\nAUTH-SERVER: ::1\nauth-port: 25\n\n")
    assert (r.status, r.addr, r.port) == ("ok", "::1", 25)


@pytest.mark.parametrize("line", [b"Auth_Status: OK", b"Auth-Status : OK", b"-Auth: x"])
def test_bad_header_names(line: bytes) -> None:
    r = parse(b"HTTP/1.0 200 OK\r\n" + line + b"\r\n\r\n")
    assert (r.status, r.log_message) == (
        "error",
        f"auth http server {PEER} sent invalid header in response",
    )


def test_failure_text_trailing_spaces_cut_and_raw_bytes_kept() -> None:
    r = parse(b"HTTP/1.0 200 OK\r\nAuth-Status:Temporary   failure   \r\n\r\n")
    assert (r.status, r.error_message, r.wait) == ("fail", b"Temporary   failure", 0)
    assert r.log_message == 'client login failed: "Temporary   failure"' and r.log_level == "info"
    r = parse(b"HTTP/1.0 200 OK\r\nAuth-Status: bad\x01\x7f\xff msg\r\n\r\n")
    assert r.error_message == b"bad\x01\x7f\xff msg"


def test_values_are_case_sensitive_and_failure_sticks() -> None:
    assert parse(b"Auth-Status: ok\r\n\r\n").error_message == b"ok"
    r = parse(
        b"Auth-Status: Bad\r\nAuth-Status: OK\r\nAuth-Server: 1.2.3.4\r\nAuth-Port: 1\r\n\r\n"
    )
    assert (r.status, r.error_message) == ("fail", b"Bad")
    assert parse(b"Auth-Status: A\r\nAuth-Status: B\r\n\r\n").error_message == b"B"


def test_empty_status_fails_imap_pop3_but_not_smtp() -> None:
    body = b"Auth-Status: \r\nAuth-Server: 127.0.0.1\r\nAuth-Port: 25\r\n\r\n"
    assert parse(body).status == "ok"
    r = parse(body, req(protocol=b"imap"))
    assert (r.status, r.error_message) == ("fail", b"")


def test_error_code_is_smtp_only_and_wait_parsed() -> None:
    body = b"Auth-Status: Bad thing happened\r\nAuth-Error-Code: 550 5.7.1\r\nAuth-Wait: 3\r\n\r\n"
    r = parse(body)
    assert (r.error_code, r.wait) == (b"550 5.7.1", 3)
    assert parse(body, req(protocol=b"pop3")).error_code is None
    for bad in (b"x1", b"", b"-1", b"+2"):
        assert parse(b"Auth-Status: No\r\nAuth-Wait: " + bad + b"\r\n\r\n").wait == 0


def test_wait_status() -> None:
    r = parse(b"Auth-Status: WAIT\r\nAuth-Wait: 2\r\nAuth-User: new\r\n\r\n")
    assert (r.status, r.wait, r.user) == ("wait", 2, b"new")
    assert parse(b"Auth-Status: WAIT\r\n\r\n").wait == 0


def test_user_and_pass_replaced_raw() -> None:
    r = parse(OK[:-2] + b"Auth-User: new user%20\r\nAuth-Pass: p%41\r\n\r\n")
    assert (r.user, r.passwd) == (b"new user%20", b"p%41")


def test_missing_server_or_port() -> None:
    for body in (
        b"Auth-Status: OK\r\nAuth-Port: 1\r\n\r\n",
        b"Auth-Server: 1.2.3.4\r\nAuth-Port:\r\n\r\n",
    ):
        r = parse(body)
        assert r.log_message == f"auth http server {PEER} did not send server or port"


def test_did_not_send_password_for_salted_methods() -> None:
    body = b"Auth-Status: OK\r\nAuth-Server: 127.0.0.1\r\nAuth-Port: 143\r\n\r\n"
    salted = req(protocol=b"imap", method=b"cram-md5", passwd=b"0" * 32, salt=b"<1@x>\r\n")
    r = parse(body, salted)
    assert (r.status, r.log_message) == ("error", f"auth http server {PEER} did not send password")
    assert parse(body[:-2] + b"Auth-Pass: pw\r\n\r\n", salted).status == "ok"
    apop = req(protocol=b"pop3", method=b"apop", passwd=b"d" * 32, salt=b"<1@x>\r\n")
    assert parse(body, apop).status == "error"
    assert parse(body, req(protocol=b"imap", method=b"external", passwd=b"")).status == "error"
    assert parse(body, req(protocol=b"imap", passwd=b"")).status == "ok"  # LOGIN a ""
    assert parse(body, req(method=b"cram-md5", salt=b"<1@x>\r\n")).status == "ok"  # SMTP


@pytest.mark.parametrize(
    "value,expected",
    [(b"login", b"login"), (b"LOGIN", b"login"), (b"Plain", b"plain"), (b"off", b"off")],
)
def test_smtp_auth_method_chosen_per_login(value: bytes, expected: bytes) -> None:
    """fastmail's Auth-SMTP-Auth-Method: the login's AUTH to the SMTP backend."""
    r = parse(OK[:-2] + b"Auth-SMTP-Auth-Method: " + value + b"\r\n\r\n")
    assert (r.status, r.backend_auth) == ("ok", expected)
    assert parse(OK).backend_auth is None  # the config decides
    imap = parse(OK[:-2] + b"Auth-SMTP-Auth-Method: x\r\n\r\n", req(protocol=b"imap"))
    assert (imap.status, imap.backend_auth) == ("ok", None)  # SMTP's header only


@pytest.mark.parametrize("value", [b"cram-md5", b"", b"on"])
def test_smtp_auth_method_unknown_is_an_error(value: bytes) -> None:
    r = parse(OK[:-2] + b"Auth-SMTP-Auth-Method: " + value + b"\r\n\r\n")
    v = value.decode().strip()
    assert (r.status, r.log_level) == ("error", "error")
    assert r.log_message == f'auth http server {PEER} sent invalid SMTP auth method:"{v}"'


@pytest.mark.parametrize(
    "server", [b"localhost", b"[::1]", b"255.255.255.255", b"1.2.3", b"1.2.3.256", b"1.2.3.4.5"]
)
def test_invalid_server_address(server: bytes) -> None:
    r = parse(b"Auth-Status: OK\r\nAuth-Server: " + server + b"\r\nAuth-Port: 25\r\n\r\n")
    v = server.decode()
    assert r.log_message == f'auth http server {PEER} sent invalid server address:"{v}"'


def test_server_address_forms() -> None:
    assert parse_server_addr(b"1..2.3") == "1.0.2.3"
    assert parse_server_addr(b"2001:db8::1") == "2001:db8::1"
    assert parse_server_addr(b"::ffff:1.2.3.4") == "::ffff:1.2.3.4"


def test_host_name_server_allowed_only_with_resolver() -> None:
    body = b"Auth-Status: OK\r\nAuth-Server: mail.example.net\r\nAuth-Port: 25\r\n\r\n"
    r = parse(body, allow_names=True)
    assert (r.status, r.server, r.addr) == ("ok", b"mail.example.net", None)
    bad = b"Auth-Status: OK\r\nAuth-Server: a_b.example\r\nAuth-Port: 25\r\n\r\n"
    assert parse(bad, allow_names=True).status == "error"


@pytest.mark.parametrize("port", [b"0", b"70000", b"x", b"-1"])
def test_invalid_port(port: bytes) -> None:
    r = parse(b"Auth-Status: OK\r\nAuth-Server: 1.2.3.4\r\nAuth-Port: " + port + b"\r\n\r\n")
    assert r.log_message == f'auth http server {PEER} sent invalid server port:"{port.decode()}"'


def test_header_block_limit() -> None:
    pad = b"X-Pad: " + b"a" * 950 + b"\r\n"
    r = parse(b"HTTP/1.0 200 OK\r\n" + pad + OK.split(b"\r\n", 1)[1])
    assert (r.status, r.log_message) == ("error", None)
    fits = b"HTTP/1.0 200 OK\r\n" + OK.split(b"\r\n", 1)[1]
    fits = fits[:-2] + b"X-Pad: " + b"a" * (MAX_HEADER_BLOCK - len(fits) - 9) + b"\r\n\r\n"
    assert len(fits) == MAX_HEADER_BLOCK
    assert parse(fits).status == "ok"
    assert parse(fits[:-2] + b"a\r\n\r\n").status == "error"
    # a status line longer than the buffer, whatever follows it
    long_status = b"HTTP/1.1 200 " + b"O" * 1020 + b"\r\n" + OK.split(b"\r\n", 1)[1]
    r = parse(long_status + b"x" * 100)
    assert (r.status, r.log_message) == ("error", None)


def test_body_after_headers_ignored() -> None:
    assert parse(OK + b"Auth-Status: nope\r\n\r\n").status == "ok"


READ_CASES = [
    b"HTTP/1.1 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\nAuth-Port: 143\r\n"
    b"Content-Length: 0\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nAuth-Status:   Invalid login  \r\nAuth-Wait: 3\r\n"
    b"Connection: Keep-Alive\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nauth-status: OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 500 Internal\r\nAuth-Status:\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nAuth-Status: OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nAuth-Status: OK\r\nContent-Length: 4\r\n\r\nab",
    b"HTTP/1.1 200 OK\r\nAuth-Status: OK\r\nContent-Length: 0\r\n\r\nextra",
    b"HTTP/1.1 200 OK\r\nAuth-Status: OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nAuth-Status: OK\r\nConnection: keep-alive\r\nConnection: close\r\n"
    b"Content-Length: 0\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nConnection: close, keep-alive\r\n"
    b"Content-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nAuth-Status: OK\r\nAuth-Pass: a\tb\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nAuth_Status: OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nAuth-Status: OK\r\n",
    b"HTTP/1.1 200 OK\r\nX-Empty:   \r\nX-Tight:v\r\nAuth-Status:  a  b  \r\n"
    b"CONTENT-LENGTH: 1\r\nCONNECTION: KEEP-ALIVE\r\n\r\nx",
]


@pytest.mark.parametrize("data", READ_CASES)
def test_whole_answer_in_one_read_reads_as_in_pieces(data: bytes) -> None:
    """Whole or in pieces, an answer reads the same (the C reader's usual answers and their
    near misses)."""
    from fastmail.auth_http import ResponseReader

    whole, pieces = ResponseReader(), ResponseReader()
    done = whole.feed(data)
    assert pieces.feed(data[:1]) is False
    assert pieces.feed(data[1:]) is done
    fields = ("headers", "error", "headers_complete", "message_complete", "keep_alive")
    assert [getattr(whole, f) for f in fields] == [getattr(pieces, f) for f in fields]
    assert whole.received == pieces.received == len(data)
