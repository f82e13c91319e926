"""PROXY protocol on a listener: a header that arrives in pieces (fastmail reassembles it,
nginx needs it whole in the first read), a broken header closed without a reply, the
addresses as nginx reads and writes them, and the header sent on to the backend."""

from __future__ import annotations

import ipaddress
import socket
import struct
import time

import pytest

from fastmail.testing.backend import ProxyHeader
from support.fastmail import add_user, fastmail_only, mail_block, read_line, wait_eof


def listener(proxy, authd, port: int):
    servers = f"""
    server {{
        listen 127.0.0.1:{port} proxy_protocol;
        protocol imap;
        set_real_ip_from 127.0.0.1;
    }}"""
    p = proxy(mail_block(authd, servers))
    wait_listening(port)
    return p


def wait_listening(port: int) -> None:
    # readiness cannot be a greeting: the listener waits for a PROXY header first
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
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


def v2(src: bytes, dst: bytes) -> bytes:
    body = src + dst + struct.pack("!HH", 1234, 143)
    return b"\r\n\r\n\x00\r\nQUIT\n\x21\x21" + struct.pack("!H", len(body)) + body


def v6(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


# (header, Client-IP after realip, Proxy-Protocol-Addr): addresses as nginx reads and writes
# them (ngx_parse_addr, ngx_inet6_ntop), which is not always what Python or libc would do.
ADDRESSES = [
    (b"PROXY TCP4 192.0.2.1 192.0.2.2 1234 143\r\n", "192.0.2.1", "192.0.2.1"),
    (b"PROXY TCP4  192.0.2.2 1234 143\r\n", "127.0.0.1", ""),  # empty source: taken, no realip
    (b"PROXY TCP4 1..2.3 192.0.2.2 1234 143\r\n", "1.0.2.3", "1..2.3"),
    (b"PROXY TCP4 01.002.3.4 192.0.2.2 1234 143\r\n", "1.2.3.4", "01.002.3.4"),
    (b"PROXY TCP4 255.255.255.255 192.0.2.2 1234 143\r\n", "127.0.0.1", "255.255.255.255"),
    (b"PROXY TCP6 2001:DB8:0:0:0:0:0:1 ::1 1234 143\r\n", "2001:db8::1", "2001:DB8:0:0:0:0:0:1"),
    (b"PROXY TCP6 :1:2:3:4:5:6:7:8 ::1 1234 143\r\n", "1:2:3:4:5:6:7:8", ":1:2:3:4:5:6:7:8"),
    (b"PROXY TCP6 ::1.2.3.4 ::1 1234 143\r\n", "::1.2.3.4", "::1.2.3.4"),
    (v2(v6("::1:0"), v6("::1")), "::0.1.0.0", "::0.1.0.0"),
    (v2(v6("::102"), v6("::1")), "::0.0.1.2", "::0.0.1.2"),
    (v2(v6("::ffff:10.0.0.1"), v6("::1")), "::ffff:10.0.0.1", "::ffff:10.0.0.1"),
    (v2(v6("1:0:1::1:0"), v6("::1")), "1:0:1::1:0", "1:0:1::1:0"),
]


def test_addresses_are_read_and_written_as_nginx(proxy, authd, fake_backend, free_port):
    add_user(authd, "alice", "secret", {"imap": ("127.0.0.1", fake_backend.port("imap"))})
    port = free_port()
    listener(proxy, authd, port)
    for i, (header, client_ip, pp_addr) in enumerate(ADDRESSES, 1):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.sendall(header)
            assert read_line(c) == b"* OK IMAP4 ready\r\n", header
            c.sendall(b"a LOGIN alice secret\r\n")
            assert read_line(c) == b"a OK LOGIN completed\r\n", header
        req = authd.wait_for_requests(i)[-1]
        assert (req["Client-IP"], req["Proxy-Protocol-Addr"]) == (client_ip, pp_addr), header


@pytest.fixture
def via_proxy(proxy, authd, fake_backend, loop_thread, free_port):
    """`via_proxy(mode, header)`: logs in through a `proxy_protocol <mode>` server after
    sending `header`; returns the PROXY header the backend got, the client's own port and
    the listener's."""

    def run(mode: str, header: bytes) -> tuple[ProxyHeader | None, int, int]:
        backend = loop_thread.run(fake_backend.listen("imap", proxy_protocol=True))
        add_user(authd, "alice", "secret", {"imap": ("127.0.0.1", backend)})
        port = free_port()
        servers = f"""
        server {{
            listen 127.0.0.1:{port} proxy_protocol;
            protocol imap;
            set_real_ip_from 127.0.0.1;
            proxy_protocol {mode};
        }}"""
        proxy(mail_block(authd, servers))
        wait_listening(port)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.sendall(header)
            assert read_line(c) == b"* OK IMAP4 ready\r\n"
            c.sendall(b"a LOGIN alice secret\r\n")
            assert read_line(c) == b"a OK LOGIN completed\r\n"
            c.sendall(b"b NOOP\r\n")
            assert read_line(c) == b"b OK NOOP completed\r\n"
            own = c.getsockname()[1]
        return fake_backend.sessions[-1].proxy, own, port

    return run


def test_backend_v1_header_carries_the_client_after_realip(via_proxy):
    got, _, port = via_proxy("on", b"PROXY TCP6 2001:DB8:0:0:0:0:0:1 ::1 1234 143\r\n")
    # TCP6 from the client alone; the local side is where the proxy accepted
    assert got == ProxyHeader(1, "PROXY", ("2001:db8::1", 1234), ("127.0.0.1", port))


def test_backend_v1_header_without_realip_is_the_tcp_peer(via_proxy):
    got, own, port = via_proxy("on", b"PROXY UNKNOWN\r\n")
    assert got == ProxyHeader(1, "PROXY", ("127.0.0.1", own), ("127.0.0.1", port))


def test_backend_v2_header_mixes_families_as_mainline(via_proxy, request):
    fastmail_only(request.node.callspec.params["proxy"], "proxy_protocol v2 (mainline 1.31.4)")
    got, _, port = via_proxy("v2", v2(v6("2001:db8::7"), v6("::1")))
    # an IPv6 client and an IPv4 listener: INET6, the local side as ::ffff:a.b.c.d
    assert got == ProxyHeader(2, "PROXY", ("2001:db8::7", 1234), ("::ffff:127.0.0.1", port))
