"""The abuse limits' settings and decisions (fastmail/conf/guard.py, fastmail/guard.py): the
directives as written, the address keys (IPv6 by prefix), the throttle's delays and block,
and the tables' bound. End to end: tests/e2e/test_limits.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastmail import guard
from fastmail.conf import ConfigError, load
from fastmail.conf.model import ConnLimit, LoginFailLimit, ServerConf
from fastmail.guard import REFUSE, Guard, address_key


def _servers(tmp_path: Path, text: str) -> list[ServerConf]:
    conf = tmp_path / "f.conf"
    conf.write_text(
        "events {}\nmail {\n auth_http 127.0.0.1:9/a;\n"
        + text
        + "\n server { listen 127.0.0.1:1143; protocol imap; }\n}\n"
    )
    mail = load(str(conf), f"{tmp_path}/").mail
    assert mail is not None
    return mail.servers


def test_directives(tmp_path: Path) -> None:
    (s,) = _servers(tmp_path, "limit_conn_per_ip 10 ipv6_prefix=/56; login_fail_limit 5;")
    assert s.limit_conn_per_ip == ConnLimit(10, 56)
    assert s.login_fail_limit == LoginFailLimit(5, 600_000, 15_000, 600_000, 64)
    (s,) = _servers(tmp_path, "login_fail_limit 3 window=1m delay=4s block=30s ipv6_prefix=48;")
    assert s.login_fail_limit == LoginFailLimit(3, 60_000, 4_000, 30_000, 48)
    assert s.limit_conn_per_ip is None
    (s,) = _servers(tmp_path, "limit_conn_per_ip 0; login_fail_limit 0;")
    assert s.limit_conn_per_ip is None and s.login_fail_limit is None


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("limit_conn_per_ip x;", '"limit_conn_per_ip" directive invalid number'),
        ("limit_conn_per_ip 1 foo=2;", 'invalid parameter "foo=2"'),
        ("limit_conn_per_ip 1 ipv6_prefix=129;", 'invalid value "ipv6_prefix=129"'),
        ("login_fail_limit 1 window=0;", 'invalid value "window=0"'),
        ("login_fail_limit 1 delay=1x;", 'invalid value "delay=1x"'),
        ("login_fail_limit 1 block=1s block=2s;", 'invalid parameter "block=2s"'),
        ("login_fail_limit 1; login_fail_limit 2;", '"login_fail_limit" directive is duplicate'),
    ],
)
def test_directive_errors(tmp_path: Path, text: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        _servers(tmp_path, text)


def test_address_keys() -> None:
    assert address_key(b"192.0.2.1", 64) == b"192.0.2.1"
    assert address_key(b"unix:", 64) == b"unix:"
    a = address_key(b"2001:db8:1:2::1", 64)
    assert a == address_key(b"2001:db8:1:2:ffff::9", 64)
    assert a != address_key(b"2001:db8:1:3::1", 64)
    assert address_key(b"2001:db8:1:2::1", 60) == address_key(b"2001:db8:1:f::1", 60)
    assert address_key(b"2001:db8:1:2::1", 60) != address_key(b"2001:db8:1:1f::1", 60)
    assert address_key(b"::1", 128) != address_key(b"::2", 128)


def test_throttle_delays_grow_to_the_cap_then_refuse() -> None:
    lim = LoginFailLimit(3, 60_000, 4_000, 10_000, 64)
    g = Guard()
    now = 1_000_000
    delays = []
    for _ in range(6):
        delays.append(g.before(lim, b"192.0.2.1", b"alice", now))
        g.failed(lim, b"192.0.2.1", b"alice", now)
        now += 100
    assert delays == [0, 0, 0, 1000, 2000, 4000]
    assert g.before(lim, b"192.0.2.1", b"bob", now) == REFUSE  # by address
    assert g.before(lim, b"192.0.2.9", b"alice", now) == REFUSE  # by name
    assert g.before(lim, b"192.0.2.9", b"bob", now) == 0
    # the block ends 10 s after the last failure; the count stays within the window
    assert g.before(lim, b"192.0.2.1", b"bob", now + 9_800) == REFUSE
    assert g.before(lim, b"192.0.2.1", b"bob", now + 10_000) == 4000
    # past the window (and the block), everything is forgotten
    assert g.before(lim, b"192.0.2.1", b"alice", now + 60_100) == 0
    assert g.stats()["refused_logins"] == 3 and g.stats()["delayed_logins"] == 4


def test_a_good_login_forgets_the_name_not_the_address() -> None:
    lim = LoginFailLimit(1, 60_000, 4_000, 10_000, 64)
    g = Guard()
    g.failed(lim, b"192.0.2.1", b"alice", 0)
    g.succeeded(b"alice")
    assert g.before(lim, b"192.0.2.2", b"alice", 1) == 0
    assert g.before(lim, b"192.0.2.1", b"bob", 1) == 1000


def test_tables_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guard, "TABLE_SIZE", 100)
    lim = LoginFailLimit(1, 60_000, 4_000, 10_000, 64)
    g = Guard()
    for i in range(1000):
        g.failed(lim, b"10.0.%d.%d" % divmod(i, 256), b"user%d" % i, i)
    assert g.stats()["tracked_addresses"] == 100 and g.stats()["tracked_logins"] == 100
    # the most recent are kept, the oldest dropped
    assert g.before(lim, b"10.0.3.231", b"x", 1000) != 0
    assert g.before(lim, b"10.0.0.0", b"y", 1000) == 0
