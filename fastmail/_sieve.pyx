# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""ManageSieve client session machine (RFC 5804): everything a client says before login.

Owns: SieveProfile (the capability list and the replies built once per server block, limits)
and SieveSession (the resumable parser of RFC 5804 commands -- atoms, quoted strings and
literals -- over the receive buffer, and the pre-login states: CAPABILITY, NOOP, LOGOUT,
STARTTLS, AUTHENTICATE with PLAIN, LOGIN, EXTERNAL, XOAUTH2 and OAUTHBEARER). Beyond nginx,
which has no ManageSieve; the reply texts follow Dovecot's where it has one. Must not touch
sockets, clocks, DNS or auth_http: it returns action bits and the engine does the I/O.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE

from fastmail._core cimport (
    ba_add, ba_slice, ba_cut, PyByteArray_Resize,
    ACT_AUTH, ACT_CLOSE, ACT_SEND, ACT_STARTTLS, M_EXTERNAL, M_LOGIN, M_OAUTHBEARER, M_PLAIN,
    M_XOAUTH2, TLS_OFF, TLS_ON, TLS_ONLY, AuthRequest, Machine, Profile, decode_base64,
    has_ctl, sasl_oauthbearer, sasl_plain, sasl_xoauth2,
)

# Replies. RFC 5804 answers every command with OK, NO or BYE (BYE when the server closes).
OK_GREETING = b'OK "ManageSieve ready."\r\n'
OK_CAPABILITY = b'OK "Capability completed."\r\n'
OK_NOOP = b'OK "NOOP completed."\r\n'
OK_LOGOUT = b'OK "Logout completed."\r\n'
OK_STARTTLS = b'OK "Begin TLS negotiation now."\r\n'
OK_TLS_DONE = b'OK "TLS negotiation successful."\r\n'
NO_UNKNOWN = b'NO "Unknown command."\r\n'
NO_AUTH_FIRST = b'NO "Authenticate first."\r\n'
NO_SYNTAX = b'NO "Invalid command syntax."\r\n'
NO_STARTTLS = b'NO "STARTTLS is not available."\r\n'
NO_ENCRYPT = b'NO (ENCRYPT-NEEDED) "Issue STARTTLS first."\r\n'
NO_MECHANISM = b'NO "Unsupported authentication mechanism."\r\n'
NO_SASL = b'NO "Invalid SASL response."\r\n'
NO_ABORTED = b'NO "Authentication aborted by client."\r\n'
AUTH_FAILED = b"Authentication failed."   # when auth_http gives no Auth-Status text
BYE_TOO_LONG = b'BYE "Command too long."\r\n'
BYE_ERRORS = b'BYE "Too many invalid commands."\r\n'
BYE_COMMANDS = b'BYE "Too many commands."\r\n'
BYE_TIMEOUT = b'BYE "Disconnected for inactivity."\r\n'
INTERNAL_ERROR = b'BYE (TRYLATER) "Internal server error."\r\n'
CHALLENGE_EMPTY = b'""\r\n'
CHALLENGE_USERNAME = b'"VXNlcm5hbWU6"\r\n'   # base64 "Username:"
CHALLENGE_PASSWORD = b'"UGFzc3dvcmQ6"\r\n'   # base64 "Password:"

# What Dovecot 2.3's Pigeonhole announces: the usual backend, so clients see what it runs.
DEFAULT_EXTENSIONS = (
    "fileinto", "reject", "envelope", "encoded-character", "vacation", "subaddress",
    "comparator-i;ascii-numeric", "relational", "regex", "imap4flags", "copy", "include",
    "variables", "body", "enotify", "environment", "mailbox", "date", "index", "ihave",
    "duplicate", "mime", "foreverypart", "extracttext",
)

# sieve_auth values, announced in this order
_METHODS = {"plain": M_PLAIN, "login": M_LOGIN, "external": M_EXTERNAL,
            "xoauth2": M_XOAUTH2, "oauthbearer": M_OAUTHBEARER}
_MECHANISMS = ((M_PLAIN, b"PLAIN"), (M_LOGIN, b"LOGIN"), (M_EXTERNAL, b"EXTERNAL"),
               (M_XOAUTH2, b"XOAUTH2"), (M_OAUTHBEARER, b"OAUTHBEARER"))

# Session states.  Those below S_WAIT read client lines; the others do not.
cdef enum:
    S_START = 0
    S_LOGIN_USER = 1
    S_LOGIN_PASS = 2
    S_PLAIN = 3
    S_EXTERNAL = 4
    S_XOAUTH2 = 5
    S_OAUTHBEARER = 6
    S_SASL_ERROR = 7      # Auth-Error-SASL challenge sent, waiting for the client's answer
    S_WAIT = 16
    S_AUTH = 16           # auth_http running
    S_TLS = 17            # STARTTLS handshake running
    S_DONE = 18           # auth ok: input belongs to the relay
    S_CLOSED = 19

# Parser states: a command name, then strings (quoted, literal) and atoms (numbers).
cdef enum:
    P_START = 0           # the command name's first letter
    P_CMD                 # the command name
    P_SP                  # between arguments
    P_QUOTED              # inside "..."
    P_BACKSLASH           # after \ inside "..."
    P_ATOM                # a bare argument (a number)
    P_LIT                 # after {: digits
    P_LIT_PLUS            # after {n+: the closing }
    P_LIT_END             # after }: CRLF, then the literal's octets
    P_LIT_LF              # after {n}CR
    P_LIT_DATA            # the literal's octets
    P_AFTER               # after a string: SP or the line end
    P_ALMOST              # CR seen, LF expected
    P_INVALID             # skip to LF, and over any literal the skipped line announces
    P_SKIP_LIT            # the octets of a literal announced by a skipped line

cdef enum:
    R_AGAIN = 0
    R_OK = 1
    R_INVALID = 2
    R_TOOLONG = 3

cdef enum:
    C_NONE = 0            # a SASL response line (no command name)
    C_UNKNOWN
    C_AUTHED              # an RFC 5804 command of the authenticated state
    C_NOOP
    C_LOGOUT
    C_STARTTLS
    C_CAPABILITY
    C_AUTHENTICATE

cdef enum:
    MAX_ARGS = 3


cdef inline bint _is_alpha(unsigned char ch):
    return (ch >= b"A" and ch <= b"Z") or (ch >= b"a" and ch <= b"z")


cdef inline bint _is_atom(unsigned char ch):
    # RFC 5804 ATOM-CHAR: printable ASCII but ( ) { " and backslash
    return (0x21 <= ch <= 0x7E and ch != 0x22 and ch != 0x28 and ch != 0x29
            and ch != 0x5C and ch != 0x7B)


cdef inline bint _ieq(const unsigned char *p, const char *word, Py_ssize_t n):
    """Case-insensitive compare of n letters with an upper-case word."""
    cdef Py_ssize_t i
    for i in range(n):
        if (p[i] & 0xDF) != <unsigned char>word[i]:
            return False
    return True


cdef int _command(const unsigned char *c, Py_ssize_t n):
    # letters only reach here
    if n == 4 and _ieq(c, b"NOOP", 4):
        return C_NOOP
    if n == 6 and _ieq(c, b"LOGOUT", 6):
        return C_LOGOUT
    if n == 8 and _ieq(c, b"STARTTLS", 8):
        return C_STARTTLS
    if n == 10 and _ieq(c, b"CAPABILITY", 10):
        return C_CAPABILITY
    if n == 12 and _ieq(c, b"AUTHENTICATE", 12):
        return C_AUTHENTICATE
    if n == 9 and (_ieq(c, b"HAVESPACE", 9) or _ieq(c, b"PUTSCRIPT", 9)
                   or _ieq(c, b"SETACTIVE", 9) or _ieq(c, b"GETSCRIPT", 9)):
        return C_AUTHED
    if n == 11 and (_ieq(c, b"LISTSCRIPTS", 11) or _ieq(c, b"CHECKSCRIPT", 11)):
        return C_AUTHED
    if n == 12 and (_ieq(c, b"DELETESCRIPT", 12) or _ieq(c, b"RENAMESCRIPT", 12)):
        return C_AUTHED
    if n == 14 and _ieq(c, b"UNAUTHENTICATE", 14):
        return C_AUTHED
    return C_UNKNOWN


cpdef bytes sieve_string(bytes s):
    """An RFC 5804 string for the client: quoted when it can be (no CR, LF or NUL, at most
    1024 octets), else a literal (`{n}` CRLF, then the octets)."""
    if len(s) <= 1024 and not has_ctl(s):
        return b'"' + s.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n%s" % (len(s), s)


cdef bytes _unescape(bytes raw):
    """Quoted-string value: a backslash takes the next byte (the parser allowed only " and \\)."""
    out = bytearray()
    cdef Py_ssize_t i = 0, n = len(raw)
    while i < n:
        if raw[i] == 0x5C and i + 1 < n:
            i += 1
        out.append(raw[i])
        i += 1
    return bytes(out)


cdef dict _SASL_STATE = {M_PLAIN: S_PLAIN, M_EXTERNAL: S_EXTERNAL, M_XOAUTH2: S_XOAUTH2,
                         M_OAUTHBEARER: S_OAUTHBEARER}


cdef Py_ssize_t _line_literal(const unsigned char *b, Py_ssize_t lf):
    """For the LF at `lf`: the length of the {n} or {n+} that ends its line, else -1."""
    cdef Py_ssize_t q = lf - 1, d, n = 0
    if q >= 0 and b[q] == b"\r":
        q -= 1
    if q < 0 or b[q] != b"}":
        return -1
    q -= 1
    if q >= 0 and b[q] == b"+":
        q -= 1
    d = q
    while q >= 0 and b[q] >= b"0" and b[q] <= b"9":
        q -= 1
    if q == d or q < 0 or b[q] != b"{":
        return -1
    for q in range(q + 1, d + 1):
        n = n * 10 + (b[q] - 48)
        if n > 0x7fffffff:
            return 0x7fffffff
    return n


cdef bytes _b(value):
    return value.encode() if isinstance(value, str) else bytes(value)


cdef class SieveProfile(Profile):
    """Per server block: the capability lines (RFC 5804 §1.7) and limits."""

    cdef readonly bytes caps_plain      # TLS active, or starttls off
    cdef readonly bytes caps_starttls   # starttls on, before TLS
    cdef readonly bytes caps_sto        # starttls only, before TLS: no mechanism until TLS
    cdef readonly int methods
    cdef readonly int starttls
    cdef readonly Py_ssize_t client_buffer
    cdef readonly int max_errors
    cdef readonly int max_commands

    def __init__(self, capabilities=DEFAULT_EXTENSIONS, auth_methods=("plain",),
                 str starttls="off", bint tls_available=False, Py_ssize_t client_buffer=4096,
                 int max_errors=5, int max_commands=1000, implementation=b"fastmail"):
        cdef int m = 0
        for name in auth_methods:
            key = name.decode() if isinstance(name, bytes) else name
            if key.lower() not in _METHODS:
                raise ValueError(f"invalid sieve_auth value {key!r}")
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
        words = [_b(w) for w in capabilities]
        head = b'"IMPLEMENTATION" ' + sieve_string(_b(implementation)) + b"\r\n"
        head += b'"SIEVE" ' + sieve_string(b" ".join(words)) + b"\r\n"
        if any(w.lower() == b"enotify" for w in words):
            # RFC 5804: NOTIFY must be given with enotify; mailto is RFC 5436's required method
            head += b'"NOTIFY" "mailto"\r\n'
        mechs = b" ".join(name for bit, name in _MECHANISMS if m & bit)
        sasl = b'"SASL" ' + sieve_string(mechs) + b"\r\n"
        version = b'"VERSION" "1.0"\r\n'
        self.caps_plain = head + sasl + version
        self.caps_starttls = head + sasl + b'"STARTTLS"\r\n' + version
        self.caps_sto = head + b'"SASL" ""\r\n"STARTTLS"\r\n' + version

    cpdef Machine new_session(self, bint tls):
        """A session machine for one client connection of this server{}."""
        cdef SieveSession s = SieveSession.__new__(SieveSession)
        s._init(self, tls)
        return s


cdef class SieveSession(Machine):
    """One client connection before login (sans-IO); see docs/internals.md."""

    cdef SieveProfile p
    cdef readonly bint tls
    cdef readonly int state
    cdef bytes sasl_user               # AUTHENTICATE LOGIN user name between the two steps
    cdef int sasl_method               # method of the last auth request (Auth-Error-SASL)
    cdef bytes fail_text
    cdef bint fail_retry
    # parser
    cdef int ps
    cdef int cmd
    cdef Py_ssize_t pos, used, cmd_start, arg_start, lit_len
    cdef int lit_digits
    cdef bint has_backslash
    cdef int nargs
    cdef Py_ssize_t a_start[3]
    cdef Py_ssize_t a_end[3]
    cdef bint a_esc[3]

    def __init__(self, SieveProfile profile not None, bint tls=False):
        self._init(profile, tls)

    cdef int _init(self, SieveProfile profile, bint tls) except -1:
        self.p = profile
        self.tls = tls
        self.limit = profile.client_buffer
        self.max_errors = profile.max_errors
        self.max_commands = profile.max_commands
        self.state = S_START
        self.sasl_user = b""
        self._reset_parser()
        return 0

    # --- driver events --------------------------------------------------------

    cpdef int start(self):
        self.send(self._caps() + OK_GREETING)
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
        """auth_http refused: `NO "<Auth-Status>"` and a new login may follow (Auth-Wait),
        else `BYE` and close; XOAUTH2/OAUTHBEARER get the Auth-Error-SASL challenge first."""
        if self.state != S_AUTH:
            return 0
        self.phase = "in auth state"
        self.fail_text = message or AUTH_FAILED
        self.fail_retry = retry
        if sasl is not None and (self.sasl_method == M_XOAUTH2
                                 or self.sasl_method == M_OAUTHBEARER):
            self.send(sieve_string(sasl) + b"\r\n")
            self.state = S_SASL_ERROR
            self._reset_parser()
            return ACT_SEND | self._run()
        return self._failed() | self._run()

    cpdef int on_auth_error(self):
        self.send(INTERNAL_ERROR)
        return ACT_SEND | self._close(None)

    cpdef int on_tls_done(self):
        if self.state != S_TLS:
            return 0
        self.tls = True
        self._to_start()
        # RFC 5804 §2.2: the capabilities again, now without STARTTLS
        self.send(self.p.caps_plain + OK_TLS_DONE)
        return ACT_SEND | self._run()

    cpdef int on_timeout(self):
        self.send(BYE_TIMEOUT)
        return ACT_SEND | self._close("client timed out")

    cpdef int on_timer(self):
        return 0

    # --- parser ---------------------------------------------------------------

    cdef inline void _reset_parser(self):
        self.pos = 0
        self.nargs = 0
        self.lit_len = 0
        self.has_backslash = False
        self.arg_start = -1
        if S_START < self.state < S_WAIT:
            # a SASL response line is one string, with no command name
            self.ps = P_SP
            self.cmd = C_NONE
        else:
            self.ps = P_START
            self.cmd = C_UNKNOWN

    cdef inline void _to_start(self):
        self.state = S_START
        self.used = 0
        self._reset_parser()

    cdef inline void _push_arg(self, Py_ssize_t end):
        if self.nargs < MAX_ARGS:
            self.a_start[self.nargs] = self.arg_start
            self.a_end[self.nargs] = end
            self.a_esc[self.nargs] = self.has_backslash
        self.nargs += 1
        self.arg_start = -1
        self.has_backslash = False

    cdef int _parse(self):
        """Advance over buffered bytes; one command line (literals included) per call.
        Never looks past the client buffer bound."""
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
            if st == P_START:
                if not _is_alpha(ch):
                    st = P_INVALID
                    continue
                self.cmd_start = p
                st = P_CMD
            elif st == P_CMD:
                if ch == b" " or ch == b"\r" or ch == b"\n":
                    self.cmd = _command(b + self.cmd_start, p - self.cmd_start)
                    st = P_SP
                    continue
                if not _is_alpha(ch):
                    st = P_INVALID
                    continue
            elif st == P_SP:
                if ch == b" ":
                    pass
                elif ch == b"\r":
                    st = P_ALMOST
                elif ch == b"\n":
                    self.pos = p + 1
                    self.ps = st
                    return R_OK
                elif ch == b"\"":
                    self.arg_start = p + 1
                    st = P_QUOTED
                elif ch == b"{":
                    self.lit_len = 0
                    self.lit_digits = 0
                    st = P_LIT
                elif _is_atom(ch):
                    self.arg_start = p
                    st = P_ATOM
                else:
                    st = P_INVALID
                    continue
            elif st == P_QUOTED:
                if ch == b"\"":
                    self._push_arg(p)
                    st = P_AFTER
                elif ch == b"\\":
                    self.has_backslash = True
                    st = P_BACKSLASH
                elif ch == b"\r" or ch == b"\n" or ch == 0:
                    st = P_INVALID
                    continue
            elif st == P_BACKSLASH:
                # QUOTED-SPECIALS only
                if ch != b"\"" and ch != b"\\":
                    st = P_INVALID
                    continue
                st = P_QUOTED
            elif st == P_ATOM:
                if ch == b" " or ch == b"\r" or ch == b"\n":
                    self._push_arg(p)
                    st = P_SP
                    continue
                if not _is_atom(ch):
                    st = P_INVALID
                    continue
            elif st == P_LIT:
                if ch >= b"0" and ch <= b"9":
                    self.lit_len = self.lit_len * 10 + (ch - 48)
                    self.lit_digits += 1
                    if self.lit_len > self.limit:
                        # it can never fit: refuse now rather than read it
                        self.pos = p
                        self.ps = st
                        return R_TOOLONG
                elif ch == b"+" and self.lit_digits:
                    st = P_LIT_PLUS
                elif ch == b"}" and self.lit_digits:
                    st = P_LIT_END
                else:
                    st = P_INVALID
                    continue
            elif st == P_LIT_PLUS:
                if ch != b"}":
                    st = P_INVALID
                    continue
                st = P_LIT_END
            elif st == P_LIT_END or st == P_LIT_LF:
                # RFC 5804 literals never wait for a go-ahead: {n} is read as {n+}
                if ch == b"\r" and st == P_LIT_END:
                    st = P_LIT_LF
                elif ch == b"\n":
                    if p + 1 + self.lit_len > bound:
                        self.pos = p
                        self.ps = st
                        return R_TOOLONG
                    self.arg_start = p + 1
                    st = P_LIT_DATA
                else:
                    st = P_INVALID
                    continue
            elif st == P_LIT_DATA:
                q = p + self.lit_len
                if q > end:
                    self.lit_len -= end - p
                    p = end
                    break
                self.lit_len = 0
                self._push_arg(q)
                st = P_AFTER
                p = q
                continue
            elif st == P_AFTER:
                if ch == b" ":
                    st = P_SP
                elif ch == b"\r":
                    st = P_ALMOST
                elif ch == b"\n":
                    self.pos = p + 1
                    self.ps = st
                    return R_OK
                else:
                    st = P_INVALID
                    continue
            elif st == P_ALMOST:
                if ch != b"\n":
                    st = P_INVALID
                    continue
                self.pos = p + 1
                self.ps = st
                return R_OK
            elif st == P_INVALID:
                q = p
                while q < end and b[q] != b"\n":
                    q += 1
                if q == end:
                    p = end
                    break
                n = _line_literal(b, q)
                if n >= 0:
                    # the rejected line announced a literal: its octets are data, never
                    # commands, so they are skipped with the line
                    if q + 1 + n > bound:
                        self.pos = q
                        self.ps = st
                        return R_TOOLONG
                    self.lit_len = n
                    st = P_SKIP_LIT
                    p = q + 1
                    continue
                self.pos = q + 1
                self.ps = st
                return R_INVALID
            elif st == P_SKIP_LIT:
                q = p + self.lit_len
                if q > end:
                    self.lit_len -= end - p
                    p = end
                    break
                self.lit_len = 0
                st = P_INVALID
                p = q
                continue
            p += 1
        self.pos = p
        self.ps = st
        if p >= bound:
            return R_TOOLONG
        return R_AGAIN

    cdef bytes _arg(self, int i):
        raw = ba_slice(self.buf, self.a_start[i], self.a_end[i])
        return _unescape(raw) if self.a_esc[i] else raw

    # --- dispatch -------------------------------------------------------------

    cdef bytes _caps(self):
        if self.tls or self.p.starttls == TLS_OFF:
            return self.p.caps_plain
        if self.p.starttls == TLS_ON:
            return self.p.caps_starttls
        return self.p.caps_sto

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

    cdef int _close(self, str reason):
        # nothing after a closing reply is ever read
        PyByteArray_Resize(self.buf, 0)
        self.state = S_CLOSED
        self.close_reason = reason
        return ACT_CLOSE

    cdef int _line(self, int r):
        cdef int acts = 0
        cdef Py_ssize_t n
        if r == R_TOOLONG:
            self.send(BYE_TOO_LONG)
            return ACT_SEND | self._close("client sent too long command")
        if r == R_INVALID:
            acts = self._error(NO_SYNTAX if self.cmd != C_UNKNOWN else NO_UNKNOWN)
            if self.state != S_CLOSED:
                ba_cut(self.buf, self.pos)
                self._to_start()
            return acts
        # R_OK: one complete line
        self.commands += 1
        if self.max_commands and self.commands > self.max_commands:
            self.send(BYE_COMMANDS)
            return ACT_SEND | self._close("client sent too many commands")
        n = self.pos
        if self.state == S_START:
            acts = self._command()
        else:
            acts = self._sasl_line()
        if self.state == S_CLOSED or self.state == S_TLS:
            return acts
        ba_cut(self.buf, n)
        if S_START < self.state < S_WAIT:
            # the whole AUTHENTICATE exchange shares one client buffer, as nginx's IMAP
            self.used += n
        else:
            self.used = 0
        self._reset_parser()
        return acts

    cdef int _error(self, bytes reply):
        """A counted error: its NO, or BYE and close once max_errors is reached."""
        self.errors += 1
        if self.errors >= self.max_errors:
            self.send(BYE_ERRORS)
            return ACT_SEND | self._close("client sent too many invalid commands")
        self.send(reply)
        return ACT_SEND

    cdef int _no(self, bytes reply):
        # refused by its handler: not counted towards max_errors (as nginx's handlers)
        self.send(reply)
        self.state = S_START
        return ACT_SEND

    cdef int _command(self):
        cdef int c = self.cmd
        if c == C_NOOP:
            if self.nargs == 0:
                self.send(OK_NOOP)
            elif self.nargs == 1:
                self.send(b"OK (TAG " + sieve_string(self._arg(0)) + b') "Done"\r\n')
            else:
                return self._no(NO_SYNTAX)
            return ACT_SEND
        if c == C_CAPABILITY:
            self.send(self._caps() + OK_CAPABILITY)
            return ACT_SEND
        if c == C_LOGOUT:
            self.send(OK_LOGOUT)
            return ACT_SEND | self._close(None)
        if c == C_STARTTLS:
            if self.tls or self.p.starttls == TLS_OFF:
                return self._no(NO_STARTTLS)
            self.send(OK_STARTTLS)
            # the STARTTLS-injection rule: nothing read before the handshake runs
            PyByteArray_Resize(self.buf, 0)
            self.state = S_TLS
            return ACT_SEND | ACT_STARTTLS
        if c == C_AUTHENTICATE:
            return self._authenticate()
        return self._error(NO_AUTH_FIRST if c == C_AUTHED else NO_UNKNOWN)

    cdef int _authenticate(self):
        cdef int bit = 0
        if self.nargs == 0 or self.nargs > 2:
            return self._no(NO_SYNTAX)
        if not self.tls and self.p.starttls == TLS_ONLY:
            return self._no(NO_ENCRYPT)
        mech = self._arg(0).upper()
        for b, name in _MECHANISMS:
            if mech == name:
                bit = b
        if not bit & self.p.methods:
            return self._no(NO_MECHANISM)
        if self.nargs == 1:
            if bit == M_LOGIN:
                return self._challenge(CHALLENGE_USERNAME, S_LOGIN_USER)
            return self._challenge(CHALLENGE_EMPTY, _SASL_STATE[bit])
        if bit == M_LOGIN:
            user = decode_base64(self._arg(1))
            if user is None:
                return self._no(NO_SASL)
            self.sasl_user = user
            return self._challenge(CHALLENGE_PASSWORD, S_LOGIN_PASS)
        return self._sasl(_SASL_STATE[bit], self._arg(1))

    cdef int _challenge(self, bytes text, int state):
        self.send(text)
        self.state = state
        return ACT_SEND

    cdef int _sasl_line(self):
        if self.nargs != 1:
            return self._no(NO_SYNTAX)
        data = self._arg(0)
        if data == b"*":
            # RFC 5804 §2.1: the client cancels; the command fails with NO
            if self.state == S_SASL_ERROR:
                return self._failed()
            return self._no(NO_ABORTED)
        if self.state == S_SASL_ERROR:
            # RFC 7628: the client's answer to the error challenge ends the exchange
            return self._failed()
        if self.state == S_LOGIN_USER:
            user = decode_base64(data)
            if user is None:
                return self._no(NO_SASL)
            self.sasl_user = user
            return self._challenge(CHALLENGE_PASSWORD, S_LOGIN_PASS)
        return self._sasl(self.state, data)

    cdef int _sasl(self, int state, bytes data):
        decoded = decode_base64(data)
        if decoded is None:
            return self._no(NO_SASL)
        if state == S_LOGIN_PASS:
            return self._ask(b"plain", M_LOGIN, self.sasl_user, decoded)
        if state == S_PLAIN:
            pair = sasl_plain(decoded)
            if pair is None:
                return self._no(NO_SASL)
            return self._ask(b"plain", M_PLAIN, pair[0], pair[1])
        if state == S_EXTERNAL:
            return self._ask(b"external", M_EXTERNAL, decoded, b"")
        if state == S_XOAUTH2:
            pair = sasl_xoauth2(decoded)
            if pair is None:
                return self._no(NO_SASL)
            return self._ask(b"xoauth2", M_XOAUTH2, pair[0], pair[1])
        pair = sasl_oauthbearer(decoded, True, False)
        if pair is None:
            return self._no(NO_SASL)
        return self._ask(b"oauthbearer", M_OAUTHBEARER, pair[0], pair[1])

    cdef int _failed(self):
        """The failed login's reply: NO when a new attempt may follow, else BYE and close
        (RFC 5804 §1.2: BYE when the server closes)."""
        text = sieve_string(self.fail_text)
        if not self.fail_retry:
            self.send(b"BYE " + text + b"\r\n")
            return ACT_SEND | self._close(None)
        self.send(b"NO " + text + b"\r\n")
        self._to_start()
        return ACT_SEND

    cdef int _ask(self, bytes method, int bit, bytes user, bytes passwd):
        # a fresh request per attempt: nothing carries over from an earlier one
        self.login_attempt += 1
        self.auth = AuthRequest(b"sieve", method, user, passwd, b"", self.login_attempt)
        self.sasl_method = bit
        self.sasl_user = b""
        self.state = S_AUTH
        self.phase = "in http auth state"
        return ACT_AUTH
