# cython: language_level=3
"""The session engine: one client connection from accept to the end of its relay.

Owns the per-connection driver (nginx's ngx_mail_handler.c, the session side of
ngx_mail_auth_http_module.c and ngx_mail_proxy_module.c): the PROXY header and realip, the
TLS handshake, feeding the client machine and carrying out its actions, the auth_http
request, the backend connection and its login machine, then the relay (a Session *is* its
Relay: no hand-over, no second object). Must not parse a mail protocol (the machines do),
build auth_http bytes (the auth client does) nor decide policy (the Python layer: resolver,
config); those are reached through small typed calls, and Python only for rare events.

Theory of operation. A session is in one state at a time:

    PROXY ─► [HANDSHAKE] ─► [RESOLVE] ─► DIALOGUE ◄─► HANDSHAKE (STARTTLS)
                                            │  ▲
                                  ACT_AUTH  ▼  │ fail + retry / error
                                          AUTH ─► AUTH_WAIT (Auth-Wait delay)
                                            │ ok
                                            ▼
                                         BACKEND (connect, login machine)
                                            │ ACT_DONE
                                            ▼
                                          RELAY ─► CLOSED
    any state ─► CLOSING (the client's last reply being written) ─► CLOSED

Events come as io(side, events) for the client (side 0) and backend (side 1) sockets, both
registered once, edge-triggered; expired(T_MAIN) is nginx's `timeout` (one deadline for the
whole dialogue, re-armed for the backend login) and, while relaying, proxy_timeout;
expired(T_AUX) is the machine's timer (smtp_greeting_delay) or an Auth-Wait delay;
completed() brings an auth_http answer or a Client-Host lookup. The client's readiness is
kept in its Sock (rd_ready): a state that does not read now leaves it set, and the state that
reads next drains it; edge-triggered epoll sends no second notice.
"""

from libc.stdint cimport uint32_t, int64_t
from libc.stdlib cimport free
from cpython.bytes cimport PyBytes_FromStringAndSize

from fastmail._poll cimport (TNode, timer_cancel, FASTMAIL_DEBUG, EPOLLIN, EPOLLOUT, EPOLLET,
                             EPOLLRDHUP, EPOLLERR, EPOLLHUP)
from fastmail._conn cimport (Sock, sock_init, sock_recv, sock_peek, sock_write_bytes, sock_flush,
                             sock_close, IO_AGAIN, IO_ERROR)
from fastmail._relay cimport UP, DOWN, CLIENT, BACKEND, END_DONE, END_TIMEOUT, END_CLOSED
from fastmail._core cimport (Machine, AuthRequest, ACT_SEND, ACT_AUTH, ACT_STARTTLS, ACT_CLOSE,
                             ACT_TIMER, ACT_BACKEND, ACT_DONE)
from fastmail._login cimport BackendLogin
from fastmail._report cimport *
from fastmail._upstream cimport BE_NONE, BE_TIMEOUT, UT_NONE
from fastmail._openssl cimport SSL
from fastmail._tls cimport (tls_accept, tls_handshake, tls_error, tls_error_level, tls_chosen,
                            tls_verify, tls_cert_check, tls_auth_info, tls_reused, tls_names,
                            TLS_OK, TLS_FAIL)
from fastmail._metrics cimport mx_inc, mx_observe, mx_now_us
from fastmail._proxy cimport (ProxyHeader, ProxyError, proxy_parse, proxy_realip,
                              proxy_build_v1, proxy_build_v2)
from fastmail._auth cimport AuthClient, AuthResult
from fastmail._authreq cimport Extra

# nginx's log levels (fastmail.log)
DEF ERROR = 4
DEF WARN = 5
DEF INFO = 7
DEF DEBUG = 8

DEF PROXY_HEADER_LIMIT = 4096   # mainline nginx's PROXY protocol read size
DEF RESOLVE_LIMIT = 4096        # client bytes read on while the Client-Host lookup runs

cdef enum:
    S_PROXY = 0
    S_HANDSHAKE
    S_RESOLVE
    S_DIALOGUE
    S_AUTH
    S_AUTH_WAIT
    S_BACKEND
    S_RELAY
    S_CLOSING
    S_CLOSED

cdef enum:
    T_MAIN = 0      # Relay.t_main: timeout, then proxy_timeout
    T_AUX = 1       # t_aux: the machine's timer, an Auth-Wait delay

# completed(kind, result)
cdef enum:
    DONE_AUTH = 1
    DONE_CLIENT_HOST = 2

from fastmail.debuglog import Trace
from fastmail._login import TLS_MODES
from fastmail.guard import address_key

# nginx's log action of each state, for the debug lines (S_HANDSHAKE: _hs_action())
cdef tuple _ACTIONS = (
    "reading PROXY protocol", None, "in resolving client address", "in auth state",
    "in http auth state", "in http auth state", "connecting to upstream", "proxying",
    "closing", "closed")

cdef char _rbuf[65536]
cdef long _live_sessions = 0    # Session objects alive (debug build)

def live_count():
    """Session objects alive (counted in the debug build only: 0 otherwise)."""
    return _live_sessions


DEBUG_BUILD = bool(FASTMAIL_DEBUG)

cdef class Owner(Acceptor):
    """Base of the worker's engine (fastmail._engine.Engine): what a session reports to."""

    cdef int ended(self, Session s) except -1:
        return 0


cdef class Session(Reporter):

    # --- start ---------------------------------------------------------------------------------

    def __dealloc__(self):
        global _live_sessions
        if FASTMAIL_DEBUG:
            _live_sessions -= 1

    cdef int begin(self, Owner eng, Entry e, int fd, bytes ip, int port, long cid) except -1:
        global _live_sessions
        cdef Server srv = e.server
        if FASTMAIL_DEBUG:
            _live_sessions += 1
        self.eng = eng
        self.loop = eng.loop
        self.srv = srv
        self.entry = e
        self.id = cid
        self.client_ip = ip
        self.client_port = port
        self.client_host = b"[UNAVAILABLE]"
        self.t_begin = eng.loop.now
        mx_inc(srv.mx[SM_ACCEPTED])
        self.mx_open = srv.mx[SM_OPEN]
        mx_inc(self.mx_open)
        self.half_close = True
        self.proxy_timeout = srv.proxy_timeout
        sock_init(&self.c, fd)
        sock_init(&self.b, -1)
        self.loop.register(fd, self, CLIENT, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET)
        if srv.log_level >= DEBUG:
            self.trace = Trace(srv.log, cid, srv.conf.protocol, fd)
            self.trace.accepted(self._peer_text())
        if srv.log_level >= INFO:
            srv.log.log(INFO, f"client {self._peer_text()} connected to {self._local_text()}",
                        cid)
        if srv.alog_local and e.wildcard:
            local = self._local_addr()      # the socket is gone when the line is written
            if local is not None:
                self.local_ip, self.local_port = local
        self.loop.queue(srv.timeout).add(&self.t_main, self, T_MAIN)
        if e.proxy_protocol:
            self._to(S_PROXY)
        else:
            self._start()
        return 0

    cdef int _to(self, int state) except -1:
        self.state = state
        if self.trace is not None:
            self.trace.state(self._hs_action() if state == S_HANDSHAKE else _ACTIONS[state])
            if state == S_DIALOGUE and self.srv.smtp and self.m is None:
                self.trace.line(f'smtp greeting for "{self.client_host.decode("latin-1")}"')
        return 0

    cdef int _start(self) except -1:
        """After any PROXY header: implicit TLS, else the client lookup or the greeting."""
        if self.srv.conn_limit is not None and self._over_conn_limit():
            return 0
        if self.entry.ssl and self.srv.tls is not None:
            return self._start_tls(True)
        return self._resolve()

    cdef int _resolve(self) except -1:
        if self.srv.smtp and self.srv.resolver is not None:
            self._to(S_RESOLVE)
            if self.pending is None:
                self.pending = bytearray()
            ip = None if self.client_ip == b"unix:" else self.client_ip.decode()
            self.lookup = self.srv.resolver.client_host(ip, self._resolved)
            return 0
        return self._start_machine()

    cdef bint _over_conn_limit(self) except -1:
        """limit_conn_per_ip (beyond nginx), on the real address (after realip): one more
        connection than the limit gets the protocol's temporary error (none on an implicit
        TLS port: nothing can be said before the handshake) and an error line."""
        lim = self.srv.conn_limit
        guard = self.eng.guard
        key = address_key(self.client_ip, lim.ipv6_prefix)
        n = guard.conns.get(key, 0)
        if n < lim.count:
            guard.conns[key] = n + 1
            self.ip_key = key
            return False
        guard.refused_conns += 1
        mx_inc(self.srv.mx[SM_LIMITED])
        if self.srv.log_level >= ERROR:
            self.srv.log.log(
                ERROR, f"limiting connections from {self.client_ip.decode()} "
                f"(limit_conn_per_ip {lim.count}), client: {self.client_ip.decode()}, "
                f"server: {self.entry.addr_text}", self.id)
        if not self.entry.ssl:
            self._send(self.srv.busy_reply)
        self.close()
        return True

    def _resolved(self, result):
        self.completed(DONE_CLIENT_HOST, result)

    cdef int _start_machine(self) except -1:
        self._to(S_DIALOGUE)
        self.m = self.srv.profile.new_session(self.tls)
        self.m.log_info = self.srv.log_level >= INFO
        self.run(self.m.start())
        if self.state == S_DIALOGUE and self.pending:
            data = bytes(self.pending)
            self.pending = None
            self.run(self.m.feed(data))
        else:
            self.pending = None
        if self.state == S_DIALOGUE and self.c.rd_ready:
            self._read_client()
        return 0

    # --- events --------------------------------------------------------------------------------

    cdef int io(self, int side, uint32_t events) except -1:
        cdef Sock *s
        if self.state == S_RELAY:
            return self.relay_io(side, events)
        if self.state == S_CLOSED:
            return 0
        s = &self.c if side == CLIENT else &self.b
        if events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR):
            s.rd_ready = True
            if events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR):
                s.hup = True
        if events & (EPOLLOUT | EPOLLHUP | EPOLLERR):
            s.wr_ready = True
        if s.tls_flip:
            # OpenSSL wanted the other direction: whichever came, try both again
            s.tls_flip = False
            s.rd_ready = s.wr_ready = True
        if side == BACKEND:
            return self.up_io(events)
        if s.out != NULL and s.wr_ready:
            if sock_flush(s) == IO_ERROR:
                return self.finish()
        if self.state == S_CLOSING:
            if s.out == NULL:
                return self.finish()
            return 0
        if self.state == S_HANDSHAKE:
            if self.tls_pending:
                if s.out == NULL:
                    return self._tls_begin()
                return 0
            return self._handshake()
        if s.rd_ready:
            return self._read_client()
        return 0

    cdef int _read_client(self) except -1:
        """Reads what the client sent into the machine, never more than its client buffer
        has room for (nginx reads into its buffer's free space): a connection holds at most
        the configured buffer, however much a client streams."""
        cdef Py_ssize_t n, room
        cdef int st
        while self.c.rd_ready:
            st = self.state
            if st == S_PROXY:
                return self._read_proxy()
            if st == S_DIALOGUE:
                # a full buffer is the machine's "too long" error: one more byte shows it
                room = self.m.room()
                if room < 1:
                    room = 1
            elif st == S_RESOLVE:
                room = RESOLVE_LIMIT - len(self.pending)
                if room <= 0:
                    return 0        # the rest is read once the greeting is out
            elif st == S_AUTH or st == S_AUTH_WAIT or st == S_BACKEND:
                room = self.m.room()
                if room <= 0:
                    return 0        # read on once the login is through (the relay does)
            else:
                return 0            # HANDSHAKE (the TLS layer reads), RELAY, CLOSING
            if room > <Py_ssize_t>sizeof(_rbuf):
                room = sizeof(_rbuf)
            n = sock_recv(&self.c, _rbuf, room)
            if n > 0:
                data = PyBytes_FromStringAndSize(_rbuf, n)
                if self.trace is not None and st != S_RESOLVE:
                    self.trace.client_read(data)
                if st == S_DIALOGUE:
                    self.run(self.m.feed(data))
                elif st == S_RESOLVE:
                    self.pending += data
                else:
                    # kept for the relay (or the next login after a failure); nginx leaves
                    # such bytes in the kernel: we read on to notice a client that leaves
                    self.m.feed(data)
                continue
            if n == IO_AGAIN:
                return 0
            # EOF or an error before the relay: the client left, nginx logs nothing
            self._end_as(E_CLIENT_CLOSED if n == 0 else E_ERROR)
            return self.finish()
        return 0

    cdef int expired(self, int kind) except -1:
        cdef int st = self.state
        if st == S_RELAY:
            return self.relay_timer()
        if kind == T_AUX:
            if st == S_AUTH and self.throttled:
                self.throttled = False
                return self._send_ask()
            if st == S_AUTH_WAIT:
                return self._auth_failed(True)
            if st == S_DIALOGUE:
                return self.run(self.m.on_timer())
            return 0
        # T_MAIN: nginx's `timeout`
        if st == S_AUTH or st == S_AUTH_WAIT:
            return self._auth_overdue()
        if st == S_BACKEND:
            # nginx logs the backend timeout at info, other backend failures at error
            return self.up_failed("upstream timed out (110: Connection timed out)", INFO,
                                  BE_TIMEOUT)
        if st == S_CLOSING:
            return self.finish()
        if st == S_HANDSHAKE:
            self._log(INFO, "client timed out (110: Connection timed out)", self._hs_action())
            self._end_as(E_TIMEOUT)
            return self.finish()
        if st == S_PROXY or st == S_RESOLVE or st == S_DIALOGUE:
            self._end_as(E_TIMEOUT)
            self._log(INFO, "client timed out (110: Connection timed out)",
                      "reading PROXY protocol" if st == S_PROXY else None)
            if self.m is not None:
                if self.m.on_timeout() & ACT_SEND:
                    self._send(self.m.take_output())
            return self.close()
        return 0

    cpdef int completed(self, int kind, object result) except -1:
        if kind == DONE_AUTH:
            self.auth_handle = None
            if self.state == S_AUTH:
                return self._auth_done(result)
            return 0
        if kind == DONE_CLIENT_HOST:
            self.lookup = None
            if self.state != S_RESOLVE:
                return 0
            self.client_host = result.host
            if result.log_message:
                self._log(ERROR, result.log_message, result.log_action)
            return self._start_machine()
        return 0

    # --- the PROXY header (beyond nginx: one split over several reads is reassembled) --------

    cdef int _read_proxy(self) except -1:
        """The PROXY header, peeked at (MSG_PEEK) until it is whole, then read exactly: what
        follows stays in the socket, for the protocol or for OpenSSL's handshake. Beyond
        nginx, a header that comes in pieces is reassembled (nginx needs it in one read)."""
        cdef Py_ssize_t n
        cdef ProxyHeader h
        cdef bytes real
        cdef str msg
        n = sock_peek(&self.c, _rbuf, PROXY_HEADER_LIMIT)
        if n == IO_AGAIN:
            return 0
        if n <= 0:
            # EOF or an error: the client left, nginx logs nothing
            self._end_as(E_CLIENT_CLOSED if n == 0 else E_ERROR)
            return self.finish()
        res = proxy_parse(_rbuf, n, PROXY_HEADER_LIMIT, False)
        if res is None:
            self.c.rd_ready = False     # all that came is peeked: the next bytes are an edge
            return 0
        if type(res) is ProxyError:
            msg = (<ProxyError>res).message
            if msg is not None:
                self._log(ERROR, msg, "reading PROXY protocol")
            self._end_as(E_ERROR)
            return self.finish()
        h = <ProxyHeader>res
        if sock_recv(&self.c, _rbuf, h.consumed) != h.consumed:
            self._end_as(E_ERROR)
            return self.finish()
        self.c.rd_ready = n > h.consumed
        self.pp = h
        real = proxy_realip(self.srv.trusted, self.client_ip, h)
        if real is not None:
            self.client_ip = real
            self.client_port = h.src_port
        return self._start()

    # --- the client machine's actions ----------------------------------------------------------

    cdef int run(self, int acts) except -1:
        cdef Machine m = self.m
        cdef bytes out
        if acts & ACT_SEND:
            out = m.take_output()
            if self._send(out) < 0:
                self._end_as(E_ERROR)
                return self.finish()
            if self.trace is not None:
                self.trace.client_reply(out)
        if acts & ACT_STARTTLS and not acts & ACT_CLOSE:
            # the machine dropped what followed the command (CVE-2014-3556); bytes still in
            # the kernel become handshake input, as in nginx
            self.starttls = True
            return self._start_tls(False)
        if acts & ACT_CLOSE:
            if m.close_reason:
                self._log(INFO, m.close_reason, None)
            # a reason is a protocol error (too many errors, too long a line); none: QUIT
            self._end_as(E_ERROR if m.close_reason else E_QUIT)
            return self.close()
        if acts & ACT_TIMER:
            self.loop.queue(m.timer_ms).add(&self.t_aux, self, T_AUX)
        if acts & ACT_AUTH:
            return self._ask_auth()
        return 0

    cdef int _send(self, bytes data) except -2:
        if sock_write_bytes(&self.c, data) == IO_ERROR:
            return -1
        return 0

    # --- TLS (the client side) -----------------------------------------------------------------

    cdef str _hs_action(self):
        return "in starttls state" if self.starttls else "SSL handshaking"

    cdef int _start_tls(self, bint implicit) except -1:
        """Implicit TLS (after any PROXY header) or STARTTLS (after the machine's reply went
        out): the handshake runs under the deadline already set, nginx's `timeout`."""
        self._to(S_HANDSHAKE)
        if self.c.out != NULL:
            self.tls_pending = True
            return 0
        return self._tls_begin()

    cdef int _tls_begin(self) except -1:
        self.tls_pending = False
        self.c.ssl = <void *>tls_accept(self.srv.tls, self.c.fd)
        return self._handshake()

    cdef int _handshake(self) except -1:
        cdef int rc = tls_handshake(<SSL *>self.c.ssl)
        if rc == TLS_OK:
            return self._tls_done()
        if rc == TLS_FAIL:
            self._log(tls_error_level(True), tls_error(), self._hs_action())
            mx_inc(self.srv.mx[SM_TLS_CLIENT + TH_FAILED])
            self._end_as(E_ERROR)
            return self.finish()
        return 0    # TLS_WANT_READ / TLS_WANT_WRITE: the next event goes on

    cdef int _tls_done(self) except -1:
        cdef SSL *ssl = <SSL *>self.c.ssl
        cdef Server chosen
        cdef bint fresh = False
        self.tls = True
        owner = tls_chosen(ssl)
        if owner is not None and owner is not self.srv.conf:
            # beyond nginx: the client's SNI name chose another server{} on this address
            chosen = self.eng.by_conf.get(id(owner))
            if chosen is not None:
                fresh = self._switch(chosen)
        mx_inc(self.srv.mx[SM_TLS_CLIENT + (TH_RESUMED if tls_reused(ssl) else TH_FULL)])
        self.tls_proto = tls_names(ssl, &self.tls_cipher)
        rejected = tls_cert_check(ssl, tls_verify(ssl), self.srv.tls.cert_replies)
        if rejected is not None:
            self._log(INFO, rejected[1], self._hs_action())
            self._send(rejected[0])
            self._end_as(E_ERROR)
            return self.close()
        self.c.rd_ready = True      # a record may have come with the client's last flight
        if not self.starttls:
            return self._resolve()
        self._to(S_DIALOGUE)
        self.run(self.m.after_starttls() if fresh else self.m.on_tls_done())
        if self.state == S_DIALOGUE and self.c.rd_ready:
            self._read_client()
        return 0

    cdef int _switch(self, Server srv) except -1:
        """The session goes on as one of another server{} (SNI): its limits, its auth_http,
        its log; after STARTTLS, a fresh machine of that server's profile takes over."""
        self.srv = srv
        self.proxy_timeout = srv.proxy_timeout
        if srv.log_level >= DEBUG and self.trace is None:
            self.trace = Trace(srv.log, self.id, srv.conf.protocol, self.c.fd)
        elif srv.log_level < DEBUG:
            self.trace = None
        if self.m is None:
            return 0
        self.m = srv.profile.new_session(True)
        self.m.log_info = srv.log_level >= INFO
        return 1

    # --- auth_http -----------------------------------------------------------------------------

    cdef int _ask_auth(self) except -1:
        cdef Server srv = self.srv
        cdef long delay
        self._to(S_AUTH)
        timer_cancel(&self.t_main)      # nginx drops the client timer while auth_http runs
        if srv.fail_limit is not None and self.up_failed_addrs is None:
            # (a backend failover's new question is not a new login: never throttled)
            delay = self.eng.guard.before(srv.fail_limit, self.client_ip, self.m.auth.user,
                                          self.loop.now)
            if delay != 0:
                return self._throttle(delay)
        return self._send_ask()

    cdef int _throttle(self, long delay) except -1:
        """login_fail_limit (beyond nginx): this login waits `delay` ms before auth_http is
        asked (the client's bytes are held meanwhile; one that leaves ends it), or (< 0) is
        refused with the protocol's temporary error."""
        cdef Server srv = self.srv
        if delay < 0:
            mx_inc(srv.mx[SM_LIMITED + 2])
            self._log(ERROR, "login refused after too many failed logins", "in auth state")
            self._to(S_DIALOGUE)
            return self.run(self.m.on_auth_fail(srv.throttle_reply[0], srv.throttle_reply[1],
                                                False, None))
        mx_inc(srv.mx[SM_LIMITED + 1])
        self._log(INFO, f"login delayed {delay / 1000:g}s after failed logins", "in auth state")
        self.throttled = True
        self.loop.queue(delay).add(&self.t_aux, self, T_AUX)
        return 0

    cdef int _send_ask(self) except -1:
        cdef Server srv = self.srv
        cdef ProxyHeader h = self.pp
        cdef AuthClient auth = srv.auth
        # nginx drops the client timer while auth_http runs, and an auth server answering
        # WAIT (or a long Auth-Wait) for ever keeps its client for ever; beyond nginx, the
        # whole phase is bounded: one request's auth_http_timeout plus `timeout` for the rest
        self.loop.queue(srv.auth_limit).add(&self.t_main, self, T_MAIN)
        pp = None
        if h is not None and h.src_addr is not None:
            pp = (h.src_addr, h.src_port, h.dst_addr, h.dst_port)
        if self.up_failed_addrs is None:        # not a backend failover's question
            self.a_login = self.m.auth.user     # as the client sent it (Auth-User may change it)
            self.a_method = self.m.auth.method
        self.a_result = 0
        self.t_auth = mx_now_us()
        if srv.next_tries != 1 and self.up_failed_addrs is None:
            self.ask_user = self.m.auth.user
            self.ask_passwd = self.m.auth.passwd
        extra = None
        if auth.send_client_port or auth.send_server_addr or self.up_failed_addrs is not None:
            extra = self._extra()
        self.auth_handle = auth.ask(
            self, self.m.auth, self.client_ip, self.client_host if srv.smtp else None, pp,
            self._ssl_info(), self.trace, extra)
        return 0

    cdef object _extra(self):
        """fastmail's own request lines: auth_http_send's, a backend failover's."""
        cdef AuthClient auth = self.srv.auth
        cdef Extra e = Extra(failed=self.up_failed_addrs and list(self.up_failed_addrs))
        if auth.send_client_port and self.client_ip != b"unix:":
            e.client_port = self.client_port
        local = self._local_addr() if auth.send_server_addr else None
        if local is not None:
            e.server_ip, e.server_port = local
        return e

    cdef object _ssl_info(self):
        if self.c.ssl == NULL:
            return None
        return tls_auth_info(<SSL *>self.c.ssl, tls_verify(<SSL *>self.c.ssl))

    cdef int _auth_done(self, AuthResult res) except -1:
        cdef Machine m = self.m
        cdef Server srv = self.srv
        cdef bytes code
        mx_observe(srv.mx[SM_AUTH_SECONDS], mx_now_us() - self.t_auth)
        if res.notes is not None:
            for note in res.notes:
                self._log(WARN, note, "in http auth state")
        if res.log_message:
            self._log(ERROR if res.log_level == "error" else INFO, res.log_message,
                      "in http auth state")
        status = res.status
        if self.up_failed_addrs is not None:
            # a backend failover's answer: another backend, or the last failure's reply
            if status == "ok" and self.up_untried(res.addr, res.port):
                self.cache_key = res.cache_key
                return self._connect_backend(res)
            self._to(S_BACKEND)
            return self.up_give_up()
        if self.srv.fail_limit is not None:
            if status == "fail":
                self.eng.guard.failed(self.srv.fail_limit, self.client_ip, m.auth.user,
                                      self.loop.now)
            elif status == "ok":
                self.eng.guard.succeeded(m.auth.user)
        if status == "ok":
            self.cache_key = res.cache_key
            m.on_auth_ok()
            return self._connect_backend(res)
        if status == "fail":
            code = res.error_code
            # an SMTP 4xx Auth-Error-Code is a temporary failure
            self.a_result = (SM_LOGIN_TEMP_AUTH if code and code[:1] == b"4"
                             else SM_LOGIN_FAILED_CREDENTIALS)
            mx_inc(srv.mx[self.a_result])
            if res.wait <= 0:
                self._end_as(E_AUTH_FAILED)     # the machine closes after its reply
            self.result = res
            if res.wait > 0:
                # nginx reads nothing and answers after Auth-Wait, then takes a new login
                self._to(S_AUTH_WAIT)
                self.loop.queue(res.wait * 1000).add(&self.t_aux, self, T_AUX)
                return 0
            return self._auth_failed(False)
        self.a_result = SM_LOGIN_TEMP_AUTH_HTTP
        mx_inc(srv.mx[SM_LOGIN_TEMP_AUTH_HTTP])
        self._end_as(E_AUTH_ERROR)
        self._to(S_DIALOGUE)
        return self.run(m.on_auth_error())

    cdef int _auth_overdue(self) except -1:
        """The auth_http phase outlasted timeout + auth_http_timeout (WAIT repeated, or a
        long Auth-Wait): the protocol's temporary error, as for an auth server that fails."""
        if self.auth_handle is not None:
            self.srv.auth.cancel(self.auth_handle)
            self.auth_handle = None
        timer_cancel(&self.t_aux)
        self.result = None
        self._log(ERROR, f"auth http server {self.srv.auth.peer} kept the login waiting "
                  f"longer than timeout", "in http auth state")
        self._to(S_DIALOGUE)
        return self.run(self.m.on_auth_error())

    cdef int _auth_failed(self, bint retry) except -1:
        res = self.result
        self.result = None
        self._to(S_DIALOGUE)
        if retry:
            self.loop.queue(self.srv.timeout).add(&self.t_main, self, T_MAIN)
        self.run(self.m.on_auth_fail(res.error_message or b"", res.error_code, retry,
                                     res.sasl_error))
        if self.state == S_DIALOGUE and self.c.rd_ready:
            self._read_client()
        return 0

    # --- the backend ---------------------------------------------------------------------------

    cdef int _connect_backend(self, AuthResult res) except -1:
        cdef Server srv = self.srv
        cdef AuthRequest auth = self.m.auth
        cdef BackendLogin login
        cdef str mode = srv.conf.proxy_ssl
        self._to(S_BACKEND)
        self.user = auth.user
        self.up_server = res.server     # log lines say "upstream: server:port"
        self.up_port = res.port
        header = b""
        if srv.proxy_protocol != "off":
            header = self._backend_proxy_header()
        if res.backend_auth is not None:
            auth.backend_auth = res.backend_auth    # Auth-SMTP-Auth-Method, for this login
        login = srv.login_conf.new_login(auth, self.client_ip, self.client_host, header)
        if srv.login_conf.client_id:
            local = self._local_addr()
            if local is None:
                login.set_client(self.client_ip, self.client_port, None, 0)
            else:
                login.set_client(self.client_ip, self.client_port, local[0], local[1])
        if res.ssl_backend is not None:
            # beyond nginx: Auth-SSL-Backend chooses TLS to the backend for this login
            text = res.ssl_backend.decode("latin-1").strip().lower()
            if text in TLS_MODES:
                mode = text
        if mode != "off":
            login.tls_mode = TLS_MODES[mode]
            self.tls_ctx = srv.conf.tls_backend
            self.tls_name = (srv.conf.proxy_ssl_name or res.server.decode("latin-1")).encode()
        self.loop.queue(srv.timeout).add(&self.t_main, self, T_MAIN)
        self.up_tries = srv.next_tries
        if self.trace is not None:
            addr = res.addr or ""
            self.target = f"[{addr}]:{res.port}" if ":" in addr else f"{addr}:{res.port}"
        return self.up_connect(res.addr.encode() if res.addr else b"", res.port or 0, login)

    cdef bytes _backend_proxy_header(self):
        cdef bytes local_ip = None
        cdef int local_port = 0
        local = self._local_addr()
        if local is not None:
            local_ip, local_port = local
        if self.srv.proxy_protocol == "v2":
            return proxy_build_v2(self.client_ip, self.client_port, local_ip, local_port, None)
        return proxy_build_v1(self.client_ip, self.client_port, local_ip, local_port)

    # the Upstream's outcome
    cdef int up_active(self) noexcept:
        return self.state == S_BACKEND

    cdef int up_opened(self) except -1:
        self.eng.connections += 1
        self.up_counted = False
        if self.trace is not None:
            self.trace.connect(self.target, self.b.fd)
        return 0

    cdef int up_send_client(self, bytes data) except -1:
        if self._send(data) < 0:
            return self.finish()
        return 0

    cdef int up_logged_in(self) except -1:
        return self._logged_in()

    cdef int up_refused(self) except -1:
        self._backend_over(False)
        self._end_as(E_BACKEND_ERROR)
        return self.close()

    cdef int up_log(self, int level, str message, str action) except -1:
        return self._log(level, message, action)

    cdef int up_unreachable(self) except -1:
        self.srv.auth.forget(self.cache_key)    # a kept answer named this backend: dropped
        self.cache_key = None
        return 0

    cdef int up_reask(self) except -1:
        """Beyond nginx: auth_http is asked about the same credentials again, with the
        backends that could not be reached."""
        cdef AuthRequest auth = self.m.auth
        self._attempt_over(False)       # each backend that failed counts
        self.up_counted = True          # (give_up's reply is this failure's)
        self.up_err = BE_NONE
        self.up_t1 = 0
        self.up_tls = UT_NONE
        self.eng.connections -= 1
        auth.user, auth.passwd, auth.backend_auth = self.ask_user, self.ask_passwd, b""
        return self._ask_auth()

    # --- the relay -----------------------------------------------------------------------------

    cdef int _logged_in(self) except -1:
        cdef Server srv = self.srv
        cdef bytes to_backend, to_client
        timer_cancel(&self.t_main)
        self._backend_over(True)
        if srv.log_level >= INFO:
            srv.log.log(
                INFO,
                f"client logged in, client: {self.client_ip.decode()}, server: "
                f"{self.entry.addr_text}, login: \"{self.user.decode('latin-1')}\", "
                f"upstream: {self.up_server.decode('latin-1')}:{self.up_port}",
                self.id)
        self.ask_user = self.ask_passwd = None
        to_backend = self.m.take_input()
        to_client = self.login.take_output()
        # whatever the sockets did not take yet goes first, in order
        if self.c.out != NULL:
            to_client = self._take_out(&self.c) + to_client
        if self.b.out != NULL:
            to_backend = self._take_out(&self.b) + to_backend
        self.m = None
        self.login = None
        self._to(S_RELAY)
        self.mx_bytes[UP] = srv.mx[SM_BYTES_UP]
        self.mx_bytes[DOWN] = srv.mx[SM_BYTES_DOWN]
        self.mx_active = srv.mx[SM_RELAYS]
        return self.relay_start(to_backend, to_client)

    cdef bytes _take_out(self, Sock *s):
        cdef bytes rest = PyBytes_FromStringAndSize(s.out + s.out_off, s.out_len - s.out_off)
        if s.out != NULL:
            free(s.out)
            s.out = NULL
            s.out_len = s.out_off = 0
        return rest

    cdef int relay_closed(self) except -1:
        cdef Server srv = self.srv
        cdef int why = self.why
        self.state = S_CLOSED
        if why == END_DONE:
            self._end_as(E_CLIENT_CLOSED if self.first_eof == CLIENT + 1 else E_BACKEND_CLOSED)
        elif why == END_TIMEOUT:
            self._end_as(E_TIMEOUT)
        elif why == END_CLOSED:
            self._end_as(E_SHUTDOWN)
        else:
            self._end_as(E_ERROR)
        if self.trace is not None:
            self.trace.closed()
        self.eng.connections -= 2
        if srv.log_level >= INFO:
            self._relay_log(why)
        self._ended()
        self.eng.ended(self)
        return 0

    # --- ending --------------------------------------------------------------------------------

    cdef int close(self) except -1:
        """Ends the session once the client's pending output is written (bounded by the
        `timeout`: a client that reads nothing does not keep it)."""
        if self.state == S_CLOSED or self.state == S_CLOSING:
            return 0
        self._stop_work()
        if self.c.out == NULL or self.c.fd < 0:
            return self.finish()
        self.state = S_CLOSING
        self.loop.queue(self.srv.timeout).add(&self.t_main, self, T_MAIN)
        return 0

    cdef int _stop_work(self) except -1:
        timer_cancel(&self.t_main)
        timer_cancel(&self.t_aux)
        if self.auth_handle is not None:
            self.srv.auth.cancel(self.auth_handle)
            self.auth_handle = None
        if self.lookup is not None:
            self.lookup.cancel()
            self.lookup = None
        if self.b.fd >= 0:
            self.eng.connections -= 1
        self.up_drop()
        self.m = None
        return 0

    cdef int failed(self) except -1:
        self.finish()
        return 0

    cdef int finish(self) except -1:
        """Ends the session now."""
        if self.state == S_CLOSED:
            return 0
        if self.state == S_RELAY:
            return self.relay_end(END_CLOSED, 0)
        if self.trace is not None:
            self.trace.closed()
        self._stop_work()
        self.state = S_CLOSED
        if self.c.fd >= 0:
            self.loop.unregister(self)
            sock_close(&self.c)
            self.eng.connections -= 1
        self._ended()
        self.eng.ended(self)
        return 0

    cdef int shut(self, str reason) except -1:
        self.shut_reason = reason
        self._end_as(E_SHUTDOWN)
        return self.finish()
