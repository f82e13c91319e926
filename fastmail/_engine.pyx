# cython: language_level=3
"""The worker's engine: accepts on the listeners and starts a session per connection.

Owns the set of live sessions, the count of open connections against worker_connections
(with nginx's alert when they are not enough), the choice of the listen entry a wildcard
socket's connection belongs to, the end of a stopping worker's last session, and the debug
build's leak counters. Must not drive a session (fastmail._session does). Mirrors nginx's
ngx_event_accept.c and the connection bookkeeping of ngx_cycle.c.
"""

from posix.unistd cimport close as c_close

from fastmail._poll cimport Loop
from fastmail._conn cimport (Listener, sockaddr, sockaddr_storage, socklen_t, sockaddr_ip)
from fastmail._report cimport Entry
from fastmail._session cimport Owner, Session
from fastmail._metrics cimport mx_inc

from fastmail import _session
from fastmail.guard import Guard

cdef extern from *:
    """
    #include <sys/socket.h>
    #include <malloc.h>
    """
    int getsockname(int fd, sockaddr *addr, socklen_t *len) nogil
    int malloc_trim(size_t pad) nogil

# after a burst of at least TRIM_HIGH connections has fallen to a quarter, the heap's free
# pages go back to the system: what a burst took is returned, not kept as the new baseline
DEF TRIM_HIGH = 256


cdef class Engine(Owner):
    """A worker's sessions: accepts on its listeners, counts connections against
    worker_connections, and knows when a stopping worker has nothing left to do."""

    cdef public set sessions
    cdef public long max_connections    # worker_connections
    cdef public object log              # the main error log (alerts)
    cdef public object on_idle          # called once stopping and the last session ended
    cdef public bint stopping
    cdef public Py_ssize_t mx_dropped   # metrics: connections refused for worker_connections
    cdef long ids
    cdef long high                      # the most connections open since the last trim

    def __init__(self, Loop loop, log, long max_connections):
        self.loop = loop
        self.log = log
        self.max_connections = max_connections
        self.sessions = set()
        self.by_conf = {}
        self.connections = 0
        self.ids = 0
        self.guard = Guard()

    cdef int accepted(self, Listener lst, int fd, sockaddr *sa) except -1:
        cdef int port = 0
        cdef Session s
        cdef list entries = lst.data
        cdef Entry e
        ip = sockaddr_ip(sa, &port)
        if self.connections >= self.max_connections:
            # nginx counts every socket; the alert and the refusal are its words and way
            self.log.log(2, f"{self.max_connections} worker_connections are not enough")
            mx_inc(self.mx_dropped)
            c_close(fd)
            return 0
        e = entries[0] if len(entries) == 1 else _entry_for(entries, fd)
        s = Session.__new__(Session)
        self.ids += 1
        self.connections += 1
        if self.connections > self.high:
            self.high = self.connections
        self.sessions.add(s)
        s.begin(self, e, fd, ip, port, self.ids)
        return 0

    cdef int ended(self, Session s) except -1:
        cdef bytes key = s.ip_key
        self.sessions.discard(s)
        if key is not None:
            # limit_conn_per_ip: the address has one connection fewer
            n = self.guard.conns[key] - 1
            if n:
                self.guard.conns[key] = n
            else:
                del self.guard.conns[key]
        if self.high >= TRIM_HIGH and self.connections <= self.high // 4:
            malloc_trim(0)
            self.high = self.connections
        if self.stopping and not self.sessions and self.on_idle is not None:
            cb = self.on_idle
            self.on_idle = None
            self.loop.call_soon(cb)
        return 0

    def close_all(self, str reason=None):
        """TERM, or worker_shutdown_timeout: every session ends now."""
        cdef Session s
        for s in list(self.sessions):
            s.shut(reason)


cdef Entry _entry_for(list entries, int fd):
    """The entry for the address the client reached (a wildcard socket serving several)."""
    cdef sockaddr_storage ss
    cdef socklen_t n = sizeof(ss)
    cdef int port = 0
    cdef Entry e
    if getsockname(fd, <sockaddr *>&ss, &n) == 0:
        local = sockaddr_ip(<sockaddr *>&ss, &port)
        for e in entries:
            if not e.wildcard and e.host == local:
                return e
    for e in entries:
        if e.wildcard:
            return e
    return entries[0]


def debug_counters(Loop loop=None):
    """What the debug build counts, for leak checks at teardown: every figure is 0 once a
    worker has closed all it served (the release build reports zeros it did not count)."""
    from fastmail import _relay
    idle, pipes, bufs = _relay.pool_stats()
    out = {
        "sessions": _session.live_count(),
        "registrations": loop.registrations if loop is not None else 0,
        "pipes": pipes - idle,
        "copy_buffers": bufs,
    }
    for name, mod in (("auth_connections", "fastmail._auth"), ("ssl_objects", "fastmail._tls")):
        try:
            module = __import__(mod, fromlist=["live"])
        except ImportError:
            continue
        live = getattr(module, "live_count", None)
        if live is not None:
            out[name] = live()
    return out


