# Metrics: counters in memory shared by the master and its workers, one slot per process.
#
# The hot path is one C call that adds to this process's own slot: no lock, no atomic read-
# modify-write, no Python. A series is an index made before the workers fork
# (fastmail/metrics.py plans them from the config); index 0 (NONE) and the rest of the first
# SCRATCH indices are never shown, so an unplanned hook writes where nobody reads. When
# metrics are off every index is NONE and the slot is a static scratch array.
#
#   from fastmail._metrics cimport mx_inc, mx_add, mx_dec, mx_observe, mx_now_us
#   mx_inc(srv.mx[SM_ACCEPTED])                  # a counter, or a gauge going up
#   mx_observe(idx, mx_now_us() - t0)            # a latency histogram, in microseconds

from libc.stdint cimport uint64_t, int64_t

cdef enum:
    NONE = 0                # the index of a series that is not counted
    SCRATCH = 64            # indices below this are never shown
    HIST_BUCKETS = 17       # LATENCY_US's bounds and +Inf
    HIST_SIZE = 18          # a histogram's indices: its buckets, then the sum of the values

cdef void mx_add(Py_ssize_t i, uint64_t n) noexcept nogil
cdef void mx_inc(Py_ssize_t i) noexcept nogil
cdef void mx_dec(Py_ssize_t i) noexcept nogil
cdef void mx_observe(Py_ssize_t i, int64_t us) noexcept nogil
cdef int64_t mx_now_us() noexcept nogil
