# cython: language_level=3
"""The access log's engine: a line per session formatted in C, written without blocking.

Owns `Format` (a log_format compiled once: literal texts and fields), the escaping (nginx's
\\xHH for `"`, `\\`, control and non-ASCII bytes; JSON's, with invalid UTF-8 bytes as \\u00HH
so that a line is always valid JSON), the time strings (made once a second), and `Writer`:
a file written with write(2) on a nonblocking descriptor, each line at once or, with
buffer=, when the buffer fills and every flush= (a timer on the worker's loop), or a syslog
server sent one datagram per line. A file that refuses (a full pipe, EAGAIN) keeps lines
pending up to a bound, then loses them; an error loses what is pending; lost lines are
counted (metrics) and said once per outage ([alert]), and again when the log recovers
([notice]). Must not know a session: it gets a Record (fastmail._report fills it).
"""

from libc.errno cimport errno, EAGAIN, EINTR
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy, memmove, memchr, strlen, memset
from libc.stdio cimport snprintf
from libc.stdint cimport int64_t
from posix.unistd cimport write, getpid, close as c_close

from fastmail._poll cimport Loop, Watcher, TNode, timer_cancel, timer_armed
from fastmail._metrics cimport mx_inc, mx_add

import os
import socket

cdef extern from *:
    """
    #include <time.h>
    #include <sys/socket.h>
    #include <sys/un.h>
    #include <netinet/in.h>
    #include <arpa/inet.h>
    static ssize_t fm_sendto(int fd, const void *buf, size_t n, int flags, const void *addr,
                             unsigned int addrlen) {
        return sendto(fd, buf, n, flags, (const struct sockaddr *)addr, addrlen);
    }
    """
    ctypedef long time_t
    struct tm:
        pass
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int CLOCK_REALTIME
    int clock_gettime(int clk, timespec *ts) nogil
    tm *localtime_r(const time_t *t, tm *out) nogil
    size_t strftime(char *s, size_t max, const char *fmt, const tm *t) nogil
    ssize_t fm_sendto(int fd, const void *buf, size_t n, int flags, const void *addr,
                      unsigned int addrlen) nogil
    int MSG_DONTWAIT, MSG_NOSIGNAL

# nginx's log levels (fastmail.log)
DEF ALERT = 2
DEF NOTICE = 6

DEF RETRY_MS = 100           # a file that said EAGAIN is tried again this soon
DEF UNBUFFERED = 65536       # pending room of a log without buffer=
DEF MIN_LIMIT = 262144       # pending bytes kept at most while a file refuses (or 4x buffer=)
DEF SYSLOG_MAX = 65536

FIELDS = (
    "time_local", "time_iso8601", "msec", "remote_addr", "remote_port", "client",
    "server_addr", "server_port", "server", "protocol", "server_name", "login",
    "auth_method", "auth_result", "auth_reason", "upstream", "bytes_in", "bytes_out",
    "upstream_bytes_in", "upstream_bytes_out", "duration", "tls_protocol", "tls_cipher",
    "end_reason", "session_id", "connection", "pid",
)
assert len(FIELDS) == F_COUNT

cdef const char *HEX = "0123456789ABCDEF"
cdef long long _pid = 0       # this worker's (getpid() is a syscall: not once per line)

# --- time strings, made once a second ----------------------------------------------------------

cdef time_t _sec = -1
cdef char _local[64]
cdef Py_ssize_t _local_n = 0
cdef char _iso[64]
cdef Py_ssize_t _iso_n = 0
cdef char _sys[32]
cdef Py_ssize_t _sys_n = 0
cdef long _msec = 0


cdef void _now() noexcept nogil:
    global _sec, _local_n, _iso_n, _sys_n, _msec
    cdef timespec ts
    cdef tm t
    clock_gettime(CLOCK_REALTIME, &ts)
    _msec = ts.tv_nsec // 1000000
    if ts.tv_sec == _sec:
        return
    _sec = ts.tv_sec
    localtime_r(&_sec, &t)
    _local_n = strftime(_local, sizeof(_local), "%d/%b/%Y:%H:%M:%S %z", &t)
    _iso_n = strftime(_iso, sizeof(_iso), "%Y-%m-%dT%H:%M:%S%z", &t)
    if _iso_n >= 5:
        # nginx's $time_iso8601: +hh:mm
        _iso[_iso_n + 1] = 0
        _iso[_iso_n] = _iso[_iso_n - 1]
        _iso[_iso_n - 1] = _iso[_iso_n - 2]
        _iso[_iso_n - 2] = b':'
        _iso_n += 1
    _sys_n = strftime(_sys, sizeof(_sys), "%b %e %H:%M:%S", &t)


# --- escaping ------------------------------------------------------------------------------------

cdef inline bint _plain(unsigned char c) noexcept nogil:
    """Kept as is by nginx's access-log escaping."""
    return 0x20 <= c < 0x7f and c != b'"' and c != b'\\'


cdef char *_esc(char *o, const char *src, Py_ssize_t n) noexcept nogil:
    cdef const unsigned char *p = <const unsigned char *>src
    cdef Py_ssize_t i
    cdef unsigned char c
    for i in range(n):
        c = p[i]
        if _plain(c):
            o[0] = <char>c
            o += 1
        else:
            o[0] = b'\\'
            o[1] = b'x'
            o[2] = HEX[c >> 4]
            o[3] = HEX[c & 15]
            o += 4
    return o


cdef inline int _utf8_len(const unsigned char *p, Py_ssize_t n) noexcept nogil:
    """The length of the valid UTF-8 sequence at p (RFC 3629: no overlong forms, no
    surrogates, at most U+10FFFF), or 0."""
    cdef unsigned char c = p[0]
    cdef int need
    cdef unsigned char lo = 0x80, hi = 0xbf
    cdef int i
    if 0xc2 <= c <= 0xdf:
        need = 2
    elif 0xe0 <= c <= 0xef:
        need = 3
        if c == 0xe0:
            lo = 0xa0
        elif c == 0xed:
            hi = 0x9f
    elif 0xf0 <= c <= 0xf4:
        need = 4
        if c == 0xf0:
            lo = 0x90
        elif c == 0xf4:
            hi = 0x8f
    else:
        return 0
    if n < need or not lo <= p[1] <= hi:
        return 0
    for i in range(2, need):
        if not 0x80 <= p[i] <= 0xbf:
            return 0
    return need


cdef char *_esc_json(char *o, const char *src, Py_ssize_t n) noexcept nogil:
    cdef const unsigned char *p = <const unsigned char *>src
    cdef Py_ssize_t i = 0
    cdef unsigned char c
    cdef int k
    while i < n:
        c = p[i]
        if c >= 0x80:
            k = _utf8_len(p + i, n - i)
            if k:
                memcpy(o, p + i, k)
                o += k
                i += k
                continue
        if 0x20 <= c < 0x7f:
            if c == b'"' or c == b'\\':
                o[0] = b'\\'
                o += 1
            o[0] = <char>c
            o += 1
        elif c == b'\n':
            o[0] = b'\\'
            o[1] = b'n'
            o += 2
        elif c == b'\r':
            o[0] = b'\\'
            o[1] = b'r'
            o += 2
        elif c == b'\t':
            o[0] = b'\\'
            o[1] = b't'
            o += 2
        else:
            # control bytes, DEL, and bytes that are not UTF-8: the code point of the byte
            memcpy(o, b"\\u00", 4)
            o[4] = HEX[c >> 4]
            o[5] = HEX[c & 15]
            o += 6
        i += 1
    return o


# --- formats -------------------------------------------------------------------------------------

cdef class Format:
    """A log_format compiled for the engine: `parts` are (text, None) or ("", field name)."""

    def __init__(self, str name, bint json, list parts):
        cdef int i = 0
        self.name = name
        self.json = json
        self.keep = []
        self.fixed = 0
        self.nops = len(parts)
        self.field = <int *>malloc(max(self.nops, 1) * sizeof(int))
        self.lit = <const char **>malloc(max(self.nops, 1) * sizeof(char *))
        self.lit_len = <Py_ssize_t *>malloc(max(self.nops, 1) * sizeof(Py_ssize_t))
        if self.field == NULL or self.lit == NULL or self.lit_len == NULL:
            raise MemoryError()
        for text, field in parts:
            if field is None:
                b = text.encode("utf-8", "surrogateescape")
                self.keep.append(b)
                self.field[i] = -1
                self.lit[i] = <const char *>b
                self.lit_len[i] = len(b)
                self.fixed += len(b)
            else:
                self.field[i] = FIELDS.index(field)
                self.lit[i] = NULL
                self.lit_len[i] = 0
                if self.field[i] in (F_SERVER_ADDR, F_SERVER_PORT, F_SERVER):
                    self.needs_local = True
            i += 1

    def __dealloc__(self):
        free(self.field)
        free(self.lit)
        free(self.lit_len)

    def render(self, dict values):
        """The line for `values` (field name -> bytes, int or None): tests and tools."""
        cdef Record r
        cdef char *out
        cdef Py_ssize_t n
        _record(&r, values)
        out = <char *>malloc(_bound(self, &r))
        if out == NULL:
            raise MemoryError()
        try:
            n = _format(self, &r, out) - out
            return out[:n]
        finally:
            free(out)


cdef void _record(Record *r, dict values):
    """A Record of `values` (field name -> bytes or int); the bytes stay the caller's."""
    memset(r, 0, sizeof(Record))
    for i, name in enumerate(FIELDS):
        v = values.get(name)
        r.v[i] = -1 if name.endswith("port") or name == "upstream" else 0
        if isinstance(v, bytes):
            r.s[i] = <const char *>(<bytes>v)
            r.n[i] = len(<bytes>v)
        elif isinstance(v, int):
            r.v[i] = v


cdef inline Py_ssize_t _str_bound(Record *r, int f) noexcept nogil:
    return 6 * r.n[f] + 2 if r.s[f] != NULL else 2


cdef Py_ssize_t _bound(Format f, Record *r) noexcept:
    """At most the bytes _format writes."""
    cdef Py_ssize_t total = f.fixed + 1
    cdef int i, k
    for i in range(f.nops):
        k = f.field[i]
        if k < 0:
            continue
        if k == F_CLIENT:
            total += _str_bound(r, F_REMOTE_ADDR) + 24
        elif k == F_UPSTREAM:
            total += _str_bound(r, F_UPSTREAM) + 24
        elif k == F_SERVER:
            total += _str_bound(r, F_SERVER_ADDR) + 24
        elif r.s[k] != NULL:
            total += _str_bound(r, k)
        else:
            total += 64     # numbers, times, the session id
    return total


cdef char *_str(Format f, char *o, const char *s, Py_ssize_t n) noexcept nogil:
    if s == NULL:
        if not f.json:
            o[0] = b'-'
            o += 1
        return o
    return _esc_json(o, s, n) if f.json else _esc(o, s, n)


cdef char *_addr(Format f, char *o, Record *r, int a, int p) noexcept nogil:
    """address:port, [IPv6]:port, or a unix socket's `unix:...` alone."""
    cdef const char *s = r.s[a]
    if s == NULL:
        return _str(f, o, NULL, 0)
    if r.v[p] < 0:
        return _str(f, o, s, r.n[a])
    if memchr(s, b':', r.n[a]) != NULL:
        o[0] = b'['
        o = _str(f, o + 1, s, r.n[a])
        o[0] = b']'
        o += 1
    else:
        o = _str(f, o, s, r.n[a])
    return o + snprintf(o, 24, ":%lld", r.v[p])


cdef char *_format(Format f, Record *r, char *o) noexcept:
    cdef int i, k
    cdef long long v
    _now()
    for i in range(f.nops):
        k = f.field[i]
        if k < 0:
            memcpy(o, f.lit[i], f.lit_len[i])
            o += f.lit_len[i]
        elif k == F_TIME_LOCAL:
            memcpy(o, _local, _local_n)
            o += _local_n
        elif k == F_TIME_ISO8601:
            memcpy(o, _iso, _iso_n)
            o += _iso_n
        elif k == F_MSEC:
            o += snprintf(o, 32, "%lld.%03ld", <long long>_sec, _msec)
        elif k == F_CLIENT:
            o = _addr(f, o, r, F_REMOTE_ADDR, F_REMOTE_PORT)
        elif k == F_SERVER:
            o = _addr(f, o, r, F_SERVER_ADDR, F_SERVER_PORT)
        elif k == F_UPSTREAM:
            o = _addr(f, o, r, F_UPSTREAM, F_UPSTREAM)     # v: its port
        elif k == F_DURATION:
            v = r.v[k]
            o += snprintf(o, 32, "%lld.%03lld", v // 1000, v % 1000)
        elif k == F_SESSION_ID:
            o += snprintf(o, 48, "%lld-%lld", r.v[F_PID], r.v[F_CONNECTION])
        elif k == F_REMOTE_PORT or k == F_SERVER_PORT:
            if r.v[k] < 0:
                o = _str(f, o, NULL, 0)
            else:
                o += snprintf(o, 24, "%lld", r.v[k])
        elif (k == F_BYTES_IN or k == F_BYTES_OUT or k == F_UPSTREAM_BYTES_IN
              or k == F_UPSTREAM_BYTES_OUT or k == F_CONNECTION or k == F_PID):
            o += snprintf(o, 24, "%lld", r.v[k])
        else:
            o = _str(f, o, r.s[k], r.n[k])
    return o


cdef int alog_write(tuple logs, Record *r) except -1:
    """Each (Writer, Format) of a server{} takes the session's line."""
    cdef Writer w
    r.v[F_PID] = _pid
    for pair in logs:
        w = <Writer>(<tuple>pair)[0]
        w.line(<Format>(<tuple>pair)[1], r)
    return 0


# --- writers -------------------------------------------------------------------------------------

cdef class Writer(Watcher):
    """One access log target in a worker: a file descriptor (opened by the master, or by
    reopen()) or a syslog server (`server` = (family, host, port), `pri`, `head`)."""

    def __init__(self, Loop loop, str name, log, *, int fd=-1, path=None, Py_ssize_t size=0,
                 int64_t flush_ms=0, server=None, int pri=190, bytes head=b""):
        global _pid
        _pid = getpid()     # writers are made in the process that writes
        self.loop = loop
        self.name = name
        self.log = log
        self.path = path
        self.fd = fd
        self.size = size
        self.flush_ms = flush_ms
        self.limit = max(4 * size, MIN_LIMIT)
        self.alloc = size if size else UNBUFFERED
        self.buf = <char *>malloc(self.alloc)
        if self.buf == NULL:
            raise MemoryError()
        if server is not None:
            self.syslog = True
            self.pri = pri
            self.head = head
            self._address(*server)
            self.fd = socket.socket(server[0], socket.SOCK_DGRAM).detach()
            os.set_blocking(self.fd, False)
        elif fd >= 0:
            os.set_blocking(fd, False)

    def __dealloc__(self):
        free(self.buf)

    def _address(self, int family, str host, int port):
        cdef bytes raw
        memset(self.addr, 0, sizeof(self.addr))
        if family == socket.AF_UNIX:
            raw = host.encode()
            if len(raw) >= 108:
                raise ValueError("too long a unix socket path")
            (<unsigned short *>self.addr)[0] = family
            memcpy(self.addr + 2, <const char *>raw, len(raw))
            self.addrlen = 2 + len(raw) + 1
            return
        packed = socket.inet_pton(family, host)
        (<unsigned short *>self.addr)[0] = family
        self.addr[2] = (port >> 8) & 0xff
        self.addr[3] = port & 0xff
        if family == socket.AF_INET:
            memcpy(self.addr + 4, <const char *>packed, 4)
            self.addrlen = 16
        else:
            memcpy(self.addr + 8, <const char *>packed, 16)
            self.addrlen = 28

    @property
    def pending(self):
        """Bytes not written yet."""
        return self.len

    cdef int line(self, Format f, Record *r) except -1:
        cdef Py_ssize_t bound
        cdef char *grown
        if self.syslog:
            return self._send(f, r)
        bound = _bound(f, r)
        if self.len + bound > self.alloc:
            self._flush()
            if self.len + bound > self.alloc:
                if self.len + bound > self.limit:
                    return self._drop(1, "the file does not take lines fast enough")
                grown = <char *>realloc(self.buf, self.len + bound)
                if grown == NULL:
                    return self._drop(1, "out of memory")
                self.buf = grown
                self.alloc = self.len + bound
        self.len = _format(f, r, self.buf + self.len) - self.buf
        self.buf[self.len] = b'\n'
        self.len += 1
        mx_inc(self.mx_lines)
        if self.size == 0 or self.len >= self.size:
            return self._flush()
        if self.flush_ms and not timer_armed(&self.t):
            self.loop.queue(self.flush_ms).add(&self.t, self, 0)
        return 0

    cdef int _send(self, Format f, Record *r) except -1:
        cdef char *out
        cdef Py_ssize_t n, bound = _bound(f, r) + 64 + len(self.head)
        cdef ssize_t sent
        cdef int err
        if bound > SYSLOG_MAX:
            return self._drop(1, "a line longer than a datagram")
        out = <char *>malloc(bound)
        if out == NULL:
            return self._drop(1, "out of memory")
        _now()
        n = snprintf(out, 16, "<%d>", self.pri)
        memcpy(out + n, _sys, _sys_n)
        n += _sys_n
        memcpy(out + n, <const char *>self.head, len(self.head))
        n += len(self.head)
        n = _format(f, r, out + n) - out
        while True:
            sent = fm_sendto(self.fd, out, n, MSG_DONTWAIT | MSG_NOSIGNAL, self.addr, self.addrlen)
            err = errno
            if sent < 0 and err == EINTR:
                continue
            break
        free(out)
        mx_inc(self.mx_lines)
        if sent < 0:
            return self._drop(1, "sendto() failed (%d: %s) while logging to syslog, server: %s"
                              % (err, os.strerror(err), self.name[7:]))
        if self.failing:
            self._recovered()
        return 0

    cdef int _flush(self) except -1:
        cdef ssize_t n
        cdef int err
        cdef long long lines
        while self.len > 0:
            n = write(self.fd, self.buf, self.len)
            if n > 0:
                self.len -= n
                memmove(self.buf, self.buf + n, self.len)
                continue
            err = errno
            if n < 0 and err == EINTR:
                continue
            if n < 0 and err == EAGAIN:
                # a pipe that is full: pending lines wait (up to `limit`), tried again soon
                if not timer_armed(&self.t):
                    self.loop.queue(RETRY_MS).add(&self.t, self, 0)
                return 0
            lines = self._pending_lines()
            self.len = 0
            return self._drop(lines, f'write() to "{self.path}" failed ({err}: '
                                     f'{os.strerror(err)})')
        if self.failing:
            self._recovered()
        return 0

    cdef long long _pending_lines(self) noexcept:
        """Lines pending, the one partly written included."""
        cdef long long lines = 0
        cdef const char *p = self.buf
        cdef const char *end = self.buf + self.len
        while p < end:
            p = <const char *>memchr(p, b'\n', end - p)
            if p == NULL:
                break
            lines += 1
            p += 1
        return lines

    cdef int _drop(self, long long lines, str why) except -1:
        mx_add(self.mx_dropped, lines)
        self.lost += lines
        if not self.failing:
            self.failing = True
            self.log.log(ALERT, f"access log {self.name}: {why}, lines are lost")
        return 0

    cdef int _recovered(self) except -1:
        self.failing = False
        self.log.log(NOTICE, f"access log {self.name} takes lines again, {self.lost} were lost")
        self.lost = 0
        return 0

    cdef int expired(self, int kind) except -1:
        return self._flush()

    def flush(self):
        """Writes what is pending now (exit, reopen, tests)."""
        timer_cancel(&self.t)
        self._flush()
        if self.len and self.flush_ms:
            self.loop.queue(RETRY_MS).add(&self.t, self, 0)

    def reopen(self):
        """USR1: pending lines go to the old file, then the path is opened again; if that
        fails, the old file stays and the reason is logged."""
        if self.syslog or self.path is None:
            return
        self.flush()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK
                         | os.O_CLOEXEC, 0o644)
        except OSError as e:
            self.log.log(ALERT, f'open() "{self.path}" failed ({e.errno}: {e.strerror})')
            return
        if self.fd >= 0:
            c_close(self.fd)
        self.fd = fd

    def close(self):
        """The worker exits: what is pending is written if it can be, then closed."""
        timer_cancel(&self.t)
        if not self.syslog:
            self._flush()
            if self.len:
                self._drop(self._pending_lines(), "the file did not take the last lines")
                self.len = 0
        if self.fd >= 0:
            c_close(self.fd)
            self.fd = -1

    def put(self, Format f, dict values):
        """One line, as a session's end writes it (tests, tools)."""
        cdef Record r
        _record(&r, values)
        self.line(f, &r)
