"""fastmail's own TLS layer (fastmail._tls, not yet the session path) against Debian's nginx on
the same settings: the Auth-SSL-* values nginx sends to auth_http for a client certificate,
session tickets exchanged both ways with nginx's key files (48 and 80 bytes: same key layout
and same session ID context), and the handshake failure texts nginx logs."""

from __future__ import annotations

import os
import re
import socket
import ssl
import struct
import time
from pathlib import Path

import pytest

from fastmail.auth_http import escape
from support import MissingPackage
from support.certs import TestCerts
from support.nginx import Nginx
from support.tlspair import FAIL, OK, WANT_READ, Pair, server_conf


def _nginx(authd, port: int, extra: str, certs: TestCerts) -> Nginx:
    try:
        n = Nginx(
            f"auth_http {authd.url};\n"
            f"server {{ listen 127.0.0.1:{port} ssl; protocol imap; {_tls(certs)} {extra} }}",
        )
    except MissingPackage as exc:
        pytest.skip(f"nginx reference unavailable: {exc}")
    n.start()
    _wait(port)
    return n


def _tls(certs: TestCerts) -> str:
    return (
        f"ssl_certificate {certs.server_cert}; ssl_certificate_key {certs.server_key}; "
        "ssl_protocols TLSv1.2 TLSv1.3;"
    )


def _wait(port: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def _ours(tmp: Path, certs: TestCerts, extra: str):
    text = f"server {{ listen 127.0.0.1:1993 ssl; protocol imap; {_tls(certs)} {extra} }}"
    return server_conf(tmp, text, f"f{abs(hash(extra))}.conf")[0]


def _imap(port: int, ctx: ssl.SSLContext, session=None, login: bool = False):
    """Greeting (and a LOGIN) over TLS to nginx; the client's session after."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as t:
            assert t.recv(100).startswith(b"* OK")
            if login:
                t.sendall(b"a LOGIN alice secret\r\n")
                t.recv(100)
            return t.session, t.session_reused


def test_auth_ssl_values_equal_nginx_s(authd, certs: TestCerts, free_port, tmp_path) -> None:
    leaf = certs.ca.issue_cert("client.test", common_name="client one")
    client_pem = tmp_path / "client.pem"
    leaf.private_key_and_cert_chain_pem.write_to_path(str(client_pem))
    verify = f"ssl_verify_client on; ssl_client_certificate {certs.ca_cert};"
    port = free_port()
    n = _nginx(authd, port, verify + " auth_http_pass_client_cert on;", certs)
    try:
        ctx = certs.client_context()
        ctx.load_cert_chain(str(client_pem))
        _imap(port, ctx, login=True)
        req = authd.wait_for_requests(1)[-1]
    finally:
        n.stop()
    srv = _ours(tmp_path, certs, verify)
    ctx = certs.client_context()
    ctx.load_cert_chain(str(client_pem))
    p = Pair(srv.tls, ctx)
    try:
        assert p.handshake() == OK
        assert p.server.cert_check() is None
        info = p.server.auth_info()
    finally:
        p.close()
    for key in ("protocol", "cipher", "verify", "subject", "issuer", "serial", "fingerprint"):
        assert info[key].decode() == req[f"Auth-SSL-{key.capitalize()}"], key
    assert escape(info["cert"]).decode() == req["Auth-SSL-Cert"]


@pytest.mark.parametrize("size", [48, 80])
def test_tickets_are_exchanged_with_nginx(authd, certs, free_port, tmp_path, size) -> None:
    key = tmp_path / f"t{size}.key"
    key.write_bytes(os.urandom(size))
    extra = f"ssl_session_ticket_key {key};"
    port = free_port()
    n = _nginx(authd, port, extra, certs)
    srv = _ours(tmp_path, certs, extra)
    try:
        for tls13 in (False, True):
            ctx = certs.client_context()
            if not tls13:
                ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            # nginx's ticket resumes here ...
            session, _ = _imap(port, ctx)
            p = Pair(srv.tls, ctx, session=session)
            try:
                assert p.handshake() == OK
                assert p.down(b"* OK\r\n") == b"* OK\r\n"
                assert p.server.reused and p.client.session_reused
                ours = p.client.session
            finally:
                p.close()
            # ... and ours there
            assert _imap(port, ctx, ours)[1]
    finally:
        n.stop()


def _client_hello(certs: TestCerts) -> bytes:
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = certs.client_context().wrap_bio(inc, out, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def _nginx_lines(n: Nginx, port: int, count: int) -> list[str]:
    """nginx's info lines about failed handshakes, without the ` while ...` context."""
    pattern = (r"\[info\] \d+#\d+: \*\d+ (.*) while SSL handshaking, client: 127\.0\.0\.1, "
               rf"server: 127\.0\.0\.1:{port}")  # fmt: skip
    deadline = time.monotonic() + 5
    lines = re.findall(pattern, n.error_log())
    while len(lines) < count and time.monotonic() < deadline:
        time.sleep(0.05)
        lines = re.findall(pattern, n.error_log())
    return lines


def test_handshake_failures_read_as_nginx_s(authd, certs, free_port, tmp_path) -> None:
    port = free_port()
    n = _nginx(authd, port, "", certs)
    srv = _ours(tmp_path, certs, "")
    try:
        ours = []
        # a client that offers ALPN without imap
        ctx = certs.client_context()
        ctx.set_alpn_protocols(["h2"])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with pytest.raises(ssl.SSLError, match="no application protocol"):
                ctx.wrap_socket(raw, server_hostname="localhost")
        p = Pair(srv.tls, ctx)
        assert p.handshake() == FAIL and "alert no application protocol" in str(p.client_error)
        ours.append(p.server.error())
        p.close()
        # plain text on the TLS port
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            raw.sendall(b"a LOGIN alice secret\r\n")
            raw.recv(100)
        p = Pair(srv.tls, None)
        p.c_sock.send(b"a LOGIN alice secret\r\n")
        assert p.server.handshake() == FAIL
        ours.append(p.server.error())
        p.close()
        # half a ClientHello, then a reset
        hello = _client_hello(certs)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            raw.sendall(hello[:20])
            time.sleep(0.2)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        p = Pair(srv.tls, None, tcp=True)
        p.c_sock.send(hello[:20])
        assert p.server.handshake() == WANT_READ
        p.c_sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        p.c_sock.close()
        deadline = time.monotonic() + 5
        while p.server.handshake() == WANT_READ and time.monotonic() < deadline:
            time.sleep(0.01)
        ours.append(p.server.error())
        p.close()
        # (the readiness probe made nginx log a "peer closed connection" line first)
        theirs = _nginx_lines(n, port, len(ours) + 1)
        assert [text for _, text in ours] == theirs[-len(ours) :]
        assert {level for level, _ in ours} == {7}  # info, as nginx's
    finally:
        n.stop()
