# cython: language_level=3
"""One auth_http URL of the engine's client (fastmail/_auth.pyx, which owns its use).

Owns the URL's address as a sockaddr ready for connect(), its peer text as nginx writes it in
log lines, and what the client keeps per URL: the request template (made by the client, which
knows the headers), the TLS context and name of an https URL and its last session, the idle
connections, and until when it counts as down. Must not do I/O.
"""

from libc.string cimport memset, memcpy

import os

from fastmail._conn cimport (sockaddr_in, sockaddr_in6, sockaddr_un, inet_pton, htons,
                             AF_INET, AF_INET6, AF_UNIX)
from fastmail._tlsctx cimport ClientContext


cdef class Target:
    """One auth_http URL (see AuthClient)."""

    def __init__(self, str host, int port, bytes path, bytes host_header, *,
                 str unix_path=None, ClientContext tls=None, bytes tls_name=None):
        cdef sockaddr_in *a4 = <sockaddr_in *>self._sa
        cdef sockaddr_in6 *a6 = <sockaddr_in6 *>self._sa
        cdef sockaddr_un *au = <sockaddr_un *>self._sa
        cdef bytes raw
        memset(self._sa, 0, sizeof(self._sa))
        if unix_path is not None:
            raw = os.fsencode(unix_path)
            if len(raw) >= <Py_ssize_t>sizeof(au.sun_path):
                raise ValueError(f'unix socket path "{unix_path}" is too long')
            au.sun_family = AF_UNIX
            memcpy(au.sun_path, <const char *>raw, len(raw))
            self._salen = <unsigned int>(<char *>au.sun_path - <char *>au) + len(raw) + 1
            self._family = AF_UNIX
            self.peer = f"unix:{unix_path}"
        else:
            raw = host.encode("ascii")
            if inet_pton(AF_INET, raw, &a4.sin_addr) == 1:
                a4.sin_family = AF_INET
                a4.sin_port = htons(port)
                self._salen = sizeof(sockaddr_in)
                self._family = AF_INET
                self.peer = f"{host}:{port}"
            elif inet_pton(AF_INET6, raw, &a6.sin6_addr) == 1:
                a6.sin6_family = AF_INET6
                a6.sin6_port = htons(port)
                self._salen = sizeof(sockaddr_in6)
                self._family = AF_INET6
                self.peer = f"[{host}]:{port}"
            else:
                raise ValueError(f'invalid auth_http address "{host}"')
        self.tls = tls
        self.tls_name = tls_name
        self._idle = []
        self.path = path        # the client makes the template (headers, keep-alive...)
        self.host_header = host_header

    @property
    def idle(self):
        return len(self._idle)
