"""Bounded hypothesis fuzz target for the SMTP session machine (fastmail/_smtp.pyx).

Invariant (h11 afl-server style): whatever bytes and events arrive, in whatever order, every
call returns valid action bits, output is whole SMTP reply lines, a closed session stays
silent, the parse buffer stays within smtp_client_buffer, and no auth request carries CR,
LF or NUL in a field that reaches a header or a backend command unescaped.
"""

from __future__ import annotations

import base64
import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fastmail._core import (
    ACT_AUTH,
    ACT_CLOSE,
    ACT_SEND,
    ACT_STARTTLS,
    ACT_TIMER,
    AuthRequest,
)
from fastmail._smtp import SmtpProfile, SmtpSession

VALID_BITS = ACT_SEND | ACT_AUTH | ACT_STARTTLS | ACT_CLOSE | ACT_TIMER
REPLIES = re.compile(rb"(?:\d{3}[ -][^\r\n]*\r\n)+")
METHODS = {b"plain", b"cram-md5", b"external", b"none", b"xoauth2", b"oauthbearer"}
PARSING = {
    "start",
    "auth_plain",
    "auth_login_username",
    "auth_login_password",
    "auth_cram_md5",
    "auth_external",
    "auth_xoauth2",
    "auth_oauthbearer",
    "sasl_error",
}

WORDS = [
    b"EHLO x\r\n",
    b"HELO \xff\r\n",
    b"AUTH PLAIN\r\n",
    b"AUTH LOGIN\r\n",
    b"AUTH CRAM-MD5\r\n",
    b"AUTH EXTERNAL\r\n",
    b"AUTH XOAUTH2\r\n",
    b"AUTH OAUTHBEARER\r\n",
    b"AUTH PLAIN AHRlc3QAc2VjcmV0\r\n",
    b"AUTH EXTERNAL Y2Fyb2w=\r\n",
    base64.b64encode(b"user=a\x01auth=Bearer t\x01\x01") + b"\r\n",
    base64.b64encode(b"n,a=x=2C,\x01auth=Bearer t\x01\x01") + b"\r\n",
    base64.b64encode(b"u " + b"0" * 32) + b"\r\n",
    b"MAIL FROM:<a@b>\r\n",
    b"RCPT TO:<c@d>\r\n",
    b"STARTTLS\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"QUIT\r\n",
    b"AQ==\r\n",
    b"\r\n",
    b"\r",
    b"\n",
    b" ",
    b"=",
    b"*",
    b"\0",
    b"x" * 70,
]

events = st.one_of(
    st.tuples(st.just("feed"), st.binary(max_size=80)),
    st.tuples(st.just("feed"), st.lists(st.sampled_from(WORDS), max_size=6).map(b"".join)),
    st.tuples(st.just("ok")),
    st.tuples(
        st.just("fail"),
        st.binary(max_size=10).filter(lambda b: b"\r" not in b and b"\n" not in b),
        st.sampled_from([None, b"", b"454 4.7.0"]),
        st.booleans(),
        st.sampled_from([None, b"eyJzIjoxfQ=="]),
    ),
    st.tuples(st.sampled_from(["error", "tls", "timeout", "timer"])),
)


def call(m: SmtpSession, ev: tuple[Any, ...]) -> int:
    kind = ev[0]
    if kind == "feed":
        return m.feed(ev[1])
    if kind == "ok":
        return m.on_auth_ok()
    if kind == "fail":
        return m.on_auth_fail(ev[1], ev[2], ev[3], sasl=ev[4])
    if kind == "error":
        return m.on_auth_error()
    if kind == "tls":
        return m.on_tls_done()
    if kind == "timeout":
        return m.on_timeout()
    return m.on_timer()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(events, max_size=30),
    st.sampled_from(
        [["plain", "login"], ["none"], ["cram-md5", "external", "xoauth2", "oauthbearer", "none"]]
    ),
    st.sampled_from(["off", "on", "only"]),
    st.booleans(),
    st.sampled_from([0, 500]),
    st.integers(min_value=16, max_value=128),
    st.integers(min_value=0, max_value=8),
)
def test_fuzz_smtp_session(
    evs: list[tuple[object, ...]],
    methods: list[str],
    starttls: str,
    tls: bool,
    delay: int,
    buffer: int,
    max_commands: int,
) -> None:
    profile = SmtpProfile(
        server_name=b"mx.test",
        auth_methods=methods,
        starttls=starttls,
        tls_available=True,
        client_buffer=buffer,
        max_errors=3,
        max_commands=max_commands,
        greeting_delay=delay,
    )
    m = SmtpSession(profile, tls=tls)
    closed = False
    for ev in [("start",), *evs]:
        act = m.start() if ev[0] == "start" else call(m, ev)
        out = m.take_output()
        assert isinstance(act, int) and act & ~VALID_BITS == 0
        assert bool(act & ACT_SEND) == bool(out)
        if closed:
            assert act == 0 and out == b""
            continue
        if out:
            assert REPLIES.fullmatch(out), out
        if m.state_name in PARSING:
            assert m.pending < buffer
        if act & ACT_AUTH:
            a = m.auth
            assert isinstance(a, AuthRequest) and a.method in METHODS and a.protocol == b"smtp"
            for field in (a.smtp_helo, a.smtp_from, a.smtp_to):
                assert not any(c in field for c in b"\r\n\0")
            if a.method in (b"none", b"external"):
                assert a.passwd == b""
        if act & ACT_TIMER:
            assert m.timer_ms == delay
        closed = bool(act & ACT_CLOSE)
