"""PROXY protocol on a listener: a header that arrives in pieces (fastmail reassembles it,
nginx needs it whole in the first read), and a broken header closed without a reply."""

from __future__ import annotations

import socket
import time

from support.fastmail import add_user, fastmail_only, mail_block, read_line, wait_eof


def listener(proxy, authd, port: int):
    servers = f"""
    server {{
        listen 127.0.0.1:{port} proxy_protocol;
        protocol imap;
        set_real_ip_from 127.0.0.1;
    }}"""
    p = proxy(mail_block(authd, servers))
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return p
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def test_header_split_over_reads_is_reassembled(proxy, authd, fake_backend, free_port, request):
    fastmail_only(request.node.callspec.params["proxy"], "PROXY header reassembled across reads")
    add_user(authd, "alice", "secret", {"imap": ("127.0.0.1", fake_backend.port("imap"))})
    port = free_port()
    listener(proxy, authd, port)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        c.sendall(b"PROXY TCP4 192.0.2.1")
        time.sleep(0.3)
        c.sendall(b" 192.0.2.2 1234 143\r\n")
        assert read_line(c) == b"* OK IMAP4 ready\r\n"
        c.sendall(b"a LOGIN alice secret\r\n")
        assert read_line(c) == b"a OK LOGIN completed\r\n"
    assert authd.wait_for_requests(1)[0]["Client-IP"] == "192.0.2.1"


def test_broken_header_is_closed_without_a_reply(proxy, authd, free_port):
    port = free_port()
    p = listener(proxy, authd, port)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        c.sendall(b"PROXY TCP5 192.0.2.1 192.0.2.2 1234 143\r\n")
        assert wait_eof(c)
    p.wait_log('broken header: "PROXY TCP5 192.0.2.1 192.0.2.2 1234 143')
