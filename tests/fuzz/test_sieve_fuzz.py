"""Fuzz target for the ManageSieve client session machine (hypothesis, bounded for CI).

Invariant (h11's afl-server rule): for any bytes in any chunking, with any auth outcome, the
machine never raises, its output is bounded by its input, every reply is a well-formed
RFC 5804 line (a capability or challenge line of strings, or OK/NO/BYE with an optional
response code and text, strings quoted or literal), and a session that closes says nothing
afterwards.
"""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from fastmail._core import ACT_AUTH, ACT_CLOSE, ACT_STARTTLS
from fastmail._sieve import SieveProfile, SieveSession

QUOTED = re.compile(rb'"(?:[^"\\\r\n\0]|\\["\\])*"')
LITERAL = re.compile(rb"\{(\d+)\}\r\n")
WORD = re.compile(rb"OK|NO|BYE")
CODE = re.compile(rb"[A-Z][A-Z-]*")


def _string(out: bytes, i: int) -> int:
    m = QUOTED.match(out, i)
    if m:
        return m.end()
    m = LITERAL.match(out, i)
    assert m, out[i : i + 60]
    return m.end() + int(m.group(1))


def check_replies(out: bytes) -> None:
    """Walks the output as RFC 5804 server lines; fails at the first byte that is not."""
    i = 0
    while i < len(out):
        m = WORD.match(out, i)
        if m:
            i = m.end()
            if out[i : i + 2] == b" (":
                c = CODE.match(out, i + 2)
                assert c, out[i : i + 60]
                i = c.end()
                if out[i : i + 1] == b" ":
                    i = _string(out, i + 1)
                assert out[i : i + 1] == b")", out[i : i + 60]
                i += 1
            if out[i : i + 1] == b" ":
                i = _string(out, i + 1)
        else:  # a capability line or a SASL challenge
            i = _string(out, i)
            if out[i : i + 1] == b" ":
                i = _string(out, i + 1)
        assert out[i : i + 2] == b"\r\n", out[i : i + 60]
        i += 2


TOKENS = st.sampled_from(
    [
        b"AUTHENTICATE ",
        b'"PLAIN"',
        b'"LOGIN"',
        b'"EXTERNAL" ',
        b'"XOAUTH2" ',
        b"OAUTHBEARER",
        b"CAPABILITY",
        b"NOOP ",
        b"STARTTLS",
        b"LOGOUT",
        b'PUTSCRIPT "s" ',
        b"LISTSCRIPTS",
        b" ",
        b"\r\n",
        b"\n",
        b"\r",
        b'"',
        b"\\",
        b"*",
        b"(",
        b"{4+}",
        b"{3}",
        b"{0+}",
        b"{99999999999999999999+}",
        b"+}",
        b"AHVzZXIAcGFzcw==",
        b'"dXNlcg=="',
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
    SieveProfile,
    capabilities=st.just(["fileinto", "vacation", "enotify"]),
    auth_methods=st.sets(
        st.sampled_from(["plain", "login", "external", "xoauth2", "oauthbearer"])
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
    profile: SieveProfile, data: bytes, sizes: list[int], results: list[str]
) -> None:
    m = SieveSession(profile)
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
                    acts = m.on_auth_fail(b'no "pe"', None, True, b"e30=")
                else:
                    acts = m.on_auth_fail(b'no "pe"', None, what == "retry")
                continue
            break
        if closed:
            assert m.feed(b"NOOP\r\n") == 0
            assert m.take_output() == b""
            break
    check_replies(bytes(out))
    assert len(out) <= 400 + (len(data) + 1) * 60
    assert len(m.take_input()) <= len(data)
