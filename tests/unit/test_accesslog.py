"""The access log's config (log_format, access_log: nginx's stream log syntax and errors,
inheritance, `off`) and its formatter (fields, nginx's \\xHH escaping, JSON escaping, missing
values), on the real parser and the real C formatter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fastmail._accesslog import Format
from fastmail.conf import ConfigError, load
from fastmail.conf.accesslog import BUILTIN

EV = "events {}\n"
AUTH = "auth_http 127.0.0.1:9/auth;"


def load_mail(tmp: Path, mail: str):
    p = tmp / "f.conf"
    p.write_text(f"{EV}mail {{ {AUTH}\n{mail} }}\n")
    return load(str(p), str(tmp))


def error(tmp: Path, mail: str) -> str:
    with pytest.raises(ConfigError) as e:
        load_mail(tmp, mail)
    return str(e.value)


SRV = "server { listen 127.0.0.1:1143; protocol imap; }"


@pytest.mark.parametrize(
    "mail,expected",
    [
        ("log_format f '$nope';", 'unknown "nope" variable'),
        ("log_format f '${login';", 'the closing bracket in "login" variable is missing'),
        ("log_format f 'a $';", 'invalid parameter "$"'),
        ("log_format f escape=none '$login';", 'log format escaping "none" is not supported'),
        ("log_format f escape=xml '$login';", 'unknown log format escaping "xml"'),
        ("log_format json '$login';", 'duplicate "log_format" name "json"'),
        ("access_log logs/a.log nope;", 'unknown log format "nope"'),
        ("access_log logs/a.log combined flush=1s;", "no buffer is defined for access_log"),
        ("access_log logs/a.log combined gzip;", "does not compress access logs"),
        ("access_log logs/$login.log;", "variables in access_log paths are not supported"),
        ("access_log syslog:server=127.0.0.1 combined buffer=4k;", "cannot be buffered"),
        ("access_log off combined;", 'invalid parameter "combined"'),
        (
            "access_log logs/a.log combined buffer=4k; access_log logs/a.log json buffer=8k;",
            'access_log "logs/a.log" already defined with conflicting parameters',
        ),
    ],
)
def test_config_errors(tmp_path: Path, mail: str, expected: str) -> None:
    assert expected in error(tmp_path, mail + SRV)


def test_inheritance_and_off(tmp_path: Path) -> None:
    c = load_mail(
        tmp_path,
        "log_format short '$login $end_reason';\n"
        "access_log logs/all.log;\n"
        "server { listen 127.0.0.1:1143; protocol imap; }\n"
        "server { listen 127.0.0.1:1110; protocol pop3; access_log off; }\n"
        "server { listen 127.0.0.1:1025; protocol smtp; access_log logs/smtp.log short"
        " buffer=16k flush=2s; }\n",
    )
    imap, pop3, smtp = c.mail.servers
    [a] = imap.access_log
    assert (a.path, a.format.name, a.buffer, a.flush) == (
        f"{tmp_path}/logs/all.log", "combined", 0, 0)  # fmt: skip
    assert pop3.access_log == []
    [s] = smtp.access_log
    assert (s.format.name, s.buffer, s.flush) == ("short", 16384, 2000)


def test_off_by_default(tmp_path: Path) -> None:
    assert load_mail(tmp_path, SRV).mail.servers[0].access_log == []


def _fmt(name: str) -> Format:
    f = BUILTIN[name]
    return Format(f.name, f.json, f.parts)


VALUES = {
    "remote_addr": b"192.0.2.7", "remote_port": 40123, "server_addr": b"::1",
    "server_port": 993, "protocol": b"imap", "login": b'a"b\\c\r\n\x00\xff\xc3\xa9',
    "auth_method": b"plain", "auth_result": b"ok", "auth_reason": b"none",
    "upstream": b"10.0.0.2", "bytes_in": 120, "bytes_out": 4567, "duration": 1234,
    "end_reason": b"quit", "pid": 77, "connection": 5,
}  # fmt: skip


def test_combined_escapes_as_nginx_and_marks_missing_values() -> None:
    line = _fmt("combined").render(VALUES).decode("ascii")
    assert line.startswith("192.0.2.7:40123 [")
    assert ' imap [::1]:993 "a\\x22b\\x5Cc\\x0D\\x0A\\x00\\xFF\\xC3\\xA9" plain ok none ' in line
    # the upstream without a port is the address alone; no TLS: `-`
    assert line.endswith(" 10.0.0.2 120 4567 1.234 - - quit 77-5")


def test_json_is_valid_json_whatever_the_client_sent() -> None:
    row = json.loads(_fmt("json").render({**VALUES, "upstream": None}))
    assert row["login"] == 'a"b\\c\r\n\x00\xffé'  # a byte that is not UTF-8: its code point
    assert (row["client"], row["server"], row["upstream"]) == ("192.0.2.7:40123", "[::1]:993", "")
    assert (row["bytes_in"], row["duration"], row["session_id"]) == (120, 1.234, "77-5")
