# The auth_http client on the worker's Loop: pooled HTTP/1.1 keep-alive connections or nginx's
# one HTTP/1.0 connection per request, one deadline per request, WAIT, Auth-Server names.

from libc.stdint cimport int64_t

from fastmail._poll cimport Loop, Watcher, TNode, TimerQueue
from fastmail._core cimport AuthRequest
from fastmail._authproto cimport AuthResult, AnswerReader
from fastmail._authreq cimport RequestTemplate


# The kind of Watcher.completed(kind, result) that brings an auth_http answer (the engine's
# DONE_AUTH).
cdef enum:
    DONE_AUTH = 1


cdef class _Ask:
    cdef AuthClient client
    cdef Watcher watcher                 # gets completed(DONE_AUTH, result); None once
                                         # delivered or cancelled
    cdef AuthRequest auth
    cdef bytes client_ip
    cdef object client_host, proxy_protocol, ssl_info
    cdef object trace                    # debuglog.Trace when the session logs debug lines
    cdef bytes request
    cdef _Conn conn                      # the connection carrying the request, if any
    cdef int waits                       # WAIT answers without Auth-Wait in a row
    cdef bint retried                    # re-sent once after a kept-alive connection died
    cdef bint starting                   # inside ask(): results wait for the next loop turn
    cdef object timer                    # Auth-Wait delay (a Python handle: rare)
    cdef object lookup                   # Auth-Server name lookup (rare)
    cdef AuthResult pending              # the OK answer whose server name is being resolved

    cdef int send(self) except -1
    cdef int answered(self, AuthResult r) except -1
    cdef int deliver(self, AuthResult r) except -1
    cdef void drop(self) noexcept


cdef class _Conn(Watcher):
    cdef AuthClient client
    cdef int fd
    cdef int state
    cdef TNode node                      # the request's deadline, then the drain timer
    cdef _Ask ask
    cdef bint reused                     # taken from the pool (a lost request may be re-sent)
    cdef bint registered
    cdef bytes out
    cdef Py_ssize_t out_off
    cdef AnswerReader reader

    cdef int start(self, _Ask ask, int64_t when) except -1
    cdef int _send(self) except -1
    cdef int _read(self, unsigned int events) except -1
    cdef int _answered(self, bint full, unsigned int events) except -1
    cdef int _drain(self, unsigned int events) except -1
    cdef int _release(self) except -1
    cdef int _lost(self, int err, str call) except -1
    cdef void _close(self) noexcept


cdef class AuthClient:
    """One per distinct auth_http config, shared by the sessions of its server blocks."""
    cdef Loop loop
    cdef RequestTemplate tpl
    cdef object reader_factory
    cdef char _sa[128]                   # the server's sockaddr (sockaddr_storage's size)
    cdef unsigned int _salen
    cdef int _family
    cdef readonly str peer               # "127.0.0.1:9000", "[::1]:9000", "unix:/path"
    cdef readonly int pool_size          # idle keep-alive connections kept (0: HTTP/1.0)
    cdef TimerQueue _tq                  # auth_http_timeout
    cdef TimerQueue _dq                  # body drain bound
    cdef list _idle
    cdef set _draining                   # connections reading a body nobody waits for
    cdef object resolver
    cdef bint allow_names
    cdef readonly bint closed
    cdef readonly long connections_made

    cpdef object ask(self, Watcher w, AuthRequest auth, bytes client_ip, object client_host,
                     object proxy_protocol, object ssl_info, object trace=*)
    cpdef cancel(self, object handle)
    cdef _Conn _acquire(self)
    cdef int _open(self, _Ask ask, int64_t when) except -1
