"""The reference auth_http server: which backend a mail login goes to, and whether it may.

Speaks the auth_http protocol of nginx's mail proxy (and fastmail's), over HTTP/1.0 or HTTP/1.1
keep-alive, with users, password hashes (hashlib.scrypt) and backends in SQLite. It is the
example to copy when writing your own auth service, and the server the tests, the demo and
bench/ use; tests add rules (forced WAIT, slow or garbage answers) and read `requests`, the log
of every request received. It must not import the proxy: it has to work in front of nginx too.

    python -m fastmail.testing.authd --db users.sqlite adduser alice --password secret \\
        --imap 127.0.0.1:1143 --pop3 127.0.0.1:1110 --smtp 127.0.0.1:1025 \\
        --sieve 127.0.0.1:4190
    python -m fastmail.testing.authd --db users.sqlite --listen 127.0.0.1:9000
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import getpass
import hashlib
import hmac
import json
import os
import re
import secrets
import signal
import sqlite3
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import httptools

PROTOCOLS = ("imap", "pop3", "smtp", "sieve")  # sieve: ManageSieve (fastmail only)
DEFAULT_USER = "*"  # backends row naming the default backend of a protocol

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,   -- scrypt$ln=14,r=8,p=1$SALT$HASH (base64)
    plain_password TEXT            -- only with --store-plain: CRAM-MD5 and APOP need it
);
CREATE TABLE IF NOT EXISTS backends (
    name TEXT NOT NULL,            -- a user name, or '*' for the protocol's default backend
    protocol TEXT NOT NULL CHECK (protocol IN ('imap', 'pop3', 'smtp', 'sieve')),
    host TEXT NOT NULL,
    port INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
    PRIMARY KEY (name, protocol)
);
CREATE TABLE IF NOT EXISTS domains (   -- smtp_auth none: route by the RCPT TO domain
    domain TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    port INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535)
);
"""

# ---------------------------------------------------------------------------------------------
# Passwords


def hash_password(password: str, ln: int = 14, r: int = 8, p: int = 1) -> str:
    """scrypt with a random salt; the parameters are stored so they can be raised later."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=1 << ln, r=r, p=p, dklen=32)
    b64 = base64.b64encode
    return f"scrypt$ln={ln},r={r},p={p}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(stored: str, password: str) -> bool:
    try:
        scheme, params, salt_b64, digest_b64 = stored.split("$")
        opts = dict(kv.split("=") for kv in params.split(","))
        ln, r, p = int(opts["ln"]), int(opts["r"]), int(opts["p"])
        salt, want = base64.b64decode(salt_b64), base64.b64decode(digest_b64)
    except (ValueError, KeyError):
        return False
    if scheme != "scrypt":
        return False
    got = hashlib.scrypt(
        password.encode("utf-8", "surrogateescape"),
        salt=salt,
        n=1 << ln,
        r=r,
        p=p,
        dklen=len(want),
        maxmem=256 * 1024 * 1024,
    )
    return hmac.compare_digest(got, want)


def percent_decode(value: str) -> str:
    """Undo nginx's escaping of Auth-User/Auth-Pass: exactly %XX, never '+' (auth_http.md §3.5)."""
    raw = value.encode("latin-1")
    if b"%" in raw:
        raw = re.sub(rb"%([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), raw)
    return raw.decode("utf-8", "surrogateescape")


# ---------------------------------------------------------------------------------------------
# The user database


@dataclass(frozen=True)
class Backend:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Backend:
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"backend must be HOST:PORT, not {text!r}")
        return cls(host.strip("[]"), int(port))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class User:
    name: str
    password_hash: str
    plain_password: str | None


class UserDB:
    """Users, per-protocol backends and SMTP domain routes in one SQLite file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        # One thread at a time uses it, but the CLI creates it before the serving thread runs.
        self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.conn.executescript(SCHEMA)
        self._allow_sieve()

    def _allow_sieve(self) -> None:
        """A database made before ManageSieve checks protocol against three names: its
        backends table is rebuilt with the current CHECK, rows kept."""
        row = self.conn.execute("SELECT sql FROM sqlite_master WHERE name = 'backends'").fetchone()
        if row is None or "'sieve'" in row[0]:
            return
        create = SCHEMA[SCHEMA.index("CREATE TABLE IF NOT EXISTS backends") :]
        create = create[: create.index(";") + 1]
        self.conn.executescript(
            "BEGIN; ALTER TABLE backends RENAME TO backends_old; "
            f"{create} INSERT INTO backends SELECT * FROM backends_old; "
            "DROP TABLE backends_old; COMMIT;"
        )

    def close(self) -> None:
        self.conn.close()

    def add_user(
        self,
        name: str,
        password: str,
        backends: dict[str, Backend] | None = None,
        store_plain: bool = False,
        scrypt_ln: int = 14,
    ) -> None:
        if not name or name == DEFAULT_USER:
            raise ValueError(f"invalid user name {name!r}")
        with self.conn:
            self.conn.execute(
                "INSERT OR REPLACE INTO users VALUES (?, ?, ?)",
                (name, hash_password(password, ln=scrypt_ln), password if store_plain else None),
            )
            self.conn.execute("DELETE FROM backends WHERE name = ?", (name,))
            for proto, be in (backends or {}).items():
                self.set_backend(name, proto, be)

    def delete_user(self, name: str) -> bool:
        with self.conn:
            self.conn.execute("DELETE FROM backends WHERE name = ?", (name,))
            return self.conn.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount > 0

    def set_backend(self, name: str, protocol: str, backend: Backend) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}")
        self.conn.execute(
            "INSERT OR REPLACE INTO backends VALUES (?, ?, ?, ?)",
            (name, protocol, backend.host, backend.port),
        )

    def set_default(self, protocol: str, backend: Backend) -> None:
        self.set_backend(DEFAULT_USER, protocol, backend)

    def set_domain(self, domain: str, backend: Backend) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO domains VALUES (?, ?, ?)",
            (domain.lower(), backend.host, backend.port),
        )

    def user(self, name: str) -> User | None:
        row = self.conn.execute(
            "SELECT name, password_hash, plain_password FROM users WHERE name = ?", (name,)
        ).fetchone()
        return User(*row) if row else None

    def backend(self, name: str, protocol: str) -> Backend | None:
        """The user's backend for the protocol, else the protocol's default."""
        row = self.conn.execute(
            "SELECT host, port FROM backends WHERE protocol = ? AND name IN (?, ?) "
            "ORDER BY name = ? LIMIT 1",
            (protocol, name, DEFAULT_USER, DEFAULT_USER),
        ).fetchone()
        return Backend(row[0], row[1]) if row else None

    def domain_backend(self, domain: str) -> Backend | None:
        row = self.conn.execute(
            "SELECT host, port FROM domains WHERE domain = ?", (domain.lower(),)
        ).fetchone()
        return Backend(row[0], row[1]) if row else None

    def users(self) -> list[tuple[str, bool, dict[str, Backend]]]:
        out = []
        for name, plain in self.conn.execute(
            "SELECT name, plain_password IS NOT NULL FROM users ORDER BY name"
        ):
            bes = {
                proto: Backend(host, port)
                for proto, host, port in self.conn.execute(
                    "SELECT protocol, host, port FROM backends WHERE name = ?", (name,)
                )
            }
            out.append((name, bool(plain), bes))
        return out

    def defaults(self) -> dict[str, Backend]:
        return {
            proto: Backend(host, port)
            for proto, host, port in self.conn.execute(
                "SELECT protocol, host, port FROM backends WHERE name = ?", (DEFAULT_USER,)
            )
        }

    def domains(self) -> dict[str, Backend]:
        return {d: Backend(h, p) for d, h, p in self.conn.execute("SELECT * FROM domains")}


# ---------------------------------------------------------------------------------------------
# Requests and replies


@dataclass
class AuthQuery:
    """One request as received. Header values are latin-1 text (byte for byte)."""

    method: str
    url: str
    http_version: str
    headers: list[tuple[str, str]]
    peer: str
    raw: bytes = b""  # exact bytes, unless the client pipelined several requests in one write
    received_at: float = field(default_factory=time.monotonic)
    error: str | None = None  # set when the request could not be parsed

    def get(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    @property
    def header_names(self) -> list[str]:
        return [k for k, _ in self.headers]

    @property
    def auth_method(self) -> str:
        return self.get("Auth-Method", "") or ""

    @property
    def protocol(self) -> str:
        return self.get("Auth-Protocol", "") or ""

    @property
    def user(self) -> str:
        return percent_decode(self.get("Auth-User", "") or "")

    @property
    def password(self) -> str:
        return percent_decode(self.get("Auth-Pass", "") or "")

    @property
    def attempt(self) -> int:
        value = self.get("Auth-Login-Attempt", "") or ""
        return int(value) if value.isdigit() else 0


@dataclass
class Reply:
    """An answer. `headers=None` means "what the server would normally answer" (for delays)."""

    headers: list[tuple[str, str]] | None = None
    status_line: str = "200 OK"
    delay: float = 0.0  # seconds before answering; float("inf") never answers
    raw: bytes | None = None  # sent verbatim instead of a formatted response
    drop: bool = False  # close the connection without answering
    close: bool = False  # close after answering, even on a keep-alive connection

    @classmethod
    def ok(cls, backend: Backend, user: str | None = None, password: str | None = None) -> Reply:
        h = [("Auth-Status", "OK"), ("Auth-Server", backend.host), ("Auth-Port", str(backend.port))]
        if user is not None:
            h.append(("Auth-User", user))
        if password is not None:
            h.append(("Auth-Pass", password))
        return cls(h)

    @classmethod
    def fail(cls, text: str, wait: int | None = None, error_code: str | None = None) -> Reply:
        h = [("Auth-Status", text)]
        if wait:
            h.append(("Auth-Wait", str(wait)))
        if error_code:
            h.append(("Auth-Error-Code", error_code))
        return cls(h)

    @classmethod
    def wait(cls, seconds: int = 1) -> Reply:
        """Auth-Status WAIT: the proxy repeats the request after `seconds` (0 = at once)."""
        return cls([("Auth-Status", "WAIT"), ("Auth-Wait", str(seconds))])

    @classmethod
    def slow(cls, seconds: float) -> Reply:
        return cls(delay=seconds)

    @classmethod
    def hang(cls) -> Reply:
        return cls(delay=float("inf"))

    @classmethod
    def garbage(cls, data: bytes = b"HTTP/1.0 200 OK\r\nAuth Status: OK\r\n\r\n") -> Reply:
        return cls(raw=data, close=True)

    @classmethod
    def http_error(cls, status_line: str = "500 Internal Server Error") -> Reply:
        return cls([], status_line=status_line)

    @classmethod
    def dropped(cls) -> Reply:
        return cls(drop=True)

    def encode(self, http_version: str, keep_alive: bool) -> bytes:
        if self.raw is not None:
            return self.raw
        version = "1.1" if http_version == "1.1" else "1.0"
        lines = [f"HTTP/{version} {self.status_line}"]
        lines += [f"{k}: {v}" for k, v in self.headers or ()]
        lines.append("Content-Length: 0")
        if version == "1.1" and not keep_alive:
            lines.append("Connection: close")
        elif version == "1.0" and keep_alive:
            lines.append("Connection: keep-alive")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")


Rule = Callable[[AuthQuery], Reply | None]


def once(rule: Rule, times: int = 1) -> Rule:
    """Apply `rule` to the first `times` requests it matches, then never again."""
    left = [times]

    def limited(q: AuthQuery) -> Reply | None:
        if left[0] <= 0:
            return None
        reply = rule(q)
        if reply is not None:
            left[0] -= 1
        return reply

    return limited


def rule_from_json(spec: dict[str, Any]) -> Rule:
    """A rule from JSON: {"when": {header: value, ...}, "reply": {...}, "times": n}.

    "when" compares header values exactly (Auth-User/Auth-Pass after percent-decoding); keys
    are header names. "reply" is one of {"delay": s}, {"hang": true}, {"wait": s},
    {"fail": text, "wait": s, "code": c}, {"garbage": text}, {"http_status": "500 ..."},
    {"drop": true}, {"ok": "HOST:PORT", "user": u, "pass": p}, {"headers": [[k, v], ...]}.
    """
    when = {k.lower(): str(v) for k, v in spec.get("when", {}).items()}
    r = spec["reply"]
    if "delay" in r:
        reply = Reply.slow(float(r["delay"]))
    elif r.get("hang"):
        reply = Reply.hang()
    elif "fail" in r:
        reply = Reply.fail(r["fail"], r.get("wait"), r.get("code"))
    elif "wait" in r:
        reply = Reply.wait(int(r["wait"]))
    elif "garbage" in r:
        reply = Reply.garbage(r["garbage"].encode("latin-1"))
    elif "http_status" in r:
        reply = Reply.http_error(r["http_status"])
    elif r.get("drop"):
        reply = Reply.dropped()
    elif "ok" in r:
        reply = Reply.ok(Backend.parse(r["ok"]), r.get("user"), r.get("pass"))
    elif "headers" in r:
        reply = Reply([(str(k), str(v)) for k, v in r["headers"]])
    else:
        raise ValueError(f"unknown reply in rule: {r!r}")

    def match(q: AuthQuery) -> Reply | None:
        for name, want in when.items():
            if name == "auth-user":
                got: str | None = q.user
            elif name == "auth-pass":
                got = q.password
            else:
                got = q.get(name)
            if got != want:
                return None
        return reply

    return once(match, int(spec["times"])) if "times" in spec else match


def load_rules(path: str) -> list[Rule]:
    with open(path) as f:
        specs = json.load(f)
    return [rule_from_json(s) for s in specs]


# ---------------------------------------------------------------------------------------------
# The decision


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
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[_AuthConnection] = set()
        self._verified: dict[tuple[str, str], bytes] = {}
        self._cache_key = secrets.token_bytes(32)

    # -- lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0, path: str | None = None) -> None:
        loop = asyncio.get_running_loop()
        if path is not None:
            self._server = await loop.create_unix_server(lambda: _AuthConnection(self), path)
            self.host = f"unix:{path}"
        else:
            self._server = await loop.create_server(
                lambda: _AuthConnection(self), host, port, reuse_address=True
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
        return (
            f"{self.host}/auth"
            if self.host.startswith("unix:")
            else f"{self.host}:{self.port}/auth"
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
        backend = self.db.backend(user.name, q.protocol)
        if backend is None:
            return self.temporary(q)
        return Reply.ok(backend, password=password)

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
        backend = self.db.domain_backend(domain) or self.db.backend(DEFAULT_USER, "smtp")
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


# ---------------------------------------------------------------------------------------------
# Command line


def _print_request(q: AuthQuery, reply: Reply) -> None:
    shown = [(k, "***" if k.lower() == "auth-pass" and v else v) for k, v in q.headers]
    answer = dict(reply.headers or ()).get("Auth-Status", "(raw)" if reply.raw else "-")
    print(
        f"{q.peer} {q.method} {q.url} HTTP/{q.http_version} -> {answer}: "
        + "; ".join(f"{k}={v}" for k, v in shown),
        file=sys.stderr,
        flush=True,
    )


async def serve(args: argparse.Namespace) -> None:
    db = UserDB(args.db)
    rules = load_rules(args.rules) if args.rules else []
    server = AuthServer(
        db,
        fail_wait=args.wait,
        max_attempts=args.max_attempts,
        rules=rules,
        log=_print_request if args.verbose else None,
        keep_requests=1,
    )
    if args.listen.startswith("unix:"):
        await server.start(path=args.listen[5:])
    else:
        be = Backend.parse(args.listen)
        await server.start(be.host, be.port)
    print(f"fastmail authd: auth_http {server.url} (db {args.db})", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()
    db.close()


def _backend_args(p: argparse.ArgumentParser) -> None:
    for proto in PROTOCOLS:
        p.add_argument(
            f"--{proto}", type=Backend.parse, metavar="HOST:PORT", help=f"{proto} backend"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m fastmail.testing.authd",
        description="Reference auth_http server for fastmail and nginx's mail proxy. "
        "Without a subcommand it serves.",
    )
    p.add_argument("--db", default="users.sqlite", help="SQLite file (created if missing)")
    p.add_argument("--listen", default="127.0.0.1:9000", help="HOST:PORT or unix:PATH")
    p.add_argument(
        "--wait", type=int, default=3, help="Auth-Wait seconds after a failure (0: none)"
    )
    p.add_argument("--max-attempts", type=int, default=3, help="no retry from this attempt on")
    p.add_argument("--rules", help="JSON file of test rules (see rule_from_json)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every request to stderr")
    sub = p.add_subparsers(dest="command")
    a = sub.add_parser("adduser", help="add or replace a user")
    a.add_argument("name")
    a.add_argument("--password", help="prompted for when omitted")
    a.add_argument(
        "--store-plain",
        action="store_true",
        help="also keep the password in clear: needed for CRAM-MD5 and APOP, whose digests "
        "can only be checked, and passed on to the backend, with the password itself",
    )
    a.add_argument("--scrypt-ln", type=int, default=14, help="log2 of scrypt's N")
    _backend_args(a)
    d = sub.add_parser("deluser", help="remove a user")
    d.add_argument("name")
    sub.add_parser("list", help="show users, default backends and domain routes")
    df = sub.add_parser("default", help="default backend of a protocol (users without their own)")
    _backend_args(df)
    dm = sub.add_parser("domain", help="smtp_auth none: route mail for DOMAIN to HOST:PORT")
    dm.add_argument("domain")
    dm.add_argument("backend", type=Backend.parse, metavar="HOST:PORT")
    args = p.parse_args(argv)

    if args.command is None:
        try:
            asyncio.run(serve(args))
        except KeyboardInterrupt:
            pass
        return 0
    db = UserDB(args.db)
    try:
        if args.command == "adduser":
            password = args.password
            if password is None:
                password = getpass.getpass(f"password for {args.name}: ")
            bes = {proto: getattr(args, proto) for proto in PROTOCOLS if getattr(args, proto)}
            db.add_user(args.name, password, bes, args.store_plain, args.scrypt_ln)
        elif args.command == "deluser":
            if not db.delete_user(args.name):
                print(f"no user {args.name!r}", file=sys.stderr)
                return 1
        elif args.command == "default":
            for proto in PROTOCOLS:
                if getattr(args, proto):
                    db.set_default(proto, getattr(args, proto))
        elif args.command == "domain":
            db.set_domain(args.domain, args.backend)
        elif args.command == "list":
            for name, plain, bes in db.users():
                routes = " ".join(f"{k}={v}" for k, v in sorted(bes.items()))
                print(f"{name}{' (plain stored)' if plain else ''} {routes}".rstrip())
            for proto, be in sorted(db.defaults().items()):
                print(f"default {proto}={be}")
            for domain, be in sorted(db.domains().items()):
                print(f"domain {domain} smtp={be}")
    finally:
        db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
