# cython: language_level=3
"""Connections: the sockets the engine reads and writes, and the listening sockets.

Owns: `Sock` (one side of a session: fd, pending output, readiness flags) with its
nonblocking recv/write/flush/close and connect; address texts from sockaddrs; `Listener`,
a listening socket (IPv4, IPv6 or unix) that accepts in the Loop and hands each new fd to
its Acceptor (the engine). Must not parse protocol bytes nor decide what a session does.
Mirrors nginx's ngx_event_accept.c, ngx_event_connect.c and ngx_recv/ngx_send.
"""

from libc.errno cimport errno, EAGAIN, EINTR, EINPROGRESS, ECONNABORTED
from libc.stdlib cimport malloc, free, realloc
from libc.string cimport memcpy, memset
from posix.unistd cimport close as c_close

from cpython.bytes cimport PyBytes_FromStringAndSize
from fastmail._inet cimport ip_text, IP_TEXT_MAX
from fastmail._openssl cimport SSL
from fastmail._tls cimport (tls_read, tls_write, tls_shutdown, tls_free, TLS_WANT_READ,
                            TLS_WANT_WRITE, TLS_CLOSED, TLS_FAIL)
from fastmail._poll cimport (Loop, Watcher, EPOLLIN, EPOLLOUT, EPOLLET, EPOLLRDHUP,
                             EPOLLERR, EPOLLHUP)

import os

cdef extern from *:
    """
    #include <sys/socket.h>
    #include <arpa/inet.h>
    #include <netinet/in.h>
    #include <netinet/tcp.h>
    """
    int socket(int domain, int type, int protocol) nogil
    int accept4(int fd, sockaddr *addr, socklen_t *len, int flags) nogil
    int connect(int fd, const sockaddr *addr, socklen_t len) nogil
    ssize_t recv(int fd, void *buf, size_t n, int flags) nogil
    ssize_t send(int fd, const void *buf, size_t n, int flags) nogil
    int setsockopt(int fd, int level, int name, const void *val, socklen_t len) nogil
    int SOCK_STREAM, SOCK_NONBLOCK, SOCK_CLOEXEC, MSG_NOSIGNAL
    int MSG_PEEK
    int IPPROTO_TCP, TCP_NODELAY


cdef void sock_init(Sock *s, int fd) noexcept:
    memset(s, 0, sizeof(Sock))
    s.fd = fd
    s.wr_ready = True


cdef Py_ssize_t sock_recv(Sock *s, char *buf, Py_ssize_t n) noexcept:
    """Bytes read (> 0), 0 at EOF, IO_AGAIN, or IO_ERROR with s.err set. A short read
    clears rd_ready: a stream socket gave all it had, and the next bytes bring a new edge;
    unless the peer's FIN came with them (hup): no edge comes for it, so the next read
    must find it.
    With TLS, plaintext: OpenSSL reads until the buffer is full or the socket is empty, so a
    short read means the same; s.err is -1 on a TLS failure (its text: _tls.tls_error())."""
    cdef ssize_t r
    if s.ssl != NULL:
        r = tls_read(<SSL *>s.ssl, buf, n)
        if r > 0:
            s.rx += r
            if r < n and not s.hup:
                s.rd_ready = False
            return r
        s.rd_ready = False
        if r == TLS_WANT_READ:
            return IO_AGAIN
        if r == TLS_WANT_WRITE:
            s.tls_flip = True       # read again once the socket is writable
            return IO_AGAIN
        if r == TLS_CLOSED:
            return 0
        s.err = -1
        return IO_ERROR
    while True:
        r = recv(s.fd, buf, n, 0)
        if r > 0:
            s.rx += r
            if r < n and not s.hup:
                s.rd_ready = False
            return r
        if r == 0:
            s.rd_ready = False
            return 0
        if errno == EINTR:
            continue
        s.rd_ready = False
        if errno == EAGAIN:
            return IO_AGAIN
        s.err = errno
        return IO_ERROR


cdef Py_ssize_t sock_peek(Sock *s, char *buf, Py_ssize_t n) noexcept:
    """What the socket holds, left in it (MSG_PEEK): as sock_recv, for a header whose end
    is not known yet (the PROXY protocol: what follows it may be TLS, read by OpenSSL)."""
    cdef ssize_t r
    while True:
        r = recv(s.fd, buf, n, MSG_PEEK)
        if r >= 0:
            return r
        if errno == EINTR:
            continue
        s.rd_ready = False
        if errno == EAGAIN:
            return IO_AGAIN
        s.err = errno
        return IO_ERROR


cdef Py_ssize_t sock_send_some(Sock *s, const char *p, Py_ssize_t n) noexcept:
    """Writes what the socket takes now, buffering nothing: bytes written (> 0), IO_AGAIN
    (wr_ready cleared: wait for EPOLLOUT) or IO_ERROR with s.err set. With TLS, as many
    records as the socket takes (OpenSSL needs the same bytes again after IO_AGAIN)."""
    cdef ssize_t r
    if s.ssl != NULL:
        r = tls_write(<SSL *>s.ssl, p, n)
        if r > 0:
            s.tx += r
            if r < n:
                s.wr_ready = False
            return r
        s.wr_ready = False
        if r == TLS_WANT_WRITE or r == 0:
            return IO_AGAIN
        if r == TLS_WANT_READ:
            s.tls_flip = True       # write again once the socket is readable
            return IO_AGAIN
        s.err = -1
        return IO_ERROR
    while True:
        r = send(s.fd, p, n, MSG_NOSIGNAL)
        if r > 0:
            s.tx += r
            if r < n:
                s.wr_ready = False
            return r
        if r < 0 and errno == EINTR:
            continue
        if r < 0 and errno != EAGAIN:
            s.err = errno
            return IO_ERROR
        s.wr_ready = False
        return IO_AGAIN


cdef int sock_write(Sock *s, const char *p, Py_ssize_t n) noexcept:
    """Sends now what the socket takes and keeps the rest for sock_flush (order kept).
    0, or IO_ERROR with s.err set."""
    cdef ssize_t r
    cdef char *grown
    if n <= 0:
        return 0
    if s.out == NULL and s.wr_ready:
        r = sock_send_some(s, p, n)
        if r == IO_ERROR:
            return IO_ERROR
        if r == IO_AGAIN:
            r = 0
        if r == n:
            return 0
        p += r
        n -= r
    if s.out == NULL:
        s.out = <char *>malloc(n)
        if s.out == NULL:
            s.err = 12  # ENOMEM
            return IO_ERROR
        memcpy(s.out, p, n)
        s.out_len = n
        s.out_off = 0
        return 0
    grown = <char *>realloc(s.out, s.out_len + n)
    if grown == NULL:
        s.err = 12
        return IO_ERROR
    memcpy(grown + s.out_len, p, n)
    s.out = grown
    s.out_len += n
    return 0


cdef int sock_write_bytes(Sock *s, bytes data) noexcept:
    return sock_write(s, data, len(data))


cdef int sock_flush(Sock *s) noexcept:
    """Writes pending output: 1 when nothing is left, 0 when the socket is full, IO_ERROR."""
    cdef Py_ssize_t r
    if s.out == NULL:
        return 1
    while s.out_off < s.out_len:
        r = sock_send_some(s, s.out + s.out_off, s.out_len - s.out_off)
        if r > 0:
            s.out_off += r
            continue
        if r == IO_AGAIN:
            return 0
        return IO_ERROR
    free(s.out)
    s.out = NULL
    s.out_len = s.out_off = 0
    return 1


cdef void sock_close(Sock *s) noexcept:
    """Closes the socket; with TLS, after a close_notify if the socket takes it now (nginx's
    shutdown on a normal close; a peer that reads nothing more gets the TCP close alone)."""
    if s.ssl != NULL:
        if s.fd >= 0:
            tls_shutdown(<SSL *>s.ssl)
        tls_free(<SSL *>s.ssl)
        s.ssl = NULL
    if s.out != NULL:
        free(s.out)
        s.out = NULL
        s.out_len = s.out_off = 0
    if s.fd >= 0:
        c_close(s.fd)
        s.fd = -1


cdef int sock_connect(Sock *s, bytes host, int port) noexcept:
    """A nonblocking connect to an IP text: 0 (connected or in progress: wait for EPOLLOUT)
    or IO_ERROR with s.err (no fd left open)."""
    cdef sockaddr_in a4
    cdef sockaddr_in6 a6
    cdef sockaddr *sa
    cdef socklen_t salen
    cdef int family, fd
    memset(&a4, 0, sizeof(a4))
    memset(&a6, 0, sizeof(a6))
    if inet_pton(AF_INET, host, &a4.sin_addr) == 1:
        a4.sin_family = AF_INET
        a4.sin_port = htons(port)
        sa = <sockaddr *>&a4
        salen = sizeof(a4)
        family = AF_INET
    elif inet_pton(AF_INET6, host, &a6.sin6_addr) == 1:
        a6.sin6_family = AF_INET6
        a6.sin6_port = htons(port)
        sa = <sockaddr *>&a6
        salen = sizeof(a6)
        family = AF_INET6
    else:
        s.err = 22  # EINVAL
        return IO_ERROR
    fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
    if fd < 0:
        s.err = errno
        return IO_ERROR
    if connect(fd, sa, salen) < 0 and errno != EINPROGRESS:
        s.err = errno
        c_close(fd)
        return IO_ERROR
    sock_init(s, fd)
    s.wr_ready = False      # writable once connected (EPOLLOUT)
    return 0


cdef str os_error(str call, int err):
    """nginx's `call() failed (N: text)`."""
    return "%s() failed (%d: %s)" % (call, err, os.strerror(err))


cdef object sockaddr_ip(sockaddr *sa, int *port):
    """The address text (bytes) of an AF_INET/AF_INET6 sockaddr as nginx writes it (its
    IPv6 forms differ from inet_ntop's in rare cases), b"unix:" for AF_UNIX."""
    cdef char buf[IP_TEXT_MAX]
    cdef Py_ssize_t n
    if sa.sa_family == AF_INET:
        n = ip_text(4, <const unsigned char *>&(<sockaddr_in *>sa).sin_addr, buf)
        port[0] = ntohs((<sockaddr_in *>sa).sin_port)
        return PyBytes_FromStringAndSize(buf, n)
    if sa.sa_family == AF_INET6:
        n = ip_text(6, <const unsigned char *>&(<sockaddr_in6 *>sa).sin6_addr, buf)
        port[0] = ntohs((<sockaddr_in6 *>sa).sin6_port)
        return PyBytes_FromStringAndSize(buf, n)
    port[0] = 0
    return b"unix:"


# --- listening sockets ---------------------------------------------------------------------------

cdef class Acceptor(Watcher):
    """What a Listener hands accepted fds to (the engine)."""

    cdef int accepted(self, Listener lst, int fd, sockaddr *sa) except -1:
        c_close(fd)
        return 0


DEF ACCEPT_BATCH = 64


cdef class Listener(Watcher):
    """A listening socket of the master's, accepted from in the Loop (edge-triggered). The
    socket object stays the caller's; close() leaves the set and closes this process's copy."""

    def __init__(self, Loop loop, sock, Acceptor acceptor, data=None):
        cdef int one = 1
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.acceptor = acceptor
        self.data = data
        self._retry = None
        if sock.family != AF_UNIX:
            # inherited by every accepted socket: no setsockopt per connection
            setsockopt(self.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(int))
        loop.register(self.fd, self, 0, EPOLLIN | EPOLLET)

    cdef int io(self, int side, uint32_t events) except -1:
        if not self.closed and events & EPOLLIN:
            self._accept()
        return 0

    def _accept_again(self):
        self._retry = None
        if not self.closed:
            self._accept()

    cdef int _accept(self) except -1:
        cdef sockaddr_storage ss
        cdef socklen_t salen
        cdef int fd, i
        for i in range(ACCEPT_BATCH):
            salen = sizeof(ss)
            fd = accept4(self.fd, <sockaddr *>&ss, &salen, SOCK_NONBLOCK | SOCK_CLOEXEC)
            if fd < 0:
                if errno == EAGAIN:
                    return 0
                if errno == EINTR or errno == ECONNABORTED:
                    continue
                # EMFILE, ENFILE, ENOBUFS...: the backlog waits; try again a little later
                if self._retry is None:
                    self._retry = self.loop.call_later(0.5, self._accept_again)
                return 0
            if salen == 0 or (<sockaddr *>&ss).sa_family == 0:
                (<sockaddr *>&ss).sa_family = AF_UNIX   # unnamed unix peer
            self.acceptor.accepted(self, fd, <sockaddr *>&ss)
            if self.closed:
                return 0
        # edge-triggered: more may wait, and no new edge comes for them; let others run first
        if self._retry is None:
            self._retry = self.loop.call_soon(self._accept_again)
        return 0

    cpdef close(self):
        if self.closed:
            return
        self.closed = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        # the master's copy keeps the socket open: leave the set explicitly
        self.loop.unregister_fd(self.fd, self)
        self.sock.close()
