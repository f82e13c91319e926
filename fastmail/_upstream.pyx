# cython: language_level=3
"""The backend side of a session before the relay (nginx's ngx_mail_proxy_module, the part
before ngx_mail_proxy_handler): the nonblocking connect, TLS to the backend (proxy_ssl on, or
STARTTLS when the login machine asks for it), and the backend login machine's dialogue, until
the login is through (the relay takes both sockets as they are) or has failed.

Owns the backend Sock between connect and relay and what the login machine writes to it. Must
not decide what the client is told beyond the login machine's own replies, nor log in its own
words except nginx's for the backend: the session (a subclass) gets the outcome through the
up_* hooks. A session *is* its Upstream and its Relay: no object changes hands.
Beyond nginx (proxy_next_upstream_tries): a backend that cannot be reached is logged as nginx
logs it and recorded, its socket closed, and the session asks auth_http for another one
(up_reask); when it has none, the last failed machine gives the client its reply (up_give_up).
"""

from libc.stdint cimport uint32_t
from cpython.bytes cimport PyBytes_FromStringAndSize

from fastmail._poll cimport EPOLLIN, EPOLLOUT, EPOLLET, EPOLLRDHUP, EPOLLERR, EPOLLHUP
from fastmail._conn cimport (Sock, sock_recv, sock_write_bytes, sock_flush, sock_close,
                             sock_connect, os_error, socklen_t, IO_AGAIN, IO_ERROR)
from fastmail._relay cimport Relay, BACKEND
from fastmail._core cimport ACT_SEND, ACT_CLOSE, ACT_BACKEND, ACT_DONE, ACT_STARTTLS
from fastmail._login cimport BackendLogin
from fastmail._openssl cimport SSL
from fastmail._tls cimport (tls_connect, tls_handshake, tls_error, tls_error_level, tls_reused,
                            TLS_OK, TLS_FAIL)
from fastmail._metrics cimport mx_now_us

cdef extern from *:
    """
    #include <sys/socket.h>
    """
    int getsockopt(int fd, int level, int name, void *val, socklen_t *len) nogil
    int SOL_SOCKET, SO_ERROR

DEF ERROR = 4
DEF INFO = 7

cdef char _rbuf[65536]


cdef class Upstream(Relay):
    """Connect, TLS and login to the backend; a Session subclasses it (and Relay through it)."""

    cdef int up_connect(self, bytes addr, int port, BackendLogin login) except -1:
        """Starts the connect; the login machine runs once it completes."""
        self.login = login
        if self.up_tries != 1:
            self.up_addr = (b"[%s]:%d" if b":" in addr else b"%s:%d") % (addr, port)
        self.up_t0 = mx_now_us()
        if sock_connect(&self.b, addr, port) < 0:
            return self.up_failed(os_error("connect", self.b.err), ERROR, BE_CONNECT)
        self.loop.register(self.b.fd, self, BACKEND, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET)
        self.up_opened()
        return 0

    cdef int up_io(self, uint32_t events) except -1:
        """An event on the backend socket (the session updated its readiness flags)."""
        cdef int err = 0
        cdef socklen_t elen = sizeof(int)
        if not self.up_active():
            return 0
        if not self.up_connected:
            if events & (EPOLLERR | EPOLLHUP):
                getsockopt(self.b.fd, SOL_SOCKET, SO_ERROR, &err, &elen)
                return self.up_failed(os_error("connect", err or 111), ERROR, BE_CONNECT)
            if not events & EPOLLOUT:
                return 0
            self.up_connected = True
            self.up_t1 = mx_now_us()
            self.up_actions(self.login.start())
            if not self.up_active():
                return 0
        if self.b.tls_flip:
            # OpenSSL wanted the other direction: whichever came, try again
            self.b.tls_flip = False
            self.b.rd_ready = self.b.wr_ready = True
        if self.b.out != NULL and self.b.wr_ready:
            if sock_flush(&self.b) == IO_ERROR:
                return self.up_failed(self._io_error("send"), ERROR, BE_IO)
            if self.b.out == NULL and self.up_tls_pending:
                return self._up_tls_start()
        if self.up_handshaking:
            return self._up_handshake()
        return self._up_read()

    cdef int _up_read(self) except -1:
        cdef Py_ssize_t n
        while self.b.rd_ready and self.up_active() and not self.up_tls_pending:
            n = sock_recv(&self.b, _rbuf, sizeof(_rbuf))
            if n > 0:
                data = PyBytes_FromStringAndSize(_rbuf, n)
                if self.trace is not None:
                    self.trace.upstream_read(data)
                self.up_actions(self.login.feed(data))
                continue
            if n == IO_AGAIN:
                return 0
            self.login.phase = "reading response from upstream"
            if n == 0:
                return self.up_failed("upstream prematurely closed connection", ERROR, BE_CLOSED)
            return self.up_failed(self._io_error("recv"), ERROR, BE_IO)
        return 0

    cdef str _io_error(self, str call):
        return tls_error() if self.b.err == -1 else os_error(call, self.b.err)

    cdef int up_actions(self, int acts) except -1:
        cdef BackendLogin login = self.login
        cdef bytes out
        if acts & ACT_BACKEND:
            out = login.take_backend_output()
            if self.trace is not None:
                self.trace.upstream_sent(login.phase, out)
            if sock_write_bytes(&self.b, out) == IO_ERROR:
                return self.up_failed(self._io_error("send"), ERROR, BE_IO)
        if acts & ACT_SEND and not acts & ACT_DONE:
            self.up_send_client(login.take_output())
            if not self.up_active():
                return 0
        if acts & ACT_CLOSE:
            if self.up_err == BE_NONE:
                self.up_err = BE_REFUSED    # the backend's own reply ended the login
            if login.close_reason:
                self.up_log(ERROR if login.log_level == "error" else INFO, login.close_reason,
                            login.phase)
            return self.up_refused()
        if acts & ACT_STARTTLS:
            # after the PROXY header (proxy_ssl on) or the backend's STARTTLS go-ahead
            self.up_tls_pending = True
            if self.b.out == NULL:
                return self._up_tls_start()
            return 0
        if acts & ACT_DONE:
            return self.up_logged_in()
        return 0

    # --- TLS to the backend (beyond nginx) -----------------------------------------------------

    cdef int _up_tls_start(self) except -1:
        self.up_tls_pending = False
        self.b.ssl = <void *>tls_connect(self.tls_ctx, self.b.fd, self.tls_name)
        self.up_handshaking = True
        self.login.phase = "SSL handshaking to upstream"
        return self._up_handshake()

    cdef int _up_handshake(self) except -1:
        cdef int rc = tls_handshake(<SSL *>self.b.ssl)
        if rc == TLS_OK:
            self.up_handshaking = False
            self.up_tls = UT_RESUMED if tls_reused(<SSL *>self.b.ssl) else UT_FULL
            self.b.rd_ready = True      # a record may have come with the last flight
            self.up_actions(self.login.on_tls_done())
            return self._up_read()
        if rc == TLS_FAIL:
            self.up_tls = UT_FAILED
            return self.up_failed(tls_error(), tls_error_level(False), BE_TLS)
        return 0    # TLS_WANT_READ / TLS_WANT_WRITE: the next event goes on

    # --- endings -------------------------------------------------------------------------------

    cdef int up_failed(self, str reason, int level, int kind) except -1:
        """The backend failed outside a reply (connect, send, recv, EOF, timeout, TLS): the
        protocol's internal-error reply, whatever proxy_pass_error_message says (nginx).
        `kind` is the BE_* the metrics and the access log see."""
        cdef int acts
        if self.login is None or not self.up_active():
            return 0
        if self.up_err == BE_NONE:
            self.up_err = kind
        self.up_unreachable()
        if self.up_tries != 1 and self._up_next(reason, level):
            return 0
        acts = self.login.on_error(reason)
        self.login.log_level = "error" if level <= ERROR else "info"
        return self.up_actions(acts)

    cdef int up_drop(self) except -1:
        """Closes the backend socket (no relay follows)."""
        self._up_close()
        self.login = None
        self.up_spent = None
        return 0

    cdef int _up_close(self) except -1:
        if self.b.fd >= 0:
            self.loop.unregister(self)
            sock_close(&self.b)
        self.up_connected = self.up_tls_pending = self.up_handshaking = False
        return 0

    cdef int _up_next(self, str reason, int level) except -1:
        """1 when another backend is asked for (the failure logged, the socket closed), 0
        when no try is left."""
        cdef list failed = self.up_failed_addrs
        if self.up_tries and (len(failed) if failed else 0) + 1 >= self.up_tries:
            return 0
        self.up_log(level, reason, self.login.phase)
        if failed is None:
            failed = self.up_failed_addrs = []
        failed.append(self.up_addr)
        self.up_spent = self.login
        self.up_why = reason
        self.login = None
        self._up_close()
        self.up_reask()
        return 1

    cdef int up_untried(self, str addr, object port) except -1:
        """The backend `addr`:`port` an auth_http answer names did not fail in this login."""
        if addr is None:
            return False
        return (b"[%s]:%d" if ":" in addr else b"%s:%d") % (addr.encode(), port) not in (
            self.up_failed_addrs or ())

    cdef int up_give_up(self) except -1:
        """No other backend: the client gets the reply of the last failure (already logged)."""
        cdef BackendLogin login = self.up_spent
        cdef int acts
        self.up_spent = None
        self.login = login
        acts = login.on_error(self.up_why)
        login.close_reason = None
        return self.up_actions(acts)

    # --- hooks: the session's ------------------------------------------------------------------

    cdef int up_active(self) noexcept:
        return 0

    cdef int up_send_client(self, bytes data) except -1:
        return 0

    cdef int up_logged_in(self) except -1:
        return 0

    cdef int up_refused(self) except -1:
        return 0

    cdef int up_log(self, int level, str message, str action) except -1:
        return 0

    cdef int up_opened(self) except -1:
        return 0

    cdef int up_unreachable(self) except -1:
        return 0

    cdef int up_reask(self) except -1:
        return 0
