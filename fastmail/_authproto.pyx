# cython: language_level=3
"""The auth_http answer in C, without I/O (ngx_mail_auth_http_module.c).

Owns: reading one answer (`AnswerReader`: the usual answer, a status line, simple `Name: value`
lines and a Content-Length body, is read in C; anything else goes to auth_http.ResponseReader,
the reference reader on httptools), the fate of the connection after the header block (reuse,
drain, close), and nginx's reading of the headers (`interpret_headers`: status, server and
port, Auth-Wait, SMTP error code...) into an `AuthResult`. The request is _authreq.pyx's.
Must not touch sockets, clocks or DNS: fastmail/_auth.pyx does the I/O.
auth_http.py keeps the Python reference of every rule here (ResponseReader, interpret);
tests/unit/test_auth_proto.py holds the two to the same results.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_FromStringAndSize
from libc.string cimport memcpy

from fastmail._core cimport AuthRequest
from fastmail._authreq cimport decimal, is_salted

cdef extern from *:
    """
    #include <arpa/inet.h>
    """
    int AF_INET6
    int inet_pton(int af, const char *src, void *dst) nogil
    const char *inet_ntop(int af, const void *src, char *dst, unsigned int size) nogil

# Python names of the shared limits (auth_http.py takes them from here).
globals().update(
    MAX_HEADER_BLOCK=MAX_HEADER_BLOCK,
    MAX_DRAIN_BODY=MAX_DRAIN_BODY,
    WAIT_IMMEDIATE_RETRIES=WAIT_IMMEDIATE_RETRIES,
)


@cython.freelist(64)
cdef class AuthResult:
    """What the auth server decided. `user`/`passwd` are None unless Auth-User/Auth-Pass came
    (raw, not percent-decoded). For "ok", `server`/`port` are the Auth-Server/Auth-Port texts
    (the backend's display name is `server:port`) and `addr` the address to connect to (None:
    a host name the client resolves). For "fail", `error_message` is the Auth-Status text,
    `error_code` the SMTP Auth-Error-Code, `wait` the Auth-Wait seconds (0: reply and close).
    `log_message`/`log_level` is nginx's log line without ` while in http auth state, ...`.
    fastmail's: `ssl_backend` (Auth-SSL-Backend), `backend_auth` (SMTP's Auth-SMTP-Auth-Method,
    lower-cased and checked: off, plain or login)."""

    def __init__(self, str status="error", **fields):
        self.status = status
        for k, v in fields.items():
            setattr(self, k, v)

    def __repr__(self):
        return (f"AuthResult({self.status!r}, server={self.server!r}, port={self.port!r}, "
                f"addr={self.addr!r}, wait={self.wait}, log={self.log_message!r})")


cdef AuthResult error_result(str msg, bytes user=None, bytes passwd=None):
    cdef AuthResult r = AuthResult.__new__(AuthResult)
    r.status = "error"
    r.log_message = msg
    r.log_level = "error" if msg else None
    r.user = user
    r.passwd = passwd
    return r


# --- reading the answer (ngx_mail_auth_http_ignore_status_line, _parse_header_line) -----------

# One recv() at a time in a worker: the bytes of the answer being read go here (behind what an
# unfinished header block held), and the header spans of the last complete block point into it.
cdef char _rbuf[MAX_HEADER_BLOCK + RBUF_SIZE]
cdef Header _hdr[MAX_HEADERS]
cdef int _nhdr = 0

cdef enum:
    PH_HEAD = 0         # reading the header block in C
    PH_PY = 1           # reading it with the fallback reader
    PH_BODY = 2         # the header block is done

cdef enum:
    P_MORE = 0
    P_HEAD = 1
    P_UNUSUAL = 2
    P_TOO_BIG = 3


cdef inline bint _alnum(unsigned char c) noexcept:
    return (c'0' <= c <= c'9') or (c'a' <= c <= c'z') or (c'A' <= c <= c'Z')


cdef inline unsigned char _lower(unsigned char c) noexcept:
    return c + 32 if c'A' <= c <= c'Z' else c


cdef bint _iequal(const char *p, Py_ssize_t n, const char *lower, Py_ssize_t m) noexcept:
    """p[:n] equals the lower-case ASCII text lower[:m], ignoring case."""
    cdef Py_ssize_t i
    if n != m:
        return False
    for i in range(n):
        if _lower(<unsigned char>p[i]) != <unsigned char>lower[i]:
            return False
    return True


cdef inline int _short(Py_ssize_t n) noexcept:
    # ran out of bytes: more may come, unless the block already fills nginx's buffer
    return P_TOO_BIG if n >= MAX_HEADER_BLOCK else P_MORE


cdef int _parse(AnswerReader r, const unsigned char *p, Py_ssize_t n) noexcept:
    """The usual answer, as auth_http.ResponseReader's one-read path takes it: `HTTP/1.x DDD
    [reason]` (2xx-5xx, not 204/304), `Name: value` lines of printable bytes with CRLF, an
    empty line, within 1024 bytes; framing headers only as plain Content-Length/Connection.
    P_UNUSUAL means: let the reference reader decide."""
    global _nhdr
    cdef Py_ssize_t i = 0, lim = n if n < MAX_HEADER_BLOCK else MAX_HEADER_BLOCK
    cdef Py_ssize_t ns, ne, vs, ve
    cdef int k, code = 0, nh = 0
    cdef unsigned char c
    cdef const char *lit = b"HTTP/1."
    r.clen = -1
    r.conn = 0
    for k in range(7):
        if i >= lim:
            return _short(n)
        if p[i] != <unsigned char>lit[k]:
            return P_UNUSUAL
        i += 1
    if i >= lim:
        return _short(n)
    if p[i] != c'0' and p[i] != c'1':
        return P_UNUSUAL
    r.minor = p[i] - c'0'
    i += 1
    if i >= lim:
        return _short(n)
    if p[i] != c' ':
        return P_UNUSUAL
    i += 1
    for k in range(3):
        if i >= lim:
            return _short(n)
        c = p[i]
        if not (c'0' <= c <= c'9') or (k == 0 and not (c'2' <= c <= c'5')):
            return P_UNUSUAL
        code = code * 10 + (c - c'0')
        i += 1
    if code == 204 or code == 304:
        return P_UNUSUAL
    r.code = code
    if i >= lim:
        return _short(n)
    if p[i] == c' ':
        i += 1
        while True:
            if i >= lim:
                return _short(n)
            c = p[i]
            if c == c'\r':
                break
            if c < 0x20 or c > 0x7e:
                return P_UNUSUAL
            i += 1
    if p[i] != c'\r':
        return P_UNUSUAL
    if i + 1 >= lim:
        return _short(n)
    if p[i + 1] != c'\n':
        return P_UNUSUAL
    i += 2
    while True:
        if i >= lim:
            return _short(n)
        c = p[i]
        if c == c'\r':
            if i + 1 >= lim:
                return _short(n)
            if p[i + 1] != c'\n':
                return P_UNUSUAL
            r.end = i + 2
            break
        if not _alnum(c):
            return P_UNUSUAL
        ns = i
        i += 1
        while True:
            if i >= lim:
                return _short(n)
            c = p[i]
            if c == c':':
                break
            if not (_alnum(c) or c == c'-'):
                return P_UNUSUAL
            i += 1
        ne = i
        i += 1
        while i < lim and p[i] == c' ':
            i += 1
        vs = i
        while True:
            if i >= lim:
                return _short(n)
            c = p[i]
            if c == c'\r':
                break
            if c < 0x20 or c > 0x7e:
                return P_UNUSUAL
            i += 1
        if i + 1 >= lim:
            return _short(n)
        if p[i + 1] != c'\n':
            return P_UNUSUAL
        ve = i
        while ve > vs and p[ve - 1] == c' ':
            ve -= 1
        if nh == MAX_HEADERS:
            return P_UNUSUAL
        _hdr[nh].name = <const char *>p + ns
        _hdr[nh].nlen = ne - ns
        _hdr[nh].value = <const char *>p + vs
        _hdr[nh].vlen = ve - vs
        # at once, as httptools stops at a bad Content-Length before the block is complete
        if _framing(r, &_hdr[nh]) == P_UNUSUAL:
            return P_UNUSUAL
        nh += 1
        i += 2
    _nhdr = nh
    return P_HEAD


cdef int _framing(AnswerReader r, Header *h) noexcept:
    """Content-Length and Connection as httptools would read them, or P_UNUSUAL."""
    cdef Py_ssize_t j
    if h.nlen < 7:
        return P_HEAD
    if _iequal(h.name, h.nlen, b"content-length", 14):
        if r.clen >= 0 or h.vlen == 0 or h.vlen > 9:
            return P_UNUSUAL
        r.clen = 0
        for j in range(h.vlen):
            if not (c'0' <= h.value[j] <= c'9'):
                return P_UNUSUAL
            r.clen = r.clen * 10 + (h.value[j] - c'0')
    elif _iequal(h.name, h.nlen, b"connection", 10):
        if r.conn:
            return P_UNUSUAL
        if _iequal(h.value, h.vlen, b"close", 5):
            r.conn = 1
        elif _iequal(h.value, h.vlen, b"keep-alive", 10):
            r.conn = 2
        else:
            return P_UNUSUAL
    elif (_iequal(h.name, h.nlen, b"transfer-encoding", 17)
          or _iequal(h.name, h.nlen, b"upgrade", 7)):
        return P_UNUSUAL
    return P_HEAD


cdef class AnswerReader:
    """Reads one answer per request on one connection: the header block in C when it is the
    usual one, else through `factory()` (auth_http.ResponseReader); then decides whether the
    connection can carry the next request. The I/O calls recv_buf()/got() per recv();
    feed() does the same for tests."""

    def __init__(self, factory):
        self.factory = factory
        self.reset()

    cdef void reset(self) noexcept:
        self.py = None
        self.acc_len = 0
        self.total = 0
        self.end = 0
        self.phase = PH_HEAD
        self.err = None
        self.left = 0
        self.used_fallback = False
        self.received = 0
        self.code = 0

    cdef char *recv_buf(self, Py_ssize_t *room) noexcept:
        """Where the next recv() goes (RBUF_SIZE bytes of room): in the shared buffer, behind
        the unfinished header block."""
        room[0] = RBUF_SIZE
        if self.phase != PH_HEAD or self.acc_len == 0:
            return _rbuf
        memcpy(_rbuf, self.acc, self.acc_len)
        return _rbuf + self.acc_len

    cdef int got(self, Py_ssize_t n) except -1:
        """n bytes arrived where recv_buf() said: R_MORE, R_HEAD or R_ERROR."""
        cdef int rc
        self.received += n
        if self.phase == PH_PY:
            return self._py_feed(PyBytes_FromStringAndSize(_rbuf, n))
        self.total = self.acc_len + n
        rc = _parse(self, <const unsigned char *>_rbuf, self.total)
        if rc == P_HEAD:
            self.phase = PH_BODY
            return R_HEAD
        if rc == P_MORE:
            memcpy(self.acc, _rbuf, self.total)
            self.acc_len = self.total
            return R_MORE
        if rc == P_TOO_BIG:
            self.err = "too big"
            return R_ERROR
        self.used_fallback = True
        self.py = self.factory()
        self.phase = PH_PY
        return self._py_feed(PyBytes_FromStringAndSize(_rbuf, self.total))

    cdef int _py_feed(self, bytes data) except -1:
        global _nhdr
        cdef list headers
        cdef int k
        if not self.py.feed(data):
            return R_MORE
        if self.py.error:
            self.err = self.py.error
            return R_ERROR
        self.phase = PH_BODY
        self.code = self.py.status_code
        headers = self.py.headers
        if len(headers) > MAX_HEADERS:
            self.err = "too big"
            return R_ERROR
        k = 0
        for name, value in headers:  # the list keeps the bytes alive until the next answer
            _hdr[k].name = PyBytes_AS_STRING(name)
            _hdr[k].nlen = PyBytes_GET_SIZE(name)
            _hdr[k].value = PyBytes_AS_STRING(value)
            _hdr[k].vlen = PyBytes_GET_SIZE(value)
            k += 1
        _nhdr = k
        return R_HEAD

    cdef AuthResult error(self, str peer):
        """The result for R_ERROR, logged as nginx does: a broken status line or header line at
        error, a header block over 1024 bytes not at all (nginx reads it as an early EOF)."""
        if self.err == "invalid response":
            return error_result(f"auth http server {peer} sent invalid response")
        if self.err == "invalid header":
            return error_result(f"auth http server {peer} sent invalid header in response")
        return error_result(None)  # too big: nginx logs nothing at info or above

    cdef AuthResult interpret(self, AuthRequest auth, str peer, bint allow_names):
        """The result for R_HEAD; call it before the next got() of any reader."""
        return interpret_headers(_hdr, _nhdr, auth, peer, allow_names)

    cdef list headers(self):
        """After R_HEAD: the (name, value) pairs (for debug lines; before the next got())."""
        return [(PyBytes_FromStringAndSize(_hdr[k].name, _hdr[k].nlen),
                 PyBytes_FromStringAndSize(_hdr[k].value, _hdr[k].vlen))
                for k in range(_nhdr)]

    cdef int body(self, bint pool) except -1:
        """After R_HEAD: B_KEEP, B_DRAIN (then drain() per recv) or B_CLOSE. `pool` False:
        the connection is never reused (auth_http_keepalive 0, or the pool is shut)."""
        cdef Py_ssize_t have
        if self.py is not None:
            return self._py_verdict(pool)
        if not pool or self.clen < 0:
            return B_CLOSE
        if not (self.conn == 2 if self.minor == 0 else self.conn != 1):
            return B_CLOSE
        have = self.total - self.end
        if have == self.clen:
            return B_KEEP
        if have > self.clen or self.clen > MAX_DRAIN_BODY:
            return B_CLOSE  # bytes beyond the answer: the server is out of step
        self.left = self.clen - have
        return B_DRAIN

    cdef int _py_verdict(self, bint pool) except -1:
        py = self.py
        if py.message_complete:
            return B_KEEP if pool and py.keep_alive else B_CLOSE
        if not pool or py._synthetic or py.body_bytes > MAX_DRAIN_BODY:
            return B_CLOSE
        return B_DRAIN

    cdef int drain(self, Py_ssize_t n) except -1:
        """n more body bytes arrived in recv_buf(): B_KEEP, B_DRAIN or B_CLOSE."""
        self.received += n
        if self.py is not None:
            self.py.feed(PyBytes_FromStringAndSize(_rbuf, n))
            return self._py_verdict(True)
        if n > self.left:
            return B_CLOSE
        self.left -= n
        return B_KEEP if self.left == 0 else B_DRAIN

    # --- for tests: the same steps on given bytes -----------------------------------------------

    def feed(self, bytes data):
        """Reads `data` as the next recv() would: (R_* code, headers or None). After R_HEAD
        the rest of the bytes count as body: see verdict()."""
        cdef Py_ssize_t room
        cdef char *buf
        cdef int rc
        if self.phase == PH_BODY:
            raise ValueError("the header block is complete")
        buf = self.recv_buf(&room)
        if PyBytes_GET_SIZE(data) > room:
            raise ValueError("more than one recv() holds")
        memcpy(buf, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        rc = self.got(PyBytes_GET_SIZE(data))
        if rc != R_HEAD:
            return rc, None
        return rc, self.headers()

    def feed_body(self, bytes data):
        """Body bytes after R_HEAD and a "drain" verdict: the next verdict."""
        cdef Py_ssize_t room
        cdef char *buf = self.recv_buf(&room)
        if self.phase != PH_BODY or PyBytes_GET_SIZE(data) > room:
            raise ValueError("not draining, or more than one recv() holds")
        memcpy(buf, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        return ("close", "keep", "drain")[self.drain(PyBytes_GET_SIZE(data))]

    def verdict(self, bint pool=True):
        """After R_HEAD: "keep", "drain" or "close" for the connection."""
        return ("close", "keep", "drain")[self.body(pool)]

    def error_text(self):
        return self.err

    def result(self, AuthRequest auth, str peer, bint allow_names=False):
        """After feed() returned R_HEAD or R_ERROR: what the client would deliver."""
        if self.err is not None:
            return self.error(peer)
        return self.interpret(auth, peer, allow_names)

    def clear(self):
        self.reset()


globals().update(R_MORE=R_MORE, R_HEAD=R_HEAD, R_ERROR=R_ERROR)


# --- what the headers mean (ngx_mail_auth_http_process_headers) --------------------------------

cdef long long _atoi(const char *p, Py_ssize_t n) noexcept:
    """ngx_atoi: decimal digits only, no sign, not empty, no overflow (-1 when not a number)."""
    cdef long long v = 0
    cdef Py_ssize_t i
    if n == 0 or n > 18:
        return -1
    for i in range(n):
        if not (c'0' <= p[i] <= c'9'):
            return -1
        v = v * 10 + (p[i] - c'0')
    return v


cdef object server_addr(const char *p, Py_ssize_t n):
    """Auth-Server as nginx accepts it (ngx_inet_addr, then IPv6 text without brackets): the
    address as text, or None."""
    cdef int nums[4]
    cdef int part = 0, v = 0
    cdef Py_ssize_t i
    cdef bint has_dot = False, has_colon = False, bad4 = False
    cdef unsigned char c
    cdef char text[64]
    cdef unsigned char a6[16]
    if n == 0:
        return None
    for i in range(n):
        c = <unsigned char>p[i]
        if c >= 0x80:
            return None
        if c == c'.':
            has_dot = True
            if part < 4:
                nums[part] = v
            part += 1
            v = 0
        elif c == c':':
            has_colon = True
            bad4 = True
        elif c'0' <= c <= c'9':
            if v <= 255:
                v = v * 10 + (c - c'0')
        else:
            bad4 = True
    if part < 4:
        nums[part] = v
    if not bad4 and part == 3:
        for i in range(4):
            if nums[i] > 255:
                bad4 = True
        if not bad4 and not (nums[0] == nums[1] == nums[2] == nums[3] == 255):
            i = 16
            for part in range(3, -1, -1):
                i -= decimal(text + i, nums[part])
                if part:
                    i -= 1
                    text[i] = c'.'
            return PyUnicode_FromStringAndSize(text + i, 16 - i)
    if has_dot and not has_colon:
        return None
    if n >= <Py_ssize_t>sizeof(text):
        return None
    for i in range(n):
        if p[i] == 0:
            return None
        text[i] = p[i]
    text[n] = 0
    if inet_pton(AF_INET6, text, a6) != 1:
        return None
    inet_ntop(AF_INET6, a6, text, sizeof(text))
    return text.decode("ascii")


cdef bint _host_name(const char *p, Py_ssize_t n) noexcept:
    """A name the resolver may look up: 1-253 bytes of letters, digits, '.', '-', starting and
    ending with a letter or digit."""
    cdef Py_ssize_t i
    if n < 1 or n > 253 or not _alnum(p[0]) or not _alnum(p[n - 1]):
        return False
    for i in range(n):
        if not (_alnum(p[i]) or p[i] == c'.' or p[i] == c'-'):
            return False
    return True


cdef inline bytes _b(const char *p, Py_ssize_t n):
    return PyBytes_FromStringAndSize(p, n) if p != NULL else None


cdef inline str _text(bytes b):
    return b.decode("utf-8", "backslashreplace")


cdef AuthResult interpret_headers(Header *h, int n, AuthRequest auth, str peer,
                                  bint allow_names):
    """nginx's rules over the headers of an answer that was read without error."""
    cdef bint smtp = auth.protocol == b"smtp", wait_flag = False
    cdef const char *fail = NULL
    cdef const char *server = NULL
    cdef const char *port = NULL
    cdef const char *user = NULL
    cdef const char *passwd = NULL
    cdef const char *code = NULL
    cdef const char *sasl = NULL
    cdef const char *ssl_backend = NULL
    cdef const char *backend_auth = NULL
    cdef Py_ssize_t fail_n = 0, server_n = 0, port_n = 0, user_n = 0, passwd_n = 0
    cdef Py_ssize_t code_n = 0, sasl_n = 0, ssl_backend_n = 0, backend_auth_n = 0
    cdef long long wait = 0, num
    cdef const char *name
    cdef const char *v
    cdef Py_ssize_t nl, vl
    cdef int k
    cdef AuthResult r
    cdef bytes user_b, passwd_b, server_b, port_b
    for k in range(n):
        name = h[k].name
        nl = h[k].nlen
        if nl < 6 or not _iequal(name, 5, b"auth-", 5):
            continue  # Content-Length, Connection, ...
        name += 5
        nl -= 5
        v = h[k].value
        vl = h[k].vlen
        if _iequal(name, nl, b"status", 6):
            if vl == 2 and v[0] == c'O' and v[1] == c'K':
                pass
            elif vl == 4 and v[0] == c'W' and v[1] == c'A' and v[2] == c'I' and v[3] == c'T':
                wait_flag = True
            elif vl or not smtp:
                fail = v
                fail_n = vl
        elif _iequal(name, nl, b"server", 6):
            server = v
            server_n = vl
        elif _iequal(name, nl, b"port", 4):
            port = v
            port_n = vl
        elif _iequal(name, nl, b"user", 4):
            user = v
            user_n = vl
        elif _iequal(name, nl, b"pass", 4):
            passwd = v
            passwd_n = vl
        elif _iequal(name, nl, b"wait", 4):
            num = _atoi(v, vl)
            if num >= 0:
                wait = num
        elif _iequal(name, nl, b"error-code", 10):
            if smtp:
                code = v
                code_n = vl
        elif _iequal(name, nl, b"error-sasl", 10):
            sasl = v
            sasl_n = vl
        elif _iequal(name, nl, b"ssl-backend", 11):
            ssl_backend = v
            ssl_backend_n = vl
        elif _iequal(name, nl, b"smtp-auth-method", 16):
            if smtp:
                backend_auth = v
                backend_auth_n = vl
    user_b = _b(user, user_n)
    passwd_b = _b(passwd, passwd_n)
    r = AuthResult.__new__(AuthResult)
    r.user = user_b
    r.passwd = passwd_b
    if fail != NULL:
        r.status = "fail"
        r.error_message = _b(fail, fail_n)
        r.error_code = _b(code, code_n)
        r.sasl_error = _b(sasl, sasl_n)
        r.wait = <int>wait if wait < 0x7fffffff else 0x7fffffff
        r.log_message = f'client login failed: "{_text(r.error_message)}"'
        r.log_level = "info"
        return r
    if wait_flag:
        r.status = "wait"
        r.wait = <int>wait if wait < 0x7fffffff else 0x7fffffff
        return r
    if server_n == 0 or port_n == 0:
        return error_result(f"auth http server {peer} did not send server or port",
                            user_b, passwd_b)
    if not smtp and passwd == NULL and _no_password(auth):
        return error_result(f"auth http server {peer} did not send password", user_b, passwd_b)
    server_b = _b(server, server_n)
    addr = server_addr(server, server_n)
    if addr is None and not (allow_names and _host_name(server, server_n)):
        return error_result(
            f'auth http server {peer} sent invalid server address:"{_text(server_b)}"',
            user_b, passwd_b)
    num = _atoi(port, port_n)
    if num < 1 or num > 65535:
        port_b = _b(port, port_n)
        return error_result(
            f'auth http server {peer} sent invalid server port:"{_text(port_b)}"',
            user_b, passwd_b)
    if backend_auth != NULL:
        method = _b(backend_auth, backend_auth_n).lower()
        if method not in _BACKEND_AUTH:
            return error_result(
                f'auth http server {peer} sent invalid SMTP auth method:'
                f'"{_text(_b(backend_auth, backend_auth_n))}"', user_b, passwd_b)
        r.backend_auth = method
    r.status = "ok"
    r.server = server_b
    r.port = num
    r.addr = addr
    r.ssl_backend = _b(ssl_backend, ssl_backend_n)
    return r


# fastmail's Auth-SMTP-Auth-Method: AUTH to the SMTP backend for this login, whatever
# proxy_smtp_auth and proxy_smtp_auth_method say (off: none, XCLIENT carries LOGIN=)
cdef tuple _BACKEND_AUTH = (b"off", b"plain", b"login")


cdef bint _no_password(AuthRequest auth):
    """The session has no password once a salt was sent (nginx forgets it), and for an
    EXTERNAL login (fastmail never carries a stale one over)."""
    if auth.salt and is_salted(auth.method):
        return True
    return auth.method == b"external" and not auth.passwd


def interpret(list headers, AuthRequest auth, str peer, bint allow_names=False):
    """interpret_headers over (name, value) pairs: what auth_http.interpret gives, in C."""
    cdef Header h[MAX_HEADERS]
    cdef int k = 0
    if len(headers) > MAX_HEADERS:
        raise ValueError("too many headers")
    for name, value in headers:
        h[k].name = PyBytes_AS_STRING(name)
        h[k].nlen = PyBytes_GET_SIZE(name)
        h[k].value = PyBytes_AS_STRING(value)
        h[k].vlen = PyBytes_GET_SIZE(value)
        k += 1
    return interpret_headers(h, k, auth, peer, allow_names)


def parse_server_addr(bytes text):
    return server_addr(PyBytes_AS_STRING(text), PyBytes_GET_SIZE(text))
