# cython: language_level=3
"""Core of the sans-IO client session machines.

Owns: the action bits a machine returns, the Machine base (receive buffer,
pending output, error counters), AuthRequest (what auth_http needs), and the
SASL helpers nginx shares between IMAP, POP3 and SMTP (ngx_mail_handler.c).
Must not touch sockets, clocks or DNS: the engine (_session.pyx) does that.
"""

import binascii
import os
import time

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE


cdef class AuthRequest:
    def __init__(self, bytes protocol=b"", bytes method=b"plain", bytes user=b"",
                 bytes passwd=b"", bytes salt=b"", int login_attempt=1):
        self.protocol = protocol
        self.method = method
        self.user = user
        self.passwd = passwd
        self.salt = salt
        self.login_attempt = login_attempt
        self.smtp_helo = b""
        self.smtp_from = b""
        self.smtp_to = b""
        self.tag = b""
        self.esmtp = False
        self.backend_auth = b""

    def __repr__(self):
        return (f"AuthRequest({self.protocol!r}, {self.method!r}, user={self.user!r}, "
                f"attempt={self.login_attempt})")


cdef class Machine:
    """Base of the client machines. Subclasses implement start/feed/on_* ."""

    def __cinit__(self, *args, **kwargs):
        self._out = bytearray()
        self.buf = bytearray()
        self.limit = 4096
        self.max_errors = 5
        self.max_commands = 0
        self.phase = "in auth state"
        self.close_reason = None
        self.log_info = True
        self.auth = None

    cpdef int start(self):
        return 0

    cpdef int feed(self, bytes data):
        return 0

    cpdef int on_auth_ok(self):
        return 0

    cpdef int on_auth_fail(self, bytes message, object error_code=None, bint retry=False,
                           object sasl=None):
        return 0

    cpdef int on_auth_error(self):
        return 0

    cpdef int on_tls_done(self):
        return 0

    cpdef int after_starttls(self):
        """A fresh machine taking over after STARTTLS ended on another server{}'s machine
        (the client's SNI name chose this server): as if its own STARTTLS had just ended."""
        return 0

    cpdef int on_timeout(self):
        return 0

    cpdef int on_timer(self):
        return 0

    cpdef bytes take_output(self):
        """Bytes to write to the client, in order; empties the output."""
        return ba_take(self._out)

    @property
    def buffered(self):
        """Client bytes held (received, not yet consumed): what the fuzz harnesses hold to
        the configured client buffer."""
        return len(self.buf)

    cpdef bytes take_input(self):
        """Client bytes received but not consumed (pipelined after the login)."""
        return ba_take(self.buf)

    cpdef Py_ssize_t room(self):
        """How many more client bytes the machine keeps before its client buffer is full:
        the driver reads no more than this (nginx reads into its buffer's free space), so a
        connection never holds more than the configured buffer. <= 0: full."""
        return self.limit - PyByteArray_GET_SIZE(self.buf)


cdef class Profile:
    """Base of the per-server{} profiles (ImapProfile, Pop3Profile, SmtpProfile)."""

    cpdef Machine new_session(self, bint tls):
        raise NotImplementedError


# --- SASL helpers (ngx_mail_handler.c) ----------------------------------------

cdef signed char _B64[256]
cdef int _i
for _i in range(256):
    _B64[_i] = -1
_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
for _i in range(64):
    _B64[_ALPHABET[_i]] = _i


cpdef object decode_base64(bytes data):
    """nginx's ngx_decode_base64: input up to the first '=' only, padding
    optional, length % 4 == 1 or a byte outside the alphabet is an error.
    Returns the decoded bytes, or None on error."""
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data), i, end = n
    cdef unsigned int acc = 0
    cdef int bits = 0
    cdef signed char v
    cdef unsigned char *q
    cdef bytes out
    for i in range(n):
        if p[i] == b"=":
            end = i
            break
        if _B64[p[i]] < 0:
            return None
    if end % 4 == 1:
        return None
    out = PyBytes_FromStringAndSize(NULL, end * 6 // 8)   # 6 bits per symbol, whole bytes
    q = <unsigned char *>PyBytes_AS_STRING(out)
    for i in range(end):
        v = _B64[p[i]]
        acc = ((acc << 6) | <unsigned int>v) & 0xFFFFFF
        bits += 6
        if bits >= 8:
            bits -= 8
            q[0] = (acc >> bits) & 0xFF
            q += 1
    return out


cpdef bytes encode_base64(bytes data):
    return binascii.b2a_base64(data, newline=False)


cpdef object sasl_plain(bytes data):
    """Decoded PLAIN message -> (login, password) or None (nginx: authzid ignored)."""
    cdef const char *p = PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data), first, second
    cdef const char *z = <const char *>memchr(p, 0, n)
    if z == NULL or z - p == n - 1:
        return None
    first = z - p
    z = <const char *>memchr(z + 1, 0, n - first - 1)
    if z == NULL:
        return None
    second = z - p
    return (PyBytes_FromStringAndSize(p + first + 1, second - first - 1),
            PyBytes_FromStringAndSize(p + second + 1, n - second - 1))


cpdef object sasl_cram_md5(bytes data):
    """Decoded CRAM-MD5 response -> (login, digest), digest None when there is
    no space; the caller checks the 32-byte digest length."""
    cdef Py_ssize_t sp = data.find(b" ")
    if sp < 0:
        return data, None
    return data[:sp], data[sp + 1:]


cpdef bytes make_salt(bytes server_name):
    """nginx's ngx_mail_salt: <random.time@server_name> plus CRLF."""
    cdef unsigned long r = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
    return b"<%d.%d@%s>\r\n" % (r, int(time.time()), server_name)


cpdef bint has_ctl(bytes data):
    """True when data holds CR, LF or NUL: such bytes never reach a header or a
    backend command (fastmail's rule beyond nginx)."""
    return b"\r" in data or b"\n" in data or b"\0" in data


# --- bearer-token SASL messages (XOAUTH2, RFC 7628 OAUTHBEARER), as freenginx 1.27.1 reads them --

cpdef object sasl_xoauth2(bytes data):
    """Decoded XOAUTH2 `user=<id>\\x01auth=Bearer <token>\\x01\\x01` -> (id, token), or
    None; both keywords are case-insensitive."""
    cdef Py_ssize_t i = data.find(b"\x01")
    if i < 5 or data[:5].lower() != b"user=":
        return None
    rest = data[i + 1:]
    if len(rest) < 14 or rest[:12].lower() != b"auth=bearer " or not rest.endswith(b"\x01\x01"):
        return None
    return data[5:i], rest[12:len(rest) - 2]


cpdef object sasl_name(bytes s):
    """RFC 5801 saslname: =2C -> `,` and =3D -> `=`; any other `=` makes it None."""
    cdef Py_ssize_t i = s.find(b"="), start = 0
    if i < 0:
        return s
    out = bytearray()
    while i >= 0:
        out += s[start:i]
        esc = s[i:i + 3]
        if esc == b"=2C":
            out += b","
        elif esc == b"=3D":
            out += b"="
        else:
            return None
        start = i + 3
        i = s.find(b"=", start)
    out += s[start:]
    return bytes(out)


cpdef object sasl_oauthbearer(bytes data, bint need_end, bint need_user):
    """Decoded OAUTHBEARER (RFC 7628) `n,a=<id>,\\x01...auth=Bearer <token>\\x01\\x01` ->
    (id, token), or None. The id is the first gs2 field after the first comma that starts
    with `a=`, as a saslname; the token follows the first `auth=Bearer ` (any case) field.
    The machines were written apart and differ, which the flags keep: `need_end` wants the
    final \\x01\\x01 (IMAP, SMTP), `need_user` an a= field (SMTP; else the id is b"")."""
    cdef Py_ssize_t i = data.find(b"\x01")
    if i < 0 or (need_end and not data.endswith(b"\x01\x01")):
        return None
    user = None
    for f in data[:i].split(b",")[1:]:
        if f[:2] == b"a=":
            user = sasl_name(f[2:])
            if user is None:
                return None
            break
    if user is None:
        if need_user:
            return None
        user = b""
    for f in data[i + 1:].split(b"\x01"):
        if f[:12].lower() == b"auth=bearer ":
            return user, f[12:]
    return None


# Python-level names for the drivers (cdef code uses the enum directly).
globals().update({a.name: int(a) for a in Action})
