# The access log: one line per session, formatted in C from a template made at config time,
# written without blocking the worker (fastmail/accesslog.py builds these; the session fills a
# Record at its end).

from libc.stdint cimport int64_t
from fastmail._poll cimport Loop, Watcher, TNode

# the fields of a line, in the order of FIELDS (_accesslog.pyx)
cdef enum:
    F_TIME_LOCAL = 0
    F_TIME_ISO8601
    F_MSEC
    F_REMOTE_ADDR
    F_REMOTE_PORT
    F_CLIENT
    F_SERVER_ADDR
    F_SERVER_PORT
    F_SERVER
    F_PROTOCOL
    F_SERVER_NAME
    F_LOGIN
    F_AUTH_METHOD
    F_AUTH_RESULT
    F_AUTH_REASON
    F_UPSTREAM
    F_BYTES_IN
    F_BYTES_OUT
    F_UPSTREAM_BYTES_IN
    F_UPSTREAM_BYTES_OUT
    F_DURATION
    F_TLS_PROTOCOL
    F_TLS_CIPHER
    F_END_REASON
    F_SESSION_ID
    F_CONNECTION
    F_PID
    F_COUNT

# What the session knows at its end. Strings are borrowed (valid during alog_write); a NULL
# one is missing (`-`, or empty in JSON). Numbers: ports (-1: none; v[F_UPSTREAM] is the
# backend's), bytes, the duration in ms, the connection number and pid.
cdef struct Record:
    const char *s[F_COUNT]
    Py_ssize_t n[F_COUNT]
    long long v[F_COUNT]


cdef class Format:
    cdef readonly str name
    cdef readonly bint json
    cdef readonly bint needs_local      # uses $server_addr, $server_port or $server
    cdef int nops
    cdef int *field                     # per op: F_*, or -1 for literal text
    cdef const char **lit
    cdef Py_ssize_t *lit_len
    cdef list keep                      # the literal texts' bytes objects
    cdef Py_ssize_t fixed               # literal bytes in all


cdef class Writer(Watcher):
    cdef Loop loop
    cdef int fd                         # the file, or the syslog datagram socket
    cdef bint syslog
    cdef char addr[128]                 # the syslog server's sockaddr
    cdef unsigned int addrlen
    cdef bytes head                     # syslog: " host tag: " after the timestamp
    cdef int pri
    cdef char *buf
    cdef Py_ssize_t len                 # bytes pending in buf
    cdef Py_ssize_t alloc               # buf's size
    cdef Py_ssize_t size                # buffer=: 0 writes each line at once
    cdef Py_ssize_t limit               # pending bytes kept at most while the file refuses
    cdef int64_t flush_ms
    cdef TNode t
    cdef bint failing                   # an outage under way (its [alert] said)
    cdef long long lost                 # lines lost in this outage
    cdef readonly str name
    cdef object path
    cdef object log                     # the worker's error log (alerts)
    cdef public Py_ssize_t mx_lines     # metrics indices
    cdef public Py_ssize_t mx_dropped

    cdef int line(self, Format f, Record *r) except -1
    cdef int _send(self, Format f, Record *r) except -1
    cdef int _flush(self) except -1
    cdef long long _pending_lines(self) noexcept
    cdef int _drop(self, long long lines, str why) except -1
    cdef int _recovered(self) except -1


cdef int alog_write(tuple logs, Record *r) except -1
