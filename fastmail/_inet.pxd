# Addresses as nginx reads and writes them (src/core/ngx_inet.c): text <-> binary in C.

# An address text as ngx_parse_addr reads it: 4 (out[:4]), 6 (out[:16]) or 0 (not one).
cdef int ip_parse(const unsigned char *p, Py_ssize_t n, unsigned char *out,
                  bint inaddr_none) noexcept nogil
# nginx's text of a binary address (4 or 6) into out (IP_TEXT_MAX bytes); its length.
cdef Py_ssize_t ip_text(int family, const unsigned char *addr, char *out) noexcept nogil

cdef enum:
    IP_TEXT_MAX = 48    # "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255" fits


cdef inline bint is_digit(unsigned char c) noexcept nogil:
    return c >= 48 and c <= 57


cdef inline Py_ssize_t dec_len(unsigned int v) noexcept nogil:
    cdef Py_ssize_t n = 1
    while v >= 10:
        v //= 10
        n += 1
    return n


cdef inline Py_ssize_t dec(unsigned int v, char *out) noexcept nogil:
    """v in decimal at out; the number of digits written."""
    cdef Py_ssize_t n = dec_len(v), i = n
    while i:
        i -= 1
        out[i] = 48 + v % 10
        v //= 10
    return n
