"""PROXY protocol v1/v2: parse the header a load balancer puts in front of a client
connection, decide whether to believe it (realip), and build the header sent to a backend.

Sans-IO and pure Python: it runs once per connection, so clarity beats speed. It owns no
socket and no timer: server.py peeks/reads the bytes and logs the messages given here.
Mirrors nginx src/core/ngx_proxy_protocol.c (read as mainline: 4096-byte header read, v1
capped at its 107-byte maximum, first-line-only `broken header` log) and
src/mail/ngx_mail_realip_module.c; v2 output as nginx 1.31 writes it (spec proxy.md §3-§5).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass

V1_MAX_HEADER = 107  # "PROXY TCP6 " + 2 * 39 + 2 * 5 + 3 separators + CRLF
MAX_HEADER = 4096  # mainline's read size for the whole header (v2 with TLVs)
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER_LEN = 16

# TLV types (PROXY protocol spec §2.2) used when building v2 headers.
PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_SSL = 0x20

_ADDR_CHARS = frozenset(b"0123456789abcdefABCDEF:.")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = tuple[str, int] | None  # (ip text, port); None for a unix-socket peer


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A header read off the connection. `src_addr` is None when it carried no usable
    addresses (v1 UNKNOWN, v2 LOCAL, a non-STREAM transport or a non-INET family): nginx
    then keeps the TCP peer and skips realip."""

    version: int
    consumed: int  # bytes to remove from the connection; later bytes belong to the protocol
    src_addr: str | None = None
    dst_addr: str | None = None
    src_port: int = 0
    dst_port: int = 0
    tlvs: bytes = b""


@dataclass(frozen=True, slots=True)
class ProxyError:
    """The connection must be closed silently. `message` is nginx's `[error]` log text
    (to be followed by ` while reading PROXY protocol`), None when nginx logs nothing."""

    message: str | None


class _NeedMore:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_MORE"


NEED_MORE = _NeedMore()

ParseResult = ProxyHeader | ProxyError | _NeedMore


def parse(data: bytes, *, final: bool = False, limit: int = MAX_HEADER) -> ParseResult:
    """Parse a PROXY header at the start of `data`.

    NEED_MORE means `data` is a proper prefix of a header that may still be valid. nginx
    peeks once and never reassembles (proxy.md §3.1): a driver matching it passes
    `final=True` with the first read, which turns NEED_MORE into nginx's error. `limit` is
    the header read size (4096 as mainline; 107 reproduces 1.22.1).
    """
    if data[:12] == V2_SIGNATURE[: len(data)] and len(data) < V2_HEADER_LEN:
        # A prefix of the v2 signature: nginx would take it as a broken v1 header.
        return _broken(data) if final else NEED_MORE
    if data.startswith(V2_SIGNATURE):
        return _parse_v2(data, final, limit)
    return _parse_v1(data[: min(limit, V1_MAX_HEADER)], final)


def _broken(data: bytes) -> ProxyError:
    # mainline (1.23.2) logs only up to the first CR or LF.
    end = len(data)
    for i, ch in enumerate(data):
        if ch in (13, 10):
            end = i
            break
    return ProxyError(f'broken header: "{data[:end].decode("latin-1")}"')


def _parse_v1(data: bytes, final: bool) -> ParseResult:
    n = len(data)
    # A header may still be on its way only if no CRLF came yet and there is room left.
    incomplete = b"\r\n" not in data and n < V1_MAX_HEADER and not final
    if data[:6] != b"PROXY "[: min(n, 6)]:
        return _broken(data)
    if n < 8:
        return NEED_MORE if incomplete else _broken(data)
    head = data[6:11]
    if head.startswith(b"UNKN") or (len(head) < 5 and b"UNKNOWN".startswith(head)):
        end = data.find(b"\r\n", 13)
        if data[6:13] == b"UNKNOWN"[: n - 6] and end < 0:
            return NEED_MORE if incomplete else _broken(data)
        if data[6:13] != b"UNKNOWN" or end < 0:
            return _broken(data)
        return ProxyHeader(version=1, consumed=end + 2)
    if len(head) < 5:
        ok = b"TCP4 ".startswith(head) or b"TCP6 ".startswith(head)
        return NEED_MORE if incomplete and ok else _broken(data)
    if not (head[:3] == b"TCP" and head[3] in b"46" and head[4] == 32):
        return _broken(data)
    p = 11
    fields: list[bytes] = []
    for sep in (b" ", b" ", b" ", b"\r"):
        end = data.find(sep, p)
        if end < 0:
            # Ran out of bytes: still possibly valid if what we have is well-formed so far.
            part = data[p:]
            ok = all(c in _ADDR_CHARS for c in part) if len(fields) < 2 else part.isdigit()
            return NEED_MORE if incomplete and (ok or not part) else _broken(data)
        fields.append(data[p:end])
        p = end + 1
    src, dst, sport, dport = fields
    if not (src and dst) or not all(c in _ADDR_CHARS for c in src + dst):
        return _broken(data)
    ports = []
    for text in (sport, dport):
        # ngx_atoi: digits only, not empty; then the 0-65535 range.
        if not text or not text.isdigit() or int(text) > 65535:
            return _broken(data)
        ports.append(int(text))
    if p >= len(data):
        return NEED_MORE if incomplete else _broken(data)
    if data[p] != 10:
        return _broken(data)
    return ProxyHeader(
        version=1,
        consumed=p + 1,
        src_addr=src.decode("ascii"),
        dst_addr=dst.decode("ascii"),
        src_port=ports[0],
        dst_port=ports[1],
    )


def _parse_v2(data: bytes, final: bool, limit: int) -> ParseResult:
    ver_cmd = data[12]
    if ver_cmd >> 4 != 2:
        return ProxyError(f"unknown PROXY protocol version: {ver_cmd >> 4}")
    total = V2_HEADER_LEN + struct.unpack_from("!H", data, 14)[0]
    if len(data) < total:
        if total > limit or final:
            return ProxyError("header is too large")
        return NEED_MORE
    body = data[V2_HEADER_LEN:total]
    fam_trans = data[13]
    # Other commands (LOCAL), transports and families are consumed and ignored (nginx).
    if ver_cmd & 0x0F != 1 or fam_trans & 0x0F != 1 or fam_trans >> 4 not in (1, 2):
        return ProxyHeader(version=2, consumed=total)
    alen = 4 if fam_trans >> 4 == 1 else 16
    if len(body) < 2 * alen + 4:
        return ProxyError(None)
    src = ipaddress.ip_address(body[:alen])
    dst = ipaddress.ip_address(body[alen : 2 * alen])
    sport, dport = struct.unpack_from("!HH", body, 2 * alen)
    return ProxyHeader(
        version=2,
        consumed=total,
        src_addr=str(src),
        dst_addr=str(dst),
        src_port=sport,
        dst_port=dport,
        tlvs=body[2 * alen + 4 :],
    )


# --- realip --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrustedNetworks:
    """`set_real_ip_from` entries: IP networks and whether `unix:` peers are trusted."""

    networks: tuple[IPNetwork, ...] = ()
    unix: bool = False

    @classmethod
    def from_entries(cls, entries: Iterable[str | IPNetwork]) -> TrustedNetworks:
        """Entries as written in the config (`10.0.0.0/8`, `::1`, `unix:`) or networks."""
        nets: list[IPNetwork] = []
        unix = False
        for entry in entries:
            if isinstance(entry, str):
                if entry == "unix:":
                    unix = True
                    continue
                entry = ipaddress.ip_network(entry, strict=False)
            nets.append(entry)
        return cls(tuple(nets), unix)

    def __bool__(self) -> bool:
        return bool(self.networks) or self.unix


def trusted(peer: str | None, networks: TrustedNetworks) -> bool:
    """Is the TCP peer (ip text; None or `unix:...` for a unix socket) a trusted proxy?"""
    if peer is None or peer.startswith("unix:"):
        return networks.unix
    try:
        ip = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return False
    # A v4-mapped peer on a dual-stack listener matches the IPv4 entries too (ngx_cidr_match).
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    for net in networks.networks:
        if ip.version == net.version and ip in net:
            return True
        if mapped is not None and net.version == 4 and mapped in net:
            return True
    return False


def realip(peer: str | None, header: ProxyHeader, networks: TrustedNetworks) -> Address:
    """The client address to use after a PROXY header: (addr, port) from the header when
    the peer is trusted and the source is an IP literal, else None (keep the TCP peer)."""
    if not networks or header.src_addr is None or not trusted(peer, networks):
        return None
    try:
        ip = ipaddress.ip_address(header.src_addr)
    except ValueError:
        return None  # nginx: silently keeps the TCP peer
    return str(ip), header.src_port


# --- building headers for the backend ------------------------------------------------------


def _family(addr: Address) -> int:
    if addr is None:
        return 0
    return 6 if ":" in addr[0] else 4


def build_v1(client: Address, local: Address) -> bytes:
    """nginx's ngx_proxy_protocol_write: `client` after realip, `local` = where we accepted.
    The TCP4/TCP6 word follows the client's family alone (proxy.md §5.1)."""
    fam = _family(client)
    if fam == 0 or local is None:
        return b"PROXY UNKNOWN\r\n"
    return b"PROXY TCP%d %s %s %d %d\r\n" % (
        fam,
        client[0].encode("ascii"),  # type: ignore[index]
        local[0].encode("ascii"),
        client[1],  # type: ignore[index]
        local[1],
    )


def tlv(kind: int, value: bytes) -> bytes:
    """One TLV; the TLS issue builds AUTHORITY/ALPN/SSL TLVs with it for build_v2."""
    return struct.pack("!BH", kind, len(value)) + value


def build_v2(client: Address, local: Address, tlvs: bytes = b"") -> bytes:
    """nginx 1.31's ngx_proxy_protocol_v2_write (proxy.md §5.2): address block, then
    `tlvs` (TLS ones, in nginx's order, already encoded), then the CRC32C TLV."""
    fam_c, fam_l = _family(client), _family(local)
    if fam_c == 0 or fam_l == 0:
        ver_cmd, fam_trans, addrs = 0x20, 0x00, b""
    else:
        src = ipaddress.ip_address(client[0].split("%", 1)[0])  # type: ignore[index]
        dst = ipaddress.ip_address(local[0].split("%", 1)[0])  # type: ignore[index]
        ports = struct.pack("!HH", client[1], local[1])  # type: ignore[index]
        ver_cmd = 0x21
        if fam_c == 4 and fam_l == 4:
            fam_trans, addrs = 0x11, src.packed + dst.packed + ports
        elif (
            fam_c == 6
            and fam_l == 6
            and src.ipv4_mapped is not None  # type: ignore[union-attr]
            and dst.ipv4_mapped is not None  # type: ignore[union-attr]
        ):
            fam_trans = 0x11
            addrs = src.ipv4_mapped.packed + dst.ipv4_mapped.packed + ports  # type: ignore[union-attr]
        else:
            fam_trans, addrs = 0x21, _v6(src) + _v6(dst) + ports
    body = addrs + tlvs + tlv(PP2_TYPE_CRC32C, b"\0\0\0\0")
    header = V2_SIGNATURE + bytes((ver_cmd, fam_trans)) + struct.pack("!H", len(body)) + body
    return header[:-4] + struct.pack("!I", crc32c(header))


def _v6(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    return ip.packed if ip.version == 6 else b"\0" * 10 + b"\xff\xff" + ip.packed


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as the PP2_TYPE_CRC32C TLV requires."""
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC32C[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF
