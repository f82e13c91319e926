# cython: language_level=3
"""The auth_http client of the engine: asks the auth server about a login, on the worker's Loop.

Owns: the connections to the auth server (nonblocking sockets registered once in the Loop,
edge-triggered): nginx's one HTTP/1.0 connection per request, closed as soon as the header
block is read (auth_http_keepalive 0), or HTTP/1.1 keep-alive connections reused while idle
(up to the pool size; the body drained first, bounded), with one retry on a fresh connection
when a kept-alive one turns out closed; one deadline per request (auth_http_timeout: connect,
send and the whole header block, never re-armed) as a timer node inside the connection; the
WAIT loop; Auth-User/Auth-Pass applied to the AuthRequest. Python runs only for what is rare:
an Auth-Wait delay (call_later), an Auth-Server host name (resolver.py), a connection error,
an answer the C reader leaves to auth_http.ResponseReader. No TCP_NODELAY: a request is one
write on a connection with nothing unacknowledged, so Nagle never holds it.
Must not: parse HTTP or build requests (_authproto, _authreq do), log (the session logs the
result's line), or know what the asker does with the answer. Mirrors ngx_mail_auth_http_module.c
(ngx_mail_auth_http_init, _write_handler, _read_handler).
"""

cimport cython
from libc.errno cimport errno, EAGAIN, EINTR, EINPROGRESS, ECONNREFUSED
from libc.stdint cimport uint32_t, int64_t
from libc.string cimport memset, memcpy, strlen
from posix.unistd cimport close as c_close

from fastmail._poll cimport (Loop, Watcher, TNode, TimerQueue, timer_cancel, EPOLLIN, EPOLLOUT,
                             EPOLLRDHUP, EPOLLET, EPOLLERR, EPOLLHUP)
from fastmail._core cimport AuthRequest
from fastmail._conn cimport os_error
from fastmail._authproto cimport (AuthResult, AnswerReader, error_result, R_MORE, R_HEAD,
                                  R_ERROR, B_CLOSE, B_KEEP, B_DRAIN, WAIT_IMMEDIATE_RETRIES)
from fastmail._authreq cimport RequestTemplate

import os

cdef extern from "_debug.h":
    bint FASTMAIL_DEBUG

cdef extern from *:
    """
    #include <arpa/inet.h>
    #include <netinet/in.h>
    #include <sys/socket.h>
    #include <sys/un.h>
    """
    ctypedef unsigned int socklen_t
    struct sockaddr:
        pass
    struct in_addr:
        pass
    struct in6_addr:
        pass
    struct sockaddr_in:
        int sin_family
        unsigned short sin_port
        in_addr sin_addr
    struct sockaddr_in6:
        int sin6_family
        unsigned short sin6_port
        in6_addr sin6_addr
    struct sockaddr_un:
        int sun_family
        char sun_path[108]
    int socket(int domain, int type, int protocol) nogil
    int connect(int fd, const sockaddr *addr, socklen_t len) nogil
    ssize_t send(int fd, const void *buf, size_t n, int flags) nogil
    ssize_t recv(int fd, void *buf, size_t n, int flags) nogil
    int getsockopt(int fd, int level, int name, void *val, socklen_t *len) nogil
    int inet_pton(int af, const char *src, void *dst) nogil
    unsigned short htons(unsigned short v) nogil
    int AF_INET, AF_INET6, AF_UNIX, SOCK_STREAM, SOCK_NONBLOCK, SOCK_CLOEXEC, SOL_SOCKET
    int SO_ERROR, MSG_NOSIGNAL

# Connection states
cdef enum:
    C_CONNECTING = 1
    C_SENDING = 2
    C_READING = 3
    C_DRAINING = 4
    C_IDLE = 5
    C_CLOSED = 6

# Timer kinds of a connection's node
cdef enum:
    K_DEADLINE = 1
    K_DRAIN = 2

cdef int64_t DRAIN_MS = 5000             # a kept-alive connection's body must come this fast
cdef uint32_t EVENTS = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
cdef uint32_t GONE = EPOLLRDHUP | EPOLLHUP | EPOLLERR

cdef long _live = 0                      # debug build: auth connections open (pooled + busy)


def live_count():
    """Auth connections open in this process (pooled and busy); counted in the debug build
    (FASTMAIL_DEBUG=1) only, 0 otherwise."""
    return _live


DEBUG_BUILD = bool(FASTMAIL_DEBUG)  # live_count() counts
globals()["DONE_AUTH"] = DONE_AUTH
globals()["AuthResult"] = AuthResult  # what completed() receives, for Python code


cdef bint _salted(AuthRequest auth) noexcept:
    return auth.salt and (auth.method == b"apop" or auth.method == b"cram-md5")


# --- one request, from the first send to the result ---------------------------------------------

@cython.freelist(64)
cdef class _Ask:

    cdef int send(self) except -1:
        """Builds the request (again for a WAIT repeat: same Auth-Login-Attempt, Auth-User
        applied) and puts it on a pooled connection or a new one."""
        cdef AuthClient client = self.client
        cdef AuthRequest auth = self.auth
        cdef _Conn conn
        self.timer = None
        self.request = client.tpl.build(auth, self.client_ip, self.client_host,
                                        self.proxy_protocol, self.ssl_info)
        if self.trace is not None:
            self.trace.auth_request(self.request)
        if _salted(auth):
            auth.passwd = b""  # nginx forgets the password once the salt went out
        self.retried = False
        conn = client._acquire()
        if conn is not None:
            conn.start(self, client.loop.now + client._tq.delay)
        else:
            client._open(self, client.loop.now + client._tq.delay)
        return 0

    def _resend(self):
        self.timer = None
        if self.watcher is not None:
            self.send()

    cdef int answered(self, AuthResult r) except -1:
        """The request ended: an answer, or an error. WAIT is handled here; a session only
        ever sees ok, fail or error."""
        cdef AuthClient client = self.client
        self.conn = None
        if self.watcher is None:
            return 0
        # nginx applies these as it reads them (ngx_mail_auth_http_process_headers), whatever
        # the outcome: a failure or a WAIT answer replaces the login and password too
        if r.user is not None:
            self.auth.user = r.user
        if r.passwd is not None:
            self.auth.passwd = r.passwd
        if r.status == "wait":
            if r.wait > 0:
                self.waits = 0
                self.timer = client.loop.call_later(r.wait, self._resend)
                return 0
            self.waits += 1
            if self.waits <= WAIT_IMMEDIATE_RETRIES:
                return self.send()
            r = error_result(f"auth http server {client.peer} sent WAIT without Auth-Wait "
                             f"{self.waits} times", r.user, r.passwd)
        if r.status == "ok" and r.addr is None and client.resolver is not None:
            self.pending = r
            lookup = client.resolver.resolve_name(r.server, self._resolved)
            if self.pending is not None:  # not answered from the cache at once
                self.lookup = lookup
            return 0
        return self.deliver(r)

    def _resolved(self, list addrs, err):
        cdef AuthResult r = self.pending
        self.lookup = None
        self.pending = None
        if r is None or self.watcher is None:
            return
        if addrs:
            r.addr = addrs[0]
            self.deliver(r)
            return
        v = r.server.decode("utf-8", "backslashreplace")
        self.deliver(error_result(
            f'auth http server {self.client.peer} sent server name "{v}" that could not be '
            f"resolved ({err})", r.user, r.passwd))

    cdef int deliver(self, AuthResult r) except -1:
        cdef Watcher w = self.watcher
        if w is None:
            return 0
        if self.starting:
            self.client.loop.call_soon(self._deliver_later, r)
            return 0
        self.watcher = None
        w.completed(DONE_AUTH, r)
        return 0

    def _deliver_later(self, AuthResult r):
        self.deliver(r)

    cdef void drop(self) noexcept:
        """The asker left: no result will be delivered; the connection is not reused."""
        cdef _Conn conn = self.conn
        self.watcher = None
        self.pending = None
        if conn is not None:
            self.conn = None
            conn.ask = None
            conn._close()
        try:
            if self.timer is not None:
                self.timer.cancel()
            if self.lookup is not None:
                self.lookup.cancel()
        except BaseException as e:
            self.client.loop.report(e, "auth cancel")
        self.timer = None
        self.lookup = None


# --- one connection to the auth server ----------------------------------------------------------

cdef class _Conn(Watcher):

    cdef int start(self, _Ask ask, int64_t when) except -1:
        """Carries ask's request; its deadline is `when` (loop ms)."""
        self.ask = ask
        ask.conn = self
        self.out = ask.request
        self.out_off = 0
        self.reader.reset()
        self.client._tq.add_at(&self.node, self, K_DEADLINE, when)
        if self.state != C_CONNECTING:
            self.state = C_SENDING
            return self._send()
        return 0

    cdef int io(self, int side, uint32_t events) except -1:
        cdef int err = 0
        cdef socklen_t elen = sizeof(int)
        cdef int state = self.state
        if state == C_CONNECTING:
            if events & (EPOLLERR | EPOLLHUP):
                getsockopt(self.fd, SOL_SOCKET, SO_ERROR, &err, &elen)
                return self._lost(err or ECONNREFUSED, "connect")
            if not events & EPOLLOUT:
                return 0
            self.state = state = C_SENDING
        if state == C_SENDING:
            if events & (EPOLLOUT | EPOLLERR | EPOLLHUP):
                self._send()
            if self.state != C_READING:
                return 0
            state = C_READING
        if not events & (EPOLLIN | GONE):
            return 0
        if state == C_READING:
            return self._read(events)
        if state == C_DRAINING:
            return self._drain(events)
        if state == C_IDLE:
            self._close()  # the server closed it, or sent bytes nobody asked for
        return 0

    cdef int _send(self) except -1:
        cdef ssize_t n
        cdef Py_ssize_t size = len(self.out) - self.out_off
        cdef const char *p = self.out
        while True:
            n = send(self.fd, p + self.out_off, size, MSG_NOSIGNAL)
            if n >= 0:
                self.out_off += n
                if n == size:
                    self.state = C_READING
                    self.out = None
                    return 0
                size -= n
                continue
            if errno == EINTR:
                continue
            if errno == EAGAIN:
                return 0  # the next EPOLLOUT edge continues
            return self._lost(errno, "send")

    cdef int _read(self, unsigned int events) except -1:
        cdef AnswerReader reader = self.reader
        cdef _Ask ask
        cdef Py_ssize_t room
        cdef char *buf
        cdef ssize_t n
        cdef int rc
        while True:
            buf = reader.recv_buf(&room)
            n = recv(self.fd, buf, room, 0)
            if n > 0:
                rc = reader.got(n)
                if rc == R_HEAD:
                    return self._answered(n == room, events)
                if rc == R_ERROR:
                    ask = self.ask
                    self.ask = None
                    self._close()
                    return ask.answered(reader.error(self.client.peer)) if ask else 0
                if n < room and not events & GONE:
                    return 0  # all there was: the next edge brings more
                continue
            if n == 0:
                return self._lost(0, "recv")
            if errno == EINTR:
                continue
            if errno == EAGAIN:
                return 0
            return self._lost(errno, "recv")

    cdef int _answered(self, bint full, unsigned int events) except -1:
        """The header block is in: interpret it, decide the connection's fate, answer."""
        cdef AuthClient client = self.client
        cdef _Ask ask = self.ask
        cdef AuthResult r
        cdef int verdict
        if ask is None:
            self._close()
            return 0
        if ask.trace is not None:
            ask.trace.auth_answer(self.reader.headers())
        r = self.reader.interpret(ask.auth, client.peer, client.allow_names)
        verdict = self.reader.body(client.pool_size > 0 and not client.closed)
        self.ask = None
        timer_cancel(&self.node)
        if verdict == B_KEEP and not full and not events & GONE:
            self._release()
        elif verdict == B_DRAIN and not events & GONE:
            self.state = C_DRAINING
            client._draining.add(self)
            client._dq.add(&self.node, self, K_DRAIN)
            if full:
                self._drain(events)  # more may wait behind a full read
        else:
            self._close()
        return ask.answered(r)

    cdef int _drain(self, unsigned int events) except -1:
        cdef AnswerReader reader = self.reader
        cdef Py_ssize_t room
        cdef char *buf
        cdef ssize_t n
        cdef int verdict
        while True:
            buf = reader.recv_buf(&room)
            n = recv(self.fd, buf, room, 0)
            if n > 0:
                verdict = reader.drain(n)
                if verdict == B_KEEP and n < room and not events & GONE:
                    self._release()
                    return 0
                if verdict != B_DRAIN:
                    self._close()
                    return 0
                if n < room and not events & GONE:
                    return 0
                continue
            if n < 0 and errno == EINTR:
                continue
            if n < 0 and errno == EAGAIN:
                return 0
            self._close()
            return 0

    cdef int _release(self) except -1:
        """Back to the pool, or closed when the pool is full or shut."""
        cdef AuthClient client = self.client
        timer_cancel(&self.node)
        if self.state == C_DRAINING:
            client._draining.discard(self)
        if client.closed or len(client._idle) >= client.pool_size:
            self._close()
            return 0
        self.state = C_IDLE
        client._idle.append(self)
        return 0

    cdef int _lost(self, int err, str call) except -1:
        """The connection failed under a request: a kept-alive one that the server had closed
        before any answer came is asked once more on a fresh connection (same deadline)."""
        cdef _Ask ask = self.ask
        cdef int64_t when = self.node.when
        cdef bint again = self.reused and self.reader.received == 0
        self.ask = None
        self._close()
        if ask is None:
            return 0
        ask.conn = None
        if again and not ask.retried:
            ask.retried = True
            return self.client._open(ask, when)
        return ask.answered(error_result(os_error(call, err) if err else None))

    cdef int expired(self, int kind) except -1:
        cdef _Ask ask = self.ask
        self.ask = None
        self._close()
        if kind == K_DEADLINE and ask is not None:
            ask.answered(error_result(
                f"auth http server {self.client.peer} timed out (110: Connection timed out)"))
        return 0

    cdef void _close(self) noexcept:
        global _live
        if self.fd < 0:
            return
        timer_cancel(&self.node)
        try:
            if self.state == C_IDLE:
                self.client._idle.remove(self)
            elif self.state == C_DRAINING:
                self.client._draining.discard(self)
        except ValueError:
            pass
        self.state = C_CLOSED
        self.out = None
        if self.registered:
            self.registered = False
            self.client.loop.unregister(self)
        c_close(self.fd)
        self.fd = -1
        if FASTMAIL_DEBUG:
            _live -= 1


# --- the client ----------------------------------------------------------------------------------

cdef class AuthClient:
    """The auth_http server of one config: `host`/`port` (the address the config resolved at
    load; nginx uses the first) or `unix_path`; `path` the URI, `host_header` the Host value;
    `timeout_ms` auth_http_timeout; `pool_size` > 0 keeps that many idle HTTP/1.1 connections
    (beyond nginx), 0 is nginx's HTTP/1.0 connection per request; `resolver` (resolver.py on
    the same loop) allows host names in Auth-Server; `reader_factory` reads unusual answers
    (auth_http.ResponseReader)."""

    def __init__(self, Loop loop, str host, int port, bytes path, bytes host_header,
                 long timeout_ms, int pool_size=64, *, str unix_path=None,
                 list extra_headers=None, bint pass_client_cert=False, resolver=None,
                 reader_factory=None):
        cdef sockaddr_in *a4 = <sockaddr_in *>self._sa
        cdef sockaddr_in6 *a6 = <sockaddr_in6 *>self._sa
        cdef sockaddr_un *au = <sockaddr_un *>self._sa
        cdef bytes raw
        if reader_factory is None:
            raise TypeError("reader_factory is required (auth_http.ResponseReader)")
        memset(self._sa, 0, sizeof(self._sa))
        if unix_path is not None:
            raw = os.fsencode(unix_path)
            if len(raw) >= <Py_ssize_t>sizeof(au.sun_path):
                raise ValueError(f'unix socket path "{unix_path}" is too long')
            au.sun_family = AF_UNIX
            memcpy(au.sun_path, <const char *>raw, len(raw))
            self._salen = <unsigned int>(<char *>au.sun_path - <char *>au) + len(raw) + 1
            self._family = AF_UNIX
            self.peer = f"unix:{unix_path}"
        else:
            raw = host.encode("ascii")
            if inet_pton(AF_INET, raw, &a4.sin_addr) == 1:
                a4.sin_family = AF_INET
                a4.sin_port = htons(port)
                self._salen = sizeof(sockaddr_in)
                self._family = AF_INET
                self.peer = f"{host}:{port}"
            elif inet_pton(AF_INET6, raw, &a6.sin6_addr) == 1:
                a6.sin6_family = AF_INET6
                a6.sin6_port = htons(port)
                self._salen = sizeof(sockaddr_in6)
                self._family = AF_INET6
                self.peer = f"[{host}]:{port}"
            else:
                raise ValueError(f'invalid auth_http address "{host}"')
        self.loop = loop
        self.pool_size = pool_size
        self.tpl = RequestTemplate(path, host_header, extra_headers, pool_size > 0,
                                   pass_client_cert)
        self.reader_factory = reader_factory
        self._tq = loop.queue(timeout_ms)
        self._dq = loop.queue(DRAIN_MS)
        self._idle = []
        self._draining = set()
        self.resolver = resolver
        self.allow_names = resolver is not None

    cpdef object ask(self, Watcher w, AuthRequest auth, bytes client_ip, object client_host,
                     object proxy_protocol, object ssl_info, object trace=None):
        """Asks about `auth`; w.completed(DONE_AUTH, result) follows on the loop, never from
        inside ask(). `client_host` is bytes for SMTP (None: no Client-Host line),
        `proxy_protocol` None or (src, sport, dst, dport), `ssl_info` None or the dict
        tls.ssl_info gives, `trace` a debuglog.Trace that gets every request and answer
        (debug level only). Returns the handle cancel() takes."""
        cdef _Ask a = _Ask.__new__(_Ask)
        a.client = self
        a.watcher = w
        a.auth = auth
        a.client_ip = client_ip
        a.client_host = client_host
        a.proxy_protocol = proxy_protocol
        a.ssl_info = ssl_info
        a.trace = trace
        a.starting = True
        try:
            a.send()
        finally:
            a.starting = False
        return a

    cpdef cancel(self, object handle):
        """The asker left: completed() never comes, the request's connection is closed."""
        if handle is not None:
            (<_Ask?>handle).drop()

    cdef _Conn _acquire(self):
        cdef _Conn conn
        if self._idle:
            conn = self._idle.pop()
            conn.reused = True
            conn.state = C_SENDING
            return conn
        return None

    cdef int _open(self, _Ask ask, int64_t when) except -1:
        """A new connection for ask (socket, connect, one epoll registration)."""
        global _live
        cdef _Conn conn
        cdef int fd = socket(self._family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
        cdef int rc, err
        if fd < 0:
            return ask.answered(error_result(os_error("socket", errno)))
        if FASTMAIL_DEBUG:
            _live += 1
        conn = _Conn.__new__(_Conn)
        conn.client = self
        conn.fd = fd
        conn.reader = AnswerReader.__new__(AnswerReader)  # no Python call per connection
        conn.reader.factory = self.reader_factory
        conn.reader.reset()
        self.connections_made += 1
        rc = connect(fd, <sockaddr *>self._sa, self._salen)
        if rc < 0 and errno != EINPROGRESS:
            err = errno
            conn._close()
            return ask.answered(error_result(os_error("connect", err)))
        try:
            self.loop.register(fd, conn, 0, EVENTS)
        except OSError as e:
            conn._close()
            return ask.answered(error_result(os_error("epoll_ctl", e.errno)))
        conn.registered = True
        conn.state = C_CONNECTING if rc < 0 else C_SENDING
        return conn.start(ask, when)

    def close(self):
        """Reload or shutdown: idle connections and bodies being drained close now; busy ones
        after their answer (a request in flight is not lost)."""
        cdef _Conn conn
        self.closed = True
        while self._idle:
            conn = self._idle.pop()
            conn.state = C_CLOSED  # out of the list already
            conn._close()
        for conn in list(self._draining):
            conn._close()

    def idle_count(self):
        return len(self._idle)
