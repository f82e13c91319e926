# Connections: the engine's sockets (client, backend) as C structs with their pending output,
# the nonblocking connect, address texts, and listening sockets that accept in the Loop.

from libc.stdint cimport uint32_t
from fastmail._poll cimport Loop, Watcher

cdef extern from *:
    """
    #include <sys/socket.h>
    #include <sys/un.h>
    #include <netinet/in.h>
    #include <arpa/inet.h>
    """
    ctypedef unsigned int socklen_t
    struct sockaddr:
        unsigned short sa_family
    struct sockaddr_storage:
        unsigned short ss_family
    struct in_addr:
        pass
    struct in6_addr:
        pass
    struct sockaddr_in:
        unsigned short sin_family
        unsigned short sin_port
        in_addr sin_addr
    struct sockaddr_in6:
        unsigned short sin6_family
        unsigned short sin6_port
        in6_addr sin6_addr
    struct sockaddr_un:
        unsigned short sun_family
        char sun_path[108]
    int inet_pton(int af, const char *src, void *dst) nogil
    unsigned short ntohs(unsigned short v) nogil
    unsigned short htons(unsigned short v) nogil
    int AF_INET, AF_INET6, AF_UNIX


# One side of a session. `out` holds what the socket did not take yet (malloc'd, freed once
# written, so an idle session holds no buffer).
cdef struct Sock:
    int fd
    void *ssl                # SSL * when TLS is on (fastmail._tls); NULL for plain
    char *out
    Py_ssize_t out_len
    Py_ssize_t out_off
    int err                  # errno (or TLS failure code) of the last failure
    bint rd_ready            # readable since the last read that came back short or EAGAIN
    bint wr_ready            # writable: no EAGAIN since the last EPOLLOUT
    bint hup                 # the peer shut down or the socket failed (RDHUP/HUP/ERR seen)
    bint tls_flip            # TLS: a read waits for writability, or a write for readability
    unsigned long long rx    # bytes read (plaintext with TLS), for the access log
    unsigned long long tx    # bytes written

cdef enum:
    IO_AGAIN = -1            # nothing now (EAGAIN, or TLS wants the other direction)
    IO_ERROR = -2            # failure: Sock.err has the errno

cdef void sock_init(Sock *s, int fd) noexcept
cdef Py_ssize_t sock_recv(Sock *s, char *buf, Py_ssize_t n) noexcept
cdef Py_ssize_t sock_peek(Sock *s, char *buf, Py_ssize_t n) noexcept
cdef Py_ssize_t sock_send_some(Sock *s, const char *p, Py_ssize_t n) noexcept
cdef int sock_write(Sock *s, const char *p, Py_ssize_t n) noexcept
cdef int sock_write_bytes(Sock *s, bytes data) noexcept
cdef int sock_flush(Sock *s) noexcept
cdef void sock_close(Sock *s) noexcept
cdef inline bint sock_pending(Sock *s) noexcept:
    return s.out != NULL

cdef int sock_connect(Sock *s, bytes host, int port) noexcept
cdef str os_error(str call, int err)
cdef object sockaddr_ip(sockaddr *sa, int *port)


cdef class Acceptor(Watcher):
    cdef int accepted(self, Listener lst, int fd, sockaddr *sa) except -1


cdef class Listener(Watcher):
    cdef Loop loop
    cdef Acceptor acceptor
    cdef readonly int fd
    cdef object sock
    cdef public object data          # what the acceptor serves on this socket
    cdef readonly bint closed
    cdef object _retry
    cdef int _accept(self) except -1
    cpdef close(self)
