"""Bounded fuzz target for the POP3 session machine: any bytes, any chunking, any auth result
give no exception, only CRLF-terminated replies, bounded buffering and nothing after a close."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastmail._core import ACT_AUTH, ACT_CLOSE, ACT_SEND
from fastmail._pop3 import Pop3Profile, Pop3Session

PROFILES = [
    Pop3Profile(),
    Pop3Profile(auth_methods=["plain", "apop", "cram-md5", "external"], max_errors=3),
    Pop3Profile(auth_methods=["xoauth2", "oauthbearer"], starttls="on", max_commands=5),
    Pop3Profile(starttls="only", client_buffer=16, max_errors=100),
]
WORDS = [
    b"USER ",
    b"PASS ",
    b"APOP ",
    b"AUTH ",
    b"CAPA",
    b"NOOP",
    b"QUIT",
    b"STLS",
    b"PLAIN",
    b"LOGIN",
    b"CRAM-MD5",
    b"EXTERNAL",
    b"XOAUTH2",
    b"OAUTHBEARER",
    b"AHVzZXIAcGFzcw==",
    b"dXNlcg==",
    b"AQ==",
    b"*",
    b" ",
    b"\r",
    b"\n",
    b"\r\n",
    b"\x00",
    b"=",
    b"\xff",
]
chunk = st.one_of(
    st.binary(max_size=40), st.lists(st.sampled_from(WORDS), max_size=12).map(b"".join)
)
event = st.sampled_from(["ok", "fail", "retry", "sasl", "error", "tls", "timeout", "none"])


def check(m: Pop3Session, acts: int, closed: bool) -> bool:
    out = m.take_output()
    assert bool(acts & ACT_SEND) == bool(out)
    assert not out or out.endswith(b"\r\n")
    assert not (closed and out), "output after close"
    if acts & ACT_AUTH:
        a = m.auth
        assert a.protocol == b"pop3" and not any(c in a.user + a.passwd for c in b"\r\n\0")
    return closed or bool(acts & ACT_CLOSE)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(range(len(PROFILES))),
    st.booleans(),
    st.lists(st.tuples(chunk, event), max_size=25),
)
def test_machine_never_raises(profile: int, tls: bool, steps: list[tuple[bytes, str]]) -> None:
    pf = PROFILES[profile]
    m = Pop3Session(pf, tls=tls)
    closed = check(m, m.start(), False)
    for data, ev in steps:
        closed = check(m, m.feed(data), closed)
        assert m.stage != "input" or m.buffered < pf.client_buffer
        stage = m.stage
        if stage == "auth" and ev == "ok":
            acts = m.on_auth_ok()
        elif stage == "auth" and ev in ("fail", "retry", "sasl"):
            acts = m.on_auth_fail(b"No", None, ev != "fail", b"e30=" if ev == "sasl" else None)
        elif ev == "error":
            acts = m.on_auth_error()
        elif ev == "tls":
            acts = m.on_tls_done()
        elif ev == "timeout":
            acts = m.on_timeout()
        else:
            continue
        closed = check(m, acts, closed)
        if ev in ("error", "timeout") and stage not in ("closed", "done"):
            assert acts & ACT_CLOSE and m.stage == "closed"
    assert closed == (m.stage == "closed")
