# One auth_http URL of the engine's client (_auth.pyx): where it is, how a request to it starts,
# its TLS, its idle connections and whether it was found down.

from libc.stdint cimport int64_t

from fastmail._authreq cimport RequestTemplate
from fastmail._tlsctx cimport ClientContext


cdef class Target:
    """One auth_http URL: its address, request template, TLS and idle connections."""
    cdef char _sa[128]                   # the server's sockaddr (sockaddr_storage's size)
    cdef unsigned int _salen
    cdef int _family
    cdef readonly int index
    cdef readonly str peer               # "127.0.0.1:9000", "[::1]:9000", "unix:/path"
    cdef bytes path, host_header
    cdef RequestTemplate tpl
    cdef ClientContext tls               # https: the context; None for http
    cdef bytes tls_name                  # https: SNI and the name verified
    cdef bytes tls_session               # https: the last session, to resume the next one
    cdef list _idle
    cdef int64_t down_until              # loop ms: asked last while others are up
    cdef readonly long connections_made
