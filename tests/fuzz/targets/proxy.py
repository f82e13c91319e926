"""Fuzz target: the PROXY protocol v1/v2 parser, realip and the backend header builders
(fastmail/_proxy.pyx, addresses through _inet.pyx).

Input: byte 0 picks the read limit and the trusted networks, the rest is what a client (or a
load balancer) sent first. Invariants, on every input:
- no exception escapes; the result is a ProxyHeader, a ProxyError or NEED_MORE;
- a header consumes no more than it was given, nor more than the limit; an error's message is
  one log line (no CR or LF) or None;
- reassembly (the engine peeks until the header is whole): every prefix gives NEED_MORE until
  the prefix at which the whole input's result is reached, and from there the same result
  (for an error: the same words; the quoted bytes are what was read);
  with `final` (nginx's first-read rule) a prefix never gives NEED_MORE;
- realip gives None or the header's source port with an address text that parses back;
- build_v1/build_v2 of the address realip gives parses back to that address and port.
"""

from __future__ import annotations

from typing import Any

from fastmail._proxy import (
    NEED_MORE,
    ProxyError,
    ProxyHeader,
    TrustedNetworks,
    build_v1,
    build_v2,
    parse,
    realip,
)

from . import common

LIMITS = (4096, 107, 232, 16)
NETS = (
    TrustedNetworks.from_entries(["0.0.0.0/0", "::/0"]),
    TrustedNetworks.from_entries(["127.0.0.0/8", "10.0.0.0/8"]),
    TrustedNetworks.from_entries(["unix:", "::1"]),
    TrustedNetworks(),
)
PEERS = (b"127.0.0.1", b"10.1.2.3", b"::1", b"unix:")


def key(res: Any) -> Any:
    if isinstance(res, ProxyHeader):
        return ("h", res.version, res.consumed, res.src_addr, res.dst_addr, res.src_port,
                res.dst_port, res.tlvs)  # fmt: skip
    if isinstance(res, ProxyError):
        # the message quotes the bytes read so far (nginx's "broken header: ..."): its words
        # before the quote are the verdict
        return ("e", res.message.split('"')[0] if res.message else None)
    common.check(res is NEED_MORE, "an unknown result", res)
    return "more"


def test_one_input(data: bytes) -> None:
    if not data:
        return
    limit = LIMITS[data[0] & 3]
    nets = NETS[(data[0] >> 2) & 3]
    peer = PEERS[(data[0] >> 4) & 3]
    body = data[1:]
    whole = parse(body, limit=limit)
    want = key(whole)
    if isinstance(whole, ProxyError) and whole.message and '"' in whole.message:
        q = whole.message.split('"', 1)[1]
        common.check(q.endswith('"'), "a quoted part not closed", whole.message)
    if isinstance(whole, ProxyHeader):
        common.check(0 < whole.consumed <= min(len(body), limit), "consumed", whole.consumed)
        common.check(0 <= whole.src_port <= 65535 and 0 <= whole.dst_port <= 65535, "ports")
    if isinstance(whole, ProxyError) and whole.message is not None:
        # one log line; NUL stays raw, as nginx's %*s writes it
        common.check(not any(c in whole.message for c in "\r\n"), "a log line", whole.message)
    # every prefix, as the engine's reassembly sees it
    reached = False
    for n in range(len(body) + 1):
        got = key(parse(body[:n], limit=limit))
        if reached:
            common.check(got == want, "a longer prefix changed the result", n, got, want)
        elif got != "more":
            common.check(got == want, "a prefix gave another result", n, got, want)
            reached = True
        fin = key(parse(body[:n], final=True, limit=limit))
        common.check(fin != "more", "NEED_MORE with final", n)
        if got != "more":
            common.check(fin == got, "final changed a result", n, fin, got)
    # parsing a bytearray is parsing the bytes
    common.check(key(parse(bytearray(body), limit=limit)) == want, "bytearray differs")
    if not isinstance(whole, ProxyHeader):
        return
    client = realip(peer, whole, nets)
    if client is None:
        return
    common.check(client[1] == whole.src_port, "realip's port", client)
    local = (b"::1", 143) if b":" in client[0] else (b"127.0.0.1", 143)
    v1 = parse(build_v1(client, local))
    common.check(isinstance(v1, ProxyHeader), "build_v1 does not parse", client, v1)
    common.check((v1.src_addr, v1.src_port) == client, "v1 round trip", client, key(v1))
    v2 = parse(build_v2(client, local))
    common.check(isinstance(v2, ProxyHeader), "build_v2 does not parse", client, v2)
    common.check((v2.src_addr, v2.src_port) == client, "v2 round trip", client, key(v2))


def seeds() -> list[bytes]:
    out = []
    for sent in common.transcripts(
        ["unit/test_proxy_protocol.py", "e2e/test_proxy_header.py"],
        frozenset(("parse", "sendall", "send", "feed", "write")),
    ):
        for i, s in enumerate(sent):
            out.append(bytes([(i * 0x15) & 0x3F]) + s)
    out.append(b"\x00" + build_v2((b"192.0.2.1", 1234), (b"127.0.0.1", 143)) + b"a1 NOOP\r\n")
    out.append(b"\x00" + build_v1((b"2001:db8::1", 1), (b"::1", 143)) + b"* OK\r\n")
    return out
