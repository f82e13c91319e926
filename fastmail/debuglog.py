"""The debug lines of a mail session (`error_log FILE debug;`, or a mask with `debug_mail`).

Owns the wording of every debug line and the masking of credentials in them. The wording is
nginx's where nginx logs the same event (src/mail/*.c `ngx_log_debug*`: "imap auth state",
"mail auth http header: ...", "mail proxy send login", "close mail connection: N"), with
the bytes involved added in quotes. Never logged: passwords and SASL responses from the
client, IMAP LOGIN arguments, the PASS/APOP/AUTH(ENTICATE) payloads sent to the backend, the IMAP
password literal's length, and any auth_http request header not known to be harmless
(Auth-Pass, `auth_http_header` values); Auth-SSL-Cert is shortened to its length.
Must not decide whether to log: a session holds a `Trace` only when its log takes debug
lines, so nothing here runs below debug. Beyond nginx, which prints the Auth-Pass an auth
server returns (and client passwords in NGX_DEBUG_MAIL_PASSWD builds).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from fastmail.log import DEBUG

if TYPE_CHECKING:
    from fastmail.log import ErrorLog

MASK = "********"
PENDING_LIMIT = 65536  # client bytes kept while waiting for the end of a line

# auth_http request headers shown as they are; the others' values are masked
_SHOWN_REQUEST = frozenset(
    b"host auth-method auth-user auth-salt auth-protocol auth-login-attempt client-ip "
    b"client-host auth-smtp-helo auth-smtp-from auth-smtp-to auth-ssl auth-ssl-protocol "
    b"auth-ssl-cipher auth-ssl-verify auth-ssl-subject auth-ssl-issuer auth-ssl-serial "
    b"auth-ssl-fingerprint proxy-protocol-addr proxy-protocol-port proxy-protocol-server-addr "
    b"proxy-protocol-server-port connection client-port server-ip server-port "
    b"auth-failed-server auth-backend-attempt".split()
)

# the backend login step (BackendLogin.phase after it queued bytes) -> nginx's debug line
_SEND_STEP = {
    "connecting to upstream": "mail proxy send PROXY protocol header",
    "sending ID to upstream": "mail proxy send id",
    "sending LOGIN command to upstream": "mail proxy send login",
    "sending user name to upstream": "mail proxy send user",
    "sending password to upstream": "mail proxy send passwd",
    "sending HELO/EHLO to upstream": "mail proxy send ehlo",
    "sending XCLIENT to upstream": "mail proxy send xclient",
    "sending client HELO/EHLO to upstream": "mail proxy send client ehlo",
    "sending AUTH to upstream": "mail proxy send auth",
    "sending AUTHENTICATE to upstream": "mail proxy send authenticate",
    "sending MAIL FROM to upstream": "mail proxy send mail from",
    "sending RCPT TO to upstream": "mail proxy send rcpt to",
}

# client commands before login whose arguments are shown; from `index` on they are masked
_POP3_VERBS = frozenset(
    b"USER PASS APOP AUTH CAPA STLS QUIT NOOP RSET STAT LIST RETR DELE TOP UIDL XCLIENT".split()
)
_SMTP_VERBS = frozenset(
    b"HELO EHLO AUTH MAIL RCPT DATA RSET NOOP QUIT STARTTLS VRFY EXPN HELP XCLIENT".split()
)
_SIEVE_VERBS = frozenset(
    b"CAPABILITY STARTTLS AUTHENTICATE LOGOUT NOOP HAVESPACE PUTSCRIPT LISTSCRIPTS SETACTIVE "
    b"GETSCRIPT DELETESCRIPT RENAMESCRIPT CHECKSCRIPT UNAUTHENTICATE".split()
)
_VERBS = {"pop3": _POP3_VERBS, "smtp": _SMTP_VERBS, "sieve": _SIEVE_VERBS}
_SECRET_FROM = {b"LOGIN": 0, b"PASS": 0, b"APOP": 1, b"AUTH": 1, b"AUTHENTICATE": 1}
_SASL_START = frozenset((b"AUTH", b"AUTHENTICATE"))
_LITERAL = re.compile(rb"\{(\d+)\+?\}\Z")
# how a SASL challenge starts (ManageSieve's is a string, quoted or literal)
_PROMPT = {"imap": (b"+ ",), "pop3": (b"+ ",), "smtp": (b"334 ",), "sieve": (b'"', b"{")}
_LITERALS = ("imap", "sieve")  # protocols whose lines may announce literals


def _login_shown(data: bytes) -> str:
    """The IMAP LOGIN write: nginx's `tag LOGIN {N}` as it is; with proxy_pipelining the
    credentials go in the same write (LITERAL+ or quoted), masked after `LOGIN`. An ID
    command before it (proxy_client_id) is shown."""
    at = data.find(b" LOGIN ")
    if at < 0:
        return shown(data)
    head, rest = data[: at + 7], data[at + 7 :]
    if re.fullmatch(rb"\{\d+\}\r\n", rest):
        return shown(data)
    return shown(head) + MASK


def shown(data: bytes) -> str:
    """Bytes as part of one log line: printable ASCII as is, the rest escaped (\\r, \\x00)."""
    return data.decode("latin-1").encode("unicode_escape").decode("ascii")


class Trace:
    """One session's debug lines, written as `*N message` at level debug."""

    __slots__ = (
        "log", "id", "protocol", "fd", "backend_fd", "pending", "literal", "cont", "sasl",
    )  # fmt: skip

    def __init__(self, log: ErrorLog, conn_id: int, protocol: str, fd: int) -> None:
        self.log = log
        self.id = conn_id
        self.protocol = protocol
        self.fd = fd
        self.backend_fd = -1
        self.pending = b""  # client bytes after the last line end
        self.literal = 0  # IMAP literal bytes still to skip
        self.cont = False  # the next client line continues a command (after a literal)
        self.sasl = False  # the next client lines are SASL responses

    def line(self, message: str) -> None:
        self.log.log(DEBUG, message, self.id)

    # --- the session ----------------------------------------------------------------------

    def accepted(self, peer: str) -> None:
        self.line(f"accept: {peer} fd:{self.fd}")

    def state(self, action: str) -> None:
        """The session moved on; `action` is nginx's log action for the new state."""
        self.line(f"mail state: {action}")
        if action == "in starttls state":
            # the machine drops what followed STARTTLS; TLS starts a new stream of lines
            self.pending, self.literal, self.cont, self.sasl = b"", 0, False, False

    def closed(self) -> None:
        if self.backend_fd >= 0:
            self.line(f"close mail proxy connection: {self.backend_fd}")
            self.backend_fd = -1
        self.line(f"close mail connection: {self.fd}")

    # --- the client -----------------------------------------------------------------------

    def client_read(self, data: bytes) -> None:
        """Client bytes before login: nginx's per-read line, then one line per command with
        its credentials masked (IMAP literals skipped, SASL responses masked)."""
        self.line(f"{self.protocol} auth state")
        buf = self.pending + data
        start = 0
        while True:
            if self.literal:
                take = min(self.literal, len(buf) - start)
                start += take
                self.literal -= take
                if self.literal:
                    break
                self.cont = True
                continue
            end = buf.find(b"\n", start)
            if end < 0:
                break
            raw = buf[start:end].rstrip(b"\r")
            start = end + 1
            if not self.cont:
                self.line(f'{self.protocol} auth command: "{self._masked(raw)}"')
            m = _LITERAL.search(raw) if self.protocol in _LITERALS else None
            self.literal = int(m.group(1)) if m else 0
            self.cont = m is not None
        self.pending = buf[start:]
        if len(self.pending) > PENDING_LIMIT:
            # the machine refuses such a line; none of it is logged
            self.pending = b""
            self.cont = True

    def client_reply(self, out: bytes) -> None:
        """What the client was sent: a continuation prompt means SASL responses follow."""
        if out:
            last = out[out.rfind(b"\n", 0, len(out) - 1) + 1 :]
            # IMAP's "+ OK" asks for a literal, other "+ " lines are SASL challenges
            self.sasl = last.startswith(_PROMPT[self.protocol]) and last.rstrip() != b"+ OK"

    def _masked(self, line: bytes) -> str:
        if self.sasl:
            return line.decode("latin-1") if line == b"*" else MASK
        words = line.split(b" ")
        if self.protocol == "imap":
            if len(words) < 2 or not words[1].isalpha():
                return MASK  # not `tag command`: a SASL response, or nothing to show
            head, verb, args = words[:2], words[1].upper(), words[2:]
        else:
            verb, head, args = words[0].upper(), words[:1], words[1:]
            if verb not in _VERBS[self.protocol]:
                # a single unknown word may be a SASL response
                return MASK if not args else f"{shown(words[0])} {MASK}"
        secret = _SECRET_FROM.get(verb)
        if verb in _SASL_START and args:
            self.sasl = True  # the mechanism's responses come next
        if secret is not None and len(args) > secret:
            return shown(b" ".join(head + args[:secret])) + " " + MASK
        return shown(line)

    # --- auth_http ------------------------------------------------------------------------

    def auth_request(self, request: bytes) -> None:
        self.sasl = False
        first, _, rest = request.partition(b"\r\n")
        self.line(f'mail auth http request: "{shown(first)}"')
        for raw in rest.split(b"\r\n"):
            if not raw:
                continue
            name, _, value = raw.partition(b":")
            key = name.lower()
            if key in _SHOWN_REQUEST:
                text = shown(raw)
            elif key == b"auth-ssl-cert":
                text = f"{shown(name)}: ({len(value.strip())} bytes)"
            else:
                text = f"{shown(name)}: {MASK if value.strip() else ''}"
            self.line(f'mail auth http request: "{text}"')

    def auth_answer(self, headers: list[tuple[bytes, bytes]]) -> None:
        for name, value in headers:
            if name.lower() == b"auth-pass" and value:
                text = f"{shown(name)}: {MASK}"
            else:
                text = f"{shown(name)}: {shown(value)}"
            self.line(f'mail auth http header: "{text}"')
        self.line("mail auth http header done")

    # --- the backend ----------------------------------------------------------------------

    def connect(self, addr: str, fd: int) -> None:
        self.backend_fd = fd
        self.line(f"connect to {addr}, fd:{fd}" if fd >= 0 else f"connect to {addr}")

    def upstream_read(self, data: bytes) -> None:
        self.line(f'mail proxy read response: "{shown(data)}"')

    def upstream_sent(self, phase: str, data: bytes) -> None:
        step = _SEND_STEP.get(phase, "mail proxy send")
        if phase == "sending password to upstream" and self.protocol == "pop3":
            step, text = "mail proxy send pass", f"PASS {MASK}\\r\\n"
        elif phase == "sending password to upstream":
            text = f"{MASK}\\r\\n"  # the IMAP password literal
        elif phase == "sending AUTH to upstream":
            # AUTH LOGIN carries nothing; its user name and password follow as their own steps
            text = shown(data) if data == b"AUTH LOGIN\r\n" else f"AUTH PLAIN {MASK}\\r\\n"
        elif phase == "sending LOGIN command to upstream":
            text = _login_shown(data)
        elif phase == "sending AUTHENTICATE to upstream":
            text = f'AUTHENTICATE "PLAIN" {MASK}\\r\\n'
        elif phase == "sending user name to upstream" and self.protocol == "imap":
            # `user {N}`: N is the password's length
            text = shown(data.rpartition(b" {")[0]) + " {*}\\r\\n"
        else:
            text = shown(data)
        self.line(f'{step}: "{text}"')
