# The PROXY protocol in C: the header a load balancer puts in front of a client connection
# (parse), whether to believe it (realip), and the header sent to a backend (build).

from libc.stdint cimport uint32_t


cdef class ProxyHeader:
    cdef readonly int version
    cdef readonly Py_ssize_t consumed    # bytes to remove; later bytes belong to the protocol
    cdef readonly bytes src_addr         # None: no usable addresses (UNKNOWN, LOCAL, ...)
    cdef readonly bytes dst_addr
    cdef readonly int src_port
    cdef readonly int dst_port
    cdef readonly bytes tlvs             # v2: what follows the addresses, undecoded


cdef class ProxyError:
    cdef readonly str message            # nginx's [error] text, None when nginx logs nothing


# One set_real_ip_from entry: the network address and its mask, both in network order.
cdef struct Cidr:
    int family                           # 4 or 6
    unsigned char addr[16]
    unsigned char mask[16]


cdef class TrustedNetworks:
    cdef Cidr *cidrs
    cdef Py_ssize_t n
    cdef readonly bint unix_peers        # `set_real_ip_from unix:`


# ProxyHeader, ProxyError, or None while more bytes may still complete a valid header.
cdef object proxy_parse(const char *p, Py_ssize_t n, Py_ssize_t limit, bint final)
# Is the TCP peer (address text; b"unix:" or None for a unix socket) a trusted proxy?
cdef bint proxy_trusted(TrustedNetworks nets, bytes peer) except -1
# The client address text after realip (nginx's form), or None to keep the TCP peer; the port
# is then the header's src_port.
cdef bytes proxy_realip(TrustedNetworks nets, bytes peer, ProxyHeader h)
# Headers for the backend: client after realip (b"unix:"/None: unknown), local = where the
# client connection was accepted (None: unknown).
cdef bytes proxy_build_v1(bytes client_ip, int client_port, bytes local_ip, int local_port)
cdef bytes proxy_build_v2(bytes client_ip, int client_port, bytes local_ip, int local_port,
                          bytes tlvs)

cdef uint32_t crc32c_buf(const unsigned char *p, size_t n) noexcept nogil
