"""fastmail's own OpenSSL binding (fastmail._tls, _tlsctx) with a real client: contexts built
from config text, the engine's per-connection calls driven over socket pairs, Python's ssl
module as the client. Handshake failures are checked for nginx's exact log text and level."""

from __future__ import annotations

import hashlib
import os
import select
import socket
import ssl
import struct
import time
from pathlib import Path

import pytest
import trustme
from cryptography import x509

from fastmail._tls import TlsStream
from fastmail._tlsctx import ClientContext
from fastmail.protocols import PROTOCOLS
from support.tlspair import CLOSED, FAIL, OK, WANT_READ, Pair, server_conf, tcp_pair

INFO, ERR = 7, 4


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA(organization_name="fastmail test CA")


@pytest.fixture(scope="module")
def pem(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("certs") / "srv.pem"
    ca.issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(str(p))
    ca.cert_pem.write_to_path(str(p.parent / "ca.pem"))
    return p


def _server(tmp: Path, pem: Path, extra: str = "", protocol: str = "imap"):
    text = (
        f"server {{ listen 127.0.0.1:1993 ssl; protocol {protocol}; "
        f"ssl_certificate {pem}; ssl_certificate_key {pem}; {extra} }}"
    )
    return server_conf(tmp, text)[0]


def _client(ca: trustme.CA, cert: trustme.LeafCert | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    if cert is not None:
        cert.configure_cert(ctx)
    return ctx


def test_handshake_then_data_both_ways(tmp_path: Path, ca, pem) -> None:
    srv = _server(tmp_path, pem)
    p = Pair(srv.tls, _client(ca))
    try:
        assert p.handshake() == OK
        assert p.server.version == p.client.version() == "TLSv1.3"
        cipher = p.client.cipher()
        assert cipher is not None and p.server.cipher == cipher[0]
        assert p.server.chosen is srv and not p.server.reused
        assert p.server.read() == WANT_READ  # nothing sent yet
        up = os.urandom(300_000)
        assert p.up(up) == up
        down = os.urandom(300_000)
        assert p.down(down) == down
    finally:
        p.close()


def test_a_read_fills_the_buffer_from_several_records(tmp_path: Path, ca, pem) -> None:
    srv = _server(tmp_path, pem)
    p = Pair(srv.tls, _client(ca))
    try:
        assert p.handshake() == OK
        for _ in range(4):
            p.client_send(b"x" * 16384)  # four full records
        buf = bytearray(65536)
        assert p.server.readinto(buf) == 65536
        assert p.server.read() == WANT_READ
    finally:
        p.close()


def test_bytes_before_a_bad_record_then_the_failure(tmp_path: Path, ca, pem) -> None:
    """A good record and a forged one in one read: the good bytes come first, the failure
    (nginx's text) at the next call."""
    srv = _server(tmp_path, pem)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = _client(ca).wrap_bio(inc, out, server_hostname="localhost")
    p = Pair(srv.tls, None)
    try:
        deadline = time.monotonic() + 5
        code, done = WANT_READ, False
        while not (done and code == OK) and time.monotonic() < deadline:
            try:
                obj.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                pass
            if data := out.read():
                p.c_sock.sendall(data)
            code = p.server.handshake()
            select.select([p.c_sock], [], [], 0.01)
            try:
                inc.write(p.c_sock.recv(65536))
            except BlockingIOError:
                pass
        assert code == OK
        obj.write(b"good")
        good = out.read()
        obj.write(b"evil")
        forged = bytearray(out.read())
        forged[-1] ^= 1  # the record's tag no longer matches
        p.c_sock.sendall(good + bytes(forged))
        time.sleep(0.05)
        assert p.server.read() == b"good"
        assert p.server.read() == FAIL
        assert p.server.error() == (
            INFO,
            "SSL_read() failed (SSL: error:0A000119:SSL routines::decryption failed or bad "
            "record mac)",
        )
    finally:
        p.close()


def test_client_close_notify_and_server_shutdown(tmp_path: Path, ca, pem) -> None:
    srv = _server(tmp_path, pem)
    p = Pair(srv.tls, _client(ca))
    try:
        assert p.handshake() == OK
        assert p.server.shutdown() == WANT_READ  # close_notify sent, the client's awaited
        p.c_sock.setblocking(True)
        p.c_sock.settimeout(5)
        assert p.client.recv(10) == b""  # the client sees the server's close_notify
        p.client.unwrap()  # and answers it
        assert p.server.shutdown() == OK
    finally:
        p.close()
    p = Pair(srv.tls, _client(ca))
    try:
        assert p.handshake() == OK
        p.c_sock.setblocking(True)
        p.client.send(b"last")
        p.c_sock.settimeout(0.2)
        with pytest.raises((TimeoutError, ssl.SSLWantReadError, ssl.SSLError)):
            p.client.unwrap()  # sends close_notify, then waits for ours
        assert p.server_recv(4) == b"last"
        assert p.server.read() == CLOSED
        assert p.server.shutdown() == OK  # after the peer's close nothing more is sent
    finally:
        p.close()


def test_alpn_mismatch_sends_the_alert(tmp_path: Path, ca, pem) -> None:
    srv = _server(tmp_path, pem)
    c = _client(ca)
    c.set_alpn_protocols(["h2", "imap"])
    p = Pair(srv.tls, c)
    assert p.handshake() == OK and p.server.alpn == b"imap"
    p.close()
    c = _client(ca)
    c.set_alpn_protocols(["h2", "http/1.1"])
    p = Pair(srv.tls, c)
    try:
        assert p.handshake() == FAIL
        assert p.server.error() == (
            INFO,
            "SSL_do_handshake() failed (SSL: error:0A0000EB:SSL routines::no application protocol)",
        )
        assert p.server.error(client=False)[0] == ERR  # a backend's fault is logged at error
        # the client got the alert, not an EOF
        assert "alert no application protocol" in str(p.client_error)
    finally:
        p.close()


def test_plain_text_on_a_tls_port(tmp_path: Path, ca, pem) -> None:
    srv = _server(tmp_path, pem)
    p = Pair(srv.tls, None)
    try:
        p.c_sock.send(b"a LOGIN alice secret\r\n")
        assert p.server.handshake() == FAIL
        assert p.server.error() == (
            INFO,
            "SSL_do_handshake() failed (SSL: error:0A00010B:SSL routines::wrong version number)",
        )
    finally:
        p.close()


def _client_hello(ca) -> bytes:
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = _client(ca).wrap_bio(inc, out, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def test_peer_closed_in_handshake(tmp_path: Path, ca, pem) -> None:
    srv = _server(tmp_path, pem)
    hello = _client_hello(ca)
    p = Pair(srv.tls, None, tcp=True)
    try:
        p.c_sock.send(hello[:20])
        assert p.server.handshake() == WANT_READ
        p.c_sock.shutdown(socket.SHUT_WR)
        assert _settle(p) == FAIL
        assert p.server.error() == (INFO, "peer closed connection in SSL handshake")
    finally:
        p.close()
    p = Pair(srv.tls, None, tcp=True)
    try:
        p.c_sock.send(hello[:20])
        assert p.server.handshake() == WANT_READ
        p.c_sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        p.c_sock.close()  # RST
        assert _settle(p) == FAIL
        assert p.server.error() == (
            INFO,
            "peer closed connection in SSL handshake (104: Connection reset by peer)",
        )
    finally:
        p.close()


def _settle(p: Pair) -> int:
    code = WANT_READ
    for _ in range(100):
        code = p.server.handshake()
        if code != WANT_READ:
            break
        select.select([p.s_sock], [], [], 0.02)
    return code


# --- client certificates ----------------------------------------------------------------------


def test_client_certificate_verdicts(tmp_path: Path, ca, pem) -> None:
    cafile = pem.parent / "ca.pem"
    srv = _server(tmp_path, pem, f"ssl_verify_client on; ssl_client_certificate {cafile};")
    p = Pair(srv.tls, _client(ca))
    try:
        assert p.handshake() == OK
        assert p.server.cert_check() == (
            b"* BYE No required SSL certificate\r\n",
            "client sent no required SSL certificate",
        )
        assert p.server.auth_info()["verify"] == b"NONE"
    finally:
        p.close()
    stranger = trustme.CA().issue_cert("x.test")
    p = Pair(srv.tls, _client(ca, stranger))
    try:
        assert p.handshake() == OK  # nginx's verify callback accepts; the verdict is a reply
        assert p.server.cert_check(replies=PROTOCOLS["smtp"].cert_replies) == (
            b"421 4.7.1 SSL certificate error\r\n",
            "client SSL certificate verify error: (21:unable to verify the first certificate)",
        )
        assert p.server.cert_check(verify=3) is None  # optional_no_ca forgives an unknown CA
        info = p.server.auth_info(verify=3)
        assert info["verify"] == b"FAILED:unable to verify the first certificate"
    finally:
        p.close()


def test_auth_ssl_values_from_openssl(tmp_path: Path, ca, pem) -> None:
    cafile = pem.parent / "ca.pem"
    srv = _server(
        tmp_path, pem, f"ssl_verify_client optional; ssl_client_certificate {cafile};", "pop3"
    )
    good = ca.issue_cert("client.test", common_name="client one")
    p = Pair(srv.tls, _client(ca, good))
    try:
        assert p.handshake() == OK
        assert p.server.cert_check() is None
        info = p.server.auth_info()
    finally:
        p.close()
    der = ssl.PEM_cert_to_DER_cert(good.cert_chain_pems[0].bytes().decode())
    cert = x509.load_der_x509_certificate(der)
    serial = cert.serial_number.to_bytes((cert.serial_number.bit_length() + 7) // 8, "big")
    assert info == {
        "protocol": b"TLSv1.3",
        "cipher": info["cipher"],
        "verify": b"SUCCESS",
        "subject": cert.subject.rfc4514_string().encode(),
        "issuer": cert.issuer.rfc4514_string().encode(),
        "serial": serial.hex().upper().encode(),
        "fingerprint": hashlib.sha1(der).hexdigest().encode(),  # noqa: S324 - nginx's
        "cert": ssl.DER_cert_to_PEM_cert(der).encode(),
    }
    assert info["subject"].startswith(b"CN=client one,") and info["cipher"]


# --- backends ---------------------------------------------------------------------------------


class _Backend:
    """A Python ssl server end for ClientContext tests."""

    def __init__(self, ca: trustme.CA, name: str) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert(name).configure_cert(self.ctx)


def _connect(ctx: ClientContext, backend: _Backend, name: bytes | None):
    s, c = tcp_pair()
    obj = backend.ctx.wrap_socket(s, server_side=True, do_handshake_on_connect=False)
    stream = TlsStream(ctx, c.fileno(), name)
    deadline = time.monotonic() + 5
    code, done, err = WANT_READ, False, None
    while time.monotonic() < deadline and (code not in (OK, FAIL) or not (done or err)):
        if code not in (OK, FAIL):
            code = stream.handshake()
        if not done and err is None:
            try:
                obj.do_handshake()
                done = True
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
            except (ssl.SSLError, OSError) as e:
                err = e
        if code == FAIL:
            break
        select.select([obj, c], [], [], 0.01)
    return code, stream, (obj, c)


def test_backend_contexts(ca, tmp_path: Path) -> None:
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    backend = _Backend(ca, "imap.test")
    verify = ClientContext(True, str(cafile))
    cases = [
        (verify, b"imap.test", None),
        (verify, b"wrong.test", "upstream SSL certificate verify error: (62:hostname mismatch)"),
        # the system store does not know the test CA
        (ClientContext(True), b"imap.test",
         "upstream SSL certificate verify error: (21:unable to verify the first certificate)"),
        # no verification: any name; an address is not sent as SNI
        (ClientContext(False), b"127.0.0.1", None),
    ]  # fmt: skip
    for ctx, name, failure in cases:
        code, stream, keep = _connect(ctx, backend, name)
        try:
            if failure is None:
                assert code == OK and stream.version.startswith("TLSv1.")
            else:
                assert code == FAIL and stream.error(client=False) == (ERR, failure)
        finally:
            stream.close()
            for x in keep:
                x.close()
