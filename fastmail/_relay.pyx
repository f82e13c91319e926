# cython: language_level=3
"""The relay: moves bytes between a logged-in client and its backend until one side ends.

Owns: SpliceRelay (two plain socket fds; bytes move with splice(2) through pooled pipes and
never enter Python), BufferRelay (two asyncio transports, e.g. TLS: bounded by proxy_buffer
through write-buffer flow control), the per-process pipe pool, proxy_timeout (client
inactivity, as nginx) and byte counters; and the sockets that end in a SpliceRelay, in one
edge-triggered epoll set per loop (Poller): Listener/ClientConn (plain IPv4 clients, accepted
without a uvloop transport) and BackendSocket (the backend from connect through the login).
The only Cython module that makes syscalls; it never parses protocol bytes and never logs:
the driver reads close_reason/action/counters in on_close. Mirrors nginx ngx_mail_proxy_handler (spec proxy.md §1), except that
half_close=True (the default) forwards a FIN with shutdown(SHUT_WR) instead of closing both.
"""

from libc.errno cimport (errno, EAGAIN, EINTR, EPIPE, ECONNRESET, EINPROGRESS, ECONNREFUSED,
                        ECONNABORTED)
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memset
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC
from posix.unistd cimport close as c_close
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from cpython.bytearray cimport PyByteArray_AS_STRING

from fastmail._core cimport ACT_BACKEND, ACT_DONE

import os

cdef extern from *:
    """
    #include <fcntl.h>
    #include <unistd.h>
    #include <sys/socket.h>
    #ifndef F_SETPIPE_SZ
    #define F_SETPIPE_SZ 1031
    #endif
    #ifndef F_GETPIPE_SZ
    #define F_GETPIPE_SZ 1032
    #endif
    """
    ssize_t splice(int fd_in, void *off_in, int fd_out, void *off_out, size_t len,
                   unsigned int flags) nogil
    int pipe2(int *fds, int flags) nogil
    int getpagesize() nogil
    int fcntl(int fd, int cmd, ...) nogil
    ssize_t send(int fd, const void *buf, size_t n, int flags) nogil
    int shutdown(int fd, int how) nogil
    int SPLICE_F_MOVE, SPLICE_F_NONBLOCK, F_SETPIPE_SZ, F_GETPIPE_SZ, F_GETFL, F_SETFL
    int O_NONBLOCK, O_CLOEXEC, SHUT_WR, MSG_NOSIGNAL

cdef extern from "<sys/epoll.h>":
    ctypedef union epoll_data_t:
        void *ptr
        int fd
        uint32_t u32
        uint64_t u64
    struct epoll_event:
        uint32_t events
        epoll_data_t data
    int epoll_create1(int flags) nogil
    int epoll_ctl(int epfd, int op, int fd, epoll_event *ev) nogil
    int epoll_wait(int epfd, epoll_event *evs, int n, int timeout) nogil
    uint32_t EPOLLIN, EPOLLOUT, EPOLLRDHUP, EPOLLET, EPOLLERR, EPOLLHUP
    int EPOLL_CTL_ADD, EPOLL_CTL_DEL, EPOLL_CLOEXEC

cdef extern from *:
    """
    #include <arpa/inet.h>
    #include <netinet/in.h>
    #include <netinet/tcp.h>
    """
    ctypedef unsigned int socklen_t
    struct sockaddr:
        pass
    struct sockaddr_storage:
        pass
    struct in_addr:
        pass
    struct in6_addr:
        pass
    struct sockaddr_in:
        int sin_family
        unsigned short sin_port
        in_addr sin_addr
    struct sockaddr_in6:
        int sin6_family
        unsigned short sin6_port
        in6_addr sin6_addr
    int socket(int domain, int type, int protocol) nogil
    int accept4(int fd, sockaddr *addr, socklen_t *len, int flags) nogil
    int getsockname(int fd, sockaddr *addr, socklen_t *len) nogil
    const char *inet_ntop(int af, const void *src, char *dst, socklen_t size) nogil
    unsigned short ntohs(unsigned short v) nogil
    int connect(int fd, const sockaddr *addr, socklen_t len) nogil
    ssize_t recv(int fd, void *buf, size_t n, int flags) nogil
    int getsockopt(int fd, int level, int name, void *val, socklen_t *len) nogil
    int setsockopt(int fd, int level, int name, const void *val, socklen_t len) nogil
    int inet_pton(int af, const char *src, void *dst) nogil
    unsigned short htons(unsigned short v) nogil
    int AF_INET, AF_INET6, SOCK_STREAM, SOCK_NONBLOCK, SOCK_CLOEXEC, SOL_SOCKET, SO_ERROR
    int IPPROTO_TCP, TCP_NODELAY

DEF POOL_MAX = 256
DEF MAX_ROUNDS = 16   # pipe fills per callback, so one busy session cannot starve the loop

cdef int PIPE_SIZE = 1 << 20  # F_SETPIPE_SZ target; the kernel may give less
cdef int _pool_r[POOL_MAX]
cdef int _pool_w[POOL_MAX]
cdef int _pool_n = 0
cdef int _pool_limit = 16      # idle pipes kept; the rest are closed when returned
cdef long _pipes_open = 0      # live pipes (pooled + in use), for leak checks
# Fewest buffer slots (pages) of any pipe made: a splice from a socket that moved fewer bytes
# than this was not cut short by a full pipe, so the socket had no more (see _pump).
cdef Py_ssize_t _min_slots = 1 << 30


def pool_stats():
    """(idle pipes in the pool, pipes open in this process)."""
    return _pool_n, _pipes_open


def pool_configure(int idle_max=16, int pipe_size=1 << 20):
    """Idle pipes kept per process (≤ 256) and the F_SETPIPE_SZ size asked for."""
    global _pool_limit, PIPE_SIZE
    _pool_limit = min(max(idle_max, 0), POOL_MAX)
    PIPE_SIZE = pipe_size
    pool_clear()


def pool_clear():
    """Close the idle pipes and the per-loop pollers (e.g. in a freshly forked worker, or at
    shutdown, once no relay runs)."""
    global _pool_n, _pipes_open
    _pollers_close()
    while _pool_n > 0:
        _pool_n -= 1
        c_close(_pool_r[_pool_n])
        c_close(_pool_w[_pool_n])
        _pipes_open -= 1


cdef int _pipe_get(int *r, int *w) noexcept:
    global _pool_n, _pipes_open, _min_slots
    cdef int fds[2]
    cdef int size
    if _pool_n > 0:
        _pool_n -= 1
        r[0] = _pool_r[_pool_n]
        w[0] = _pool_w[_pool_n]
        return 0
    if pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0:
        return -1
    # Fails with EPERM past pipe-user-pages-soft or pipe-max-size: the default size works too.
    size = fcntl(fds[1], F_SETPIPE_SZ, PIPE_SIZE)
    if size < 0:
        size = fcntl(fds[1], F_GETPIPE_SZ)
    if size // getpagesize() < _min_slots:
        _min_slots = max(size // getpagesize(), 0)
    r[0] = fds[0]
    w[0] = fds[1]
    _pipes_open += 1
    return 0


cdef void _pipe_put(int r, int w, bint empty) noexcept:
    global _pool_n, _pipes_open
    if empty and _pool_n < _pool_limit:
        _pool_r[_pool_n] = r
        _pool_w[_pool_n] = w
        _pool_n += 1
        return
    c_close(r)
    c_close(w)
    _pipes_open -= 1


cdef inline double _now() noexcept:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef str _strerror(int err, str call):
    return "%s() failed (%d: %s)" % (call, err, os.strerror(err))


# --- the private edge-triggered poller -----------------------------------------------------
#
# uvloop's add_reader/add_writer are level-triggered libuv poll handles: every start/stop is
# several epoll_ctl calls (plus a probe and an ioctl). Like nginx, the relay and the backend
# login register each fd once, edge-triggered for both directions, in one epoll set of their
# own; only that set's fd is watched by the loop. Closing an fd removes it from the set.

cdef class Watcher:
    """Something with fds in a Poller: gets the epoll events of each."""

    cdef void _event(self, int fd, uint32_t ev) except *:
        pass


cdef class Poller:
    cdef int epfd
    cdef object loop
    cdef dict handlers          # key (serial << 32 | fd) -> Watcher
    cdef unsigned long long serial
    cdef bint idle_check        # a check for "nothing registered any more" is scheduled
    cdef int pinned             # listeners registered: the set stays even when idle

    def __init__(self, loop):
        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        if self.epfd < 0:
            raise OSError(errno, os.strerror(errno))
        self.loop = loop
        self.handlers = {}
        self.serial = 0
        loop.add_reader(self.epfd, self._dispatch)

    cdef unsigned long long add(self, int fd, Watcher w) except? 0:
        """Registers fd (edge-triggered, in and out); the key names this registration."""
        cdef epoll_event ev
        self.serial += 1
        cdef unsigned long long key = (self.serial << 32) | <uint32_t>fd
        ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
        ev.data.u64 = key
        if epoll_ctl(self.epfd, EPOLL_CTL_ADD, fd, &ev) < 0:
            raise OSError(errno, os.strerror(errno))
        self.handlers[key] = w
        return key

    cdef void pin(self, unsigned long long key):
        self.pinned += 1

    cdef void remove(self, int fd, unsigned long long key):
        """For an fd that stays open elsewhere (a listening socket shared with the master)."""
        cdef epoll_event ev
        if self.epfd >= 0:
            epoll_ctl(self.epfd, EPOLL_CTL_DEL, fd, &ev)
        self.pinned -= 1
        self.forget(key)

    cdef inline void forget(self, unsigned long long key):
        # the fd is closed right after: the kernel drops it from the set then
        self.handlers.pop(key, None)
        if not self.handlers and not self.idle_check and self.epfd >= 0 and not self.pinned:
            # An idle worker holds no extra fd (what fd-leak checks expect); under load the
            # set is rarely empty for long, so it is not rebuilt per session.
            self.idle_check = True
            self.loop.call_later(0.5, self._idle)

    def _idle(self):
        self.idle_check = False
        if not self.handlers:
            self.close()
            if _pollers.get(id(self.loop)) is self:
                del _pollers[id(self.loop)]

    def _dispatch(self):
        cdef epoll_event evs[64]
        cdef int n = epoll_wait(self.epfd, evs, 64, 0)
        cdef int i
        cdef list ws
        if n <= 0:
            return
        # Looked up before any runs: a watcher closed by an earlier event of this batch
        # ignores its own events, and a reused fd number has a new key.
        ws = [self.handlers.get(evs[i].data.u64) for i in range(n)]
        for i in range(n):
            w = ws[i]
            if w is None:
                continue
            try:
                (<Watcher>w)._event(<int>(evs[i].data.u64 & 0xffffffffULL), evs[i].events)
            except Exception as e:
                self.loop.call_exception_handler(
                    {"message": "fastmail relay callback failed", "exception": e})

    cdef void close(self):
        if self.epfd >= 0:
            if not self.loop.is_closed():
                self.loop.remove_reader(self.epfd)
            c_close(self.epfd)
            self.epfd = -1


cdef dict _pollers = {}


cdef Poller _poller(loop):
    cdef Poller p = _pollers.get(id(loop))
    if p is None or p.epfd < 0:
        p = Poller(loop)
        _pollers[id(loop)] = p
    return p


cdef void _pollers_close():
    for p in _pollers.values():
        (<Poller>p).close()
    _pollers.clear()


# --- the backend connection during the login ---------------------------------------------

cdef char _rbuf[65536]


cdef int _sockaddr(str host, int port, sockaddr_storage *sa, socklen_t *salen) except -1:
    cdef bytes h = host.encode("ascii")
    cdef sockaddr_in *a4 = <sockaddr_in *>sa
    cdef sockaddr_in6 *a6 = <sockaddr_in6 *>sa
    memset(sa, 0, sizeof(sockaddr_storage))
    if inet_pton(AF_INET, h, &a4.sin_addr) == 1:
        a4.sin_family = AF_INET
        a4.sin_port = htons(port)
        salen[0] = sizeof(sockaddr_in)
        return AF_INET
    if inet_pton(AF_INET6, h, &a6.sin6_addr) == 1:
        a6.sin6_family = AF_INET6
        a6.sin6_port = htons(port)
        salen[0] = sizeof(sockaddr_in6)
        return AF_INET6
    raise OSError(22, "invalid backend address %r" % host)


cdef class BackendSocket(Watcher):
    """The backend connection from connect() through the login machine to the relay, which
    takes it over as it is (SpliceRelay(..., backend_fd=this)). Registered once in the
    loop's Poller. `session` gets `_login_actions(acts)` for actions other than
    ACT_BACKEND (those are written here) and `_backend_failed(reason)` on connect, send
    and recv errors; `login` is the session's BackendLogin."""

    cdef Poller poller
    cdef readonly int fd
    cdef unsigned long long key
    cdef object session
    cdef object login
    cdef bytes out
    cdef Py_ssize_t out_off
    cdef bint connected
    cdef bint done          # ACT_DONE seen: further bytes are the relay's
    cdef bint rd_ready      # bytes may be waiting (an edge came after our last read)
    cdef readonly bint closed

    def __init__(self, loop, str host, int port, session, login):
        cdef sockaddr_storage sa
        cdef socklen_t salen
        cdef int family = _sockaddr(host, port, &sa, &salen)
        cdef int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
        cdef int err
        if fd < 0:
            raise OSError(errno, os.strerror(errno))
        if connect(fd, <sockaddr *>&sa, salen) < 0 and errno != EINPROGRESS:
            err = errno
            c_close(fd)
            raise OSError(err, os.strerror(err))
        self.fd = fd
        self.session = session
        self.login = login
        self.out = None
        self.poller = _poller(loop)
        try:
            self.key = self.poller.add(fd, self)
        except OSError:
            c_close(fd)
            self.fd = -1
            raise

    cdef void _event(self, int fd, uint32_t ev) except *:
        cdef int err = 0
        cdef socklen_t elen = sizeof(int)
        if self.closed:
            return
        if not self.connected:
            if ev & (EPOLLERR | EPOLLHUP):
                getsockopt(self.fd, SOL_SOCKET, SO_ERROR, &err, &elen)
                if err == 0:
                    err = ECONNREFUSED
                self._fail("connect() failed (%d: %s)" % (err, os.strerror(err)))
                return
            if not ev & EPOLLOUT:
                return
            self.connected = True
            err = 1
            setsockopt(self.fd, IPPROTO_TCP, TCP_NODELAY, &err, sizeof(int))
            self._actions(self.login.start())
            if self.closed:
                return
        if ev & EPOLLOUT and self.out is not None:
            self._flush()
            if self.closed:
                return
        if ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR):
            self.rd_ready = True
            self._read()

    cdef void _read(self) except *:
        cdef ssize_t n
        cdef int err
        while self.rd_ready and not self.done and not self.closed:
            n = recv(self.fd, _rbuf, sizeof(_rbuf), 0)
            if n > 0:
                if n < <ssize_t>sizeof(_rbuf):
                    self.rd_ready = False   # a stream socket gave all it had; edges follow
                self._actions(self.login.feed(PyBytes_FromStringAndSize(_rbuf, n)))
                continue
            if n == 0:
                self.login.phase = "reading response from upstream"
                self._fail("upstream prematurely closed connection")
                return
            err = errno
            if err == EINTR:
                continue
            if err == EAGAIN:
                self.rd_ready = False
                return
            self.login.phase = "reading response from upstream"
            self._fail("recv() failed (%d: %s)" % (err, os.strerror(err)))
            return

    cdef void _actions(self, int acts) except *:
        if acts & ACT_BACKEND:
            self.write(self.login.take_backend_output())
            if self.closed:
                return
            acts &= ~ACT_BACKEND
        if acts & ACT_DONE:
            self.done = True
        if acts:
            self.session._login_actions(acts)

    def write(self, bytes data):
        """Sends `data` now, or keeps what the socket did not take for the next edge."""
        cdef ssize_t n
        cdef int err
        if self.closed:
            return
        if self.out is not None:
            self.out = self.out[self.out_off:] + data
            self.out_off = 0
            return
        while True:
            n = send(self.fd, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), MSG_NOSIGNAL)
            if n >= 0:
                break
            err = errno
            if err == EINTR:
                continue
            if err == EAGAIN:
                n = 0
                break
            self._fail("send() failed (%d: %s)" % (err, os.strerror(err)))
            return
        if n < PyBytes_GET_SIZE(data):
            self.out = data
            self.out_off = n

    cdef void _flush(self) except *:
        cdef ssize_t n
        cdef int err
        while self.out_off < PyBytes_GET_SIZE(self.out):
            n = send(self.fd, PyBytes_AS_STRING(self.out) + self.out_off,
                     PyBytes_GET_SIZE(self.out) - self.out_off, MSG_NOSIGNAL)
            if n >= 0:
                self.out_off += n
                continue
            err = errno
            if err == EINTR:
                continue
            if err == EAGAIN:
                return
            self._fail("send() failed (%d: %s)" % (err, os.strerror(err)))
            return
        self.out = None
        self.out_off = 0

    cdef void _fail(self, str reason) except *:
        self.session._backend_failed(reason)

    def fail(self, str reason):
        self._fail(reason)

    def close(self):
        """Closes the socket (not handed to a relay)."""
        if self.closed:
            return
        self.closed = True
        if self.fd >= 0:
            self.poller.forget(self.key)
            c_close(self.fd)
            self.fd = -1
        self.session = self.login = None


# --- accepted client connections without a uvloop transport ------------------------------

cdef tuple _addr4(sockaddr_in *a):
    cdef char buf[16]
    inet_ntop(AF_INET, &a.sin_addr, buf, sizeof(buf))
    return (buf.decode("ascii"), ntohs(a.sin_port))


cdef class ClientConn(Watcher):
    """An accepted plain TCP connection, edge-triggered in the loop's Poller, with the part
    of the asyncio transport interface a session uses (write, close, abort, pause/resume
    reading, write-buffer limits, get_extra_info). The protocol's callbacks come as from an
    asyncio transport (connection_lost after close/abort, on the loop). A SpliceRelay takes
    it over whole (SpliceRelay(loop, this, ...)): its fd and registration move, no syscall."""

    cdef Poller poller
    cdef object loop
    cdef readonly int fd
    cdef unsigned long long key
    cdef object protocol
    cdef tuple peer
    cdef object local
    cdef bytearray wbuf
    cdef Py_ssize_t high
    cdef Py_ssize_t low
    cdef bint rd_ready
    cdef bint paused
    cdef bint closing
    cdef bint closed
    cdef bint proto_paused
    cdef bint read_soon
    cdef bint eof_pending   # write_eof() once the buffer is out

    def __init__(self, loop, int fd, tuple peer, local):
        self.loop = loop
        self.fd = fd
        self.peer = peer
        self.local = local
        self.wbuf = bytearray()
        self.high = 65536
        self.low = 16384
        self.poller = _poller(loop)
        self.key = self.poller.add(fd, self)

    cdef void _attach(self, protocol):
        self.protocol = protocol

    # --- transport interface --------------------------------------------------------------

    def write(self, data):
        cdef ssize_t n
        cdef int err
        cdef Py_ssize_t size = len(data)
        if self.closing or self.closed or self.eof_pending or size == 0:
            return
        if not self.wbuf:
            if type(data) is not bytes:
                data = bytes(data)
            while True:
                n = send(self.fd, PyBytes_AS_STRING(data), size, MSG_NOSIGNAL)
                if n >= 0:
                    break
                err = errno
                if err == EINTR:
                    continue
                if err == EAGAIN:
                    n = 0
                    break
                self._finish(OSError(err, os.strerror(err)))
                return
            if n == size:
                return
            self.wbuf += data[n:]
        else:
            self.wbuf += data
        if not self.proto_paused and len(self.wbuf) > self.high:
            self.proto_paused = True
            self.protocol.pause_writing()

    def get_write_buffer_size(self):
        return len(self.wbuf)

    def set_write_buffer_limits(self, high=None, low=None):
        if high is None:
            high = 65536 if low is None else 4 * low
        if low is None:
            low = high // 4
        self.high = high
        self.low = low
        if not self.proto_paused and len(self.wbuf) > self.high:
            self.proto_paused = True
            self.protocol.pause_writing()

    def pause_reading(self):
        self.paused = True

    def resume_reading(self):
        if not self.paused or self.closing or self.closed:
            return
        self.paused = False
        if self.rd_ready and not self.read_soon:
            self.read_soon = True
            self.loop.call_soon(self._read_soon)

    def is_reading(self):
        return not self.paused and not self.closed

    def is_closing(self):
        return self.closing or self.closed

    def close(self):
        """Writes what is buffered, then closes; connection_lost(None) follows."""
        if self.closing or self.closed:
            return
        self.closing = True
        if not self.wbuf:
            self._finish(None)

    def abort(self):
        self._finish(None)

    def can_write_eof(self):
        return True

    def write_eof(self):
        if self.closing or self.closed or self.eof_pending:
            return
        self.eof_pending = True
        if not self.wbuf:
            shutdown(self.fd, SHUT_WR)

    def set_protocol(self, protocol):
        self.protocol = protocol

    def get_protocol(self):
        return self.protocol

    def get_extra_info(self, name, default=None):
        cdef sockaddr_storage sa
        cdef socklen_t salen = sizeof(sockaddr_storage)
        if name == "peername":
            return self.peer
        if name == "sockname":
            if self.local is None and self.fd >= 0:
                if getsockname(self.fd, <sockaddr *>&sa, &salen) == 0:
                    self.local = _addr4(<sockaddr_in *>&sa)
            return self.local if self.local is not None else default
        if name == "socket":
            return self
        return default

    def fileno(self):
        return self.fd

    # --- events ---------------------------------------------------------------------------

    cdef void _event(self, int fd, uint32_t ev) except *:
        if self.closed:
            return
        if ev & (EPOLLOUT | EPOLLERR | EPOLLHUP) and self.wbuf:
            self._flush()
            if self.closed:
                return
        if ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR):
            self.rd_ready = True
            if not self.paused and not self.closing:
                self._read()

    def _read_soon(self):
        self.read_soon = False
        if not self.paused and not self.closing and not self.closed:
            self._read()

    cdef void _read(self) except *:
        cdef ssize_t n
        cdef int err
        while self.rd_ready and not self.paused and not self.closing and not self.closed:
            n = recv(self.fd, _rbuf, sizeof(_rbuf), 0)
            if n > 0:
                if n < <ssize_t>sizeof(_rbuf):
                    self.rd_ready = False
                self.protocol.data_received(PyBytes_FromStringAndSize(_rbuf, n))
                continue
            if n == 0:
                self.rd_ready = False
                if not self.protocol.eof_received():
                    self.close()
                return
            err = errno
            if err == EINTR:
                continue
            if err == EAGAIN:
                self.rd_ready = False
                return
            self._finish(OSError(err, os.strerror(err)))
            return

    cdef void _flush(self) except *:
        cdef ssize_t n
        cdef int err
        while self.wbuf:
            n = send(self.fd, PyByteArray_AS_STRING(self.wbuf), len(self.wbuf), MSG_NOSIGNAL)
            if n >= 0:
                del self.wbuf[:n]
                continue
            err = errno
            if err == EINTR:
                continue
            if err == EAGAIN:
                break
            self._finish(OSError(err, os.strerror(err)))
            return
        if self.closing and not self.wbuf:
            self._finish(None)
            return
        if self.eof_pending and not self.wbuf:
            shutdown(self.fd, SHUT_WR)
        if self.proto_paused and len(self.wbuf) <= self.low:
            self.proto_paused = False
            self.protocol.resume_writing()

    cdef void _finish(self, exc) except *:
        if self.closed:
            return
        self.closed = True
        self.closing = True
        self.wbuf = None
        self.poller.forget(self.key)
        c_close(self.fd)
        self.fd = -1
        self.loop.call_soon(self.protocol.connection_lost, exc)

    cdef int _hand_over(self) except -1:
        """The relay takes the fd and its registration; no callback follows."""
        if self.closed or self.wbuf:
            raise ValueError("client connection closed or with unsent bytes")
        self.closed = self.closing = True
        cdef int fd = self.fd
        self.fd = -1
        self.protocol = None
        return fd


cdef class Listener(Watcher):
    """A listening TCP socket (IPv4, plain) accepted from in the loop's Poller, for
    ClientConn sessions: accept4 gives the peer address, `local` (None: getsockname on
    demand) is the socket's own address when it is bound to one. `factory()` makes the
    protocol; its connection_made(ClientConn) runs at once. close() stops accepting (the
    socket object is the caller's)."""

    cdef Poller poller
    cdef object loop
    cdef object sock
    cdef int fd
    cdef unsigned long long key
    cdef object factory
    cdef object local
    cdef object _retry
    cdef readonly bint closed

    def __init__(self, loop, sock, factory, local=None):
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.factory = factory
        self.local = local
        self._retry = None
        self.poller = _poller(loop)
        self.key = self.poller.add(self.fd, self)
        self.poller.pin(self.key)

    cdef void _event(self, int fd, uint32_t ev) except *:
        if not self.closed and ev & EPOLLIN:
            self._accept()

    def _accept_again(self):
        self._retry = None
        if not self.closed:
            self._accept()

    cdef void _accept(self) except *:
        cdef sockaddr_in sa
        cdef socklen_t salen
        cdef int cfd, err, one = 1, i
        cdef ClientConn conn
        for i in range(64):
            salen = sizeof(sa)
            cfd = accept4(self.fd, <sockaddr *>&sa, &salen, SOCK_NONBLOCK | SOCK_CLOEXEC)
            if cfd < 0:
                err = errno
                if err == EAGAIN:
                    return
                if err == EINTR or err == ECONNABORTED:
                    continue
                # EMFILE, ENFILE, ENOBUFS...: the backlog waits; try again a little later
                if self._retry is None:
                    self._retry = self.loop.call_later(0.5, self._accept_again)
                return
            setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(int))
            try:
                conn = ClientConn(self.loop, cfd, _addr4(&sa), self.local)
            except OSError:
                c_close(cfd)
                continue
            try:
                proto = self.factory()
                conn._attach(proto)
                proto.connection_made(conn)
            except Exception as e:
                conn.abort()
                self.loop.call_exception_handler(
                    {"message": "fastmail connection_made failed", "exception": e})
        # edge-triggered: more may wait; let other work run first
        if self._retry is None:
            self._retry = self.loop.call_later(0, self._accept_again)

    def close(self):
        if self.closed:
            return
        self.closed = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        # the master's copy keeps the socket open: leave the set explicitly
        self.poller.remove(self.fd, self.key)
        self.sock.close()


# One direction of a SpliceRelay: src -> pipe -> dst.
cdef struct Dir:
    int src
    int dst
    int pr
    int pw
    Py_ssize_t inpipe       # bytes in the pipe now
    unsigned long long nbytes
    bint eof                # src reached EOF (or a read error)
    bint done               # FIN forwarded (half-close) or direction over


cdef enum:
    UP = 0      # client -> backend
    DOWN = 1    # backend -> client
    # sides (fds): the client is the source of UP, the backend the source of DOWN
    CLIENT = 0
    BACKEND = 1


cdef class SpliceRelay(Watcher):
    """Relay between two plain, connected stream-socket fds that it owns from now on (it
    closes them). Both fds sit edge-triggered in the loop's Poller; call start() once.

    `backend_fd` may be a BackendSocket whose login is done: its fd and registration move
    over, no syscall. `to_backend`: client bytes already read into Python (pipelined after
    the login); `to_client`: the login reply plus any backend bytes read after it. Both are
    written before any spliced byte of the same direction. `on_close(relay)` is called once,
    after both fds are closed; then `close_reason` is None for a normal end, else nginx-style
    text (`client timed out (110: Connection timed out)`, `send() failed (32: Broken pipe)`,
    `recv() failed (104: Connection reset by peer)`) and `action` says where
    (`proxying and sending to client`, ...). `timeout` is proxy_timeout in seconds (None or 0:
    none); like nginx, only client activity re-arms it. half_close=False gives nginx's end:
    the first EOF (once its bytes are delivered) closes both sides. `nonblocking=True` says
    both fds already are (no fcntl).
    """

    cdef Dir d[2]
    cdef Poller poller
    cdef unsigned long long key[2]
    cdef bint rd[2]         # per side: bytes or EOF may be waiting
    cdef bint wr[2]         # per side: the socket may take more
    cdef bint hup[2]        # per side: EOF or an error was signalled (read on until 0 / error)
    cdef bint resched
    cdef object loop
    cdef object on_close
    cdef list pend
    cdef Py_ssize_t pend_off[2]
    cdef object _timer
    cdef double _timeout
    cdef double _last_client
    cdef bint half_close
    cdef bint started
    cdef readonly bint closed
    cdef readonly bint timed_out
    cdef public str close_reason
    cdef public str action
    cdef public int error

    def __init__(self, loop, client, backend_fd, on_close, *, bytes to_backend=b"",
                 bytes to_client=b"", timeout=None, bint half_close=True,
                 bint nonblocking=False):
        cdef int i, fl, bfd, client_fd
        cdef BackendSocket bs = None
        cdef ClientConn cc = None
        if isinstance(client, ClientConn):
            cc = <ClientConn>client
            if cc.closed or cc.wbuf:
                raise ValueError("client connection closed or with unsent bytes")
            client_fd = cc.fd
        else:
            client_fd = client
        if isinstance(backend_fd, BackendSocket):
            bs = <BackendSocket>backend_fd
            if bs.closed or bs.fd < 0:
                raise ValueError("backend socket is closed")
            bfd = bs.fd
        else:
            bfd = backend_fd
        if not nonblocking:
            for fd in (client_fd, bfd):
                if (bs is not None and fd == bfd) or (cc is not None and fd == client_fd):
                    continue
                fl = fcntl(fd, F_GETFL)
                if fl < 0:
                    raise OSError(errno, os.strerror(errno))
                if not fl & O_NONBLOCK:
                    fcntl(fd, F_SETFL, fl | O_NONBLOCK)
        self.loop = loop
        self.on_close = on_close
        self.half_close = half_close
        self.d[UP].src = client_fd
        self.d[UP].dst = bfd
        self.d[DOWN].src = bfd
        self.d[DOWN].dst = client_fd
        for i in range(2):
            self.d[i].pr = -1
            self.d[i].pw = -1
            self.d[i].inpipe = 0
            self.d[i].nbytes = 0
            self.d[i].eof = self.d[i].done = False
            self.pend_off[i] = 0
            # Fresh sockets take bytes; readability comes as the first edge (epoll reports
            # the state at registration), so nothing is read speculatively.
            self.rd[i] = False
            self.wr[i] = True
            self.hup[i] = False
            self.key[i] = 0
        self.pend = [to_backend, to_client]
        self._timeout = float(timeout) if timeout else 0.0
        self._timer = None
        self._last_client = _now()
        self.close_reason = None
        self.action = "proxying"
        self.error = 0
        self.poller = _poller(loop)
        if bs is not None:
            # the login read until the socket was empty; later bytes came as edges to bs
            self.rd[BACKEND] = bs.rd_ready
            self.key[BACKEND] = bs.key
            self.poller.handlers[bs.key] = self
            bs.fd = -1
            bs.closed = True
            bs.session = bs.login = None
        else:
            self.key[BACKEND] = self.poller.add(bfd, self)
        if cc is not None:
            self.rd[CLIENT] = cc.rd_ready
            self.key[CLIENT] = cc.key
            self.poller.handlers[cc.key] = self
            cc._hand_over()
        else:
            self.key[CLIENT] = self.poller.add(client_fd, self)

    # --- public ---------------------------------------------------------------------------

    def start(self):
        """Write the pending bytes and start relaying."""
        self.started = True
        if self._timeout > 0:
            self._timer = self.loop.call_later(self._timeout, self._on_timer)
        self._pump(DOWN)
        if not self.closed:
            self._pump(UP)

    def close(self, str reason=None):
        """Close both sides now (e.g. worker shutdown); on_close is called."""
        self._close(reason, 0, self.action)

    @property
    def bytes_up(self):
        """Bytes written to the backend (pending bytes included)."""
        return self.d[UP].nbytes

    @property
    def bytes_down(self):
        """Bytes written to the client (pending bytes included)."""
        return self.d[DOWN].nbytes

    @property
    def last_activity(self):
        """time.monotonic() of the last client-side event (what proxy_timeout measures)."""
        return self._last_client

    # --- events ---------------------------------------------------------------------------

    cdef void _event(self, int fd, uint32_t ev) except *:
        cdef int side = CLIENT if fd == self.d[UP].src else BACKEND
        if self.closed:
            return
        if ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR):
            self.rd[side] = True
            if ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR):
                self.hup[side] = True
        if ev & (EPOLLOUT | EPOLLHUP | EPOLLERR):
            self.wr[side] = True
        if side == CLIENT:
            self._last_client = _now()
        if not self.started:
            return
        # reading this side feeds direction `side`; writing it drains direction `1 - side`
        self._pump(1 - side)
        if not self.closed:
            self._pump(side)

    def _resume(self):
        self.resched = False
        self._pump(DOWN)
        if not self.closed:
            self._pump(UP)

    def _on_timer(self):
        cdef double idle = _now() - self._last_client
        self._timer = None
        if self.closed:
            return
        if idle >= self._timeout - 0.001:
            self.timed_out = True
            self._close("client timed out (110: Connection timed out)", 110, "proxying")
        else:
            self._timer = self.loop.call_later(self._timeout - idle, self._on_timer)

    # --- the pump -------------------------------------------------------------------------

    cdef void _pump(self, int i) except *:
        cdef Dir *d = &self.d[i]
        cdef int src = i, dst = 1 - i      # sides
        cdef ssize_t n
        cdef int rounds = 0, err
        cdef bytes pend
        if self.closed or d.done:
            return
        # Bytes read into Python before the hand-over go first.
        pend = self.pend[i]
        if pend is not None:
            while self.pend_off[i] < PyBytes_GET_SIZE(pend):
                if not self.wr[dst]:
                    return
                n = send(d.dst, PyBytes_AS_STRING(pend) + self.pend_off[i],
                         PyBytes_GET_SIZE(pend) - self.pend_off[i], MSG_NOSIGNAL)
                if n >= 0:
                    self.pend_off[i] += n
                    d.nbytes += n
                    continue
                err = errno
                if err == EINTR:
                    continue
                if err == EAGAIN:
                    self.wr[dst] = False
                    return
                self._write_error(i, err, "send")
                return
            self.pend[i] = None
        while True:
            # Drain the pipe completely before reading more: an EAGAIN from the source then
            # always means "no data", never "pipe full".
            while d.inpipe > 0:
                if not self.wr[dst]:
                    return      # back-pressure: the source is not read meanwhile
                n = splice(d.pr, NULL, d.dst, NULL, d.inpipe, SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
                if n > 0:
                    d.inpipe -= n
                    d.nbytes += n
                    continue
                err = errno
                if n < 0 and err == EINTR:
                    continue
                if n < 0 and err == EAGAIN:
                    self.wr[dst] = False
                    return
                self._write_error(i, err if n < 0 else EPIPE, "splice")
                return
            if d.eof:
                self._finish(i)
                return
            if not self.rd[src]:
                if d.pr >= 0:
                    # Source and pipe empty: give the pipe back so idle sessions hold none.
                    _pipe_put(d.pr, d.pw, True)
                    d.pr = d.pw = -1
                return
            if rounds == MAX_ROUNDS:
                # edge-triggered: no new event comes for bytes already there
                if not self.resched:
                    self.resched = True
                    self.loop.call_soon(self._resume)
                return
            rounds += 1
            if d.pr < 0 and _pipe_get(&d.pr, &d.pw) < 0:
                self._close(_strerror(errno, "pipe2"), errno, self.action)
                return
            n = splice(d.src, NULL, d.pw, NULL, PIPE_SIZE, SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
            if n > 0:
                d.inpipe += n
                if n < _min_slots and not self.hup[src]:
                    # Each queued buffer takes at least one pipe slot, so the pipe did not
                    # fill: the socket is empty (what arrives later is a new edge), and the
                    # splice that would only say EAGAIN is saved. Without SO_PASSCRED (unix)
                    # and urgent data (TCP), nothing else ends a nonblocking splice early.
                    self.rd[src] = False
                continue
            if n == 0:
                d.eof = True
                continue
            err = errno
            if err == EINTR:
                continue
            if err == EAGAIN:
                self.rd[src] = False
                continue
            # A read error ends the direction like EOF (nginx), but the peer is gone: no
            # point waiting for the other direction.
            self.error = err
            self.close_reason = _strerror(err, "recv")
            self.action = ("proxying and reading from client" if i == UP
                           else "proxying and reading from upstream")
            d.eof = True
            if err == ECONNRESET:
                self.half_close = False

    cdef void _finish(self, int i) except *:
        cdef Dir *d = &self.d[i]
        if d.pr >= 0:
            _pipe_put(d.pr, d.pw, True)
            d.pr = d.pw = -1
        d.done = True
        if not self.half_close or self.d[1 - i].done:
            self._close(self.close_reason, self.error, self.action)
            return
        shutdown(d.dst, SHUT_WR)

    cdef void _write_error(self, int i, int err, str call) except *:
        self._close(_strerror(err, "send"),
                    err, "proxying and sending to upstream" if i == UP
                    else "proxying and sending to client")

    cdef void _close(self, str reason, int err, str action) except *:
        cdef int i
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self.error = err
        self.action = action
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for i in range(2):
            self.poller.forget(self.key[i])
            if self.d[i].pr >= 0:
                _pipe_put(self.d[i].pr, self.d[i].pw, self.d[i].inpipe == 0)
                self.d[i].pr = self.d[i].pw = -1
        c_close(self.d[UP].src)
        c_close(self.d[UP].dst)
        cb = self.on_close
        self.on_close = None
        if cb is not None:
            cb(self)


def take_fd(transport):
    """Hand a uvloop/asyncio socket transport over to SpliceRelay: returns a dup of its fd
    and aborts the transport (with a dup alive this sends neither FIN nor RST). The caller
    must have waited until transport.get_write_buffer_size() == 0: abort drops unsent bytes.
    Bytes already delivered to data_received are the caller's to pass as pending bytes."""
    if transport.get_write_buffer_size():
        raise RuntimeError("transport still has unsent bytes")
    sock = transport.get_extra_info("socket")
    transport.pause_reading()
    fd = os.dup(sock.fileno())
    transport.abort()
    return fd


# --- BufferRelay ---------------------------------------------------------------------------

cdef class _Side:
    """The asyncio protocol BufferRelay puts on each transport."""
    cdef BufferRelay relay
    cdef int which

    def __init__(self, BufferRelay relay, int which):
        self.relay = relay
        self.which = which

    def connection_made(self, transport):
        pass

    def data_received(self, data):
        self.relay._data(self.which, data)

    def eof_received(self):
        return self.relay._eof(self.which)

    def connection_lost(self, exc):
        self.relay._lost(self.which, exc)

    def pause_writing(self):
        self.relay._flow(1 - self.which, False)

    def resume_writing(self):
        self.relay._flow(1 - self.which, True)


cdef class BufferRelay:
    """Relay between two asyncio transports (TLS or plain; whatever loop.start_tls or
    create_connection gave). Memory per direction is bounded by `buffer_size`
    (proxy_buffer): when a transport's write buffer passes it, reading from the other side
    pauses until it drains. Same pending bytes, counters, timeout, half_close and on_close
    contract as SpliceRelay; a side that cannot write_eof (TLS) ends the session instead."""

    cdef object loop
    cdef object on_close
    cdef list t
    cdef bint eof[2]
    cdef bint paused[2]
    cdef unsigned long long n[2]
    cdef object _timer
    cdef double _timeout
    cdef double _last_client
    cdef bint half_close
    cdef readonly bint closed
    cdef readonly bint timed_out
    cdef public str close_reason
    cdef public str action
    cdef public int error

    def __init__(self, loop, client_transport, backend_transport, on_close, *,
                 bytes to_backend=b"", bytes to_client=b"", timeout=None,
                 bint half_close=True, Py_ssize_t buffer_size=4096):
        self.loop = loop
        self.on_close = on_close
        self.t = [client_transport, backend_transport]
        self.half_close = half_close
        self._timeout = float(timeout) if timeout else 0.0
        self._timer = None
        self._last_client = _now()
        self.close_reason = None
        self.action = "proxying"
        self.error = 0
        self.n[0] = self.n[1] = 0
        self.eof[0] = self.eof[1] = False
        self.paused[0] = self.paused[1] = False
        self._pending = (to_backend, to_client)
        for i in range(2):
            self.t[i].set_write_buffer_limits(high=buffer_size)
            self.t[i].set_protocol(_Side(self, i))

    cdef tuple _pending

    def start(self):
        to_backend, to_client = self._pending
        self._pending = None
        if self._timeout > 0:
            self._timer = self.loop.call_later(self._timeout, self._on_timer)
        if to_client:
            self._data(1, to_client)
        if to_backend:
            self._data(0, to_backend)
        for i in range(2):
            if not self.closed and not self.paused[i]:
                self.t[i].resume_reading()

    def close(self, str reason=None):
        self._close(reason, 0, self.action, True)

    @property
    def bytes_up(self):
        return self.n[0]

    @property
    def bytes_down(self):
        return self.n[1]

    @property
    def last_activity(self):
        return self._last_client

    def _on_timer(self):
        cdef double idle = _now() - self._last_client
        self._timer = None
        if self.closed:
            return
        if idle >= self._timeout - 0.001:
            self.timed_out = True
            self._close("client timed out (110: Connection timed out)", 110, "proxying", True)
        else:
            self._timer = self.loop.call_later(self._timeout - idle, self._on_timer)

    # `src` is the side the bytes came from: 0 client, 1 backend.
    def _data(self, int src, data):
        if self.closed:
            return
        if src == 0:
            self._last_client = _now()
        self.n[src] += len(data)
        self.t[1 - src].write(data)

    def _flow(self, int src, bint on):
        # The other side's write buffer crossed proxy_buffer: stop/resume reading `src`.
        if self.closed:
            return
        if src == 0 and on:
            self._last_client = _now()
        self.paused[src] = not on
        if self.eof[src]:
            return
        if on:
            self.t[src].resume_reading()
        else:
            self.t[src].pause_reading()

    def _eof(self, int src):
        if self.closed:
            return False
        if src == 0:
            self._last_client = _now()
        self.eof[src] = True
        dst = self.t[1 - src]
        if self.half_close and dst.can_write_eof() and not self.eof[1 - src]:
            dst.write_eof()  # sent after the buffered bytes
            return True
        # close() flushes what is buffered toward each side before closing.
        self._close(None, 0, self.action, False)
        return False

    def _lost(self, int side, exc):
        if self.closed:
            return
        if exc is None:
            self._close(None, 0, self.action, False)
            return
        err = getattr(exc, "errno", 0) or 0
        self._close("recv() failed (%d: %s)" % (err, os.strerror(err)) if err else str(exc),
                    err, "proxying and reading from client" if side == 0
                    else "proxying and reading from upstream", True)

    cdef void _close(self, str reason, int err, str action, bint abort):
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self.error = err
        self.action = action
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for i in range(2):
            if abort:
                self.t[i].abort()
            else:
                self.t[i].close()
        cb = self.on_close
        self.on_close = None
        if cb is not None:
            cb(self)
