"""fastmail.testing: the reference auth_http server (authd) and the fake backend behave as their
users (tests, the demo, bench/) rely on. Loopback only."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import struct
import time

import pytest

from fastmail.testing.authd import (
    TEMP_TEXT,
    AuthServer,
    Backend,
    Reply,
    UserDB,
    hash_password,
    main,
    percent_decode,
    rcpt_domain,
    rule_from_json,
    verify_password,
)
from fastmail.testing.backend import BackendServer


def request(
    method: str = "plain",
    user: str = "alice",
    password: str = "secret",
    protocol: str = "imap",
    attempt: int = 1,
    extra: str = "",
    version: str = "1.0",
) -> bytes:
    return (
        f"GET /auth HTTP/{version}\r\nHost: 127.0.0.1\r\nAuth-Method: {method}\r\n"
        f"Auth-User: {user}\r\nAuth-Pass: {password}\r\n{extra}Auth-Protocol: {protocol}\r\n"
        f"Auth-Login-Attempt: {attempt}\r\nClient-IP: 127.0.0.1\r\n\r\n"
    ).encode()


def ask(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send one request and read the answer until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(4096):
            out += chunk
    return out


def headers(answer: bytes) -> dict[str, str]:
    lines = answer.decode("latin-1").split("\r\n")[1:]
    return dict(line.split(": ", 1) for line in lines if ": " in line)


@pytest.fixture
def users(authd: AuthServer) -> AuthServer:
    authd.db.add_user(
        "alice",
        "secret",
        {"imap": Backend("127.0.0.1", 1143), "smtp": Backend("127.0.0.1", 1025)},
        store_plain=True,
        scrypt_ln=10,
    )
    authd.db.add_user("bob", "pw", {"pop3": Backend("127.0.0.1", 1110)}, scrypt_ln=10)
    return authd


# -- passwords and helpers


def test_scrypt_hash_is_salted_and_verifies():
    a, b = hash_password("secret", ln=10), hash_password("secret", ln=10)
    assert a != b and a.startswith("scrypt$ln=10,r=8,p=1$")
    assert verify_password(a, "secret")
    assert not verify_password(a, "Secret")
    assert not verify_password("md5$x$y$z", "secret")


def test_percent_decode_matches_nginx_escaping():
    assert percent_decode("we%20ir+d=%25%0D%0AX\xc3\xa9") == "we ir+d=%\r\nXé"


def test_rcpt_domain():
    assert rcpt_domain("RCPT  TO:<x@Example.ORG>  NOTIFY=NEVER") == "example.org"
    assert rcpt_domain("rcpt to:bare@host.test") == "host.test"


def test_userdb_default_and_domain_routes(tmp_path):
    db = UserDB(tmp_path / "u.sqlite")
    db.add_user("carol", "x", {"imap": Backend("10.0.0.1", 143)}, scrypt_ln=10)
    db.set_default("imap", Backend("10.0.0.9", 143))
    db.set_default("pop3", Backend("10.0.0.9", 110))
    assert db.backend("carol", "imap") == Backend("10.0.0.1", 143)
    assert db.backend("carol", "pop3") == Backend("10.0.0.9", 110)
    assert db.backend("carol", "smtp") is None
    db.set_domain("Example.test", Backend("10.0.0.2", 25))
    assert db.domain_backend("example.TEST") == Backend("10.0.0.2", 25)
    with pytest.raises(ValueError):
        db.add_user("*", "x")
    db.close()


def test_cli_adduser_and_list(tmp_path, capsys):
    db = str(tmp_path / "cli.sqlite")
    assert (
        main(
            [
                "--db",
                db,
                "adduser",
                "dave",
                "--password",
                "pw",
                "--scrypt-ln",
                "10",
                "--imap",
                "127.0.0.1:1143",
                "--store-plain",
            ]
        )
        == 0
    )
    assert main(["--db", db, "default", "--smtp", "127.0.0.1:1025"]) == 0
    assert main(["--db", db, "domain", "example.test", "127.0.0.1:2525"]) == 0
    assert main(["--db", db, "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "dave (plain stored) imap=127.0.0.1:1143",
        "default smtp=127.0.0.1:1025",
        "domain example.test smtp=127.0.0.1:2525",
    ]
    assert main(["--db", db, "deluser", "dave"]) == 0
    assert main(["--db", db, "deluser", "dave"]) == 1


# -- the HTTP service


def test_ok_over_http10_then_close(users):
    answer = ask(users.port, request())
    assert answer == (
        b"HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\n"
        b"Auth-Port: 1143\r\nContent-Length: 0\r\n\r\n"
    )
    [q] = users.requests
    assert q.user == "alice" and q.password == "secret" and q.raw == request()


def test_http11_keep_alive_answers_in_order(users):
    with socket.create_connection(("127.0.0.1", users.port), timeout=5) as s:
        s.sendall(request(version="1.1") + request(password="bad", version="1.1"))
        got = b""
        while got.count(b"\r\n\r\n") < 2:
            got += s.recv(4096)
        first, second = got.split(b"\r\n\r\n")[:2]
        assert b"Auth-Status: OK" in first
        assert b"Auth-Status: Invalid login or password" in second
        s.sendall(request(user="bob", password="pw", protocol="pop3", version="1.1"))
        assert b"Auth-Port: 1110" in s.recv(4096)


def test_failure_has_wait_until_last_attempt_and_smtp_code(users):
    h = headers(ask(users.port, request(password="bad")))
    assert h == {
        "Auth-Status": "Invalid login or password",
        "Auth-Wait": "1",
        "Content-Length": "0",
    }
    h = headers(ask(users.port, request(password="bad", protocol="smtp", attempt=3)))
    assert h["Auth-Error-Code"] == "535 5.7.8" and "Auth-Wait" not in h
    h = headers(ask(users.port, request(user="nobody")))
    assert h["Auth-Status"] == "Invalid login or password"


def test_user_without_backend_for_protocol_is_temporary(users):
    h = headers(ask(users.port, request(user="bob", password="pw", protocol="smtp")))
    assert h["Auth-Status"] == "Temporary server problem, try again later"
    assert h["Auth-Error-Code"] == "451 4.3.0"


def test_escaped_credentials_are_decoded(users):
    users.db.add_user("we ir+d", "p a%ss", {"imap": Backend("127.0.0.1", 1)}, scrypt_ln=10)
    h = headers(ask(users.port, request(user="we%20ir+d", password="p%20a%25ss")))
    assert h["Auth-Status"] == "OK"


def test_cram_md5_and_apop_need_stored_plain_password(users):
    salt = "<1896.697170952@mx.test>"
    digest = hmac.new(b"secret", salt.encode(), "md5").hexdigest()
    h = headers(
        ask(users.port, request("cram-md5", password=digest, extra=f"Auth-Salt: {salt}\r\n"))
    )
    assert h["Auth-Status"] == "OK" and h["Auth-Pass"] == "secret"
    apop = hashlib.md5(salt.encode() + b"secret").hexdigest()
    h = headers(ask(users.port, request("apop", password=apop, extra=f"Auth-Salt: {salt}\r\n")))
    assert h["Auth-Pass"] == "secret"
    # bob was created without --store-plain: his CRAM-MD5 digest cannot be checked.
    digest = hmac.new(b"pw", salt.encode(), "md5").hexdigest()
    h = headers(
        ask(users.port, request("cram-md5", "bob", digest, "pop3", extra=f"Auth-Salt: {salt}\r\n"))
    )
    assert h["Auth-Status"] == "Invalid login or password"


def test_smtp_auth_none_routes_on_rcpt_domain(users):
    none = "Auth-SMTP-Helo: cl\r\nAuth-SMTP-From: MAIL FROM:<a@b>\r\n"
    users.db.set_domain("example.test", Backend("127.0.0.1", 2525))
    h = headers(
        ask(
            users.port,
            request(
                "none", "", "", "smtp", extra=none + "Auth-SMTP-To: RCPT TO:<x@Example.test>\r\n"
            ),
        )
    )
    assert (h["Auth-Status"], h["Auth-Port"]) == ("OK", "2525")
    h = headers(
        ask(
            users.port,
            request(
                "none", "", "", "smtp", extra=none + "Auth-SMTP-To: RCPT TO:<x@other.test>\r\n"
            ),
        )
    )
    assert (h["Auth-Status"], h["Auth-Error-Code"]) == ("Relay access denied", "550 5.7.1")
    users.db.set_default("smtp", Backend("127.0.0.1", 2526))
    h = headers(
        ask(
            users.port,
            request(
                "none", "", "", "smtp", extra=none + "Auth-SMTP-To: RCPT TO:<x@other.test>\r\n"
            ),
        )
    )
    assert h["Auth-Port"] == "2526"


def test_rules_force_wait_garbage_500_and_drop(users):
    users.add_rule(lambda q: Reply.wait(2) if q.attempt == 7 else None, times=1)
    users.add_rule(lambda q: Reply.garbage(b"junk\r\n\r\n") if q.user == "g" else None)
    users.add_rule(lambda q: Reply.http_error() if q.user == "e" else None)
    users.add_rule(lambda q: Reply.dropped() if q.user == "d" else None)
    assert headers(ask(users.port, request(attempt=7))) == {
        "Auth-Status": "WAIT",
        "Auth-Wait": "2",
        "Content-Length": "0",
    }
    assert headers(ask(users.port, request(attempt=7)))["Auth-Status"] == "OK"  # times=1
    assert ask(users.port, request(user="g")) == b"junk\r\n\r\n"
    assert ask(users.port, request(user="e")) == (
        b"HTTP/1.0 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n"
    )
    assert ask(users.port, request(user="d")) == b""
    assert len(users.requests) == 5


def test_slow_rule_delays_the_normal_answer(users):
    users.add_rule(lambda q: Reply.slow(0.3))
    start = time.monotonic()
    h = headers(ask(users.port, request()))
    assert time.monotonic() - start >= 0.3
    assert h["Auth-Status"] == "OK"


def test_json_rules(users):
    users.rules.append(
        rule_from_json(
            json.loads(
                '{"when": {"Auth-User": "x y", "Auth-Protocol": "smtp"},'
                ' "reply": {"fail": "Nope", "code": "550 5.7.1"}, "times": 1}'
            )
        )
    )
    h = headers(ask(users.port, request(user="x%20y", protocol="smtp")))
    assert (h["Auth-Status"], h["Auth-Error-Code"]) == ("Nope", "550 5.7.1")
    h = headers(ask(users.port, request(user="x%20y", protocol="smtp")))
    assert h["Auth-Status"] == "Invalid login or password"


def test_malformed_request_is_logged_and_closed(users):
    answer = ask(users.port, b"GARBAGE\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 400 ")
    assert users.requests[-1].error


# -- the fake backend


def talk(port: int, data: bytes, until: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while until not in out:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    return out


def test_imap_login_with_literals_as_nginx_sends_it(fake_backend):
    with socket.create_connection(("127.0.0.1", fake_backend.port("imap")), timeout=5) as s:
        assert s.recv(100) == b"* OK fake imap ready\r\n"
        s.sendall(b"a1 LOGIN {5}\r\n")
        assert s.recv(100) == b"+ go ahead\r\n"
        s.sendall(b"alice {6}\r\n")
        assert s.recv(100) == b"+ go ahead\r\n"
        s.sendall(b"secret\r\n")
        assert s.recv(100) == b"a1 OK LOGIN completed\r\n"
    assert fake_backend.sessions[-1].login == ("alice", "secret")


def test_imap_wrong_password_and_quoted_login(fake_backend):
    out = talk(fake_backend.port("imap"), b'a LOGIN alice "nope"\r\nb LOGIN "bob" pw\r\n', b"b OK")
    assert b"a NO [AUTHENTICATIONFAILED]" in out and b"b OK LOGIN completed" in out
    assert fake_backend.stats.failed_logins == 1


def test_pop3_retr_is_dot_stuffed(fake_backend):
    out = talk(
        fake_backend.port("pop3"),
        b"USER bob\r\nPASS pw\r\nSTAT\r\nRETR 2\r\nQUIT\r\n",
        b"+OK fake pop3 bye\r\n",
    )
    msg = fake_backend.mailbox[1]
    assert f"+OK 2 {sum(map(len, fake_backend.mailbox))}\r\n".encode() in out
    assert b"\r\n..leading dot\r\n" in out and out.count(b"\r\n.\r\n") == 1
    assert b"+OK %d octets\r\n" % len(msg) in out


def test_smtp_xclient_and_data_are_recorded(fake_backend):
    out = talk(
        fake_backend.port("smtp"),
        b"EHLO mx.test\r\nXCLIENT ADDR=192.0.2.1 LOGIN=bob NAME=[UNAVAILABLE]\r\nEHLO cl\r\n"
        b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nSubject: t\r\n\r\n..dot\r\n.\r\nQUIT\r\n",
        b"221 ",
    )
    assert out.count(b"220 fake.backend.test ESMTP fake ready\r\n") == 2
    [m] = fake_backend.messages
    assert m.xclient == {"ADDR": "192.0.2.1", "LOGIN": "bob", "NAME": "[UNAVAILABLE]"}
    assert (m.helo, m.mail_from, m.rcpt_to) == ("cl", "FROM:<a@b>", ["TO:<c@d>"])
    assert m.data == b"Subject: t\r\n\r\n.dot\r\n"


def test_smtp_auth_plain(fake_backend):
    good = b"AUTH PLAIN AGJvYgBwdw==\r\n"  # \0bob\0pw
    out = talk(fake_backend.port("smtp"), b"EHLO x\r\nAUTH PLAIN AGJvYgB4\r\n" + good, b"235 ")
    assert b"535 5.7.8" in out and out.endswith(b"235 2.7.0 Authentication successful\r\n")


def test_bulk_commands_count_bytes(fake_backend):
    port = fake_backend.port("imap")
    out = talk(port, b"a X-SINK 100000\r\n" + b"z" * 100000, b"a OK X-SINK 100000 bytes\r\n")
    assert out.startswith(b"* OK fake imap ready\r\n+ ready\r\n")
    assert fake_backend.stats.bytes_sunk == 100000
    out = talk(port, b"b X-ECHO 6\r\nabcdefc NOOP\r\n", b"c OK")
    assert b"+ ready\r\nabcdefb OK X-ECHO 6 bytes\r\nc OK NOOP completed\r\n" in out
    out = talk(fake_backend.port("pop3"), b"X-BULK 70000\r\n", b"+OK X-BULK 70000 bytes\r\n")
    assert out.count(b"x") == 70000


def test_after_login_echo_mode(loop_thread):
    be = BackendServer(users={"u": "p"}, after_login="echo")
    port = loop_thread.run(be.listen("pop3"))
    try:
        out = talk(port, b"USER u\r\nPASS p\r\nanything at all\r\n", b"anything at all\r\n")
        assert out.endswith(b"+OK logged in\r\nanything at all\r\n")
    finally:
        loop_thread.run(be.stop())


def test_proxy_protocol_headers(fake_backend, loop_thread):
    port = loop_thread.run(fake_backend.listen("imap", proxy_protocol=True))
    out = talk(port, b"PROXY TCP4 192.0.2.1 192.0.2.2 1234 143\r\na NOOP\r\n", b"a OK")
    assert out == b"* OK fake imap ready\r\na OK NOOP completed\r\n"
    p = fake_backend.sessions[-1].proxy
    assert (p.version, p.src, p.dst) == (1, ("192.0.2.1", 1234), ("192.0.2.2", 143))
    v2 = (
        b"\r\n\r\n\x00\r\nQUIT\n\x21\x11"
        + struct.pack("!H", 12)
        + socket.inet_aton("198.51.100.7")
        + socket.inet_aton("127.0.0.1")
        + struct.pack("!HH", 40001, 993)
    )
    talk(port, v2 + b"a NOOP\r\n", b"a OK")
    p = fake_backend.sessions[-1].proxy
    assert (p.version, p.command, p.src) == (2, "PROXY", ("198.51.100.7", 40001))


def test_next_backend_past_the_ones_reported_down(users):
    """fastmail's backend failover: Auth-Failed-Server lines skip a user's backends in order;
    past the last one the answer is the temporary failure."""
    users.db.add_user(
        "erin",
        "pw",
        {"imap": [Backend("127.0.0.1", 1), Backend("127.0.0.1", 2), Backend("::1", 3)]},
        scrypt_ln=10,
    )
    failed = ""
    ports = []
    for down in ("127.0.0.1:1", "127.0.0.1:2", "[::1]:3"):
        h = headers(ask(users.port, request(user="erin", password="pw", extra=failed)))
        ports.append(h.get("Auth-Port"))
        failed += f"Auth-Failed-Server: {down}\r\n"
    h = headers(ask(users.port, request(user="erin", password="pw", extra=failed)))
    assert ports == ["1", "2", "3"] and h["Auth-Status"] == TEMP_TEXT
    assert users.requests[-1].get_all("Auth-Failed-Server") == [
        "127.0.0.1:1",
        "127.0.0.1:2",
        "[::1]:3",
    ]


def test_userdb_several_backends_replace_and_list(tmp_path, capsys):
    db = str(tmp_path / "more.sqlite")
    args = ["--db", db, "adduser", "fay", "--password", "pw", "--scrypt-ln", "10"]
    assert main([*args, "--imap", "10.0.0.1:143", "--imap", "10.0.0.2:143"]) == 0
    assert main(["--db", db, "default", "--pop3", "10.0.0.9:110", "--pop3", "10.0.0.8:110"]) == 0
    assert main(["--db", db, "list"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "fay imap=10.0.0.1:143,10.0.0.2:143",
        "default pop3=10.0.0.9:110,10.0.0.8:110",
    ]
    users = UserDB(db)
    assert users.backends("fay", "pop3") == [Backend("10.0.0.9", 110), Backend("10.0.0.8", 110)]
    users.add_user("fay", "pw", {"imap": Backend("10.0.0.3", 143)}, scrypt_ln=10)
    assert users.backends("fay", "imap") == [Backend("10.0.0.3", 143)]  # the old ones gone
    users.close()


def test_https_service(loop_thread, tmp_path, certs):
    db = UserDB(tmp_path / "tls.sqlite")
    db.add_user("alice", "secret", {"imap": Backend("127.0.0.1", 1143)}, scrypt_ln=10)
    server = AuthServer(db)
    loop_thread.run(server.start(tls=certs.server_context()))
    try:
        assert server.url == f"https://127.0.0.1:{server.port}/auth"
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
            with certs.client_context().wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(request())
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
        assert headers(data)["Auth-Status"] == "OK"
    finally:
        loop_thread.run(server.stop())
        db.close()
