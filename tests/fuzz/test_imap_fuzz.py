"""Fuzz target for the IMAP client session machine (hypothesis, bounded for CI).

Invariant (h11's afl-server rule): for any bytes in any chunking, with any auth
outcome, the machine never raises, its output is bounded by its input, every
reply is a whole CRLF-terminated line of a known form, and a session that
closes says nothing afterwards.
"""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from fastmail._core import ACT_AUTH, ACT_CLOSE, ACT_STARTTLS
from fastmail._imap import ImapProfile, ImapSession

LINE = re.compile(
    rb"(\* (OK IMAP4 ready|BYE|ID NIL|CAPABILITY [ -~]+|BAD invalid command|BAD internal server error)"
    rb"|\+ [A-Za-z0-9+/=]*|\+ OK"
    rb"|[A-Za-z0-9._-]{0,32} (OK completed|OK ID completed|BAD invalid command|NO nope)"
    rb"|BAD invalid command)\r\n"
)

TOKENS = st.sampled_from(
    [
        b"a1 ",
        b" ",
        b"\r\n",
        b"\n",
        b"\r",
        b"LOGIN ",
        b"AUTHENTICATE ",
        b"PLAIN ",
        b"LOGIN",
        b"CRAM-MD5",
        b"EXTERNAL ",
        b"XOAUTH2 ",
        b"CAPABILITY",
        b"NOOP",
        b"STARTTLS",
        b"ID (",
        b"LOGOUT",
        b'"',
        b"\\",
        b"{4}",
        b"{3+}",
        b"{0}",
        b"{99999999999999999999}",
        b"+}",
        b"=",
        b"AHVzZXIAcGFzcw==",
        b"dXNlcg==",
        b"*",
        b"\x00",
        b"\xff",
        b"x" * 70,
    ]
)
DATA = st.one_of(
    st.binary(max_size=400),
    st.lists(TOKENS, max_size=40).map(b"".join),
)
PROFILE = st.builds(
    ImapProfile,
    auth_methods=st.sets(
        st.sampled_from(["plain", "login", "cram-md5", "external", "xoauth2", "oauthbearer"])
    ).map(sorted),
    starttls=st.sampled_from(["off", "on", "only"]),
    tls_available=st.just(True),
    client_buffer=st.integers(min_value=8, max_value=200),
    max_errors=st.integers(min_value=0, max_value=6),
    max_commands=st.integers(min_value=0, max_value=20),
)


@settings(max_examples=300, deadline=None)
@given(
    PROFILE,
    DATA,
    st.lists(st.integers(min_value=1, max_value=64), max_size=10),
    st.lists(st.sampled_from(["retry", "fail", "error", "ok", "sasl"]), max_size=6),
)
def test_fuzz_session(
    profile: ImapProfile, data: bytes, sizes: list[int], results: list[str]
) -> None:
    m = ImapSession(profile)
    out = bytearray(m.take_output() if m.start() else b"")
    closed = False
    pos = 0
    chunks = []
    for n in sizes or [len(data) or 1]:
        chunks.append(data[pos : pos + n])
        pos += n
    chunks.append(data[pos:])
    for chunk in chunks:
        acts = m.feed(chunk)
        while True:
            out += m.take_output()
            if acts & ACT_CLOSE:
                closed = True
            if closed:
                break
            if acts & ACT_STARTTLS:
                acts = m.on_tls_done()
                continue
            if acts & ACT_AUTH and m.state == 16:
                what = results.pop(0) if results else "retry"
                if what == "ok":
                    m.on_auth_ok()
                    acts = 0
                elif what == "error":
                    acts = m.on_auth_error()
                elif what == "sasl":
                    acts = m.on_auth_fail(b"nope", None, True, b"e30=")
                else:
                    acts = m.on_auth_fail(b"nope", None, what == "retry")
                continue
            break
        if closed:
            assert m.feed(b"a NOOP\r\n") == 0
            assert m.take_output() == b""
            break
    # every reply is a whole line of a known form, and output is bounded by input
    assert LINE.sub(b"", bytes(out)) == b"", bytes(out)
    assert len(out) <= 20 + (len(data) + 1) * 120
    assert len(m.take_input()) <= len(data)
