"""Fuzz target: the IMAP client machine (fastmail/_imap.pyx) through the Machine API.

Invariants, on every input (common.py's driver runs the script one read per segment, one
byte per read, and cut at every offset):
- no exception escapes; the action bits are known ones, ACT_SEND exactly when there is output;
- every reply is a whole CRLF line of a known form (LINE);
- the bytes held stay within imap_client_buffer while the machine parses;
- while auth_http runs the machine says nothing; on_auth_ok asks for nothing;
- every chunking gives the same replies, actions, auth requests and relay bytes;
- a closed session says nothing more, whatever comes;
- an AuthRequest's auth_http request (C template, equal to the Python reference) has whole
  header lines only (user and password may hold any byte: nginx escapes them, %00).
"""

from __future__ import annotations

import re

from fastmail._core import AuthRequest, Machine, has_ctl
from fastmail._imap import ImapProfile, ImapSession

from . import common

METHOD_SETS = (
    ["plain"],
    ["plain", "login", "cram-md5"],
    ["login", "external"],
    ["xoauth2", "oauthbearer"],
    ["plain", "login", "cram-md5", "external", "xoauth2", "oauthbearer"],
    ["cram-md5"],
    ["external"],
    ["plain", "oauthbearer"],
)
BUFFERS = (4096, 64, 24, 256)
ERRORS = (5, 0, 1, 3)
COMMANDS = (1000, 0, 3, 10)
PROFILES: dict[tuple[int, int], ImapProfile] = {}

TAG = rb"[A-Za-z0-9._-]{0,32}"  # nginx takes an empty tag (" NOOP")
LINE = re.compile(
    rb"(\* (OK IMAP4 ready|BYE|ID NIL|CAPABILITY [ -~]+|BAD invalid command"
    rb"|BAD internal server error)"
    rb"|\+ [A-Za-z0-9+/=]*|\+ OK"
    rb"|" + TAG + rb" (OK completed|OK ID completed|BAD invalid command|NO [^\r\n]*)"
    rb"|BAD invalid command"  # a bad SASL response: nginx's reply has no tag
    rb")\r\n"
)
METHODS = {b"plain", b"login", b"cram-md5", b"external", b"xoauth2", b"oauthbearer"}


def make(knobs: bytes) -> tuple[Machine, int]:
    k = knobs[0], knobs[1]
    if k not in PROFILES:
        PROFILES[k] = ImapProfile(
            auth_methods=METHOD_SETS[(k[0] >> 3) & 7],
            starttls=("off", "on", "only", "off")[k[0] & 3],
            tls_available=True,
            client_buffer=BUFFERS[k[0] >> 6],
            max_errors=ERRORS[k[1] & 3],
            max_commands=COMMANDS[(k[1] >> 2) & 3],
            server_name=b"mail.example.com",
        )
    return ImapSession(PROFILES[k], tls=bool(k[0] & 4)), BUFFERS[k[0] >> 6]


def replies(out: bytes) -> bool:
    return LINE.sub(b"", out) == b""


def check_auth(a: AuthRequest) -> None:
    common.check(a.protocol == b"imap" and a.method in METHODS, "auth method", a.method)
    common.check(a.tag.endswith(b" ") and not has_ctl(a.tag), "tag", a.tag)


SPEC = common.Spec(make, replies, check_auth)


def test_one_input(data: bytes) -> None:
    common.fuzz_machine(SPEC, data)


def seeds() -> list[bytes]:
    knobs = [b"\x00\x00\x30", b"\x21\x00\x13", b"\xa0\x05\x88", b"\x3a\x00\x00"]
    return common.machine_seeds(["unit/test_imap.py", "e2e/test_imap_e2e.py"], knobs)
