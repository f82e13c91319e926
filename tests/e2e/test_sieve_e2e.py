"""ManageSieve (RFC 5804) through fastmail to Dovecot's managesieve (Pigeonhole), beyond nginx
(which has no ManageSieve): Debian's sieve-connect uploads a script, lists it and reads it back
byte for byte; raw clients check the capability greeting, literals, pipelining after the
login, a wrong password with its retry, and the auth_http request (`Auth-Protocol: sieve`).
The STARTTLS tests (client side, and proxy_ssl starttls to Dovecot) need TLS in the engine.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from support import MissingPackage
from support.clients import LineClient
from support.fastmail import Proxy, add_user, fastmail_only, mail_block, server
from support.process import wait_text

USER, PW = "carol", "carol-pass"  # alice's mailbox is read by other tests: keep away from it
SCRIPT = (
    b'require ["fileinto", "vacation"];\r\n'
    b"# f\xc3\xbcr carol, with a {literal-looking} line and a backslash \\\r\n"
    b'if header :contains "subject" "[spam]" {\r\n  fileinto "Junk";\r\n}\r\n'
)


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def plain(user: str = USER, password: str = PW) -> bytes:
    return b64(f"\0{user}\0{password}".encode())


@pytest.fixture
def sieve_proxy(
    request: pytest.FixtureRequest, proxy: Callable[..., Proxy], authd, dovecot, free_port
) -> Callable[..., Proxy]:
    """`sieve_proxy(extra="")` -> fastmail serving ManageSieve on `.port`, carol's backend
    being Dovecot's managesieve."""
    fastmail_only(request.node.callspec.params["proxy"], "ManageSieve")
    if not dovecot.sieve_port:
        pytest.skip(str(MissingPackage("dovecot managesieve-login", "dovecot-managesieved")))

    def start(extra: str = "") -> Proxy:
        add_user(authd, USER, PW, {"sieve": ("127.0.0.1", dovecot.sieve_port)})
        port = free_port()
        p = proxy(
            mail_block(authd, server(port, "sieve", extra)),
            greetings=[(port, b'"IMPLEMENTATION"')],
        )
        p.port = port  # type: ignore[attr-defined]
        return p

    return start


def sieve_connect(
    port: int, *action: str, password: str = PW, tls: list[str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Debian's sieve-connect (0.90) as a user runs it; cleartext unless `tls` options."""
    binary = shutil.which("sieve-connect")
    if binary is None:
        pytest.skip(str(MissingPackage("sieve-connect", "sieve-connect")))
    opts = tls if tls is not None else ["--clearchan", "--notlsverify"]
    return subprocess.run(
        [binary, "--nosrv", "-s", "127.0.0.1", "-p", str(port), "-u", USER, "--passwordfd", "0",
         *opts, *action],
        input=password.encode() + b"\n",
        capture_output=True,
        timeout=30,
    )  # fmt: skip


def read_response(c: LineClient) -> bytes:
    """Lines up to and including the OK, NO or BYE line (literals read whole)."""
    out = b""
    while True:
        line = c.read_until(b"\r\n")
        out += line
        if line.endswith(b"}\r\n") and b"{" in line:
            n = int(line[line.rindex(b"{") + 1 : -3].rstrip(b"+"))
            out += c.read_until(re.compile(rb"\A[\s\S]{%d}" % n))  # the literal's octets
            continue
        if line[:2].upper() in (b"OK", b"NO") or line[:3].upper() == b"BYE":
            return out


def connect(port: int) -> LineClient:
    c = LineClient("127.0.0.1", port, timeout=10)
    greeting = read_response(c)
    assert greeting.endswith(b'OK "ManageSieve ready."\r\n'), greeting
    return c


def test_sieve_connect_uploads_lists_and_reads_back(sieve_proxy, authd, dovecot, tmp_path):
    p = sieve_proxy()
    name = f"t-{uuid.uuid4().hex[:8]}"
    local = tmp_path / "filter.sieve"
    local.write_bytes(SCRIPT)
    up = sieve_connect(p.port, "--upload", "--localsieve", str(local), "--remotesieve", name)
    assert up.returncode == 0, up.stderr.decode(errors="replace")
    listed = sieve_connect(p.port, "--list")
    assert listed.returncode == 0, listed.stderr.decode(errors="replace")
    assert f'"{name}"'.encode() in listed.stdout.splitlines()  # sieve-connect prints it so
    back = tmp_path / "back.sieve"
    down = sieve_connect(p.port, "--download", "--localsieve", str(back), "--remotesieve", name)
    assert down.returncode == 0, down.stderr.decode(errors="replace")
    assert back.read_bytes() == SCRIPT
    # what Dovecot stored is what was uploaded through the proxy
    assert (Path(dovecot.mail_dir) / USER / "sieve" / f"{name}.sieve").read_bytes() == SCRIPT
    assert len(authd.requests) == 3
    for req in authd.requests:
        assert (req.protocol, req.auth_method, req.user) == ("sieve", "plain", USER)
        assert req["Auth-Protocol"] == "sieve"
    p.wait_count("client logged in", 3)


def test_raw_client_literals_pipelining_and_getscript_byte_for_byte(sieve_proxy, authd):
    p = sieve_proxy("sieve_auth plain login;")
    name = f"raw-{uuid.uuid4().hex[:8]}".encode()
    c = connect(p.port)
    try:
        # AUTHENTICATE LOGIN with a literal answer, then PUTSCRIPT sent before the login
        # ends: the relay hands it to Dovecot after the login
        c.send(b'AUTHENTICATE "LOGIN"\r\n')
        assert c.read_until(b"\r\n") == b'"VXNlcm5hbWU6"\r\n'
        c.send(b'"' + b64(USER.encode()) + b'"\r\n')
        assert c.read_until(b"\r\n") == b'"UGFzc3dvcmQ6"\r\n'
        pw = b64(PW.encode())
        c.send(
            b"{%d+}\r\n%s\r\n" % (len(pw), pw)
            + b'PUTSCRIPT "%s" {%d+}\r\n%s\r\n' % (name, len(SCRIPT), SCRIPT)
        )
        assert read_response(c) == b'OK "Logged in."\r\n'  # Dovecot's, relayed
        assert read_response(c) == b'OK "PUTSCRIPT completed."\r\n'
        c.send(b'GETSCRIPT "%s"\r\n' % name)
        assert read_response(c) == (
            b'{%d}\r\n%s\r\nOK "Getscript completed."\r\n' % (len(SCRIPT), SCRIPT)
        )
        c.send(b'DELETESCRIPT "%s"\r\nLOGOUT\r\n' % name)
        assert read_response(c) == b'OK "Deletescript completed."\r\n'
        assert read_response(c) == b'OK "Logout completed."\r\n'
    finally:
        c.close()
    [req] = authd.requests
    assert (req.protocol, req.auth_method, req.user) == ("sieve", "plain", USER)


def test_greeting_announces_what_the_config_says(sieve_proxy):
    p = sieve_proxy("sieve_capabilities fileinto vacation; sieve_auth plain oauthbearer;")
    c = LineClient("127.0.0.1", p.port, timeout=10)
    try:
        assert read_response(c) == (
            b'"IMPLEMENTATION" "fastmail"\r\n"SIEVE" "fileinto vacation"\r\n'
            b'"SASL" "PLAIN OAUTHBEARER"\r\n"VERSION" "1.0"\r\nOK "ManageSieve ready."\r\n'
        )
        # commands of the authenticated state are refused before login, with their literal
        c.send(b'PUTSCRIPT "x" {4+}\r\nNOOP\r\nNOOP "t"\r\n')
        assert read_response(c) == b'NO "Authenticate first."\r\n'
        assert read_response(c) == b'OK (TAG "t") "Done"\r\n'
    finally:
        c.close()


def test_wrong_password_then_retry_on_the_same_connection(sieve_proxy, authd):
    p = sieve_proxy()
    c = connect(p.port)
    try:
        # the auth server answers Auth-Wait (fastmail.testing.authd's fail_wait=1): NO, and
        # the client may try again
        c.send(b'AUTHENTICATE "PLAIN" "' + plain(password="wrong") + b'"\r\n')
        assert read_response(c) == b'NO "Invalid login or password"\r\n'
        c.send(b'AUTHENTICATE "PLAIN" "' + plain() + b'"\r\nLISTSCRIPTS\r\n')
        assert read_response(c) == b'OK "Logged in."\r\n'
        assert read_response(c).endswith(b'OK "Listscripts completed."\r\n')
    finally:
        c.close()
    assert [r["Auth-Login-Attempt"] for r in authd.requests] == ["1", "2"]
    assert all(r.protocol == "sieve" for r in authd.requests)
    p.wait_log('client login failed: "Invalid login or password"')
    bad = sieve_connect(p.port, "--list", password="wrong")
    assert bad.returncode != 0


def test_debug_log_shows_the_sieve_login_without_credentials(sieve_proxy, tmp_path):
    path = tmp_path / "debug.log"
    p = sieve_proxy(f"error_log {path} debug;")
    c = connect(p.port)
    try:
        c.send(b'AUTHENTICATE "PLAIN" {%d+}\r\n%s\r\nLOGOUT\r\n' % (len(plain()), plain()))
        assert read_response(c) == b'OK "Logged in."\r\n'
        assert read_response(c) == b'OK "Logout completed."\r\n'
    finally:
        c.close()
    # the server's own error_log takes its sessions' lines
    log = wait_text(path.read_text, "close mail connection", "debug log", 5.0, 0.02, 3000)
    assert 'sieve auth command: "AUTHENTICATE "PLAIN" ********"' in log
    assert 'mail proxy send authenticate: "AUTHENTICATE "PLAIN" ********\\r\\n"' in log
    assert PW not in log and plain().decode() not in log


# --- TLS: these wait for TLS in the engine ----------------------------------------------------


def test_starttls_with_sieve_connect(sieve_proxy, authd, certs, tmp_path):
    p = sieve_proxy(
        f"starttls only; ssl_certificate {certs.server_cert}; "
        f"ssl_certificate_key {certs.server_key};"
    )
    c = LineClient("127.0.0.1", p.port, timeout=10)
    try:
        # before TLS, no mechanism: STARTTLS first (RFC 5804 §1.7)
        assert b'"SASL" ""\r\n"STARTTLS"\r\n' in read_response(c)
        c.send(b'AUTHENTICATE "PLAIN" "' + plain() + b'"\r\n')
        assert read_response(c) == b'NO (ENCRYPT-NEEDED) "Issue STARTTLS first."\r\n'
    finally:
        c.close()
    name = f"tls-{uuid.uuid4().hex[:8]}"
    local = tmp_path / "f.sieve"
    local.write_bytes(SCRIPT)
    tls = ["--tlscafile", str(certs.ca_cert), "--tlshostname", "localhost"]
    up = sieve_connect(
        p.port, "--upload", "--localsieve", str(local), "--remotesieve", name, tls=tls
    )
    assert up.returncode == 0, up.stderr.decode(errors="replace")
    [req] = authd.requests
    assert req.protocol == "sieve" and req["Auth-SSL"] == "on"
    p.wait_log("client logged in")


def test_backend_starttls_to_dovecot_managesieve(sieve_proxy, authd, dovecot, certs):
    """proxy_ssl starttls: Dovecot's greeting, STARTTLS, TLS, its capabilities again
    (RFC 5804 §2.2), then the login: Dovecot logs that login as over TLS."""
    p = sieve_proxy(
        f"proxy_ssl starttls; proxy_ssl_verify on; "
        f"proxy_ssl_trusted_certificate {certs.ca_cert}; proxy_ssl_name localhost;"
    )

    def logins() -> list[str]:
        return [ln for ln in dovecot.log().splitlines() if f"Login: user=<{USER}>" in ln]

    before = len(logins())
    c = connect(p.port)
    try:
        c.send(b'AUTHENTICATE "PLAIN" "' + plain() + b'"\r\nLOGOUT\r\n')
        assert read_response(c) == b'OK "Logged in."\r\n'
        assert read_response(c) == b'OK "Logout completed."\r\n'
    finally:
        c.close()
    p.wait_log("client logged in")
    # Dovecot's log process may write the line after the client has its answers
    deadline = time.monotonic() + 5
    while len(logins()) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    [line] = logins()[before:]
    assert ", TLS," in line, line
