"""Fuzz target: the backend login machines (fastmail/_login.pyx: IMAP, POP3, SMTP, ManageSieve)
fed the backend's bytes, built as the engine builds them (LoginConf.new_login, set_client with
proxy_client_id, tls_mode for proxy_ssl), with proxy_pipelining, proxy_pass_error_message,
the PROXY header, XCLIENT and proxy_smtp_auth variants and the STARTTLS dialogue.

Input: knob bytes (common.HEADER), then the backend's bytes in segments (common.SEP + op; op 1
is a backend failure at that moment: on_error). Invariants, on every input, fed one read per
segment, one byte per read and cut at every offset:
- no exception escapes; the action bits are known ones; ACT_SEND exactly when there is client
  output (but with ACT_DONE, whose reply the relay takes), ACT_BACKEND exactly when there are
  backend bytes;
- what goes to the backend is the PROXY header and whole CRLF lines with no CR, LF or NUL
  inside (credentials with such bytes are refused with the internal-error reply), but for
  an IMAP literal's bytes, which are data (docs/differences.md; a NUL goes there as nginx
  sends it);
- what the client gets on a failure is the protocol's internal-error line, or with
  proxy_pass_error_message the backend's reply line; on success a CRLF-ended reply first;
- every chunking gives the same client bytes, backend bytes, actions and log line;
- a finished login (done or failed) takes nothing more and says nothing more.
"""

from __future__ import annotations

import re
from typing import Any

from fastmail._core import (
    ACT_BACKEND,
    ACT_CLOSE,
    ACT_DONE,
    ACT_SEND,
    ACT_STARTTLS,
    AuthRequest,
)
from fastmail._login import (
    IMAP_INTERNAL_ERROR,
    POP3_INTERNAL_ERROR,
    SIEVE_INTERNAL_ERROR,
    TLS_MODES,
    BackendLogin,
    ImapLoginConf,
    LoginConf,
    Pop3LoginConf,
    SieveLoginConf,
)
from fastmail._smtplogin import SMTP_INTERNAL_ERROR, SmtpLoginConf

from . import common

VALID = ACT_SEND | ACT_CLOSE | ACT_BACKEND | ACT_DONE | ACT_STARTTLS
PROTOCOLS = (b"imap", b"pop3", b"smtp", b"sieve")
INTERNAL = (IMAP_INTERNAL_ERROR, POP3_INTERNAL_ERROR, SMTP_INTERNAL_ERROR, SIEVE_INTERNAL_ERROR)
BUFFERS = (4096, 64, 16, 512)
CREDS = (
    (b"alice", b"secret"),
    (b"al ice", b'se"c\\ret'),
    (b"\xc3\xa9l\xc3\xa8ve", b"p\xe4ss{5}"),
    (b"user@example.com", b""),
    (b"a", b"x" * 300),
    (b"", b"pw"),
    (b"bob", b"pa\r\nss"),
    (b"bo\x00b", b"pw"),
)
METHODS = (b"plain", b"login", b"none", b"cram-md5", b"external", b"xoauth2")
LITERAL = re.compile(rb"\{(\d+)\+?\}$")
HEADER_V1 = b"PROXY TCP4 192.0.2.1 192.0.2.2 1234 143\r\n"
CONFS: dict[bytes, LoginConf] = {}
# the engine's defaults per protocol (the debuglog target's backend logins)
LOGIN_CONFS: tuple[LoginConf, ...] = (
    ImapLoginConf(),
    Pop3LoginConf(),
    SmtpLoginConf(server_name=b"mx.example.com", xclient=False, proxy_smtp_auth=True),
    SieveLoginConf(),
)


def new_login(knobs: bytes) -> tuple[BackendLogin, int]:
    k0, k1, k2 = knobs[0], knobs[1], knobs[2]
    proto = k0 & 3
    conf = CONFS.get(knobs[:2])
    if conf is None:
        common_args: dict[str, Any] = dict(
            proxy_buffer=BUFFERS[k1 & 3],
            pass_error_message=bool(k0 & 4),
            pipelining=bool(k0 & 8),
            client_id=bool(k0 & 16),
        )
        if proto == 2:
            conf = SmtpLoginConf(
                **common_args,
                server_name=b"mx.example.com",
                xclient=bool(k1 & 8),
                proxy_smtp_auth=bool(k1 & 16),
                smtp_auth_method=(b"plain", b"login")[(k1 >> 5) & 1],
            )
        else:
            make = (ImapLoginConf, Pop3LoginConf, SieveLoginConf)[proto - (proto == 3)]
            conf = make(**common_args)
        CONFS[knobs[:2]] = conf
    user, passwd = CREDS[k2 & 7]
    auth = AuthRequest(PROTOCOLS[proto], METHODS[(k2 >> 3) % len(METHODS)], user, passwd)
    if proto == 0:
        auth.tag = b"a1 "
    elif proto == 2:
        auth.smtp_helo = b"client.example.org"
        auth.smtp_from = b"MAIL FROM:<a@example.org> SIZE=100"
        auth.smtp_to = b"RCPT TO:<b@example.com>"
        auth.esmtp = bool(k2 & 64)
        auth.backend_auth = (b"", b"plain", b"login", b"off")[(k1 >> 6) & 3]
    header = HEADER_V1 if k1 & 4 else b""
    login = conf.new_login(auth, b"192.0.2.1", b"client.example.org", header)
    if k0 & 16:
        login.set_client(b"192.0.2.1", 51000, b"192.0.2.2" if k2 & 128 else None, 143)
    mode = (k0 >> 5) & 3
    login.tls_mode = TLS_MODES[("off", "on", "starttls", "off")[mode]]
    return login, proto


class Outcome:
    def __init__(self) -> None:
        self.client = bytearray()
        self.backend = bytearray()
        self.events: list[Any] = []
        self.end: Any = None
        self.relaying = False  # logged in: the backend's bytes go to the client as they come

    def same(self) -> tuple[Any, ...]:
        return (bytes(self.client), bytes(self.backend), self.events, self.end)


def react(login: BackendLogin, acts: int, o: Outcome) -> bool:
    """The engine's up_actions; True when the rest of the segment is dropped: after a close,
    or after the STARTTLS go-ahead (plain bytes behind it are dropped by the machine in the
    same read, eaten by the handshake in a later one), even when on_tls_done sent more."""
    tls = False
    while True:
        common.check(acts & ~VALID == 0, "unknown action bits", acts)
        back = login.take_backend_output()
        common.check(bool(back) == bool(acts & ACT_BACKEND), "ACT_BACKEND and bytes", acts, back)
        o.backend += back
        if not acts & ACT_DONE:
            out = login.take_output()
            common.check(bool(out) == bool(acts & ACT_SEND), "ACT_SEND and output", acts, out)
            o.client += out
        sig = acts & (ACT_CLOSE | ACT_DONE | ACT_STARTTLS)
        if sig:
            o.events.append(sig)
        if acts & ACT_CLOSE:
            o.end = ("close", login.close_reason, login.log_level)
            return True
        if acts & ACT_STARTTLS:
            tls = True
            acts = login.on_tls_done()
            if acts:
                continue
            return True
        if acts & ACT_DONE:
            o.client += login.take_output()
            o.end = ("done",)
            o.relaying = True
            return False
        return tls


def run(knobs: bytes, segs: list[tuple[int, bytes]], cuts: Any) -> tuple[Outcome, BackendLogin]:
    login, proto = new_login(knobs)
    o = Outcome()
    react(login, login.start(), o)
    for i, (op, seg) in enumerate(segs):
        if o.end is not None and not o.relaying:
            break
        if i and o.end is None and op & 3 == 1:
            react(login, login.on_error("upstream timed out (110: Connection timed out)"), o)
            continue
        for chunk in cuts(i, seg):
            if o.relaying:
                o.client += chunk
                continue
            if o.end is not None:
                break
            if react(login, login.feed(chunk), o):
                break
    return o, login


def command_text(back: bytes, imap: bool) -> list[bytes]:
    """The backend's bytes line by line, without an IMAP literal's bytes (data, not text)."""
    lines = []
    pos = 0
    while pos < len(back):
        eol = back.find(b"\r\n", pos)
        if eol < 0:
            lines.append(back[pos:])
            break
        lines.append(back[pos:eol])
        pos = eol + 2
        if imap and (m := LITERAL.search(lines[-1])):
            pos += int(m.group(1))
    return lines


def check_outcome(knobs: bytes, o: Outcome, login: BackendLogin) -> None:
    proto = knobs[0] & 3
    back = bytes(o.backend)
    if back.startswith(HEADER_V1) and knobs[1] & 4:
        back = back[len(HEADER_V1) :]
    if back:
        common.check(back.endswith(b"\r\n"), "a partial line to the backend", back)
        for line in command_text(back, imap=proto == 0):
            common.check(b"\r" not in line and b"\n" not in line, "CR/LF in a command", back)
            common.check(b"\0" not in line, "NUL in a backend command", back)
    client = bytes(o.client)
    if o.end and o.end[0] == "close":
        if client != INTERNAL[proto]:
            common.check(knobs[0] & 4, "a failure reply other than the internal error", client)
            common.check(client.endswith(b"\n"), "a partial line passed through", client)
    if o.end and o.end[0] == "done":
        common.check(b"\r\n" in client, "no reply to the client's login", client)
        common.check(login.take_backend_output() == b"", "bytes for the backend after done")
    if o.end is not None:
        for call in (lambda: login.feed(b"+OK more\r\n"), login.on_error):
            acts = call()
            out = login.take_output() + login.take_backend_output()
            common.check(acts == 0 and not out, "a finished login went on", acts, out)


def test_one_input(data: bytes) -> None:
    knobs, segs = common.script(data)
    ref, login = run(knobs, segs, common.whole)
    check_outcome(knobs, ref, login)
    want = ref.same()
    for way in common.ways(segs):
        got = run(knobs, segs, way)[0].same()
        if got != want:
            raise common.Broken(f"another chunking gives another result:\n{got!r}\n!=\n{want!r}")


def _protocol(first: bytes) -> int:
    if first.startswith(b"* ") or first.startswith(b"S0 "):
        return 0
    if first.startswith(b"+OK") or first.startswith(b"-ERR"):
        return 1
    if first[:3].isdigit():
        return 2
    return 3


def seeds() -> list[bytes]:
    out = []
    files = ["unit/test_login.py", "unit/test_login_dialects.py"]
    for i, sent in enumerate(common.transcripts(files, frozenset(("feed", "reply", "chat")))):
        proto = _protocol(sent[0])
        for variant in range(3):
            k0 = proto | (variant * 4 + i) << 2 & 0x1C
            knobs = bytes([k0, (i * 5) & 0xFF, (i * 3 + variant) & 0x3F]) + b"\0\0\0"
            out.append(common.encode(sent if variant else [b"".join(sent)], knobs))
    return out
