# cython: language_level=3
"""Backend login machines: log in to the backend nginx's way, then hand over to the relay.

Owns: BackendLogin (the reply reading shared by every protocol, the endings, beyond nginx the
proxy_ssl STARTTLS dialogue), the IMAP, POP3 and (beyond nginx) ManageSieve logins (IMAP LOGIN
with literals, POP3 USER/PASS, ManageSieve AUTHENTICATE PLAIN; with proxy_client_id the
client's identity: IMAP ID, POP3 XCLIENT), the reply checks, what the client sees when the
login ends, and LoginConf, what the engine calls to make a login. The SMTP login is
_smtplogin.pyx's, on the same base.
Sans-IO: never touches a socket, a clock or DNS; the engine (_session.pyx, _upstream.pyx)
owns connect, timeouts, the PROXY header write and the addresses.
Mirrors nginx src/mail/ngx_mail_proxy_module.c (mainline: one untagged line tolerated before
the IMAP LOGIN reply). Beyond nginx (docs/differences.md): no CR, LF or NUL from the
credentials or the client's SMTP lines reaches a backend command line.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.string cimport memcpy
cimport cython

from fastmail._core cimport (AuthRequest, ACT_SEND, ACT_CLOSE, ACT_BACKEND, ACT_DONE,
                             ACT_STARTTLS, ba_add, ba_slice, ba_clear,
                             ba_find_crlf, ba_at, cat3)

import binascii

IMAP_INTERNAL_ERROR = b"* BAD internal server error\r\n"
POP3_INTERNAL_ERROR = b"-ERR internal server error\r\n"
SIEVE_INTERNAL_ERROR = b'BYE (TRYLATER) "Internal server error."\r\n'  # as _sieve's

READING = "reading response from upstream"
CTL_REASON = "fastmail: CR, LF or NUL in a value for a backend command"

# nginx's ngx_mail_proxy states, named for what was last sent (the reply check follows it);
# FINISHED and the SMTP states are in _login.pxd and _smtplogin.pyx.
cdef enum:
    IMAP_START = FIRST_STATE
    IMAP_ID             # proxy_client_id: the ID command (maybe with the LOGIN after it)
    IMAP_LOGIN
    IMAP_USER
    IMAP_PASSWD
    POP3_START
    POP3_XCLIENT        # proxy_client_id: XCLIENT alone; USER follows its reply
    POP3_XCLIENT_USER   # XCLIENT and USER sent together (proxy_pipelining)
    POP3_USER
    POP3_PASSWD
    SIEVE_START
    SIEVE_AUTH


cdef inline bytes _then(bytes before, bytes more):
    """before + more, without a copy when one is empty (the usual case)"""
    if not before:
        return more
    if not more:
        return before
    return before + more


cdef bint _is_ip(bytes s):
    """An address text as _inet writes it (digits, hex, '.' and ':'): not `unix:`, nothing
    that could need quoting in a backend command."""
    cdef unsigned char c
    if not s:
        return False
    for c in s:
        if not (48 <= c <= 57 or 97 <= (c | 0x20) <= 102 or c == 46 or c == 58):
            return False
    return b":" in s or b"." in s


cdef object _code_words(bytes line, Py_ssize_t at, bytes code):
    """The words after CODE in a response code `[CODE w1 w2 ...]` at `at` of a greeting
    (IMAP `* OK [CAPABILITY ...]`, POP3 `+OK [XCLIENT]`), upper-cased; None when the
    greeting has no such code."""
    cdef Py_ssize_t end
    if line[at:at + 1] != b"[":
        return None
    end = line.find(b"]", at)
    if end < 0:
        return None
    words = line[at + 1:end].upper().split()
    if not words or words[0] != code:
        return None
    return words[1:]


# proxy_ssl (beyond nginx): tls_mode, and where the STARTTLS dialogue stands (tls_stage)
cdef enum:
    TLS_OFF = 0
    TLS_ON = 1
    TLS_STARTTLS = 2
    TLS_DONE = -1       # no dialogue (off, or finished)
    TLS_WAIT = -2       # the handshake runs: feed() is not expected

TLS_MODES = {"off": TLS_OFF, "on": TLS_ON, "starttls": TLS_STARTTLS}

# per protocol: (greeting's start, go-ahead's start) and the commands, as tls.py had them
cdef tuple _STLS_OK = ((b"* OK", b"S0 OK"), (b"+OK", b"+OK"), (b"220", b"220"))
cdef tuple _STLS_CMD = ((b"S0 STARTTLS\r\n",), (b"STLS\r\n",),
                        (b"EHLO fastmail\r\n", b"STARTTLS\r\n"), (b"STARTTLS\r\n",))

# RFC 5804 response lines (the words are case-insensitive)
cdef enum:
    SIEVE_NONE = 0      # not a response: a capability line, a string
    SIEVE_OK = 1
    SIEVE_NO = 2
    SIEVE_BYE = 3


cdef int _sieve_response(bytes line):
    cdef bytes u = line[:4].upper()
    cdef Py_ssize_t n
    if u[:2] == b"OK" or u[:2] == b"NO":
        n = 2
    elif u[:3] == b"BYE":
        n = 3
    else:
        return SIEVE_NONE
    if len(line) > n and line[n] not in b" \r\n":
        return SIEVE_NONE
    if n == 3:
        return SIEVE_BYE
    return SIEVE_OK if u[0] == 79 else SIEVE_NO   # 'O'


cdef Py_ssize_t _reply_end(int proto, int stage, bytearray buf):
    """Length of the first complete reply in buf, or -1 (SMTP: multi-line replies; IMAP after
    the greeting: up to the tagged S0 line; ManageSieve: up to the OK, NO or BYE line)."""
    cdef Py_ssize_t pos = 0, nl
    while True:
        nl = buf.find(b"\n", pos)
        if nl < 0:
            return -1
        if proto == PROTO_SMTP:
            if nl - pos < 4 or buf[pos + 3] != 45:     # '-': more lines follow
                return nl + 1
        elif proto == PROTO_IMAP and stage > 0:
            if buf[pos:pos + 3] == b"S0 ":
                return nl + 1
        elif proto == PROTO_SIEVE:
            # the capability lines end with OK; STARTTLS gets one response line
            if _sieve_response(bytes(buf[pos:nl + 1])) != SIEVE_NONE:
                return nl + 1
        else:
            return nl + 1
        pos = nl + 1


cdef class BackendLogin:
    """Shared reply reading (ngx_mail_proxy_read_response) and endings. Use a subclass."""

    def __cinit__(self, *args, **kwargs):
        self.rbuf = bytearray()
        self._out = b""
        self._bout = b""
        self.phase = "connecting to upstream"
        self.close_reason = None
        self.log_level = "error"

    cdef int _setup(self, AuthRequest auth, Py_ssize_t proxy_buffer, bint pass_error_message,
                    bytes proxy_header) except -1:
        if auth is None:
            raise TypeError("auth must be an AuthRequest")
        self.auth = auth
        self.tls_stage = TLS_DONE
        self.limit = proxy_buffer if proxy_buffer >= 4 else 4
        self.pass_error = pass_error_message
        self.proxy_header = proxy_header or b""
        return 0

    cpdef bytes take_output(self):
        """Bytes for the client (the login reply, or the failure reply), in order."""
        cdef bytes out = self._out
        self._out = b""
        return out

    cpdef bytes take_backend_output(self):
        """Bytes for the backend; the PROXY header from start() must go in one write."""
        cdef bytes out = self._bout
        self._bout = b""
        return out

    @property
    def done(self):
        return self.state == FINISHED

    cpdef int start(self):
        """Call once the backend connect completed: queues the PROXY header, if any. With TLS
        on (proxy_ssl on) ACT_STARTTLS asks for the handshake right after the header."""
        cdef int act = 0
        if self.proxy_header:
            self._bout = _then(self._bout, self.proxy_header)
            act = ACT_BACKEND
        if self._unsafe():
            return act | self._internal(CTL_REASON, "error")
        if self.tls_mode == TLS_ON:
            self.tls_stage = TLS_WAIT
            return act | ACT_STARTTLS
        if self.tls_mode == TLS_STARTTLS:
            self.tls_stage = 0
        return act  # nginx's action stays "connecting to upstream" until the greeting

    cpdef int on_tls_done(self):
        """The backend handshake finished: the login proper begins (after STARTTLS, with the
        greeting read before it)."""
        cdef bytes greeting = self.greeting
        self.tls_stage = TLS_DONE
        self.phase = READING
        if not greeting:
            return 0
        self.greeting = None
        ba_clear(self.rbuf)
        ba_add(self.rbuf, greeting)
        return self._on_reply()

    cpdef int feed(self, bytes data):
        """Backend bytes arrived: returns ACT_BACKEND / ACT_SEND / ACT_DONE / ACT_CLOSE bits
        (and ACT_STARTTLS when the backend's STARTTLS go-ahead came)."""
        if self.state == FINISHED or self.tls_stage == TLS_WAIT:
            return 0
        if self.tls_stage >= 0:
            return self._starttls(data)
        self.phase = READING  # as ngx_mail_proxy_read_response; a timeout keeps the last
        ba_add(self.rbuf, data)
        return self._replies()

    cdef int _replies(self) except -1:
        """Runs the machine over the replies read, one complete reply at a time (a reply
        of several lines is offered line by line until the machine takes it). nginx reads at
        most its buffer and never past it; one read here may bring the reply that ends the
        login with the first bytes of the relay, which go to the client after it."""
        cdef Py_ssize_t end = 0, nl, size
        cdef bytes extra
        cdef int act = 0, a
        cdef bint taken
        while True:
            nl = ba_find_crlf(self.rbuf, end)
            size = PyByteArray_GET_SIZE(self.rbuf)
            if nl < 0 or nl + 2 > self.limit:
                if nl >= 0 or size >= self.limit:
                    # nginx NUL-terminates over the last byte of its full buffer to log it
                    return act | self._internal(
                        'upstream sent too long response line: "%s"'
                        % ba_slice(self.rbuf, 0, min(size, self.limit - 1)).decode("latin-1"),
                        "error")
                return act
            end = nl + 2
            if end < 4:
                continue
            extra = None
            if end < size:
                extra = ba_slice(self.rbuf, end, size)
                PyByteArray_Resize(self.rbuf, end)
            a = self._on_reply()
            act |= a
            if self.state == FINISHED:
                if a & ACT_DONE and extra is not None:
                    self._out = _then(self._out, extra)  # the relay's first bytes, after it
                return act
            taken = PyByteArray_GET_SIZE(self.rbuf) == 0   # a command sent or the line skipped
            if extra is not None:
                ba_add(self.rbuf, extra)
            if taken:
                end = 0                     # the next reply starts anew
                if extra is None:
                    return act

    cdef int _starttls(self, bytes data) except -1:
        """Beyond nginx, proxy_ssl starttls: greeting, STARTTLS/STLS (SMTP: EHLO first),
        go-ahead, then TLS. What the backend sent after its go-ahead is dropped: it would be
        read as TLS-protected (the response-injection class)."""
        cdef Py_ssize_t end
        cdef bytes reply = b"", last
        cdef int act = 0
        self.rbuf += data
        while True:
            end = _reply_end(self.stls_proto, self.tls_stage, self.rbuf)
            # a reply longer than proxy_buffer is refused whether it came in one read or in
            # many (found by tests/fuzz: one read used to let it through)
            if end > self.limit or (end < 0 and len(self.rbuf) > self.limit):
                return act | self._internal(
                    "upstream sent too long response line during STARTTLS", "error")
            if end < 0:
                return act
            reply = bytes(self.rbuf[:end])
            del self.rbuf[:end]
            last = reply[reply.rstrip(b"\r\n").rfind(b"\n") + 1:]
            if self.stls_proto == PROTO_SIEVE:
                if _sieve_response(last) != SIEVE_OK:
                    break
                if self.tls_stage == 0:
                    self.tls_stage = 1
                    self._bout = _then(self._bout, _STLS_CMD[PROTO_SIEVE][0])
                    act = ACT_BACKEND
                    continue
            elif self.tls_stage == 0:
                if not last.startswith(_STLS_OK[self.stls_proto][0]):
                    break
                self.greeting = reply
                self.tls_stage = 1
                self._bout = _then(self._bout, _STLS_CMD[self.stls_proto][0])
                act = ACT_BACKEND
                continue
            elif self.stls_proto == PROTO_SMTP and self.tls_stage == 1:
                if not last.startswith(b"250"):
                    break
                self.tls_stage = 2
                self._bout = _then(self._bout, _STLS_CMD[PROTO_SMTP][1])
                act = ACT_BACKEND
                continue
            elif not last.startswith(_STLS_OK[self.stls_proto][1]):
                break
            del self.rbuf[:]
            self.tls_stage = TLS_WAIT
            self.phase = "SSL handshaking to upstream"
            return act | ACT_STARTTLS
        # a command the last reply called for still goes (act keeps ACT_BACKEND): had that
        # reply come in a read of its own it would have gone already, and the backend sees
        # the same bytes however its replies were cut (found by tests/fuzz)
        return act | self._internal('upstream refused STARTTLS: "%s"'
                                    % reply.strip().decode("latin-1"), "error")

    cpdef int on_error(self, str reason=None):
        """The backend failed outside a reply (connect refused, EOF, timeout, write error):
        the protocol's internal-error reply whatever proxy_pass_error_message says."""
        if self.state == FINISHED:
            return 0
        return self._internal(reason, "error")

    cpdef void set_client(self, bytes client_ip, int client_port, bytes local_ip,
                          int local_port):
        """proxy_client_id: the client's address after realip and the proxy's own where the
        client reached it (local_ip None for a unix socket). Call before start()."""
        self.client_ip = client_ip
        self.client_port = client_port
        self.local_ip = local_ip
        self.local_port = local_port

    cdef bint _unsafe(self):
        return False

    cdef int _on_reply(self) except -1:
        return 0

    cdef int _skip(self):
        """The reply needs no answer (an IMAP ID response, an XCLIENT reply sent for)."""
        ba_clear(self.rbuf)
        return 0

    cdef int _send(self, bytes line, int state):
        ba_clear(self.rbuf)  # nginx empties the reply buffer after each line it sends
        self._bout = _then(self._bout, line)
        self.state = state
        return ACT_BACKEND

    cdef int _internal(self, str reason, str level):
        self.state = FINISHED
        self.close_reason = reason
        self.log_level = level
        self._out = self.internal_error
        return ACT_SEND | ACT_CLOSE

    cdef int _invalid(self):
        # proxy_pass_error_message on: the backend's whole reply goes to the client, logged at
        # info; off: logged at error and the client gets the internal-error reply.
        cdef Py_ssize_t n = PyByteArray_GET_SIZE(self.rbuf)
        cdef bytes reply = ba_slice(self.rbuf, 0, n)
        cdef str text = ('upstream sent invalid response: "%s"'
                         % ba_slice(self.rbuf, 0, n - 2).decode("latin-1"))
        if not self.pass_error:
            return self._internal(text, "error")
        self.state = FINISHED
        self.close_reason = text
        self.log_level = "info"
        self._out = _then(self._out, reply)
        return ACT_SEND | ACT_CLOSE

    cdef int _done(self, bytes client_bytes):
        self.state = FINISHED
        self.phase = "proxying"
        self._out = _then(self._out, client_bytes)
        ba_clear(self.rbuf)
        return ACT_SEND | ACT_DONE

    cdef int _done_reply(self, Py_ssize_t start):
        """Logged in: the reply read, from `start`, is the client's answer."""
        cdef Py_ssize_t size = PyByteArray_GET_SIZE(self.rbuf)
        self._out = _then(self._out, ba_slice(self.rbuf, start, size))
        return self._done(b"")


cdef class ImapLogin(BackendLogin):
    """IMAP: `T LOGIN {n}` / `user {n}` / `pass` with synchronizing literals, as
    ngx_mail_proxy_imap_handler sends them.
    With `pipelining` (beyond nginx, proxy_pipelining on) the LOGIN goes as one line: with
    LITERAL+ literals when the greeting announces LITERAL+ (RFC 7888), else as quoted
    strings when both credentials are 7-bit text without CR/LF, else nginx's three steps.
    With `client_id` (proxy_client_id) an `ID` (RFC 2971) with Dovecot's x-originating-* and
    x-connected-* fields goes first: in the LOGIN's write when pipelining, else on its own."""

    cdef bint pipelining
    cdef int after_id           # the state the LOGIN sent with the ID waits in; IMAP_START: none

    def __init__(self, AuthRequest auth, *, Py_ssize_t proxy_buffer=4096,
                 bint pass_error_message=False, bytes proxy_header=b"",
                 bint pipelining=False, bint client_id=False):
        self._setup(auth, proxy_buffer, pass_error_message, proxy_header)
        self._imap(pipelining, client_id)

    cdef void _imap(self, bint pipelining, bint client_id):
        self.internal_error = IMAP_INTERNAL_ERROR
        self.stls_proto = PROTO_IMAP
        self.state = IMAP_START
        self.pipelining = pipelining
        self.client_id = client_id

    cdef bint _unsafe(self):
        # Login and password travel inside literals, where CR/LF are data; the tag does not.
        return has_ctl(self.auth.tag)

    cdef int _on_reply(self) except -1:
        # a reply of at least 4 bytes (_replies, or the greeting before STARTTLS)
        cdef const char *r = PyByteArray_AS_STRING(self.rbuf)
        cdef bytes tag = self.auth.tag, line, id_cmd, greeting
        cdef Py_ssize_t p = 0, n = PyByteArray_GET_SIZE(self.rbuf)
        cdef int nxt = IMAP_LOGIN
        if self.state == IMAP_START:
            if not ba_at(self.rbuf, 0, b"* OK"):
                return self._invalid()
            self.phase = "sending LOGIN command to upstream"
            line = id_cmd = None
            if self.pipelining or self.client_id:
                greeting = ba_slice(self.rbuf, 0, n)
                if self.pipelining:
                    line = self._one_line(greeting)
                if self.client_id:
                    id_cmd = self._id_command(greeting)
            if line is None:
                line = self._login_cmd()
            else:
                nxt = IMAP_PASSWD
            if id_cmd is None:
                return self._send(line, nxt)
            if self.pipelining:
                self.after_id = nxt
                return self._send(id_cmd + line, IMAP_ID)
            self.after_id = IMAP_START
            self.phase = "sending ID to upstream"
            return self._send(id_cmd, IMAP_ID)
        if self.state == IMAP_ID:
            if r[0] == 42 and r[1] == 32:  # "* ": the ID response, or any untagged line
                return self._skip()
            if not ba_at(self.rbuf, 0, b"I0 "):
                return self._invalid()
            # OK, NO or BAD (a server without ID): the identity is a courtesy, the login goes on
            if self.after_id != IMAP_START:
                self.state = self.after_id
                return self._skip()
            self.phase = "sending LOGIN command to upstream"
            return self._send(self._login_cmd(), IMAP_LOGIN)
        if self.state == IMAP_LOGIN:
            if r[0] != 43:  # '+'
                return self._invalid()
            self.phase = "sending user name to upstream"
            return self._send(_literal(self.auth.user, b"", len(self.auth.passwd)), IMAP_USER)
        if self.state == IMAP_USER:
            if r[0] != 43:
                return self._invalid()
            self.phase = "sending password to upstream"
            return self._send(self.auth.passwd + b"\r\n", IMAP_PASSWD)
        # IMAP_PASSWD. mainline 1.27.3: one untagged line (e.g. CAPABILITY) may come first.
        if r[0] == 42 and r[1] == 32:  # "* "
            p = ba_find_crlf(self.rbuf, 2) + 2
            if n - p < 4:
                return 0
        if ba_at(self.rbuf, p, tag) and ba_at(self.rbuf, p + len(tag), b"OK"):
            return self._done_reply(0)  # relayed verbatim, the untagged line included
        return self._invalid()

    cdef bytes _login_cmd(self):
        """`<tag>LOGIN {n}`: nginx's first step, the user name's synchronizing literal."""
        return _literal(self.auth.tag, b"LOGIN", len(self.auth.user))

    cdef bytes _one_line(self, bytes greeting):
        cdef bytes user = self.auth.user, passwd = self.auth.passwd, tag = self.auth.tag
        if b"LITERAL+" in greeting.upper():
            return b"%sLOGIN {%d+}\r\n%s {%d+}\r\n%s\r\n" % (
                tag, len(user), user, len(passwd), passwd)
        if _quotable(user) and _quotable(passwd):
            return b"%sLOGIN %s %s\r\n" % (tag, _quoted(user), _quoted(passwd))
        return None

    cdef bytes _id_command(self, bytes greeting):
        """`I0 ID (...)` with the client's address and the proxy's, or None: the client has
        no IP address (unix socket), or the greeting's capability list lacks ID. A greeting
        without a list may still know ID: a server that does not answers BAD, which is fine."""
        cdef list fields
        caps = _code_words(greeting, 5, b"CAPABILITY")
        if not _is_ip(self.client_ip) or (caps is not None and b"ID" not in caps):
            return None
        fields = [b'"x-originating-ip"', _quoted(self.client_ip),
                  b'"x-originating-port"', b'"%d"' % self.client_port]
        if _is_ip(self.local_ip):
            fields += [b'"x-connected-ip"', _quoted(self.local_ip),
                       b'"x-connected-port"', b'"%d"' % self.local_port]
        return b"I0 ID (" + b" ".join(fields) + b")\r\n"


@cython.cdivision(True)
cdef bytes _literal(bytes head, bytes word, Py_ssize_t n):
    """`<head><word> {n}\r\n`, a synchronizing literal's announcement, in one allocation."""
    cdef char digits[24]
    cdef int k = 24
    cdef Py_ssize_t h = PyBytes_GET_SIZE(head), w = PyBytes_GET_SIZE(word)
    cdef bytes out
    cdef char *p
    while True:
        k -= 1
        digits[k] = <char>(48 + n % 10)
        n = n / 10
        if n == 0:
            break
    out = PyBytes_FromStringAndSize(NULL, h + w + (24 - k) + 5)
    p = PyBytes_AS_STRING(out)
    memcpy(p, PyBytes_AS_STRING(head), h)
    memcpy(p + h, PyBytes_AS_STRING(word), w)
    p += h + w
    p[0] = 32       # " {"
    p[1] = 123
    memcpy(p + 2, digits + k, 24 - k)
    p += 2 + 24 - k
    p[0] = 125      # "}\r\n"
    p[1] = 13
    p[2] = 10
    return out


cdef bint _quotable(bytes s):
    """RFC 3501 quoted: TEXT-CHAR (7-bit, no NUL, CR or LF), `"` and `\\` escaped."""
    cdef unsigned char c
    for c in s:
        if c == 0 or c > 0x7F or c == 13 or c == 10:
            return False
    return True


cdef bytes _quoted(bytes s):
    return b'"' + s.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


cdef class Pop3Login(BackendLogin):
    """POP3: `USER login` / `PASS password`, each answered by `+OK`, as
    ngx_mail_proxy_pop3_handler sends them. With `client_id` (proxy_client_id), when the
    greeting announces `[XCLIENT]` (Dovecot, to a proxy in its login_trusted_networks),
    `XCLIENT ADDR= PORT=` goes first: alone, or in
    USER's write with `pipelining`."""

    cdef bint pipelining

    def __init__(self, AuthRequest auth, *, Py_ssize_t proxy_buffer=4096,
                 bint pass_error_message=False, bytes proxy_header=b"",
                 bint pipelining=False, bint client_id=False):
        self._setup(auth, proxy_buffer, pass_error_message, proxy_header)
        self._pop3(pipelining, client_id)

    cdef void _pop3(self, bint pipelining, bint client_id):
        self.internal_error = POP3_INTERNAL_ERROR
        self.stls_proto = PROTO_POP3
        self.state = POP3_START
        self.pipelining = pipelining
        self.client_id = client_id

    cdef bint _unsafe(self):
        # nginx sends them raw, so a CR/LF would split the line: refuse.
        return has_ctl(self.auth.user) or has_ctl(self.auth.passwd)

    cdef int _on_reply(self) except -1:
        cdef bytes user_cmd
        if self.state == POP3_XCLIENT_USER:
            # +OK, or -ERR: the identity is a courtesy, the login goes on
            self.state = POP3_USER
            return self._skip()
        if self.state == POP3_XCLIENT:
            self.phase = "sending user name to upstream"
            return self._send(cat3(b"USER ", self.auth.user, b"\r\n"), POP3_USER)
        if not ba_at(self.rbuf, 0, b"+OK"):
            return self._invalid()
        if self.state == POP3_START:
            self.phase = "sending user name to upstream"
            user_cmd = cat3(b"USER ", self.auth.user, b"\r\n")
            if (self.client_id and _is_ip(self.client_ip)
                    and _code_words(ba_slice(self.rbuf, 0, PyByteArray_GET_SIZE(self.rbuf)),
                                    4, b"XCLIENT") is not None):
                # Dovecot takes a bare IPv6 address (no IPV6: prefix as in SMTP's XCLIENT)
                xclient = b"XCLIENT ADDR=%s PORT=%d\r\n" % (self.client_ip, self.client_port)
                if self.pipelining:
                    return self._send(xclient + user_cmd, POP3_XCLIENT_USER)
                self.phase = "sending XCLIENT to upstream"
                return self._send(xclient, POP3_XCLIENT)
            return self._send(user_cmd, POP3_USER)
        if self.state == POP3_USER:
            self.phase = "sending password to upstream"
            return self._send(cat3(b"PASS ", self.auth.passwd, b"\r\n"), POP3_PASSWD)
        return self._done_reply(0)


cdef class SieveLogin(BackendLogin):
    """ManageSieve (RFC 5804, beyond nginx): the capability lines up to the greeting's OK,
    then `AUTHENTICATE "PLAIN" "<base64 \\0user\\0pass>"` (a literal when the base64 is
    longer than the 1024 octets of an RFC 5804 quoted string), then the backend's OK line
    is the client's answer, as IMAP relays its tagged OK."""

    def __init__(self, AuthRequest auth, *, Py_ssize_t proxy_buffer=4096,
                 bint pass_error_message=False, bytes proxy_header=b""):
        self._setup(auth, proxy_buffer, pass_error_message, proxy_header)
        self.internal_error = SIEVE_INTERNAL_ERROR
        self.stls_proto = PROTO_SIEVE
        self.state = SIEVE_START

    cdef bint _unsafe(self):
        # NUL would shift the fields of the PLAIN message; CR/LF travel inside base64
        return b"\0" in self.auth.user or b"\0" in self.auth.passwd

    cpdef int on_tls_done(self):
        # RFC 5804 §2.2: after TLS the backend announces its capabilities again; that
        # greeting, not the one read before STARTTLS, starts the login
        self.greeting = None
        return BackendLogin.on_tls_done(self)

    cdef int _on_reply(self) except -1:
        cdef bytes r = bytes(self.rbuf)
        cdef bytes last = r[r.rfind(b"\n", 0, len(r) - 1) + 1:]
        cdef int word = _sieve_response(last)
        if self.state == SIEVE_START:
            if word == SIEVE_NONE:
                return 0  # a capability line; the greeting ends with OK
            if word != SIEVE_OK:
                return self._invalid()
            self.phase = "sending AUTHENTICATE to upstream"
            plain = binascii.b2a_base64(b"\0" + self.auth.user + b"\0" + self.auth.passwd,
                                        newline=False)
            if len(plain) <= 1024:
                line = b'AUTHENTICATE "PLAIN" "%s"\r\n' % plain
            else:
                line = b'AUTHENTICATE "PLAIN" {%d+}\r\n%s\r\n' % (len(plain), plain)
            return self._send(line, SIEVE_AUTH)
        if word == SIEVE_OK:
            return self._done(r)
        return self._invalid()


# --- per-server{} settings: what the engine calls to make a login ------------------------------

cdef class LoginConf:
    """The proxy_* settings of one server{} block; new_login() makes the backend login. With
    `client_id` (proxy_client_id) the engine also gives each login set_client()."""

    def __init__(self, Py_ssize_t proxy_buffer=4096, bint pass_error_message=False,
                 bint pipelining=False, bint client_id=False):
        self.proxy_buffer = proxy_buffer
        self.pass_error_message = pass_error_message
        self.pipelining = pipelining
        self.client_id = client_id

    cpdef BackendLogin new_login(self, AuthRequest auth, bytes client_addr, bytes client_host,
                                 bytes proxy_header):
        raise NotImplementedError


cdef class ImapLoginConf(LoginConf):
    cpdef BackendLogin new_login(self, AuthRequest auth, bytes client_addr, bytes client_host,
                                 bytes proxy_header):
        # no keyword arguments: __init__ would parse them on every login
        cdef ImapLogin login = ImapLogin.__new__(ImapLogin)
        login._setup(auth, self.proxy_buffer, self.pass_error_message, proxy_header)
        login._imap(self.pipelining, self.client_id)
        return login


cdef class Pop3LoginConf(LoginConf):
    cpdef BackendLogin new_login(self, AuthRequest auth, bytes client_addr, bytes client_host,
                                 bytes proxy_header):
        cdef Pop3Login login = Pop3Login.__new__(Pop3Login)
        login._setup(auth, self.proxy_buffer, self.pass_error_message, proxy_header)
        login._pop3(self.pipelining, self.client_id)
        return login


cdef class SieveLoginConf(LoginConf):
    cpdef BackendLogin new_login(self, AuthRequest auth, bytes client_addr, bytes client_host,
                                 bytes proxy_header):
        return SieveLogin(auth, proxy_buffer=self.proxy_buffer,
                          pass_error_message=self.pass_error_message, proxy_header=proxy_header)
