"""fastmail.tls without sockets: contexts built from config text (the ssl_* directives as
conf/ssl.py applies them), in-memory handshakes for ALPN, client certificates and Auth-SSL-*
values, SNI choice, the backend STARTTLS dialogue and the config errors."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme

from fastmail import tls
from fastmail.conf import ConfigError, load
from support.certs import openssl_serial

pytestmark = pytest.mark.skipif(not tls.OSSL.ok, reason="OpenSSL layout not recognised")


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _conf(tmp: Path, ca: trustme.CA, server_extra: str = "", n: int = 1):
    leaf = ca.issue_cert("localhost")
    pem = tmp / "srv.pem"
    leaf.private_key_and_cert_chain_pem.write_to_path(str(pem))
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    text = (
        "events {} mail { auth_http 127.0.0.1:9; server { listen 127.0.0.1:1993 ssl; "
        f"protocol imap; ssl_certificate {pem}; ssl_certificate_key {pem}; {server_extra} }} }}"
    )
    p = tmp / "f.conf"
    p.write_text(text)
    return load(str(p), str(tmp)).mail.servers[0]


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext):
    """Runs a handshake in memory; returns (server SSLObject, client SSLObject)."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    srv = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    cli = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    done = [False, False]
    for _ in range(10):
        for i, obj in enumerate((cli, srv)):
            if not done[i]:
                try:
                    obj.do_handshake()
                    done[i] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done):
            return srv, cli
    raise AssertionError("handshake did not finish")


def _client(ca: trustme.CA, cert: trustme.LeafCert | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    if cert is not None:
        cert.configure_cert(ctx)
    return ctx


def test_alpn_selects_the_protocol_or_refuses(tmp_path: Path, ca: trustme.CA) -> None:
    srv = _conf(tmp_path, ca)
    c = _client(ca)
    c.set_alpn_protocols(["h2", "imap"])
    s_obj, c_obj = _handshake(srv.ssl_context, c)
    assert c_obj.selected_alpn_protocol() == "imap"
    c = _client(ca)
    c.set_alpn_protocols(["smtp"])
    with pytest.raises(ssl.SSLError, match="NO_APPLICATION_PROTOCOL|no application protocol"):
        _handshake(srv.ssl_context, c)
    _handshake(srv.ssl_context, _client(ca))  # no ALPN at all is fine


def test_client_certificate_verdicts_and_auth_ssl_values(tmp_path: Path, ca: trustme.CA) -> None:
    srv = _conf(
        tmp_path, ca, f"ssl_verify_client on; ssl_client_certificate {tmp_path / 'ca.pem'};"
    )
    s_obj, _ = _handshake(srv.ssl_context, _client(ca))
    assert tls.check_client_cert(s_obj, "on", "imap") == (
        b"* BYE No required SSL certificate\r\n",
        "client sent no required SSL certificate",
    )
    assert tls.ssl_info(s_obj, "on")["verify"] == b"NONE"
    good = ca.issue_cert("client.test", common_name="client one")
    s_obj, _ = _handshake(srv.ssl_context, _client(ca, good))
    assert tls.check_client_cert(s_obj, "on", "imap") is None
    info = tls.ssl_info(s_obj, "on")
    assert info["verify"] == b"SUCCESS"
    assert info["subject"].startswith(b"CN=client one,")
    assert info["protocol"] in (b"TLSv1.2", b"TLSv1.3") and info["cipher"]
    assert len(info["fingerprint"]) == 40 and info["cert"].startswith(b"-----BEGIN CERTIFICATE")
    assert info["serial"].decode() == openssl_serial(good.cert_chain_pems[0].bytes())
    stranger = trustme.CA().issue_cert("x.test")
    s_obj, _ = _handshake(srv.ssl_context, _client(ca, stranger))  # the handshake succeeds
    reply, log = tls.check_client_cert(s_obj, "on", "smtp")  # type: ignore[misc]
    assert reply == b"421 4.7.1 SSL certificate error\r\n"
    assert log.startswith("client SSL certificate verify error: (")
    assert tls.check_client_cert(s_obj, "optional_no_ca", "smtp") is None


def test_sni_map_exact_wildcard_default() -> None:
    a, b, c = (ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER) for _ in range(3))
    m = tls.SniMap()
    m.add(["mail.a.test"], a, "A")
    m.add(["*.b.test"], b, "B")
    m.add([".c.test"], c, "C")
    assert m.find("MAIL.A.TEST.") is a
    assert m.find("x.b.test") is b and m.find("b.test") is None
    assert m.find("c.test") is c and m.find("y.c.test") is c
    assert m.find("other.test") is None


@pytest.mark.parametrize(
    ("protocol", "replies", "commands"),
    [
        ("imap", [b"* OK hi\r\n", b"* CAPABILITY X\r\nS0 OK go\r\n"], [b"S0 STARTTLS\r\n"]),
        ("pop3", [b"+OK hi\r\n", b"+OK go\r\n"], [b"STLS\r\n"]),
        (
            "smtp",
            [b"220-a\r\n220 b\r\n", b"250-x\r\n250 STARTTLS\r\n", b"220 go\r\n"],
            [b"EHLO fastmail\r\n", b"STARTTLS\r\n"],
        ),
    ],
)
def test_backend_starttls_dialogue(protocol: str, replies: list[bytes], commands: list[bytes]):
    sent = []
    for stage, reply in enumerate(replies):
        assert tls.backend_starttls_done(protocol, stage, reply[:-1])[0] == 0  # partial
        status, used, cmd = tls.backend_starttls_done(protocol, stage, reply + b"junk")
        assert used == len(reply)
        if stage < len(replies) - 1:
            assert status == 1
            sent.append(cmd)
        else:
            assert status == 2
    assert sent == commands
    refused = {"imap": b"S0 NO no\r\n", "pop3": b"-ERR no\r\n", "smtp": b"454 no\r\n"}[protocol]
    assert tls.backend_starttls_done(protocol, len(replies) - 1, refused)[0] == -1


def test_ticket_keys_and_conf_commands(tmp_path: Path, ca: trustme.CA) -> None:
    key = tmp_path / "t.key"
    key.write_bytes(bytes(range(48)))
    wide = tls.ticket_key_80(bytes(range(48)))
    assert len(wide) == 80 and wide[:16] == bytes(range(16))
    srv = _conf(
        tmp_path,
        ca,
        f"ssl_session_ticket_key {key}; ssl_session_cache shared:S:1m; "
        "ssl_conf_command Options -SessionTicket;",
    )
    assert srv.ssl_context is not None
    with pytest.raises(ConfigError, match=r'SSL_CONF_cmd\("NoSuchCommand", "x"\) failed'):
        _conf(tmp_path, ca, "ssl_conf_command NoSuchCommand x;")


def test_session_resumes_with_shared_ticket_key(tmp_path: Path, ca: trustme.CA) -> None:
    """Two contexts loaded from the same config (as two workers' would be after a reload)
    accept each other's tickets because the key comes from the file."""
    key = tmp_path / "t.key"
    key.write_bytes(bytes(range(80)))
    one = _conf(tmp_path, ca, f"ssl_session_ticket_key {key}; ssl_protocols TLSv1.2;")
    two = _conf(tmp_path, ca, f"ssl_session_ticket_key {key}; ssl_protocols TLSv1.2;")
    c = _client(ca)
    _, c_obj = _handshake(one.ssl_context, c)
    session = c_obj.session
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    srv = two.ssl_context.wrap_bio(s_in, s_out, server_side=True)
    cli = c.wrap_bio(c_in, c_out, server_hostname="localhost", session=session)
    for _ in range(10):
        for obj in (cli, srv):
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    assert cli.session_reused
