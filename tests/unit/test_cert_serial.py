"""Auth-SSL-Serial (fastmail._tls's Auth-SSL-* values, from a real handshake with a client
certificate) against what OpenSSL prints for the same certificate (`openssl x509 -serial` is
i2a_ASN1_INTEGER, as nginx's ngx_ssl_get_serial_number): certificates made by the openssl
command and by trustme."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest
import trustme

from support import MissingPackage
from support.certs import openssl_serial
from support.process import find_binary
from support.tlspair import OK, Pair, server_conf


@pytest.fixture(scope="module")
def openssl(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """The openssl program and one EC key for every certificate of the module."""
    try:
        prog = find_binary("openssl", "openssl")
    except MissingPackage as exc:
        pytest.skip(str(exc))
    key = tmp_path_factory.mktemp("serial") / "k.pem"
    cmd = [prog, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]
    subprocess.run([*cmd, "-out", str(key)], check=True, capture_output=True, timeout=30)
    return prog, key


def _x509(openssl: tuple[str, Path], serial: str, v1: bool = False) -> bytes:
    """A self-signed certificate with `serial` (openssl's -set_serial syntax), as PEM; `v1`
    leaves the optional [0] version field out."""
    prog, key = openssl
    common = ["-key", str(key), "-days", "1", "-set_serial", serial]
    if v1:  # `x509 -req` without extensions writes a version 1 certificate
        csr = subprocess.run(
            [prog, "req", "-new", "-key", str(key), "-subj", "/CN=v1"],
            check=True,
            capture_output=True,
            timeout=30,
        ).stdout
        cmd = [prog, "x509", "-req", *common]
    else:
        csr = b""
        cmd = [prog, "req", "-x509", "-subj", "/CN=serial", *common]
    return subprocess.run(cmd, input=csr, check=True, capture_output=True, timeout=30).stdout


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """A server{} asking for any client certificate (optional_no_ca: self-signed ones too)."""
    tmp = tmp_path_factory.mktemp("srv")
    pem = tmp / "srv.pem"
    trustme.CA().issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(str(pem))
    text = (
        f"server {{ listen 127.0.0.1:1993 ssl; protocol imap; ssl_certificate {pem}; "
        f"ssl_certificate_key {pem}; ssl_verify_client optional_no_ca; }}"
    )
    return server_conf(tmp, text)[0]


def cert_serial(server, pem: bytes, key: Path, tmp: Path) -> bytes:
    """The Auth-SSL-Serial the engine gets for a client presenting `pem`."""
    cert = tmp / "client.pem"
    cert.write_bytes(pem)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(str(cert), str(key))
    p = Pair(server.tls, ctx)
    try:
        assert p.handshake() == OK
        return bytes(p.server.auth_info(verify=3)["serial"])
    finally:
        p.close()


@pytest.mark.parametrize(
    "serial",
    [
        "0",
        "1",
        "127",
        "128",  # high bit: DER pads with 00, which OpenSSL does not print
        "0xFF00",
        "0x8000000000000000000000000000000000000001",  # 20 octets, RFC 5280's longest
        "0x7F" + "AB" * 30,  # 31 octets: a long length form inside tbsCertificate
        "-1",
        "-128",
        "-129",
        "-256",
    ],
)
def test_serial_matches_openssl(server, openssl, tmp_path: Path, serial: str) -> None:
    pem = _x509(openssl, serial)
    assert cert_serial(server, pem, openssl[1], tmp_path).decode() == openssl_serial(pem)


def test_serial_of_a_version_1_certificate(server, openssl, tmp_path: Path) -> None:
    pem = _x509(openssl, "0x80", v1=True)
    assert cert_serial(server, pem, openssl[1], tmp_path) == b"80"


def test_serial_past_35_octets_has_no_line_break(server, openssl, tmp_path: Path) -> None:
    """OpenSSL breaks the hex after 35 octets with a backslash-newline, which would split
    the auth_http header; fastmail sends the hex unbroken (no legal serial is that long)."""
    value = bytes(range(1, 41)).hex().upper()
    pem = _x509(openssl, "0x" + value)
    assert cert_serial(server, pem, openssl[1], tmp_path) == value.encode()
    assert openssl_serial(pem) == value
