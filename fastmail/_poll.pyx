# cython: language_level=3
"""The worker's event loop: the only epoll set in a worker process.

Owns: one edge-triggered epoll set where every socket the engine owns is registered once for
both directions (nginx's way: no re-arming, no epoll_ctl per state change); timers as
intrusive nodes inside their owners, in one queue per distinct delay (timeout,
auth_http_timeout, proxy_timeout...: adding at the tail keeps each queue sorted, so arming a
timer is two pointer writes and no allocation); and the small asyncio-like API the Python
layer needs for rare events: call_soon/call_later, level-triggered add_reader/add_writer
(pycares' sockets), signal handlers. Must not know what a session is: it calls io() and
expired() on Watchers. Mirrors nginx's ngx_epoll_module.c and ngx_event_timer.c.

One wakeup is one epoll_wait: the loop reads the clock once, dispatches the batch, runs the
expired timers, then the Python callbacks that became ready.
"""

from cpython.ref cimport PyObject, Py_INCREF, Py_DECREF
from cpython.exc cimport PyErr_CheckSignals
from libc.errno cimport errno, EINTR, EEXIST, ENOENT
from libc.stdint cimport uint32_t, uint64_t, int64_t, uintptr_t
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC
from posix.unistd cimport close as c_close, read as c_read

import heapq
import os
import signal
import sys

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
    int EPOLL_CLOEXEC

cdef extern from *:
    """
    #include <fcntl.h>
    #include <unistd.h>
    """
    int pipe2(int *fds, int flags) nogil
    int O_NONBLOCK, O_CLOEXEC

cdef extern from "Python.h":
    ctypedef struct PyThreadState:
        pass
    ctypedef struct PyInterpreterState:
        pass
    PyThreadState *PyThreadState_Get()
    PyInterpreterState *PyThreadState_GetInterpreter(PyThreadState *ts)
    PyThreadState *PyInterpreterState_ThreadHead(PyInterpreterState *interp)
    PyThreadState *PyThreadState_Next(PyThreadState *ts)

DEF BATCH = 256


cdef inline bint _alone() noexcept:
    """No other thread state in this interpreter: no thread can be waiting for the GIL, so the
    wait need not release it (a release and retake is ~400 instructions and two mutexes, per
    wakeup). A thread started later has its state listed before it runs (Thread.start makes
    it), so the next wakeup sees it and releases the GIL from then on."""
    cdef PyThreadState *head = PyInterpreterState_ThreadHead(
        PyThreadState_GetInterpreter(PyThreadState_Get()))
    return head == NULL or PyThreadState_Next(head) == NULL


cdef int64_t monotonic_ms() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000 + ts.tv_nsec // 1000000


cdef class Watcher:
    """Base of everything with sockets or timers in a Loop."""

    cdef int io(self, int side, uint32_t events) except -1:
        return 0

    cdef int expired(self, int kind) except -1:
        return 0

    cpdef int completed(self, int kind, object result) except -1:
        return 0

    cdef int failed(self) except -1:
        return 0


# --- timers ------------------------------------------------------------------------------------

cdef class TimerQueue:
    def __cinit__(self):
        self.head.prev = &self.head
        self.head.next = &self.head
        self.head.owner = NULL

    cdef void add(self, TNode *n, Watcher owner, int kind) noexcept:
        self.add_at(n, owner, kind, self.loop.now + self.delay)

    cdef void add_at(self, TNode *n, Watcher owner, int kind, int64_t when) noexcept:
        cdef TNode *p
        if n.owner != NULL:
            timer_cancel(n)
        n.when = when
        n.kind = kind
        n.owner = <void *>owner
        Py_INCREF(owner)
        # from the tail: a timer of this queue's delay goes last at once
        p = self.head.prev
        while p != &self.head and p.when > when:
            p = p.prev
        n.prev = p
        n.next = p.next
        p.next.prev = n
        p.next = n

    def __len__(self):
        cdef int count = 0
        cdef TNode *p = self.head.next
        while p != &self.head:
            count += 1
            p = p.next
        return count


cdef void timer_cancel(TNode *n) noexcept:
    """Unlinks n if it is armed (idempotent) and drops the queue's reference to its owner."""
    cdef void *owner = n.owner
    if owner == NULL:
        return
    n.prev.next = n.next
    n.next.prev = n.prev
    n.prev = n.next = NULL
    n.owner = NULL
    Py_DECREF(<object>owner)


# --- Python-level handles (rare events only) ----------------------------------------------------

cdef class Handle:
    """A callback scheduled by call_soon/call_later/add_reader; cancel() drops it."""

    def __init__(self, Loop loop, callback, tuple args, int64_t when_ms=0):
        self.loop = loop
        self.callback = callback
        self.args = args
        self.when_ms = when_ms

    def cancel(self):
        self.callback = None
        self.args = None

    def cancelled(self):
        return self.callback is None

    def when(self):
        return self.when_ms / 1000.0

    cdef int _run(self) except -1:
        cb = self.callback
        if cb is None:
            return 0
        try:
            cb(*self.args)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as e:
            self.loop.report(e, repr(cb))
        return 0


cdef class _PyFd(Watcher):
    """One fd watched level-triggered for Python callbacks (pycares' sockets)."""

    cdef int io(self, int side, uint32_t events) except -1:
        if self.reader is not None and events & (EPOLLIN | EPOLLERR | EPOLLHUP):
            self.reader._run()
        if self.writer is not None and events & (EPOLLOUT | EPOLLERR | EPOLLHUP):
            self.writer._run()
        return 0


cdef class _Wakeup(Watcher):
    """The read end of signal.set_wakeup_fd: a signal arrived, let Python run its handlers."""

    cdef int fd

    cdef int io(self, int side, uint32_t events) except -1:
        cdef char buf[64]
        while c_read(self.fd, buf, sizeof(buf)) > 0:
            pass
        PyErr_CheckSignals()
        return 0


def _signal_trampoline(Loop loop, int signum, frame):
    h = loop._signals.get(signum)
    if h is not None:
        loop._ready.append(h)


# --- the loop -----------------------------------------------------------------------------------

cdef class Loop:
    """The event loop of one worker process. The engine's sockets register with register()
    (edge-triggered, once); the Python layer uses the asyncio-style methods below."""

    def __init__(self):
        """A new loop with its own epoll set."""
        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        if self.epfd < 0:
            raise OSError(errno, os.strerror(errno))
        self.now = monotonic_ms()
        self._queues = []
        self._dead = []
        self._ready = []
        self._heap = []
        self._pyfds = {}
        self._signals = {}
        self._wakeup = None
        self._exc_handler = None
        self._seq = 0

    # --- the engine's registrations ----------------------------------------------------------

    cdef int register(self, int fd, Watcher w, int side, uint32_t events) except -1:
        """Adds fd to the set; events come to w.io(side, events) until unregister(w)."""
        cdef epoll_event ev
        ev.events = events
        ev.data.u64 = <uint64_t><uintptr_t><void *>w | <uint64_t>(side & 1)
        if epoll_ctl(self.epfd, EPOLL_CTL_ADD, fd, &ev) < 0:
            raise OSError(errno, os.strerror(errno))
        Py_INCREF(w)
        if FASTMAIL_DEBUG:
            self.registrations += 1
        return 0

    cdef int modify(self, int fd, Watcher w, int side, uint32_t events) except -1:
        cdef epoll_event ev
        ev.events = events
        ev.data.u64 = <uint64_t><uintptr_t><void *>w | <uint64_t>(side & 1)
        if epoll_ctl(self.epfd, EPOLL_CTL_MOD, fd, &ev) < 0:
            raise OSError(errno, os.strerror(errno))
        return 0

    cdef void unregister(self, Watcher w) noexcept:
        """Ends one registration of w whose fd is being closed (closing drops it from the
        set). w stays alive until this iteration ends: events already read for it find it
        and see it closed."""
        self._dead.append(w)
        Py_DECREF(w)
        if FASTMAIL_DEBUG:
            self.registrations -= 1

    cdef void unregister_fd(self, int fd, Watcher w) noexcept:
        """For an fd that stays open elsewhere (a listening socket the master keeps)."""
        cdef epoll_event ev
        epoll_ctl(self.epfd, EPOLL_CTL_DEL, fd, &ev)
        self.unregister(w)

    cdef TimerQueue queue(self, int64_t delay):
        """The timer queue for `delay` ms (made once per distinct delay)."""
        cdef TimerQueue q
        for q in self._queues:
            if q.delay == delay:
                return q
        q = TimerQueue()
        q.delay = delay
        q.loop = self
        self._queues.append(q)
        return q

    cdef int report(self, object exc, str where, object obj=None) except -1:
        handler = self._exc_handler
        ctx = {"message": f"unhandled exception in {where}", "exception": exc}
        if obj is not None:
            ctx["protocol"] = obj       # asyncio's key: its `id` names the connection
        if handler is not None:
            try:
                handler(self, ctx)
                return 0
            except BaseException:
                pass
        sys.stderr.write(f"fastmail: {ctx['message']}: {exc!r}\n")
        return 0

    cdef int fault(self, object exc, str where, Watcher w) except -1:
        """An exception escaped `w`: logged, then `w` ends what it holds (a session its
        connections), so a bug costs one session, not a hung client and its fds."""
        self.report(exc, where, w)
        try:
            w.failed()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as e:
            self.report(e, where + " ending", w)
        return 0

    # --- running -----------------------------------------------------------------------------

    def run_forever(self):
        """Runs until stop(). KeyboardInterrupt/SystemExit from a signal handler propagate."""
        cdef epoll_event evs[BATCH]
        cdef int n, i, timeout
        cdef uint64_t data
        cdef Watcher w
        if self.closed:
            raise RuntimeError("the loop is closed")
        self._running = True
        self._stopping = False
        try:
            while not self._stopping:
                timeout = self._timeout()
                if _alone():
                    n = epoll_wait(self.epfd, evs, BATCH, timeout)
                else:
                    with nogil:
                        n = epoll_wait(self.epfd, evs, BATCH, timeout)
                self.now = monotonic_ms()
                if n < 0:
                    if errno != EINTR:
                        raise OSError(errno, os.strerror(errno))
                    PyErr_CheckSignals()
                    n = 0
                for i in range(n):
                    data = evs[i].data.u64
                    w = <Watcher><void *><uintptr_t>(data & ~(<uint64_t>1))
                    try:
                        w.io(<int>(data & 1), evs[i].events)
                    except (SystemExit, KeyboardInterrupt):
                        raise
                    except BaseException as e:
                        self.fault(e, type(w).__name__, w)
                self._run_timers()
                self._run_ready()
                if self._dead:
                    self._dead.clear()
        finally:
            self._running = False

    cdef int _timeout(self) except? -2:
        cdef int64_t first = -1, t
        cdef TimerQueue q
        if self._ready:
            return 0
        for q in self._queues:
            if q.head.next != &q.head:
                t = q.head.next.when
                if first < 0 or t < first:
                    first = t
        if self._heap:
            t = self._heap[0][0]
            if first < 0 or t < first:
                first = t
        if first < 0:
            return -1
        t = first - monotonic_ms()
        if t <= 0:
            return 0
        return <int>(t if t < 86400000 else 86400000)

    cdef int _run_timers(self) except -1:
        cdef TimerQueue q
        cdef TNode *n
        cdef Watcher w
        cdef int kind
        cdef int64_t now = self.now
        for q in self._queues:
            while q.head.next != &q.head and q.head.next.when <= now:
                n = q.head.next
                w = <Watcher>n.owner      # a new reference for the call
                kind = n.kind
                timer_cancel(n)
                try:
                    w.expired(kind)
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as e:
                    self.fault(e, type(w).__name__ + " timer", w)
        heap = self._heap
        while heap and heap[0][0] <= now:
            h = heapq.heappop(heap)[2]
            (<Handle>h)._run()
        return 0

    cdef int _run_ready(self) except -1:
        cdef list ready
        while self._ready:
            ready = self._ready
            self._ready = []
            for h in ready:
                (<Handle>h)._run()
            if self._stopping:
                break
        return 0

    def stop(self):
        self._stopping = True

    def is_running(self):
        return self._running

    def is_closed(self):
        return self.closed

    def close(self):
        if self.closed:
            return
        for sig in list(self._signals):
            self.remove_signal_handler(sig)
        for fd in list(self._pyfds):
            self._drop_pyfd(fd)
        if self._wakeup is not None:
            signal.set_wakeup_fd(-1)
            c_close((<_Wakeup>self._wakeup).fd)
            c_close(self._wakeup_w)
            self._wakeup = None
        c_close(self.epfd)
        self.epfd = -1
        self.closed = True

    # --- the asyncio-style API for the Python layer (rare events) ------------------------------

    def time(self):
        """Monotonic seconds, as asyncio's loop.time()."""
        return monotonic_ms() / 1000.0

    def call_soon(self, callback, *args):
        cdef Handle h = Handle(self, callback, args)
        self._ready.append(h)
        return h

    def call_later(self, delay, callback, *args):
        cdef int64_t ms = <int64_t>(delay * 1000.0 + 0.999)
        if ms < 0:
            ms = 0
        return self._call_at_ms(monotonic_ms() + ms, callback, args)

    def call_at(self, when, callback, *args):
        return self._call_at_ms(<int64_t>(when * 1000.0 + 0.999), callback, args)

    cdef Handle _call_at_ms(self, int64_t when, callback, tuple args):
        cdef Handle h = Handle(self, callback, args, when)
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, h))
        return h

    def set_exception_handler(self, handler):
        self._exc_handler = handler

    def call_exception_handler(self, context):
        handler = self._exc_handler
        if handler is not None:
            try:
                handler(self, context)
                return
            except BaseException:
                pass
        sys.stderr.write(f"fastmail: {context.get('message')}: {context.get('exception')!r}\n")

    cdef _PyFd _pyfd(self, int fd):
        cdef _PyFd p = self._pyfds.get(fd)
        if p is None:
            p = _PyFd()
            p.loop = self
            p.fd = fd
            p.mask = 0
            self._pyfds[fd] = p
        return p

    cdef int _update_pyfd(self, _PyFd p) except -1:
        cdef uint32_t mask = 0
        cdef epoll_event ev
        if p.reader is not None:
            mask |= EPOLLIN
        if p.writer is not None:
            mask |= EPOLLOUT
        if mask == p.mask:
            return 0
        ev.events = mask
        ev.data.u64 = <uint64_t><uintptr_t><void *>p
        if mask == 0:
            epoll_ctl(self.epfd, EPOLL_CTL_DEL, p.fd, &ev)
            del self._pyfds[p.fd]
            self._dead.append(p)
            Py_DECREF(p)
        elif p.mask == 0:
            if epoll_ctl(self.epfd, EPOLL_CTL_ADD, p.fd, &ev) < 0:
                if errno != EEXIST:
                    raise OSError(errno, os.strerror(errno))
                epoll_ctl(self.epfd, EPOLL_CTL_MOD, p.fd, &ev)
            Py_INCREF(p)
        else:
            epoll_ctl(self.epfd, EPOLL_CTL_MOD, p.fd, &ev)
        p.mask = mask
        return 0

    def add_reader(self, fd, callback, *args):
        cdef _PyFd p = self._pyfd(_fileno(fd))
        p.reader = Handle(self, callback, args)
        self._update_pyfd(p)

    def add_writer(self, fd, callback, *args):
        cdef _PyFd p = self._pyfd(_fileno(fd))
        p.writer = Handle(self, callback, args)
        self._update_pyfd(p)

    def remove_reader(self, fd):
        cdef _PyFd p = self._pyfds.get(_fileno(fd))
        if p is None or p.reader is None:
            return False
        p.reader = None
        self._update_pyfd(p)
        return True

    def remove_writer(self, fd):
        cdef _PyFd p = self._pyfds.get(_fileno(fd))
        if p is None or p.writer is None:
            return False
        p.writer = None
        self._update_pyfd(p)
        return True

    cdef _drop_pyfd(self, int fd):
        cdef _PyFd p = self._pyfds.get(fd)
        if p is not None:
            p.reader = p.writer = None
            self._update_pyfd(p)

    def add_signal_handler(self, int sig, callback, *args):
        """The callback runs on the loop after the signal arrived (as asyncio's)."""
        cdef int fds[2]
        cdef _Wakeup wk
        cdef epoll_event ev
        if self._wakeup is None:
            if pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0:
                raise OSError(errno, os.strerror(errno))
            wk = _Wakeup()
            wk.fd = fds[0]
            ev.events = EPOLLIN
            ev.data.u64 = <uint64_t><uintptr_t><void *>wk
            if epoll_ctl(self.epfd, EPOLL_CTL_ADD, fds[0], &ev) < 0:
                raise OSError(errno, os.strerror(errno))
            self._wakeup = wk     # the loop's reference keeps the registration's target alive
            self._wakeup_w = fds[1]
            signal.set_wakeup_fd(fds[1], warn_on_full_buffer=False)
        self._signals[sig] = Handle(self, callback, args)
        signal.signal(sig, lambda s, f, loop=self: _signal_trampoline(loop, s, f))

    def remove_signal_handler(self, int sig):
        if self._signals.pop(sig, None) is None:
            return False
        signal.signal(sig, signal.SIG_DFL)
        return True

    def stats(self):
        """For leak checks: (engine registrations [debug build only], Python fds, timers)."""
        cdef TimerQueue q
        return (self.registrations, len(self._pyfds),
                sum(len(q) for q in self._queues) + len(self._heap))


cdef int _fileno(fd) except -1:
    if isinstance(fd, int):
        return fd
    return fd.fileno()
