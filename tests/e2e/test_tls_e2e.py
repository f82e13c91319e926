"""TLS through the proxy with real clients: implicit TLS and STARTTLS for IMAP, POP3 and
SMTP, client certificates, ALPN, STARTTLS injection, handshake failures and stalls; and,
beyond nginx (fastmail only), SNI among server{} blocks and TLS to the backend (Dovecot).
Certificates come from trustme (support/certs.py); nginx runs the nginx-behaviour tests too.
"""

from __future__ import annotations

import imaplib
import poplib
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import time

import pytest
import trustme

from fastmail.testing.authd import Reply
from support.certs import openssl_serial
from support.fastmail import add_user, fastmail_only, mail_block


def tls_server(port: int, protocol: str, certs, extra: str = "", ssl_listen: bool = True) -> str:
    flag = " ssl" if ssl_listen else ""
    return (
        f"server {{ listen 127.0.0.1:{port}{flag}; protocol {protocol}; "
        f"ssl_certificate {certs.server_cert}; ssl_certificate_key {certs.server_key}; "
        f"{extra} }}\n"
    )


def client_ctx(certs) -> ssl.SSLContext:
    return certs.client_context()


@pytest.fixture
def users(authd, dovecot, postfix):
    add_user(
        authd,
        "alice",
        "secret",
        {
            "imap": ("127.0.0.1", dovecot.imap_port),
            "pop3": ("127.0.0.1", dovecot.pop3_port),
            "smtp": ("127.0.0.1", postfix.smtp_port),
        },
        True,
    )
    return authd


def test_imap4_ssl_login_and_select(proxy, users, certs, free_port):
    port = free_port()
    p = proxy(mail_block(users, tls_server(port, "imap", certs)), greetings=[])
    _wait_tls(port, certs)
    with imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=client_ctx(certs), timeout=10) as m:
        assert m.welcome.startswith(b"* OK")
        assert m.login("alice", "secret")[0] == "OK"
        typ, data = m.select("INBOX", readonly=True)
        assert typ == "OK" and data[0] is not None and int(data[0]) >= 1
        m.logout()
    [req] = users.requests
    assert req["Auth-SSL"] == "on"
    assert req["Auth-SSL-Protocol"].startswith("TLSv1.")
    assert req["Auth-SSL-Cipher"]
    assert "Auth-SSL-Verify" not in req.header_names
    p.wait_log("client logged in")


def _wait_tls(port: int, certs, timeout: float = 10.0) -> None:
    """The proxy answers TLS on `port` (the plain greeting probe cannot tell)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                with client_ctx(certs).wrap_socket(s, server_hostname="localhost") as t:
                    t.recv(100)
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _starttls_server(port: int, protocol: str, certs, extra: str = "") -> str:
    return tls_server(port, protocol, certs, f"starttls on; {extra}", ssl_listen=False)


@pytest.fixture
def tls_proxy(proxy, users, certs, free_port):
    """`tls_proxy(protocol, implicit=True, extra="")` -> (Proxy, port), ready for TLS."""

    def start(protocol: str, implicit: bool = True, extra: str = "", main: str = ""):
        port = free_port()
        if protocol == "smtp":
            extra = "smtp_auth plain login; " + extra
        srv = (tls_server if implicit else _starttls_server)(port, protocol, certs, extra)
        greeting = {"imap": b"* OK", "pop3": b"+OK", "smtp": b"220", "sieve": b'"'}[protocol]
        p = proxy(mail_block(users, srv), greetings=[] if implicit else [(port, greeting)])
        if implicit:
            _wait_tls(port, certs)
        p.port = port
        return p

    return start


def test_imap_starttls_login(tls_proxy, users, certs):
    p = tls_proxy("imap", implicit=False)
    with imaplib.IMAP4("127.0.0.1", p.port, timeout=10) as m:
        m.starttls(ssl_context=client_ctx(certs))
        assert m.login("alice", "secret")[0] == "OK"
        assert m.select("INBOX", readonly=True)[0] == "OK"
        m.logout()
    assert users.requests[-1]["Auth-SSL"] == "on"


def test_pop3_ssl_and_stls(tls_proxy, certs, users):
    p = tls_proxy("pop3")
    m = poplib.POP3_SSL("127.0.0.1", p.port, context=client_ctx(certs), timeout=10)
    m.user("alice")
    assert m.pass_("secret").startswith(b"+OK")
    assert m.stat()[0] >= 1
    m.quit()
    p2 = tls_proxy("pop3", implicit=False)
    m2 = poplib.POP3("127.0.0.1", p2.port, timeout=10)
    assert m2.stls(context=client_ctx(certs)).startswith(b"+OK")
    m2.user("alice")
    assert m2.pass_("secret").startswith(b"+OK")
    m2.quit()
    assert all(r["Auth-SSL"] == "on" for r in users.requests)


def test_smtp_ssl_and_starttls(tls_proxy, certs, users):
    p = tls_proxy("smtp")
    with smtplib.SMTP_SSL("127.0.0.1", p.port, context=client_ctx(certs), timeout=10) as s:
        s.ehlo("client.test")
        assert "starttls" not in s.esmtp_features  # already TLS
        assert s.login("alice", "secret")[0] == 235
        assert s.noop()[0] == 250
    p2 = tls_proxy("smtp", implicit=False)
    with smtplib.SMTP("127.0.0.1", p2.port, timeout=10) as s:
        s.ehlo("client.test")
        assert "starttls" in s.esmtp_features
        assert s.starttls(context=client_ctx(certs))[0] == 220
        s.ehlo("client.test")
        assert s.login("alice", "secret")[0] == 235
        assert s.noop()[0] == 250
    assert [r["Auth-SSL"] for r in users.requests] == ["on", "on"]


def _read_until(sock, end: bytes, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    buf = b""
    while end not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            break
        buf += chunk
    return buf


INJECTION = {
    # (greeting end, STARTTLS + injected command, go-ahead, probe, probe's answer prefix)
    "imap": (b"\r\n", b"a STARTTLS\r\nb CAPABILITY\r\n", b"a OK", b"c NOOP\r\n", b"c OK"),
    "pop3": (b"\r\n", b"STLS\r\nCAPA\r\n", b"+OK", b"NOOP\r\n", b"+OK\r\n"),
    "smtp": (b"\r\n", b"STARTTLS\r\nMAIL FROM:<evil@x>\r\n", b"220", b"NOOP\r\n", b"250"),
}


@pytest.mark.parametrize("protocol", ["imap", "pop3", "smtp"])
def test_starttls_injection_is_discarded(tls_proxy, certs, protocol):
    p = tls_proxy(protocol, implicit=False)
    greet_end, attack, go, probe, answer = INJECTION[protocol]
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as raw:
        _read_until(raw, greet_end)
        if protocol == "smtp":
            raw.sendall(b"EHLO x\r\n")
            _read_until(raw, b"250 ")
        raw.sendall(attack)  # one segment: the command and the injected one
        reply = _read_until(raw, b"\r\n")
        assert reply.startswith(go), reply
        with client_ctx(certs).wrap_socket(raw, server_hostname="localhost") as t:
            t.sendall(probe)
            got = _read_until(t, b"\r\n")
            t.settimeout(0.5)
            with pytest.raises(TimeoutError):
                got += t.recv(4096)  # nothing else: no late answer to the injected command
    # the first thing answered inside TLS is the probe, never the injected command
    assert got.startswith(answer), got
    if protocol == "imap":
        assert b"b " not in got and b"CAPABILITY" not in got


def test_plain_client_on_tls_port(tls_proxy):
    p = tls_proxy("imap")
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        s.sendall(b"a LOGIN alice secret\r\n")
        s.settimeout(5)
        data = b""
        try:
            while chunk := s.recv(4096):
                data += chunk
        except ConnectionResetError:
            pass
    assert b"OK" not in data  # no greeting or reply in plain text
    p.wait_log("wrong version number")


def test_stalled_handshake_times_out_without_leaks(proxy, users, certs, free_port):
    port = free_port()
    p = proxy(mail_block(users, tls_server(port, "imap", certs), "timeout 1s;"))
    _wait_tls(port, certs)
    base = p.baseline(ignore_ports=[users.port])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        hello = _client_hello(certs)
        s.sendall(hello[: len(hello) // 2])  # half a ClientHello, then nothing
        s.settimeout(5)
        start = time.monotonic()
        assert s.recv(100) == b""
        assert time.monotonic() - start < 4
    p.assert_no_leaks(base, ignore_ports=[users.port])


def _client_hello(certs) -> bytes:
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_ctx(certs).wrap_bio(inc, out, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def test_untrusted_and_wrong_name_certificates_are_refused(tls_proxy, certs):
    p = tls_proxy("imap")
    other = ssl.create_default_context()
    trustme.CA().configure_trust(other)  # a CA that did not sign the proxy's certificate
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        imaplib.IMAP4_SSL("127.0.0.1", p.port, ssl_context=other, timeout=10)
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
            client_ctx(certs).wrap_socket(s, server_hostname="mail.wrong.test")


def test_expired_certificate_is_refused(proxy, users, certs, free_port, tmp_path):
    import datetime

    leaf = certs.ca.issue_cert(
        "localhost", not_after=datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    )
    cert, key = tmp_path / "old.crt", tmp_path / "old.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    tmp_path.chmod(0o755)
    for f in (cert, key):
        f.chmod(0o644)
    port = free_port()
    srv = (
        f"server {{ listen 127.0.0.1:{port} ssl; protocol imap; "
        f"ssl_certificate {cert}; ssl_certificate_key {key}; }}"
    )
    proxy(mail_block(users, srv))
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                client_ctx(certs).wrap_socket(s, server_hostname="localhost")
            pytest.fail("an expired certificate was accepted")
        except ssl.SSLCertVerificationError as e:
            assert "certificate has expired" in str(e)
            return
        except ConnectionRefusedError:
            assert time.monotonic() < deadline
            time.sleep(0.05)


@pytest.fixture
def client_cert(certs, tmp_path):
    leaf = certs.ca.issue_cert("client.test", common_name="client one")
    path = tmp_path / "client.pem"
    leaf.private_key_and_cert_chain_pem.write_to_path(str(path))
    return path


def test_verify_client_on(tls_proxy, certs, users, client_cert):
    p = tls_proxy(
        "imap",
        extra=f"ssl_verify_client on; ssl_client_certificate {certs.ca_cert}; "
        "auth_http_pass_client_cert on;",
    )
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        with client_ctx(certs).wrap_socket(s, server_hostname="localhost") as t:
            assert _read_until(t, b"\r\n") == b"* BYE No required SSL certificate\r\n"
    p.wait_log("client sent no required SSL certificate while SSL handshaking")
    ctx = client_ctx(certs)
    ctx.load_cert_chain(str(client_cert))
    with imaplib.IMAP4_SSL("127.0.0.1", p.port, ssl_context=ctx, timeout=10) as m:
        assert m.login("alice", "secret")[0] == "OK"
        m.logout()
    req = users.requests[-1]
    assert req["Auth-SSL-Verify"] == "SUCCESS"
    assert req["Auth-SSL-Subject"].startswith("CN=client one,")  # RFC 2253: reversed
    assert "O=fastmail test CA" in req["Auth-SSL-Issuer"]
    assert len(req["Auth-SSL-Fingerprint"]) == 40
    assert req["Auth-SSL-Serial"] == openssl_serial(client_cert.read_bytes())
    assert req["Auth-SSL-Cert"].startswith("-----BEGIN%20CERTIFICATE-----%0A")


def test_verify_client_optional_no_ca_self_signed(tls_proxy, certs, users, tmp_path):
    p = tls_proxy("imap", extra="ssl_verify_client optional_no_ca;")
    stranger = trustme.CA().issue_cert("x.test", common_name="stranger")
    path = tmp_path / "stranger.pem"
    stranger.private_key_and_cert_chain_pem.write_to_path(str(path))
    ctx = client_ctx(certs)
    ctx.load_cert_chain(str(path))
    with imaplib.IMAP4_SSL("127.0.0.1", p.port, ssl_context=ctx, timeout=10) as m:
        assert m.login("alice", "secret")[0] == "OK"
        m.logout()
    verify = users.requests[-1]["Auth-SSL-Verify"]
    assert verify == "FAILED:unable to verify the first certificate"


def test_sieve_client_certificate_and_alpn(request, tls_proxy, certs, client_cert):
    """Beyond nginx: implicit-TLS ManageSieve refuses a missing client certificate with
    RFC 5804's BYE and takes ALPN's `managesieve` (IANA's id)."""
    fastmail_only(request.node.callspec.params["proxy"], "ManageSieve")
    verify = f"ssl_verify_client on; ssl_client_certificate {certs.ca_cert};"
    p = tls_proxy("sieve", extra=verify)
    ctx = client_ctx(certs)
    ctx.set_alpn_protocols(["h2", "managesieve"])
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            assert t.selected_alpn_protocol() == "managesieve"
            assert _read_until(t, b"\r\n") == b'BYE "No required SSL certificate"\r\n'
    p.wait_log("client sent no required SSL certificate while SSL handshaking")
    ctx = client_ctx(certs)
    ctx.load_cert_chain(str(client_cert))
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            assert b'\r\nOK "' in _read_until(t, b'OK "')  # the capability list, then OK


def test_alpn_mismatch_is_rejected(tls_proxy, certs):
    p = tls_proxy("imap")
    ctx = client_ctx(certs)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        # both send the no_application_protocol alert
        with pytest.raises(ssl.SSLError, match="alert no application protocol"):
            ctx.wrap_socket(s, server_hostname="localhost")
    p.wait_log("no application protocol")
    ctx = client_ctx(certs)
    ctx.set_alpn_protocols(["h2", "imap"])
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            assert t.selected_alpn_protocol() == "imap"
            assert _read_until(t, b"\r\n").startswith(b"* OK")


@pytest.mark.skipif(not shutil.which("curl"), reason="curl not installed")
def test_curl_imaps_and_ssl_reqd(tls_proxy, certs):
    p = tls_proxy("imap")
    out = subprocess.run(
        ["curl", "-sS", "--cacert", str(certs.ca_cert), "-u", "alice:secret",
         f"imaps://localhost:{p.port}/INBOX?ALL"],
        capture_output=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(b"* SEARCH")
    p2 = tls_proxy("imap", implicit=False)
    out = subprocess.run(
        ["curl", "-sS", "--ssl-reqd", "--cacert", str(certs.ca_cert), "-u", "alice:secret",
         f"imap://localhost:{p2.port}/INBOX?ALL"],
        capture_output=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(b"* SEARCH")


@pytest.mark.parametrize("protocol", ["imap", "pop3", "smtp"])
def test_openssl_s_client_starttls(tls_proxy, certs, protocol):
    p = tls_proxy(protocol, implicit=False)
    out = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{p.port}", "-starttls", protocol,
         "-servername", "localhost", "-CAfile", str(certs.ca_cert), "-verify_return_error"],
        input=b"", capture_output=True, timeout=30,
    )  # fmt: skip
    assert b"Verify return code: 0 (ok)" in out.stdout, out.stdout + out.stderr
    assert b"Server certificate" in out.stdout


@pytest.mark.skipif(not shutil.which("swaks"), reason="swaks not installed")
def test_swaks_tls_auth(tls_proxy, certs):
    p = tls_proxy("smtp", implicit=False)
    out = subprocess.run(
        ["swaks", "-s", "127.0.0.1", "-p", str(p.port), "-tls", "--tls-verify",
         "--tls-ca-path", str(certs.ca_cert), "--tls-sni", "localhost",
         "-au", "alice", "-ap", "secret", "-a", "PLAIN", "--quit-after", "AUTH"],
        capture_output=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert b"235 " in out.stdout


# --- beyond nginx -------------------------------------------------------------------------


def test_ssl_conf_command_relative_certificate(proxy, authd, certs, free_port):
    """`ssl_conf_command Certificate override.crt` (and PrivateKey) with relative paths, as
    nginx-tests' mail_ssl_conf_command.t writes them: both proxies resolve them against the
    config's directory and the client is served that certificate, not ssl_certificate's."""
    override = certs.ca.issue_cert("localhost", "127.0.0.1", common_name="override")
    files = {
        "override.crt": b"".join(blob.bytes() for blob in override.cert_chain_pems),
        "override.key": override.private_key_pem.bytes(),
    }
    port = free_port()
    extra = "ssl_conf_command Certificate override.crt; ssl_conf_command PrivateKey override.key;"
    proxy(mail_block(authd, tls_server(port, "imap", certs, extra)), files=files)
    _wait_tls(port, certs)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with client_ctx(certs).wrap_socket(s, server_hostname="localhost") as t:
            cert = t.getpeercert()
            assert cert is not None
            # typeshed gives every getpeercert() value one union of the subject's and the
            # subjectAltName's shapes, so an RDN's first item is not known to be a pair
            subject = dict(rdn[0] for rdn in cert["subject"])  # type: ignore[misc]
            assert _read_until(t, b"\r\n").startswith(b"* OK")
    assert subject["commonName"] == "override"


def test_sni_chooses_server_block(request, proxy, users, certs, free_port, tmp_path):
    fastmail_only(request.node.callspec.params["proxy"], "SNI server selection")
    ca = trustme.CA()
    files = {}
    for name in ("a.test", "b.test"):
        leaf = ca.issue_cert(name)
        path = tmp_path / f"{name}.pem"
        leaf.private_key_and_cert_chain_pem.write_to_path(str(path))
        path.chmod(0o644)
        files[name] = path
    tmp_path.chmod(0o755)
    port = free_port()
    servers = "".join(
        f"server {{ listen 127.0.0.1:{port} ssl; protocol smtp; server_name {n}; "
        f"smtp_auth plain; ssl_certificate {f}; ssl_certificate_key {f}; }}\n"
        for n, f in files.items()
    )
    proxy(mail_block(users, servers))
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    deadline = time.monotonic() + 10
    for name, unknown in (("a.test", False), ("b.test", False), ("c.test", True)):
        while True:
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        c = ssl.create_default_context()
        ca.configure_trust(c)
        c.check_hostname = False
        with c.wrap_socket(s, server_hostname=name) as t:
            greeting = _read_until(t, b"\r\n")
            cert = t.getpeercert()
        served = "a.test" if unknown else name
        assert greeting == f"220 {served} ESMTP ready\r\n".encode()
        assert cert is not None and ("DNS", served) in cert["subjectAltName"]


def test_sni_after_starttls_chooses_server_block(request, proxy, users, free_port, tmp_path):
    """Beyond nginx: two STARTTLS server{} blocks share a plain address; the SNI name of the
    STARTTLS handshake picks the block (its certificate and its capabilities), an unknown name
    the first one declared, which also greets."""
    fastmail_only(request.node.callspec.params["proxy"], "SNI server selection")
    ca = trustme.CA()
    port = free_port()
    servers = ""
    for name, cap in (("a.test", "XAAA"), ("b.test", "XBBB")):
        path = tmp_path / f"{name}.pem"
        ca.issue_cert(name).private_key_and_cert_chain_pem.write_to_path(str(path))
        path.chmod(0o644)
        servers += (
            f"server {{ listen 127.0.0.1:{port}; protocol imap; server_name {name}; "
            f"starttls on; imap_capabilities IMAP4rev1 {cap}; "
            f"ssl_certificate {path}; ssl_certificate_key {path}; }}\n"
        )
    tmp_path.chmod(0o755)
    proxy(mail_block(users, servers), greetings=[(port, b"* OK")])
    for name, served, cap in (("b.test", "b.test", "XBBB"), ("c.test", "a.test", "XAAA")):
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        ctx.check_hostname = False
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            assert _read_until(s, b"\r\n").startswith(b"* OK")
            s.sendall(b"a STARTTLS\r\n")
            assert _read_until(s, b"\r\n").startswith(b"a OK ")
            with ctx.wrap_socket(s, server_hostname=name) as t:
                cert = t.getpeercert()
                t.sendall(b"b CAPABILITY\r\n")
                caps = _read_until(t, b"b OK")
        assert cert is not None and ("DNS", served) in cert["subjectAltName"]
        other = "XAAA" if cap == "XBBB" else "XBBB"
        assert cap.encode() in caps and other.encode() not in caps


def test_ecdh_curve_list_is_enforced(proxy, users, certs, free_port):
    """ssl_ecdh_curve with a `:` list: a client offering only a group outside it is refused,
    one offering a listed group gets that group (openssl s_client, TLSv1.3; it may quit at
    its input's end before the greeting arrives, so the handshake's summary is the check)."""
    port = free_port()
    extra = "ssl_protocols TLSv1.2 TLSv1.3; ssl_ecdh_curve secp384r1:prime256v1;"
    proxy(mail_block(users, tls_server(port, "imap", certs, extra)), greetings=[])
    _wait_tls(port, certs)

    def s_client(group: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3",
             "-groups", group, "-CAfile", str(certs.ca_cert), "-servername", "localhost",
             "-crlf", "-brief"],
            input="a LOGOUT\n", capture_output=True, text=True, timeout=20,
        )  # fmt: skip

    refused = s_client("X25519")
    assert refused.returncode != 0 and "CONNECTION ESTABLISHED" not in refused.stderr
    served = s_client("secp384r1")
    assert served.returncode == 0, served.stderr
    assert "Server Temp Key: ECDH, secp384r1" in served.stderr


def test_backend_tls_to_dovecot(request, proxy, authd, dovecot, certs, free_port):
    """proxy_ssl on (Dovecot's imaps port, verified), and Auth-SSL-Backend: starttls per login
    (Dovecot's plain port, STARTTLS first)."""
    fastmail_only(request.node.callspec.params["proxy"], "TLS to the backend")
    add_user(authd, "alice", "secret", {"imap": ("127.0.0.1", dovecot.imaps_port)}, True)
    port = free_port()
    srv = (
        f"server {{ listen 127.0.0.1:{port}; protocol imap; proxy_ssl on; proxy_ssl_verify on; "
        f"proxy_ssl_trusted_certificate {certs.ca_cert}; proxy_ssl_name localhost; }}"
    )
    p = proxy(mail_block(authd, srv), greetings=[(port, b"* OK")])
    with imaplib.IMAP4("127.0.0.1", port, timeout=10) as m:
        assert m.login("alice", "secret")[0] == "OK"
        assert m.select("INBOX", readonly=True)[0] == "OK"
        m.logout()
    authd.add_rule(
        lambda q: Reply(
            [("Auth-Status", "OK"), ("Auth-Server", "127.0.0.1"),
             ("Auth-Port", str(dovecot.imap_port)), ("Auth-SSL-Backend", "starttls")]
        ),
        times=1,
    )  # fmt: skip
    with imaplib.IMAP4("127.0.0.1", port, timeout=10) as m:
        assert m.login("alice", "secret")[0] == "OK"
        assert m.select("INBOX", readonly=True)[0] == "OK"
        m.logout()
    p.wait_count("client logged in", 2)


def test_backend_tls_wrong_name_is_refused(request, proxy, authd, dovecot, certs, free_port):
    fastmail_only(request.node.callspec.params["proxy"], "TLS to the backend")
    add_user(authd, "alice", "secret", {"imap": ("127.0.0.1", dovecot.imaps_port)}, True)
    port = free_port()
    srv = (
        f"server {{ listen 127.0.0.1:{port}; protocol imap; proxy_ssl on; proxy_ssl_verify on; "
        f"proxy_ssl_trusted_certificate {certs.ca_cert}; proxy_ssl_name wrong.test; }}"
    )
    p = proxy(mail_block(authd, srv), greetings=[(port, b"* OK")])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        _read_until(s, b"\r\n")
        s.sendall(b"a LOGIN alice secret\r\n")
        assert _read_until(s, b"\r\n") == b"* BAD internal server error\r\n"
    # nginx's http proxy words for it (the mail module has no TLS to backends)
    log = p.wait_log("upstream SSL certificate verify error: (62:hostname mismatch)")
    assert "[error]" in log and "while SSL handshaking to upstream" in log


def test_serves_tls_without_pythons_ssl_module(tmp_path, authd, fake_backend, certs, free_port):
    """fastmail binds OpenSSL itself: a worker in which Python's ssl module cannot even be
    imported serves an IMAPS login (beyond nginx's concerns: fastmail only, no `proxy`)."""
    add_user(authd, "alice", "secret", {"imap": ("127.0.0.1", fake_backend.port("imap"))})
    port = free_port()
    conf = tmp_path / "f.conf"
    conf.write_text(
        f"daemon off; master_process off; pid {tmp_path}/f.pid; "
        f"error_log {tmp_path}/error.log info; events {{ }}\n"
        f"mail {{ {mail_block(authd, tls_server(port, 'imap', certs, ''))} }}\n"
    )
    code = (
        "import sys; sys.modules['ssl'] = sys.modules['_ssl'] = None\n"
        "from fastmail.cli import main\n"
        f"sys.exit(main(['-p', '{tmp_path}/', '-c', '{conf}']))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, stderr=subprocess.PIPE)
    try:
        _wait_tls(port, certs)
        with imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=client_ctx(certs), timeout=10) as m:
            assert m.login("alice", "secret")[0] == "OK"
            m.logout()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert b"ssl" not in err.lower(), err


def test_backend_closing_with_its_last_bytes_ends_a_tls_session(
    proxy, authd, fake_backend, certs, free_port
):
    """The backend's last reply and its FIN come in one read event: the client gets both
    at once (the proxy reads on to the EOF the event announced instead of waiting for an
    edge that never comes), every time."""
    add_user(authd, "alice", "secret", {"imap": ("127.0.0.1", fake_backend.port("imap"))})
    port = free_port()
    proxy(mail_block(authd, tls_server(port, "imap", certs)), greetings=[])
    _wait_tls(port, certs)
    ctx = client_ctx(certs)
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", port), timeout=3) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as t:
                assert t.recv(100).startswith(b"* OK")
                t.sendall(b"a LOGIN alice secret\r\nb LOGOUT\r\n")  # the backend closes
                got = b""
                while chunk := t.recv(1000):  # TimeoutError if the end never comes
                    got += chunk
                assert got.endswith(b"b OK LOGOUT completed\r\n")
