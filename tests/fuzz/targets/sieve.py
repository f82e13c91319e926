"""Fuzz target: the ManageSieve client machine (fastmail/_sieve.pyx, issue 14) through the
Machine API.

Invariants, on every input (common.py's driver runs the script one read per segment, one
byte per read, and cut at every offset):
- no exception escapes; the action bits are known ones, ACT_SEND exactly when there is output;
- the output is RFC 5804 server lines: OK/NO/BYE with an optional (CODE) and string, the
  capability lines, SASL challenges as strings (SERVER_LINES walks them);
- the bytes held stay within sieve_client_buffer while the machine parses;
- while auth_http runs the machine says nothing; on_auth_ok asks for nothing;
- every chunking gives the same replies, actions, auth requests and relay bytes;
- a closed session says nothing more, whatever comes;
- an AuthRequest's auth_http request (C template, equal to the Python reference) has whole
  header lines only (user and password may hold any byte: nginx escapes them, %00).
"""

from __future__ import annotations

import re

from fastmail._core import AuthRequest, Machine
from fastmail._sieve import SieveProfile, SieveSession

from . import common

METHOD_SETS = (
    ["plain"],
    ["plain", "login"],
    ["login", "external"],
    ["xoauth2", "oauthbearer"],
    ["plain", "login", "external", "xoauth2", "oauthbearer"],
    ["external"],
    ["oauthbearer"],
    ["plain", "xoauth2"],
)
BUFFERS = (4096, 32, 64, 256)
ERRORS = (5, 0, 1, 3)
COMMANDS = (1000, 0, 3, 10)
PROFILES: dict[tuple[int, int], SieveProfile] = {}
METHODS = {b"plain", b"login", b"external", b"xoauth2", b"oauthbearer"}

QUOTED = re.compile(rb'"(?:[^"\\\r\n\0]|\\["\\])*"')
LITERAL = re.compile(rb"\{(\d+)\}\r\n")
WORD = re.compile(rb"OK|NO|BYE")
CODE = re.compile(rb"[A-Z][A-Z-]*")


def _string(out: bytes, i: int) -> int:
    m = QUOTED.match(out, i)
    if m:
        return m.end()
    m = LITERAL.match(out, i)
    if not m:
        return -1
    return m.end() + int(m.group(1))


def replies(out: bytes) -> bool:
    """Walks the output as RFC 5804 server lines."""
    i = 0
    while i < len(out):
        m = WORD.match(out, i)
        if m:
            i = m.end()
            if out[i : i + 2] == b" (":
                c = CODE.match(out, i + 2)
                if not c:
                    return False
                i = c.end()
                if out[i : i + 1] == b" ":
                    i = _string(out, i + 1)
                    if i < 0:
                        return False
                if out[i : i + 1] != b")":
                    return False
                i += 1
            if out[i : i + 1] == b" ":
                i = _string(out, i + 1)
        else:  # a capability line or a SASL challenge
            i = _string(out, i)
            if i >= 0 and out[i : i + 1] == b" ":
                i = _string(out, i + 1)
        if i < 0 or out[i : i + 2] != b"\r\n":
            return False
        i += 2
    return True


def make(knobs: bytes) -> tuple[Machine, int]:
    k = knobs[0], knobs[1]
    if k not in PROFILES:
        PROFILES[k] = SieveProfile(
            auth_methods=METHOD_SETS[(k[0] >> 3) & 7],
            starttls=("off", "on", "only", "off")[k[0] & 3],
            tls_available=True,
            client_buffer=BUFFERS[k[0] >> 6],
            max_errors=ERRORS[k[1] & 3],
            max_commands=COMMANDS[(k[1] >> 2) & 3],
        )
    return SieveSession(PROFILES[k], tls=bool(k[0] & 4)), BUFFERS[k[0] >> 6]


def check_auth(a: AuthRequest) -> None:
    common.check(a.protocol == b"sieve" and a.method in METHODS, "auth method", a.method)


SPEC = common.Spec(make, replies, check_auth)


def test_one_input(data: bytes) -> None:
    common.fuzz_machine(SPEC, data)


def seeds() -> list[bytes]:
    knobs = [b"\x00\x00\x30", b"\x09\x00\x13", b"\x21\x05\x88", b"\x1a\x00\x00"]
    return common.machine_seeds(["unit/test_sieve.py", "e2e/test_sieve_e2e.py"], knobs)
