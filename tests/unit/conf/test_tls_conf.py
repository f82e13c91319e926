"""TLS material that cannot be loaded, refused with nginx 1.22.1's words: each config is judged
by fastmail's loader (its own OpenSSL contexts) and, where Debian's nginx is installed, by
`nginx -t` on the same file; the two messages must be the same bytes."""

from __future__ import annotations

import os
import re
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from fastmail.conf import ConfigError, load

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
MAIL_MODULE = "/usr/lib/nginx/modules/ngx_mail_module.so"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tlsconf")
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost")
    leaf.cert_chain_pems[0].write_to_path(str(d / "cert.pem"))
    leaf.private_key_pem.write_to_path(str(d / "key.pem"))
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    other = ca.issue_cert("other")
    other.cert_chain_pems[0].write_to_path(str(d / "other.pem"))
    key = serialization.load_pem_private_key(other.private_key_pem.bytes(), None)
    (d / "enc.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"s3cret"),
        )
    )
    (d / "pw.txt").write_text("wrong\n\ns3cret\n")
    (d / "pwbad.txt").write_text("wrong\nalso\n")
    (d / "garbage.pem").write_text("hello\n")
    (d / "t10.key").write_bytes(bytes(10))
    return d


CERT = "ssl_certificate D/cert.pem; ssl_certificate_key D/key.pem;"

CASES = {
    "missing certificate": "ssl_certificate D/none.pem; ssl_certificate_key D/key.pem;",
    "garbage certificate": "ssl_certificate D/garbage.pem; ssl_certificate_key D/key.pem;",
    "missing key": "ssl_certificate D/cert.pem; ssl_certificate_key D/none.pem;",
    "garbage key": "ssl_certificate D/cert.pem; ssl_certificate_key D/garbage.pem;",
    "wrong passwords": "ssl_certificate D/other.pem; ssl_certificate_key D/enc.key; "
    "ssl_password_file D/pwbad.txt;",
    "key of another certificate": "ssl_certificate D/cert.pem; ssl_certificate_key D/enc.key; "
    "ssl_password_file D/pw.txt;",
    "ciphers before certificates": "ssl_certificate D/none.pem; ssl_certificate_key D/key.pem; "
    "ssl_ciphers BOGUS;",
    "curve": CERT + " ssl_ecdh_curve bogus;",
    "curve list": CERT + " ssl_ecdh_curve X25519:bogus;",
    "missing dhparam": CERT + " ssl_dhparam D/none.pem;",
    "garbage dhparam": CERT + " ssl_dhparam D/garbage.pem;",
    "missing client CA": CERT + " ssl_verify_client on; ssl_client_certificate D/none.pem;",
    "garbage client CA": CERT + " ssl_verify_client on; ssl_client_certificate D/garbage.pem;",
    "missing trusted": CERT + " ssl_verify_client on; ssl_client_certificate D/ca.pem; "
    "ssl_trusted_certificate D/none.pem;",
    "missing crl": CERT + " ssl_verify_client on; ssl_client_certificate D/ca.pem; "
    "ssl_crl D/none.pem;",
    "garbage crl": CERT + " ssl_verify_client on; ssl_client_certificate D/ca.pem; "
    "ssl_crl D/garbage.pem;",
    "no client CA": CERT + " ssl_verify_client optional; ssl_trusted_certificate D/ca.pem;",
    "ticket key size": CERT + " ssl_session_ticket_key D/t10.key;",
    "missing ticket key": CERT + " ssl_session_ticket_key D/none.key;",
    "unknown command": CERT + " ssl_conf_command Foo bar;",
    "relative file command": CERT + " ssl_conf_command Certificate none.pem;",
    "bad command value": CERT + " ssl_conf_command Ciphersuites BOGUS;",
    "error cut at 1024 bytes": CERT + " ssl_conf_command Ciphersuites " + "A" * 1100 + ";",
}

ACCEPTED = {
    "passwords tried in order": "ssl_certificate D/other.pem; ssl_certificate_key D/enc.key; "
    "ssl_password_file D/pw.txt;",
    "curve list": CERT + " ssl_ecdh_curve X25519:prime256v1:secp384r1;",
    "crl without verification is not loaded": CERT + " ssl_crl D/none.pem;",
    "optional_no_ca needs no CA": CERT + " ssl_verify_client optional_no_ca;",
}


def _config(d: Path, server: str) -> Path:
    """`server` is the body of one TLS server{}, or whole server{} blocks (starting with it)."""
    if not server.startswith("server"):
        server = f"server {{ listen 127.0.0.1:19993 ssl; protocol imap;\n  {server}\n }}"
    p = d / "nginx.conf"
    p.write_text(
        f"load_module {MAIL_MODULE};\npid {d}/nginx.pid;\nevents {{}}\n"
        "mail { auth_http 127.0.0.1:9/auth;\n"
        f" {server.replace('D/', f'{d}/')}\n"
        "}\n"
    )
    return p


def _fastmail(d: Path, server: str) -> str | None:
    p = _config(d, server)
    try:
        load(str(p), f"{d}/")
    except ConfigError as e:
        return str(e)
    return None


def _nginx(d: Path, server: str) -> str | None:
    p = _config(d, server)
    out = subprocess.run(
        [NGINX, "-t", "-q", "-p", f"{d}/", "-c", str(p), "-e", "stderr"],  # type: ignore[list-item]
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=30,
    )
    if out.returncode == 0:
        return None
    m = re.search(rb"\[emerg\] (?:\d+#\d+: )?(.*)", out.stderr)
    assert m is not None, out.stderr
    return m.group(1).decode("utf-8", "replace")


needs_nginx = pytest.mark.skipif(
    NGINX is None or not os.path.exists(MAIL_MODULE), reason="Debian's nginx with mail module"
)


@pytest.mark.parametrize("case", list(CASES))
def test_refused_as_nginx(files: Path, case: str) -> None:
    text = _fastmail(files, CASES[case])
    assert text is not None
    if NGINX is not None and os.path.exists(MAIL_MODULE):
        assert text == _nginx(files, CASES[case])


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_accepted_as_nginx(files: Path, case: str) -> None:
    assert _fastmail(files, ACCEPTED[case]) is None
    if NGINX is not None and os.path.exists(MAIL_MODULE):
        assert _nginx(files, ACCEPTED[case]) is None


def test_encrypted_key_without_passwords_never_prompts(files: Path) -> None:
    """nginx 1.22.1 asks on the terminal; fastmail fails at once (as mainline nginx)."""
    text = _fastmail(files, "ssl_certificate D/other.pem; ssl_certificate_key D/enc.key;")
    assert text is not None
    assert text.startswith(f'cannot load certificate key "{files}/enc.key": '
                           "PEM_read_bio_PrivateKey() failed (SSL: error:")  # fmt: skip


@needs_nginx
def test_messages_are_nginx_s_sample(files: Path) -> None:
    """A few messages spelled out, so the oracle's absence cannot hide a wording change."""
    assert _fastmail(files, CASES["ciphers before certificates"]) == (
        'SSL_CTX_set_cipher_list("BOGUS") failed (SSL: error:0A0000B9:SSL routines::no cipher '
        "match)"
    )
    assert _fastmail(files, CASES["ticket key size"]) == (
        f'"{files}/t10.key" must be 48 or 80 bytes in {files}/nginx.conf:8'
    )


def test_conf_command_files_under_the_conf_prefix(files: Path) -> None:
    """`ssl_conf_command Certificate cert.pem` (relative) is the conf prefix's file, and it
    replaces the certificate served."""
    from fastmail._tlsctx import ServerContext
    from fastmail.protocols import PROTOCOLS
    from support.tlspair import OK, Pair

    imap = PROTOCOLS["imap"]
    ctx = ServerContext("imap", ["TLSv1.2", "TLSv1.3"], imap.alpn, imap.cert_replies)
    ctx.add_certificate(f"{files}/other.pem", f"{files}/enc.key", [b"s3cret"])
    ctx.conf_commands([("Certificate", "cert.pem"), ("PrivateKey", "key.pem")], f"{files}/")
    client = ssl.create_default_context(cafile=f"{files}/ca.pem")
    p = Pair(ctx, client)  # checks the name: localhost is cert.pem's, not other.pem's
    try:
        assert p.handshake() == OK
    finally:
        p.close()


def _starttls_server(name: str, starttls: str = "on", listen: str = "") -> str:
    return (
        f"server {{ listen 127.0.0.1:19143{listen}; protocol imap; server_name {name}; "
        f"starttls {starttls}; {CERT} }}\n"
    )


@pytest.mark.parametrize(
    "second", [_starttls_server("b.test", "off"), _starttls_server("b.test", listen=" ssl")]
)
def test_a_plain_address_is_shared_only_for_starttls(files: Path, second: str) -> None:
    """Beyond nginx: two server{} doing STARTTLS may share a plain address (the SNI name of
    the STARTTLS handshake picks one); otherwise nginx's duplicate error stands."""
    text = _fastmail(files, _starttls_server("a.test") + " " + second)
    assert text == f'duplicate "127.0.0.1:19143" address and port pair in {files}/nginx.conf:6'
    if NGINX is not None and os.path.exists(MAIL_MODULE):
        assert text == _nginx(files, _starttls_server("a.test") + " " + second)
    assert _fastmail(files, _starttls_server("a.test") + _starttls_server("b.test", "only")) is None


def test_backend_contexts_are_made_at_load(files: Path) -> None:
    """TLS to backends (beyond nginx): one context per (proxy_ssl_verify, CA file) in a
    config, shared by its servers; a CA file OpenSSL cannot load is refused at load."""
    p = _config(
        files,
        "server { listen 127.0.0.1:19143; protocol imap; proxy_ssl on; proxy_ssl_verify on; "
        "proxy_ssl_trusted_certificate D/ca.pem; } "
        "server { listen 127.0.0.1:19144; protocol imap; proxy_ssl_verify on; "
        "proxy_ssl_trusted_certificate D/ca.pem; } "
        "server { listen 127.0.0.1:19145; protocol imap; }",
    )
    mail = load(str(p), f"{files}/").mail
    assert mail is not None
    a, b, c = (s.tls_backend for s in mail.servers)
    assert a is b and a.verify and not c.verify
    text = _fastmail(
        files,
        "server { listen 127.0.0.1:19143; protocol imap; proxy_ssl_verify on; "
        "proxy_ssl_trusted_certificate D/garbage.pem; }",
    )
    assert text == (
        f'SSL_CTX_load_verify_locations("{files}/garbage.pem") failed '
        "(SSL: error:05800088:x509 certificate routines::no certificate or crl found)"
    )


def test_a_ca_file_named_in_non_utf8_bytes_is_opened_by_those_bytes(files: Path) -> None:
    # found by tests/fuzz (conf): such a name raised UnicodeEncodeError past the loader
    (files / os.fsdecode(b"garbage\xff.pem")).write_text("hello\n")
    conf = _config(
        files,
        "server { listen 127.0.0.1:19143; protocol imap; proxy_ssl_verify on; "
        "proxy_ssl_trusted_certificate D/garbage@@.pem; }",
    )
    conf.write_bytes(conf.read_bytes().replace(b"@@", b"\xff"))
    with pytest.raises(ConfigError) as e:
        load(str(conf), f"{files}/")
    # the file was read (its content is refused, not its name); the message shows U+FFFD
    assert str(e.value) == (
        f'SSL_CTX_load_verify_locations("{files}/garbage\ufffd.pem") failed '
        "(SSL: error:05800088:x509 certificate routines::no certificate or crl found)"
    )


def test_a_zone_declared_twice_with_two_sizes(files: Path) -> None:
    servers = (
        f"server {{ listen 127.0.0.1:19993 ssl; protocol imap; {CERT} "
        "ssl_session_cache shared:Z:1m; }\n"
        f"server {{ listen 127.0.0.1:19994 ssl; protocol imap; {CERT} "
        "ssl_session_cache shared:Z:2m; }"
    )
    text = _fastmail(files, servers)
    assert text == (
        'the size 2097152 of shared memory zone "Z" conflicts with already declared size '
        f"1048576 in {files}/nginx.conf:6"
    )
    if NGINX is not None and os.path.exists(MAIL_MODULE):
        assert text == _nginx(files, servers)
