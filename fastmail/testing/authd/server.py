"""The reference auth server's service: which answer a request gets (rules, then the user
database), and the HTTP/1.0 and HTTP/1.1 keep-alive connections it is read from and written to
(httptools), answered strictly in order."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import re
import secrets
import ssl
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from typing import cast

import httptools

from fastmail.testing.authd.messages import AuthQuery, Reply, Rule, once
from fastmail.testing.authd.users import (
    DEFAULT_USER,
    PROTOCOLS,
    Backend,
    User,
    UserDB,
    verify_password,
)

FAIL_TEXT = "Invalid login or password"
TEMP_TEXT = "Temporary server problem, try again later"
_RCPT_ADDR = re.compile(r"<([^>]*)>")


def rcpt_domain(rcpt_line: str) -> str:
    """The domain of the address in `RCPT TO:<x@y> ...` (the raw command nginx forwards)."""
    m = _RCPT_ADDR.search(rcpt_line)
    addr = m.group(1) if m else rcpt_line.partition(":")[2].strip().split(" ")[0]
    return addr.rpartition("@")[2].lower()


class AuthServer:
    """The auth_http service on an asyncio (uvloop) loop.

    `fail_wait` is the Auth-Wait given with a failure (the client may retry after that many
    seconds); from attempt `max_attempts` on, failures carry no Auth-Wait, so the proxy closes.
    `rules` are consulted in order before the database; the first non-None reply wins.
    """

    def __init__(
        self,
        db: UserDB,
        fail_wait: int = 3,
        max_attempts: int = 3,
        rules: Iterable[Rule] = (),
        log: Callable[[AuthQuery, Reply], None] | None = None,
        keep_requests: int = 100_000,
    ) -> None:
        self.db = db
        self.fail_wait = fail_wait
        self.max_attempts = max_attempts
        self.rules: list[Rule] = list(rules)
        self.requests: deque[AuthQuery] = deque(maxlen=keep_requests)
        self.log = log
        self.host = ""
        self.port = 0
        self.tls = False
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[_AuthConnection] = set()
        self._verified: dict[tuple[str, str], bytes] = {}
        self._cache_key = secrets.token_bytes(32)

    # -- lifecycle

    async def start(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """Listens on host:port (0: any free port) or the unix socket `path`; https with
        `tls` (a server context)."""
        loop = asyncio.get_running_loop()
        self.tls = tls is not None
        if path is not None:
            self._server = await loop.create_unix_server(
                lambda: _AuthConnection(self), path, ssl=tls
            )
            self.host = f"unix:{path}"
        else:
            self._server = await loop.create_server(
                lambda: _AuthConnection(self), host, port, reuse_address=True, ssl=tls
            )
            self.host, self.port = self._server.sockets[0].getsockname()[:2]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for conn in list(self._conns):
                conn.abort()
            await self._server.wait_closed()
            self._server = None

    @property
    def url(self) -> str:
        """What to write after `auth_http` in a mail config."""
        scheme = "https://" if self.tls else ""
        return (
            f"{scheme}{self.host}/auth"
            if self.host.startswith("unix:")
            else f"{scheme}{self.host}:{self.port}/auth"
        )

    # -- test helpers

    def add_rule(self, rule: Rule, times: int | None = None) -> None:
        self.rules.append(once(rule, times) if times else rule)

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[AuthQuery]:
        """From another thread: block until `count` requests were logged; return them all."""
        deadline = time.monotonic() + timeout
        while len(self.requests) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.requests)} auth requests, expected {count}")
            time.sleep(0.005)
        return list(self.requests)

    # -- deciding

    def answer(self, q: AuthQuery, done: Callable[[Reply], None]) -> None:
        """Call `done(reply)` now or later (scrypt runs in a worker thread)."""
        for rule in self.rules:
            reply = rule(q)
            if reply is not None:
                if reply.headers is None and reply.raw is None and not reply.drop:
                    self.answer_from_db(q, functools.partial(_answer_delayed, done, reply.delay))
                else:
                    done(reply)
                return
        self.answer_from_db(q, done)

    def answer_from_db(self, q: AuthQuery, done: Callable[[Reply], None]) -> None:
        method, proto = q.auth_method, q.protocol
        if proto not in PROTOCOLS:
            return done(self.temporary(q))
        if method == "none":
            return done(self.route_smtp(q))
        user = self.db.user(q.user)
        if user is None:
            return done(self.deny(q))
        if method in ("plain", "login"):
            key = (user.name, user.password_hash)
            tag = hmac.digest(
                self._cache_key, q.password.encode("utf-8", "surrogateescape"), "sha256"
            )
            if self._verified.get(key) == tag:
                return done(self.grant(q, user))

            def finished(fut: asyncio.Future[bool]) -> None:
                if fut.cancelled():
                    return
                if fut.result():
                    if len(self._verified) > 10_000:
                        self._verified.clear()
                    self._verified[key] = tag
                    done(self.grant(q, user))
                else:
                    done(self.deny(q))

            loop = asyncio.get_running_loop()
            fut = loop.run_in_executor(None, verify_password, user.password_hash, q.password)
            fut.add_done_callback(finished)
            return
        if method in ("cram-md5", "apop"):
            salt = (q.get("Auth-Salt") or "").strip()
            if user.plain_password is None or not salt:
                return done(self.deny(q))
            secret = user.plain_password.encode("utf-8", "surrogateescape")
            if method == "apop":
                want = hashlib.md5(salt.encode("latin-1") + secret).hexdigest()
            else:
                want = hmac.new(secret, salt.encode("latin-1"), "md5").hexdigest()
            if hmac.compare_digest(want, q.password.lower()):
                # The proxy has only the digest; the backend needs the password itself.
                return done(self.grant(q, user, password=user.plain_password))
            return done(self.deny(q))
        if method == "external" and q.get("Auth-SSL-Verify") == "SUCCESS":
            return done(self.grant(q, user, password=user.plain_password))
        return done(self.deny(q))

    def grant(self, q: AuthQuery, user: User, password: str | None = None) -> Reply:
        backend = self.pick(self.db.backends(user.name, q.protocol), q)
        if backend is None:
            return self.temporary(q)
        return Reply.ok(backend, password=password)

    @staticmethod
    def pick(backends: list[Backend], q: AuthQuery) -> Backend | None:
        """The first backend the proxy did not report down (fastmail's Auth-Failed-Server
        lines, one per backend that could not be reached during this login)."""
        failed = set(q.get_all("Auth-Failed-Server"))
        return next((be for be in backends if str(be) not in failed), None)

    def deny(self, q: AuthQuery) -> Reply:
        wait = self.fail_wait if q.attempt < self.max_attempts else None
        code = "535 5.7.8" if q.protocol == "smtp" else None
        return Reply.fail(FAIL_TEXT, wait, code)

    def temporary(self, q: AuthQuery) -> Reply:
        code = "451 4.3.0" if q.protocol == "smtp" else None
        return Reply.fail(TEMP_TEXT, self.fail_wait or None, code)

    def route_smtp(self, q: AuthQuery) -> Reply:
        """`smtp_auth none`: anyone may send; the RCPT domain picks the backend."""
        domain = rcpt_domain(q.get("Auth-SMTP-To") or "")
        routed = self.db.domain_backend(domain)
        backend = self.pick([routed] if routed else self.db.backends(DEFAULT_USER, "smtp"), q)
        if backend is None:
            return Reply.fail("Relay access denied", error_code="550 5.7.1")
        return Reply.ok(backend)


def _delayed(reply: Reply, delay: float) -> Reply:
    reply.delay = max(reply.delay, delay)
    return reply


def _answer_delayed(done: Callable[[Reply], None], delay: float, reply: Reply) -> None:
    done(_delayed(reply, delay))


class _AuthConnection(asyncio.Protocol):
    """One client connection: httptools parses, requests are answered strictly in order."""

    def __init__(self, server: AuthServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.pending: deque[tuple[AuthQuery, bool]] = deque()
        self.busy = False
        self.timer: asyncio.TimerHandle | None = None
        self.raw = bytearray()
        self._url = b""
        self._headers: list[tuple[str, str]] = []

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else f"unix:{peer or ''}"
        self.server._conns.add(self)

    def data_received(self, data: bytes) -> None:
        self.raw += data
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._log_error("upgrade requests are not auth_http")
        except httptools.HttpParserError as exc:
            self._log_error(f"bad request: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._conns.discard(self)
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_message_complete(self) -> None:
        q = AuthQuery(
            method=self.parser.get_method().decode("latin-1"),
            url=self._url.decode("latin-1"),
            http_version=self.parser.get_http_version(),
            headers=self._headers,
            peer=self.peer,
            raw=bytes(self.raw),
        )
        self.raw.clear()
        self.server.requests.append(q)
        self.pending.append((q, self.parser.should_keep_alive()))
        if not self.busy:
            self._next()

    # answering

    def _next(self) -> None:
        if not self.pending or self.transport is None:
            self.busy = False
            return
        self.busy = True
        q, keep_alive = self.pending.popleft()
        try:
            self.server.answer(q, lambda reply: self._send(q, keep_alive, reply))
        except Exception as exc:  # a bug or a broken rule: say so, loudly but per request
            q.error = f"auth server error: {exc!r}"
            traceback.print_exc()
            self._send(q, False, Reply.http_error())

    def _send(self, q: AuthQuery, keep_alive: bool, reply: Reply) -> None:
        if self.transport is None:
            return
        if reply.delay > 0:
            if reply.delay == float("inf"):
                return  # hang until the client gives up
            delay, reply.delay = reply.delay, 0.0
            loop = asyncio.get_running_loop()
            self.timer = loop.call_later(delay, self._send, q, keep_alive, reply)
            return
        self.timer = None
        if self.server.log is not None:
            self.server.log(q, reply)
        if reply.drop:
            self.transport.close()
            return
        keep_alive = keep_alive and not reply.close
        self.transport.write(reply.encode(q.http_version, keep_alive))
        if not keep_alive:
            self.transport.close()
            return
        self._next()

    def _log_error(self, message: str) -> None:
        q = AuthQuery("", "", "", [], self.peer, raw=bytes(self.raw), error=message)
        self.server.requests.append(q)
        if self.transport is not None:
            self.transport.write(b"HTTP/1.0 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            self.transport.close()
