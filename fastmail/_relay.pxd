# The relay: bytes between a logged-in client and its backend until one side ends.

from libc.stdint cimport uint32_t, int64_t
from fastmail._poll cimport Loop, Watcher, TNode
from fastmail._conn cimport Sock


# One direction: src -> dst. UP is client -> backend, DOWN backend -> client.
cdef struct Dir:
    int pr                       # pipe for splice (-1: none held)
    int pw
    Py_ssize_t inpipe            # bytes in the pipe (splice) or in buf (copying)
    unsigned long long nbytes    # bytes written to dst
    const char *pend             # bytes read before the relay began (kept alive by the owner)
    Py_ssize_t pend_len
    Py_ssize_t pend_off
    char *buf                    # copying path (TLS on a side): bytes read, not yet written
    Py_ssize_t buf_off
    bint eof                     # src reached EOF (or a read error)
    bint done                    # FIN forwarded (half-close) or direction over

cdef enum:
    UP = 0
    DOWN = 1
    CLIENT = 0                   # sides: the client is UP's source, the backend DOWN's
    BACKEND = 1

# why a relay ended (Relay.why); the owner turns it into nginx's log line
cdef enum:
    END_DONE = 0                 # both directions ended (or one, without half-close)
    END_READ_CLIENT              # recv() failed on the client
    END_READ_BACKEND
    END_SEND_CLIENT              # send() failed towards the client
    END_SEND_BACKEND
    END_PIPE                     # pipe2() failed
    END_TIMEOUT                  # proxy_timeout
    END_CLOSED                   # closed from outside (shutdown)


cdef class Relay(Watcher):
    cdef Loop loop
    cdef Sock c                  # the client
    cdef Sock b                  # the backend
    cdef Dir d[2]
    cdef TNode t_main            # proxy_timeout while relaying (a session's deadline before)
    cdef int64_t proxy_timeout   # ms; 0: none
    cdef int64_t last_client     # loop ms of the last client-side event
    cdef object pend_keep        # the bytes objects d[].pend point into
    cdef object on_close         # standalone relays (tests): called with the relay at the end
    cdef bint half_close
    cdef bint relaying
    cdef bint resched
    cdef bint ended
    cdef public int why
    cdef public int error
    cdef int first_eof           # the side whose EOF came first: CLIENT + 1 or BACKEND + 1
    cdef Py_ssize_t mx_bytes[2]  # metrics: bytes relayed per direction (_metrics indices)
    cdef Py_ssize_t mx_active    # metrics: relays running

    cdef int relay_start(self, bytes to_backend, bytes to_client) except -1
    cdef int relay_io(self, int side, uint32_t events) except -1
    cdef int relay_pump(self, int i) except -1
    cdef int relay_end(self, int why, int err) except -1
    cdef int relay_closed(self) except -1
    cdef int relay_timer(self) except -1
    cdef int _finish(self, int i) except -1
    cdef int _splice(self, int i) except -1
    cdef int _copy(self, int i) except -1
    cdef int _send_pending(self, int i) except -1
    cdef int _read_error(self, int i, int err) except -1
    cdef int _later(self) except -1


cpdef tuple pool_stats()
