"""Test TLS material from trustme: one CA, a server certificate for localhost/127.0.0.1/::1.

Files are written into a directory the daemons can read (0755 dir, 0644 files; the key too,
since Dovecot's and Postfix's unprivileged processes read it in tests). Never used outside tests.
"""

from __future__ import annotations

import os
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import trustme

from .process import find_binary


@dataclass
class TestCerts:
    dir: Path
    ca: trustme.CA
    ca_cert: Path
    server_cert: Path  # leaf + chain, PEM
    server_key: Path

    __test__ = False  # not a pytest test class

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_cert))
        return ctx

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.server_cert), str(self.server_key))
        return ctx


def make_certs(directory: str | os.PathLike[str]) -> TestCerts:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o755)
    ca = trustme.CA(organization_name="fastmail test CA")
    leaf = ca.issue_cert("localhost", "127.0.0.1", "::1")
    ca_cert, cert, key = d / "ca.crt", d / "server.crt", d / "server.key"
    ca.cert_pem.write_to_path(str(ca_cert))
    leaf.private_key_pem.write_to_path(str(key))
    with open(cert, "wb") as f:
        for blob in leaf.cert_chain_pems:
            f.write(blob.bytes())
    for p in (ca_cert, cert, key):
        os.chmod(p, 0o644)
    return TestCerts(d, ca, ca_cert, cert, key)


def openssl_serial(pem: bytes) -> str:
    """The serial of the first certificate in `pem` as OpenSSL prints it: i2a_ASN1_INTEGER,
    which is nginx's Auth-SSL-Serial (its backslash-newline every 35 bytes joined)."""
    out = subprocess.run(
        [find_binary("openssl", "openssl"), "x509", "-noout", "-serial"],
        input=pem,
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout.decode()
    return out.strip().removeprefix("serial=").replace("\\\n", "")
