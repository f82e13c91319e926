"""Fuzz target: the SMTP client machine (fastmail/_smtp.pyx) through the Machine API.

Invariants, on every input (common.py's driver runs the script one read per segment, one
byte per read, and cut at every offset):
- no exception escapes; the action bits are known ones, ACT_SEND exactly when there is output;
- every reply is whole `NNN[ -]text` CRLF lines;
- the bytes held stay within smtp_client_buffer while the machine parses;
- while auth_http runs the machine says nothing; on_auth_ok asks for nothing;
- every chunking gives the same replies, actions, auth requests and relay bytes (the
  greeting-delay timer fires only at segment boundaries, the same moment for every way);
- a closed session says nothing more, whatever comes;
- an AuthRequest has no CR, LF or NUL in HELO, MAIL FROM or RCPT TO (sent raw), and its
  auth_http request (C template, equal to the Python reference, with Client-Host) has
  whole header lines only.
"""

from __future__ import annotations

import re

from fastmail._core import AuthRequest, Machine, has_ctl
from fastmail._smtp import SmtpProfile, SmtpSession

from . import common

METHOD_SETS = (
    ["plain", "login"],
    ["none"],
    ["plain", "login", "cram-md5"],
    ["cram-md5", "external", "xoauth2", "oauthbearer", "none"],
    ["login", "none"],
    ["xoauth2", "oauthbearer"],
    ["external"],
    ["plain", "login", "cram-md5", "external", "xoauth2", "oauthbearer", "none"],
)
BUFFERS = (4096, 24, 64, 512)
ERRORS = (5, 0, 1, 3)
COMMANDS = (1000, 0, 3, 10)
PROFILES: dict[tuple[int, int], SmtpProfile] = {}

REPLY = re.compile(rb"(?:[2-5]\d\d[ -][^\r\n]*\r\n)+")
METHODS = {b"plain", b"login", b"cram-md5", b"external", b"none", b"xoauth2", b"oauthbearer"}


def make(knobs: bytes) -> tuple[Machine, int]:
    k = knobs[0], knobs[1]
    if k not in PROFILES:
        PROFILES[k] = SmtpProfile(
            capabilities=[b"SIZE 10240000", b"8BITMIME"][: k[1] >> 5 & 3],
            auth_methods=METHOD_SETS[(k[0] >> 3) & 7],
            starttls=("off", "on", "only", "off")[k[0] & 3],
            tls_available=True,
            client_buffer=BUFFERS[k[0] >> 6],
            max_errors=ERRORS[k[1] & 3],
            max_commands=COMMANDS[(k[1] >> 2) & 3],
            server_name=b"mx.example.com",
            greeting_delay=500 if k[1] & 16 else 0,
        )
    return SmtpSession(PROFILES[k], tls=bool(k[0] & 4)), BUFFERS[k[0] >> 6]


def replies(out: bytes) -> bool:
    return not out or REPLY.fullmatch(out) is not None


def check_auth(a: AuthRequest) -> None:
    common.check(a.protocol == b"smtp" and a.method in METHODS, "auth method", a.method)
    for f in (a.smtp_helo, a.smtp_from, a.smtp_to):  # raw in headers (user/passwd: escaped)
        common.check(not has_ctl(f), "CTL in an auth field", a, f)
    if a.method in (b"none", b"external"):
        common.check(a.passwd == b"", "a password for none/external", a.passwd)


SPEC = common.Spec(make, replies, check_auth, client_host=b"client.example.com")


def test_one_input(data: bytes) -> None:
    common.fuzz_machine(SPEC, data)


def seeds() -> list[bytes]:
    knobs = [b"\x00\x00\x30", b"\x09\x30\x13", b"\x11\x10\x88", b"\x38\x00\x00"]
    return common.machine_seeds(
        ["unit/test_smtp.py", "e2e/test_smtp_e2e.py", "e2e/test_smtp_backend_auth.py"], knobs
    )
