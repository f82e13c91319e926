"""Fuzz target: the debug log's credential masking (fastmail/debuglog.py), fed as the engine
feeds it: the client's reads and the replies of a real client machine (IMAP, POP3, SMTP,
ManageSieve), the STARTTLS reset, the auth_http request, and the backend login's writes and
reads (fastmail/_login.pyx) once auth_http said OK.

Input: common's machine layout (byte 0 bits 6-7 pick the protocol, the rest the profile as in
that protocol's target), where PLACE + a form byte stands for a password: each occurrence
becomes a secret of its own, raw or inside the SASL message that carries it (base64 of PLAIN,
of a bare response, of XOAUTH2, of OAUTHBEARER). Invariant, on every input: a secret that a
machine handed over as the password (AuthRequest.passwd, and not also as the user name or
another shown field) appears in no debug line: not as it is, not inside base64, whichever
way the client, the auth_http request or the backend login carried it.
"""

from __future__ import annotations

import re

from fastmail._core import AuthRequest, Machine, decode_base64, encode_base64
from fastmail.debuglog import Trace

from . import common, imap, login, pop3, sieve, smtp

PLACE = b"\xfe\xfc"
PROTOCOLS = ("imap", "pop3", "smtp", "sieve")
SPECS = (imap.SPEC, pop3.SPEC, smtp.SPEC, sieve.SPEC)
TOKEN = re.compile(rb"[A-Za-z0-9+/]{8,}={0,2}")


def secret(i: int) -> bytes:
    return b"Zq%02dXk9Wv" % (i % 100)


def forms(s: bytes) -> list[bytes]:
    return [
        s,
        encode_base64(b"\0u\0" + s),
        encode_base64(s),
        encode_base64(b"user=u\x01auth=Bearer " + s + b"\x01\x01"),
        encode_base64(b"n,a=u,\x01auth=Bearer " + s + b"\x01\x01"),
    ]


def plant(data: bytes) -> tuple[bytes, list[bytes]]:
    parts = data.split(PLACE)
    out, secrets = bytearray(parts[0]), []
    for i, p in enumerate(parts[1:]):
        s = secret(i)
        secrets.append(s)
        form = p[0] % 5 if p else 0
        out += forms(s)[form] + p[1:]
    return bytes(out), secrets


class Lines:
    level = 8  # fastmail.log.DEBUG

    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, level: int, message: str, conn: int = 0) -> None:
        self.lines.append(message)


def backend_reply(proto: str, sent: bytes, tag: bytes) -> bytes:
    """A backend that takes whatever the login machine sends."""
    last = sent.rstrip(b"\r\n").rsplit(b"\r\n", 1)[-1]
    if proto == "imap":
        return b"+ OK\r\n" if sent.endswith(b"}\r\n") else tag + b"OK done\r\n"
    if proto == "pop3":
        return b"+OK\r\n"
    if proto == "smtp":
        if last.upper().startswith(b"AUTH LOGIN") or last.upper().startswith(b"AUTH PLAIN"):
            return b"334 VXNlcm5hbWU6\r\n" if b"LOGIN" in last.upper() else b"235 ok\r\n"
        return b"250 ok\r\n"
    return b"OK\r\n"


def test_one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    proto = data[0] >> 6
    name = PROTOCOLS[proto]
    data, secrets = plant(data)
    log = Lines()
    trace = Trace(log, 1, name, 5)  # type: ignore[arg-type]
    passwords: list[AuthRequest] = []
    base = SPECS[proto]

    def on_auth(m: Machine, auth: AuthRequest) -> None:
        trace.auth_request(common.check_request(auth, base.client_host))
        passwords.append(auth)
        if not any(s in auth.passwd for s in secrets):
            return
        # auth_http said OK: the backend login, as the engine traces it
        lg = login.LOGIN_CONFS[proto].new_login(auth, b"192.0.2.1", b"h.example", b"")
        trace.connect("127.0.0.1:143", 6)
        greeting = (b"* OK hi\r\n", b"+OK hi\r\n", b"220 hi\r\n", b'"SASL" "PLAIN"\r\nOK\r\n')
        reply = greeting[proto]
        acts = lg.start()
        for _ in range(10):
            trace.upstream_read(reply)
            acts = lg.feed(reply)
            sent = lg.take_backend_output()
            if sent:
                trace.upstream_sent(lg.phase, sent)
            if acts & (common.ACT_CLOSE | login.ACT_DONE) or not sent:
                break
            reply = backend_reply(name, sent, auth.tag)

    spec = common.Spec(
        base.make,
        base.replies,
        base.check_auth,
        client_host=base.client_host,
        on_auth=on_auth,
        on_read=trace.client_read,
        on_reply=trace.client_reply,
        on_starttls=lambda: trace.state("in starttls state"),
    )
    knobs, segs = common.script(data)
    common.Driver(spec, knobs, segs).run(common.whole)
    text = "\n".join(log.lines).encode("latin-1", "backslashreplace")
    decoded = [decode_base64(t) or b"" for t in TOKEN.findall(text)]
    for auth in passwords:
        shown = b" ".join((auth.user, auth.smtp_helo, auth.smtp_from, auth.smtp_to, auth.tag))
        for s in secrets:
            if s not in auth.passwd or s in shown:
                continue
            common.check(s not in text, "a password in a debug line", s, log.lines)
            for d in decoded:
                common.check(s not in d, "a password in base64 in a debug line", s, log.lines)


def seeds() -> list[bytes]:
    out = []
    p = PLACE
    for proto, lines in (
        (0, [b"a1 LOGIN u " + p + b"\x00\r\n", b"a2 LOGIN {1}\r\nu {10}\r\n" + p + b"\x00\r\n",
             b"a3 AUTHENTICATE PLAIN " + p + b"\x01\r\n", b"a4 AUTHENTICATE LOGIN\r\ndQ==\r\n"
             + p + b"\x02\r\n", b"a5 AUTHENTICATE XOAUTH2 " + p + b"\x03\r\n"]),
        (1, [b"USER u\r\nPASS " + p + b"\x00\r\n", b"AUTH PLAIN " + p + b"\x01\r\n",
             b"AUTH PLAIN\r\n" + p + b"\x01\r\n", b"AUTH OAUTHBEARER " + p + b"\x04\r\n"]),
        (2, [b"EHLO x\r\nAUTH PLAIN " + p + b"\x01\r\n", b"EHLO x\r\nAUTH LOGIN\r\ndQ==\r\n"
             + p + b"\x02\r\n", b"EHLO x\r\nAUTH LOGIN dQ==\r\n" + p + b"\x02\r\n"]),
        (3, [b'AUTHENTICATE "PLAIN" "' + p + b'\x01"\r\n', b'AUTHENTICATE "LOGIN"\r\n"dQ=="\r\n"'
             + p + b'\x02"\r\n', b'AUTHENTICATE "PLAIN" {20+}\r\n' + p + b"\x01\r\n"]),
    ):  # fmt: skip
        for i, line in enumerate(lines):
            knobs = bytes([proto << 6 | (0x20 if proto != 1 else 0x08), 0, 0x33, 0x33, 0, 0])
            out.append(common.encode([line], knobs))
            out.append(common.encode([line, line], knobs[:2] + bytes([0x30 + i]) + knobs[3:]))
    return out
