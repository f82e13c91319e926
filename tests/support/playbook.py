"""Drive a client session machine (IMAP, POP3 or SMTP) in tests, sans-IO.

Owns: a small Playbook that feeds bytes and events into a machine and records
what came out (bytes for the client, action bits, auth requests). It knows no
protocol: it only uses the machine contract of docs/internals.md, and never
touches sockets or clocks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fastmail._core import ACT_AUTH, ACT_CLOSE, ACT_SEND, ACT_STARTTLS


@dataclass
class Playbook:
    """Wraps one machine; each call returns the client bytes it produced."""

    machine: Any
    acts: int = 0  # every action bit seen so far, OR-ed
    auths: list[Any] = field(default_factory=list)  # AuthRequests, in order
    transcript: bytearray = field(default_factory=bytearray)  # all client-bound bytes
    closed: bool = False

    def _take(self, acts: int) -> bytes:
        self.acts |= acts
        out = self.machine.take_output()
        if out and not acts & ACT_SEND:
            raise AssertionError(f"output {out!r} without ACT_SEND")
        if acts & ACT_AUTH:
            self.auths.append(self.machine.auth)
        if acts & ACT_CLOSE:
            self.closed = True
        self.transcript += out
        return out

    def start(self) -> bytes:
        return self._take(self.machine.start())

    def feed(self, data: bytes) -> bytes:
        return self._take(self.machine.feed(data))

    def feed_chunks(self, chunks: Iterable[bytes]) -> bytes:
        return b"".join(self.feed(c) for c in chunks)

    def auth_ok(self) -> bytes:
        return self._take(self.machine.on_auth_ok())

    def auth_fail(self, message: bytes, code: bytes | None = None, retry: bool = False) -> bytes:
        return self._take(self.machine.on_auth_fail(message, code, retry))

    def auth_error(self) -> bytes:
        return self._take(self.machine.on_auth_error())

    def tls_done(self) -> bytes:
        return self._take(self.machine.on_tls_done())

    def timeout(self) -> bytes:
        return self._take(self.machine.on_timeout())

    def timer(self) -> bytes:
        return self._take(self.machine.on_timer())

    @property
    def waiting_auth(self) -> bool:
        return bool(self.acts & ACT_AUTH)

    @property
    def starttls(self) -> bool:
        return bool(self.acts & ACT_STARTTLS)


def run(machine: Any, chunks: Iterable[bytes], start: bool = True) -> Playbook:
    """Start a machine, feed it chunks, return the Playbook with what it recorded."""
    pb = Playbook(machine)
    if start:
        pb.start()
    for c in chunks:
        if pb.closed:
            break
        pb.feed(c)
    return pb
