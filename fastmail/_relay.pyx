# cython: language_level=3
"""The relay: moves bytes between a logged-in client and its backend until one side ends.

Owns: `Relay`, the relaying half of a session (the session engine subclasses it; tests use
it alone): both sockets, one edge-triggered registration each, proxy_timeout as client
inactivity (as nginx), byte counters, and the per-process pipe pool. When both sides are
plain sockets bytes move with splice(2) through pooled pipes and never enter user space;
when either side has TLS they are copied through one buffer per direction, bounded by its
size (the reader stops until the writer took it all). Never parses protocol bytes, never
logs: the owner reads why/error at relay_closed(). Mirrors nginx's ngx_mail_proxy_handler,
except that half_close (the default) forwards a FIN with shutdown(SHUT_WR) instead of
closing both sides.
"""

from libc.errno cimport errno, EAGAIN, EINTR, EPIPE, ECONNRESET
from libc.stdint cimport uint32_t, int64_t
from libc.stdlib cimport malloc, free
from posix.unistd cimport close as c_close

from fastmail._poll cimport (Loop, Watcher, TNode, TimerQueue, timer_cancel, FASTMAIL_DEBUG,
                             EPOLLIN, EPOLLOUT, EPOLLET, EPOLLRDHUP, EPOLLERR, EPOLLHUP)
from fastmail._conn cimport (Sock, sock_init, sock_recv, sock_send_some, sock_close,
                             IO_AGAIN, IO_ERROR)
from fastmail._metrics cimport mx_add, mx_inc, mx_dec

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
    int shutdown(int fd, int how) nogil
    int SPLICE_F_MOVE, SPLICE_F_NONBLOCK, F_SETPIPE_SZ, F_GETPIPE_SZ
    int O_NONBLOCK, O_CLOEXEC, SHUT_WR

DEF POOL_MAX = 256
DEF MAX_ROUNDS = 16     # reads per direction per wakeup, so one busy session cannot starve others
DEF COPY_BUF = 65536    # the copying path's buffer per direction (TLS: several records per read)

cdef int PIPE_SIZE = 1 << 20  # F_SETPIPE_SZ target; the kernel may give less
cdef int _pool_r[POOL_MAX]
cdef int _pool_w[POOL_MAX]
cdef int _pool_n = 0
cdef int _pool_limit = 16      # idle pipes kept; the rest are closed when returned
cdef long _pipes_open = 0      # live pipes (pooled + in use), for leak checks
# Fewest buffer slots (pages) of any pipe made: a splice from a socket that moved fewer bytes
# than this was not cut short by a full pipe, so the socket had no more (see _splice).
cdef Py_ssize_t _min_slots = 1 << 30
cdef long _copy_bufs = 0       # copying-path buffers allocated (debug build)


cpdef tuple pool_stats():
    """(idle pipes in the pool, pipes open in this process, copy buffers held)."""
    return _pool_n, _pipes_open, _copy_bufs


def pool_configure(int idle_max=16, int pipe_size=1 << 20):
    """Idle pipes kept per process (<= 256) and the F_SETPIPE_SZ size asked for."""
    global _pool_limit, PIPE_SIZE
    _pool_limit = min(max(idle_max, 0), POOL_MAX)
    PIPE_SIZE = pipe_size
    pool_clear()


def pool_clear():
    """Closes the idle pipes (a freshly forked worker, or shutdown once no relay runs)."""
    global _pool_n, _pipes_open
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


cdef inline Sock *_src(Relay r, int i) noexcept:
    return &r.c if i == UP else &r.b


cdef inline Sock *_dst(Relay r, int i) noexcept:
    return &r.b if i == UP else &r.c


cdef class Relay(Watcher):
    """Relays between two connected, nonblocking stream sockets it owns (and closes).

    Standalone (tests, tools): Relay(loop, client_fd, backend_fd, on_close, to_backend=b"",
    to_client=b"", timeout=None, half_close=True) registers both fds; start() writes the
    pending bytes (read before the relay began) ahead of anything relayed and starts;
    on_close(relay) is called once both fds are closed, with `why`/`error` (END_*) set.
    The session engine subclasses Relay and calls relay_start() itself.
    """

    def __init__(self, Loop loop, int client_fd, int backend_fd, on_close, *,
                 bytes to_backend=b"", bytes to_client=b"", timeout=None,
                 bint half_close=True):
        self.loop = loop
        sock_init(&self.c, client_fd)
        sock_init(&self.b, backend_fd)
        self.on_close = on_close
        self.half_close = half_close
        self.proxy_timeout = <int64_t>(float(timeout) * 1000) if timeout else 0
        self.pend_keep = (to_backend, to_client)
        loop.register(client_fd, self, CLIENT, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET)
        loop.register(backend_fd, self, BACKEND, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET)

    def start(self):
        to_backend, to_client = self.pend_keep
        self.relay_start(to_backend, to_client)

    def close(self):
        """Closes both sides now (shutdown); on_close follows."""
        self.relay_end(END_CLOSED, 0)

    @property
    def bytes_up(self):
        """Bytes written to the backend (pending bytes included)."""
        return self.d[UP].nbytes

    @property
    def bytes_down(self):
        """Bytes written to the client (pending bytes included)."""
        return self.d[DOWN].nbytes

    @property
    def closed(self):
        return self.ended

    cdef int io(self, int side, uint32_t events) except -1:
        return self.relay_io(side, events)

    cdef int expired(self, int kind) except -1:
        return self.relay_timer()

    # --- the relay's life ----------------------------------------------------------------------

    cdef int relay_start(self, bytes to_backend, bytes to_client) except -1:
        """Begins relaying: the sockets are registered and their readiness known (a fresh
        socket takes bytes; readability comes as an edge, so nothing is read on spec)."""
        cdef int i
        self.pend_keep = (to_backend, to_client)
        for i in range(2):
            self.d[i].pr = self.d[i].pw = -1
            self.d[i].inpipe = 0
            self.d[i].buf = NULL
            self.d[i].buf_off = 0
            self.d[i].eof = self.d[i].done = False
            self.d[i].pend_off = 0
        self.d[UP].pend = to_backend
        self.d[UP].pend_len = len(to_backend)
        self.d[DOWN].pend = to_client
        self.d[DOWN].pend_len = len(to_client)
        self.relaying = True
        mx_inc(self.mx_active)
        self.last_client = self.loop.now
        if self.proxy_timeout > 0:
            self.loop.queue(self.proxy_timeout).add(&self.t_main, self, 0)
        self.relay_pump(DOWN)
        if not self.ended:
            self.relay_pump(UP)
        return 0

    cdef int relay_io(self, int side, uint32_t events) except -1:
        cdef Sock *s = &self.c if side == CLIENT else &self.b
        if self.ended:
            return 0
        if events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR):
            s.rd_ready = True
            if events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR):
                s.hup = True
        if events & (EPOLLOUT | EPOLLHUP | EPOLLERR):
            s.wr_ready = True
        if side == CLIENT:
            self.last_client = self.loop.now
        if not self.relaying:
            return 0
        # reading this side feeds direction `side`; writing it drains direction `1 - side`
        self.relay_pump(1 - side)
        if not self.ended:
            self.relay_pump(side)
        return 0

    def _resume(self):
        self.resched = False
        if not self.ended:
            self.relay_pump(DOWN)
        if not self.ended:
            self.relay_pump(UP)

    cdef int relay_timer(self) except -1:
        cdef int64_t idle = self.loop.now - self.last_client
        if self.ended or not self.relaying:
            return 0
        if idle >= self.proxy_timeout:
            return self.relay_end(END_TIMEOUT, 110)
        # only client activity re-arms it (nginx): wait for the rest
        self.loop.queue(self.proxy_timeout).add_at(
            &self.t_main, self, 0, self.last_client + self.proxy_timeout)
        return 0

    cdef int relay_pump(self, int i) except -1:
        cdef Dir *d = &self.d[i]
        if self.ended or d.done:
            return 0
        if d.pend != NULL and not self._send_pending(i):
            return 0
        if self.c.ssl == NULL and self.b.ssl == NULL:
            return self._splice(i)
        return self._copy(i)

    cdef int _send_pending(self, int i) except -1:
        """Bytes read before the relay began go first: 1 once all are out."""
        cdef Dir *d = &self.d[i]
        cdef Sock *dst = _dst(self, i)
        cdef Py_ssize_t n
        while d.pend_off < d.pend_len:
            if not dst.wr_ready:
                return 0
            n = sock_send_some(dst, d.pend + d.pend_off, d.pend_len - d.pend_off)
            if n > 0:
                d.pend_off += n
                d.nbytes += n
                mx_add(self.mx_bytes[i], n)
                continue
            if n == IO_AGAIN:
                return 0
            self.relay_end(END_SEND_BACKEND if i == UP else END_SEND_CLIENT, dst.err)
            return 0
        d.pend = NULL
        if self.d[1 - i].pend == NULL:
            self.pend_keep = None
        return 1

    cdef int _splice(self, int i) except -1:
        cdef Dir *d = &self.d[i]
        cdef Sock *src = _src(self, i)
        cdef Sock *dst = _dst(self, i)
        cdef ssize_t n
        cdef int rounds = 0, err
        while True:
            # Drain the pipe completely before reading more: an EAGAIN from the source then
            # always means "no data", never "pipe full".
            while d.inpipe > 0:
                if not dst.wr_ready:
                    return 0    # back-pressure: the source is not read meanwhile
                n = splice(d.pr, NULL, dst.fd, NULL, d.inpipe, SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
                if n > 0:
                    d.inpipe -= n
                    d.nbytes += n
                    dst.tx += n
                    mx_add(self.mx_bytes[i], n)
                    continue
                err = errno
                if n < 0 and err == EINTR:
                    continue
                if n < 0 and err == EAGAIN:
                    dst.wr_ready = False
                    return 0
                return self.relay_end(END_SEND_BACKEND if i == UP else END_SEND_CLIENT,
                                      err if n < 0 else EPIPE)
            if d.eof:
                return self._finish(i)
            if not src.rd_ready:
                if d.pr >= 0:
                    # source and pipe empty: give the pipe back so idle sessions hold none
                    _pipe_put(d.pr, d.pw, True)
                    d.pr = d.pw = -1
                return 0
            if rounds == MAX_ROUNDS:
                return self._later()
            rounds += 1
            if d.pr < 0 and _pipe_get(&d.pr, &d.pw) < 0:
                return self.relay_end(END_PIPE, errno)
            n = splice(src.fd, NULL, d.pw, NULL, PIPE_SIZE, SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
            if n > 0:
                d.inpipe += n
                src.rx += n
                if n < _min_slots and not src.hup:
                    # Each queued buffer takes at least one pipe slot, so the pipe did not
                    # fill: the socket is empty (what arrives later is a new edge), and the
                    # splice that would only say EAGAIN is saved. Without SO_PASSCRED (unix)
                    # and urgent data (TCP), nothing else ends a nonblocking splice early.
                    src.rd_ready = False
                continue
            if n == 0:
                d.eof = True
                if self.first_eof == 0:
                    self.first_eof = i + 1     # UP's source is the client, DOWN's the backend
                continue
            err = errno
            if err == EINTR:
                continue
            if err == EAGAIN:
                src.rd_ready = False
                continue
            self._read_error(i, err)

    cdef int _copy(self, int i) except -1:
        """TLS on a side: read into this direction's buffer, write it all, read again."""
        global _copy_bufs
        cdef Dir *d = &self.d[i]
        cdef Sock *src = _src(self, i)
        cdef Sock *dst = _dst(self, i)
        cdef Py_ssize_t n
        cdef int rounds = 0
        while True:
            while d.inpipe > 0:
                if not dst.wr_ready:
                    return 0
                n = sock_send_some(dst, d.buf + d.buf_off, d.inpipe)
                if n > 0:
                    d.buf_off += n
                    d.inpipe -= n
                    d.nbytes += n
                    mx_add(self.mx_bytes[i], n)
                    continue
                if n == IO_AGAIN:
                    return 0
                return self.relay_end(END_SEND_BACKEND if i == UP else END_SEND_CLIENT, dst.err)
            d.buf_off = 0
            if d.eof:
                return self._finish(i)
            if not src.rd_ready:
                if d.buf != NULL:
                    free(d.buf)     # an idle session holds no buffer
                    d.buf = NULL
                    if FASTMAIL_DEBUG:
                        _copy_bufs -= 1
                return 0
            if rounds == MAX_ROUNDS:
                return self._later()
            rounds += 1
            if d.buf == NULL:
                d.buf = <char *>malloc(COPY_BUF)
                if d.buf == NULL:
                    return self.relay_end(END_PIPE, 12)
                if FASTMAIL_DEBUG:
                    _copy_bufs += 1
            n = sock_recv(src, d.buf, COPY_BUF)
            if n > 0:
                d.inpipe = n
                continue
            if n == 0:
                d.eof = True
                if self.first_eof == 0:
                    self.first_eof = i + 1
                continue
            if n == IO_AGAIN:
                continue
            self._read_error(i, src.err)

    cdef int _read_error(self, int i, int err) except -1:
        # A read error ends the direction like EOF (nginx), but the peer is gone: no point
        # waiting for the other direction.
        self.why = END_READ_CLIENT if i == UP else END_READ_BACKEND
        self.error = err
        self.d[i].eof = True
        if err == ECONNRESET:
            self.half_close = False
        return 0

    cdef int _later(self) except -1:
        # edge-triggered: no new event comes for bytes already there
        if not self.resched:
            self.resched = True
            self.loop.call_soon(self._resume)
        return 0

    cdef int _finish(self, int i) except -1:
        cdef Dir *d = &self.d[i]
        if d.pr >= 0:
            _pipe_put(d.pr, d.pw, True)
            d.pr = d.pw = -1
        d.done = True
        if not self.half_close or self.d[1 - i].done or _dst(self, i).ssl != NULL:
            # a TLS side has no half-close of its own: the session ends (close_notify)
            return self.relay_end(self.why, self.error)
        shutdown(_dst(self, i).fd, SHUT_WR)
        return 0

    cdef int relay_end(self, int why, int err) except -1:
        """Closes both sockets and frees what the relay holds; then relay_closed()."""
        global _copy_bufs
        cdef int i
        if self.ended:
            return 0
        self.ended = True
        self.why = why
        self.error = err
        if self.relaying:
            mx_dec(self.mx_active)
        timer_cancel(&self.t_main)
        for i in range(2):
            if self.d[i].pr >= 0:
                _pipe_put(self.d[i].pr, self.d[i].pw, self.d[i].inpipe == 0)
                self.d[i].pr = self.d[i].pw = -1
            if self.d[i].buf != NULL:
                free(self.d[i].buf)
                self.d[i].buf = NULL
                if FASTMAIL_DEBUG:
                    _copy_bufs -= 1
        self.pend_keep = None
        if self.c.fd >= 0:
            self.loop.unregister(self)
            sock_close(&self.c)
        if self.b.fd >= 0:
            self.loop.unregister(self)
            sock_close(&self.b)
        return self.relay_closed()

    cdef int relay_closed(self) except -1:
        cb = self.on_close
        self.on_close = None
        if cb is not None:
            cb(self)
        return 0
