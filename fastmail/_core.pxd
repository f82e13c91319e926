# Shared core of the client session machines: action bits, the machine base
# class with its receive buffer and output, and nginx's SASL decoding helpers.

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.string cimport memcpy, memmove, memchr, memcmp

cdef extern from "_debug.h":
    bint FASTMAIL_DEBUG


# bytearray buffers in C: no slice objects, no buffer-protocol round trips (the machines'
# input and output buffers are touched on every read and reply)
cdef inline int ba_add(bytearray b, bytes data) except -1:
    """b += data"""
    cdef Py_ssize_t n = PyByteArray_GET_SIZE(b), k = PyBytes_GET_SIZE(data)
    if k:
        PyByteArray_Resize(b, n + k)
        memcpy(PyByteArray_AS_STRING(b) + n, PyBytes_AS_STRING(data), k)
    return 0


cdef inline bytes ba_slice(bytearray b, Py_ssize_t start, Py_ssize_t end):
    """bytes(b[start:end]) for 0 <= start <= end <= len(b)"""
    return PyBytes_FromStringAndSize(PyByteArray_AS_STRING(b) + start, end - start)


cdef inline bytes ba_take(bytearray b):
    """bytes(b), then b emptied"""
    cdef bytes out = PyBytes_FromStringAndSize(PyByteArray_AS_STRING(b), PyByteArray_GET_SIZE(b))
    PyByteArray_Resize(b, 0)
    return out


cdef inline int ba_cut(bytearray b, Py_ssize_t n) except -1:
    """del b[:n]"""
    cdef Py_ssize_t size = PyByteArray_GET_SIZE(b)
    if n >= size:
        PyByteArray_Resize(b, 0)
    elif n > 0:
        memmove(PyByteArray_AS_STRING(b), PyByteArray_AS_STRING(b) + n, size - n)
        PyByteArray_Resize(b, size - n)
    return 0

cdef inline bytes cat3(bytes a, bytes b, bytes c):
    """a + b + c in one allocation"""
    cdef Py_ssize_t na = PyBytes_GET_SIZE(a), nb = PyBytes_GET_SIZE(b)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, na + nb + PyBytes_GET_SIZE(c))
    cdef char *p = PyBytes_AS_STRING(out)
    memcpy(p, PyBytes_AS_STRING(a), na)
    memcpy(p + na, PyBytes_AS_STRING(b), nb)
    memcpy(p + na + nb, PyBytes_AS_STRING(c), PyBytes_GET_SIZE(c))
    return out


cdef inline int ba_clear(bytearray b) except -1:
    """del b[:]"""
    return PyByteArray_Resize(b, 0)


cdef inline Py_ssize_t ba_find_crlf(bytearray b, Py_ssize_t start):
    """b.find(b"\r\n", start) for 0 <= start"""
    cdef const char *s = PyByteArray_AS_STRING(b)
    cdef const char *nl
    cdef Py_ssize_t n = PyByteArray_GET_SIZE(b), i = start + 1
    while i < n:
        nl = <const char *>memchr(s + i, 10, n - i)
        if nl == NULL:
            return -1
        if (nl - 1)[0] == 13:
            return nl - s - 1
        i = nl - s + 1
    return -1


cdef inline bint ba_at(bytearray b, Py_ssize_t at, bytes text):
    """b[at:at + len(text)] == text"""
    cdef Py_ssize_t k = PyBytes_GET_SIZE(text)
    return (0 <= at and at + k <= PyByteArray_GET_SIZE(b)
            and memcmp(PyByteArray_AS_STRING(b) + at, PyBytes_AS_STRING(text), k) == 0)


cpdef enum Action:
    ACT_SEND = 1        # take_output() has bytes for the client
    ACT_AUTH = 2        # .auth holds a complete AuthRequest: call auth_http
    ACT_STARTTLS = 4    # reply sent; start the TLS handshake, then on_tls_done()
    ACT_CLOSE = 8       # close after the pending output is written
    ACT_TIMER = 16      # call on_timer() after .timer_ms milliseconds
    ACT_BACKEND = 32    # login machines: take_backend_output() has bytes for the backend
    ACT_DONE = 64       # login machines: backend logged in, start relaying


cdef class AuthRequest:
    cdef public bytes method       # b"plain", b"login", b"apop", b"cram-md5", b"external", b"none", ...
    cdef public bytes user
    cdef public bytes passwd
    cdef public bytes salt         # with its trailing CRLF, as nginx keeps it; b"" when none
    cdef public bytes protocol     # b"imap", b"pop3", b"smtp"
    cdef public int login_attempt
    cdef public bytes smtp_helo
    cdef public bytes smtp_from
    cdef public bytes smtp_to
    cdef public bytes tag          # IMAP tag with its trailing space (b"" for others)
    cdef public bint esmtp         # SMTP: client said EHLO (backend login replays it)
    cdef public bytes backend_auth # SMTP: Auth-SMTP-Auth-Method (off/plain/login); b"": the config's


cdef class Machine:
    cdef bytearray _out
    cdef bytearray buf             # unparsed client input
    cdef Py_ssize_t limit          # client buffer size (nginx's *_client_buffer)
    cdef public int errors
    cdef public int max_errors
    cdef public int commands
    cdef public int max_commands
    cdef public AuthRequest auth
    cdef public str phase          # what the session is doing, for log lines ("in auth state")
    cdef public str close_reason   # log text when the machine chose to close
    cdef public bint log_info      # the session's log takes info lines: else close_reason's
                                   # text quoting the client's bytes is not built
    cdef public int timer_ms
    cdef public int login_attempt

    cdef inline void send(self, bytes data):
        ba_add(self._out, data)

    # The machine contract: every call returns ACT_* bits (see docs/internals.md).
    cpdef int start(self)
    cpdef int feed(self, bytes data)
    cpdef int on_auth_ok(self)
    cpdef int on_auth_fail(self, bytes message, object error_code=*, bint retry=*,
                           object sasl=*)
    cpdef int on_auth_error(self)
    cpdef int on_tls_done(self)
    cpdef int after_starttls(self)
    cpdef int on_timeout(self)
    cpdef int on_timer(self)
    cpdef bytes take_output(self)
    cpdef bytes take_input(self)
    cpdef Py_ssize_t room(self)


cdef class Profile:
    # One per server{} block: limits and prebuilt replies; makes the session machines.
    cpdef Machine new_session(self, bint tls)


cpdef object decode_base64(bytes data)
cpdef object sasl_plain(bytes data)
cpdef object sasl_cram_md5(bytes data)
cpdef bytes make_salt(bytes server_name)
cpdef bytes encode_base64(bytes data)
cpdef bint has_ctl(bytes data)
cpdef object sasl_xoauth2(bytes data)
cpdef object sasl_name(bytes s)
cpdef object sasl_oauthbearer(bytes data, bint need_end, bint need_user)

# imap_auth/smtp_auth bits, in nginx's advertising order (POP3 has APOP at bit 2: its own).
cdef enum:
    M_PLAIN = 1
    M_LOGIN = 2
    M_CRAM_MD5 = 4
    M_EXTERNAL = 8
    M_XOAUTH2 = 16
    M_OAUTHBEARER = 32

# starttls off/on/only
cdef enum:
    TLS_OFF = 0
    TLS_ON = 1
    TLS_ONLY = 2
