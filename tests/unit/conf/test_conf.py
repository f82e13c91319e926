"""Config language, directive errors (exact text, file and line), merging and load-time checks."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from fastmail.conf import ConfigError, load
from fastmail.conf.table import parse_size, parse_time

AUTH = "auth_http 127.0.0.1:9000/auth;"


def write(tmp: Path, text: str, name: str = "f.conf") -> Path:
    p = tmp / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(text.encode())
    return p


def err(tmp: Path, text: str, params: str | None = None) -> str:
    p = write(tmp, text)
    with pytest.raises(ConfigError) as e:
        load(str(p), str(tmp), params)
    return str(e.value).replace(str(p), "F")


def ok(tmp: Path, text: str, params: str | None = None):
    return load(str(write(tmp, text)), str(tmp), params)


EV = "events {}\n"


@pytest.mark.parametrize(
    "text,expected",
    [
        (EV + "\n\nfoo 1;\n", 'unknown directive "foo" in F:4'),
        (EV + "Listen 1;\n", 'unknown directive "Listen" in F:2'),
        (
            EV + "mail { server { listen; } }",
            'invalid number of arguments in "listen" directive in F:2',
        ),
        (EV + "mail {\n listen 1;\n}", '"listen" directive is not allowed here in F:3'),
        (EV + "mail {\n timeout 1s;\n timeout 2s;\n}", '"timeout" directive is duplicate in F:4'),
        (EV + "mail {\n", 'unexpected end of file, expecting "}" in F:3'),
        (EV + "}\n", 'unexpected "}" in F:2'),
        (EV + "worker_processes 1 }", 'unexpected "}" in F:2'),
        (EV + "mail {\n timeout x;\n}", '"timeout" directive invalid value in F:3'),
        (
            EV + "worker_processes\n 1\n 2;",
            'invalid number of arguments in "worker_processes" directive in F:4',
        ),
        (EV + "worker_processes 1", 'unexpected end of file, expecting ";" or "}" in F:2'),
        (EV + ";", 'unexpected ";" in F:2'),
        (EV + '"1""2";', 'unexpected """ in F:2'),
        (
            EV + "worker_processes $var{x};",
            'directive "worker_processes" is not terminated by ";" in F:2',
        ),
        (EV + "mail;", 'directive "mail" has no opening "{" in F:2'),
        (EV + "mail x {}", 'invalid number of arguments in "mail" directive in F:2'),
        (EV + "imap_auth plain;", '"imap_auth" directive is not allowed here in F:2'),
        (EV + "mail { mail {} }", '"mail" directive is not allowed here in F:2'),
        (EV + "mail {} mail {}", '"mail" directive is duplicate in F:2'),
        (EV + "events {}", '"events" directive is duplicate in F:2'),
        (
            EV + "mail { proxy yes; }",
            'invalid value "yes" in "proxy" directive, it must be "on" or "off" in F:2',
        ),
        (EV + "mail { starttls yes; }", 'invalid value "yes" in F:2'),
        (EV + "mail { imap_auth apop; }", 'invalid value "apop" in F:2'),
        (EV + "mail { pop3_auth login; }", 'invalid value "login" in F:2'),
        (EV + "mail { max_errors -1; }", '"max_errors" directive invalid number in F:2'),
        (
            EV + "mail { imap_client_buffer 1g; }",
            '"imap_client_buffer" directive invalid value in F:2',
        ),
        (
            EV + "mail { ssl_session_timeout 1ms; }",
            '"ssl_session_timeout" directive invalid value in F:2',
        ),
        (EV + "mail { server { protocol IMAP; } }", 'unknown protocol "IMAP" in F:2'),
        (EV + "mail { server { protocol a}b; } }", 'unknown protocol "a}b" in F:2'),
        ("events { worker_connections x; }", 'invalid number "x" in F:1'),
        ("events { use kqueue; }", 'invalid event type "kqueue" in F:1'),
        ("error_log x verbose;" + EV, 'invalid log level "verbose" in F:1'),
        ("error_log x info debug_mail;" + EV, 'invalid log level "debug_mail" in F:1'),
        ("error_log x debug_mail info;" + EV, 'duplicate log level "info" in F:1'),
        ("error_log x error error;" + EV, 'duplicate log level "error" in F:1'),
        ("worker_processes x;" + EV, '"worker_processes" directive invalid value in F:1'),
        (EV + "load_module x.so;", '"load_module" directive is specified too late in F:2'),
        ("", 'no "events" section in configuration'),
        (EV + "mail { resolver 127.0.0.1:0; }", 'invalid port in resolver "127.0.0.1:0" in F:2'),
        (EV + "mail { resolver valid=30s; }", "no name servers defined in F:2"),
        (EV + "mail { resolver 127.0.0.1 valid=x; }", "invalid parameter: valid=x in F:2"),
        (EV + "mail { resolver off; resolver off; }", '"resolver" directive is duplicate in F:2'),
        (
            EV + "mail { auth_http Https://127.0.0.1/x; }",  # only "http://" and "https://"
            'invalid port in auth_http "Https://127.0.0.1/x" in F:2',
        ),
        (EV + 'mail { auth_http ""; }', 'no host in auth_http "" in F:2'),
        (
            EV + "mail { ssl_session_cache shared:X:1k; }",
            'session cache "shared:X:1k" is too small in F:2',
        ),
        (EV + "mail { ssl_session_cache foo; }", 'invalid session cache "foo" in F:2'),
        (
            EV + "mail { set_real_ip_from 10.0.0.0/33; }",
            'host not found in set_real_ip_from "10.0.0.0/33" in F:2',
        ),
    ],
)
def test_error_text_and_line(tmp_path: Path, text: str, expected: str) -> None:
    assert err(tmp_path, text) == expected


@pytest.mark.parametrize(
    "listen,reason",
    [
        ("127.0.0.1:0", 'invalid port in "127.0.0.1:0" of the "listen" directive'),
        (":10143", 'no host in ":10143" of the "listen" directive'),
        ("99999", 'invalid port in "99999" of the "listen" directive'),
        ("127.0.0.1:2-1", 'invalid port range in "127.0.0.1:2-1" of the "listen" directive'),
        ("[::1", 'invalid host in "[::1" of the "listen" directive'),
        ("unix:", 'no path in the unix domain socket in "unix:" of the "listen" directive'),
        ("bind", 'host not found in "bind" of the "listen" directive'),
        ("10143 reuseport", 'the invalid "reuseport" parameter'),
        ("10143 BIND", 'the invalid "BIND" parameter'),
        ("10143 backlog=0", 'invalid backlog "backlog=0"'),
        ("10143 rcvbuf=x", 'invalid rcvbuf "rcvbuf=x"'),
        ("10143 sndbuf=1g2", 'invalid sndbuf "sndbuf=1g2"'),
        ("10143 ipv6only=ox", 'invalid ipv6only flags "ox"'),
        ("10143 ipv6only=yes", 'the invalid "ipv6only=yes" parameter'),
        ("10143 so_keepalive=::", 'invalid so_keepalive value: "::"'),
        ("10143 so_keepalive=ON", 'invalid so_keepalive value: "ON"'),
    ],
)
def test_listen_errors(tmp_path: Path, listen: str, reason: str) -> None:
    text = EV + f"mail {{ {AUTH}\n server {{\n listen {listen};\n }} }}"
    assert err(tmp_path, text) == f"{reason} in F:4"


def test_load_time_checks(tmp_path: Path) -> None:
    srv = "server {\n listen 127.0.0.1:10143;\n protocol imap;\n}\n"
    assert (
        err(tmp_path, EV + "mail {\n" + srv + "}") == 'no "auth_http" is defined for server in F:3'
    )
    assert (
        err(tmp_path, EV + "mail {\n server\n {\n }\n}")
        == 'no "listen" is defined for server in F:4'
    )
    no_proto = f"mail {{ {AUTH}\n server {{\n listen 127.0.0.1:10143;\n }}\n}}"
    assert err(tmp_path, EV + no_proto) == "unknown mail protocol for server in F:3"
    dup = f"mail {{ {AUTH}\n server {{ listen 10143; protocol imap; }}\n server {{ listen *:10143; }} }}"
    assert err(tmp_path, EV + dup) == 'duplicate "0.0.0.0:10143" address and port pair in F:4'
    ssl = f"mail {{ {AUTH}\n server {{\n listen 127.0.0.1:10993 ssl;\n protocol imap; }} }}"
    assert (
        err(tmp_path, EV + ssl)
        == 'no "ssl_certificate" is defined for the "listen ... ssl" directive in F:4'
    )
    st = f"mail {{ {AUTH}\n starttls on;\n server {{ listen 127.0.0.1:10143; protocol imap; }} }}"
    assert (
        err(tmp_path, EV + st)
        == 'no "ssl_certificate" is defined for the "starttls" directive in F:3'
    )
    nokey = f"mail {{ {AUTH} ssl_certificate c.pem;\n starttls on;\n server {{ listen 127.0.0.1:10143; protocol imap; }} }}"
    assert (
        err(tmp_path, EV + nokey)
        == 'no "ssl_certificate_key" is defined for the "starttls" directive in F:3'
    )
    fewer = f"mail {{ {AUTH} ssl_certificate a; ssl_certificate b; ssl_certificate_key k;\n starttls only;\n server {{ listen 127.0.0.1:10143; protocol imap; }} }}"
    assert err(tmp_path, EV + fewer) == (
        'no "ssl_certificate_key" is defined for certificate "b" and the "starttls" directive in F:3'
    )
    # protocol is checked (core) before auth_http, for every server in file order
    two = "mail {\n server { listen 127.0.0.1:10001; protocol imap; }\n server { listen 127.0.0.1:10002; }\n}"
    assert err(tmp_path, EV + two) == "unknown mail protocol for server in F:4"
    assert ok(tmp_path, EV + "mail { }").mail.servers == []


def test_worker_connections_check(tmp_path: Path) -> None:
    text = f"events {{ worker_connections 2; }} mail {{ {AUTH} server {{ listen 127.0.0.1:10001; listen 127.0.0.1:10002; protocol imap; }} }}"
    with pytest.raises(ConfigError) as e:
        load(str(write(tmp_path, text)), str(tmp_path))
    assert str(e.value) == "2 worker_connections are not enough for 2 listening sockets"
    assert e.value.after_parse is True  # type: ignore[attr-defined]


def test_quotes_and_escapes(tmp_path: Path) -> None:
    text = (
        EV
        + "mail { "
        + AUTH
        + r""" imap_capabilities "A B" 'C;D' E\;F "G\tH" \"I\" "" wor"ker";"""
        + " server { listen 127.0.0.1:10143; protocol imap; } }"
    )
    caps = ok(tmp_path, text).mail.servers[0].imap_capabilities
    assert caps == ["A B", "C;D", "E\\;F", "G\tH", '"I"', "", 'wor"ker"']


def test_crlf_and_comments(tmp_path: Path) -> None:
    text = "events {}\r\n# c\r\nworker_processes 3;# x\r\nworker_processes#x 1;\r\n"
    assert err(tmp_path, text) == 'unknown directive "worker_processes#x" in F:4'


def test_include_glob_relative_sorted(tmp_path: Path) -> None:
    write(tmp_path, "server { listen 127.0.0.1:10002; protocol pop3; }", "conf/d/b.conf")
    write(tmp_path, "server { listen 127.0.0.1:10001; protocol imap; }", "conf/d/a.conf")
    write(tmp_path, "foo;", "conf/d/.hidden.conf")
    main = write(
        tmp_path, EV + f"mail {{ {AUTH} include d/*.conf; include none/*.conf; }}", "conf/m.conf"
    )
    cfg = load(str(main), str(tmp_path))
    assert [s.protocol for s in cfg.mail.servers] == ["imap", "pop3"]
    assert [p for p, _ in cfg.files] == [
        str(main),
        str(tmp_path / "conf/d/a.conf"),
        str(tmp_path / "conf/d/b.conf"),
    ]


def test_include_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.conf"
    assert (
        err(tmp_path, EV + "\ninclude nope.conf;")
        == f'open() "{missing}" failed (2: No such file or directory) in F:3'
    )
    inc = write(tmp_path, "\n}\n", "inc.conf")
    assert err(tmp_path, EV + "mail { include inc.conf; }") == f'unexpected "}}" in {inc}:2'
    inc2 = write(tmp_path, "mail {\n", "inc2.conf")
    assert (
        err(tmp_path, EV + "include inc2.conf;")
        == f'unexpected end of file, expecting "}}" in {inc2}:2'
    )
    bad = write(tmp_path, "\n\nfoo;", "bad.conf")
    assert err(tmp_path, EV + "include bad.conf;") == f'unknown directive "foo" in {bad}:3'


def test_include_path_ends_at_a_nul_as_nginxs_c_string(tmp_path: Path) -> None:
    # found by tests/fuzz (conf): open() raised ValueError past the loader
    missing = tmp_path / "nope.conf"
    assert (
        err(tmp_path, EV + '\ninclude "nope.conf\0.d/*";')
        == f'open() "{missing}" failed (2: No such file or directory) in F:3'
    )
    write(tmp_path, "worker_processes 3;", "inc.conf")
    assert ok(tmp_path, EV + "include inc.conf\0x;").main.worker_processes == 3


@pytest.mark.parametrize(
    "params,expected",
    [
        ("worker_processes 2", 'unexpected end of parameter, expecting ";" in command line'),
        ("events {}", "block directives are not supported in -g option in command line"),
        ("foo;", 'unknown directive "foo" in command line'),
        (";", 'unexpected ";" in command line'),
        ("}", 'unexpected "}" in command line'),
    ],
)
def test_g_errors(tmp_path: Path, params: str, expected: str) -> None:
    assert err(tmp_path, EV, params) == expected


def test_g_parsed_first(tmp_path: Path) -> None:
    assert ok(tmp_path, EV, "   ").main.worker_processes == 1
    assert ok(tmp_path, EV, "worker_processes 3;").main.worker_processes == 3
    text = EV + "worker_processes 1;"
    assert (
        err(tmp_path, text, "worker_processes 2;")
        == '"worker_processes" directive is duplicate in F:2'
    )


def test_merge_and_defaults(tmp_path: Path) -> None:
    text = EV + (
        "mail { " + AUTH + " timeout 10s; imap_capabilities A B; auth_http_header X-A 1;"
        " set_real_ip_from 10.0.0.0/8;"
        " server { listen 127.0.0.1:10143; protocol imap; }"
        ' server { listen 127.0.0.1:10144; protocol imap; timeout "1h 30m"; imap_capabilities C;'
        " auth_http_header X-B 2; set_real_ip_from 192.168.0.1; }"
        " server { listen 127.0.0.1:10025; protocol smtp; imap_auth login plain; } }"
    )
    a, b, c = ok(tmp_path, text).mail.servers
    assert (a.timeout, b.timeout, c.timeout) == (10000, 5400000, 10000)
    assert (a.imap_capabilities, b.imap_capabilities) == (["A", "B"], ["C"])
    assert (a.auth_http_header, b.auth_http_header) == ([("X-A", "1")], [("X-B", "2")])
    assert (a.set_real_ip_from, b.set_real_ip_from) == (["10.0.0.0/8"], ["192.168.0.1/32"])
    assert c.imap_auth == ["plain", "login"]
    assert a.server_name == socket.gethostname().lower()
    assert (a.pop3_capabilities, a.smtp_auth, a.proxy_buffer, a.xclient) == (
        ["TOP", "USER", "UIDL"],
        ["plain", "login"],
        4096,
        True,
    )
    assert (a.proxy_timeout, a.resolver, a.max_errors, a.max_commands, a.starttls) == (
        86400000,
        None,
        5,
        1000,
        "off",
    )
    assert (
        a.auth_http.host == "127.0.0.1" and a.auth_http.port == 9000 and a.auth_http.uri == "/auth"
    )


def test_protocol_inference_and_listen_params(tmp_path: Path) -> None:
    text = EV + (
        "mail { " + AUTH + " server { listen 127.0.0.1:993 proxy_protocol; listen 127.0.0.1:110; }"
        " server { listen 127.0.0.1:10587 backlog=5 so_keepalive=30m::10; protocol smtp; }"
        " server { listen 127.0.0.1:10001-10002; protocol pop3; } }"
    )
    srv = ok(tmp_path, text).mail.servers
    assert srv[0].protocol == "imap"
    first = srv[0].listens[0]
    assert (first.addr_text, first.ssl, first.proxy_protocol, first.bind) == (
        "127.0.0.1:993",
        False,
        True,
        False,
    )
    second = srv[1].listens[0]
    assert (second.backlog, second.bind, second.so_keepalive, second.keepalive) == (
        5,
        True,
        True,
        (1800, 0, 10),
    )
    assert [ls.port for ls in srv[2].listens] == [10001, 10002]


def test_socket_plan_wildcard_shares(tmp_path: Path) -> None:
    text = EV + (
        "mail { "
        + AUTH
        + " server { listen 10143; listen 127.0.0.1:10143 ssl; listen 127.0.0.2:10143 bind;"
        " protocol imap; ssl_certificate c; ssl_certificate_key k; } }"
    )
    write(tmp_path, "x", "c")
    with pytest.raises(ConfigError):  # the cert is no PEM: nginx fails loading it too
        ok(tmp_path, text)


def test_bitmask_duplicate_warns(tmp_path: Path) -> None:
    text = EV + "mail { imap_auth plain PLAIN; }"
    cfg = ok(tmp_path, text)
    assert cfg.warnings == [f'duplicate value "PLAIN" in {tmp_path / "f.conf"}:2']


@pytest.mark.parametrize(
    "text,value",
    [("1h 30m", 5400000), ("500ms", 500), ("60", 60000), ("100d", 8640000000), ("1w2d", 777600000)],
)
def test_parse_time(text: str, value: int) -> None:
    assert parse_time(text) == value


@pytest.mark.parametrize("text", ["1x", "-1", "1y", "1M", "1S", "", "30m1h", "1s1s"])
def test_parse_time_errors(text: str) -> None:
    assert parse_time(text) is None


def test_parse_size() -> None:
    assert [parse_size(s) for s in ("16k", "1m", "1M", "0", "7")] == [16384, 1048576, 1048576, 0, 7]
    assert [parse_size(s) for s in ("1g", "1x", "", "k")] == [None, None, None, None]


def test_too_long_parameter(tmp_path: Path) -> None:
    assert ok(tmp_path, EV + "env " + "x" * 4095 + ";").main.env == ["x" * 4095]
    assert (
        err(tmp_path, EV + "env " + "x" * 4096 + ";")
        == 'too long parameter "xxxxxxxxxx..." started in F:2'
    )


def test_load_module_and_user(tmp_path: Path) -> None:
    cfg = ok(tmp_path, "load_module modules/ngx_mail_module.so;\n" + EV)
    assert cfg.main.load_module == [f"{tmp_path}/modules/ngx_mail_module.so"]
    two = "load_module a/ngx_mail_module.so;\nload_module b/ngx_mail_module.so;\n" + EV
    assert err(tmp_path, two) == 'module "ngx_mail_module" is already loaded in F:2'


def test_main_defaults(tmp_path: Path) -> None:
    cfg = ok(tmp_path, EV + "pid run/x.pid; worker_processes auto; error_log stderr notice;")
    assert cfg.main.pid == f"{tmp_path}/run/x.pid"
    assert cfg.main.worker_processes >= 1
    assert [(t.kind, t.level) for t in cfg.main.error_log] == [("stderr", 6)]
    assert cfg.events.worker_connections == 512 and cfg.mail is None


def test_auth_http_keepalive_extension_defaults_to_a_pool_and_inherits(tmp_path: Path) -> None:
    cfg = ok(
        tmp_path,
        EV + "mail {\n" + AUTH + "\n auth_http_keepalive 0;\n"
        " server { listen 127.0.0.1:1143; protocol imap; }\n"
        " server { listen 127.0.0.1:1144; protocol imap; auth_http_keepalive 4; }\n}\n",
    )
    assert [s.auth_http_keepalive for s in cfg.mail.servers] == [0, 4]
    plain = ok(
        tmp_path,
        EV + "mail {\n" + AUTH + "\n server { listen 127.0.0.1:1143; protocol imap; }\n}\n",
    )
    assert plain.mail.servers[0].auth_http_keepalive == 64


def test_client_id_and_smtp_auth_method_extensions_reach_the_logins(tmp_path: Path) -> None:
    from fastmail._smtplogin import SmtpLoginConf
    from fastmail.protocols import PROTOCOLS

    cfg = ok(
        tmp_path,
        EV + "mail {\n" + AUTH + "\n proxy_client_id on; proxy_smtp_auth_method login;\n"
        " server { listen 127.0.0.1:1025; protocol smtp; }\n"
        " server { listen 127.0.0.1:1026; protocol smtp; proxy_client_id off;"
        " proxy_smtp_auth_method PLAIN; }\n"
        " server { listen 127.0.0.1:1143; protocol imap; }\n}\n",
    )
    a, b, c = cfg.mail.servers
    assert [(s.proxy_client_id, s.proxy_smtp_auth_method) for s in (a, b)] == [
        (True, "login"),
        (False, "plain"),
    ]
    la, lb, lc = (PROTOCOLS[s.protocol].login(s) for s in (a, b, c))
    assert isinstance(la, SmtpLoginConf) and isinstance(lb, SmtpLoginConf)
    assert (la.client_id, la.smtp_auth_method, lb.client_id, lb.smtp_auth_method) == (
        True,
        b"login",
        False,
        b"plain",
    )
    assert lc.client_id
    plain = ok(tmp_path, EV + "mail {\n" + AUTH + "\n server { listen 127.0.0.1:25; }\n}\n")
    s = plain.mail.servers[0]
    assert (s.proxy_client_id, s.proxy_smtp_auth_method) == (False, "plain")  # nginx's bytes
    assert (
        err(tmp_path, EV + "mail {\n proxy_smtp_auth_method cram-md5;\n}\n")
        == 'invalid value "cram-md5" in F:3'
    )  # nginx's enum wording


def test_sieve_protocol_its_port_and_directives(tmp_path: Path) -> None:
    """ManageSieve (beyond nginx): `protocol sieve`, or port 4190; sieve_* directives inherit
    from mail{} as the others do, and the protocol table builds the machine from them."""
    from fastmail._sieve import DEFAULT_EXTENSIONS, SieveProfile
    from fastmail.protocols import PROTOCOLS

    cfg = ok(
        tmp_path,
        EV + "mail { " + AUTH + " sieve_auth login plain; sieve_capabilities fileinto;"
        " server { listen 127.0.0.1:4190; }"
        " server { listen 127.0.0.1:14190; protocol sieve; sieve_client_buffer 8k;"
        " sieve_capabilities vacation; sieve_capabilities enotify; } }",
    )
    a, b = cfg.mail.servers
    assert (a.protocol, b.protocol) == ("sieve", "sieve")
    assert (a.sieve_auth, a.sieve_capabilities, a.sieve_client_buffer) == (
        ["plain", "login"],
        ["fileinto"],
        4096,
    )
    assert (b.sieve_capabilities, b.sieve_client_buffer) == (["vacation", "enotify"], 8192)
    profile = PROTOCOLS["sieve"].profile(b)
    assert isinstance(profile, SieveProfile) and profile.client_buffer == 8192
    assert b'"SIEVE" "vacation enotify"\r\n"NOTIFY" "mailto"\r\n' in profile.caps_plain
    assert b'"SASL" "PLAIN LOGIN"\r\n' in profile.caps_plain
    plain = ok(tmp_path, EV + "mail { " + AUTH + " server { listen 127.0.0.1:4190; } }")
    srv = plain.mail.servers[0]
    assert (srv.sieve_auth, srv.sieve_capabilities) == (["plain"], list(DEFAULT_EXTENSIONS))


@pytest.mark.parametrize(
    ("directive", "expected"),
    [
        ("sieve_auth cram-md5;", 'invalid value "cram-md5" in F:2'),
        ("sieve_client_buffer x;", '"sieve_client_buffer" directive invalid value in F:2'),
        ("server { listen 127.0.0.1:1; protocol managesieve; }", 'unknown protocol "managesieve" in F:2'),
    ],
)  # fmt: skip
def test_sieve_directive_errors(tmp_path: Path, directive: str, expected: str) -> None:
    assert err(tmp_path, EV + "mail { " + directive + " }") == expected
