"""A worker's abuse limits (beyond nginx): connections per client address, and login-failure
throttling with Dovecot's auth penalty as the model.

Owns the worker's counting state and its decisions: `Guard.conns` (open connections per
address key, for limit_conn_per_ip) and two bounded LRU tables of recent login failures, one
by client address and one by login name (login_fail_limit). The engine (_session.pyx,
_engine.pyx) asks and reports; the settings come from conf/guard.py. Must not speak a
protocol or touch a socket.

State is per worker, not shared across workers: the throttle's point is to slow a guessing
client from thousands of attempts a second to about one, which it does within a factor of
worker_processes, while a shared table would put a process-shared lock on every login;
`limit_conn_per_ip` counts the connections a worker holds, so a client may open up to
worker_processes times the limit in all (docs/protecting.md).

The metrics count the limits at work per server{} (fastmail_limited_total, in the
session); `stats()` has this worker's figures and the tables' sizes.
"""

from __future__ import annotations

import socket
from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastmail.conf.model import LoginFailLimit

# entries each failure table keeps (client addresses, login names): about 200 bytes each
TABLE_SIZE = 16384
FIRST_DELAY = 1000  # ms: the first throttled attempt waits this, then twice as long each time

REFUSE = -1  # Guard.before(): refuse this login now


def address_key(ip: bytes, ipv6_prefix: int) -> bytes:
    """The key a client address is counted under: an IPv4 address (or a unix socket) as
    it is, an IPv6 address by its first `ipv6_prefix` bits."""
    if b":" not in ip or ip == b"unix:":
        return ip
    try:
        raw = socket.inet_pton(socket.AF_INET6, ip.decode("ascii"))
    except (OSError, UnicodeDecodeError):
        return ip
    if ipv6_prefix >= 128:
        return raw
    whole, bits = divmod(ipv6_prefix, 8)
    out = bytearray(raw[:whole])
    if bits:
        out.append(raw[whole] & (0xFF << (8 - bits)) & 0xFF)
    return bytes(out) + b"/%d" % ipv6_prefix


class _Failures:
    """Recent failures by key: [count, first, last] (ms), the least recently used dropped
    once TABLE_SIZE keys are kept."""

    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries: OrderedDict[bytes, list[int]] = OrderedDict()

    def get(self, key: bytes, now: int, keep: int) -> list[int] | None:
        """The entry of `key`, dropped when its last failure is more than `keep` ms old."""
        e = self.entries.get(key)
        if e is None:
            return None
        if now - e[2] > keep:
            del self.entries[key]
            return None
        self.entries.move_to_end(key)
        return e

    def add(self, key: bytes, now: int, keep: int) -> int:
        e = self.get(key, now, keep)
        if e is None:
            self.entries[key] = [1, now, now]
            if len(self.entries) > TABLE_SIZE:
                self.entries.popitem(last=False)
            return 1
        e[0] += 1
        e[2] = now
        return e[0]

    def clear(self, key: bytes) -> None:
        self.entries.pop(key, None)


class Guard:
    """One worker's limits state, shared by all its sessions."""

    __slots__ = (
        "conns", "by_address", "by_login", "refused_conns", "delayed_logins",
        "refused_logins",
    )  # fmt: skip

    def __init__(self) -> None:
        self.conns: dict[bytes, int] = {}
        self.by_address = _Failures()
        self.by_login = _Failures()
        self.refused_conns = 0
        self.delayed_logins = 0
        self.refused_logins = 0

    # --- login throttling (the engine calls these only when login_fail_limit is set) ----------

    def before(self, lim: LoginFailLimit, ip: bytes, login: bytes, now: int) -> int:
        """Before a login is sent to auth_http: 0 to go on, a delay in ms, or REFUSE."""
        worst = last = 0
        keep = max(lim.window, lim.block)
        key = address_key(ip, lim.ipv6_prefix)
        for table, k in ((self.by_address, key), (self.by_login, login)):
            if not k:
                continue
            e = table.get(k, now, keep)
            if e is not None and e[0] > worst:
                worst = e[0]
                last = e[2]
        if worst < lim.count:
            return 0
        if worst >= 2 * lim.count and now - last < lim.block:
            self.refused_logins += 1
            return REFUSE
        self.delayed_logins += 1
        over = min(worst - lim.count, 20)
        return min(FIRST_DELAY << over, lim.delay)

    def failed(self, lim: LoginFailLimit, ip: bytes, login: bytes, now: int) -> int:
        """auth_http refused a login: returns the failures now counted (the larger)."""
        keep = max(lim.window, lim.block)
        n = self.by_address.add(address_key(ip, lim.ipv6_prefix), now, keep)
        if login:
            n = max(n, self.by_login.add(login, now, keep))
        return n

    def succeeded(self, login: bytes) -> None:
        """A login went through: its name's failures are forgotten (not its address's: a
        guesser with one good account must not reset its own count)."""
        self.by_login.clear(login)

    # --- what the metrics show --------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        return {
            "refused_connections": self.refused_conns,
            "delayed_logins": self.delayed_logins,
            "refused_logins": self.refused_logins,
            "tracked_addresses": len(self.by_address.entries),
            "tracked_logins": len(self.by_login.entries),
            "limited_addresses": len(self.conns),
        }
