"""Nothing lost: overlong input does not grow the worker. Bursts of clients at once, each
streaming 1 MiB with no line end (a plain IMAP line, an IMAP literal, POP3 USER, SMTP AUTH):
every one is refused, and the worker's peak RSS stays within 10 MiB of its baseline, as
nginx's does (it reads only into its fixed client buffer). Counts: support/load.py.
"""

from __future__ import annotations

import time

import pytest

from fastmail.testing.authd import Reply
from support.fastmail import add_user, mail_block, server
from support.load import burst, peak_rss, reset_peak, rss, scale

pytestmark = pytest.mark.soak

MIB = 1 << 20
# the first bytes of each kind of overlong input; 1 MiB of b"x" follows with no line end
KINDS = {
    "imap-line": ("imap", b"a LOGIN "),
    "imap-literal": ("imap", b"a LOGIN {1048576}\r\n"),
    "pop3-user": ("pop3", b"USER "),
    "smtp-auth": ("smtp", b"EHLO x\r\nAUTH PLAIN "),
    # pipelined after a login that auth_http takes its time to answer: nginx leaves such
    # bytes in the kernel; a proxy that reads on must keep no more than its buffer
    "imap-held": ("imap", b"a LOGIN held secret\r\n"),
    "pop3-held": ("pop3", b"USER held\r\nPASS secret\r\n"),
    "smtp-held": ("smtp", b"EHLO x\r\nAUTH PLAIN AGhlbGQAc2VjcmV0\r\n"),
}
GREETING = {"imap": b"* OK", "pop3": b"+OK", "smtp": b"220 "}


def test_overlong_bursts_keep_memory_bounded(proxy, authd, free_port):
    add_user(authd, "alice", "secret", {})
    authd.add_rule(
        lambda q: Reply(Reply.fail("Invalid login").headers, delay=1) if q.user == "held" else None
    )
    ports = {kind: free_port() for kind in KINDS}
    servers = "".join(server(ports[k], proto) for k, (proto, _) in KINDS.items())
    p = proxy(
        mail_block(authd, servers),
        greetings=[(ports[k], GREETING[proto]) for k, (proto, _) in KINDS.items()],
    )
    pid = p.pid
    ignore = [authd.port]
    base_fds = p.baseline(ignore)
    # warm up: every kind, so that lazily made buffers, code paths and the auth_http
    # keep-alive pool (64 connections) are counted in the baseline, not as growth
    for kind, (_, prefix) in KINDS.items():
        burst(ports[kind], 100, prefix, 64 * 1024, deadline=10)
    time.sleep(0.3)
    base = rss(pid)
    reset_peak(pid)
    clients = scale(500, 150)
    for _ in range(3):
        for kind, (_, prefix) in KINDS.items():
            out = burst(ports[kind], clients, prefix, MIB, deadline=30)
            refused = sum(out.closed)
            assert refused == clients, f"{kind}: {clients - refused} of {clients} not refused"
    peak = peak_rss(pid)
    p.assert_no_leaks(base_fds, ignore, timeout=10)
    time.sleep(0.3)
    after = rss(pid)
    print(
        f"{p.kind}: RSS baseline {base / MIB:.1f} MiB, peak {peak / MIB:.1f}, after {after / MIB:.1f}"
    )
    assert peak <= base + 10 * MIB, f"peak RSS {peak / MIB:.1f} MiB, baseline {base / MIB:.1f}"
    assert after <= base + 2 * MIB, f"RSS after {after / MIB:.1f} MiB, baseline {base / MIB:.1f}"
