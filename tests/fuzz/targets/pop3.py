"""Fuzz target: the POP3 client machine (fastmail/_pop3.pyx) through the Machine API.

Invariants, on every input (common.py's driver runs the script one read per segment, one
byte per read, and cut at every offset):
- no exception escapes; the action bits are known ones, ACT_SEND exactly when there is output;
- every reply is whole CRLF lines of a known form (+OK / -ERR lines, CAPA's list, challenges);
- the bytes held stay within pop3_client_buffer while the machine parses;
- while auth_http runs the machine says nothing; on_auth_ok asks for nothing;
- every chunking gives the same replies, actions, auth requests and relay bytes;
- a closed session says nothing more, whatever comes;
- an AuthRequest's auth_http request (C template, equal to the Python reference) has whole
  header lines only (user and password may hold any byte: nginx escapes them, %00).
"""

from __future__ import annotations

import re

from fastmail._core import AuthRequest, Machine
from fastmail._pop3 import Pop3Profile, Pop3Session

from . import common

METHOD_SETS = (
    ["plain"],
    ["plain", "apop", "cram-md5"],
    ["apop", "external"],
    ["xoauth2", "oauthbearer"],
    ["plain", "apop", "cram-md5", "external", "xoauth2", "oauthbearer"],
    ["apop"],
    ["external", "cram-md5"],
    ["plain", "oauthbearer"],
)
BUFFERS = (128, 16, 40, 4096)
ERRORS = (5, 0, 1, 3)
COMMANDS = (1000, 0, 3, 10)
PROFILES: dict[tuple[int, int], Pop3Profile] = {}
SALT = b"<1896.697170952@mail.example.com>\r\n"

# +OK/-ERR status lines, CAPA's and AUTH's list lines and their ".", SASL challenges
LINE = re.compile(rb"(\+OK[^\r\n]*|-ERR[^\r\n]*|[A-Z0-9][ -~]*|\.|\+ [A-Za-z0-9+/=]*)\r\n")
METHODS = {
    b"plain",
    b"login",
    b"user",
    b"apop",
    b"cram-md5",
    b"external",
    b"xoauth2",
    b"oauthbearer",
}


def make(knobs: bytes) -> tuple[Machine, int]:
    k = knobs[0], knobs[1]
    if k not in PROFILES:
        PROFILES[k] = Pop3Profile(
            auth_methods=METHOD_SETS[(k[0] >> 3) & 7],
            starttls=("off", "on", "only", "off")[k[0] & 3],
            tls_available=True,
            client_buffer=BUFFERS[k[0] >> 6],
            max_errors=ERRORS[k[1] & 3],
            max_commands=COMMANDS[(k[1] >> 2) & 3],
            server_name=b"mail.example.com",
        )
    prof = PROFILES[k]
    salt = SALT if prof.needs_salt else None
    return Pop3Session(prof, tls=bool(k[0] & 4), salt=salt), BUFFERS[k[0] >> 6]


def replies(out: bytes) -> bool:
    return LINE.sub(b"", out) == b""


def check_auth(a: AuthRequest) -> None:
    common.check(a.protocol == b"pop3" and a.method in METHODS, "auth method", a.method)


SPEC = common.Spec(make, replies, check_auth)


def test_one_input(data: bytes) -> None:
    common.fuzz_machine(SPEC, data)


def seeds() -> list[bytes]:
    knobs = [b"\x00\x00\x30", b"\x09\x00\x13", b"\x21\x05\x88", b"\x1a\x00\x00"]
    return common.machine_seeds(["unit/test_pop3.py", "e2e/test_pop3_e2e.py"], knobs)
