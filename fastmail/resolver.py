"""DNS for the mail proxy: SMTP's Client-Host and Auth-Server host names (beyond nginx).

Owns one pycares Channel per `resolver` directive, driven on the worker's event loop with no
thread (sock_state_cb -> loop.add_reader/add_writer, a timer for c-ares' retransmits), and a
bounded LRU cache honouring TTL or `valid=`. Client-Host is nginx's: PTR, name check
(CVE-2026-28753), forward confirmation, `[UNAVAILABLE]`/`[TEMPUNAVAIL]` on failure.
Must not touch sessions or sockets other than the channel's; with `resolver off` no Resolver
exists and `client_host(None, ...)` answers `[UNAVAILABLE]` without any DNS.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import math
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import pycares
import pycares.errno as aerr

from fastmail.log import ERROR, ErrorLog

UNAVAILABLE = b"[UNAVAILABLE]"
TEMPUNAVAIL = b"[TEMPUNAVAIL]"
ACTION_ADDRESS = "in resolving client address"
ACTION_HOSTNAME = "in resolving client hostname"
# nginx re-sends a query every 5 s (to the next server) until resolver_timeout.
RETRANSMIT_S = 5.0
# c-ares (>= 1.32) times a try out after 5x the server's average latency once it has seen
# three answers, but never sooner than this (ares_metrics.c MIN_TIMEOUT_MS); each timed-out
# try goes out on a new socket, so a late answer to it is dropped.
ARES_MIN_TRY_S = 0.25
# A forward answer with no records carries no TTL we can see; keep it this long.
NODATA_TTL_S = 30.0
_BAD = pycares.ARES_SOCKET_BAD

# nginx's wording for its resolver's error codes (ngx_resolver_strerror).
_NOT_FOUND = "3: Host not found"
_TIMEOUT = "110: Operation timed out"
_ERRORS = {
    aerr.ARES_ENOTFOUND: _NOT_FOUND,
    aerr.ARES_ENODATA: _NOT_FOUND,
    aerr.ARES_ESERVFAIL: "2: Server failure",
    aerr.ARES_EREFUSED: "5: Operation refused",
    aerr.ARES_EFORMERR: "1: Format error",
    aerr.ARES_ENOTIMP: "4: Unimplemented",
    aerr.ARES_ETIMEOUT: _TIMEOUT,
}
_VALID_NAME = re.compile(r"[A-Za-z0-9.-]+\Z")


class EventLoop(Protocol):
    """What the resolver needs of a loop: fastmail's own (_poll.Loop) in a worker, an
    asyncio loop in tests and tools."""

    def add_reader(self, fd: int, callback: Callable[..., object], *args: Any) -> object: ...
    def remove_reader(self, fd: int) -> bool: ...
    def add_writer(self, fd: int, callback: Callable[..., object], *args: Any) -> object: ...
    def remove_writer(self, fd: int) -> bool: ...
    def call_soon(self, callback: Callable[..., object], *args: Any) -> Any: ...
    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Any: ...
    def time(self) -> float: ...


@dataclass(slots=True)
class ClientHost:
    """Client-Host value plus nginx's log line (level error) and its action, if any."""

    host: bytes
    log_message: str | None = None
    log_action: str | None = None


def _shown(name: str) -> str:
    return (
        name.encode("ascii", "backslashreplace").decode().replace("\r", "\\r").replace("\n", "\\n")
    )


class Lookup:
    """A running lookup; `cancel()` (client gone) means the callback is never called."""

    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


# A query answer: ("ok", values, ttl) or ("err", error text, 0).
_Answer = tuple[str, list[str] | str, float]


class Resolver:
    """One `resolver` directive. `servers` are (ip, port); `valid_s` overrides TTLs. `log`
    gets the resolver's own error lines (nginx writes them to the main error_log, no `*N`)."""

    def __init__(
        self,
        loop: EventLoop,
        servers: list[tuple[str, int]],
        valid_s: float | None = None,
        ipv4: bool = True,
        ipv6: bool = True,
        timeout_s: float = 30.0,
        max_entries: int = 10000,
        log: ErrorLog | None = None,
    ) -> None:
        self.loop = loop
        self.log = log
        self.valid_s = valid_s
        self.ipv4 = ipv4
        self.ipv6 = ipv6
        self.timeout_s = timeout_s
        self.max_entries = max_entries
        self._cache: OrderedDict[tuple[int, str], tuple[float, list[str]]] = OrderedDict()
        self._inflight: dict[tuple[int, str], list[Callable[[_Answer], None]]] = {}
        self._fds: dict[int, tuple[bool, bool]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self.queries_sent = 0
        per_try = min(RETRANSMIT_S, timeout_s)
        self._channel = pycares.Channel(
            sock_state_cb=self._sock_state,
            servers=[f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}" for ip, port in servers],
            timeout=per_try,
            # resolver_timeout alone ends a lookup (our deadline in _query): c-ares' tries can
            # be as short as ARES_MIN_TRY_S, and running out of them early would turn one slow
            # answer into "(110: Operation timed out)" long before resolver_timeout
            tries=math.ceil(timeout_s / ARES_MIN_TRY_S) + 1,
            rotate=True,
            # SERVFAIL/REFUSED end the query as nginx's resolver does, without retries.
            flags=pycares.ARES_FLAG_NOCHECKRESP | pycares.ARES_FLAG_NOSEARCH,
        )

    # --- the channel on the loop -------------------------------------------------------------

    def _sock_state(self, fd: int, readable: bool, writable: bool) -> None:
        old_r, old_w = self._fds.get(fd, (False, False))
        if readable and not old_r:
            self.loop.add_reader(fd, self._process, fd, _BAD)
        elif old_r and not readable:
            self.loop.remove_reader(fd)
        if writable and not old_w:
            self.loop.add_writer(fd, self._process, _BAD, fd)
        elif old_w and not writable:
            self.loop.remove_writer(fd)
        if readable or writable:
            self._fds[fd] = (readable, writable)
        else:
            self._fds.pop(fd, None)

    def _process(self, read_fd: int, write_fd: int) -> None:
        self._channel.process_fd(read_fd, write_fd)
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._inflight:
            delay = self._channel.timeout(RETRANSMIT_S)
            self._timer = self.loop.call_later(delay, self._process, _BAD, _BAD)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for fd, (r, w) in list(self._fds.items()):
            if r:
                self.loop.remove_reader(fd)
            if w:
                self.loop.remove_writer(fd)
        self._fds.clear()
        inflight, self._inflight = self._inflight, {}
        self._channel.close()
        for waiters in inflight.values():
            for waiter in waiters:
                waiter(("err", "2: Server failure", 0.0))

    # --- cached queries -------------------------------------------------------------------

    def _query(self, name: str, qtype: int, cb: Callable[[_Answer], None]) -> None:
        key = (qtype, name)
        hit = self._cache.get(key)
        if hit is not None:
            if hit[0] > self.loop.time():
                self._cache.move_to_end(key)
                cb(("ok", list(hit[1]), 0.0))
                return
            del self._cache[key]
        waiters = self._inflight.get(key)
        if waiters is not None:
            waiters.append(cb)
            return
        waiters = self._inflight[key] = [cb]
        deadline = self.loop.call_later(
            self.timeout_s, self._answer, key, waiters, None, aerr.ARES_ETIMEOUT
        )

        def done(result: pycares.DNSResult | None, status: int | None) -> None:
            if status is None and result is not None and self._no_ptr(qtype, result):
                return  # nginx ignores the answer: resolver_timeout ends the lookup
            deadline.cancel()
            self._answer(key, waiters, result, status)

        self.queries_sent += 1
        try:
            self._channel.query(name, qtype, callback=done)
        except (pycares.AresError, ValueError):
            deadline.cancel()
            self._answer(key, waiters, None, aerr.ARES_EBADNAME)
            return
        self._arm()

    def _no_ptr(self, qtype: int, result: pycares.DNSResult) -> bool:
        """A PTR answer holding records but no PTR one: nginx logs it and keeps waiting
        (ngx_resolver_process_ptr), so the client gets `[TEMPUNAVAIL]` at the timeout."""
        if qtype != pycares.QUERY_TYPE_PTR or not result.answer:
            return False
        if any(rr.type == qtype for rr in result.answer):
            return False
        log = self.log
        if log is not None:
            for rr in result.answer:
                if rr.type != pycares.QUERY_TYPE_CNAME:
                    log.log(ERROR, f"unexpected RR type {rr.type} in DNS response")
            log.log(ERROR, "no PTR type in DNS response")
        return True

    def _answer(
        self,
        key: tuple[int, str],
        waiters: list[Callable[[_Answer], None]],
        result: pycares.DNSResult | None,
        status: int | None,
    ) -> None:
        if self._inflight.get(key) is not waiters:
            return  # already answered by the deadline (or closed)
        del self._inflight[key]
        qtype = key[0]
        answer: _Answer
        if status is None and result is not None:
            values, ttl = [], math.inf
            for rr in result.answer:
                if rr.type != qtype:
                    continue  # CNAMEs before the record are skipped
                data = rr.data
                if isinstance(data, pycares.PTRRecordData):
                    values.append(data.dname)
                elif isinstance(data, (pycares.ARecordData, pycares.AAAARecordData)):
                    values.append(data.addr)
                ttl = min(ttl, rr.ttl)
            if not values:
                status = aerr.ARES_ENODATA
            else:
                self._store(key, values, self.valid_s if self.valid_s is not None else ttl)
                answer = ("ok", values, ttl)
        if status is not None:
            if status == aerr.ARES_ENODATA and qtype != pycares.QUERY_TYPE_PTR:
                self._store(key, [], self.valid_s if self.valid_s is not None else NODATA_TTL_S)
                answer = ("ok", [], 0.0)
            else:
                answer = ("err", _ERRORS.get(status, "2: Server failure"), 0.0)
        for w in waiters:
            w(answer)

    def _store(self, key: tuple[int, str], values: list[str], ttl: float) -> None:
        if ttl <= 0 or self.max_entries <= 0:
            return
        self._cache[key] = (self.loop.time() + ttl, values)
        self._cache.move_to_end(key)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)

    # --- forward lookups ------------------------------------------------------------------

    def _addresses(self, name: str, cb: Callable[[list[str], str | None], None]) -> None:
        """A and/or AAAA per ipv4=/ipv6=; cb(addresses, error text or None)."""
        types = []
        if self.ipv4:
            types.append(pycares.QUERY_TYPE_A)
        if self.ipv6:
            types.append(pycares.QUERY_TYPE_AAAA)
        results: dict[int, _Answer] = {}

        def one(qtype: int, answer: _Answer) -> None:
            results[qtype] = answer
            if len(results) < len(types):
                return
            addrs: list[str] = []
            errors = []
            for t in types:
                kind, value, _ = results[t]
                if kind == "ok":
                    addrs += value
                else:
                    errors.append(value)
            if addrs:
                cb(addrs, None)
            elif any(e != _NOT_FOUND for e in errors):
                cb([], next(e for e in errors if e != _NOT_FOUND))  # type: ignore[arg-type]
            else:
                cb([], _NOT_FOUND)

        for t in types:
            self._query(name, t, functools.partial(one, t))

    def resolve_name(
        self, name: bytes, callback: Callable[[list[str], str | None], None]
    ) -> Lookup:
        """Addresses of a host name (an Auth-Server name): callback(addrs, None) or
        callback([], "3: Host not found")."""
        lookup = Lookup()

        def done(addrs: list[str], err: str | None) -> None:
            if not lookup.cancelled:
                callback(addrs, err)

        self._addresses(name.decode("ascii", "replace").lower(), done)
        return lookup

    # --- Client-Host (ngx_mail_smtp_resolve_addr_handler, _resolve_name_handler) ----------

    def client_host(self, addr: str | None, callback: Callable[[ClientHost], None]) -> Lookup:
        """nginx's SMTP client lookup for the address after realip (None: a unix socket)."""
        lookup = Lookup()

        def deliver(result: ClientHost) -> None:
            if not lookup.cancelled:
                callback(result)

        try:
            ip = ipaddress.ip_address(addr) if addr is not None else None
        except ValueError:
            ip = None
        if ip is None:
            self.loop.call_soon(deliver, ClientHost(TEMPUNAVAIL))
            return lookup

        def on_ptr(answer: _Answer) -> None:
            if lookup.cancelled:
                return
            kind, value, _ = answer
            if kind == "err":
                host = UNAVAILABLE if value == _NOT_FOUND else TEMPUNAVAIL
                deliver(ClientHost(host, f"{addr} could not be resolved ({value})", ACTION_ADDRESS))
                return
            name = value[0].rstrip(".").lower()
            if not _VALID_NAME.match(name):
                msg = f'{addr} resolved to invalid host name "{_shown(name)}"'
                deliver(ClientHost(TEMPUNAVAIL, msg, ACTION_ADDRESS))
                return

            def on_addrs(addrs: list[str], err: str | None) -> None:
                if err is not None:
                    host = UNAVAILABLE if err == _NOT_FOUND else TEMPUNAVAIL
                    msg = f'"{name}" could not be resolved ({err})'
                    deliver(ClientHost(host, msg, ACTION_HOSTNAME))
                elif any(_same(ip, a) for a in addrs):
                    deliver(ClientHost(name.encode("ascii")))
                else:
                    deliver(ClientHost(UNAVAILABLE))

            self._addresses(name, on_addrs)

        self._query(ip.reverse_pointer, pycares.QUERY_TYPE_PTR, on_ptr)
        return lookup

    async def client_host_async(self, addr: str | None) -> ClientHost:
        fut: asyncio.Future[ClientHost] = asyncio.get_running_loop().create_future()
        self.client_host(addr, fut.set_result)
        return await fut

    async def resolve_name_async(self, name: bytes) -> tuple[list[str], str | None]:
        fut: asyncio.Future[tuple[list[str], str | None]] = (
            asyncio.get_running_loop().create_future()
        )
        self.resolve_name(name, lambda a, e: fut.set_result((a, e)))
        return await fut


def _same(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, text: str) -> bool:
    try:
        return ipaddress.ip_address(text) == ip
    except ValueError:
        return False


def client_host_off(callback: Callable[[ClientHost], None]) -> None:
    """`resolver off` (the default): `[UNAVAILABLE]`, no DNS at all."""
    callback(ClientHost(UNAVAILABLE))
