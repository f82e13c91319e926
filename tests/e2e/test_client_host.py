"""SMTP's Client-Host through a loopback DNS stub, against nginx and fastmail: what the auth
server and the log see for the PTR answers a real resolver can give."""

from __future__ import annotations

import re
import time

import pytest

from support.dns import DnsStub, reverse_name
from support.fastmail import add_user, mail_block, server

PLAIN = "AUTH PLAIN AGFsaWNlAHNlY3JldA=="  # alice / secret


@pytest.fixture
def dns_stub(loop_thread):
    """`dns_stub(records)` -> a running DnsStub on the test loop thread."""
    made: list[DnsStub] = []

    def start(records: dict) -> DnsStub:
        stub = DnsStub(records)
        loop_thread.run(stub.__aenter__())
        made.append(stub)
        return stub

    yield start
    for stub in made:
        loop_thread.run(stub.__aexit__())


@pytest.mark.parametrize(
    ("record", "logged"),
    [
        (("192.0.2.7", 60, "A"), "unexpected RR type 1 in DNS response"),
        (("alias.example.net", 60, "CNAME"), None),
    ],
    ids=["A", "CNAME"],
)
def test_ptr_answer_of_another_type_is_tempunavail_at_the_timeout(
    proxy, authd, fake_backend, free_port, line_client, dns_stub, record, logged
):
    """A PTR question answered with only an A or CNAME record: the resolver logs it and
    waits, so the client is greeted after resolver_timeout with Client-Host [TEMPUNAVAIL]."""
    stub = dns_stub({(reverse_name("127.0.0.1"), "PTR"): [record]})
    add_user(authd, "alice", "secret", {"smtp": ("127.0.0.1", fake_backend.port("smtp"))})
    port = free_port()
    extra = f"resolver 127.0.0.1:{stub.port} ipv6=off; resolver_timeout 500ms;"
    p = proxy(mail_block(authd, server(port, "smtp", extra)), greetings=[(port, b"220 ")])
    c = line_client(port)
    t0 = time.monotonic()
    assert c.read_line().startswith(b"220 ")
    assert time.monotonic() - t0 >= 0.45
    c.send_line("EHLO client.example")
    c.read_until(re.compile(rb"250 [^\n]*\n"))
    c.send_line(PLAIN)
    assert c.read_line().startswith(b"235 ")
    req = authd.wait_for_requests(1)[-1]
    assert req["Client-Host"] == "[TEMPUNAVAIL]"
    log = p.wait_log("client logged in")
    assert (
        "127.0.0.1 could not be resolved (110: Operation timed out) "
        "while in resolving client address" in log
    )
    # the resolver's own lines: level error, no connection number
    resolver_lines = re.findall(r"\[error\] \d+#\d+: ([^*].*)", log)
    want = [logged] if logged else []
    assert resolver_lines[: len(want) + 1] == [*want, "no PTR type in DNS response"]
