# cython: language_level=3, boundscheck=False, wraparound=False
"""SMTP client session machine: everything an SMTP client says before it is logged in.

Owns SmtpProfile (replies prebuilt once per server block) and SmtpSession (greeting delay,
the command parser over the receive buffer, HELO/EHLO, AUTH PLAIN/LOGIN/CRAM-MD5/EXTERNAL/
XOAUTH2/OAUTHBEARER, `smtp_auth none` MAIL/RCPT, STARTTLS, max_errors/max_commands/buffer
limits), behaving as nginx's ngx_mail_smtp_handler.c does. It hands out an
AuthRequest and action bits; it must not touch sockets, clocks, DNS, the auth_http wire
format or the backend login (_smtplogin.pyx replays HELO/MAIL/RCPT from the AuthRequest).
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.string cimport memchr

from fastmail._core cimport (
    ba_add, ba_slice, ba_cut, PyByteArray_Resize,
    ACT_AUTH, ACT_CLOSE, ACT_SEND, ACT_STARTTLS, ACT_TIMER, M_CRAM_MD5, M_EXTERNAL, M_LOGIN,
    M_OAUTHBEARER, M_PLAIN, M_XOAUTH2, TLS_OFF, TLS_ON, TLS_ONLY, AuthRequest, Machine, Profile,
    decode_base64, encode_base64, make_salt, sasl_cram_md5, sasl_oauthbearer, sasl_plain,
    sasl_xoauth2,
)

# Reply constants, nginx's exact bytes (those of ngx_mail_smtp_handler.c).
S220_START_TLS = b"220 2.0.0 Start TLS\r\n"
S221_BYE = b"221 2.0.0 Bye\r\n"
S250_OK = b"250 2.0.0 OK\r\n"
S334_NEXT = b"334 \r\n"
S334_USERNAME = b"334 VXNlcm5hbWU6\r\n"
S334_PASSWORD = b"334 UGFzc3dvcmQ6\r\n"
S451_INTERNAL = b"451 4.3.2 Internal server error\r\n"
S500_INVALID = b"500 5.5.1 Invalid command\r\n"
S501_INVALID_ARG = b"501 5.5.4 Invalid argument\r\n"
S503_BAD_SEQUENCE = b"503 5.5.1 Bad sequence of commands\r\n"
S503_PIPELINING = b"503 5.5.0 Improper use of SMTP command pipelining\r\n"
S530_AUTH_REQUIRED = b"530 5.7.1 Authentication required\r\n"
S530_STARTTLS_FIRST = b"530 5.7.0 Must issue a STARTTLS command first\r\n"  # Postfix's words
S535_DEFAULT_CODE = b"535 5.7.0"

# Auth method bits (smtp_auth), in the order the EHLO AUTH line lists them: _core's six,
# then `none`.
cdef enum:
    M_NONE = 64

_METHOD_BITS = {
    "plain": M_PLAIN, "login": M_LOGIN, "cram-md5": M_CRAM_MD5, "external": M_EXTERNAL,
    "xoauth2": M_XOAUTH2, "oauthbearer": M_OAUTHBEARER, "none": M_NONE,
}
_AUTH_WORDS = ((M_PLAIN, b" PLAIN"), (M_LOGIN, b" LOGIN"), (M_CRAM_MD5, b" CRAM-MD5"),
               (M_EXTERNAL, b" EXTERNAL"), (M_XOAUTH2, b" XOAUTH2"),
               (M_OAUTHBEARER, b" OAUTHBEARER"))

# Session states (nginx's ngx_smtp_state_e plus the driver waits).
cdef enum:
    SMTP_DELAY = 0           # greeting held back (smtp_greeting_delay)
    SMTP_START = 1
    SMTP_AUTH_PLAIN = 2
    SMTP_AUTH_LOGIN_USERNAME = 3
    SMTP_AUTH_LOGIN_PASSWORD = 4
    SMTP_AUTH_CRAM_MD5 = 5
    SMTP_AUTH_EXTERNAL = 6
    SMTP_AUTH_XOAUTH2 = 7
    SMTP_AUTH_OAUTHBEARER = 8
    SMTP_SASL_ERROR = 9      # Auth-Error-SASL challenge sent, waiting for the client's line
    SMTP_WAIT_AUTH = 10      # ACT_AUTH given, nothing parsed until on_auth_*
    SMTP_WAIT_TLS = 11       # ACT_STARTTLS given, until on_tls_done
    SMTP_DONE = 12           # logged in: input is kept for the relay
    SMTP_CLOSED = 13

# Command ids (nginx NGX_SMTP_*).
cdef enum:
    SMTP_INVALID = -1
    SMTP_SASL_LINE = 0
    SMTP_HELO = 1
    SMTP_EHLO = 2
    SMTP_QUIT = 3
    SMTP_AUTH = 4
    SMTP_NOOP = 5
    SMTP_MAIL = 6
    SMTP_RSET = 7
    SMTP_RCPT = 8
    SMTP_VRFY = 9
    SMTP_EXPN = 10
    SMTP_HELP = 11
    SMTP_STARTTLS = 12

cdef enum:
    MAX_ARGS = 11            # nginx: a 12th argument makes the line invalid

cdef bytes _M_PLAIN = b"plain", _M_CRAM = b"cram-md5", _M_EXTERNAL = b"external"
cdef bytes _M_XOAUTH2 = b"xoauth2", _M_OAUTHBEARER = b"oauthbearer", _M_NONE = b"none"


cdef inline unsigned int _word4(const unsigned char *p):
    # Upper-cases by clearing bit 5: only called on bytes already known to be letters.
    return ((<unsigned int>(p[0] & 0xDF) << 24) | (<unsigned int>(p[1] & 0xDF) << 16)
            | (<unsigned int>(p[2] & 0xDF) << 8) | <unsigned int>(p[3] & 0xDF))


cdef inline unsigned int _w(bytes s):
    return _word4(<const unsigned char *>(<char *>s))


cdef unsigned int W_HELO = _w(b"HELO"), W_EHLO = _w(b"EHLO"), W_QUIT = _w(b"QUIT")
cdef unsigned int W_AUTH = _w(b"AUTH"), W_NOOP = _w(b"NOOP"), W_MAIL = _w(b"MAIL")
cdef unsigned int W_RSET = _w(b"RSET"), W_RCPT = _w(b"RCPT"), W_VRFY = _w(b"VRFY")
cdef unsigned int W_EXPN = _w(b"EXPN"), W_HELP = _w(b"HELP")
cdef unsigned int W_STAR = _w(b"STAR"), W_TTLS = _w(b"TTLS")


cdef inline bint _is_alpha(unsigned char c):
    return (c | 0x20) >= b"a" and (c | 0x20) <= b"z"


cdef bint _ieq(bytes a, bytes upper):
    """Case-insensitive equality of a client word with an upper-case constant."""
    cdef Py_ssize_t n = len(a), i
    cdef const unsigned char *p
    cdef const unsigned char *q
    cdef unsigned char c
    if n != len(upper):
        return False
    p = <const unsigned char *>(<char *>a)
    q = <const unsigned char *>(<char *>upper)
    for i in range(n):
        c = p[i]
        if c >= b"a" and c <= b"z":
            c -= 32
        if c != q[i]:
            return False
    return True


cdef str _log_text(bytes data, bint underscores):
    """Client bytes for a log line; nginx writes `_` over CR/LF in the rejected-command logs."""
    if underscores:
        data = data.replace(b"\r", b"_").replace(b"\n", b"_")
    return data.decode("utf-8", "backslashreplace")


def _reply_lines(list lines):
    cdef Py_ssize_t last = len(lines) - 1
    return (b"".join([b"250-" + line + b"\r\n" for line in lines[:last]])
            + b"250 " + lines[last] + b"\r\n")


cdef class SmtpProfile(Profile):
    """Per server block: prebuilt greeting/HELO/EHLO replies and limits."""

    cdef readonly bytes greeting, helo_reply, ehlo_plain, ehlo_starttls, ehlo_starttls_only
    cdef readonly bytes server_name
    cdef readonly int greeting_delay, client_buffer, max_errors, max_commands
    cdef int methods
    cdef int starttls_mode

    def __init__(self, capabilities=(), auth_methods=("plain", "login"), str starttls="off",
                 bint tls_available=False, int client_buffer=4096, int max_errors=5,
                 int max_commands=1000, bytes server_name=b"localhost", int greeting_delay=0):
        cdef int bits = 0
        for name in auth_methods:
            try:
                bits |= _METHOD_BITS[name.lower()]
            except KeyError:
                raise ValueError(f"unknown smtp_auth method {name!r}") from None
        if starttls not in ("off", "on", "only"):
            raise ValueError(f"starttls must be off, on or only, not {starttls!r}")
        if starttls != "off" and not tls_available:
            raise ValueError("starttls needs a TLS context (ssl_certificate)")
        if client_buffer < 8:
            raise ValueError("smtp_client_buffer is too small")
        self.methods = bits
        self.starttls_mode = {"off": TLS_OFF, "on": TLS_ON, "only": TLS_ONLY}[starttls]
        self.server_name = server_name
        self.client_buffer = client_buffer
        self.max_errors = max_errors
        self.max_commands = max_commands
        self.greeting_delay = greeting_delay
        self.greeting = b"220 " + server_name + b" ESMTP ready\r\n"
        self.helo_reply = b"250 " + server_name + b"\r\n"

        lines = [server_name] + [bytes(c) for c in capabilities]
        auth = b"".join(word for bit, word in _AUTH_WORDS if bits & bit)
        self.ehlo_plain = _reply_lines(lines + ([b"AUTH" + auth] if auth else []))
        self.ehlo_starttls = _reply_lines(lines + ([b"AUTH" + auth] if auth else []) + [b"STARTTLS"])
        self.ehlo_starttls_only = _reply_lines(lines + [b"STARTTLS"])

    def enabled(self, str method):
        """True when smtp_auth lists this method."""
        return bool(self.methods & _METHOD_BITS[method])

    cpdef Machine new_session(self, bint tls):
        """A session machine for one client connection of this server{}."""
        cdef SmtpSession s = SmtpSession.__new__(SmtpSession)
        # no Python call: __init__'s argument parsing is per connection
        s._init(self, tls)
        return s


cdef class SmtpSession(Machine):
    """One client connection, pre-login. See docs/internals.md for the driver contract."""

    cdef readonly SmtpProfile profile
    cdef public bint tls
    cdef int state
    cdef Py_ssize_t pos                  # consumed bytes at the front of buf (compacted per feed)
    cdef int nargs
    cdef Py_ssize_t arg_s[MAX_ARGS]
    cdef Py_ssize_t arg_e[MAX_ARGS]
    cdef Py_ssize_t line_s, line_e       # the current line without trailing spaces/CRLF
    cdef readonly bytes helo             # HELO/EHLO name (smtp_helo)
    cdef readonly bytes mail_from        # stored MAIL text (smtp_auth none)
    cdef readonly bytes rcpt_to
    cdef readonly bint esmtp
    cdef bytes salt
    cdef bytes login_user                # AUTH LOGIN user between the two 334s only
    cdef bytes method                    # method of the auth request in flight
    cdef bytes fail_reply
    cdef bint fail_retry

    def __init__(self, SmtpProfile profile not None, bint tls=False):
        self._init(profile, tls)

    cdef int _init(self, SmtpProfile profile, bint tls) except -1:
        self.profile = profile
        self.tls = tls
        self.limit = profile.client_buffer
        self.max_errors = profile.max_errors
        self.max_commands = profile.max_commands
        self.state = SMTP_START
        self.pos = 0
        self.helo = b""
        self.mail_from = b""
        self.rcpt_to = b""
        self.esmtp = False
        self.salt = None
        self.login_user = b""
        self.method = b""
        self.timer_ms = 0
        return 0

    @property
    def state_name(self):
        return ("delay", "start", "auth_plain", "auth_login_username", "auth_login_password",
                "auth_cram_md5", "auth_external", "auth_xoauth2", "auth_oauthbearer",
                "sasl_error", "wait_auth", "wait_tls", "done", "closed")[self.state]

    @property
    def pending(self):
        """Bytes received and not yet consumed (for tests and the driver's flow control)."""
        return PyByteArray_GET_SIZE(self.buf) - self.pos

    # --- events ------------------------------------------------------------------------

    cpdef int start(self):
        if self.profile.greeting_delay > 0:
            self.state = SMTP_DELAY
            self.phase = "in delay pipelining state"
            self.timer_ms = self.profile.greeting_delay
            return ACT_TIMER
        self.send(self.profile.greeting)
        return ACT_SEND | self._process()

    cpdef int on_timer(self):
        if self.state != SMTP_DELAY:
            return 0
        self.state = SMTP_START
        self.phase = "in auth state"
        self.send(self.profile.greeting)
        return ACT_SEND | self._process()

    cpdef int feed(self, bytes data):
        if self.state == SMTP_CLOSED or not data:
            return 0
        if self.state == SMTP_DELAY:
            # A client that talks before the greeting is an early talker (spam bot).
            if self.log_info:
                self.close_reason = ("client was rejected before greeting: \"%s\""
                                     % _log_text(data[:self.limit], True))
            self.send(S503_PIPELINING)
            return self._close()
        ba_add(self.buf, data)
        if self.state >= SMTP_WAIT_AUTH:
            return 0
        return self._process()

    cpdef int on_auth_ok(self):
        if self.state != SMTP_WAIT_AUTH:
            return 0
        self.state = SMTP_DONE
        self.phase = ""
        return 0

    cpdef int on_auth_fail(self, bytes message, object error_code=None, bint retry=False,
                           object sasl=None):
        """auth_http said no. `sasl` is the Auth-Error-SASL value (freenginx): for
        XOAUTH2/OAUTHBEARER it is sent as a 334 challenge first, and the failure reply
        follows the client's answer."""
        if self.state != SMTP_WAIT_AUTH:
            return 0
        reply = ((error_code if error_code else S535_DEFAULT_CODE) + b" " + message + b"\r\n")
        self.phase = "in auth state"
        if sasl is not None and (self.method == _M_XOAUTH2
                                       or self.method == _M_OAUTHBEARER):
            self.fail_reply = reply
            self.fail_retry = retry
            self.state = SMTP_SASL_ERROR
            self.send(b"334 " + bytes(sasl) + b"\r\n")
            return ACT_SEND | self._process()
        self.send(reply)
        if not retry:
            return self._close()
        self.state = SMTP_START
        return ACT_SEND | self._process()

    cpdef int on_auth_error(self):
        if self.state == SMTP_CLOSED:
            return 0
        self.send(S451_INTERNAL)
        return self._close()

    cpdef int after_starttls(self):
        self.state = SMTP_WAIT_TLS
        return self.on_tls_done()

    cpdef int on_tls_done(self):
        if self.state != SMTP_WAIT_TLS:
            return 0
        self.tls = True
        self.state = SMTP_START
        self.phase = "in auth state"
        return self._process()

    cpdef int on_timeout(self):
        if self.state == SMTP_CLOSED:
            return 0
        self.close_reason = "client timed out (110: Connection timed out)"
        return self._close()

    # --- machinery -----------------------------------------------------------------------

    cdef int _close(self):
        self.state = SMTP_CLOSED
        return (ACT_SEND if len(self._out) else 0) | ACT_CLOSE

    cdef int _process(self):
        """Run every complete line in the buffer while the state parses input."""
        cdef char *base
        cdef const char *lf
        cdef Py_ssize_t n, avail, scan, start
        cdef int cmd, act = 0
        while self.state <= SMTP_SASL_ERROR and self.state != SMTP_DELAY:
            base = PyByteArray_AS_STRING(self.buf)
            n = PyByteArray_GET_SIZE(self.buf)
            avail = n - self.pos
            if avail <= 0:
                break
            scan = avail if avail < self.limit else self.limit
            lf = <const char *>memchr(base + self.pos, b"\n", scan)
            if lf == NULL:
                if avail >= self.limit:
                    # One command longer than smtp_client_buffer. Unlike nginx, answered
                    # commands do not count (freenginx compacts the buffer too).
                    if self.log_info:
                        self.close_reason = ("client sent too long command \"%s\""
                                             % _log_text(ba_slice(self.buf, self.pos,
                                                                  self.pos + scan), False))
                    self.send(S500_INVALID)
                    act |= self._close()
                break
            start = self.pos
            self.pos = lf - base + 1
            cmd = self._parse(base, start, lf - base, self.state != SMTP_START)
            if cmd == SMTP_INVALID:
                act |= self._parse_error()
                continue
            self.commands += 1
            if self.max_commands and self.commands > self.max_commands:
                self.close_reason = "client sent too many commands"
                self.send(S500_INVALID)
                act |= self._close()
                break
            if self.state == SMTP_START:
                act |= self._command(cmd)
            elif self.state == SMTP_SASL_ERROR:
                act |= self._sasl_error_reply()
            else:
                act |= self._sasl_line()
        if self.state == SMTP_CLOSED:
            PyByteArray_Resize(self.buf, 0)     # nothing after a closing reply is read
        elif self.pos:
            ba_cut(self.buf, self.pos)
        self.pos = 0
        if len(self._out):
            act |= ACT_SEND
        return act

    cdef int _parse(self, const char *base, Py_ssize_t s, Py_ssize_t e, bint sasl):
        """Split one line [s, e) (e is the LF) into a verb id and argument offsets, with
        ngx_mail_smtp_parse_command's rules; per-line, so no state leaks between lines."""
        cdef const unsigned char *p = <const unsigned char *>base
        cdef Py_ssize_t i, a
        cdef int cmd = SMTP_SASL_LINE
        cdef unsigned int w
        if e > s and p[e - 1] == b"\r":
            e -= 1
        if memchr(base + s, b"\r", e - s) != NULL:
            return SMTP_INVALID          # a CR must be followed by LF
        self.nargs = 0
        i = s
        if sasl:
            # Continuation lines have no verb: the first argument may be empty.
            while i < e and p[i] != b" ":
                i += 1
            self.arg_s[0] = s
            self.arg_e[0] = i
            self.nargs = 1
        else:
            while i < e and _is_alpha(p[i]):
                i += 1
            if i < e and p[i] != b" ":
                return SMTP_INVALID
            if i - s == 4:
                w = _word4(p + s)
                if w == W_HELO:
                    cmd = SMTP_HELO
                elif w == W_EHLO:
                    cmd = SMTP_EHLO
                elif w == W_AUTH:
                    cmd = SMTP_AUTH
                elif w == W_MAIL:
                    cmd = SMTP_MAIL
                elif w == W_RCPT:
                    cmd = SMTP_RCPT
                elif w == W_NOOP:
                    cmd = SMTP_NOOP
                elif w == W_RSET:
                    cmd = SMTP_RSET
                elif w == W_QUIT:
                    cmd = SMTP_QUIT
                elif w == W_VRFY:
                    cmd = SMTP_VRFY
                elif w == W_EXPN:
                    cmd = SMTP_EXPN
                elif w == W_HELP:
                    cmd = SMTP_HELP
                else:
                    return SMTP_INVALID
            elif i - s == 8 and _word4(p + s) == W_STAR and _word4(p + s + 4) == W_TTLS:
                cmd = SMTP_STARTTLS
            else:
                return SMTP_INVALID
        self.line_s = s
        self.line_e = i
        while True:
            while i < e and p[i] == b" ":
                i += 1
            if i >= e:
                break
            if self.nargs >= MAX_ARGS:
                return SMTP_INVALID
            a = i
            while i < e and p[i] != b" ":
                i += 1
            self.arg_s[self.nargs] = a
            self.arg_e[self.nargs] = i
            self.nargs += 1
            self.line_e = i
        return cmd

    cdef bytes _arg(self, int k):
        cdef char *base = PyByteArray_AS_STRING(self.buf)
        return PyBytes_FromStringAndSize(base + self.arg_s[k], self.arg_e[k] - self.arg_s[k])

    cdef bytes _line_text(self):
        cdef char *base = PyByteArray_AS_STRING(self.buf)
        return PyBytes_FromStringAndSize(base + self.line_s, self.line_e - self.line_s)

    cdef int _parse_error(self):
        # Only parser errors count toward max_errors (nginx); any SASL exchange is abandoned.
        cdef bint close_after = self.state == SMTP_SASL_ERROR and not self.fail_retry
        self.errors += 1
        self.send(S500_INVALID)
        self.state = SMTP_START
        self.login_user = b""
        if self.errors >= self.max_errors:
            self.close_reason = "client sent too many invalid commands"
            return self._close()
        if close_after:
            return self._close()
        return 0

    cdef int _invalid(self):
        # Handler-level 500: not counted, back to the start state.
        self.send(S500_INVALID)
        self.state = SMTP_START
        self.login_user = b""
        return 0

    cdef int _command(self, int cmd):
        cdef SmtpProfile prof = self.profile
        if cmd == SMTP_HELO or cmd == SMTP_EHLO:
            if self.nargs != 1:
                self.send(S501_INVALID_ARG)
                return 0
            name = self._arg(0)
            if b"\0" in name:
                # Beyond nginx: a NUL would reach Auth-SMTP-Helo and the backend's HELO.
                self.send(S501_INVALID_ARG)
                return 0
            self.helo = name
            self.mail_from = b""
            self.rcpt_to = b""
            if cmd == SMTP_HELO:
                self.send(prof.helo_reply)
            else:
                self.esmtp = True
                if self.tls or prof.starttls_mode == TLS_OFF:
                    self.send(prof.ehlo_plain)
                elif prof.starttls_mode == TLS_ON:
                    self.send(prof.ehlo_starttls)
                else:
                    self.send(prof.ehlo_starttls_only)
            return 0
        if cmd == SMTP_AUTH:
            return self._auth_command()
        if cmd == SMTP_NOOP:
            self.send(S250_OK)
            return 0
        if cmd == SMTP_RSET:
            self.mail_from = b""
            self.rcpt_to = b""
            self.send(S250_OK)
            return 0
        if cmd == SMTP_MAIL:
            if not prof.methods & M_NONE:
                self.send(S530_AUTH_REQUIRED)
            elif not self.tls and prof.starttls_mode == TLS_ONLY:
                # Beyond nginx (nginx#705): `starttls only` holds for `smtp_auth none` too;
                # nginx relays the whole message in plain text.
                self.send(S530_STARTTLS_FIRST)
            elif self.mail_from:
                self.send(S503_BAD_SEQUENCE)
            elif self.nargs == 0:
                self.send(S501_INVALID_ARG)
            else:
                text = self._line_text()
                if b"\0" in text:
                    self.send(S501_INVALID_ARG)
                else:
                    self.mail_from = text
                    self.send(S250_OK)
            return 0
        if cmd == SMTP_RCPT:
            if not self.mail_from:
                self.send(S503_BAD_SEQUENCE)
            elif self.nargs == 0:
                self.send(S501_INVALID_ARG)
            else:
                text = self._line_text()
                if b"\0" in text:
                    self.send(S501_INVALID_ARG)
                    return 0
                self.rcpt_to = text
                return self._ask_auth(_M_NONE, b"", b"", b"")
            return 0
        if cmd == SMTP_QUIT:
            self.send(S221_BYE)
            return self._close()
        if cmd == SMTP_STARTTLS:
            if self.tls or prof.starttls_mode == TLS_OFF:
                self.send(S500_INVALID)
                return 0
            # RFC 3207 §4.2 / CVE-2011-0411: plaintext pipelined behind STARTTLS is dropped.
            self.pos = PyByteArray_GET_SIZE(self.buf)
            self.helo = b""
            self.mail_from = b""
            self.rcpt_to = b""
            self.send(S220_START_TLS)
            self.state = SMTP_WAIT_TLS
            self.phase = "in starttls state"
            return ACT_STARTTLS
        # VRFY, EXPN, HELP: recognised, refused, not counted.
        self.send(S500_INVALID)
        return 0

    cdef int _auth_command(self):
        cdef SmtpProfile prof = self.profile
        cdef int m = prof.methods
        if not self.tls and prof.starttls_mode == TLS_ONLY:
            self.send(S500_INVALID)
            return 0
        if self.nargs == 0:
            self.send(S501_INVALID_ARG)
            return 0
        mech = self._arg(0)
        if self.nargs > 2:
            return self._invalid()
        # PLAIN and LOGIN are accepted even when smtp_auth does not list them (nginx).
        if _ieq(mech, b"LOGIN"):
            if self.nargs == 1:
                self.state = SMTP_AUTH_LOGIN_USERNAME
                self.send(S334_USERNAME)
                return 0
            user = decode_base64(self._arg(1))
            if user is None:
                return self._invalid()
            self.login_user = user
            self.state = SMTP_AUTH_LOGIN_PASSWORD
            self.send(S334_PASSWORD)
            return 0
        if _ieq(mech, b"PLAIN"):
            if self.nargs == 1:
                self.state = SMTP_AUTH_PLAIN
                self.send(S334_NEXT)
                return 0
            return self._sasl_plain(self._arg(1))
        if _ieq(mech, b"CRAM-MD5"):
            if not m & M_CRAM_MD5 or self.nargs != 1:
                return self._invalid()
            if self.salt is None:
                self.salt = make_salt(prof.server_name)
            self.state = SMTP_AUTH_CRAM_MD5
            self.send(b"334 " + encode_base64(self.salt[:len(self.salt) - 2]) + b"\r\n")
            return 0
        if _ieq(mech, b"EXTERNAL"):
            # Beyond nginx 1.22/mainline: the initial-response form is refused too when
            # external is off (freenginx), so no client can claim `external` at will.
            if not m & M_EXTERNAL:
                return self._invalid()
            if self.nargs == 1:
                self.state = SMTP_AUTH_EXTERNAL
                self.send(S334_USERNAME)
                return 0
            return self._sasl_external(self._arg(1))
        if _ieq(mech, b"XOAUTH2") or _ieq(mech, b"OAUTHBEARER"):
            xo = len(mech) == 7
            if not m & (M_XOAUTH2 if xo else M_OAUTHBEARER):
                return self._invalid()
            if self.nargs == 1:
                self.state = SMTP_AUTH_XOAUTH2 if xo else SMTP_AUTH_OAUTHBEARER
                self.send(S334_NEXT)
                return 0
            return self._sasl_oauth(self._arg(1), xo)
        return self._invalid()

    cdef int _sasl_line(self):
        arg = self._arg(0)
        st = self.state
        if st == SMTP_AUTH_PLAIN:
            return self._sasl_plain(arg)
        if st == SMTP_AUTH_LOGIN_USERNAME:
            user = decode_base64(arg)
            if user is None:
                return self._invalid()
            self.login_user = user
            self.state = SMTP_AUTH_LOGIN_PASSWORD
            self.send(S334_PASSWORD)
            return 0
        if st == SMTP_AUTH_LOGIN_PASSWORD:
            passwd = decode_base64(arg)
            if passwd is None:
                return self._invalid()
            user = self.login_user
            self.login_user = b""
            return self._ask_auth(_M_PLAIN, user, passwd, b"")
        if st == SMTP_AUTH_CRAM_MD5:
            data = decode_base64(arg)
            if data is None:
                return self._invalid()
            user, digest = sasl_cram_md5(data)
            if digest is None or len(digest) != 32:
                return self._invalid()
            return self._ask_auth(_M_CRAM, user, digest, self.salt)
        if st == SMTP_AUTH_EXTERNAL:
            return self._sasl_external(arg)
        return self._sasl_oauth(arg, st == SMTP_AUTH_XOAUTH2)

    cdef int _sasl_plain(self, bytes arg):
        data = decode_base64(arg)
        if data is None:
            return self._invalid()
        creds = sasl_plain(data)
        if creds is None:
            return self._invalid()
        return self._ask_auth(_M_PLAIN, creds[0], creds[1], b"")

    cdef int _sasl_external(self, bytes arg):
        user = decode_base64(arg)
        if user is None:
            return self._invalid()
        # No password: nginx 1.22.1 sends one left over from an earlier failed attempt.
        return self._ask_auth(_M_EXTERNAL, user, b"", b"")

    cdef int _sasl_oauth(self, bytes arg, bint xo):
        data = decode_base64(arg)
        if data is None:
            return self._invalid()
        creds = sasl_xoauth2(data) if xo else sasl_oauthbearer(data, True, True)
        if creds is None:
            return self._invalid()
        return self._ask_auth(_M_XOAUTH2 if xo else _M_OAUTHBEARER, creds[0], creds[1], b"")

    cdef int _sasl_error_reply(self):
        # freenginx: the client acknowledges the Auth-Error-SASL challenge with an empty
        # line (XOAUTH2) or the dummy `AQ==` (OAUTHBEARER); then the real failure is sent.
        cdef bint ok
        arg = self._arg(0)
        if self.method == _M_XOAUTH2:
            ok = self.nargs == 1 and len(arg) == 0
        else:
            ok = self.nargs == 1 and arg.startswith(b"AQ==")
        self.state = SMTP_START
        self.send(self.fail_reply if ok else S500_INVALID)
        self.fail_reply = None
        if not self.fail_retry:
            return self._close()
        return 0

    cdef int _ask_auth(self, bytes method, bytes user, bytes passwd, bytes salt):
        # A fresh request per attempt: nginx 1.22.1 carries an earlier attempt's login,
        # password and salt over (to Auth-Method none and XCLIENT LOGIN too); fastmail does not.
        self.login_attempt += 1
        a = AuthRequest(b"smtp", method, user, passwd, salt, self.login_attempt)
        a.smtp_helo = self.helo
        a.smtp_from = self.mail_from
        a.smtp_to = self.rcpt_to
        a.esmtp = self.esmtp
        self.auth = a
        self.method = method
        self.state = SMTP_WAIT_AUTH
        self.phase = "in http auth state"
        return ACT_AUTH
