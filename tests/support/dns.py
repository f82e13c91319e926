"""A tiny authoritative DNS server for tests: UDP on 127.0.0.1, a free port, stdlib only.

Answers A, AAAA and PTR from a dict with TTLs, or a fixed rcode per name; can delay or drop
answers; records every question it sees. A record may name its own type, to answer a question
with a record of another type (a CNAME or an A record for a PTR question). Never forwards anywhere (no public DNS).
Runs on the test's asyncio loop:

    async with DnsStub({("4.3.2.1.in-addr.arpa", "PTR"): [("mail.example.net", 60)]}) as dns:
        Resolver(loop, servers=[("127.0.0.1", dns.port)])
"""

from __future__ import annotations

import asyncio
import ipaddress
import struct
from collections.abc import Mapping, Sequence

TYPES = {"A": 1, "PTR": 12, "AAAA": 28, "CNAME": 5}
TYPE_NAMES = {v: k for k, v in TYPES.items()}
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5

# (value, ttl) answers with the question's type; (value, ttl, "CNAME") names the record's type
Answer = tuple[str | bytes, int] | tuple[str | bytes, int, str]
Records = dict[tuple[str, str], list[Answer]]


def reverse_name(addr: str) -> str:
    return ipaddress.ip_address(addr).reverse_pointer


def _encode_name(name: str | bytes) -> bytes:
    raw = name.encode() if isinstance(name, str) else name
    out = b""
    for label in raw.rstrip(b".").split(b"."):
        if label:
            out += bytes([len(label)]) + label
    return out + b"\0"


def _read_name(msg: bytes, pos: int) -> tuple[str, int]:
    labels = []
    while msg[pos]:
        n = msg[pos]
        labels.append(msg[pos + 1 : pos + 1 + n].decode("latin-1"))
        pos += 1 + n
    return ".".join(labels), pos + 1


class DnsStub(asyncio.DatagramProtocol):
    """records: {(name, type): [(value, ttl), ...]}; rcodes: {name: rcode} answered for every
    type; delays: {name: seconds}; drop: names never answered. Unknown names: NXDOMAIN;
    a known name without records of the asked type: NOERROR with no answer."""

    def __init__(
        self,
        records: Mapping[tuple[str, str], Sequence[tuple[str | bytes, int]]] | None = None,
        *,
        rcodes: dict[str, int] | None = None,
        delays: dict[str, float] | None = None,
        drop: set[str] | None = None,
    ) -> None:
        self.records: Records = {(k[0].lower(), k[1]): list(v) for k, v in (records or {}).items()}
        self.rcodes = rcodes or {}
        self.delays = delays or {}
        self.drop = drop or set()
        self.queries: list[tuple[str, str]] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0
        self._pending: list[asyncio.TimerHandle] = []

    async def __aenter__(self) -> DnsStub:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for handle in self._pending:
            handle.cancel()
        if self.transport is not None:
            self.transport.close()
        await asyncio.sleep(0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.port = transport.get_extra_info("sockname")[1]

    def count(self, name: str, qtype: str) -> int:
        return self.queries.count((name.lower(), qtype))

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < 12:
            return
        qid, flags, qdcount = struct.unpack("!HHH", data[:6])
        if qdcount != 1:
            return
        name, pos = _read_name(data, 12)
        qtype, qclass = struct.unpack("!HH", data[pos : pos + 4])
        question = data[12 : pos + 4]
        key = name.lower()
        tname = TYPE_NAMES.get(qtype, str(qtype))
        self.queries.append((key, tname))
        if key in self.drop:
            return
        rcode = self.rcodes.get(key)
        answers: list[Answer] = []
        if rcode is None:
            known = any(k[0] == key for k in self.records)
            rcode = NOERROR if known else NXDOMAIN
            answers = self.records.get((key, tname), [])
        reply = self._reply(qid, flags, question, qtype, rcode, answers)
        delay = self.delays.get(key, 0.0)
        if delay:
            loop = asyncio.get_running_loop()
            self._pending.append(loop.call_later(delay, self._send, reply, addr))
        else:
            self._send(reply, addr)

    def _send(self, reply: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, addr)

    @staticmethod
    def _reply(
        qid: int,
        flags: int,
        question: bytes,
        qtype: int,
        rcode: int,
        answers: list[Answer],
    ) -> bytes:
        rd = flags & 0x0100
        head = struct.pack("!HHHHHH", qid, 0x8400 | rd | rcode, 1, len(answers), 0, 0)
        body = b""
        for value, ttl, *rtype in answers:
            rtype_code = TYPES[rtype[0]] if rtype else qtype
            if rtype_code == 1:
                rdata = ipaddress.IPv4Address(value).packed
            elif rtype_code == 28:
                rdata = ipaddress.IPv6Address(value).packed
            else:
                rdata = _encode_name(value)
            body += struct.pack("!HHHIH", 0xC00C, rtype_code, 1, ttl, len(rdata)) + rdata
        return head + question + body
