# cython: language_level=3
"""What a session reports, and the server{} it reports for.

Owns a session's view of its server{} block (Server, Entry: built once per worker by
server.py) and what a session tells about itself (Reporter, the base of _session.Session):
nginx's log-line context (` while ACTION, client: ..., server: ...`), its relay's end line,
the metrics it counts as a login attempt and its session end, and its access log line. Must
not drive a connection: _session.pyx does, and sets the fields read here.
"""

from libc.string cimport memset, strlen

from fastmail._conn cimport sockaddr, sockaddr_storage, socklen_t, sockaddr_ip, os_error
from fastmail._relay cimport (CLIENT, END_DONE, END_READ_CLIENT, END_READ_BACKEND,
                              END_SEND_CLIENT, END_SEND_BACKEND, END_PIPE, END_TIMEOUT,
                              END_CLOSED)
from fastmail._upstream cimport BE_NONE, BE_IO, BE_REFUSED, UT_NONE, UT_FULL
from fastmail._metrics cimport mx_inc, mx_dec, mx_observe, mx_now_us
from fastmail._accesslog cimport (Record, alog_write, F_REMOTE_ADDR, F_REMOTE_PORT,
                                  F_SERVER_ADDR, F_SERVER_PORT, F_PROTOCOL, F_SERVER_NAME,
                                  F_LOGIN, F_AUTH_METHOD, F_AUTH_RESULT, F_AUTH_REASON,
                                  F_UPSTREAM, F_BYTES_IN, F_BYTES_OUT, F_UPSTREAM_BYTES_IN,
                                  F_UPSTREAM_BYTES_OUT, F_DURATION, F_TLS_PROTOCOL,
                                  F_TLS_CIPHER, F_END_REASON, F_CONNECTION)

cdef extern from *:
    """
    #include <sys/socket.h>
    """
    int getsockname(int fd, sockaddr *addr, socklen_t *len) nogil

# nginx's log levels (fastmail.log)
DEF INFO = 7

# the names of the SM_* series (_report.pxd), in order: fastmail/metrics.py maps them
SERIES = (
    "accepted", "open", "login_ok", "login_failed_credentials", "login_failed_backend",
    "login_tempfailed_auth", "login_tempfailed_auth_http", "login_tempfailed_backend",
    "auth_seconds", "connect_seconds", "login_seconds",
    "backend_connect", "backend_timeout", "backend_tls", "backend_closed", "backend_io",
    "backend_refused", "bytes_up", "bytes_down", "relays",
    "tls_client_full", "tls_client_resumed", "tls_client_failed",
    "tls_backend_full", "tls_backend_resumed", "tls_backend_failed",
    "end_quit", "end_client_closed", "end_backend_closed", "end_timeout", "end_error",
    "end_auth_error", "end_auth_failed", "end_backend_error", "end_shutdown",
    "limited_conn_per_ip", "limited_login_delayed", "limited_login_refused",
)
assert len(SERIES) == SM_COUNT

# the access log's words: E_* (index 0 unused), then SM_LOGIN_* outcomes (from SM_LOGIN_OK)
cdef const char *_END_NAMES[10]
_END_NAMES[:] = [b"-", b"quit", b"client_closed", b"backend_closed", b"timeout", b"error",
                 b"auth_error", b"auth_failed", b"backend_error", b"shutdown"]
cdef const char *_RESULTS[6]
_RESULTS[:] = [b"ok", b"failed", b"failed", b"tempfailed", b"tempfailed", b"tempfailed"]
cdef const char *_REASONS[6]
_REASONS[:] = [b"none", b"credentials", b"backend", b"auth_temporary", b"auth_http",
               b"backend"]


cdef inline void _rec(Record *r, int f, bytes b) noexcept:
    if b is not None:
        r.s[f] = <const char *>b
        r.n[f] = len(b)


cdef inline void _rec_c(Record *r, int f, const char *p) noexcept:
    if p != NULL:
        r.s[f] = p
        r.n[f] = strlen(p)


cdef class Server:
    """What one worker needs to serve one server{} block, built once (server.py) and read by
    every session at C speed."""

    def set_series(self, list indices):
        """The metrics indices of SERIES, in order (fastmail.metrics.session_series)."""
        cdef Py_ssize_t i
        if len(indices) != SM_COUNT:
            raise ValueError(f"{SM_COUNT} series expected, got {len(indices)}")
        for i in range(SM_COUNT):
            self.mx[i] = indices[i]

    @property
    def series(self):
        return [self.mx[i] for i in range(SM_COUNT)]


cdef class Entry:
    """One address a listening socket serves: which server{}, and its listen flags."""



cdef class Reporter(Upstream):
    """A session's reports; the session (its subclass) keeps the fields they read."""

    cdef int _backend_over(self, bint ok) except -1:
        """The backend login ended: the attempt's figures, the login's outcome."""
        cdef int kind = self._attempt_over(ok)
        if ok:
            self.a_result = SM_LOGIN_OK
        else:
            self.a_result = SM_LOGIN_FAILED_BACKEND if kind == BE_REFUSED else SM_LOGIN_TEMP_BACKEND
        mx_inc(self.srv.mx[self.a_result])
        return 0

    cdef int _attempt_over(self, bint ok) except -1:
        """One backend's attempt ended: its latencies, its TLS, its failure by kind (once:
        a failover counted it already); returns that BE_* kind."""
        cdef Server srv = self.srv
        cdef int kind = self.up_err
        if self.up_counted:
            return kind
        if self.up_t1:
            mx_observe(srv.mx[SM_CONNECT_SECONDS], self.up_t1 - self.up_t0)
        if self.up_tls != UT_NONE:
            mx_inc(srv.mx[SM_TLS_BACKEND + self.up_tls - UT_FULL])
        if ok:
            mx_observe(srv.mx[SM_LOGIN_SECONDS], mx_now_us() - self.up_t1)
            return BE_NONE
        if kind == BE_NONE:
            kind = BE_IO
        mx_inc(srv.mx[SM_BACKEND_ERRORS + kind - 1])
        return kind

    cdef int _ended(self) except -1:
        """Once per session, at its very end: the metrics and the access log."""
        cdef Server srv = self.srv
        if self.end == E_NONE:
            self.end = E_ERROR
        mx_inc(srv.mx[SM_END + self.end - 1])
        mx_dec(self.mx_open)        # last: no open connection means every end is counted
        if srv.alog is not None:
            self._access_log(srv)
        return 0

    cdef int _access_log(self, Server srv) except -1:
        """The session's access log line: what it knows, borrowed, in a Record."""
        cdef Record r
        cdef Entry e = self.entry
        cdef bytes where = None
        memset(&r, 0, sizeof(r))
        r.v[F_REMOTE_PORT] = r.v[F_SERVER_PORT] = -1
        _rec(&r, F_REMOTE_ADDR, self.client_ip)
        if self.client_ip != b"unix:":
            r.v[F_REMOTE_PORT] = self.client_port
        if srv.alog_local:
            if e.host == b"":
                where = e.addr_text.encode()    # unix:/path
            elif e.wildcard and self.local_ip is not None:
                where = self.local_ip
                r.v[F_SERVER_PORT] = self.local_port
            else:
                where = e.host
                r.v[F_SERVER_PORT] = e.port
            _rec(&r, F_SERVER_ADDR, where)
        _rec(&r, F_PROTOCOL, srv.alog_proto)
        _rec(&r, F_SERVER_NAME, srv.alog_name)
        _rec(&r, F_LOGIN, self.a_login)
        _rec(&r, F_AUTH_METHOD, self.a_method)
        if self.a_result:
            _rec_c(&r, F_AUTH_RESULT, _RESULTS[self.a_result - SM_LOGIN_OK])
            _rec_c(&r, F_AUTH_REASON, _REASONS[self.a_result - SM_LOGIN_OK])
        if self.up_server is not None:
            _rec(&r, F_UPSTREAM, self.up_server)
            r.v[F_UPSTREAM] = self.up_port     # formatted as an address:port
        r.v[F_BYTES_IN] = self.c.rx
        r.v[F_BYTES_OUT] = self.c.tx
        r.v[F_UPSTREAM_BYTES_IN] = self.b.rx
        r.v[F_UPSTREAM_BYTES_OUT] = self.b.tx
        r.v[F_DURATION] = self.loop.now - self.t_begin
        _rec_c(&r, F_TLS_PROTOCOL, self.tls_proto)
        _rec_c(&r, F_TLS_CIPHER, self.tls_cipher)
        _rec_c(&r, F_END_REASON, _END_NAMES[self.end])
        r.v[F_CONNECTION] = self.id
        return alog_write(srv.alog, &r)

    cdef str _peer_text(self):
        if self.client_ip == b"unix:":
            return "unix:"
        return f"{self.client_ip.decode()}:{self.client_port}"

    cdef object _local_addr(self):
        """(address text bytes, port) where the client reached us; None for unix sockets."""
        cdef sockaddr_storage ss
        cdef socklen_t n = sizeof(ss)
        cdef int port = 0
        if self.entry.host == b"" or self.c.fd < 0:
            return None
        if not self.entry.wildcard:
            return (self.entry.host, self.entry.port)
        if getsockname(self.c.fd, <sockaddr *>&ss, &n) != 0:
            return None
        ip = sockaddr_ip(<sockaddr *>&ss, &port)
        return (ip, port)

    cdef str _local_text(self):
        local = self._local_addr()
        if local is None:
            return self.entry.addr_text
        ip = (<bytes>local[0]).decode()
        if ":" in ip:
            return f"[{ip}]:{local[1]}"
        return f"{ip}:{local[1]}"

    cdef str _context(self, str action):
        """nginx's ` while ACTION, client: ..., server: ...[, login: "..."]` suffix."""
        cdef str text
        if action is None:
            action = self.m.phase if self.m is not None else "in auth state"
        text = (f" while {action}, client: {self.client_ip.decode()}"
                f"{' using starttls' if self.starttls else ''}, server: {self.entry.addr_text}")
        user = self.user
        if user is None and self.m is not None and self.m.auth is not None:
            user = self.m.auth.user
        if user:
            text += f', login: "{user.decode("latin-1")}"'
        if self.up_server is not None:
            text += f", upstream: {self.up_server.decode('latin-1')}:{self.up_port}"
        return text

    cdef int _log(self, int level, str message, str action) except -1:
        cdef Server srv = self.srv
        if srv.log_level >= level:
            srv.log.log(level, message + self._context(action), self.id)
        return 0

    cdef int _relay_log(self, int why) except -1:
        """The relay's end, as nginx's info line says it (the caller checked the level)."""
        cdef Server srv = self.srv
        if why == END_DONE or (why == END_CLOSED and self.shut_reason is None):
            # nginx's usual suffix, login and upstream included, only without " while"
            ctx = self._context("-")
            srv.log.log(INFO, "proxied session done" + ctx[ctx.index(","):], self.id)
        elif why == END_TIMEOUT:
            self._log(INFO, "client timed out (110: Connection timed out)", "proxying")
        elif why == END_READ_CLIENT:
            self._log(INFO, os_error("recv", self.error), "proxying and reading from client")
        elif why == END_READ_BACKEND:
            self._log(INFO, os_error("recv", self.error),
                      "proxying and reading from upstream")
        elif why == END_SEND_CLIENT:
            self._log(INFO, os_error("send", self.error), "proxying and sending to client")
        elif why == END_SEND_BACKEND:
            self._log(INFO, os_error("send", self.error), "proxying and sending to upstream")
        elif why == END_PIPE:
            self._log(INFO, os_error("pipe2", self.error), "proxying")
        else:
            self._log(INFO, self.shut_reason, "proxying")
        return 0
