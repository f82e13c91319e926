# cython: language_level=3
"""Metrics: counters in one anonymous shared mapping, a slot per process, summed when read.

Owns the mapping (made in the master before the workers fork, so every worker sees every
slot), this process's slot and the C calls that add to it, the fold of an exited worker's
slot into the retired totals (counters stay monotonic across reloads and respawns; gauges of
a dead worker are dropped), and the sums a scrape reads. Must not name a metric: series are
indices planned by fastmail/metrics.py, which also writes the text a scrape returns.

Mapping: a header, one kind byte per series (counter or gauge), the retired totals, then the
slots, each a header (the owner's pid) and one uint64 per series. Only the owner writes its
slot, with plain loads and stores (one writer: no atomic read-modify-write); readers in other
processes see each value whole (aligned 64-bit). The master folds a slot under a sequence
count (odd while folding); a reader that saw it change reads again, so a scrape never counts
a slot twice nor misses it.
"""

from libc.stdint cimport uint8_t, uint64_t, int64_t
from libc.string cimport memset
from libc.stdlib cimport malloc, free
from posix.mman cimport mmap, munmap, PROT_READ, PROT_WRITE, MAP_SHARED, MAP_ANONYMOUS

import os
import time

cdef extern from "<sys/mman.h>":
    void *MAP_FAILED
    int MAP_NORESERVE

cdef extern from *:
    """
    #include <time.h>
    #include <sched.h>
    static inline uint64_t mx_load(const uint64_t *p) {
        return __atomic_load_n(p, __ATOMIC_RELAXED);
    }
    static inline void mx_store(uint64_t *p, uint64_t v) {
        __atomic_store_n(p, v, __ATOMIC_RELAXED);
    }
    static inline uint64_t mx_load_acq(const uint64_t *p) {
        return __atomic_load_n(p, __ATOMIC_ACQUIRE);
    }
    static inline void mx_store_rel(uint64_t *p, uint64_t v) {
        __atomic_store_n(p, v, __ATOMIC_RELEASE);
    }
    static inline void mx_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
    static inline int64_t mx_clock_us(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
    }
    """
    uint64_t mx_load(const uint64_t *p) nogil
    void mx_store(uint64_t *p, uint64_t v) nogil
    uint64_t mx_load_acq(const uint64_t *p) nogil
    void mx_store_rel(uint64_t *p, uint64_t v) nogil
    void mx_fence() nogil
    int64_t mx_clock_us() nogil
    int sched_yield() nogil

cdef uint64_t MAGIC = 0x66736d6c6d747831  # "fsmlmtx1"
cdef uint64_t RESERVED = <uint64_t>-1     # a slot given to a worker being forked
DEF SLOT_HDR = 8                          # uint64s before a slot's counters (64 bytes)

cdef struct Hdr:
    uint64_t magic
    uint64_t seq                # odd while the master folds a slot
    uint64_t capacity           # series per slot
    uint64_t nslots
    uint64_t used               # series planned so far (the master raises it)
    uint64_t master_pid
    uint64_t master_fds
    uint64_t created            # time(NULL) when made
    uint64_t pad[8]

# the upper bounds of every latency histogram's buckets, in microseconds (then +Inf)
cdef int64_t LATENCY_US[16]
LATENCY_US[:] = [100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000,
                 500000, 1000000, 2500000, 5000000, 10000000]
BUCKETS_US = tuple(LATENCY_US[i] for i in range(16))

cdef uint64_t _scratch[SCRATCH]
cdef uint64_t *_v = _scratch      # this process's slot: where mx_add adds


cdef void mx_add(Py_ssize_t i, uint64_t n) noexcept nogil:
    mx_store(&_v[i], mx_load(&_v[i]) + n)


cdef void mx_inc(Py_ssize_t i) noexcept nogil:
    mx_store(&_v[i], mx_load(&_v[i]) + 1)


cdef void mx_dec(Py_ssize_t i) noexcept nogil:
    mx_store(&_v[i], mx_load(&_v[i]) - 1)


cdef void mx_observe(Py_ssize_t i, int64_t us) noexcept nogil:
    """One value of a latency histogram whose indices start at i: its bucket (not
    cumulative: the scrape adds them up) and the sum."""
    cdef int b = 0
    if us < 0:
        us = 0
    while b < HIST_BUCKETS - 1 and us > LATENCY_US[b]:
        b += 1
    mx_store(&_v[i + b], mx_load(&_v[i + b]) + 1)
    mx_store(&_v[i + HIST_BUCKETS], mx_load(&_v[i + HIST_BUCKETS]) + <uint64_t>us)


cdef int64_t mx_now_us() noexcept nogil:
    """CLOCK_MONOTONIC in microseconds (the loop's clock is in milliseconds)."""
    return mx_clock_us()


# --- Python's view: tests, the rare counts the Python layer makes -------------------------------

def add(Py_ssize_t i, long long n=1):
    """Adds n (negative: a gauge going down) to series i in this process's slot."""
    if 0 <= i:
        mx_add(i, <uint64_t>n)


def observe(Py_ssize_t i, long long us):
    """One value (microseconds) of the histogram whose indices start at i."""
    if 0 <= i:
        mx_observe(i, us)


cdef Region _bound = None           # the region whose slot _v is, kept alive while bound


def unbind():
    """This process counts nowhere (a fresh worker of a config without metrics)."""
    global _v, _bound
    _v = _scratch
    _bound = None


cdef class Region:
    """The shared mapping: `capacity` series for each of `nslots` processes."""

    cdef void *base
    cdef size_t size
    cdef Hdr *h
    cdef uint8_t *kinds
    cdef uint64_t *retired
    cdef uint64_t *slots
    cdef size_t stride                  # uint64s per slot, its header included

    def __init__(self, uint64_t capacity, uint64_t nslots):
        cdef size_t kinds_size = (capacity + 63) & ~(<size_t>63)
        if self.base != NULL:
            raise RuntimeError("a region is made once")
        if capacity <= SCRATCH or nslots == 0:
            raise ValueError("a metrics region needs series and slots")
        self.stride = SLOT_HDR + capacity
        self.size = (sizeof(Hdr) + kinds_size + capacity * 8 + nslots * self.stride * 8)
        # untouched pages cost nothing: a slot's pages exist once its series are counted
        self.base = mmap(NULL, self.size, PROT_READ | PROT_WRITE,
                         MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        if self.base == MAP_FAILED:
            self.base = NULL
            raise MemoryError(f"mmap(MAP_ANON|MAP_SHARED, {self.size}) failed")
        self.h = <Hdr *>self.base
        self.kinds = <uint8_t *>self.base + sizeof(Hdr)
        self.retired = <uint64_t *>(<char *>self.kinds + kinds_size)
        self.slots = self.retired + capacity
        self.h.magic = MAGIC
        self.h.capacity = capacity
        self.h.nslots = nslots
        self.h.used = SCRATCH
        self.h.created = <uint64_t>time.time()

    def __dealloc__(self):
        if self.base != NULL:
            munmap(self.base, self.size)
            self.base = NULL

    cdef inline uint64_t *_slot(self, Py_ssize_t s) noexcept nogil:
        return self.slots + s * self.stride

    @property
    def capacity(self):
        return self.h.capacity

    @property
    def nslots(self):
        return self.h.nslots

    @property
    def created(self):
        """time() when the region was made (the counters' start)."""
        return self.h.created

    property used:
        """Series planned so far (the master raises it as plans add series)."""
        def __get__(self):
            return self.h.used
        def __set__(self, uint64_t n):
            if n > self.h.capacity:
                raise ValueError("more series than the region holds")
            if n > self.h.used:
                mx_store_rel(&self.h.used, n)

    property master_pid:
        def __get__(self):
            return self.h.master_pid
        def __set__(self, uint64_t pid):
            self.h.master_pid = pid

    property master_fds:
        """The master's open fds, written by the master (a worker may not read its /proc)."""
        def __get__(self):
            return mx_load(&self.h.master_fds)
        def __set__(self, uint64_t n):
            mx_store(&self.h.master_fds, n)

    def set_gauge(self, Py_ssize_t i, bint gauge=True):
        """Series i is a gauge: an exited worker's value is dropped, not kept."""
        if not 0 <= i < <Py_ssize_t>self.h.capacity:
            raise IndexError(i)
        self.kinds[i] = 1 if gauge else 0

    def reserve(self):
        """A free slot for a worker about to fork (the master), or -1 if none is free."""
        cdef Py_ssize_t s
        for s in range(<Py_ssize_t>self.h.nslots):
            if mx_load(self._slot(s)) == 0:
                mx_store(self._slot(s), RESERVED)
                return s
        return -1

    def set_pid(self, Py_ssize_t s, uint64_t pid):
        mx_store(self._slot(s), pid)

    def bind(self, Py_ssize_t s):
        """This process counts into slot s from now on (a worker, after fork)."""
        global _v, _bound
        if not 0 <= s < <Py_ssize_t>self.h.nslots:
            raise IndexError(s)
        mx_store(self._slot(s), <uint64_t>os.getpid())
        _bound = self
        _v = self._slot(s) + SLOT_HDR

    def retire(self, Py_ssize_t s):
        """The owner of slot s exited (the master, once reaped): its counters join the
        retired totals, its gauges are dropped, and the slot is free again."""
        cdef uint64_t *v = self._slot(s) + SLOT_HDR
        cdef uint64_t n = mx_load_acq(&self.h.used)
        cdef uint64_t i
        cdef uint64_t seq = self.h.seq
        if not 0 <= s < <Py_ssize_t>self.h.nslots:
            raise IndexError(s)
        mx_store_rel(&self.h.seq, seq + 1)
        mx_fence()
        for i in range(SCRATCH, n):
            if self.kinds[i] == 0:
                mx_store(&self.retired[i], mx_load(&self.retired[i]) + mx_load(&v[i]))
        memset(v, 0, n * 8)
        mx_store(self._slot(s), 0)
        mx_fence()
        mx_store_rel(&self.h.seq, seq + 2)

    def sums(self):
        """Every series summed over the live slots and the retired totals (unsigned: a
        gauge below zero reads as 2**64 minus it)."""
        cdef uint64_t n = mx_load_acq(&self.h.used)
        cdef uint64_t s1, s2, i, pid
        cdef Py_ssize_t s
        cdef uint64_t *v
        cdef int tries
        cdef uint64_t *acc = <uint64_t *>malloc(n * 8 + 8)
        if acc == NULL:
            raise MemoryError()
        for tries in range(10000):
            s1 = mx_load_acq(&self.h.seq)
            if s1 & 1:
                sched_yield()
                continue
            for i in range(n):
                acc[i] = mx_load(&self.retired[i])
            for s in range(<Py_ssize_t>self.h.nslots):
                pid = mx_load(self._slot(s))
                if pid == 0:
                    continue
                v = self._slot(s) + SLOT_HDR
                for i in range(n):
                    acc[i] += mx_load(&v[i])
            mx_fence()
            s2 = mx_load_acq(&self.h.seq)
            if s1 == s2:
                break
        try:
            return [acc[i] for i in range(n)]
        finally:
            free(acc)

    def pids(self):
        """The pids of the processes counting now (reserved slots excluded)."""
        cdef Py_ssize_t s
        cdef uint64_t pid
        out = []
        for s in range(<Py_ssize_t>self.h.nslots):
            pid = mx_load(self._slot(s))
            if pid != 0 and pid != RESERVED:
                out.append(pid)
        return out

    def value(self, Py_ssize_t s, Py_ssize_t i):
        """Series i in slot s alone (tests)."""
        return mx_load(self._slot(s) + SLOT_HDR + i)
