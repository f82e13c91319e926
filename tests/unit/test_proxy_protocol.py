"""PROXY protocol parse/build and realip (fastmail/_proxy.pyx), as nginx's ngx_proxy_protocol.c
and ngx_mail_realip_module.c do them."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from fastmail._proxy import (
    NEED_MORE,
    V2_SIGNATURE,
    ProxyError,
    ProxyHeader,
    TrustedNetworks,
    build_v1,
    build_v2,
    crc32c,
    parse,
    realip,
    tlv,
    trusted,
)

V1_OK = [
    (b"PROXY TCP4 192.0.2.1 192.0.2.2 1234 25\r\n", (b"192.0.2.1", b"192.0.2.2", 1234, 25)),
    (b"PROXY TCP6 2001:db8::1 ::1 0 65535\r\n", (b"2001:db8::1", b"::1", 0, 65535)),
    # nginx does not check that the text is an address, nor that it matches TCP4/TCP6.
    (b"PROXY TCP4 abc.def ffff 1 2\r\n", (b"abc.def", b"ffff", 1, 2)),
    (b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n", (b"1.2.3.4", b"5.6.7.8", 1, 2)),
    # ...nor that it is there at all (nginx 1.22.1 took both: test_proxy_header.py)
    (b"PROXY TCP4  192.0.2.2 1234 25\r\n", (b"", b"192.0.2.2", 1234, 25)),
    (b"PROXY TCP4   00 00065535\r\n", (b"", b"", 0, 65535)),
]


def v2(cmd: int, fam: int, body: bytes) -> bytes:
    return V2_SIGNATURE + bytes((cmd, fam)) + struct.pack("!H", len(body)) + body


V2_INET = v2(0x21, 0x11, bytes([192, 0, 2, 7, 10, 0, 0, 1]) + struct.pack("!HH", 4321, 143))
V2_INET6 = v2(
    0x21,
    0x21,
    bytes.fromhex("20010db8000000000000000000000007")
    + bytes(15)
    + b"\x01"
    + struct.pack("!HH", 1, 2)
    + tlv(0xE0, b"x"),
)


def three_ways(data: bytes, expected: ProxyHeader) -> None:
    """Whole, every prefix (needs more, never a wrong answer), and with trailing bytes."""
    assert parse(data) == expected
    for i in range(len(data)):
        assert parse(data[:i]) is NEED_MORE, data[:i]
        assert isinstance(parse(data[:i], final=True), ProxyError), data[:i]
    got = parse(data + b"EHLO early\r\n")
    assert got == expected
    assert (data + b"EHLO early\r\n")[got.consumed :] == b"EHLO early\r\n"


@pytest.mark.parametrize("data,fields", V1_OK)
def test_v1_valid_whole_bytewise_and_trailing(data: bytes, fields: tuple) -> None:
    src, dst, sport, dport = fields
    three_ways(data, ProxyHeader(1, len(data), src, dst, sport, dport))


def test_v1_unknown_consumes_to_crlf_without_addresses() -> None:
    data = b"PROXY UNKNOWN anything at all\r\n"
    three_ways(data, ProxyHeader(1, len(data)))
    three_ways(b"PROXY UNKNOWN\r\n", ProxyHeader(1, 15))


@pytest.mark.parametrize(
    "data",
    [
        b"PROXY TCP4 192.0.2.1 192.0.2.2 1234 25\n",  # LF without CR
        b"PROXY TCP4 192.0.2.1 192.0.2.2 1234 99999\r\n",  # port out of range
        b"PROXY TCP4 192.0.2.1 192.0.2.2 -1 25\r\n",
        b"PROXY TCP4 192.0.2.1 192.0.2.2  25\r\n",  # empty port
        b"PROXY TCP4 192.0.2.1 192.0.2.2 +1234 25\r\n",
        b"PROXY TCP4 192.0.2.1 192.0.2.2 1234 25 \r\n",
        b"PROXY TCP5 192.0.2.1 192.0.2.2 1234 25\r\n",
        b"PROXY TCP4 192.0.2.1x 192.0.2.2 1234 25\r\n",
        b"PROXY TCP4 192.0.2.1 192.0.2.2 1234 25\rX",
        b"proxy TCP4 192.0.2.1 192.0.2.2 1234 25\r\n",  # case-sensitive
        b"EHLO x\r\n",
        b"PROXY UNKNOWX\r\n",
    ],
)
def test_v1_malformed_is_broken_header(data: bytes) -> None:
    got = parse(data)
    assert isinstance(got, ProxyError)
    assert got.message is not None and got.message.startswith('broken header: "')
    # mainline logs only up to the first CR or LF.
    assert "\r" not in got.message and "\n" not in got.message


def test_v1_broken_header_log_text() -> None:
    assert parse(b"PROXY TCP4 192.0.2.1", final=True) == ProxyError(
        'broken header: "PROXY TCP4 192.0.2.1"'
    )
    assert parse(b"EHLO x\r\nMAIL") == ProxyError('broken header: "EHLO x"')


def test_v1_longer_than_107_bytes_is_rejected() -> None:
    data = b"PROXY UNKNOWN " + b"x" * 100 + b"\r\n"
    assert isinstance(parse(data), ProxyError)
    assert isinstance(parse(data[:107]), ProxyError)  # no CRLF within the maximum
    ok = b"PROXY UNKNOWN " + b"x" * 91 + b"\r\n"
    assert len(ok) == 107 and parse(ok) == ProxyHeader(1, 107)


def test_v1_field_that_cannot_become_valid_fails_before_the_crlf() -> None:
    # fastmail waits for a split header, but not for one already broken
    for data in (
        b"PROXY TCP4 192.0.2.x",
        b"PROXY TCP4 192.0.2.1 192.0.2.2 12x",
        b"PROXY TCP4 192.0.2.1 192.0.2.2 1234 65536",
        b"PROXY TCP4 192.0.2.1 192.0.2.2  ",
    ):
        assert parse(data) == ProxyError(f'broken header: "{data.decode()}"'), data


def test_v2_inet_whole_bytewise_and_trailing() -> None:
    three_ways(V2_INET, ProxyHeader(2, len(V2_INET), b"192.0.2.7", b"10.0.0.1", 4321, 143))


def test_v2_inet6_keeps_tlvs() -> None:
    three_ways(
        V2_INET6,
        ProxyHeader(2, len(V2_INET6), b"2001:db8::7", b"::1", 1, 2, tlv(0xE0, b"x")),
    )


@pytest.mark.parametrize(
    "addr,text",
    [
        ("::1", b"::1"),
        ("::", b"::"),
        ("1::", b"1::"),
        ("2001:db8:0:0:1:0:0:1", b"2001:db8::1:0:0:1"),  # the first of equal zero runs
        ("1:0:1:0:0:0:1:0", b"1:0:1::1:0"),
        ("1:2:3:4:5:6:0:8", b"1:2:3:4:5:6:0:8"),  # a single zero word stays
        ("::ffff:10.0.0.1", b"::ffff:10.0.0.1"),
        ("::ffff:0:0", b"::ffff:0.0.0.0"),
        ("::1:0", b"::0.1.0.0"),  # nginx's ngx_inet6_ntop, not RFC 5952 (test_proxy_header.py)
        ("::102", b"::0.0.1.2"),
        ("::101", b"::101"),
        ("::a:b:c:d", b"::a:b:c:d"),
    ],
)
def test_v2_inet6_address_text_is_nginxs(addr: str, text: bytes) -> None:
    packed = ipaddress.IPv6Address(addr).packed
    got = parse(v2(0x21, 0x21, packed + packed + struct.pack("!HH", 1, 2)))
    assert isinstance(got, ProxyHeader) and got.src_addr == got.dst_addr == text


@pytest.mark.parametrize(
    "cmd,fam",
    [(0x20, 0x11), (0x21, 0x12), (0x21, 0x31), (0x21, 0x00)],  # LOCAL, DGRAM, UNIX, UNSPEC
)
def test_v2_local_and_unsupported_are_consumed_without_addresses(cmd: int, fam: int) -> None:
    data = v2(cmd, fam, bytes(12))
    assert parse(data + b"A1") == ProxyHeader(2, len(data))


def test_v2_errors() -> None:
    assert parse(v2(0x11, 0x11, bytes(12))) == ProxyError("unknown PROXY protocol version: 1")
    assert parse(v2(0x21, 0x11, bytes(11))) == ProxyError(None)  # too short: close, no log
    assert parse(v2(0x21, 0x21, bytes(35))) == ProxyError(None)
    big = v2(0x21, 0x11, bytes(12) + tlv(0xE0, bytes(4100)))
    assert parse(big[:200]) == ProxyError("header is too large")
    # 1.22.1's 107-byte read: 92 bytes of addresses+TLVs no longer fit.
    mid = v2(0x21, 0x11, bytes(12) + tlv(0xE0, bytes(77)))
    assert len(mid) == 108
    assert parse(mid[:107], limit=107) == ProxyError("header is too large")
    assert parse(mid, limit=108).consumed == 108
    assert parse(V2_INET[:20], final=True) == ProxyError("header is too large")


def test_v2_header_longer_than_the_read_size_is_too_large_even_handed_whole() -> None:
    # found by tests/fuzz (proxy): handed more than `limit` bytes, such a header was
    # accepted, though its prefixes had been refused; v1 is cut at the limit likewise
    mid = v2(0x21, 0x11, bytes(12) + tlv(0xE0, bytes(77)))
    assert parse(mid, limit=107) == ProxyError("header is too large")
    assert parse(mid + b"a1 NOOP\r\n", limit=107) == ProxyError("header is too large")
    assert parse(mid, limit=107, final=True) == ProxyError("header is too large")


def test_realip_trusted_networks() -> None:
    nets = TrustedNetworks.from_entries(["10.0.0.0/8", "::1", "unix:"])
    assert trusted(b"10.1.2.3", nets)
    assert not trusted(b"127.0.0.1", nets)
    assert trusted(b"::1", nets)
    assert trusted(b"::ffff:10.0.0.5", nets)  # v4-mapped peer on a dual-stack listener
    assert trusted(None, nets) and trusted(b"unix:", nets)
    assert not trusted(b"unix:", TrustedNetworks.from_entries(["127.0.0.1"]))
    hdr = ProxyHeader(1, 0, b"192.0.2.1", b"192.0.2.2", 1234, 25)
    assert realip(b"10.9.9.9", hdr, nets) == (b"192.0.2.1", 1234)
    assert realip(b"127.0.0.1", hdr, nets) is None  # untrusted peer: nothing changes
    bad = ProxyHeader(1, 0, b"abc.def", b"192.0.2.2", 1234, 25)
    assert realip(b"10.9.9.9", bad, nets) is None  # not an IP literal: silently kept
    assert realip(b"10.9.9.9", ProxyHeader(1, 15), nets) is None  # UNKNOWN
    assert realip(b"10.9.9.9", hdr, TrustedNetworks()) is None  # no set_real_ip_from


def test_trusted_matches_as_ngx_cidr_match() -> None:
    nets = TrustedNetworks.from_entries(["192.0.2.0/25", "2001:db8::/32", "::ffff:0:0/96"])
    assert not trusted(b"unix:", nets)  # no `unix:` entry
    assert trusted(b"192.0.2.127", nets) and not trusted(b"192.0.2.128", nets)
    assert trusted(b"2001:db8:ffff::1", nets) and not trusted(b"2001:db9::1", nets)
    assert trusted(b"fe80::1%eth0", TrustedNetworks.from_entries(["fe80::/10"]))
    # a v4-mapped peer is an IPv4 peer: the ::ffff:0:0/96 entry does not take it
    assert not trusted(b"::ffff:10.0.0.5", nets)
    assert trusted(b"::ffff:192.0.2.1", nets)
    assert trusted(b"10.0.0.1", TrustedNetworks.from_entries(["0.0.0.0/0"]))
    assert not trusted(b"::1", TrustedNetworks.from_entries(["0.0.0.0/0"]))
    assert trusted(b"10.1.2.3", TrustedNetworks.from_entries(["10.1.2.3/8"]))  # masked
    assert not trusted(b"not-an-ip", TrustedNetworks.from_entries(["0.0.0.0/0", "::/0"]))
    for entry in ("10.0.0.0/33", "::/129", "10.0.0/8", "host.example", "10.0.0.0/", "1::2::3"):
        with pytest.raises(ValueError, match="invalid set_real_ip_from entry"):
            TrustedNetworks.from_entries([entry])


@pytest.mark.parametrize(
    "src,client",
    [
        # the address as nginx reads (ngx_parse_addr) and writes it (test_proxy_header.py)
        (b"2001:DB8:0:0:0:0:0:1", b"2001:db8::1"),
        (b"1..2.3", b"1.0.2.3"),
        (b"01.002.3.4", b"1.2.3.4"),
        (b":1:2:3:4:5:6:7:8", b"1:2:3:4:5:6:7:8"),
        (b"::1.2.3.4", b"::1.2.3.4"),
        (b"::FFFF:10.0.0.1", b"::ffff:10.0.0.1"),
        (b"1::2:", b"1::2:0"),
        (b"255.255.255.255", None),  # ngx_inet_addr's INADDR_NONE
        (b"::ffff:255.255.255.255", None),
        (b"", None),
        (b"1.2.3", None),
        (b"1:2:3:4:5:6:7:8:9", None),
        (b"1::2::3", None),
        (b"12345::", None),
        (b"1:2:3:4:5:6:7:1.2.3.4", None),
    ],
)
def test_realip_reads_the_address_as_nginx(src: bytes, client: bytes | None) -> None:
    nets = TrustedNetworks.from_entries(["127.0.0.0/8"])
    got = realip(b"127.0.0.1", ProxyHeader(1, 0, src, b"::1", 1234, 143), nets)
    assert got == (None if client is None else (client, 1234))


def test_build_v1_matches_nginx_bytes() -> None:
    local = (b"127.0.0.1", 35335)
    assert build_v1((b"192.0.2.1", 1234), local) == b"PROXY TCP4 192.0.2.1 127.0.0.1 1234 35335\r\n"
    # The family follows the client alone: mixed line after realip from a TCP6 header.
    assert (
        build_v1((b"2001:db8::1", 1234), local)
        == b"PROXY TCP6 2001:db8::1 127.0.0.1 1234 35335\r\n"
    )
    assert build_v1((b"::1", 60450), (b"::1", 41215)) == b"PROXY TCP6 ::1 ::1 60450 41215\r\n"
    assert build_v1((b"10.0.0.1", 0), (b"10.0.0.2", 9)) == b"PROXY TCP4 10.0.0.1 10.0.0.2 0 9\r\n"
    assert build_v1(None, local) == b"PROXY UNKNOWN\r\n"
    assert build_v1((b"unix:", 0), local) == b"PROXY UNKNOWN\r\n"
    with pytest.raises(ValueError, match="port out of range"):
        build_v1((b"192.0.2.1", 65536), local)


def check_crc(header: bytes) -> None:
    assert header[-7:-4] == b"\x03\x00\x04"
    assert struct.unpack("!I", header[-4:])[0] == crc32c(header[:-4] + bytes(4))


def test_build_v2_inet_roundtrip_and_crc() -> None:
    out = build_v2((b"192.0.2.1", 1234), (b"127.0.0.1", 143))
    assert out[12:16] == b"\x21\x11\x00\x13"
    assert out[16:28] == bytes([192, 0, 2, 1, 127, 0, 0, 1]) + struct.pack("!HH", 1234, 143)
    check_crc(out)
    got = parse(out)
    assert isinstance(got, ProxyHeader) and got.src_addr == b"192.0.2.1"
    assert got.tlvs == out[28:]


def test_build_v2_families() -> None:
    mixed = build_v2((b"2001:db8::1", 1), (b"127.0.0.1", 2))
    assert mixed[12:14] == b"\x21\x21"
    assert mixed[32:48] == bytes(10) + b"\xff\xff" + bytes([127, 0, 0, 1])
    check_crc(mixed)
    demoted = build_v2((b"::ffff:192.0.2.1", 1), (b"::ffff:127.0.0.1", 2))
    assert demoted[12:14] == b"\x21\x11" and demoted[16:20] == bytes([192, 0, 2, 1])
    local = build_v2(None, (b"127.0.0.1", 2))
    assert local[12:16] == b"\x20\x00\x00\x07"
    check_crc(local)
    assert parse(local) == ProxyHeader(2, len(local))
    assert build_v2((b"unix:", 0), (b"127.0.0.1", 2)) == local
    v6 = build_v2((b"2001:db8::1", 1), (b"::1", 2))
    assert (
        v6[12:16] == b"\x21\x21\x00\x2b"
        and v6[16:32] == ipaddress.IPv6Address("2001:db8::1").packed
    )
    check_crc(v6)
    with pytest.raises(ValueError, match="invalid address"):
        build_v2((b"not-an-ip", 1), (b"127.0.0.1", 2))


def test_build_v2_tls_tlvs_go_before_crc() -> None:
    extra = tlv(0x02, b"mail.example.com")
    out = build_v2((b"192.0.2.1", 1), (b"127.0.0.1", 2), extra)
    assert out[28 : 28 + len(extra)] == extra
    check_crc(out)


def test_crc32c_known_vector() -> None:
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    assert crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4: 32 bytes of zeros
    assert crc32c(bytes(range(32))) == 0x46DD794E  # ... incrementing 0x00-0x1f


def test_tlv() -> None:
    assert tlv(0x02, b"mx") == b"\x02\x00\x02mx"
    with pytest.raises(ValueError):
        tlv(0x100, b"")
