# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""IMAP client session machine: everything a client says before it is logged in.

Owns: ImapProfile (reply bytes and limits built once per server block) and
ImapSession (the resumable command parser over the receive buffer and the
nginx state machine: CAPABILITY, NOOP, LOGOUT, STARTTLS, ID, LOGIN,
AUTHENTICATE with every SASL method). Must not touch sockets, clocks, DNS or
auth_http: it returns action bits and the driver (session.py) does the I/O.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE

from fastmail._core cimport (
    ba_add, ba_slice, ba_cut, PyByteArray_Resize,
    ACT_AUTH, ACT_CLOSE, ACT_SEND, ACT_STARTTLS, M_CRAM_MD5, M_EXTERNAL, M_LOGIN,
    M_OAUTHBEARER, M_PLAIN, M_XOAUTH2, TLS_OFF, TLS_ON, TLS_ONLY, AuthRequest, Machine, Profile,
    decode_base64, encode_base64, make_salt, sasl_cram_md5, sasl_oauthbearer, sasl_plain,
    sasl_xoauth2,
)

# Reply bytes (ngx_mail_imap_handler.c); fastmail's own additions are marked.
GREETING = b"* OK IMAP4 ready\r\n"
OK_COMPLETED = b"OK completed\r\n"
BAD_INVALID = b"BAD invalid command\r\n"
STAR_TAG = b"* "
BYE = b"* BYE\r\n"
NEXT = b"+ OK\r\n"                      # literal continuation, as nginx words it
PLUS_EMPTY = b"+ \r\n"
PLUS_USERNAME = b"+ VXNlcm5hbWU6\r\n"   # base64 "Username:"
PLUS_PASSWORD = b"+ UGFzc3dvcmQ6\r\n"   # base64 "Password:"
INTERNAL_ERROR = b"* BAD internal server error\r\n"
ID_NIL = b"* ID NIL\r\n"                # fastmail: RFC 2971 answer instead of BAD
OK_ID = b"OK ID completed\r\n"

# imap_auth values (bits from _core: nginx's fixed AUTH= advertising order).
_METHODS = {"plain": M_PLAIN, "login": M_LOGIN, "cram-md5": M_CRAM_MD5,
            "external": M_EXTERNAL, "xoauth2": M_XOAUTH2, "oauthbearer": M_OAUTHBEARER}
_AUTH_WORDS = ((M_PLAIN, b" AUTH=PLAIN"), (M_LOGIN, b" AUTH=LOGIN"),
               (M_CRAM_MD5, b" AUTH=CRAM-MD5"), (M_EXTERNAL, b" AUTH=EXTERNAL"),
               (M_XOAUTH2, b" AUTH=XOAUTH2"), (M_OAUTHBEARER, b" AUTH=OAUTHBEARER"))

# Session states.  Those below S_WAIT read client lines; the others do not.
cdef enum:
    S_START = 0
    S_LOGIN_USER = 1
    S_LOGIN_PASS = 2
    S_PLAIN = 3
    S_CRAM = 4
    S_EXTERNAL = 5
    S_XOAUTH2 = 6
    S_OAUTHBEARER = 7
    S_SASL_ERROR = 8      # Auth-Error-SASL challenge sent, waiting for the client's answer
    S_WAIT = 16
    S_AUTH = 16           # auth_http running
    S_TLS = 17            # STARTTLS handshake running
    S_DONE = 18           # auth ok: input belongs to the relay
    S_CLOSED = 19

# Parser states (ngx_mail_parse.c names in comments).
cdef enum:
    P_TAG = 0             # sw_start
    P_SP_CMD              # sw_spaces_before_command
    P_CMD                 # sw_command
    P_SP_ARG              # sw_spaces_before_argument
    P_ARG                 # sw_argument
    P_BACKSLASH           # sw_backslash
    P_LIT                 # sw_literal
    P_NOSYNC              # sw_no_sync_literal_argument
    P_START_LIT           # sw_start_literal_argument
    P_LIT_ARG             # sw_literal_argument
    P_END_LIT             # sw_end_literal_argument
    P_ALMOST              # sw_almost_done
    P_INVALID             # sw_invalid: skip to LF
    P_ID                  # fastmail: ID arguments, skipped to LF
    P_ID_LIT              # fastmail: literal inside ID arguments

cdef enum:
    R_AGAIN = 0
    R_OK = 1
    R_INVALID = 2
    R_NEXT = 3            # synchronizing literal header read: send "+ OK"
    R_TOOLONG = 4

cdef enum:
    C_NONE = 0
    C_NOOP
    C_LOGIN
    C_LOGOUT
    C_STARTTLS
    C_CAPABILITY
    C_AUTHENTICATE
    C_ID

cdef enum:
    MAX_ARGS = 3
    MAX_TAG = 32
    MAX_LITERAL = 0x7fffffff


cdef inline bint _is_tag_byte(unsigned char ch):
    return ((ch >= b"A" and ch <= b"Z") or (ch >= b"a" and ch <= b"z")
            or (ch >= b"0" and ch <= b"9") or ch == b"-" or ch == b"." or ch == b"_")


cdef inline bint _is_alpha(unsigned char ch):
    return (ch >= b"A" and ch <= b"Z") or (ch >= b"a" and ch <= b"z")


cdef inline bint _ieq(const unsigned char *p, const char *word, Py_ssize_t n):
    """Case-insensitive compare of n letters with an upper-case word."""
    cdef Py_ssize_t i
    for i in range(n):
        if (p[i] & 0xDF) != <unsigned char>word[i]:
            return False
    return True


cdef int _command(const unsigned char *c, Py_ssize_t n):
    # nginx matches names by exact length, case-insensitively; letters only reach here
    if n == 2 and _ieq(c, b"ID", 2):
        return C_ID
    if n == 4 and _ieq(c, b"NOOP", 4):
        return C_NOOP
    if n == 5 and _ieq(c, b"LOGIN", 5):
        return C_LOGIN
    if n == 6 and _ieq(c, b"LOGOUT", 6):
        return C_LOGOUT
    if n == 8 and _ieq(c, b"STARTTLS", 8):
        return C_STARTTLS
    if n == 10 and _ieq(c, b"CAPABILITY", 10):
        return C_CAPABILITY
    if n == 12 and _ieq(c, b"AUTHENTICATE", 12):
        return C_AUTHENTICATE
    return C_NONE


cdef bytes _unescape(bytes raw):
    """Quoted-string value: a backslash takes the next byte literally."""
    if b"\\" not in raw:
        return raw
    out = bytearray()
    cdef Py_ssize_t i = 0, n = len(raw)
    while i < n:
        if raw[i] == 0x5C and i + 1 < n:
            i += 1
        out.append(raw[i])
        i += 1
    return bytes(out)


cdef class ImapProfile(Profile):
    """Per server block: prebuilt replies (nginx ngx_mail_imap_merge_srv_conf) and limits."""

    cdef readonly bytes greeting
    cdef readonly bytes cap_plain       # TLS active or starttls off
    cdef readonly bytes cap_starttls    # starttls on, before TLS
    cdef readonly bytes cap_sto         # starttls only, before TLS
    cdef readonly int methods
    cdef readonly int starttls
    cdef readonly Py_ssize_t client_buffer
    cdef readonly int max_errors
    cdef readonly int max_commands
    cdef readonly bytes server_name

    def __init__(self, capabilities=(b"IMAP4", b"IMAP4rev1", b"UIDPLUS"),
                 auth_methods=("plain",), str starttls="off", bint tls_available=False,
                 Py_ssize_t client_buffer=4096, int max_errors=5, int max_commands=1000,
                 server_name=b"localhost"):
        cdef int m = 0
        for name in auth_methods:
            key = name.decode() if isinstance(name, bytes) else name
            if key.lower() not in _METHODS:
                raise ValueError(f"invalid imap_auth value {key!r}")
            m |= _METHODS[key.lower()]
        modes = {"off": TLS_OFF, "on": TLS_ON, "only": TLS_ONLY}
        if starttls not in modes:
            raise ValueError(f"invalid starttls value {starttls!r}")
        if client_buffer < 1:
            raise ValueError("client_buffer must be positive")
        self.methods = m
        # without a TLS context the config loader refuses starttls; never offer it here
        self.starttls = modes[starttls] if tls_available else TLS_OFF
        self.client_buffer = client_buffer
        self.max_errors = max_errors
        self.max_commands = max_commands
        self.server_name = server_name.encode() if isinstance(server_name, str) else server_name
        self.greeting = GREETING
        words = b"".join(b" " + (w.encode() if isinstance(w, str) else w) for w in capabilities)
        auth = b"".join(word for bit, word in _AUTH_WORDS if m & bit)
        self.cap_plain = b"* CAPABILITY" + words + auth + b"\r\n"
        self.cap_starttls = b"* CAPABILITY" + words + auth + b" STARTTLS\r\n"
        self.cap_sto = b"* CAPABILITY" + words + b" STARTTLS LOGINDISABLED\r\n"

    cpdef Machine new_session(self, bint tls):
        """A session machine for one client connection of this server{}."""
        cdef ImapSession s = ImapSession.__new__(ImapSession)
        # no Python call: __init__'s argument parsing is per connection
        s._init(self, tls)
        return s


cdef class ImapSession(Machine):
    """One client connection before login (sans-IO); see docs/internals.md."""

    cdef ImapProfile p
    cdef readonly bint tls
    cdef readonly int state
    cdef readonly bytes tag            # tag + SP of the command being served
    cdef bytes salt
    cdef bytes sasl_user               # AUTHENTICATE LOGIN user name between the two steps
    cdef int sasl_method               # method of the last auth request (Auth-Error-SASL)
    cdef bytes fail_text
    cdef bint fail_retry
    # parser
    cdef int ps
    cdef int cmd
    cdef Py_ssize_t pos, used, tag_end, cmd_start, arg_start, lit_len
    cdef bint quoted, nosync, has_backslash
    cdef int nargs
    cdef Py_ssize_t a_start[3]
    cdef Py_ssize_t a_end[3]
    cdef bint a_esc[3]

    def __init__(self, ImapProfile profile not None, bint tls=False):
        self._init(profile, tls)

    cdef int _init(self, ImapProfile profile, bint tls) except -1:
        self.p = profile
        self.tls = tls
        self.limit = profile.client_buffer
        self.max_errors = profile.max_errors
        self.max_commands = profile.max_commands
        self.state = S_START
        self.tag = STAR_TAG
        self.salt = b""
        self.sasl_user = b""
        self._reset_parser()
        return 0

    # --- driver events --------------------------------------------------------

    cpdef int start(self):
        self.send(self.p.greeting)
        return ACT_SEND | self._run()

    cpdef Py_ssize_t room(self):
        # an AUTHENTICATE exchange shares one client buffer (`used`), as nginx's
        return self.limit - self.used - PyByteArray_GET_SIZE(self.buf)

    cpdef int feed(self, bytes data):
        if self.state == S_CLOSED or self.state == S_TLS:
            # after STARTTLS any plaintext is dropped (CVE-2011-0411 class)
            return 0
        ba_add(self.buf, data)
        if self.state >= S_WAIT:
            return 0
        return self._run()

    cpdef int on_auth_ok(self):
        self.state = S_DONE
        return 0

    cpdef int on_auth_fail(self, bytes message, object error_code=None, bint retry=False,
                           object sasl=None):
        """auth_http refused: `<tag>NO <message>`, or the Auth-Error-SASL challenge
        first for XOAUTH2/OAUTHBEARER; retry=True returns to START."""
        if self.state != S_AUTH:
            return 0
        self.phase = "in auth state"
        if sasl is not None and (self.sasl_method == M_XOAUTH2
                                 or self.sasl_method == M_OAUTHBEARER):
            self.fail_text = message
            self.fail_retry = retry
            self.send(b"+ " + sasl + b"\r\n")
            self.state = S_SASL_ERROR
            self._reset_parser()
            return ACT_SEND | self._run()
        self.send(self.tag + b"NO " + message + b"\r\n")
        if not retry:
            return ACT_SEND | self._close(None)
        self._to_start()
        return ACT_SEND | self._run()

    cpdef int on_auth_error(self):
        self.send(INTERNAL_ERROR)
        return ACT_SEND | self._close(None)

    cpdef int after_starttls(self):
        self.state = S_TLS
        return self.on_tls_done()

    cpdef int on_tls_done(self):
        if self.state != S_TLS:
            return 0
        self.tls = True
        self._to_start()
        return self._run()

    cpdef int on_timeout(self):
        # nginx sends nothing on the pre-login deadline
        return self._close("client timed out")

    cpdef int on_timer(self):
        return 0

    # --- parser ---------------------------------------------------------------

    cdef inline void _reset_parser(self):
        self.pos = 0
        self.cmd = C_NONE
        self.nargs = 0
        self.quoted = False
        self.nosync = False
        self.lit_len = 0
        self.tag_end = 0
        self.has_backslash = False
        if S_START < self.state < S_WAIT:
            # a SASL response line is raw arguments from its first byte
            self.ps = P_ARG
            self.arg_start = 0
        else:
            self.ps = P_TAG
            self.arg_start = -1

    cdef inline void _to_start(self):
        self.state = S_START
        self.used = 0
        self._reset_parser()

    cdef inline bint _push_arg(self, Py_ssize_t end):
        self.a_start[self.nargs] = self.arg_start
        self.a_end[self.nargs] = end
        self.a_esc[self.nargs] = self.has_backslash
        self.nargs += 1
        self.arg_start = -1
        self.has_backslash = False
        return True

    cdef int _parse(self):
        """Advance over buffered bytes; one line (command, literal header or SASL
        response) per call.  Never looks past the client buffer bound."""
        cdef const unsigned char *b = <const unsigned char *>PyByteArray_AS_STRING(self.buf)
        cdef Py_ssize_t bound = self.limit - self.used
        cdef Py_ssize_t end = PyByteArray_GET_SIZE(self.buf)
        cdef Py_ssize_t p = self.pos, q, n
        cdef unsigned char ch
        cdef int st = self.ps
        if end > bound:
            end = bound
        while p < end:
            ch = b[p]
            if st == P_TAG:
                if ch == b" ":
                    self.tag_end = p + 1
                    st = P_SP_CMD
                elif not _is_tag_byte(ch) or p >= MAX_TAG:
                    st = P_INVALID
                    continue
            elif st == P_SP_CMD:
                if ch != b" ":
                    if not _is_alpha(ch):
                        st = P_INVALID
                        continue
                    self.cmd_start = p
                    st = P_CMD
            elif st == P_CMD:
                if ch == b" " or ch == b"\r" or ch == b"\n":
                    self.cmd = _command(b + self.cmd_start, p - self.cmd_start)
                    if self.cmd == C_NONE:
                        st = P_INVALID
                        continue
                    if ch == b" ":
                        st = P_ID if self.cmd == C_ID else P_SP_ARG
                    elif ch == b"\r":
                        st = P_ALMOST
                    else:
                        self.pos = p + 1
                        self.ps = st
                        return R_OK
                elif not _is_alpha(ch):
                    st = P_INVALID
                    continue
            elif st == P_SP_ARG:
                if ch == b" ":
                    pass
                elif ch == b"\r":
                    st = P_ALMOST
                elif ch == b"\n":
                    self.pos = p + 1
                    return R_OK
                elif self.nargs >= MAX_ARGS:
                    st = P_INVALID
                    continue
                elif ch == b"\"":
                    self.quoted = True
                    self.arg_start = p + 1
                    st = P_ARG
                elif ch == b"{":
                    self.lit_len = 0
                    st = P_LIT
                else:
                    self.arg_start = p
                    st = P_ARG
            elif st == P_ARG:
                if ch == b" " and self.quoted:
                    pass
                elif ch == b"\"" and self.quoted:
                    self.quoted = False
                    self._push_arg(p)
                    st = P_SP_ARG
                elif ch == b" ":
                    self._push_arg(p)
                    st = P_SP_ARG
                elif ch == b"\r" or ch == b"\n":
                    # nginx: CR/LF also ends an unterminated quoted string
                    self.quoted = False
                    self._push_arg(p)
                    if ch == b"\n":
                        self.pos = p + 1
                        return R_OK
                    st = P_ALMOST
                elif ch == b"\\" and self.quoted:
                    self.has_backslash = True
                    st = P_BACKSLASH
            elif st == P_BACKSLASH:
                if ch == b"\r" or ch == b"\n":
                    st = P_INVALID
                    continue
                st = P_ARG
            elif st == P_LIT:
                if ch >= b"0" and ch <= b"9":
                    self.lit_len = self.lit_len * 10 + (ch - 48)
                    if self.lit_len > MAX_LITERAL:
                        st = P_INVALID      # mainline 1.29.6: overflow is invalid
                        continue
                elif ch == b"}":
                    self.nosync = False
                    st = P_START_LIT
                elif ch == b"+":
                    st = P_NOSYNC
                else:
                    st = P_INVALID
                    continue
            elif st == P_NOSYNC:
                if ch != b"}":
                    st = P_INVALID
                    continue
                self.nosync = True
                st = P_START_LIT
            elif st == P_START_LIT:
                if ch == b"\n":
                    self.arg_start = p + 1
                    if not self.nosync:
                        self.pos = p + 1
                        self.ps = P_LIT_ARG
                        return R_NEXT
                    st = P_LIT_ARG
                elif ch != b"\r":
                    st = P_INVALID
                    continue
            elif st == P_LIT_ARG:
                # nginx 1.22.1/freenginx: {0} takes one byte as its value
                if self.lit_len > 1:
                    q = p + self.lit_len - 1
                    if q >= end:
                        self.lit_len -= end - p
                        p = end
                        break
                    p = q
                self.lit_len = 0
                self._push_arg(p + 1)
                st = P_END_LIT
            elif st == P_END_LIT:
                # nginx 1.22.1/freenginx: any other byte is swallowed
                if ch == b"{":
                    if self.nargs >= MAX_ARGS:
                        st = P_INVALID
                        continue
                    self.lit_len = 0
                    st = P_LIT
                elif ch == b"\r":
                    st = P_ALMOST
                elif ch == b"\n":
                    self.pos = p + 1
                    return R_OK
                else:
                    st = P_SP_ARG
            elif st == P_ALMOST:
                if ch != b"\n":
                    st = P_INVALID
                    continue
                self.pos = p + 1
                return R_OK
            elif st == P_INVALID:
                q = p
                while q < end and b[q] != b"\n":
                    q += 1
                if q == end:
                    p = end
                    break
                self.pos = q + 1
                # a rejected line announcing a non-synchronizing literal: the data
                # that follows must never run as commands, so close (nginx)
                if q >= 5:
                    q -= 1
                    if b[q] == b"\r":
                        q -= 1
                    if b[q] == b"}" and b[q - 1] == b"+":
                        return R_INVALID | 0x100
                return R_INVALID
            elif st == P_ID:
                if ch == b"\n":
                    n = self._id_literal(b, p)
                    if n == -2:
                        st = P_INVALID
                        continue
                    if n >= 0:
                        # a literal at the end of an ID line continues its arguments
                        self.lit_len = n
                        if not self.nosync:
                            self.pos = p + 1
                            self.ps = P_ID_LIT
                            return R_NEXT
                        st = P_ID_LIT
                        p += 1
                        continue
                    self.pos = p + 1
                    return R_OK
            elif st == P_ID_LIT:
                q = p + self.lit_len
                if q > end:
                    self.lit_len -= end - p
                    p = end
                    break
                self.lit_len = 0
                st = P_ID
                p = q
                continue
            p += 1
        self.pos = p
        self.ps = st
        if p >= bound:
            return R_TOOLONG
        return R_AGAIN

    cdef Py_ssize_t _id_literal(self, const unsigned char *b, Py_ssize_t p):
        """For the LF at p: the length of a {n} or {n+} just before it, -1 when
        there is none, -2 when it overflows."""
        cdef Py_ssize_t q = p - 1, n = 0, d
        if q >= 0 and b[q] == b"\r":
            q -= 1
        if q < 0 or b[q] != b"}":
            return -1
        q -= 1
        self.nosync = q >= 0 and b[q] == b"+"
        if self.nosync:
            q -= 1
        d = q
        while q >= 0 and b[q] >= b"0" and b[q] <= b"9":
            q -= 1
        if q < 0 or b[q] != b"{":
            return -1
        for q in range(q + 1, d + 1):
            n = n * 10 + (b[q] - 48)
            if n > MAX_LITERAL:
                return -2
        return n

    cdef bytes _arg(self, int i):
        raw = ba_slice(self.buf, self.a_start[i], self.a_end[i])
        return _unescape(raw) if self.a_esc[i] else raw

    # --- dispatch -------------------------------------------------------------

    cdef int _run(self):
        cdef int acts = 0, r
        while self.state < S_WAIT:
            r = self._parse()
            if r == R_AGAIN:
                break
            acts |= self._line(r)
        if len(self._out):
            acts |= ACT_SEND
        return acts

    cdef bytes _line_tag(self):
        if self.state != S_START:
            return self.tag          # SASL lines answer under the AUTHENTICATE tag
        if self.tag_end:
            return ba_slice(self.buf, 0, self.tag_end)
        return STAR_TAG

    cdef int _close(self, str reason):
        # nothing after a closing reply is ever read
        PyByteArray_Resize(self.buf, 0)
        self.state = S_CLOSED
        self.close_reason = reason
        return ACT_CLOSE

    cdef int _line(self, int r):
        cdef int acts = 0
        cdef Py_ssize_t n
        if r == R_NEXT:
            self.send(NEXT)
            return ACT_SEND
        if r == R_TOOLONG:
            self.send(self._line_tag() + BAD_INVALID)
            return ACT_SEND | self._close("client sent too long command")
        if r & R_INVALID:
            self.send(self._line_tag() + BAD_INVALID)
            self.errors += 1
            ba_cut(self.buf, self.pos)
            self._to_start()
            if r & 0x100:
                return ACT_SEND | self._close("client sent invalid command with a literal")
            if self.errors >= self.max_errors:
                return ACT_SEND | self._close("client sent too many invalid commands")
            return ACT_SEND
        # R_OK: one complete line
        self.commands += 1
        if self.max_commands and self.commands > self.max_commands:
            self.send(self._line_tag() + BAD_INVALID)
            return ACT_SEND | self._close("client sent too many commands")
        n = self.pos
        if self.state == S_START:
            self.tag = ba_slice(self.buf, 0, self.tag_end)
            acts = self._command()
        else:
            acts = self._sasl_line()
        if self.state == S_CLOSED or self.state == S_TLS:
            return acts
        ba_cut(self.buf, n)
        if S_START < self.state < S_WAIT:
            # nginx keeps the whole AUTHENTICATE exchange in one client buffer
            self.used += n
        else:
            self.used = 0
        self._reset_parser()
        return acts

    cdef int _ok(self, bytes text=b""):
        self.send(text + self.tag + OK_COMPLETED)
        return ACT_SEND

    cdef int _bad(self):
        # handler-level: not counted towards max_errors (nginx)
        self.send(self.tag + BAD_INVALID)
        self.state = S_START
        return ACT_SEND

    cdef int _command(self):
        cdef int c = self.cmd
        cdef bint sto = not self.tls and self.p.starttls == TLS_ONLY
        if c == C_NOOP:
            return self._ok()
        if c == C_CAPABILITY:
            if self.tls or self.p.starttls == TLS_OFF:
                return self._ok(self.p.cap_plain)
            if self.p.starttls == TLS_ON:
                return self._ok(self.p.cap_starttls)
            return self._ok(self.p.cap_sto)
        if c == C_LOGOUT:
            self._ok(BYE)
            return ACT_SEND | self._close(None)
        if c == C_ID:
            self.send(ID_NIL + self.tag + OK_ID)
            return ACT_SEND
        if c == C_STARTTLS:
            if self.tls or self.p.starttls == TLS_OFF:
                return self._bad()
            self._ok()
            # the STARTTLS-injection rule: nothing read before the handshake runs
            PyByteArray_Resize(self.buf, 0)
            self.state = S_TLS
            return ACT_SEND | ACT_STARTTLS
        if sto:
            return self._bad()
        if c == C_LOGIN:
            if self.nargs != 2 or self.a_end[0] == self.a_start[0]:
                return self._bad()
            return self._ask(b"plain", M_PLAIN, self._arg(0), self._arg(1))
        return self._authenticate()

    cdef int _authenticate(self):
        cdef int m = self.p.methods
        if self.nargs == 0:
            return self._bad()
        mech = self._arg(0).upper()
        if mech == b"PLAIN":
            if self.nargs == 1:
                return self._challenge(PLUS_EMPTY, S_PLAIN)
            if self.nargs == 2:
                return self._sasl(S_PLAIN, self._arg(1))
        elif mech == b"LOGIN":
            if self.nargs == 1:
                return self._challenge(PLUS_USERNAME, S_LOGIN_USER)
            if self.nargs == 2:
                user = decode_base64(self._arg(1))
                if user is None:
                    return self._bad()
                self.sasl_user = user
                return self._challenge(PLUS_PASSWORD, S_LOGIN_PASS)
        elif mech == b"CRAM-MD5":
            if self.nargs == 1 and m & M_CRAM_MD5:
                if not self.salt:
                    self.salt = make_salt(self.p.server_name)
                return self._challenge(b"+ " + encode_base64(self.salt[:len(self.salt) - 2]) + b"\r\n", S_CRAM)
        elif mech == b"EXTERNAL":
            # fastmail (as freenginx): the initial response needs EXTERNAL enabled too
            if m & M_EXTERNAL:
                if self.nargs == 1:
                    return self._challenge(PLUS_USERNAME, S_EXTERNAL)
                if self.nargs == 2:
                    return self._sasl(S_EXTERNAL, self._arg(1))
        elif mech == b"XOAUTH2" or mech == b"OAUTHBEARER":
            st = S_XOAUTH2 if mech == b"XOAUTH2" else S_OAUTHBEARER
            if m & (M_XOAUTH2 if st == S_XOAUTH2 else M_OAUTHBEARER):
                if self.nargs == 1:
                    return self._challenge(PLUS_EMPTY, st)
                if self.nargs == 2:
                    return self._sasl(st, self._arg(1))
        return self._bad()

    cdef int _challenge(self, bytes text, int state):
        self.send(text)
        self.state = state
        return ACT_SEND

    cdef int _sasl_line(self):
        # only the first argument of a SASL response line is used (nginx)
        data = ba_slice(self.buf, self.a_start[0], self.a_end[0])
        if self.state == S_LOGIN_USER:
            user = decode_base64(data)
            if user is None:
                # as nginx: this one step is answered without any tag
                self.send(BAD_INVALID)
                self.state = S_START
                return ACT_SEND
            self.sasl_user = user
            return self._challenge(PLUS_PASSWORD, S_LOGIN_PASS)
        if self.state == S_SASL_ERROR:
            return self._sasl_error_answer(data)
        return self._sasl(self.state, data)

    cdef int _sasl(self, int state, bytes data):
        decoded = decode_base64(data)
        if decoded is None:
            return self._bad()
        if state == S_LOGIN_PASS:
            return self._ask(b"plain", M_LOGIN, self.sasl_user, decoded)
        if state == S_PLAIN:
            pair = sasl_plain(decoded)
            if pair is None:
                return self._bad()
            return self._ask(b"plain", M_PLAIN, pair[0], pair[1])
        if state == S_CRAM:
            pair = sasl_cram_md5(decoded)
            # without the SP nginx took an earlier password as the digest; fastmail refuses
            if pair[1] is None or len(pair[1]) != 32:
                return self._bad()
            return self._ask(b"cram-md5", M_CRAM_MD5, pair[0], pair[1])
        if state == S_EXTERNAL:
            return self._ask(b"external", M_EXTERNAL, decoded, b"")
        if state == S_XOAUTH2:
            pair = sasl_xoauth2(decoded)
            if pair is None:
                return self._bad()
            return self._ask(b"xoauth2", M_XOAUTH2, pair[0], pair[1])
        pair = sasl_oauthbearer(decoded, True, False)
        if pair is None:
            return self._bad()
        # IMAP alone has always passed a NUL in the a= identity on as `=`; kept as it was
        return self._ask(b"oauthbearer", M_OAUTHBEARER, pair[0].replace(b"\0", b"="), pair[1])

    cdef int _sasl_error_answer(self, bytes data):
        cdef bint good
        if self.sasl_method == M_XOAUTH2:
            good = len(data) == 0
        else:
            good = data[:4] == b"AQ=="
        if good:
            self.send(self.tag + b"NO " + self.fail_text + b"\r\n")
        else:
            self.send(self.tag + BAD_INVALID)
        if not self.fail_retry:
            return ACT_SEND | self._close(None)
        self.state = S_START
        return ACT_SEND

    cdef int _ask(self, bytes method, int bit, bytes user, bytes passwd):
        # a fresh request per attempt: nothing carries over from an earlier one
        self.login_attempt += 1
        a = AuthRequest(b"imap", method, user, passwd,
                        self.salt if bit == M_CRAM_MD5 else b"", self.login_attempt)
        a.tag = self.tag
        self.auth = a
        self.sasl_method = bit
        self.sasl_user = b""
        self.state = S_AUTH
        self.phase = "in http auth state"
        return ACT_AUTH
