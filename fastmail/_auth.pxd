# The auth_http client on the worker's Loop: pooled HTTP/1.1 keep-alive connections or nginx's
# one HTTP/1.0 connection per request, one deadline per request, WAIT, Auth-Server names; beyond
# nginx: several URLs with failover, HTTPS, a cache of answers.

from libc.stdint cimport int64_t

from fastmail._poll cimport Loop, Watcher, TNode, TimerQueue
from fastmail._core cimport AuthRequest
from fastmail._authproto cimport AuthResult, AnswerReader
from fastmail._authreq cimport RequestTemplate, Extra
from fastmail._authcache cimport AuthCache
from fastmail._tlsctx cimport ClientContext
from fastmail._authurl cimport Target


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
    cdef Extra extra                     # fastmail's own request lines, or None
    cdef object trace                    # debuglog.Trace when the session logs debug lines
    cdef bytes request                   # for `target`
    cdef Target target                   # the URL asked now
    cdef unsigned int tried              # the URLs this request went to (bit per target)
    cdef list notes                      # URLs found down on the way, for the log
    cdef bytes key                       # the cache key, when the answer may be kept
    cdef bint other_pass                 # an answer's Auth-Pass replaced the password
    cdef _Conn conn                      # the connection carrying the request, if any
    cdef int waits                       # WAIT answers without Auth-Wait in a row
    cdef bint retried                    # re-sent once after a kept-alive connection died
    cdef bint starting                   # inside ask(): results wait for the next loop turn
    cdef object timer                    # Auth-Wait delay (a Python handle: rare)
    cdef object lookup                   # Auth-Server name lookup (rare)
    cdef AuthResult pending              # the OK answer whose server name is being resolved

    cdef int send(self) except -1
    cdef int _try(self) except -1
    cdef int down(self, Target t, str reason, AuthResult r) except -1
    cdef int answered(self, AuthResult r) except -1
    cdef int deliver(self, AuthResult r) except -1
    cdef void drop(self) noexcept


cdef class _Conn(Watcher):
    cdef AuthClient client
    cdef Target target
    cdef int fd
    cdef void *ssl                       # SSL * with https
    cdef int state
    cdef TNode node                      # the request's deadline, then the drain timer
    cdef _Ask ask
    cdef bint reused                     # taken from the pool (a lost request may be re-sent)
    cdef bint registered
    cdef bint resumable                  # https: its session was kept for the next connection
    cdef bytes out
    cdef Py_ssize_t out_off
    cdef AnswerReader reader

    cdef int start(self, _Ask ask, int64_t when) except -1
    cdef int _handshake(self) except -1
    cdef int _idle_tls(self, unsigned int events) except -1
    cdef Py_ssize_t _recv(self, char *buf, Py_ssize_t room) noexcept
    cdef int _send(self) except -1
    cdef int _read(self, unsigned int events) except -1
    cdef int _answered(self, bint full, unsigned int events) except -1
    cdef int _drain(self, unsigned int events) except -1
    cdef int _release(self) except -1
    cdef int _lost(self, int err, str call) except -1
    cdef void _close(self) noexcept


cdef class AuthClient:
    """One per server{} block, shared by its sessions."""
    cdef Loop loop
    cdef list targets                    # Target per auth_http URL, in the config's order
    cdef Target first
    cdef object reader_factory
    cdef readonly str peer               # the first URL's peer
    cdef readonly int pool_size          # idle keep-alive connections kept (0: HTTP/1.0)
    cdef TimerQueue _tq                  # auth_http_timeout
    cdef TimerQueue _dq                  # body drain bound
    cdef set _draining                   # connections reading a body nobody waits for
    cdef object resolver
    cdef bint allow_names
    cdef readonly bint closed
    cdef readonly long connections_made
    cdef readonly long failovers         # requests sent on to another URL
    cdef readonly bint send_client_port  # auth_http_send client_port
    cdef readonly bint send_server_addr  # auth_http_send server_addr
    cdef AuthCache cache                 # auth_http_cache, or None

    cpdef object ask(self, Watcher w, AuthRequest auth, bytes client_ip, object client_host,
                     object proxy_protocol, object ssl_info, object trace=*, Extra extra=*)
    cpdef cancel(self, object handle)
    cpdef forget(self, bytes key)
    cdef Target _pick(self, unsigned int tried)
    cdef _Conn _acquire(self, Target t)
    cdef int _open(self, _Ask ask, int64_t when) except -1
