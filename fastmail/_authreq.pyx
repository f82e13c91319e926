# cython: language_level=3
"""The auth_http request in C, without I/O (ngx_mail_auth_http_create_request).

Owns: the request bytes of one auth_http config (`RequestTemplate`: every constant piece made
once per server block, the per-login values escaped with NGX_ESCAPE_MAIL_AUTH, written in two
passes over one sequence: count, then write into a bytes object of that size). Must not touch
sockets, clocks or DNS (fastmail/_auth.pyx does the I/O) nor read answers (_authproto.pyx).
auth_http.build_request is the Python reference; tests/unit/test_auth_proto.py holds the two to
the same bytes.
Beyond nginx, and only when asked (`Extra`): Client-Port, Server-IP and Server-Port
(auth_http_send), Auth-Failed-Server and Auth-Backend-Attempt (proxy_next_upstream_tries), after
nginx's lines and before the auth_http_header ones; and the cache key's text (`key`: the request
without what changes with every connection, the ports).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from libc.string cimport memcpy

from fastmail._core cimport AuthRequest


cdef bint _ESC[256]
cdef int _i
for _i in range(256):
    _ESC[_i] = _i <= 0x20 or _i == 0x25
cdef const char *_HEX = b"0123456789ABCDEF"


cdef inline void _put(Writer *w, const char *s, Py_ssize_t n) noexcept:
    if w.p != NULL:
        memcpy(w.p + w.n, s, n)
    w.n += n


cdef inline void _put_b(Writer *w, bytes b) noexcept:
    if b is not None:
        _put(w, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))


cdef void _put_esc(Writer *w, bytes b) noexcept:
    """nginx's NGX_ESCAPE_MAIL_AUTH: 0x00-0x20 and '%' as %XX (upper-case); all else raw."""
    cdef const unsigned char *s
    cdef Py_ssize_t i, n
    cdef unsigned char c
    if b is None:
        return
    s = <const unsigned char *>PyBytes_AS_STRING(b)
    n = PyBytes_GET_SIZE(b)
    if w.p == NULL:
        for i in range(n):
            w.n += 3 if _ESC[s[i]] else 1
        return
    for i in range(n):
        c = s[i]
        if _ESC[c]:
            w.p[w.n] = c'%'
            w.p[w.n + 1] = _HEX[c >> 4]
            w.p[w.n + 2] = _HEX[c & 15]
            w.n += 3
        else:
            w.p[w.n] = c
            w.n += 1


cdef void _put_int(Writer *w, long long v) noexcept:
    cdef char buf[24]
    cdef int n = decimal(buf + 24, v)
    _put(w, buf + 24 - n, n)


cdef tuple _SSL_BASE = (("protocol", b"Auth-SSL-Protocol: "), ("cipher", b"Auth-SSL-Cipher: "))
cdef tuple _SSL_CERT = (("subject", b"Auth-SSL-Subject: "), ("issuer", b"Auth-SSL-Issuer: "),
                        ("serial", b"Auth-SSL-Serial: "),
                        ("fingerprint", b"Auth-SSL-Fingerprint: "))


cdef class Extra:
    """fastmail's own request lines for one login (see _authreq.pxd)."""

    def __init__(self, int client_port=-1, bytes server_ip=None, int server_port=0,
                 list failed=None):
        self.client_port = client_port
        self.server_ip = server_ip
        self.server_port = server_port
        self.failed = failed


cdef class RequestTemplate:
    """The request of one auth_http config, line for line as ngx_mail_auth_http_create_request
    writes it (keepalive=False gives nginx's bytes exactly; keepalive=True changes only
    HTTP/1.0 to HTTP/1.1 and adds `Connection: keep-alive` as the last line)."""

    def __init__(self, bytes uri_path, bytes host_header, list extra_headers=None,
                 bint keepalive=False, bint pass_client_cert=False):
        self.head = (b"GET " + (uri_path or b"/")
                     + (b" HTTP/1.1\r\n" if keepalive else b" HTTP/1.0\r\n")
                     + b"Host: " + host_header + b"\r\nAuth-Method: ")
        tail = b"".join([name + b": " + value + b"\r\n" for name, value in extra_headers or ()])
        if keepalive:
            tail += b"Connection: keep-alive\r\n"
        self.tail = tail + b"\r\n"
        self.pass_client_cert = pass_client_cert

    def request(self, AuthRequest auth, bytes client_ip, client_host=None, proxy_protocol=None,
                ssl_info=None, Extra extra=None, bint key=False):
        """The request bytes (what build() gives the client); `key`: the cache key's text."""
        return self.build(auth, client_ip, client_host, proxy_protocol, ssl_info, extra, key)

    cdef bytes build(self, AuthRequest auth, bytes client_ip, object client_host,
                     object proxy_protocol, object ssl_info, Extra extra=None, bint key=False):
        cdef Writer w
        cdef bytes out
        w.p = NULL
        w.n = 0
        self._emit(&w, auth, client_ip, client_host, proxy_protocol, ssl_info, extra, key)
        out = PyBytes_FromStringAndSize(NULL, w.n)
        w.p = PyBytes_AS_STRING(out)
        w.n = 0
        self._emit(&w, auth, client_ip, client_host, proxy_protocol, ssl_info, extra, key)
        return out

    cdef int _emit(self, Writer *w, AuthRequest auth, bytes client_ip, object client_host,
                   object pp, object ssl, Extra extra, bint key) except -1:
        """Counts (w.p NULL) or writes the request: one sequence for both passes. `key`
        leaves out the ports (the PROXY header's, Client-Port) and the failover lines."""
        cdef bytes v
        cdef Py_ssize_t i
        _put_b(w, self.head)
        _put_b(w, auth.method)
        _put(w, b"\r\nAuth-User: ", 13)
        _put_esc(w, auth.user)
        _put(w, b"\r\nAuth-Pass: ", 13)
        _put_esc(w, auth.passwd)
        _put(w, b"\r\n", 2)
        if auth.salt and is_salted(auth.method):
            _put(w, b"Auth-Salt: ", 11)
            _put_b(w, auth.salt)  # the salt carries its own CRLF
        _put(w, b"Auth-Protocol: ", 15)
        _put_b(w, auth.protocol)
        _put(w, b"\r\nAuth-Login-Attempt: ", 22)
        _put_int(w, auth.login_attempt)
        _put(w, b"\r\nClient-IP: ", 13)
        _put_b(w, client_ip)
        _put(w, b"\r\n", 2)
        if client_host is not None:
            _put(w, b"Client-Host: ", 13)
            _put_b(w, <bytes?>client_host)
            _put(w, b"\r\n", 2)
        if pp is not None:
            _put(w, b"Proxy-Protocol-Addr: ", 21)
            _put_b(w, <bytes?>pp[0])
            _put(w, b"\r\nProxy-Protocol-Port: ", 23)
            _put_int(w, 0 if key else pp[1])
            _put(w, b"\r\nProxy-Protocol-Server-Addr: ", 30)
            _put_b(w, <bytes?>pp[2])
            _put(w, b"\r\nProxy-Protocol-Server-Port: ", 30)
            _put_int(w, pp[3])
            _put(w, b"\r\n", 2)
        if auth.method == b"none":
            _put(w, b"Auth-SMTP-Helo: ", 16)
            _put_b(w, auth.smtp_helo)
            _put(w, b"\r\nAuth-SMTP-From: ", 18)
            _put_b(w, auth.smtp_from)
            _put(w, b"\r\nAuth-SMTP-To: ", 16)
            _put_b(w, auth.smtp_to)
            _put(w, b"\r\n", 2)
        if ssl is not None:
            _put(w, b"Auth-SSL: on\r\n", 14)
            for field, name in _SSL_BASE:
                v = ssl.get(field)
                if v:
                    _put_b(w, name)
                    _put_b(w, v)
                    _put(w, b"\r\n", 2)
            v = ssl.get("verify")
            if v:
                _put(w, b"Auth-SSL-Verify: ", 17)
                _put_b(w, v)
                _put(w, b"\r\n", 2)
                for field, name in _SSL_CERT:
                    v = ssl.get(field)
                    if v:
                        _put_b(w, name)
                        _put_b(w, v)
                        _put(w, b"\r\n", 2)
                v = ssl.get("cert")
                if self.pass_client_cert and v:
                    _put(w, b"Auth-SSL-Cert: ", 15)
                    _put_esc(w, v)
                    _put(w, b"\r\n", 2)
        if extra is not None:
            if extra.client_port >= 0 and not key:
                _put(w, b"Client-Port: ", 13)
                _put_int(w, extra.client_port)
                _put(w, b"\r\n", 2)
            if extra.server_ip is not None:
                _put(w, b"Server-IP: ", 11)
                _put_b(w, extra.server_ip)
                _put(w, b"\r\nServer-Port: ", 15)
                _put_int(w, extra.server_port)
                _put(w, b"\r\n", 2)
            if extra.failed and not key:
                for i in range(len(extra.failed)):
                    _put(w, b"Auth-Failed-Server: ", 20)
                    _put_b(w, <bytes?>extra.failed[i])
                    _put(w, b"\r\n", 2)
                _put(w, b"Auth-Backend-Attempt: ", 22)
                _put_int(w, len(extra.failed) + 1)
                _put(w, b"\r\n", 2)
        _put_b(w, self.tail)
        return 0
