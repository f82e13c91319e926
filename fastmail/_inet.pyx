# cython: language_level=3
"""Addresses as nginx reads and writes them: ngx_inet.c's ngx_parse_addr (ngx_inet_addr, then
ngx_inet6_addr) and ngx_sock_ntop's text (ngx_inet6_ntop), written anew in C.

nginx's readings differ from libc's and Python's at the edges, and the proxy must match nginx
where the text reaches a user (realip's client address in auth_http, XCLIENT and log lines;
v2 PROXY header addresses): `1..2.3` is 1.0.2.3, ::102 is written `::0.0.1.2`
(tests/e2e/test_proxy_header.py checks them against nginx). No Python objects here.
"""

from libc.stdint cimport uint32_t


cdef bint _ip4_parse(const unsigned char *p, Py_ssize_t n, unsigned char *out) noexcept nogil:
    """ngx_inet_addr: exactly three dots, decimal octets up to 255; empty octets are 0 and
    leading zeros are decimal (nginx reads `1..2.3` as 1.0.2.3)."""
    cdef uint32_t addr = 0
    cdef unsigned int octet = 0
    cdef int dots = 0
    cdef Py_ssize_t i
    for i in range(n):
        if is_digit(p[i]):
            octet = octet * 10 + (p[i] - 48)
            if octet > 255:
                return False
        elif p[i] == 46:
            addr = addr << 8 | octet
            octet = 0
            dots += 1
            if dots > 3:
                return False
        else:
            return False
    if dots != 3:
        return False
    addr = addr << 8 | octet
    out[0] = addr >> 24
    out[1] = (addr >> 16) & 0xFF
    out[2] = (addr >> 8) & 0xFF
    out[3] = addr & 0xFF
    return True


cdef inline bint _all_ones(const unsigned char *a) noexcept nogil:
    return a[0] == 0xFF and a[1] == 0xFF and a[2] == 0xFF and a[3] == 0xFF


cdef bint _ip6_parse(const unsigned char *p, Py_ssize_t n, unsigned char *out,
                     bint inaddr_none) noexcept nogil:
    """ngx_inet6_addr's language: hex groups of 1-4 digits, one `::`, a trailing IPv4 part
    after at least one colon; one leading colon alone is skipped (`:1:2:3:4:5:6:7:8` is
    taken) and a trailing single colon ends an empty group (`1::2:` is 1::2:0)."""
    cdef unsigned int words[8]
    cdef unsigned int word = 0
    cdef int w = 0, gap = -1, digits = 0, k
    cdef Py_ssize_t i = 0, group = -1
    cdef unsigned char c
    cdef unsigned char v4[4]
    if n == 0:
        return False
    if p[0] == 58:
        i = 1
    while i < n:
        c = p[i]
        i += 1
        if c == 58:
            if digits:
                words[w] = word
                w += 1
                if w == 8:
                    return False
                digits = 0
                word = 0
                group = i
            elif gap < 0:
                gap = w
                group = i
            else:
                return False
            continue
        if c == 46 and digits:
            if 8 - w < 2 or group < 0 or not _ip4_parse(p + group, n - group, v4):
                return False
            if inaddr_none and _all_ones(v4):
                return False
            words[w] = v4[0] << 8 | v4[1]
            w += 1
            word = v4[2] << 8 | v4[3]
            break
        digits += 1
        if digits > 4:
            return False
        if is_digit(c):
            word = word * 16 + (c - 48)
            continue
        c |= 0x20
        if c >= 97 and c <= 102:
            word = word * 16 + (c - 87)
            continue
        return False
    if digits == 0 and gap < 0:
        return False
    words[w] = word
    w += 1
    if (w < 8) != (gap >= 0):
        return False
    if w < 8:
        # the words after `::` go to the end, zeros in between
        for k in range(7, -1, -1):
            if k >= 8 - (w - gap):
                words[k] = words[k - (8 - w)]
            elif k >= gap:
                words[k] = 0
    for k in range(8):
        out[2 * k] = words[k] >> 8
        out[2 * k + 1] = words[k] & 0xFF
    return True


cdef int ip_parse(const unsigned char *p, Py_ssize_t n, unsigned char *out,
                  bint inaddr_none) noexcept nogil:
    """An address text as nginx's ngx_parse_addr reads it: 4 (out[:4]), 6 (out[:16]) or 0.
    `inaddr_none` keeps nginx's blind spot: ngx_inet_addr's failure value is 255.255.255.255,
    so that address (plain or inside IPv6) does not parse (realip keeps the peer)."""
    if _ip4_parse(p, n, out):
        if not (inaddr_none and _all_ones(out)):
            return 4
    if _ip6_parse(p, n, out, inaddr_none):
        return 6
    return 0


cdef Py_ssize_t _dotted(const unsigned char *a, char *out) noexcept nogil:
    cdef Py_ssize_t o = 0
    cdef int i
    for i in range(4):
        if i:
            out[o] = 46
            o += 1
        o += dec(a[i], out + o)
    return o


cdef Py_ssize_t ip_text(int family, const unsigned char *a, char *out) noexcept nogil:
    """nginx's text of a binary address (ngx_inet_ntop): IPv6 with the longest run of two or
    more zero words (the first of equal runs) as `::`, and the last 32 bits dotted after a
    leading run of 6 zero words, of 5 then ffff, or of 7 when the last word is neither
    0x00XX nor 0xXX01 (nginx's own rule: ::102 is `::0.0.1.2`, ::1 stays `::1`)."""
    cdef int i, shift, run = 0, start = 0, best = -1, best_len = 1, words = 8
    cdef unsigned int word
    cdef Py_ssize_t o = 0
    cdef const char *hexd = b"0123456789abcdef"
    cdef bint lead
    if family == 4:
        return _dotted(a, out)
    for i in range(8):
        if a[2 * i] or a[2 * i + 1]:
            if run > best_len:
                best = start
                best_len = run
            run = 0
        else:
            if run == 0:
                start = i
            run += 1
    if run > best_len:
        best = start
        best_len = run
    if best == 0:
        if ((best_len == 5 and a[10] == 0xFF and a[11] == 0xFF) or best_len == 6
                or (best_len == 7 and a[14] != 0 and a[15] != 1)):
            words = 6
        out[o] = 58
        o += 1
    i = 0
    while i < words:
        if i == best:
            out[o] = 58
            o += 1
            i += best_len
            continue
        word = a[2 * i] << 8 | a[2 * i + 1]
        lead = False
        shift = 12
        while shift >= 0:
            if lead or (word >> shift) & 0xF or shift == 0:
                out[o] = hexd[(word >> shift) & 0xF]
                o += 1
                lead = True
            shift -= 4
        if i < 7:
            out[o] = 58
            o += 1
        i += 1
    if words == 6:
        o += _dotted(a + 12, out + o)
    return o
