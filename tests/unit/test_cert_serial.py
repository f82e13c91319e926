"""Auth-SSL-Serial from a certificate's DER (fastmail.tls.cert_serial) against what OpenSSL
prints for the same certificate (`openssl x509 -serial` is i2a_ASN1_INTEGER, as nginx's
ngx_ssl_get_serial_number): certificates made by the openssl command and by trustme."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest
import trustme

from fastmail.tls import cert_serial
from support import MissingPackage
from support.certs import openssl_serial
from support.process import find_binary


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
def test_serial_matches_openssl(openssl: tuple[str, Path], serial: str) -> None:
    pem = _x509(openssl, serial)
    der = ssl.PEM_cert_to_DER_cert(pem.decode())
    assert cert_serial(der).decode() == openssl_serial(pem)


def test_serial_of_a_version_1_certificate(openssl: tuple[str, Path]) -> None:
    pem = _x509(openssl, "0x80", v1=True)
    assert cert_serial(ssl.PEM_cert_to_DER_cert(pem.decode())) == b"80"


def test_serial_past_35_octets_has_no_line_break(openssl: tuple[str, Path]) -> None:
    """OpenSSL breaks the hex after 35 octets with a backslash-newline, which would split
    the auth_http header; fastmail sends the hex unbroken (no legal serial is that long)."""
    value = bytes(range(1, 41)).hex().upper()
    pem = _x509(openssl, "0x" + value)
    assert cert_serial(ssl.PEM_cert_to_DER_cert(pem.decode())) == value.encode()
    assert openssl_serial(pem) == value


def test_trustme_serials(openssl: tuple[str, Path]) -> None:
    """trustme's random 159-bit serials, as the e2e tests' client certificates have."""
    ca = trustme.CA()
    for _ in range(8):
        blob = ca.issue_cert("client.test").cert_chain_pems[0].bytes()
        assert cert_serial(ssl.PEM_cert_to_DER_cert(blob.decode())).decode() == openssl_serial(blob)


@pytest.mark.parametrize(
    "der",
    [
        b"",
        b"\x30",
        b"\x30\x03\x02\x01\x05",  # no tbsCertificate sequence
        b"\x30\x84\xff\xff\xff\xff\x30\x00",  # length past the end
        b"\x30\x04\x30\x02\x04\x00",  # an OCTET STRING where the serial goes
        b"\x30\x04\x30\x02\x02\x00",  # an empty INTEGER
        b"\x30\x85\x01\x00\x00\x00\x00",  # a length of five octets
    ],
)
def test_not_a_certificate_gives_no_serial(der: bytes) -> None:
    assert cert_serial(der) == b""
