# cython: language_level=3, boundscheck=False, wraparound=False
"""POP3 client session machine (sans-IO): what nginx says to a POP3 client before login.

Owns Pop3Profile (greeting, CAPA and AUTH replies prebuilt per server block, limits) and
Pop3Session (one per connection: the line parser over the receive buffer, the state x command
dispatch, the SASL steps, STLS and the auth_http results). Must not touch sockets, clocks or
DNS, the auth_http request format (auth_http.py) or the backend login (_login.pyx).
Mirrors nginx's ngx_mail_pop3_handler.c; differences from nginx are listed in Pop3Session's
docstring and docs/differences.md.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.string cimport memchr

from fastmail._core cimport (
    ba_add, ba_slice, ba_cut, PyByteArray_Resize,
    ACT_AUTH, ACT_CLOSE, ACT_SEND, ACT_STARTTLS, AuthRequest, Machine, Profile, decode_base64,
    encode_base64, has_ctl, make_salt, sasl_oauthbearer, sasl_plain, sasl_xoauth2,
)
from fastmail._core cimport TLS_OFF as STARTTLS_OFF, TLS_ON as STARTTLS_ON
from fastmail._core cimport TLS_ONLY as STARTTLS_ONLY

# --- prebuilt replies (ngx_mail_pop3_handler.c) ----------------------------------------------

cdef bytes R_OK = b"+OK\r\n"
cdef bytes R_ERR = b"-ERR invalid command\r\n"
cdef bytes R_INTERNAL = b"-ERR internal server error\r\n"
cdef bytes R_NEXT = b"+ \r\n"
cdef bytes R_USERNAME = b"+ VXNlcm5hbWU6\r\n"
cdef bytes R_PASSWORD = b"+ UGFzc3dvcmQ6\r\n"
cdef bytes R_GREETING = b"+OK POP3 ready\r\n"
cdef bytes R_CAPA_HEAD = b"+OK Capability list follows\r\n"
cdef bytes R_AUTH_HEAD = b"+OK methods supported:\r\n"

GREETING = R_GREETING
OK = R_OK
ERR_INVALID = R_ERR
ERR_INTERNAL = R_INTERNAL

# pop3_auth bits, in the order nginx lists the SASL names
cdef enum:
    M_PLAIN = 1
    M_APOP = 2
    M_CRAM = 4
    M_EXTERNAL = 8
    M_XOAUTH2 = 16
    M_OAUTHBEARER = 32

_METHOD_BITS = {
    "plain": M_PLAIN, "apop": M_APOP, "cram-md5": M_CRAM, "external": M_EXTERNAL,
    "xoauth2": M_XOAUTH2, "oauthbearer": M_OAUTHBEARER,
}
_SASL_NAMES = (
    (M_PLAIN, b"PLAIN"), (M_PLAIN, b"LOGIN"), (M_CRAM, b"CRAM-MD5"),
    (M_EXTERNAL, b"EXTERNAL"), (M_XOAUTH2, b"XOAUTH2"), (M_OAUTHBEARER, b"OAUTHBEARER"),
)
_STARTTLS = {"off": STARTTLS_OFF, "on": STARTTLS_ON, "only": STARTTLS_ONLY}


cdef class Pop3Profile(Profile):
    """Per server block: prebuilt replies and limits (ngx_mail_pop3_merge_srv_conf)."""

    cdef readonly bytes capa            # TLS, starttls off, or the USER state
    cdef readonly bytes capa_stls       # starttls on, before TLS
    cdef readonly bytes capa_only       # starttls only, before TLS
    cdef readonly bytes auth_list       # reply to a bare AUTH
    cdef readonly bytes server_name
    cdef readonly int methods
    cdef readonly int starttls
    cdef readonly int client_buffer
    cdef readonly int max_errors
    cdef readonly int max_commands

    def __init__(self, capabilities=(b"TOP", b"USER", b"UIDL"), auth_methods=("plain",),
                 str starttls="off", tls_available=None, int client_buffer=128,
                 int max_errors=5, int max_commands=1000, server_name=b"localhost"):
        cdef int bits = 0
        for name in auth_methods:
            try:
                bits |= _METHOD_BITS[name.lower()]
            except KeyError:
                raise ValueError(f"unknown pop3_auth method {name!r}") from None
        if starttls not in _STARTTLS:
            raise ValueError(f"starttls must be off, on or only, not {starttls!r}")
        if client_buffer < 3:
            raise ValueError("client_buffer must hold at least one line")
        self.methods = bits
        self.starttls = _STARTTLS[starttls]
        if tls_available is not None and not tls_available:
            # nginx refuses such a config; without a TLS context STLS cannot be offered
            self.starttls = STARTTLS_OFF
        self.client_buffer = client_buffer
        self.max_errors = max_errors
        self.max_commands = max_commands
        self.server_name = server_name.encode() if isinstance(server_name, str) else server_name

        caps = [c.encode("latin-1") if isinstance(c, str) else bytes(c) for c in capabilities]
        names = [n for bit, n in _SASL_NAMES if bits & bit]
        lines = b"".join(c + b"\r\n" for c in caps)
        sasl = b"SASL" + b"".join(b" " + n for n in names) + b"\r\n"
        self.capa = R_CAPA_HEAD + lines + sasl + b".\r\n"
        self.capa_stls = R_CAPA_HEAD + lines + sasl + b"STLS\r\n.\r\n"
        self.capa_only = (R_CAPA_HEAD + b"".join(c + b"\r\n" for c in caps if c.upper() != b"USER")
                          + b"STLS\r\n.\r\n")
        self.auth_list = R_AUTH_HEAD + b"".join(n + b"\r\n" for n in names) + b".\r\n"

    @property
    def needs_salt(self):
        """APOP or CRAM-MD5 enabled: the greeting carries <random.time@server_name>."""
        return bool(self.methods & (M_APOP | M_CRAM))

    cpdef Machine new_session(self, bint tls):
        """A session machine for one client connection of this server{}."""
        cdef Pop3Session s = Pop3Session.__new__(Pop3Session)
        # no Python call: __init__'s argument parsing is per connection
        s._init(self, tls)
        return s


# --- the line parser (ngx_mail_parse.c:ngx_mail_pop3_parse_command) --------------------------

cdef enum:
    C_NONE = 0
    C_USER
    C_PASS
    C_APOP
    C_QUIT
    C_CAPA
    C_AUTH
    C_NOOP
    C_STLS

cdef enum:
    SW_COMMAND = 0
    SW_SPACES
    SW_ARGUMENT
    SW_ALMOST_DONE

cdef enum:
    P_OK = 0
    P_INVALID = 1

cdef struct Line:
    int cmd
    int nargs
    Py_ssize_t start[3]
    Py_ssize_t end[3]


cdef inline int _command(const unsigned char *c) noexcept nogil:
    cdef unsigned int w = ((<unsigned int>(c[0] & 0xDF) << 24) | (<unsigned int>(c[1] & 0xDF) << 16)
                           | (<unsigned int>(c[2] & 0xDF) << 8) | <unsigned int>(c[3] & 0xDF))
    # the caller has checked the four bytes are letters, so & 0xDF upper-cases exactly
    if w == 0x55534552:     # USER
        return C_USER
    if w == 0x50415353:     # PASS
        return C_PASS
    if w == 0x41504F50:     # APOP
        return C_APOP
    if w == 0x51554954:     # QUIT
        return C_QUIT
    if w == 0x43415041:     # CAPA
        return C_CAPA
    if w == 0x41555448:     # AUTH
        return C_AUTH
    if w == 0x4E4F4F50:     # NOOP
        return C_NOOP
    if w == 0x53544C53:     # STLS
        return C_STLS
    return C_NONE


cdef int parse_line(const unsigned char *p, Py_ssize_t n, bint sasl, Line *ln) noexcept nogil:
    """One complete line p[0:n] (p[n-1] is LF) -> P_OK with the command and up to three
    argument spans, or P_INVALID. The state lives on the C stack: nothing survives the line.
    A SASL response line is read as arguments from its first byte (nginx's sw_argument)."""
    cdef Py_ssize_t i, arg_start = 0
    cdef unsigned char ch
    cdef int state
    ln.nargs = 0
    if sasl:
        state = SW_ARGUMENT
        ln.cmd = C_AUTH
    else:
        state = SW_COMMAND
        ln.cmd = C_NONE
    for i in range(n):
        ch = p[i]
        if state == SW_COMMAND:
            if ch == b' ' or ch == b'\r' or ch == b'\n':
                if i != 4:
                    return P_INVALID
                ln.cmd = _command(p)
                if ln.cmd == C_NONE:
                    return P_INVALID
                if ch == b' ':
                    state = SW_SPACES
                elif ch == b'\r':
                    state = SW_ALMOST_DONE
                else:
                    return P_OK
            elif not ((b'A' <= ch <= b'Z') or (b'a' <= ch <= b'z')):
                return P_INVALID
        elif state == SW_SPACES:
            if ch == b' ':
                pass
            elif ch == b'\r':
                state = SW_ALMOST_DONE
            elif ch == b'\n':
                return P_OK
            elif ln.nargs <= 2:
                state = SW_ARGUMENT
                arg_start = i
            else:
                return P_INVALID
        elif state == SW_ARGUMENT:
            if ch == b' ' and (ln.cmd == C_USER or ln.cmd == C_PASS):
                continue    # user names and passwords keep their inner and trailing spaces
            if ch == b' ' or ch == b'\r' or ch == b'\n':
                ln.start[ln.nargs] = arg_start
                ln.end[ln.nargs] = i
                ln.nargs += 1
                if ch == b' ':
                    state = SW_SPACES
                elif ch == b'\r':
                    state = SW_ALMOST_DONE
                else:
                    return P_OK
        else:
            return P_OK if ch == b'\n' else P_INVALID
    return P_INVALID


# --- the session ------------------------------------------------------------------------------

cdef enum:
    # states that parse input come first (< S_AUTH)
    S_START = 0
    S_USER
    S_LOGIN_USER        # the SASL states read response lines (>= S_LOGIN_USER, < S_AUTH)
    S_LOGIN_PASS
    S_PLAIN
    S_CRAM
    S_EXTERNAL
    S_XOAUTH2
    S_OAUTHBEARER
    S_SASL_ERROR        # Auth-Error-SASL challenge sent, waiting for the client's ack line
    S_AUTH              # auth_http is running: input is only buffered
    S_NEW               # before start()
    S_DONE              # logged in: input is kept for the relay
    S_TLS               # STLS handshake: plaintext input is dropped
    S_CLOSED
cdef class Pop3Session(Machine):
    """One POP3 client before login, as nginx 1.22.1 answers it, with freenginx's fixes.

    Beyond nginx: the buffer is compacted after every line, so pipelining works across any
    buffer boundary (the line limit is per line); EXTERNAL with an initial response is refused
    when not enabled; credentials are never reused across attempts (EXTERNAL sends an empty
    password, CRAM-MD5 without a SP is refused); credentials holding CR, LF or NUL are refused
    with -ERR invalid command; Auth-Salt goes with APOP and CRAM-MD5 only (as mainline);
    AUTH XOAUTH2 / OAUTHBEARER as freenginx 1.27.1 does them.
    """

    cdef Pop3Profile profile
    cdef public bint tls
    cdef readonly int state
    cdef readonly bytes salt          # with CRLF, b"" when APOP and CRAM-MD5 are off
    cdef bytes _user
    cdef int _acts
    cdef const unsigned char *_line   # the line being dispatched (valid during dispatch only)
    cdef Line _ln
    cdef bytes _fail_msg              # Auth-Error-SASL flow: the failure text for later
    cdef bint _fail_retry
    cdef bytes _method                # method of the pending / last auth request

    def __init__(self, Pop3Profile profile not None, bint tls=False, salt=None):
        self._init(profile, tls)
        if salt is not None:
            self.salt = salt

    cdef int _init(self, Pop3Profile profile, bint tls) except -1:
        self.profile = profile
        self.tls = tls
        self.limit = profile.client_buffer
        self.max_errors = profile.max_errors
        self.max_commands = profile.max_commands
        self.state = S_NEW
        self._user = b""
        self._method = b""
        self.login_attempt = 0
        if profile.methods & (M_APOP | M_CRAM):
            self.salt = make_salt(profile.server_name)
        else:
            self.salt = b""
        return 0

    @property
    def stage(self):
        """What the machine waits for: "input", "auth", "tls", "done" (logged in), "closed"."""
        if self.state < S_AUTH or self.state == S_NEW:
            return "input"
        return {S_AUTH: "auth", S_TLS: "tls", S_DONE: "done"}.get(self.state, "closed")

    # --- events ------------------------------------------------------------------------------

    cpdef int start(self):
        if self.state != S_NEW:
            return 0
        if self.salt:
            self.send(b"+OK POP3 ready " + self.salt)
        else:
            self.send(R_GREETING)
        self.state = S_START
        self.phase = "in auth state"
        return self._run()

    cpdef int feed(self, bytes data):
        if self.state < S_AUTH or self.state == S_NEW:
            ba_add(self.buf, data)
            return self._run() if self.state != S_NEW else 0
        if self.state == S_AUTH or self.state == S_DONE:
            ba_add(self.buf, data)    # queued: processed after a retry, or relayed after login
        return 0                # S_TLS: plaintext after STLS is never executed; S_CLOSED

    cpdef int on_auth_ok(self):
        if self.state != S_AUTH:
            return 0
        self.state = S_DONE
        self.phase = "in http auth state"
        return 0

    cpdef int on_auth_fail(self, bytes message, object error_code=None, bint retry=False,
                           object sasl=None):
        """auth_http said no: `-ERR <message>`; retry=True (Auth-Wait given) goes back to the
        start state and processes queued input. `sasl` is Auth-Error-SASL, honoured for
        XOAUTH2/OAUTHBEARER only: its challenge is sent first and the -ERR follows the ack."""
        if self.state != S_AUTH:
            return 0
        msg = b"" if message is None else bytes(message)
        if sasl and (self._method == b"xoauth2" or self._method == b"oauthbearer"):
            self.send(b"+ " + bytes(sasl) + b"\r\n")
            self._fail_msg = msg
            self._fail_retry = retry
            self.state = S_SASL_ERROR
            self.phase = "in auth state"
            return self._run()
        self.send(b"-ERR " + msg + b"\r\n")
        self._failed(retry)
        return self._run()

    cpdef int on_auth_error(self):
        if self.state == S_CLOSED or self.state == S_DONE:
            return 0
        self.send(R_INTERNAL)
        self._close(None)
        return self._run()

    cpdef int after_starttls(self):
        self.state = S_TLS
        return self.on_tls_done()

    cpdef int on_tls_done(self):
        if self.state != S_TLS:
            return 0
        self.tls = True
        self.state = S_START
        return self._run()

    cpdef int on_timeout(self):
        if self.state == S_CLOSED or self.state == S_DONE:
            return 0
        self._close("client timed out")
        return self._run()

    cpdef int on_timer(self):
        return 0

    # --- internals -----------------------------------------------------------------------------

    cdef int _flush(self):
        cdef int acts = self._acts
        self._acts = 0
        if len(self._out):
            acts |= ACT_SEND
        return acts

    cdef void _close(self, reason):
        self.state = S_CLOSED
        self.close_reason = reason
        self._acts |= ACT_CLOSE

    cdef void _failed(self, bint retry):
        """After a failure reply: close, or (Auth-Wait given) start over with no credentials."""
        self._user = b""
        self._method = b""
        if retry:
            self.state = S_START
            self.phase = "in auth state"
        else:
            self._close(None)

    cdef int _run(self) except -1:
        """Parse and answer every complete line in the buffer, one reply per line, until the
        machine waits for auth_http, TLS or more input."""
        cdef Py_ssize_t pos = 0, size, avail, n
        cdef const unsigned char *base
        cdef const unsigned char *lf
        cdef int rc
        while self.state < S_AUTH:
            base = <const unsigned char *>PyByteArray_AS_STRING(self.buf)
            size = PyByteArray_GET_SIZE(self.buf)
            avail = size - pos
            if avail == 0:
                break
            n = avail if avail < self.limit else self.limit
            lf = <const unsigned char *>memchr(base + pos, b'\n', n)
            if lf == NULL:
                if avail >= self.limit:
                    self.send(R_ERR)
                    self._close("client sent too long command \"%s\""
                                % ba_slice(self.buf, pos, pos + self.limit).decode(
                                    "ascii", "backslashreplace") if self.log_info else None)
                    return self._flush()
                break
            n = lf - (base + pos) + 1
            rc = parse_line(base + pos, n, S_LOGIN_USER <= self.state < S_AUTH, &self._ln)
            self._line = base + pos
            pos += n
            self._dispatch(rc)
            self._line = NULL
        if self.state == S_TLS or self.state == S_CLOSED:
            PyByteArray_Resize(self.buf, 0)     # STARTTLS injection: nothing read before the handshake survives
        elif pos:
            ba_cut(self.buf, pos)
        return self._flush()

    cdef bytes _arg(self, int k):
        return PyBytes_FromStringAndSize(<const char *>self._line + self._ln.start[k],
                                         self._ln.end[k] - self._ln.start[k])

    cdef void _invalid(self):
        """Handler-level error: same reply as a parser error, not counted in max_errors."""
        self.send(R_ERR)
        self.state = S_START
        self._user = b""

    cdef void _dispatch(self, int rc) except *:
        cdef int state = self.state
        if rc == P_INVALID:
            self.errors += 1
            self._invalid()
            if self.errors >= self.max_errors:
                self._close("client sent too many invalid commands")
            return
        self.commands += 1
        if self.max_commands > 0 and self.commands > self.max_commands:
            self._invalid()
            self._close("client sent too many commands")
            return
        if state == S_START:
            self._start_state()
        elif state == S_USER:
            self._user_state()
        elif state == S_SASL_ERROR:
            self._sasl_error_ack()
        else:
            self._sasl_response(state)

    cdef bint _starttls_only(self):
        return self.profile.starttls == STARTTLS_ONLY and not self.tls

    cdef void _start_state(self) except *:
        cdef int cmd = self._ln.cmd
        cdef Pop3Profile pf = self.profile
        if cmd == C_NOOP:
            self.send(R_OK)
        elif cmd == C_CAPA:
            if self.tls or pf.starttls == STARTTLS_OFF:
                self.send(pf.capa)
            elif pf.starttls == STARTTLS_ON:
                self.send(pf.capa_stls)
            else:
                self.send(pf.capa_only)
        elif cmd == C_USER:
            if self._starttls_only() or self._ln.nargs != 1:
                self._invalid()
            else:
                self._user = self._arg(0)
                self.state = S_USER
                self.send(R_OK)
        elif cmd == C_QUIT:
            self.send(R_OK)
            self._close(None)
        elif cmd == C_APOP:
            if self._starttls_only() or self._ln.nargs != 2 or not (pf.methods & M_APOP):
                self._invalid()
            else:
                self._auth(b"apop", self._arg(0), self._arg(1), self.salt)
        elif cmd == C_AUTH:
            if self._starttls_only():
                self._invalid()
            elif self._ln.nargs == 0:
                self.send(pf.auth_list)
            else:
                self._auth_command()
        elif cmd == C_STLS:
            if self.tls or pf.starttls == STARTTLS_OFF:
                self._invalid()
            else:
                self.send(R_OK)
                self.state = S_TLS
                self._acts |= ACT_STARTTLS
        else:
            self._invalid()     # PASS without USER

    cdef void _user_state(self) except *:
        cdef int cmd = self._ln.cmd
        if cmd == C_PASS:
            if self._ln.nargs != 1:
                self._invalid()
            else:
                self._auth(b"plain", self._user, self._arg(0), b"")
        elif cmd == C_CAPA:
            self.send(self.profile.capa)
        elif cmd == C_NOOP:
            self.send(R_OK)
        elif cmd == C_QUIT:
            self.send(R_OK)
            self._close(None)
        else:
            self._invalid()

    cdef void _auth_command(self) except *:
        """AUTH <mechanism> [initial-response] (ngx_mail_auth_parse + ngx_mail_pop3_auth)."""
        cdef int nargs = self._ln.nargs
        cdef int methods = self.profile.methods
        cdef int st
        mech = self._arg(0).upper()
        if mech == b"LOGIN":
            if nargs == 1:
                self.send(R_USERNAME)
                self.state = S_LOGIN_USER
            elif nargs == 2:
                user = decode_base64(self._arg(1))
                if user is None:
                    self._invalid()
                else:
                    self._user = user
                    self.send(R_PASSWORD)
                    self.state = S_LOGIN_PASS
            else:
                self._invalid()
        elif mech == b"PLAIN":
            if nargs == 1:
                self.send(R_NEXT)
                self.state = S_PLAIN
            elif nargs == 2:
                self._sasl_response(S_PLAIN, 1)
            else:
                self._invalid()
        elif mech == b"CRAM-MD5":
            if nargs != 1 or not (methods & M_CRAM):
                self._invalid()
            else:
                self.send(b"+ " + encode_base64(self.salt[:len(self.salt) - 2]) + b"\r\n")
                self.state = S_CRAM
        elif mech == b"EXTERNAL":
            if nargs > 2 or not (methods & M_EXTERNAL):
                self._invalid()
            elif nargs == 2:
                self._sasl_response(S_EXTERNAL, 1)
            else:
                self.send(R_USERNAME)
                self.state = S_EXTERNAL
        elif mech == b"XOAUTH2" or mech == b"OAUTHBEARER":
            st = S_XOAUTH2 if mech == b"XOAUTH2" else S_OAUTHBEARER
            if nargs > 2 or not (methods & (M_XOAUTH2 if st == S_XOAUTH2 else M_OAUTHBEARER)):
                self._invalid()
            elif nargs == 2:
                self._sasl_response(st, 1)
            else:
                self.send(R_NEXT)
                self.state = st
        else:
            self._invalid()

    cdef void _sasl_response(self, int state, int k=0) except *:
        """A client response (argument k of this line) for the SASL step `state`."""
        data = decode_base64(self._arg(k))
        if data is None:
            self._invalid()
            return
        if state == S_LOGIN_USER:
            self._user = data
            self.send(R_PASSWORD)
            self.state = S_LOGIN_PASS
        elif state == S_LOGIN_PASS:
            self._auth(b"plain", self._user, data, b"")
        elif state == S_PLAIN:
            creds = sasl_plain(data)
            if creds is None:
                self._invalid()
            else:
                self._auth(b"plain", creds[0], creds[1], b"")
        elif state == S_CRAM:
            sp = data.find(b" ")
            if sp < 0 or len(data) - sp - 1 != 32:
                self._invalid()
            else:
                self._auth(b"cram-md5", data[:sp], data[sp + 1:], self.salt)
        elif state == S_EXTERNAL:
            self._auth(b"external", data, b"", b"")
        else:
            # no final ^A^A needed here, unlike IMAP and SMTP (kept as it was)
            if state == S_XOAUTH2:
                creds = sasl_xoauth2(data)
            else:
                creds = sasl_oauthbearer(data, False, False)
            if creds is None:
                self._invalid()
            else:
                self._auth(b"xoauth2" if state == S_XOAUTH2 else b"oauthbearer",
                           creds[0], creds[1], b"")

    cdef void _sasl_error_ack(self) except *:
        """The line after an Auth-Error-SASL challenge: XOAUTH2 wants an empty response,
        OAUTHBEARER one starting with AQ== (a ^A); then the failure text is sent."""
        arg = self._arg(0)
        if (arg == b"") if self._method == b"xoauth2" else arg.startswith(b"AQ=="):
            self.send(b"-ERR " + self._fail_msg + b"\r\n")
        else:
            self.send(R_ERR)
        self._fail_msg = None
        self._failed(self._fail_retry)

    cdef void _auth(self, bytes method, bytes user, bytes passwd, bytes salt) except *:
        if has_ctl(user) or has_ctl(passwd):
            self._invalid()     # fastmail: such bytes would split a backend command
            return
        self.login_attempt += 1
        self.auth = AuthRequest(b"pop3", method, user, passwd, salt, self.login_attempt)
        self._method = method
        self._user = b""
        self.state = S_AUTH
        self.phase = "in http auth state"
        self._acts |= ACT_AUTH
