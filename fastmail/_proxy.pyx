# cython: language_level=3
"""PROXY protocol v1/v2: parse the header a load balancer puts in front of a client
connection, decide whether to believe it (realip), and build the header sent to a backend.

Sans-IO and in C: behind a load balancer every connection has a header, and with
`proxy_protocol on|v2` every login builds one. It owns no socket and no timer: the engine
(_session.pyx) hands it the bytes read so far and logs the messages given here. Mirrors
nginx src/core/ngx_proxy_protocol.c (read as mainline: 4096-byte header read, first-line-only
`broken header` log; v1 capped at its 107-byte maximum as 1.22.1 peeks) and
src/mail/ngx_mail_realip_module.c; v2 output as nginx 1.31's ngx_proxy_protocol_v2_write
writes it.
Address texts are read and written as nginx does (_inet.pyx).

The cdef entry points (_proxy.pxd) take pointers and bytes; the Python functions below them
are thin wrappers for tests and Python callers.
"""

from libc.stdint cimport uint32_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcmp, memcpy, memchr, memset
from cpython.bytes cimport (PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE)
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeLatin1

from fastmail._inet cimport ip_parse, ip_text, is_digit, dec, dec_len, IP_TEXT_MAX

V1_MAX_HEADER = 107  # "PROXY TCP6 " + 2 * 39 + 2 * 5 + 3 separators + CRLF
MAX_HEADER = 4096  # mainline's read size for the whole header (v2 with TLVs)
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER_LEN = 16

# TLV types (HAProxy's proxy-protocol.txt, section 2.2) used when building v2 headers.
PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_SSL = 0x20

DEF V1_MAX = 107
DEF V2_HDR = 16

cdef const char *SIG = b"\r\n\r\n\x00\r\nQUIT\n"


# --- results -------------------------------------------------------------------------------


cdef class ProxyHeader:
    """A header read off the connection. `src_addr` is None when it carried no usable
    addresses (v1 UNKNOWN, v2 LOCAL, a non-STREAM transport or a non-INET family): nginx
    then keeps the TCP peer and skips realip. Addresses are the header's text (v1, as sent)
    or nginx's text of the binary address (v2)."""

    def __init__(self, int version, Py_ssize_t consumed, bytes src_addr=None,
                 bytes dst_addr=None, int src_port=0, int dst_port=0, bytes tlvs=b""):
        self.version = version
        self.consumed = consumed
        self.src_addr = src_addr
        self.dst_addr = dst_addr
        self.src_port = src_port
        self.dst_port = dst_port
        self.tlvs = tlvs

    def __eq__(self, other):
        if type(other) is not ProxyHeader:
            return NotImplemented
        return _key(self) == _key(other)

    def __hash__(self):
        return hash(_key(self))

    def __repr__(self):
        return ("ProxyHeader(version=%d, consumed=%d, src_addr=%r, dst_addr=%r, src_port=%d, "
                "dst_port=%d, tlvs=%r)" % _key(self))


cdef tuple _key(ProxyHeader h):
    return (h.version, h.consumed, h.src_addr, h.dst_addr, h.src_port, h.dst_port, h.tlvs)


cdef class ProxyError:
    """The connection must be closed silently. `message` is nginx's `[error]` log text
    (to be followed by ` while reading PROXY protocol`), None when nginx logs nothing."""

    def __init__(self, str message):
        self.message = message

    def __eq__(self, other):
        if type(other) is not ProxyError:
            return NotImplemented
        return self.message == (<ProxyError>other).message

    def __hash__(self):
        return hash(self.message)

    def __repr__(self):
        return f"ProxyError({self.message!r})"


cdef class _NeedMore:
    def __repr__(self):
        return "NEED_MORE"


NEED_MORE = _NeedMore()


cdef inline ProxyError _error(str message):
    cdef ProxyError e = ProxyError.__new__(ProxyError)
    e.message = message
    return e


cdef ProxyHeader _header(int version, Py_ssize_t consumed):
    cdef ProxyHeader h = ProxyHeader.__new__(ProxyHeader)
    h.version = version
    h.consumed = consumed
    h.tlvs = b""
    return h


# --- parsing -------------------------------------------------------------------------------


cdef object proxy_parse(const char *data, Py_ssize_t n, Py_ssize_t limit, bint final):
    """Parse a PROXY header at the start of data[:n].

    None means the bytes are a proper prefix of a header that may still be valid. nginx
    peeks once and never reassembles (ngx_mail_proxy_protocol_handler): a driver matching it
    passes `final` with the first read, which turns None into nginx's error. `limit` is the
    header read size (4096 as mainline; 107 reproduces 1.22.1)."""
    cdef const unsigned char *p = <const unsigned char *>data
    if n < V2_HDR and memcmp(p, SIG, n if n < 12 else 12) == 0:
        # A prefix of the v2 signature: nginx would take it as a broken v1 header.
        return _broken(p, n) if final else None
    if n >= V2_HDR and memcmp(p, SIG, 12) == 0:
        return _parse_v2(p, n, final, limit)
    if n > limit:
        n = limit
    return _parse_v1(p, n if n < V1_MAX else V1_MAX, final)


cdef ProxyError _broken(const unsigned char *p, Py_ssize_t n):
    # mainline (1.23.2) logs only up to the first CR or LF.
    cdef Py_ssize_t end = 0
    while end < n and p[end] != 13 and p[end] != 10:
        end += 1
    return _error('broken header: "' + PyUnicode_DecodeLatin1(<const char *>p, end, NULL)
                  + '"')


cdef inline bint _addr_char(unsigned char c) noexcept nogil:
    # ngx_proxy_protocol_read_addr: the text is not checked to be an address
    return (c >= 48 and c <= 57) or (c >= 97 and c <= 102) or (c >= 65 and c <= 70) \
        or c == 58 or c == 46


cdef Py_ssize_t _find(const unsigned char *p, Py_ssize_t start, Py_ssize_t n,
                      unsigned char c) noexcept nogil:
    cdef const void *hit
    if start >= n:
        return -1
    hit = memchr(p + start, c, n - start)
    return -1 if hit == NULL else <const unsigned char *>hit - p


cdef Py_ssize_t _find_crlf(const unsigned char *p, Py_ssize_t start,
                           Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i = start
    while i + 1 < n:
        if p[i] == 13 and p[i + 1] == 10:
            return i
        i += 1
    return -1


cdef int _port(const unsigned char *p, Py_ssize_t n) noexcept nogil:
    """ngx_atoi and the 0-65535 range: the port, or -1."""
    cdef int v = 0
    cdef Py_ssize_t i
    if n == 0:
        return -1
    for i in range(n):
        if not is_digit(p[i]):
            return -1
        v = v * 10 + (p[i] - 48)
        if v > 65535:
            return -1
    return v


cdef object _parse_v1(const unsigned char *p, Py_ssize_t n, bint final):
    cdef Py_ssize_t i, end, pos, stop
    cdef Py_ssize_t start[2]
    cdef Py_ssize_t stop_at[2]
    cdef int ports[2]
    cdef int k
    cdef bint ok
    cdef ProxyHeader h
    # A header may still be on its way only if no CRLF came yet and there is room left.
    cdef bint incomplete = not final and n < V1_MAX and _find_crlf(p, 0, n) < 0
    if memcmp(p, b"PROXY ", n if n < 6 else 6) != 0:
        return _broken(p, n)
    if n < 8:
        return None if incomplete else _broken(p, n)
    if memcmp(p + 6, b"UNKN", n - 6 if n < 10 else 4) == 0:
        end = _find_crlf(p, 13, n)
        if memcmp(p + 6, b"UNKNOWN", n - 6 if n < 13 else 7) != 0:
            return _broken(p, n)
        if end < 0:
            return None if incomplete else _broken(p, n)
        return _header(1, end + 2)
    if n < 11:
        ok = memcmp(p + 6, b"TCP4 ", n - 6) == 0 or memcmp(p + 6, b"TCP6 ", n - 6) == 0
        return None if incomplete and ok else _broken(p, n)
    if memcmp(p + 6, b"TCP", 3) != 0 or (p[9] != 52 and p[9] != 54) or p[10] != 32:
        return _broken(p, n)
    # src SP dst SP sport SP dport CR LF; empty addresses pass, as in nginx. A field that
    # can no longer become valid fails at once, even before the CRLF.
    pos = 11
    for k in range(4):
        end = _find(p, pos, n, 32 if k < 3 else 13)
        stop = n if end < 0 else end
        if k < 2:
            for i in range(pos, stop):
                if not _addr_char(p[i]):
                    return _broken(p, n)
        elif end >= 0 or stop > pos:
            ports[k - 2] = _port(p + pos, stop - pos)
            if ports[k - 2] < 0:
                return _broken(p, n)
        if end < 0:
            # Ran out of bytes: well-formed so far.
            return None if incomplete else _broken(p, n)
        if k < 2:
            start[k] = pos
            stop_at[k] = end
        pos = end + 1
    if pos >= n:
        return None if incomplete else _broken(p, n)
    if p[pos] != 10:
        return _broken(p, n)
    h = _header(1, pos + 1)
    h.src_addr = PyBytes_FromStringAndSize(<const char *>p + start[0], stop_at[0] - start[0])
    h.dst_addr = PyBytes_FromStringAndSize(<const char *>p + start[1], stop_at[1] - start[1])
    h.src_port = ports[0]
    h.dst_port = ports[1]
    return h


cdef object _parse_v2(const unsigned char *p, Py_ssize_t n, bint final, Py_ssize_t limit):
    cdef int ver_cmd = p[12]
    cdef int fam_trans = p[13]
    cdef Py_ssize_t total = V2_HDR + (p[14] << 8 | p[15])
    cdef Py_ssize_t alen, body
    cdef int family
    cdef char text[IP_TEXT_MAX]
    cdef ProxyHeader h
    if ver_cmd >> 4 != 2:
        return _error(f"unknown PROXY protocol version: {ver_cmd >> 4}")
    # a header longer than the read size never fits nginx's buffer, whole or not (checked
    # first: found by tests/fuzz, a caller giving more than `limit` bytes had it accepted)
    if total > limit or (n < total and final):
        return _error("header is too large")
    if n < total:
        return None
    h = _header(2, total)
    # Other commands (LOCAL), transports and families are consumed and ignored (nginx).
    if ver_cmd & 0x0F != 1 or fam_trans & 0x0F != 1 or (fam_trans >> 4 != 1
                                                          and fam_trans >> 4 != 2):
        return h
    family = 4 if fam_trans >> 4 == 1 else 6
    alen = 4 if family == 4 else 16
    body = V2_HDR + 2 * alen + 4
    if total < body:
        return _error(None)
    h.src_addr = PyBytes_FromStringAndSize(text, ip_text(family, p + V2_HDR, text))
    h.dst_addr = PyBytes_FromStringAndSize(text, ip_text(family, p + V2_HDR + alen, text))
    h.src_port = p[body - 4] << 8 | p[body - 3]
    h.dst_port = p[body - 2] << 8 | p[body - 1]
    if total > body:
        h.tlvs = PyBytes_FromStringAndSize(<const char *>p + body, total - body)
    return h


def parse(data, *, bint final=False, Py_ssize_t limit=MAX_HEADER):
    """Parse a PROXY header at the start of `data` (bytes or bytearray): a ProxyHeader, a
    ProxyError, or NEED_MORE (see proxy_parse)."""
    cdef object res
    if type(data) is bytearray:
        res = proxy_parse(PyByteArray_AS_STRING(data), PyByteArray_GET_SIZE(data), limit, final)
    else:
        if type(data) is not bytes:
            data = bytes(data)
        res = proxy_parse(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), limit, final)
    return NEED_MORE if res is None else res


cdef inline bint _unknown(bytes ip) noexcept:
    return ip is None or (PyBytes_GET_SIZE(ip) >= 5 and memcmp(PyBytes_AS_STRING(ip),
                                                              b"unix:", 5) == 0)


cdef int _sock_addr(bytes text, unsigned char *out) noexcept:
    """A socket's address text (scope id dropped) to binary: 4, 6, 0 for a unix socket
    (b"unix:..." or None), -1 for text that is no address."""
    cdef const char *p
    cdef const void *pct
    cdef Py_ssize_t n
    if _unknown(text):
        return 0
    p = PyBytes_AS_STRING(text)
    n = PyBytes_GET_SIZE(text)
    pct = memchr(p, 37, n)
    if pct != NULL:
        n = <const char *>pct - p
    return ip_parse(<const unsigned char *>p, n, out, False) or -1


# --- realip --------------------------------------------------------------------------------


cdef class TrustedNetworks:
    """`set_real_ip_from` entries, built once per server{}: IPv4/IPv6 networks as written in
    the config (`10.0.0.0/8`, `::1`; low address bits are masked off) and `unix:`."""

    def __cinit__(self, entries=()):
        cdef list items = list(entries)
        cdef Cidr *c
        cdef bytes text, addr
        cdef Py_ssize_t slash, bits
        cdef int i
        self.cidrs = <Cidr *>malloc(max(len(items), 1) * sizeof(Cidr))
        if self.cidrs == NULL:
            raise MemoryError()
        for entry in items:
            if entry == "unix:":
                self.unix_peers = True
                continue
            text = (<str?>entry).encode("ascii", "replace")
            slash = text.find(b"/")
            addr = text if slash < 0 else text[:slash]
            c = &self.cidrs[self.n]
            c.family = ip_parse(<const unsigned char *>PyBytes_AS_STRING(addr),
                                PyBytes_GET_SIZE(addr), c.addr, False)
            bits = 32 if c.family == 4 else 128
            if slash >= 0:
                digits = text[slash + 1:]
                bits = int(digits) if digits.isdigit() and len(digits) <= 3 else -1
            if c.family == 0 or not 0 <= bits <= (32 if c.family == 4 else 128):
                raise ValueError(f'invalid set_real_ip_from entry "{entry}"')
            memset(c.mask, 0, 16)
            for i in range(16):
                if bits >= 8:
                    c.mask[i] = 0xFF
                    bits -= 8
                elif bits > 0:
                    c.mask[i] = (0xFF << (8 - bits)) & 0xFF
                    bits = 0
                c.addr[i] &= c.mask[i]
            self.n += 1

    def __dealloc__(self):
        free(self.cidrs)

    @staticmethod
    def from_entries(entries):
        """Entries as written in the config (`10.0.0.0/8`, `::1`, `unix:`)."""
        return TrustedNetworks(entries)

    def __bool__(self):
        return self.n > 0 or self.unix_peers

    def __len__(self):
        return self.n + self.unix_peers


cdef bint _match(TrustedNetworks nets, int family, const unsigned char *a) noexcept nogil:
    cdef Py_ssize_t i
    cdef int k
    cdef Cidr *c
    for i in range(nets.n):
        c = &nets.cidrs[i]
        if c.family != family:
            continue
        for k in range(4 if family == 4 else 16):
            if a[k] & c.mask[k] != c.addr[k]:
                break
        else:
            return True
    return False


cdef bint proxy_trusted(TrustedNetworks nets, bytes peer) except -1:
    cdef unsigned char a[16]
    cdef int fam
    if nets is None:
        return False
    fam = _sock_addr(peer, a)
    if fam == 0:
        return nets.unix_peers
    if fam < 0:
        return False
    if fam == 6 and memcmp(a, b"\0\0\0\0\0\0\0\0\0\0\xff\xff", 12) == 0:
        # a v4-mapped peer (dual-stack listener) matches the IPv4 entries only (ngx_cidr_match)
        return _match(nets, 4, a + 12)
    return _match(nets, fam, a)


cdef bytes proxy_realip(TrustedNetworks nets, bytes peer, ProxyHeader h):
    cdef unsigned char a[16]
    cdef char text[IP_TEXT_MAX]
    cdef int fam
    if nets is None or h.src_addr is None or not (nets.n or nets.unix_peers):
        return None
    if not proxy_trusted(nets, peer):
        return None
    fam = ip_parse(<const unsigned char *>PyBytes_AS_STRING(h.src_addr),
                   PyBytes_GET_SIZE(h.src_addr), a, True)
    if fam == 0:
        return None  # nginx: not an address, silently keeps the TCP peer
    return PyBytes_FromStringAndSize(text, ip_text(fam, a, text))


def trusted(peer, TrustedNetworks networks not None):
    """Is the TCP peer (address text as bytes; None or b"unix:..." for a unix socket) a
    trusted proxy?"""
    return proxy_trusted(networks, peer)


def realip(peer, ProxyHeader header not None, TrustedNetworks networks not None):
    """The client address to use after a PROXY header: (address text, port) from the header
    when the peer is trusted and the source is an IP literal (in nginx's text form), else
    None (keep the TCP peer)."""
    cdef bytes addr = proxy_realip(networks, peer, header)
    return None if addr is None else (addr, header.src_port)


# --- building headers for the backend ------------------------------------------------------


cdef int _check_port(int port) except -1:
    if port < 0 or port > 65535:
        raise ValueError(f"port out of range: {port}")
    return 0


cdef bytes proxy_build_v1(bytes client_ip, int client_port, bytes local_ip, int local_port):
    """nginx's ngx_proxy_protocol_write: the TCP4/TCP6 word follows the client's family
    alone (after realip an IPv6 client on an IPv4 listener gives `PROXY TCP6 2001:db8::1
    127.0.0.1 ...`); addresses go out as the texts given."""
    cdef Py_ssize_t cn, ln, o
    cdef bytes out
    cdef char *w
    if _unknown(client_ip) or local_ip is None:
        return b"PROXY UNKNOWN\r\n"
    _check_port(client_port)
    _check_port(local_port)
    cn = PyBytes_GET_SIZE(client_ip)
    ln = PyBytes_GET_SIZE(local_ip)
    out = PyBytes_FromStringAndSize(
        NULL, 11 + cn + 1 + ln + 1 + dec_len(client_port) + 1 + dec_len(local_port) + 2)
    w = PyBytes_AS_STRING(out)
    memcpy(w, b"PROXY TCP4 ", 11)
    if memchr(PyBytes_AS_STRING(client_ip), 58, cn) != NULL:
        w[9] = 54
    o = 11
    memcpy(w + o, PyBytes_AS_STRING(client_ip), cn)
    o += cn
    w[o] = 32
    memcpy(w + o + 1, PyBytes_AS_STRING(local_ip), ln)
    o += 1 + ln
    w[o] = 32
    o += 1 + dec(client_port, w + o + 1)
    w[o] = 32
    o += 1 + dec(local_port, w + o + 1)
    w[o] = 13
    w[o + 1] = 10
    return out


cdef inline void _be16(unsigned char *p, unsigned int v) noexcept nogil:
    p[0] = (v >> 8) & 0xFF
    p[1] = v & 0xFF


cdef bytes proxy_build_v2(bytes client_ip, int client_port, bytes local_ip, int local_port,
                          bytes tlvs):
    """nginx 1.31's ngx_proxy_protocol_v2_write: address block, then `tlvs`
    (TLS ones, in nginx's order, already encoded), then the CRC32C TLV."""
    cdef unsigned char src[16]
    cdef unsigned char dst[16]
    cdef int fc = 0, fl = 0, fam
    cdef Py_ssize_t alen = 0, tn = 0, total, o
    cdef unsigned char *w
    cdef uint32_t crc
    cdef bytes out
    if not _unknown(client_ip) and not _unknown(local_ip):
        fc = _sock_addr(client_ip, src)
        fl = _sock_addr(local_ip, dst)
        if fc < 0 or fl < 0:
            raise ValueError(f"invalid address {client_ip if fc < 0 else local_ip!r}")
        _check_port(client_port)
        _check_port(local_port)
    if tlvs is not None:
        tn = PyBytes_GET_SIZE(tlvs)
    if fc == 0 or fl == 0:
        fam = 0
    elif fc == 4 and fl == 4:
        fam = 4
    elif (fc == 6 and fl == 6 and memcmp(src, b"\0\0\0\0\0\0\0\0\0\0\xff\xff", 12) == 0
            and memcmp(dst, b"\0\0\0\0\0\0\0\0\0\0\xff\xff", 12) == 0):
        fam = 4  # both v4-mapped: demoted to INET
        memcpy(src, src + 12, 4)
        memcpy(dst, dst + 12, 4)
    else:
        fam = 6  # an IPv4 side goes as ::ffff:a.b.c.d
        if fc == 4:
            memcpy(src + 12, src, 4)
            memcpy(src, b"\0\0\0\0\0\0\0\0\0\0\xff\xff", 12)
        if fl == 4:
            memcpy(dst + 12, dst, 4)
            memcpy(dst, b"\0\0\0\0\0\0\0\0\0\0\xff\xff", 12)
    if fam:
        alen = 4 if fam == 4 else 16
    total = V2_HDR + (2 * alen + 4 if fam else 0) + tn + 7
    if total - V2_HDR > 0xFFFF:
        raise ValueError("PROXY protocol v2 TLVs too long")
    out = PyBytes_FromStringAndSize(NULL, total)
    w = <unsigned char *>PyBytes_AS_STRING(out)
    memcpy(w, SIG, 12)
    w[12] = 0x21 if fam else 0x20
    w[13] = 0x11 if fam == 4 else (0x21 if fam == 6 else 0x00)
    _be16(w + 14, total - V2_HDR)
    o = V2_HDR
    if fam:
        memcpy(w + o, src, alen)
        memcpy(w + o + alen, dst, alen)
        o += 2 * alen
        _be16(w + o, client_port)
        _be16(w + o + 2, local_port)
        o += 4
    if tn:
        memcpy(w + o, PyBytes_AS_STRING(tlvs), tn)
        o += tn
    w[o] = 0x03  # PP2_TYPE_CRC32C, over the whole header with its value zeroed
    w[o + 1] = 0
    w[o + 2] = 4
    memset(w + o + 3, 0, 4)
    crc = crc32c_buf(w, total)
    w[o + 3] = crc >> 24
    w[o + 4] = (crc >> 16) & 0xFF
    w[o + 5] = (crc >> 8) & 0xFF
    w[o + 6] = crc & 0xFF
    return out


def build_v1(client, local):
    """`client` after realip and `local` = where the connection was accepted, each
    (address text as bytes, port) or None for a unix socket."""
    if client is None or local is None:
        return proxy_build_v1(None, 0, None, 0)
    return proxy_build_v1(client[0], client[1], local[0], local[1])


def build_v2(client, local, bytes tlvs=b""):
    """As build_v1; `tlvs` (already encoded, see tlv()) go before the CRC32C TLV."""
    if client is None or local is None:
        return proxy_build_v2(None, 0, None, 0, tlvs)
    return proxy_build_v2(client[0], client[1], local[0], local[1], tlvs)


def tlv(int kind, bytes value not None):
    """One TLV; the TLS work builds AUTHORITY/ALPN/SSL TLVs with it for build_v2."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(value)
    if not 0 <= kind <= 0xFF or n > 0xFFFF:
        raise ValueError("TLV type or length out of range")
    return bytes((kind, n >> 8, n & 0xFF)) + value


# --- CRC-32C (Castagnoli), slice-by-8 --------------------------------------------------------


cdef uint32_t _crc_table[8][256]


cdef void _crc_init() noexcept nogil:
    cdef uint32_t crc
    cdef int i, k
    for i in range(256):
        crc = i
        for k in range(8):
            crc = (crc >> 1) ^ <uint32_t>0x82F63B78 if crc & 1 else crc >> 1
        _crc_table[0][i] = crc
    for i in range(256):
        crc = _crc_table[0][i]
        for k in range(1, 8):
            crc = _crc_table[0][crc & 0xFF] ^ (crc >> 8)
            _crc_table[k][i] = crc


_crc_init()


cdef uint32_t crc32c_buf(const unsigned char *p, size_t n) noexcept nogil:
    cdef uint32_t crc = <uint32_t>0xFFFFFFFF
    while n >= 8:
        crc ^= p[0] | <uint32_t>p[1] << 8 | <uint32_t>p[2] << 16 | <uint32_t>p[3] << 24
        crc = (_crc_table[7][crc & 0xFF] ^ _crc_table[6][(crc >> 8) & 0xFF]
               ^ _crc_table[5][(crc >> 16) & 0xFF] ^ _crc_table[4][crc >> 24]
               ^ _crc_table[3][p[4]] ^ _crc_table[2][p[5]] ^ _crc_table[1][p[6]]
               ^ _crc_table[0][p[7]])
        p += 8
        n -= 8
    while n:
        crc = _crc_table[0][(crc ^ p[0]) & 0xFF] ^ (crc >> 8)
        p += 1
        n -= 1
    return crc ^ <uint32_t>0xFFFFFFFF


def crc32c(data):
    """CRC-32C (Castagnoli) of bytes, as the PP2_TYPE_CRC32C TLV carries it."""
    cdef bytes b = bytes(data)
    return crc32c_buf(<const unsigned char *>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))
