# The worker's event loop: one edge-triggered epoll set, intrusive timer queues, and the
# small loop API the Python layer uses for rare events (resolver sockets, Auth-Wait, signals).

from libc.stdint cimport uint32_t, uint64_t, int64_t

cdef extern from "_debug.h":
    bint FASTMAIL_DEBUG


# A timer node lives inside its owner (a session, an auth connection): arming one allocates
# nothing. While linked, the queue holds a reference to the owner.
cdef struct TNode:
    TNode *prev
    TNode *next
    int64_t when            # loop milliseconds
    void *owner             # the Watcher whose expired(kind) is called
    int kind


cdef class Watcher:
    # epoll's data for a registration is the watcher's address with bit 0 naming the side
    # (0 or 1: a session registers its client and its backend socket).
    cdef int io(self, int side, uint32_t events) except -1
    cdef int expired(self, int kind) except -1
    # an operation the watcher started finished (an auth_http answer, a DNS lookup)
    cpdef int completed(self, int kind, object result) except -1
    # an exception escaped one of the above (it is logged): end what the watcher holds
    cdef int failed(self) except -1


cdef class Handle:
    cdef object callback
    cdef tuple args
    cdef Loop loop
    cdef readonly int64_t when_ms
    cdef int _run(self) except -1


cdef class _PyFd(Watcher):
    cdef Loop loop
    cdef int fd
    cdef Handle reader
    cdef Handle writer
    cdef uint32_t mask


cdef class TimerQueue:
    # Timers that (nearly) all lie `delay` ms ahead: adding at the tail keeps the queue
    # sorted, so the head is always the next to expire.
    cdef TNode head                 # sentinel: head.next is the first, head.prev the last
    cdef readonly int64_t delay
    cdef Loop loop
    cdef void add(self, TNode *n, Watcher owner, int kind) noexcept
    cdef void add_at(self, TNode *n, Watcher owner, int kind, int64_t when) noexcept


cdef void timer_cancel(TNode *n) noexcept
cdef inline bint timer_armed(TNode *n) noexcept:
    return n.owner != NULL


cdef class Loop:
    cdef int epfd
    cdef public int64_t now         # CLOCK_MONOTONIC in ms, read once per wakeup
    cdef list _queues
    cdef list _dead                 # watchers whose registration ended in this iteration
    cdef list _ready                # Python handles to run next iteration
    cdef list _heap                 # (when_ms, seq, handle) for Python timers
    cdef dict _pyfds                # fd -> _PyFd (level-triggered Python readers/writers)
    cdef dict _signals              # signum -> handle
    cdef object _wakeup             # the signal wakeup fd watcher
    cdef object _exc_handler
    cdef uint64_t _seq
    cdef bint _stopping
    cdef bint _running
    cdef readonly bint closed
    cdef public long registrations  # live epoll registrations of Cython watchers (debug build)

    cdef int _wakeup_w              # signal.set_wakeup_fd's write end

    cdef int register(self, int fd, Watcher w, int side, uint32_t events) except -1
    cdef int modify(self, int fd, Watcher w, int side, uint32_t events) except -1
    cdef void unregister(self, Watcher w) noexcept
    cdef void unregister_fd(self, int fd, Watcher w) noexcept
    cdef TimerQueue queue(self, int64_t delay)
    cdef int report(self, object exc, str where, object obj=*) except -1
    cdef int fault(self, object exc, str where, Watcher w) except -1
    cdef int _timeout(self) except? -2
    cdef int _run_timers(self) except -1
    cdef int _run_ready(self) except -1
    cdef Handle _call_at_ms(self, int64_t when, callback, tuple args)
    cdef _PyFd _pyfd(self, int fd)
    cdef int _update_pyfd(self, _PyFd p) except -1
    cdef _drop_pyfd(self, int fd)


cdef int64_t monotonic_ms() noexcept nogil

cdef extern from "<sys/epoll.h>":
    uint32_t EPOLLIN, EPOLLOUT, EPOLLRDHUP, EPOLLET, EPOLLERR, EPOLLHUP
    int EPOLL_CTL_ADD, EPOLL_CTL_MOD, EPOLL_CTL_DEL
