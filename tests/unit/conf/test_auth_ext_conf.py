"""fastmail's auth_http directives beyond nginx: several URLs and https (auth_http), their TLS
settings, auth_http_send, auth_http_cache, and proxy_next_upstream_tries; nginx's values when
they are not set."""

from __future__ import annotations

from pathlib import Path

import pytest
from unit.conf.test_conf import EV, err, ok

from fastmail.conf.model import ServerConf

SRV = "server { listen 127.0.0.1:1143; protocol imap; }"


def server_conf(tmp: Path, mail: str) -> ServerConf:
    (srv,) = ok(tmp, EV + "mail { " + mail + " }").mail.servers
    return srv


def test_defaults_are_nginx(tmp_path):
    srv = server_conf(tmp_path, "auth_http 127.0.0.1:9000/auth; " + SRV)
    assert srv.auth_http_backups == [] and not srv.auth_http.tls
    assert srv.auth_http_send == [] and srv.auth_http_cache is None
    assert srv.proxy_next_upstream_tries == 1 and srv.auth_http_tls is None


def test_https_and_more_urls(tmp_path):
    srv = server_conf(
        tmp_path,
        "auth_http https://127.0.0.1/a http://127.0.0.2:81/b unix:/run/a.sock:/c; " + SRV,
    )
    first, *more = [srv.auth_http, *srv.auth_http_backups]
    assert (first.host, first.port, first.uri, first.tls) == ("127.0.0.1", 443, "/a", True)
    assert [(u.host, u.port, u.path, u.tls) for u in more] == [
        ("127.0.0.2", 81, None, False),
        ("", 0, "/run/a.sock", False),
    ]
    assert srv.auth_http_tls is not None and srv.auth_http_tls.verify  # on by default


def test_a_server_auth_http_replaces_the_whole_list(tmp_path):
    conf = ok(
        tmp_path,
        EV + "mail { auth_http 127.0.0.1:1/a 127.0.0.1:2/b; " + SRV
        + " server { listen 127.0.0.1:1110; protocol pop3; auth_http 127.0.0.1:3/c; } }",
    )  # fmt: skip
    inherited, own = conf.mail.servers
    assert [u.port for u in [inherited.auth_http, *inherited.auth_http_backups]] == [1, 2]
    assert [u.port for u in [own.auth_http, *own.auth_http_backups]] == [3]


def test_https_tls_settings(tmp_path, certs):
    srv = server_conf(
        tmp_path,
        "auth_http https://localhost:9443/; auth_http_ssl_verify off; " + SRV,
    )
    assert srv.auth_http_tls is not None and not srv.auth_http_tls.verify
    srv = server_conf(
        tmp_path,
        f"auth_http https://localhost:9443/; auth_http_ssl_trusted_certificate {certs.ca_cert};"
        + SRV,
    )
    assert srv.auth_http_tls.verify and srv.auth_http_ssl_trusted_certificate == str(certs.ca_cert)
    text = err(
        tmp_path,
        EV + "mail { auth_http https://localhost/; auth_http_ssl_trusted_certificate nope.pem; "
        + SRV + " }",
    )  # fmt: skip
    assert text.startswith('SSL_CTX_load_verify_locations("') and "nope.pem" in text


@pytest.mark.parametrize(
    "value,want",
    [
        ("off", []),
        ("client_port", ["client_port"]),
        ("server_addr client_port", ["client_port", "server_addr"]),
    ],
)
def test_auth_http_send(tmp_path, value, want):
    srv = server_conf(tmp_path, f"auth_http 127.0.0.1/; auth_http_send {value}; " + SRV)
    assert srv.auth_http_send == want


@pytest.mark.parametrize(
    "value,want",
    [
        ("off", None),
        ("1000", (1000, 30_000, 5_000)),
        ("10 valid=1m fail=0", (10, 60_000, 0)),
        ("10 fail=500ms", (10, 30_000, 500)),
    ],
)
def test_auth_http_cache(tmp_path, value, want):
    srv = server_conf(tmp_path, f"auth_http 127.0.0.1/; auth_http_cache {value}; " + SRV)
    assert srv.auth_http_cache == want


@pytest.mark.parametrize(
    "directive,message",
    [
        ("auth_http_send client_port bogus", 'invalid value "bogus" in "auth_http_send" directive'),
        ("auth_http_send client_port client_port", 'duplicate value "client_port" in "auth_'),
        ("auth_http_send off client_port", 'invalid value "off" in "auth_http_send" directive'),
        ("auth_http_cache 0", '"auth_http_cache" directive invalid number "0"'),
        ("auth_http_cache 10 valid=x", 'invalid parameter "valid=x"'),
        ("auth_http_cache 10 other=1s", 'invalid parameter "other=1s"'),
        ("auth_http_cache off valid=1s", 'invalid parameter "valid=1s"'),
        ("proxy_next_upstream_tries x", '"proxy_next_upstream_tries" directive invalid number'),
        ("auth_http https://127.0.0.1:x/", 'invalid port in auth_http "127.0.0.1:x/"'),
    ],
)
def test_errors(tmp_path, directive, message):
    text = err(tmp_path, EV + f"mail {{ auth_http 127.0.0.1/;\n{directive}; " + SRV + " }")
    assert text.startswith(message) and text.endswith(" in F:3"), text


def test_proxy_next_upstream_tries(tmp_path):
    srv = server_conf(tmp_path, "auth_http 127.0.0.1/; proxy_next_upstream_tries 0; " + SRV)
    assert srv.proxy_next_upstream_tries == 0
