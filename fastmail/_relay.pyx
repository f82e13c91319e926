# cython: language_level=3
"""The relay: moves bytes between a logged-in client and its backend until one side ends.

Owns: SpliceRelay (two plain socket fds; bytes move with splice(2) through pooled pipes and
never enter Python), BufferRelay (two asyncio transports, e.g. TLS: bounded by proxy_buffer
through write-buffer flow control), the per-process pipe pool, proxy_timeout (client
inactivity, as nginx) and byte counters. The only Cython module that makes syscalls; it
never parses protocol bytes and never logs: the driver reads close_reason/action/counters
in on_close. Mirrors nginx ngx_mail_proxy_handler (spec proxy.md §1), except that
half_close=True (the default) forwards a FIN with shutdown(SHUT_WR) instead of closing both.
"""

from libc.errno cimport errno, EAGAIN, EINTR, EPIPE, ECONNRESET
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC
from posix.unistd cimport close as c_close
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

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
    int fcntl(int fd, int cmd, ...) nogil
    ssize_t send(int fd, const void *buf, size_t n, int flags) nogil
    int shutdown(int fd, int how) nogil
    int SPLICE_F_MOVE, SPLICE_F_NONBLOCK, F_SETPIPE_SZ, F_GETPIPE_SZ, F_GETFL, F_SETFL
    int O_NONBLOCK, O_CLOEXEC, SHUT_WR, MSG_NOSIGNAL

DEF POOL_MAX = 256
DEF MAX_ROUNDS = 16   # pipe fills per callback, so one busy session cannot starve the loop

cdef int PIPE_SIZE = 1 << 20  # F_SETPIPE_SZ target; the kernel may give less
cdef int _pool_r[POOL_MAX]
cdef int _pool_w[POOL_MAX]
cdef int _pool_n = 0
cdef int _pool_limit = 16      # idle pipes kept; the rest are closed when returned
cdef long _pipes_open = 0      # live pipes (pooled + in use), for leak checks


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
    """Close the idle pipes (e.g. in a freshly forked worker, or at shutdown)."""
    global _pool_n, _pipes_open
    while _pool_n > 0:
        _pool_n -= 1
        c_close(_pool_r[_pool_n])
        c_close(_pool_w[_pool_n])
        _pipes_open -= 1


cdef int _pipe_get(int *r, int *w) noexcept:
    global _pool_n, _pipes_open
    cdef int fds[2]
    if _pool_n > 0:
        _pool_n -= 1
        r[0] = _pool_r[_pool_n]
        w[0] = _pool_w[_pool_n]
        return 0
    if pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0:
        return -1
    # Fails with EPERM past pipe-user-pages-soft or pipe-max-size: the default size works too.
    fcntl(fds[1], F_SETPIPE_SZ, PIPE_SIZE)
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
    bint reading            # add_reader(src) is active
    bint writing            # add_writer(dst) is active


cdef enum:
    UP = 0      # client -> backend
    DOWN = 1    # backend -> client


cdef class SpliceRelay:
    """Relay between two plain, connected stream-socket fds that it owns from now on (it
    closes them). Driven by loop.add_reader/add_writer; call start() once.

    `to_backend`: client bytes already read into Python (pipelined after the login);
    `to_client`: the login reply plus any backend bytes read after it. Both are written
    before any spliced byte of the same direction. `on_close(relay)` is called once, after
    both fds are closed; then `close_reason` is None for a normal end, else nginx-style text
    (`client timed out (110: Connection timed out)`, `send() failed (32: Broken pipe)`,
    `recv() failed (104: Connection reset by peer)`) and `action` says where
    (`proxying and sending to client`, ...). `timeout` is proxy_timeout in seconds (None or 0:
    none); like nginx, only client activity re-arms it. half_close=False gives nginx's end:
    the first EOF (once its bytes are delivered) closes both sides.
    """

    cdef Dir d[2]
    cdef object loop
    cdef object on_close
    cdef list pend
    cdef Py_ssize_t pend_off[2]
    cdef list _cb_read
    cdef list _cb_write
    cdef object _timer
    cdef double _timeout
    cdef double _last_client
    cdef bint half_close
    cdef readonly bint closed
    cdef readonly bint timed_out
    cdef public str close_reason
    cdef public str action
    cdef public int error

    def __init__(self, loop, int client_fd, int backend_fd, on_close, *, bytes to_backend=b"",
                 bytes to_client=b"", timeout=None, bint half_close=True):
        cdef int i, fl
        for fd in (client_fd, backend_fd):
            fl = fcntl(fd, F_GETFL)
            if fl < 0:
                raise OSError(errno, os.strerror(errno))
            if not fl & O_NONBLOCK:
                fcntl(fd, F_SETFL, fl | O_NONBLOCK)
        self.loop = loop
        self.on_close = on_close
        self.half_close = half_close
        self.d[UP].src = client_fd
        self.d[UP].dst = backend_fd
        self.d[DOWN].src = backend_fd
        self.d[DOWN].dst = client_fd
        for i in range(2):
            self.d[i].pr = -1
            self.d[i].pw = -1
            self.d[i].inpipe = 0
            self.d[i].nbytes = 0
            self.d[i].eof = self.d[i].done = self.d[i].reading = self.d[i].writing = False
            self.pend_off[i] = 0
        self.pend = [to_backend, to_client]
        self._cb_read = [self._client_readable, self._backend_readable]
        self._cb_write = [self._backend_writable, self._client_writable]
        self._timeout = float(timeout) if timeout else 0.0
        self._timer = None
        self._last_client = _now()
        self.close_reason = None
        self.action = "proxying"
        self.error = 0

    # --- public ---------------------------------------------------------------------------

    def start(self):
        """Write the pending bytes and start relaying."""
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

    # --- loop callbacks -------------------------------------------------------------------

    def _client_readable(self):
        self._last_client = _now()
        self._pump(UP)

    def _client_writable(self):
        self._last_client = _now()
        self._pump(DOWN)

    def _backend_readable(self):
        self._pump(DOWN)

    def _backend_writable(self):
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

    cdef void _want_read(self, int i, bint on):
        cdef Dir *d = &self.d[i]
        if on and not d.reading:
            self.loop.add_reader(d.src, self._cb_read[i])
            d.reading = True
        elif not on and d.reading:
            self.loop.remove_reader(d.src)
            d.reading = False

    cdef void _want_write(self, int i, bint on):
        cdef Dir *d = &self.d[i]
        if on and not d.writing:
            self.loop.add_writer(d.dst, self._cb_write[i])
            d.writing = True
        elif not on and d.writing:
            self.loop.remove_writer(d.dst)
            d.writing = False

    cdef void _pump(self, int i):
        cdef Dir *d = &self.d[i]
        cdef ssize_t n
        cdef int rounds = 0, err
        cdef bytes pend
        if self.closed or d.done:
            return
        # Bytes read into Python before the hand-over go first.
        pend = self.pend[i]
        while pend is not None and self.pend_off[i] < PyBytes_GET_SIZE(pend):
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
                self._want_read(i, False)
                self._want_write(i, True)
                return
            self._write_error(i, err, "send")
            return
        self.pend[i] = None
        while True:
            # Drain the pipe completely before reading more: an EAGAIN from the source then
            # always means "no data", never "pipe full".
            while d.inpipe > 0:
                n = splice(d.pr, NULL, d.dst, NULL, d.inpipe, SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
                if n > 0:
                    d.inpipe -= n
                    d.nbytes += n
                    continue
                err = errno
                if n < 0 and err == EINTR:
                    continue
                if n < 0 and err == EAGAIN:
                    self._want_read(i, False)   # back-pressure: stop reading the source
                    self._want_write(i, True)
                    return
                self._write_error(i, err if n < 0 else EPIPE, "splice")
                return
            self._want_write(i, False)
            if d.eof:
                self._finish(i)
                return
            if rounds == MAX_ROUNDS:
                self._want_read(i, True)  # level-triggered: we come back next iteration
                return
            rounds += 1
            if d.pr < 0 and _pipe_get(&d.pr, &d.pw) < 0:
                self._close(_strerror(errno, "pipe2"), errno, self.action)
                return
            n = splice(d.src, NULL, d.pw, NULL, PIPE_SIZE, SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
            if n > 0:
                d.inpipe += n
                continue
            if n == 0:
                d.eof = True
                continue
            err = errno
            if err == EINTR:
                continue
            if err == EAGAIN:
                # Source empty and pipe empty: give the pipe back so idle sessions hold none.
                _pipe_put(d.pr, d.pw, True)
                d.pr = d.pw = -1
                self._want_read(i, True)
                return
            # A read error ends the direction like EOF (nginx), but the peer is gone: no
            # point waiting for the other direction.
            self.error = err
            self.close_reason = _strerror(err, "recv")
            self.action = ("proxying and reading from client" if i == UP
                           else "proxying and reading from upstream")
            d.eof = True
            if err == ECONNRESET:
                self.half_close = False

    cdef void _finish(self, int i):
        cdef Dir *d = &self.d[i]
        self._want_read(i, False)
        if d.pr >= 0:
            _pipe_put(d.pr, d.pw, True)
            d.pr = d.pw = -1
        d.done = True
        if not self.half_close or self.d[1 - i].done:
            self._close(self.close_reason, self.error, self.action)
            return
        shutdown(d.dst, SHUT_WR)

    cdef void _write_error(self, int i, int err, str call):
        self._close(_strerror(err, "send"),
                    err, "proxying and sending to upstream" if i == UP
                    else "proxying and sending to client")

    cdef void _close(self, str reason, int err, str action):
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
            self._want_read(i, False)
            self._want_write(i, False)
            if self.d[i].pr >= 0:
                _pipe_put(self.d[i].pr, self.d[i].pw, self.d[i].inpipe == 0)
                self.d[i].pr = self.d[i].pw = -1
        c_close(self.d[UP].src)
        c_close(self.d[UP].dst)
        cb = self.on_close
        self.on_close = None
        self._cb_read = self._cb_write = None
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
