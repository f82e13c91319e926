"""An auth server that keeps a login waiting: `Auth-Status: WAIT` with `Auth-Wait` for ever,
or a failure with an Auth-Wait longer than anyone waits. nginx keeps such a client for ever
(and its fd, even after the client left); fastmail bounds the whole auth_http phase by
`timeout` plus auth_http_timeout and answers the protocol's temporary error
(docs/differences.md), and notices a client that leaves meanwhile.
"""

from __future__ import annotations

import time

import pytest
from e2e.test_faults import INTERNAL_ERROR, PROTOCOLS, login, start

from fastmail.testing.authd import Reply
from support.fastmail import fastmail_only

# timeout 2s + auth_http_timeout 1s: the auth_http phase ends after 3 s
LIMITS = "timeout 2s; auth_http_timeout 1s;"


@pytest.mark.parametrize("reply", ["wait-forever", "long-auth-wait"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_endless_wait_is_bounded(request, proxy, authd, free_port, line_client, protocol, reply):
    if reply == "wait-forever":
        authd.add_rule(lambda q: Reply.wait(1))
    else:
        authd.add_rule(lambda q: Reply.fail("Try later", wait=3600))
    fastmail_only(request.node.callspec.params["proxy"], "a login kept waiting ends after timeout")
    p = start(proxy, authd, free_port, protocol, LIMITS)
    t0 = time.monotonic()
    assert login(line_client(p.port), protocol) == INTERNAL_ERROR[protocol]
    assert 2.5 < time.monotonic() - t0 < 5
    p.wait_log(
        f"auth http server 127.0.0.1:{authd.port} kept the login waiting longer than timeout "
        "while in http auth state, client: 127.0.0.1"
    )
    p.assert_no_leaks(p.base, p.ignore)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_client_leaving_during_wait_is_noticed(
    request, proxy, authd, free_port, line_client, protocol
):
    authd.add_rule(lambda q: Reply.wait(1))
    fastmail_only(request.node.callspec.params["proxy"], "nginx reads nothing during WAIT")
    p = start(proxy, authd, free_port, protocol, "timeout 60s;")
    c = line_client(p.port)
    assert c.greeting()
    if protocol == "imap":
        c.send_line("a LOGIN alice secret")
    elif protocol == "pop3":
        c.command("USER alice")
        c.send_line("PASS secret")
    else:
        c.command("EHLO x", until=b"250 ")
        c.send_line("AUTH PLAIN AGFsaWNlAHNlY3JldA==")
    authd.wait_for_requests(2, timeout=5)  # waiting: a WAIT came, the request repeats
    c.close()
    # the session ends and its repeating auth request with it, long before `timeout`
    p.assert_no_leaks(p.base, p.ignore, timeout=3)
    seen = len(authd.requests)
    time.sleep(2.5)
    assert len(authd.requests) <= seen + 1, "auth requests go on for a client that left"
