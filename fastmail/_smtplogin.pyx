# cython: language_level=3
"""The SMTP backend login: log in to an SMTP backend nginx's way, then hand over to the relay.

Owns: EHLO/HELO with the server_name, XCLIENT (every value xtext-encoded: mainline nginx
encodes LOGIN=, 1.22.1 nothing), the client's own HELO after it, then proxy_smtp_auth's AUTH
PLAIN or (beyond nginx) AUTH LOGIN, or for smtp_auth none the replay of the client's MAIL FROM
and RCPT TO; with proxy_client_id the client's own HELO name where XCLIENT is off or not
offered; the reply checks and what the client sees when the login ends. The shared reply
reading, the endings and the proxy_ssl STARTTLS dialogue are BackendLogin's (_login.pyx).
Sans-IO, as every login.
Mirrors the SMTP states of nginx's ngx_mail_proxy_module.c (ngx_mail_proxy_smtp_handler).
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE

from fastmail._core cimport AuthRequest, ba_slice, ba_find_crlf, cat3
from fastmail._login cimport (BackendLogin, LoginConf, FIRST_STATE, PROTO_SMTP,
                              has_ctl as _ctl)

import binascii

SMTP_INTERNAL_ERROR = b"451 4.3.2 Internal server error\r\n"
SMTP_AUTH_OK = b"235 2.0.0 OK\r\n"

# nginx's ngx_mail_proxy SMTP states, named for what was last sent (the reply check follows it).
cdef enum:
    SMTP_START = FIRST_STATE
    SMTP_HELO
    SMTP_HELO_XCLIENT
    SMTP_HELO_AUTH
    SMTP_HELO_FROM
    SMTP_XCLIENT
    SMTP_XCLIENT_HELO
    SMTP_XCLIENT_AUTH
    SMTP_XCLIENT_FROM
    SMTP_FROM
    SMTP_TO
    SMTP_FROM_TO        # proxy_pipelining: MAIL FROM and RCPT TO sent together
    SMTP_AUTH           # AUTH PLAIN, or the AUTH LOGIN password, sent: 235 ends the login
    SMTP_AUTH_LOGIN     # `AUTH LOGIN` sent: a 334 asks for the user name
    SMTP_AUTH_LOGIN_USER  # the user name sent: a 334 asks for the password


cdef const char *_HEX = b"0123456789ABCDEF"


cdef inline bint _xtext_escaped(unsigned char c) noexcept:
    return c <= 0x20 or c >= 0x7F or c == 0x2B or c == 0x3D


cpdef bytes xtext(bytes value):
    """RFC 3461 xtext as mainline nginx writes it (NGX_ESCAPE_MAIL_XTEXT): bytes 0x00-0x20,
    '+', '=' and 0x7F-0xFF become '+' and two upper-case hex digits."""
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(value)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(value), i, size = n
    cdef unsigned char c
    cdef char *q
    cdef bytes out
    for i in range(n):
        if _xtext_escaped(p[i]):
            size += 2
    if size == n:
        return value
    out = PyBytes_FromStringAndSize(NULL, size)
    q = PyBytes_AS_STRING(out)
    for i in range(n):
        c = p[i]
        if _xtext_escaped(c):
            q[0] = 0x2B
            q[1] = _HEX[c >> 4]
            q[2] = _HEX[c & 15]
            q += 3
        else:
            q[0] = <char>c
            q += 1
    return out


cdef bint _ehlo_has(bytes reply, bytes keyword):
    """An EHLO reply lists this extension keyword (its lines' first word after the code)."""
    for line in reply.split(b"\r\n"):
        words = line[4:].split(None, 1)
        if words and words[0].upper() == keyword:
            return True
    return False


cdef class SmtpLogin(BackendLogin):
    """SMTP: EHLO/HELO, XCLIENT, client HELO, then AUTH PLAIN or the MAIL/RCPT replay
    (ngx_mail_proxy_smtp_handler). `client_addr` is the client address text after realip (no
    port), `client_host` the resolver result (`[UNAVAILABLE]` without a resolver). Beyond nginx:
    `smtp_auth_method` b"login" makes proxy_smtp_auth's AUTH a LOGIN dialogue, and the
    AuthRequest's `backend_auth` (Auth-SMTP-Auth-Method: off, plain, login) overrides both;
    `client_id` (proxy_client_id) sends the client's own HELO name where nginx's XCLIENT is
    off or the backend's EHLO reply does not list XCLIENT."""

    cdef bytes server_name
    cdef bytes client_addr
    cdef bytes client_host
    cdef bint xclient
    cdef bint pauth
    cdef bint auth_login        # proxy_smtp_auth with AUTH LOGIN instead of PLAIN
    cdef bint none
    cdef bint pipelining

    def __init__(self, AuthRequest auth, *, server_name, client_addr,
                 client_host=b"[UNAVAILABLE]", bint xclient=True, bint proxy_smtp_auth=False,
                 Py_ssize_t proxy_buffer=4096, bint pass_error_message=False,
                 bytes proxy_header=b"", bint pipelining=False, bint client_id=False,
                 bytes smtp_auth_method=b"plain"):
        self._setup(auth, proxy_buffer, pass_error_message, proxy_header)
        self._smtp(_b(server_name), _b(client_addr), _b(client_host), xclient, proxy_smtp_auth,
                   pipelining, client_id, smtp_auth_method)

    cdef void _smtp(self, bytes server_name, bytes client_addr, bytes client_host, bint xclient,
                    bint proxy_smtp_auth, bint pipelining, bint client_id,
                    bytes smtp_auth_method):
        cdef AuthRequest auth = self.auth
        self.internal_error = SMTP_INTERNAL_ERROR
        self.stls_proto = PROTO_SMTP
        self.state = SMTP_START
        self.server_name = server_name
        self.client_addr = client_addr
        self.client_host = client_host
        self.xclient = xclient
        self.pauth = proxy_smtp_auth
        self.auth_login = smtp_auth_method == b"login"
        if auth.backend_auth:
            self.pauth = auth.backend_auth != b"off"
            self.auth_login = auth.backend_auth == b"login"
        self.none = auth.method == b"none"
        self.pipelining = pipelining
        self.client_id = client_id

    cdef bint _unsafe(self):
        cdef AuthRequest a = self.auth
        if _ctl(self.server_name) or _ctl(a.smtp_helo):
            return True
        if self.none and (_ctl(a.smtp_from) or _ctl(a.smtp_to)):
            return True
        # NUL would shift the fields of the AUTH PLAIN message (LOGIN sends each alone).
        return (self.pauth and not self.auth_login
                and (b"\0" in a.user or b"\0" in a.passwd))

    cdef int _after_helo(self, int helo_none, int helo_auth, int helo_plain):
        if self.none:
            return helo_none
        return helo_auth if self.pauth else helo_plain

    cdef int _on_reply(self) except -1:
        # a reply of at least 4 bytes (_replies, or the greeting before STARTTLS)
        cdef const char *r = PyByteArray_AS_STRING(self.rbuf)
        cdef Py_ssize_t n = PyByteArray_GET_SIZE(self.rbuf), m
        cdef int st = self.state, code, nxt
        cdef bint ok
        cdef AuthRequest a = self.auth
        cdef bytes line, name
        if r[3] == 45:  # '-': multi-line, wait for the last line (nginx checks its 4th byte)
            m = n - 7
            while m > 0 and not (r[m] == 13 and r[m + 1] == 10):
                m -= 1
            if m <= 0 or r[m + 5] == 45:
                return 0
        code = _code(r)
        if st == SMTP_START:
            ok = code == 220
        elif (st == SMTP_XCLIENT or st == SMTP_XCLIENT_HELO or st == SMTP_XCLIENT_AUTH
              or st == SMTP_XCLIENT_FROM):
            ok = code == 220 or code == 250
        elif st == SMTP_AUTH:
            ok = code == 235
        elif st == SMTP_AUTH_LOGIN or st == SMTP_AUTH_LOGIN_USER:
            ok = code == 334  # the prompt's text varies (VXNlcm5hbWU6, dXNlcm5hbWU6...)
        elif st == SMTP_FROM_TO:
            # the MAIL FROM reply, then (maybe in a later read) the RCPT TO reply
            m = ba_find_crlf(self.rbuf, 0) + 2
            if code != 250:
                return self._invalid()
            if n - m < 4:
                return 0
            return self._done_reply(m)
        elif st == SMTP_TO:
            ok = True  # the client gets the backend's RCPT reply, whatever it is
        else:
            ok = code == 250
        if not ok:
            return self._invalid()

        if st == SMTP_START:
            self.phase = "sending HELO/EHLO to upstream"
            name = self.server_name
            if self.client_id and not self.xclient and a.smtp_helo:
                name = a.smtp_helo  # the client's own name, as it greeted us
            line = cat3(b"EHLO " if a.esmtp or self.xclient else b"HELO ", name, b"\r\n")
            if self.xclient:
                nxt = SMTP_HELO_XCLIENT
            else:
                nxt = self._after_helo(SMTP_HELO_FROM, SMTP_HELO_AUTH, SMTP_HELO)
            return self._send(line, nxt)
        if st == SMTP_HELO_XCLIENT:
            if not self.client_id or _ehlo_has(ba_slice(self.rbuf, 0, n), b"XCLIENT"):
                self.phase = "sending XCLIENT to upstream"
                return self._send(self._xclient_line(), self._after_xclient())
            # proxy_client_id, a backend without XCLIENT (nginx sends it anyway and fails):
            # the client's own HELO/EHLO, or on from our EHLO when the client gave no name
            st = self._after_helo(SMTP_HELO_FROM, SMTP_HELO_AUTH, SMTP_HELO)
            if a.smtp_helo:
                st = SMTP_XCLIENT_HELO
        if st == SMTP_XCLIENT_HELO:
            self.phase = "sending client HELO/EHLO to upstream"
            line = cat3(b"EHLO " if a.esmtp else b"HELO ", a.smtp_helo, b"\r\n")
            return self._send(line, self._after_helo(SMTP_HELO_FROM, SMTP_HELO_AUTH, SMTP_HELO))
        if st == SMTP_HELO_AUTH or st == SMTP_XCLIENT_AUTH:
            self.phase = "sending AUTH to upstream"
            if not a.passwd:
                return self._internal("no password available", "error")
            if self.auth_login:
                return self._send(b"AUTH LOGIN\r\n", SMTP_AUTH_LOGIN)
            plain = binascii.b2a_base64(b"\0" + a.user + b"\0" + a.passwd, newline=False)
            return self._send(cat3(b"AUTH PLAIN ", plain, b"\r\n"), SMTP_AUTH)
        if st == SMTP_AUTH_LOGIN:
            self.phase = "sending user name to upstream"
            return self._send(binascii.b2a_base64(a.user, newline=False) + b"\r\n",
                              SMTP_AUTH_LOGIN_USER)
        if st == SMTP_AUTH_LOGIN_USER:
            self.phase = "sending password to upstream"
            return self._send(binascii.b2a_base64(a.passwd, newline=False) + b"\r\n", SMTP_AUTH)
        if st == SMTP_HELO_FROM or st == SMTP_XCLIENT_FROM:
            self.phase = "sending MAIL FROM to upstream"
            if self.pipelining and b"PIPELINING" in ba_slice(self.rbuf, 0, n).upper():
                # RFC 2920: MAIL and RCPT may go in one group; the client gets RCPT's reply
                return self._send(a.smtp_from + b"\r\n" + a.smtp_to + b"\r\n", SMTP_FROM_TO)
            return self._send(a.smtp_from + b"\r\n", SMTP_FROM)
        if st == SMTP_FROM:
            self.phase = "sending RCPT TO to upstream"
            return self._send(a.smtp_to + b"\r\n", SMTP_TO)
        # SMTP_HELO, SMTP_XCLIENT, SMTP_AUTH, SMTP_TO: logged in.
        if self.none:
            return self._done_reply(0)
        return self._done(SMTP_AUTH_OK)

    cdef int _after_xclient(self):
        if self.auth.smtp_helo:
            return SMTP_XCLIENT_HELO
        return self._after_helo(SMTP_XCLIENT_FROM, SMTP_XCLIENT_AUTH, SMTP_XCLIENT)

    cdef bytes _xclient_line(self):
        cdef bytes addr = self.client_addr
        if b":" in addr and not addr.startswith(b"unix:"):
            addr = b"IPV6:" + addr
        if self.auth.user and not self.pauth:
            return b"".join((b"XCLIENT ADDR=", xtext(addr), b" LOGIN=", xtext(self.auth.user),
                             b" NAME=", xtext(self.client_host), b"\r\n"))
        return b"".join((b"XCLIENT ADDR=", xtext(addr), b" NAME=", xtext(self.client_host),
                         b"\r\n"))


cdef inline int _code(const char *r):
    """The reply code of a reply line, or -1 when its first three bytes are not digits."""
    if not (48 <= r[0] <= 57 and 48 <= r[1] <= 57 and 48 <= r[2] <= 57):
        return -1
    return (r[0] - 48) * 100 + (r[1] - 48) * 10 + r[2] - 48


cdef bytes _b(value):
    if value is None:
        return b""
    if isinstance(value, str):
        return (<str>value).encode("latin-1")
    return bytes(value)


cdef class SmtpLoginConf(LoginConf):
    cdef public bytes server_name
    cdef public bint xclient
    cdef public bint proxy_smtp_auth
    cdef public bytes smtp_auth_method   # proxy_smtp_auth_method: b"plain" | b"login"

    def __init__(self, Py_ssize_t proxy_buffer=4096, bint pass_error_message=False,
                 bint pipelining=False, bint client_id=False, *, server_name=b"localhost",
                 bint xclient=True, bint proxy_smtp_auth=False, smtp_auth_method=b"plain"):
        LoginConf.__init__(self, proxy_buffer, pass_error_message, pipelining, client_id)
        self.server_name = _b(server_name)
        self.xclient = xclient
        self.proxy_smtp_auth = proxy_smtp_auth
        self.smtp_auth_method = _b(smtp_auth_method)

    cpdef BackendLogin new_login(self, AuthRequest auth, bytes client_addr, bytes client_host,
                                 bytes proxy_header):
        # no keyword arguments: __init__ would parse them on every login
        cdef SmtpLogin login = SmtpLogin.__new__(SmtpLogin)
        login._setup(auth, self.proxy_buffer, self.pass_error_message, proxy_header)
        login._smtp(self.server_name, client_addr or b"", client_host or b"", self.xclient,
                    self.proxy_smtp_auth, self.pipelining, self.client_id,
                    self.smtp_auth_method)
        return login
