# The auth_http request without I/O: the bytes of one request from a per-server template.

from fastmail._core cimport AuthRequest


cdef struct Writer:
    char *p             # NULL while counting
    Py_ssize_t n


# fastmail's own lines of one request (beyond nginx, each only when configured or needed):
# Client-Port, Server-IP/Server-Port (auth_http_send), Auth-Failed-Server and
# Auth-Backend-Attempt (a backend failover's new question).
cdef class Extra:
    cdef public int client_port     # -1: no Client-Port line
    cdef public bytes server_ip     # None: no Server-IP/Server-Port lines
    cdef public int server_port
    cdef public list failed         # b"ip:port" of each backend that failed, or None


cdef class RequestTemplate:
    cdef bytes head                 # "GET <uri> HTTP/1.x\r\nHost: <host>\r\nAuth-Method: "
    cdef bytes tail                 # auth_http_header lines, keep-alive line, empty line
    cdef bint pass_client_cert
    cdef bytes build(self, AuthRequest auth, bytes client_ip, object client_host,
                     object proxy_protocol, object ssl_info, Extra extra=*, bint key=*)
    cdef int _emit(self, Writer *w, AuthRequest auth, bytes client_ip, object client_host,
                   object pp, object ssl, Extra extra, bint key) except -1


# Shared with the answer's reading (_authproto.pyx), inline in each:

cdef inline bint is_salted(bytes method) noexcept:
    # Mainline (1.29.1) sends Auth-Salt only for these, and then forgets the password.
    return method == b"apop" or method == b"cram-md5"


cdef inline int decimal(char *end, long long v) noexcept:
    """Writes v in decimal ending just before `end` (at most 20 bytes); returns the length."""
    cdef unsigned long long u = <unsigned long long>(-v if v < 0 else v)
    cdef int n = 0
    while True:
        n += 1
        end[-n] = c'0' + <char>(u % 10)
        u //= 10
        if u == 0:
            break
    if v < 0:
        n += 1
        end[-n] = c'-'
    return n
