# The auth_http client on the worker's Loop: pooled HTTP/1.1 keep-alive connections or nginx's
# one HTTP/1.0 connection per request, one deadline per request, WAIT, Auth-Server names.

from libc.stdint cimport int64_t

from fastmail._poll cimport Loop, Watcher, TNode, TimerQueue
from fastmail._core cimport AuthRequest
from fastmail._authproto cimport AuthResult, RequestTemplate, AnswerReader


cdef class AuthWaiter(Watcher):
    """What waits for an answer (the session derives from this)."""
    cdef object _auth_pending            # the client's handle for this waiter's request
    cpdef int auth_done(self, AuthResult result) except -1   # exactly once per ask, on the loop


cdef class _Ask:
    cdef AuthClient client
    cdef AuthWaiter waiter               # None once delivered or cancelled
    cdef AuthRequest auth
    cdef bytes client_ip
    cdef object client_host, proxy_protocol, ssl_info
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
    cdef object resolver
    cdef bint allow_names
    cdef readonly bint closed
    cdef readonly long connections_made

    cdef int ask(self, AuthWaiter w, AuthRequest auth, bytes client_ip, object client_host,
                 object proxy_protocol, object ssl_info) except -1
    cdef void cancel(self, AuthWaiter w) noexcept
    cdef _Conn _acquire(self)
    cdef int _open(self, _Ask ask, int64_t when) except -1
