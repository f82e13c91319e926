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
Beyond nginx: several URLs (`Target`s), the next one asked when one is down (connect or TLS
failure, the deadline, a connection closed before the answer, a 5xx status) within the same
request, and a down URL asked last for DOWN_MS; https URLs (TLS on the same connections, kept
alive, sessions resumed); the cache of answers (_authcache.pyx) in front of it all.
Must not: parse HTTP or build requests (_authproto, _authreq do), log (the session logs the
result's lines), or know what the asker does with the answer. Mirrors ngx_mail_auth_http_module.c
(ngx_mail_auth_http_init, _write_handler, _read_handler).
"""

cimport cython
from libc.errno cimport errno, EAGAIN, EINTR, EINPROGRESS, ECONNREFUSED
from libc.stdint cimport uint32_t, int64_t
from posix.unistd cimport close as c_close

from fastmail._poll cimport (Loop, Watcher, TNode, TimerQueue, timer_cancel, EPOLLIN, EPOLLOUT,
                             EPOLLRDHUP, EPOLLET, EPOLLERR, EPOLLHUP)
from fastmail._core cimport AuthRequest
from fastmail._conn cimport os_error
from fastmail._authproto cimport (AuthResult, AnswerReader, error_result, R_MORE, R_HEAD,
                                  R_ERROR, B_CLOSE, B_KEEP, B_DRAIN, WAIT_IMMEDIATE_RETRIES)
from fastmail._authreq cimport RequestTemplate, Extra
from fastmail._authcache cimport AuthCache
from fastmail._openssl cimport SSL
from fastmail._tls cimport (tls_connect, tls_handshake, tls_read, tls_write, tls_shutdown,
                            tls_free, tls_error, tls_get_session, tls_set_session, TLS_OK,
                            TLS_FAIL, TLS_WANT_READ, TLS_WANT_WRITE, TLS_CLOSED)
from fastmail._tlsctx cimport ClientContext
from fastmail._authurl cimport Target


cdef extern from "_debug.h":
    bint FASTMAIL_DEBUG

cdef extern from *:
    """
    #include <sys/socket.h>
    """
    ctypedef unsigned int socklen_t
    struct sockaddr:
        pass
    int socket(int domain, int type, int protocol) nogil
    int connect(int fd, const sockaddr *addr, socklen_t len) nogil
    ssize_t send(int fd, const void *buf, size_t n, int flags) nogil
    ssize_t recv(int fd, void *buf, size_t n, int flags) nogil
    int getsockopt(int fd, int level, int name, void *val, socklen_t *len) nogil
    int SOCK_STREAM, SOCK_NONBLOCK, SOCK_CLOEXEC, SOL_SOCKET, SO_ERROR, MSG_NOSIGNAL

# Connection states
cdef enum:
    C_CONNECTING = 1
    C_SENDING = 2
    C_READING = 3
    C_DRAINING = 4
    C_IDLE = 5
    C_CLOSED = 6
    C_HANDSHAKE = 7

# _Conn._recv results besides bytes read and 0 (EOF)
cdef enum:
    RECV_AGAIN = -1
    RECV_ERROR = -2     # errno says why
    RECV_TLS_ERROR = -3 # tls_error() says why

# Timer kinds of a connection's node
cdef enum:
    K_DEADLINE = 1
    K_DRAIN = 2

cdef int64_t DRAIN_MS = 5000             # a kept-alive connection's body must come this fast
cdef int64_t DOWN_MS = 10000             # a URL found down is asked last for this long
                                         # (nginx's upstream fail_timeout default)
cdef uint32_t EVENTS = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
cdef uint32_t GONE = EPOLLRDHUP | EPOLLHUP | EPOLLERR

cdef long _live = 0                      # debug build: auth connections open (pooled + busy)


def live_count():
    """Auth connections open in this process (pooled and busy); counted in the debug build
    (FASTMAIL_DEBUG=1) only, 0 otherwise."""
    return _live


DEBUG_BUILD = bool(FASTMAIL_DEBUG)  # live_count() counts
globals()["DONE_AUTH"] = DONE_AUTH
globals()["DOWN_MS"] = DOWN_MS
globals()["AuthResult"] = AuthResult  # what completed() receives, for Python code


cdef bint _salted(AuthRequest auth) noexcept:
    return auth.salt and (auth.method == b"apop" or auth.method == b"cram-md5")


# --- one request, from the first send to the result ---------------------------------------------

@cython.freelist(64)
cdef class _Ask:

    cdef int send(self) except -1:
        """Builds the request (again for a WAIT repeat: same Auth-Login-Attempt, Auth-User
        applied) and sends it to the first URL not found down."""
        cdef AuthClient client = self.client
        cdef AuthRequest auth = self.auth
        self.timer = None
        self.tried = 0
        self.target = client._pick(0)
        self.request = self.target.tpl.build(auth, self.client_ip, self.client_host,
                                             self.proxy_protocol, self.ssl_info, self.extra)
        if _salted(auth):
            auth.passwd = b""  # nginx forgets the password once the salt went out
        return self._try()

    cdef int _try(self) except -1:
        """Puts the request for self.target on a pooled connection or a new one."""
        cdef AuthClient client = self.client
        cdef Target t = self.target
        cdef _Conn conn
        self.tried |= 1u << t.index
        if self.trace is not None:
            self.trace.auth_request(self.request)
        self.retried = False
        conn = client._acquire(t)
        if conn is not None:
            conn.start(self, client.loop.now + client._tq.delay)
        else:
            client._open(self, client.loop.now + client._tq.delay)
        return 0

    cdef int down(self, Target t, str reason, AuthResult r) except -1:
        """`t` failed under the request (`reason`): the next URL not asked yet gets it, else
        `r` is the answer. A URL found down is asked last for DOWN_MS."""
        cdef AuthClient client = self.client
        cdef Target nxt
        cdef bytes head
        self.conn = None
        if self.watcher is None:
            return 0
        if len(client.targets) == 1:
            return self.answered(r)
        t.down_until = client.loop.now + DOWN_MS
        nxt = client._pick(self.tried)
        if nxt is None:
            return self.answered(r)
        if self.notes is None:
            self.notes = []
        self.notes.append(f"auth http server {t.peer} is down: {reason}; trying {nxt.peer}")
        client.failovers += 1
        # the same request under the next URL's request line and Host
        head = t.tpl.head
        self.request = nxt.tpl.head + self.request[len(head):]
        self.target = nxt
        return self._try()

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
            if r.passwd != self.auth.passwd:
                self.other_pass = True  # the answer may not be kept (not even the password)
            self.auth.passwd = r.passwd
        if r.status == "wait":
            if r.wait > 0:
                self.waits = 0
                self.timer = client.loop.call_later(r.wait, self._resend)
                return 0
            self.waits += 1
            if self.waits <= WAIT_IMMEDIATE_RETRIES:
                return self.send()
            r = error_result(f"auth http server {self.target.peer} sent WAIT without Auth-Wait "
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
            f'auth http server {self.target.peer} sent server name "{v}" that could not be '
            f"resolved ({err})", r.user, r.passwd))

    cdef int deliver(self, AuthResult r) except -1:
        cdef Watcher w = self.watcher
        cdef AuthCache cache = self.client.cache
        if w is None:
            return 0
        if self.starting:
            self.client.loop.call_soon(self._deliver_later, r)
            return 0
        self.watcher = None
        if self.notes is not None:
            r.notes = self.notes
            self.notes = None
        if self.key is not None:
            if (r.status == "ok" or r.status == "fail") and not self.other_pass and (
                    r.cache_key is None):
                # the login as the answers left it (a WAIT's Auth-User included)
                cache.put(self.key, r, self.client.loop.now, self.auth.user)
            r.cache_key = self.key
        try:
            w.completed(DONE_AUTH, r)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as e:
            self.client.loop.fault(e, type(w).__name__, w)
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
        if self.state != C_CONNECTING and self.state != C_HANDSHAKE:
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
            if self.target.tls is not None:
                self.state = C_HANDSHAKE
                self.ssl = <void *>tls_connect(self.target.tls, self.fd, self.target.tls_name)
                if self.target.tls_session is not None:
                    tls_set_session(<SSL *>self.ssl, self.target.tls_session)
                return self._handshake()
            self.state = state = C_SENDING
        elif state == C_HANDSHAKE:
            return self._handshake()
        if self.ssl != NULL:
            if state == C_IDLE:
                return self._idle_tls(events)
            # OpenSSL may want either direction for either operation: any edge goes on
            events |= EPOLLIN | EPOLLOUT
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

    cdef int _idle_tls(self, unsigned int events) except -1:
        """An idle https connection: a late session ticket keeps it, anything else (bytes,
        close_notify, an error) closes it."""
        cdef Py_ssize_t room
        cdef char *buf
        if events & GONE:
            self._close()
        elif events & EPOLLIN:
            buf = self.reader.recv_buf(&room)
            if self._recv(buf, room) != RECV_AGAIN:
                self._close()
        return 0

    cdef int _handshake(self) except -1:
        """https: the TLS handshake under the request's deadline, then the request."""
        cdef int rc = tls_handshake(<SSL *>self.ssl)
        cdef str text
        cdef _Ask ask
        if rc == TLS_OK:
            self.state = C_SENDING
            return self._send()
        if rc != TLS_FAIL:
            return 0    # TLS_WANT_*: the next edge goes on
        text = tls_error()
        if text.startswith("upstream "):    # the backend's wording of a certificate check
            text = text[9:]
        ask = self.ask
        self.ask = None
        self._close()
        if ask is None:
            return 0
        return ask.down(self.target, text, error_result(f"auth http server {self.target.peer} {text}"))

    cdef Py_ssize_t _recv(self, char *buf, Py_ssize_t room) noexcept:
        """Bytes read (> 0), 0 at EOF, RECV_AGAIN, RECV_ERROR or RECV_TLS_ERROR."""
        cdef ssize_t n
        if self.ssl != NULL:
            n = tls_read(<SSL *>self.ssl, buf, room)
            if n > 0:
                return n
            if n == TLS_WANT_READ or n == TLS_WANT_WRITE:
                return RECV_AGAIN
            if n == TLS_CLOSED:
                return 0
            return RECV_TLS_ERROR
        while True:
            n = recv(self.fd, buf, room, 0)
            if n >= 0:
                return n
            if errno == EINTR:
                continue
            if errno == EAGAIN:
                return RECV_AGAIN
            return RECV_ERROR

    cdef int _send(self) except -1:
        cdef ssize_t n
        cdef Py_ssize_t size = len(self.out) - self.out_off
        cdef const char *p = self.out
        while True:
            if self.ssl != NULL:
                n = tls_write(<SSL *>self.ssl, p + self.out_off, size)
                if n == TLS_WANT_READ or n == TLS_WANT_WRITE:
                    return 0
                if n < 0:
                    return self._lost(-1, "SSL_write")
            else:
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
        cdef Py_ssize_t n
        cdef int rc
        while True:
            buf = reader.recv_buf(&room)
            n = self._recv(buf, room)
            if n > 0:
                rc = reader.got(n)
                if rc == R_HEAD:
                    return self._answered(n == room, events)
                if rc == R_ERROR:
                    ask = self.ask
                    self.ask = None
                    self._close()
                    return ask.answered(reader.error(self.target.peer)) if ask else 0
                if n < room and not events & GONE:
                    return 0  # all there was: the next edge brings more
                continue
            if n == 0:
                return self._lost(0, "recv")
            if n == RECV_AGAIN:
                return 0
            return self._lost(-1 if n == RECV_TLS_ERROR else errno, "recv")

    cdef int _answered(self, bint full, unsigned int events) except -1:
        """The header block is in: interpret it, decide the connection's fate, answer."""
        cdef AuthClient client = self.client
        cdef Target t = self.target
        cdef _Ask ask = self.ask
        cdef AuthResult r
        cdef int verdict
        cdef int code = self.reader.code
        if ask is None:
            self._close()
            return 0
        if ask.trace is not None:
            ask.trace.auth_answer(self.reader.headers())
        r = self.reader.interpret(ask.auth, t.peer, client.allow_names)
        verdict = self.reader.body(client.pool_size > 0 and not client.closed)
        self.ask = None
        timer_cancel(&self.node)
        if self.ssl != NULL and not self.resumable:
            # with TLS 1.3 the session ticket came before the answer
            self.resumable = True
            t.tls_session = tls_get_session(<SSL *>self.ssl)
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
        if code >= 500:
            # beyond nginx (which reads any status alike): another URL, if there is one
            return ask.down(t, f"status {code}", r)
        return ask.answered(r)

    cdef int _drain(self, unsigned int events) except -1:
        cdef AnswerReader reader = self.reader
        cdef Py_ssize_t room
        cdef char *buf
        cdef Py_ssize_t n
        cdef int verdict
        while True:
            buf = reader.recv_buf(&room)
            n = self._recv(buf, room)
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
            if n == RECV_AGAIN:
                return 0
            self._close()
            return 0

    cdef int _release(self) except -1:
        """Back to its URL's pool, or closed when the pool is full or shut."""
        cdef AuthClient client = self.client
        cdef list idle = self.target._idle
        timer_cancel(&self.node)
        if self.state == C_DRAINING:
            client._draining.discard(self)
        if client.closed or len(idle) >= client.pool_size:
            self._close()
            return 0
        self.state = C_IDLE
        idle.append(self)
        return 0

    cdef int _lost(self, int err, str call) except -1:
        """The connection failed under a request: a kept-alive one that the server had closed
        before any answer came is asked once more on a fresh connection (same deadline);
        else the URL is down."""
        cdef _Ask ask = self.ask
        cdef int64_t when = self.node.when
        cdef bint again = self.reused and self.reader.received == 0
        cdef Target t = self.target
        cdef str text = None
        if err == -1:
            text = tls_error()
        elif err:
            text = os_error(call, err)
        self.ask = None
        self._close()
        if ask is None:
            return 0
        ask.conn = None
        if again and not ask.retried:
            ask.retried = True
            return self.client._open(ask, when)
        return ask.down(t, text or "connection closed before the answer", error_result(text))

    cdef int expired(self, int kind) except -1:
        cdef _Ask ask = self.ask
        cdef str peer = self.target.peer
        self.ask = None
        self._close()
        if kind == K_DEADLINE and ask is not None:
            ask.down(self.target, "timed out (110: Connection timed out)", error_result(
                f"auth http server {peer} timed out (110: Connection timed out)"))
        return 0

    cdef void _close(self) noexcept:
        global _live
        if self.fd < 0:
            return
        timer_cancel(&self.node)
        try:
            if self.state == C_IDLE:
                self.target._idle.remove(self)
            elif self.state == C_DRAINING:
                self.client._draining.discard(self)
        except ValueError:
            pass
        if self.ssl != NULL:
            if self.state != C_HANDSHAKE:
                tls_shutdown(<SSL *>self.ssl)   # close_notify if the socket takes it now
            tls_free(<SSL *>self.ssl)
            self.ssl = NULL
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
    """The auth_http server of one server{} block: `host`/`port` (the address the config
    resolved at load; nginx uses the first) or `unix_path`; `path` the URI, `host_header` the
    Host value; `tls` (a ClientContext) makes it https, `tls_name` its SNI and verified name;
    `more` further URLs (Target objects) asked when one is down (beyond nginx); `timeout_ms`
    auth_http_timeout, per URL asked; `pool_size` > 0 keeps that many idle HTTP/1.1
    connections per URL (beyond nginx), 0 is nginx's HTTP/1.0 connection per request;
    `resolver` (resolver.py on the same loop) allows host names in Auth-Server;
    `reader_factory` reads unusual answers (auth_http.ResponseReader); `send` the
    auth_http_send words; `cache` an AuthCache (auth_http_cache)."""

    def __init__(self, Loop loop, str host, int port, bytes path, bytes host_header,
                 long timeout_ms, int pool_size=64, *, str unix_path=None,
                 list extra_headers=None, bint pass_client_cert=False, resolver=None,
                 reader_factory=None, ClientContext tls=None, bytes tls_name=None,
                 list more=None, send=(), AuthCache cache=None):
        cdef Target t
        cdef int i
        if reader_factory is None:
            raise TypeError("reader_factory is required (auth_http.ResponseReader)")
        targets = [Target(host, port, path, host_header, unix_path=unix_path, tls=tls,
                          tls_name=tls_name)] + list(more or ())
        if len(targets) > 32:
            raise ValueError("at most 32 auth_http URLs")
        for i, t in enumerate(targets):
            t.index = i
            t.tpl = RequestTemplate(t.path, t.host_header, extra_headers, pool_size > 0,
                                    pass_client_cert)
        self.targets = targets
        self.first = targets[0]
        self.peer = self.first.peer
        self.loop = loop
        self.pool_size = pool_size
        self.reader_factory = reader_factory
        self._tq = loop.queue(timeout_ms)
        self._dq = loop.queue(DRAIN_MS)
        self._draining = set()
        self.resolver = resolver
        self.allow_names = resolver is not None
        self.send_client_port = "client_port" in send
        self.send_server_addr = "server_addr" in send
        self.cache = cache

    cpdef object ask(self, Watcher w, AuthRequest auth, bytes client_ip, object client_host,
                     object proxy_protocol, object ssl_info, object trace=None,
                     Extra extra=None):
        """Asks about `auth`; w.completed(DONE_AUTH, result) follows on the loop, never from
        inside ask(). `client_host` is bytes for SMTP (None: no Client-Host line),
        `proxy_protocol` None or (src, sport, dst, dport), `ssl_info` None or the dict
        tls.ssl_info gives, `trace` a debuglog.Trace that gets every request and answer
        (debug level only), `extra` fastmail's own lines (auth_http_send, a backend
        failover's failed servers). Returns the handle cancel() takes."""
        cdef _Ask a = _Ask.__new__(_Ask)
        cdef AuthCache cache = self.cache
        cdef AuthResult hit
        a.client = self
        a.watcher = w
        a.auth = auth
        a.client_ip = client_ip
        a.client_host = client_host
        a.proxy_protocol = proxy_protocol
        a.ssl_info = ssl_info
        a.extra = extra
        a.trace = trace
        a.starting = True
        try:
            if cache is not None and not _salted(auth):
                a.key = cache.key(self.first.tpl.build(auth, client_ip, client_host,
                                                       proxy_protocol, ssl_info, extra, True))
                if extra is not None and extra.failed:
                    cache.forget(a.key)     # its backend failed: the new answer replaces it
                else:
                    hit = cache.get(a.key, self.loop.now)
                    if hit is not None:
                        if hit.user is not None:
                            auth.user = hit.user
                        hit.cache_key = a.key
                        a.deliver(hit)
                        return a
            a.send()
        finally:
            a.starting = False
        return a

    cpdef cancel(self, object handle):
        """The asker left: completed() never comes, the request's connection is closed."""
        if handle is not None:
            (<_Ask?>handle).drop()

    cpdef forget(self, bytes key):
        """The answer kept under `key` (AuthResult.cache_key) named a backend that failed."""
        if self.cache is not None and key is not None:
            self.cache.forget(key)

    cdef Target _pick(self, unsigned int tried):
        """The first URL not asked yet that is not down, else the first not asked yet."""
        cdef Target t
        cdef Target fallback = None
        cdef int64_t now = self.loop.now
        for t in self.targets:
            if tried & (1u << t.index):
                continue
            if t.down_until <= now:
                return t
            if fallback is None:
                fallback = t
        return fallback

    cdef _Conn _acquire(self, Target t):
        cdef _Conn conn
        if t._idle:
            conn = t._idle.pop()
            conn.reused = True
            conn.state = C_SENDING
            return conn
        return None

    cdef int _open(self, _Ask ask, int64_t when) except -1:
        """A new connection to ask's URL (socket, connect, one epoll registration)."""
        global _live
        cdef Target t = ask.target
        cdef _Conn conn
        cdef int fd = socket(t._family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
        cdef int rc, err
        if fd < 0:
            return ask.answered(error_result(os_error("socket", errno)))
        if FASTMAIL_DEBUG:
            _live += 1
        conn = _Conn.__new__(_Conn)
        conn.client = self
        conn.target = t
        conn.fd = fd
        conn.reader = AnswerReader.__new__(AnswerReader)  # no Python call per connection
        conn.reader.factory = self.reader_factory
        conn.reader.reset()
        self.connections_made += 1
        t.connections_made += 1
        rc = connect(fd, <sockaddr *>t._sa, t._salen)
        if rc < 0 and errno != EINPROGRESS:
            err = errno
            conn._close()
            return ask.down(t, os_error("connect", err), error_result(os_error("connect", err)))
        try:
            self.loop.register(fd, conn, 0, EVENTS)
        except OSError as e:
            conn._close()
            return ask.answered(error_result(os_error("epoll_ctl", e.errno)))
        conn.registered = True
        # https: the handshake starts at the first EPOLLOUT (registration reports a socket
        # that connected at once)
        conn.state = C_CONNECTING if rc < 0 or t.tls is not None else C_SENDING
        return conn.start(ask, when)

    def close(self):
        """Reload or shutdown: idle connections and bodies being drained close now; busy ones
        after their answer (a request in flight is not lost)."""
        cdef _Conn conn
        cdef Target t
        self.closed = True
        for t in self.targets:
            while t._idle:
                conn = t._idle.pop()
                conn.state = C_CLOSED  # out of the list already
                conn._close()
        for conn in list(self._draining):
            conn._close()

    def idle_count(self):
        cdef Target t
        return sum([len(t._idle) for t in self.targets])

    @property
    def urls(self):
        """The Target of each URL, in order."""
        return list(self.targets)

    @property
    def cache_hits(self):
        return self.cache.hits if self.cache is not None else 0

    @property
    def cache_misses(self):
        return self.cache.misses if self.cache is not None else 0
