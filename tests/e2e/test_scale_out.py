"""Scale-out: two proxy instances behind HAProxy (send-proxy-v2), each with `listen ...
proxy_protocol` and `set_real_ip_from 127.0.0.1`. A client on 127.0.0.2 logs in to Dovecot
through either instance, and the auth server sees the client's address, not HAProxy's.
"""

from __future__ import annotations

import imaplib
import socket
import time

import pytest

from support.fastmail import add_user, mail_block


def instance(proxy, authd, port: int, trusted: str):
    servers = f"""
    server {{
        listen 127.0.0.1:{port} proxy_protocol;
        protocol imap;
        set_real_ip_from {trusted};
    }}"""
    # readiness cannot be a greeting: the listener waits for a PROXY header first
    p = proxy(mail_block(authd, servers))
    wait_listening(port)
    return p


def wait_listening(port: int, timeout: float = 10.0) -> None:

    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class SourceIMAP(imaplib.IMAP4):
    """imaplib from a chosen source address (a second client machine on loopback)."""

    def __init__(self, host: str, port: int, source: str) -> None:
        self._source = source
        super().__init__(host, port, timeout=10)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return socket.create_connection(
            (self.host, self.port), timeout, source_address=(self._source, 0)
        )


def test_two_instances_behind_haproxy(proxy, authd, dovecot, haproxy, free_port):
    add_user(authd, "alice", "secret", {"imap": ("127.0.0.1", dovecot.imap_port)})
    ports = [free_port(), free_port()]
    instances = [instance(proxy, authd, port, "127.0.0.1") for port in ports]
    h = haproxy([("127.0.0.1", port) for port in ports], send_proxy="send-proxy-v2")
    for _ in range(4):
        with SourceIMAP("127.0.0.1", h.port, "127.0.0.2") as imap:
            assert imap.login("alice", "secret")[0] == "OK"
            _, data = imap.select("INBOX", readonly=True)
            assert data[0] is not None and int(data[0]) == 3
            imap.logout()
    reqs = authd.wait_for_requests(4)
    assert [r["Client-IP"] for r in reqs] == ["127.0.0.2"] * 4
    for p in instances:  # round robin: each instance served two of the logins
        log = p.wait_count("client logged in, client: 127.0.0.2, server: 127.0.0.1:", 2)
        assert log.count("client logged in") == 2


@pytest.mark.parametrize("trusted", ["10.0.0.0/8"])
def test_untrusted_balancer_is_not_believed(proxy, authd, dovecot, haproxy, free_port, trusted):
    add_user(authd, "alice", "secret", {"imap": ("127.0.0.1", dovecot.imap_port)})
    port = free_port()
    p = instance(proxy, authd, port, trusted)
    h = haproxy([("127.0.0.1", port)], send_proxy="send-proxy-v2")
    with SourceIMAP("127.0.0.1", h.port, "127.0.0.2") as imap:
        assert imap.login("alice", "secret")[0] == "OK"
        imap.logout()
    [req] = authd.wait_for_requests(1)
    assert req["Client-IP"] == "127.0.0.1"  # HAProxy's own address: the header was ignored
    p.wait_log("client logged in, client: 127.0.0.1, server: 127.0.0.1:")
