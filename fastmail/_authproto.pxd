# The auth_http answer without I/O: read in C (fast path) or by auth_http.ResponseReader
# (anything unusual), and nginx's reading of the headers into an AuthResult. The request is
# _authreq.pxd's.

from fastmail._core cimport AuthRequest

cdef extern from "_debug.h":
    bint FASTMAIL_DEBUG

cdef enum:
    MAX_HEADER_BLOCK = 1024         # nginx reads the answer into one buffer of this size
    MAX_HEADERS = 520               # a 1024-byte block holds at most 512 `x\n` lines
    MAX_DRAIN_BODY = 65536          # a kept-alive connection is reused only after a body this small
    RBUF_SIZE = 65536               # one recv() into the shared read buffer
    WAIT_IMMEDIATE_RETRIES = 3      # beyond nginx: WAIT without Auth-Wait is re-asked this often

# AnswerReader.got() results
cdef enum:
    R_MORE = 0          # the header block is not complete yet
    R_HEAD = 1          # the header block is complete: interpret(), then body()
    R_ERROR = 2         # the answer is broken: error_result()

# AnswerReader.body() / drain() verdicts: what to do with the connection after the header block
cdef enum:
    B_CLOSE = 0         # close it (HTTP/1.0, no length, server said close, extra bytes...)
    B_KEEP = 1          # the whole answer was read and the server keeps it open: reuse it
    B_DRAIN = 2         # the body is still coming: read it (bounded), then reuse


cdef class AuthResult:
    cdef public str status          # "ok" | "fail" | "error" ("wait" never reaches a session)
    cdef public bytes server, user, passwd, error_message, error_code, sasl_error, ssl_backend
    cdef public bytes backend_auth  # SMTP: Auth-SMTP-Auth-Method, lower-cased: off|plain|login
    cdef public object port         # int or None
    cdef public object addr         # str (IP text) or None
    cdef public int wait            # Auth-Wait seconds (the session delays a "fail" reply)
    cdef public str log_message     # nginx's log line without the " while ..." context, or None
    cdef public str log_level       # "error" | "info" | None
    cdef public list notes          # fastmail: auth_http URLs found down on the way (warn lines)
    cdef public bytes cache_key     # fastmail: the auth_http_cache key the answer is kept under


cdef AuthResult error_result(str msg, bytes user=*, bytes passwd=*)


cdef struct Header:
    const char *name
    Py_ssize_t nlen
    const char *value
    Py_ssize_t vlen


cdef class AnswerReader:
    """One answer at a time on one connection (reset() before each request)."""
    cdef object factory             # auth_http.ResponseReader, for anything unusual
    cdef object py                  # the fallback reader once this answer needed it
    cdef char acc[MAX_HEADER_BLOCK] # bytes of an unfinished header block (split answers)
    cdef Py_ssize_t acc_len
    cdef Py_ssize_t total           # bytes in the read buffer after the last got()
    cdef Py_ssize_t end             # header block length (fast path)
    cdef int phase
    cdef str err                    # R_ERROR: "invalid response" | "invalid header" | "too big"
    cdef int minor                  # HTTP/1.<minor>
    cdef readonly int code          # the status code (0: no status line nginx would read)
    cdef long long clen             # Content-Length, -1 without
    cdef int conn                   # Connection: 0 none, 1 close, 2 keep-alive
    cdef Py_ssize_t left            # body bytes still to drain
    cdef readonly bint used_fallback
    cdef readonly long received     # bytes of this answer so far

    cdef void reset(self) noexcept
    cdef char *recv_buf(self, Py_ssize_t *room) noexcept
    cdef int got(self, Py_ssize_t n) except -1
    cdef AuthResult error(self, str peer)
    cdef AuthResult interpret(self, AuthRequest auth, str peer, bint allow_names)
    cdef list headers(self)
    cdef int body(self, bint pool) except -1
    cdef int drain(self, Py_ssize_t n) except -1
    cdef int _py_feed(self, bytes data) except -1
    cdef int _py_verdict(self, bint pool) except -1

