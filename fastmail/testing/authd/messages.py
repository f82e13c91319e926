"""What the reference auth server reads and writes: one request (`AuthQuery`), one answer
(`Reply`), and the test rules that pick an answer before the database does."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastmail.testing.authd.users import Backend


def percent_decode(value: str) -> str:
    """Undo nginx's escaping of Auth-User/Auth-Pass (ngx_mail_auth_http_escape): exactly %XX,
    never '+'."""
    raw = value.encode("latin-1")
    if b"%" in raw:
        raw = re.sub(rb"%([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), raw)
    return raw.decode("utf-8", "surrogateescape")


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

    def get_all(self, name: str) -> list[str]:
        """Every value of a header that may come more than once, in order."""
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

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
