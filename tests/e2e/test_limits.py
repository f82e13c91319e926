"""The abuse limits (beyond nginx): limit_conn_per_ip refuses one connection too many from an
address with the protocol's temporary error and a log line, and takes the next once one
closed; login_fail_limit delays logins after failures from an address or for a login name
(growing delays), then refuses them for the block time, without asking auth_http.
"""

from __future__ import annotations

import base64
import time

import pytest

from fastmail.testing.authd import Reply
from support.clients import LineClient
from support.fastmail import add_user, fastmail_only, mail_block, server

GREETING = {"imap": b"* OK", "pop3": b"+OK", "smtp": b"220 "}
BUSY = {
    "imap": b"* BYE [UNAVAILABLE] Too many connections from your address\r\n",
    "pop3": b"-ERR [SYS/TEMP] Too many connections from your address\r\n",
    "smtp": b"421 4.7.0 mx.test Too many connections from your address\r\n",
}
REFUSED = {
    "imap": b"a NO [UNAVAILABLE] Too many failed logins, try again later\r\n",
    "pop3": b"-ERR [SYS/TEMP] Too many failed logins, try again later\r\n",
    "smtp": b"454 4.7.0 Temporary authentication failure\r\n",
}
FAILED = {
    "imap": b"a NO Invalid login\r\n",
    "pop3": b"-ERR Invalid login\r\n",
    "smtp": b"535 5.7.0 Invalid login\r\n",
}
PROTOCOLS = ["imap", "pop3", "smtp"]


def start(request, proxy, authd, free_port, protocol: str, extra: str):
    fastmail_only(request.node.callspec.params["proxy"], "abuse limits")
    port = free_port()
    p = proxy(mail_block(authd, server(port, protocol), extra), [(port, GREETING[protocol])])
    p.port = port
    p.ignore = [authd.port]
    p.base = p.baseline(p.ignore)
    return p


def login(port: int, protocol: str, user: str, password: str, source: str = "127.0.0.1"):
    """One login on a new connection: (the reply, seconds it took)."""
    with LineClient("127.0.0.1", port, timeout=10, source=source) as c:
        assert c.greeting().startswith(GREETING[protocol])
        t0 = time.monotonic()
        if protocol == "imap":
            c.send_line(f"a LOGIN {user} {password}")
        elif protocol == "pop3":
            assert c.command(f"USER {user}") == b"+OK\r\n"
            c.send_line(f"PASS {password}")
        else:
            c.command("EHLO x", until=b"250 ")
            c.read_line()
            ir = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
            c.send_line(f"AUTH PLAIN {ir}")
        reply = c.read_line()
        return reply, time.monotonic() - t0


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_connections_per_address(request, proxy, authd, free_port, protocol):
    p = start(request, proxy, authd, free_port, protocol, "limit_conn_per_ip 3;")
    held = [LineClient("127.0.0.1", p.port) for _ in range(3)]
    for c in held:
        assert c.greeting().startswith(GREETING[protocol])
    with LineClient("127.0.0.1", p.port) as extra:
        assert extra.read_all(timeout=5) == BUSY[protocol]
    p.wait_log(
        "limiting connections from 127.0.0.1 (limit_conn_per_ip 3), client: 127.0.0.1, "
        f"server: 127.0.0.1:{p.port}"
    )
    # another address is not limited by this one's connections
    with LineClient("127.0.0.1", p.port, source="127.0.0.2") as other:
        assert other.greeting().startswith(GREETING[protocol])
    # one closed: the next is taken
    held.pop().close()
    time.sleep(0.2)
    with LineClient("127.0.0.1", p.port) as again:
        assert again.greeting().startswith(GREETING[protocol])
    for c in held:
        c.close()
    p.assert_no_leaks(p.base, p.ignore)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_failed_logins_are_delayed_then_refused(request, proxy, authd, free_port, protocol):
    authd.add_rule(lambda q: Reply.fail("Invalid login"))
    p = start(request, proxy, authd, free_port, protocol, "login_fail_limit 1 block=2s;")
    reply, took = login(p.port, protocol, "alice", "wrong")
    assert reply == FAILED[protocol] and took < 0.8
    # one failure: the next login waits 1 s before auth_http hears of it
    reply, took = login(p.port, protocol, "alice", "wrong")
    assert reply == FAILED[protocol] and 0.9 < took < 2.5
    p.wait_log("login delayed 1s after failed logins while in auth state, client: 127.0.0.1")
    # two failures (twice the limit): refused at once, whoever it claims to be
    asked = len(authd.requests)
    reply, took = login(p.port, protocol, "bob", "wrong")
    assert reply == REFUSED[protocol] and took < 0.8
    assert len(authd.requests) == asked  # auth_http is not asked
    p.wait_log("[error] ")
    p.wait_log("login refused after too many failed logins while in auth state, client: 127.0.0.1")
    # the name is throttled from another address too
    reply, _ = login(p.port, protocol, "alice", "wrong", source="127.0.0.2")
    assert reply == REFUSED[protocol]
    # once the block time passed since the last failure, logins are heard again (delayed)
    time.sleep(2.1)
    reply, took = login(p.port, protocol, "carol", "wrong", source="127.0.0.3")
    assert reply == FAILED[protocol] and took < 0.8
    reply, took = login(p.port, protocol, "bob", "wrong")
    assert reply == FAILED[protocol] and took > 0.9
    p.assert_no_leaks(p.base, p.ignore)


def test_growing_delays_and_a_client_that_leaves(request, proxy, authd, free_port):
    authd.add_rule(lambda q: Reply.fail("Invalid login"))
    p = start(request, proxy, authd, free_port, "imap", "login_fail_limit 2 delay=2s block=1m;")
    took = [login(p.port, "imap", "alice", "wrong")[1] for _ in range(4)]
    assert took[0] < 0.8 and took[1] < 0.8
    assert 0.9 < took[2] < 1.8 and 1.9 < took[3] < 3.0  # 1 s, then 2 s (the cap)
    reply, t = login(p.port, "imap", "alice", "wrong")
    assert reply == b"a NO [UNAVAILABLE] Too many failed logins, try again later\r\n"
    # a client leaving while its login is delayed ends its session at once
    with LineClient("127.0.0.1", p.port, source="127.0.0.2") as c:
        c.greeting()
        c.send_line("a LOGIN alice wrong")
        p.wait_log("login delayed", timeout=5)
    asked = len(authd.requests)
    p.assert_no_leaks(p.base, p.ignore)
    time.sleep(2.2)
    assert len(authd.requests) == asked


def test_a_backend_failover_is_not_throttled(request, proxy, authd, dovecot, free_port):
    """A login delayed after a failure is delayed once: when its backend cannot be reached,
    the failover's new question to auth_http (proxy_next_upstream_tries) is not a new login."""
    closed = free_port()
    add_user(
        authd,
        "alice",
        "secret",
        {"imap": [("127.0.0.1", closed), ("127.0.0.1", dovecot.imap_port)]},
    )
    p = start(request, proxy, authd, free_port, "imap",
              "login_fail_limit 1 block=1m; proxy_next_upstream_tries 2;")  # fmt: skip
    assert login(p.port, "imap", "alice", "wrong")[0].startswith(b"a NO ")
    reply, took = login(p.port, "imap", "alice", "secret")
    assert reply.startswith(b"a OK") or reply.startswith(b"* CAPABILITY"), reply
    assert 0.9 < took < 1.8  # one delay of 1 s, not a second one before the failover's question
    p.wait_log(f'login: "alice", upstream: 127.0.0.1:{dovecot.imap_port}')
    assert p.error_log().count("login delayed") == 1
