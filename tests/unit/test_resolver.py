"""Resolver: nginx's Client-Host lookup and Auth-Server names against a loopback DNS stub."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from fastmail.conf.model import LogTarget
from fastmail.log import ERROR, ErrorLog
from fastmail.resolver import (
    ACTION_ADDRESS,
    ACTION_HOSTNAME,
    TEMPUNAVAIL,
    UNAVAILABLE,
    ClientHost,
    Resolver,
    client_host_off,
)
from support.dns import NXDOMAIN, REFUSED, SERVFAIL, DnsStub, reverse_name

PTR1 = (reverse_name("127.0.0.1"), "PTR")
GOOD = {PTR1: [("Mail.Example.NET.", 60)], ("mail.example.net", "A"): [("127.0.0.1", 60)]}


def run(records: dict, test: Callable[[Resolver, DnsStub], Awaitable[None]], **kw: object) -> None:
    stub_kw = {k: kw.pop(k) for k in ("rcodes", "delays", "drop") if k in kw}

    async def main() -> None:
        async with DnsStub(records, **stub_kw) as dns:  # type: ignore[arg-type]
            res = Resolver(asyncio.get_running_loop(), [("127.0.0.1", dns.port)], **kw)  # type: ignore[arg-type]
            try:
                await test(res, dns)
            finally:
                res.close()

    asyncio.run(main())


def test_ptr_confirmed_by_forward_lookup_lower_cased() -> None:
    async def t(res: Resolver, dns: DnsStub) -> None:
        r = await res.client_host_async("127.0.0.1")
        assert r == ClientHost(b"mail.example.net")
        assert dns.queries == [
            (PTR1[0], "PTR"),
            ("mail.example.net", "A"),
            ("mail.example.net", "AAAA"),
        ]

    run(GOOD, t)


def test_ipv6_off_skips_aaaa() -> None:
    async def t(res: Resolver, dns: DnsStub) -> None:
        assert (await res.client_host_async("127.0.0.1")).host == b"mail.example.net"
        assert dns.count("mail.example.net", "AAAA") == 0

    run(GOOD, t, ipv6=False)


def test_forward_mismatch_is_unavailable_without_log() -> None:
    records = {PTR1: [("mail.example.net", 60)], ("mail.example.net", "A"): [("192.0.2.9", 60)]}

    async def t(res: Resolver, dns: DnsStub) -> None:
        assert await res.client_host_async("127.0.0.1") == ClientHost(UNAVAILABLE)

    run(records, t)


def test_ptr_nxdomain_and_servfail_and_refused() -> None:
    async def t(res: Resolver, dns: DnsStub) -> None:
        r = await res.client_host_async("127.0.0.1")
        assert r == ClientHost(
            UNAVAILABLE, "127.0.0.1 could not be resolved (3: Host not found)", ACTION_ADDRESS
        )
        r = await res.client_host_async("127.0.0.2")
        assert (r.host, r.log_message) == (
            TEMPUNAVAIL,
            "127.0.0.2 could not be resolved (2: Server failure)",
        )
        r = await res.client_host_async("127.0.0.3")
        assert (r.host, r.log_message) == (
            TEMPUNAVAIL,
            "127.0.0.3 could not be resolved (5: Operation refused)",
        )

    rcodes = {reverse_name("127.0.0.2"): SERVFAIL, reverse_name("127.0.0.3"): REFUSED}
    run({}, t, rcodes=rcodes)


def test_ptr_without_records_is_host_not_found() -> None:
    records = {PTR1: [], (PTR1[0], "A"): [("1.2.3.4", 5)]}  # name exists, no PTR

    async def t(res: Resolver, dns: DnsStub) -> None:
        r = await res.client_host_async("127.0.0.1")
        assert (r.host, r.log_message) == (
            UNAVAILABLE,
            "127.0.0.1 could not be resolved (3: Host not found)",
        )

    run(records, t)


@pytest.mark.parametrize(
    ("record", "logged"),
    [
        (("192.0.2.7", 60, "A"), ["unexpected RR type 1 in DNS response"]),
        (("alias.example.net", 60, "CNAME"), []),
    ],
)
def test_ptr_answer_of_another_type_waits_for_the_timeout(
    tmp_path: Path, record: tuple[str, int, str], logged: list[str]
) -> None:
    """nginx ignores a PTR answer without a PTR record: it logs it, waits for
    resolver_timeout and gives [TEMPUNAVAIL] (not [UNAVAILABLE])."""
    log_path = tmp_path / "error.log"
    log = ErrorLog([LogTarget(kind="file", path=str(log_path), level=ERROR)])

    async def t(res: Resolver, dns: DnsStub) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        r = await res.client_host_async("127.0.0.1")
        assert loop.time() - t0 >= 0.45
        assert r == ClientHost(
            TEMPUNAVAIL,
            "127.0.0.1 could not be resolved (110: Operation timed out)",
            ACTION_ADDRESS,
        )
        assert dns.count(*PTR1) == 1

    try:
        run({PTR1: [record]}, t, timeout_s=0.5, log=log)
    finally:
        log.close()
    lines = [line.split("] ", 1)[1] for line in log_path.read_text().splitlines()]
    assert [line.split(": ", 1)[1] for line in lines] == [*logged, "no PTR type in DNS response"]
    assert all("[error]" in line for line in log_path.read_text().splitlines())


def test_slow_answer_after_quick_ones_is_taken_within_resolver_timeout() -> None:
    """c-ares shortens its tries to 5x the server's average latency (at least 250 ms) once
    it has seen three answers: a 0.4 s answer then must still count within a 2 s
    resolver_timeout (with few tries it was "(110: Operation timed out)" at ~0.25 s)."""
    records = dict(GOOD)
    for i in range(3):
        records[(f"h{i}.example", "A")] = [("192.0.2.1", 60)]

    async def t(res: Resolver, dns: DnsStub) -> None:
        for i in range(3):
            assert (await res.resolve_name_async(b"h%d.example" % i))[0] == ["192.0.2.1"]
        r = await res.client_host_async("127.0.0.1")
        assert r == ClientHost(b"mail.example.net")

    run(records, t, delays={PTR1[0]: 0.4}, timeout_s=2.0, ipv6=False)


def test_forward_nxdomain_and_servfail() -> None:
    records = {
        PTR1: [("gone.example", 60)],
        (reverse_name("127.0.0.2"), "PTR"): [("broken.example", 60)],
    }

    async def t(res: Resolver, dns: DnsStub) -> None:
        r = await res.client_host_async("127.0.0.1")
        assert r == ClientHost(
            UNAVAILABLE, '"gone.example" could not be resolved (3: Host not found)', ACTION_HOSTNAME
        )
        r = await res.client_host_async("127.0.0.2")
        assert (r.host, r.log_message) == (
            TEMPUNAVAIL,
            '"broken.example" could not be resolved (2: Server failure)',
        )

    run(records, t, rcodes={"broken.example": SERVFAIL})


def test_timeout_is_tempunavail_after_resolver_timeout() -> None:
    async def t(res: Resolver, dns: DnsStub) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        r = await res.client_host_async("127.0.0.1")
        took = loop.time() - t0
        assert (r.host, r.log_message) == (
            TEMPUNAVAIL,
            "127.0.0.1 could not be resolved (110: Operation timed out)",
        )
        assert 0.45 <= took < 1.5

    run(GOOD, t, drop={PTR1[0]}, timeout_s=0.5)


def test_cache_hit_sends_no_second_query() -> None:
    async def t(res: Resolver, dns: DnsStub) -> None:
        for _ in range(3):
            assert (await res.client_host_async("127.0.0.1")).host == b"mail.example.net"
        assert dns.count(*PTR1) == 1 and dns.count("mail.example.net", "A") == 1
        assert dns.count("mail.example.net", "AAAA") == 1  # the empty answer is cached too

    run(GOOD, t)


def test_concurrent_lookups_share_one_query() -> None:
    async def t(res: Resolver, dns: DnsStub) -> None:
        rs = await asyncio.gather(*(res.client_host_async("127.0.0.1") for _ in range(5)))
        assert {r.host for r in rs} == {b"mail.example.net"}
        assert dns.count(*PTR1) == 1

    run(GOOD, t, delays={PTR1[0]: 0.1})


def test_ttl_expiry_queries_again() -> None:
    records = {PTR1: [("mail.example.net", 1)], ("mail.example.net", "A"): [("127.0.0.1", 1)]}

    async def t(res: Resolver, dns: DnsStub) -> None:
        await res.client_host_async("127.0.0.1")
        await res.client_host_async("127.0.0.1")
        assert dns.count(*PTR1) == 1
        await asyncio.sleep(1.2)
        assert (await res.client_host_async("127.0.0.1")).host == b"mail.example.net"
        assert dns.count(*PTR1) == 2

    run(records, t, ipv6=False)


def test_valid_overrides_ttl() -> None:
    async def t(res: Resolver, dns: DnsStub) -> None:
        await res.client_host_async("127.0.0.1")
        await asyncio.sleep(0.4)
        await res.client_host_async("127.0.0.1")
        assert dns.count(*PTR1) == 1

    records = {PTR1: [("mail.example.net", 0)], ("mail.example.net", "A"): [("127.0.0.1", 0)]}
    run(records, t, valid_s=30.0, ipv6=False)


def test_cache_is_bounded() -> None:
    records = {(reverse_name(f"127.0.0.{i}"), "PTR"): [(f"h{i}.example", 60)] for i in range(1, 6)}

    async def t(res: Resolver, dns: DnsStub) -> None:
        for i in range(1, 6):
            await res.client_host_async(f"127.0.0.{i}")
        keys = [k[1] for k in res._cache]
        assert keys == [reverse_name(f"127.0.0.{i}") for i in (3, 4, 5)]
        # evicted: still answered right (by a query, or by c-ares' own TTL-bound cache)
        r = await res.client_host_async("127.0.0.1")
        assert r.log_message == '"h1.example" could not be resolved (3: Host not found)'

    run(records, t, max_entries=3, ipv6=False)


def test_injection_through_ptr_is_rejected() -> None:
    records = {
        PTR1: [(b"evil\r\nAuth-Status: OK", 60)],
        (reverse_name("127.0.0.2"), "PTR"): [("x_y.example.net", 60)],
    }

    async def t(res: Resolver, dns: DnsStub) -> None:
        r = await res.client_host_async("127.0.0.1")
        assert r.host == TEMPUNAVAIL and r.log_action == ACTION_ADDRESS
        assert r.log_message is not None and "\r" not in r.log_message and "\n" not in r.log_message
        assert r.log_message.startswith("127.0.0.1 resolved to invalid host name ")
        r = await res.client_host_async("127.0.0.2")
        assert (r.host, r.log_message) == (
            TEMPUNAVAIL,
            '127.0.0.2 resolved to invalid host name "x_y.example.net"',
        )
        assert not any(q[1] == "A" for q in dns.queries)

    run(records, t)


def test_ipv6_client_and_unix_client() -> None:
    records = {
        (reverse_name("::1"), "PTR"): [("six.example", 60)],
        ("six.example", "AAAA"): [("0:0::1", 60)],
    }

    async def t(res: Resolver, dns: DnsStub) -> None:
        assert (await res.client_host_async("::1")).host == b"six.example"
        assert (await res.client_host_async(None)).host == TEMPUNAVAIL
        assert dns.queries[0] == (reverse_name("::1"), "PTR")
        assert len(dns.queries) == 3

    run(records, t)


def test_resolve_name_for_auth_server() -> None:
    records = {
        ("backend.example", "A"): [("192.0.2.5", 60)],
        ("backend.example", "AAAA"): [("2001:db8::5", 60)],
    }

    async def t(res: Resolver, dns: DnsStub) -> None:
        addrs, err = await res.resolve_name_async(b"Backend.Example")
        assert (sorted(addrs), err) == (["192.0.2.5", "2001:db8::5"], None)
        assert await res.resolve_name_async(b"nope.example") == ([], "3: Host not found")

    run(records, t)


def test_cancel_drops_the_answer() -> None:
    async def t(res: Resolver, dns: DnsStub) -> None:
        got: list[ClientHost] = []
        lookup = res.client_host("127.0.0.1", got.append)
        lookup.cancel()
        await asyncio.sleep(0.3)
        assert got == []

    run(GOOD, t, delays={PTR1[0]: 0.1})


def test_resolver_off_means_unavailable_and_no_dns() -> None:
    got: list[ClientHost] = []
    client_host_off(got.append)
    assert got == [ClientHost(UNAVAILABLE)]


def test_nxdomain_rcode_from_stub() -> None:
    async def t(res: Resolver, dns: DnsStub) -> None:
        r = await res.client_host_async("127.0.0.1")
        assert r.host == UNAVAILABLE

    run(GOOD, t, rcodes={PTR1[0]: NXDOMAIN})
