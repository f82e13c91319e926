"""What the fuzz targets share: the input layout and the client machines' driver.

Input of a client machine target: HEADER knob bytes (the profile, the auth_http answers),
then the client's bytes, cut into segments by SEP and an op byte. A segment boundary is a
moment between two reads: a deferred auth_http answer arrives there, and the op may fire
the machine's timer (smtp_greeting_delay) or nginx's `timeout`. The driver does what the
engine (_session.pyx `run`) does with each action, and runs the same script several ways:
each segment as one read, one byte per read, and cut once at every offset; every way must
give the same replies, the same actions, the same auth requests and the same relay bytes.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from fastmail._authreq import RequestTemplate
from fastmail._core import (
    ACT_AUTH,
    ACT_CLOSE,
    ACT_SEND,
    ACT_STARTTLS,
    ACT_TIMER,
    AuthRequest,
    Machine,
)
from fastmail.auth_http import build_request

HEADER = 6
SEP = b"\xfe\xfd"
VALID = ACT_SEND | ACT_AUTH | ACT_STARTTLS | ACT_CLOSE | ACT_TIMER
SIGNIFICANT = ACT_AUTH | ACT_STARTTLS | ACT_CLOSE | ACT_TIMER
# every single cut is tried while the stream is this short (a run per offset); longer
# streams get the one-byte run (all cuts at once) and single cuts spread and at line ends
ALL_CUTS = 96
OP_TIMER, OP_TIMEOUT = 1, 2

# auth_http answers, 4 bits each from header bytes 2..5: the low 3 pick the answer, bit 3
# defers it to the next segment boundary (the client goes on sending meanwhile)
ANSWERS = ("retry", "fail", "error", "ok", "sasl", "code", "retry-quiet", "fail-code")
MESSAGES = (b"Invalid login or password", b"", b"Temporary \xff failure", b"nope")
CODES = (b"535 5.7.8", b"454 4.7.0", b"")
SASL = b"eyJzdGF0dXMiOiI0MDEifQ=="


_B64 = re.compile(rb"[A-Za-z0-9+/]{20,}={0,2}")
_SALT = re.compile(rb"<\d+\.\d+@[^>]*>(\r\n)?")


def _unsalt(m: re.Match[bytes]) -> bytes:
    try:
        return b"SALT" if _SALT.fullmatch(base64.b64decode(m.group(), validate=True)) else m.group()
    except ValueError:
        return m.group()


class Broken(AssertionError):
    """An invariant does not hold: the fuzzer saves the input as a crash."""


def check(cond: object, what: str, *detail: object) -> None:
    if not cond:
        raise Broken(what + (": " + " ".join(repr(d)[:300] for d in detail) if detail else ""))


def script(data: bytes) -> tuple[bytes, list[tuple[int, bytes]]]:
    """(knob bytes, [(op, segment bytes)]): the first segment's op is 0."""
    knobs = data[:HEADER].ljust(HEADER, b"\0")
    parts = data[HEADER:].split(SEP)
    segs = [(0, parts[0])]
    for p in parts[1:]:
        segs.append((p[0] if p else 0, p[1:]))
    return knobs, segs


def answers(knobs: bytes) -> list[tuple[str, bool]]:
    out = []
    for b in knobs[2:6]:
        for nib in (b & 15, b >> 4):
            out.append((ANSWERS[nib & 7], bool(nib & 8)))
    return out


def encode(segments: list[bytes], knobs: bytes = b"\0" * HEADER, ops: bytes = b"") -> bytes:
    """A script from its parts (for seeds): segments joined by SEP + op (0 unless given)."""
    out = knobs[:HEADER].ljust(HEADER, b"\0") + segments[0]
    for i, seg in enumerate(segments[1:]):
        out += SEP + bytes([ops[i] if i < len(ops) else 0]) + seg
    return out


# --- the auth_http request: no CR, LF or NUL from a field reaches a header ---------------------

_TEMPLATE = RequestTemplate(b"/auth", b"localhost", [(b"X-Extra", b"v")], False, False)
_HEADER_LINE = re.compile(rb"[A-Za-z][A-Za-z0-9-]*: [^\r\n\0]*")


def check_request(auth: AuthRequest, client_host: bytes | None) -> bytes:
    """The request the engine would send for this AuthRequest (C template), equal to the
    Python reference's, every header line whole: returns it."""
    req = _TEMPLATE.request(auth, b"192.0.2.1", client_host, None, None)
    ref = build_request(
        auth,
        uri_path=b"/auth",
        host_header=b"localhost",
        client_ip=b"192.0.2.1",
        client_host=client_host,
        extra_headers=[(b"X-Extra", b"v")],
        keepalive=False,
    )
    check(req == ref, "C and Python requests differ", req, ref)
    check(req.endswith(b"\r\n\r\n"), "request not ended by an empty line", req)
    lines = req[:-4].split(b"\r\n")
    check(lines[0] == b"GET /auth HTTP/1.0", "request line", lines[0])
    for line in lines[1:]:
        check(_HEADER_LINE.fullmatch(line), "CR, LF or NUL in a header line", line, req)
    return req


def snapshot(auth: AuthRequest) -> tuple[Any, ...]:
    return (
        auth.protocol,
        auth.method,
        auth.user,
        auth.passwd,
        auth.salt,
        auth.login_attempt,
        auth.smtp_helo,
        auth.smtp_from,
        auth.smtp_to,
        auth.tag,
        auth.esmtp,
    )


# --- the driver ------------------------------------------------------------------------------


@dataclass
class Run:
    """What one way of feeding the script produced."""

    out: bytearray = field(default_factory=bytearray)
    events: list[Any] = field(default_factory=list)  # significant action bits, auth snapshots
    closed: bool = False
    close_reason: str | None = None
    relay: bytearray | None = None  # after auth ok: bytes the relay gets, in order
    fed: int = 0

    def same(self) -> tuple[Any, ...]:
        # CRAM-MD5's challenge is a fresh salt each time (make_salt): equal once masked;
        # a close reason quotes the client's bytes as one read brought them (nginx's "client
        # was rejected before greeting"): only its words before the quote must agree
        reason = self.close_reason.split('"')[0] if self.close_reason else self.close_reason
        out = _B64.sub(_unsalt, bytes(self.out))
        events = [(*e[:4], bool(e[4]), *e[5:]) if isinstance(e, tuple) else e for e in self.events]
        return (out, events, self.closed, reason, self.relay)


@dataclass
class Spec:
    """One client machine target's particulars."""

    make: Callable[[bytes], tuple[Machine, int]]  # knobs -> (fresh machine, client buffer)
    replies: Callable[[bytes], bool]  # the whole output is lines of known forms
    check_auth: Callable[[AuthRequest], None]
    client_host: bytes | None = None  # SMTP sends Client-Host
    on_auth: Callable[[Machine, AuthRequest], None] | None = None  # the debuglog target's hook
    on_read: Callable[[bytes], None] | None = None
    on_reply: Callable[[bytes], None] | None = None
    on_starttls: Callable[[], None] | None = None


class Driver:
    def __init__(self, spec: Spec, knobs: bytes, segs: list[tuple[int, bytes]]) -> None:
        self.spec = spec
        self.knobs = knobs
        self.segs = segs

    def run(self, cuts: Callable[[int, bytes], list[bytes]]) -> Run:
        self.m, self.limit = self.spec.make(self.knobs)
        self.r = Run()
        self.answers = answers(self.knobs)
        self.pending: str | None = None  # a deferred auth_http answer
        self.timer = False
        self.drop = False  # STARTTLS: the rest of this segment never reaches the machine
        self.react(self.m.start())
        for i, (op, seg) in enumerate(self.segs):
            if self.r.closed:
                break
            if i and self.r.relay is None:
                self.boundary(op)
            self.drop = False
            for chunk in cuts(i, seg):
                if self.r.closed or self.drop:
                    break
                if self.r.relay is not None:
                    self.r.relay += chunk
                    continue
                self.feed(chunk)
        if self.r.closed:
            self.silent()
        return self.r

    def feed(self, chunk: bytes) -> None:
        m = self.m
        self.r.fed += len(chunk)
        if self.spec.on_read is not None:
            self.spec.on_read(chunk)
        acts = m.feed(chunk)
        if self.pending is not None:
            out = m.take_output()
            check(acts == 0 and not out, "a reply while auth_http runs", acts, out)
            return
        self.react(acts)
        if not self.r.closed and self.r.relay is None and self.pending is None and not self.drop:
            check(m.buffered <= self.limit, "buffered past the client buffer", m.buffered)

    def react(self, acts: int) -> None:
        m, r = self.m, self.r
        while True:
            out = m.take_output()
            check(acts & ~VALID == 0, "unknown action bits", acts)
            check(bool(out) == bool(acts & ACT_SEND), "ACT_SEND and the output disagree", acts, out)
            r.out += out
            check(len(r.out) <= 4096 + 64 * (r.fed + len(r.events)), "output out of bounds")
            if out and self.spec.on_reply is not None:
                self.spec.on_reply(out)
            sig = acts & SIGNIFICANT
            if sig:
                r.events.append(sig)
            if acts & ACT_CLOSE:
                r.closed = True
                r.close_reason = m.close_reason
                return
            check(not (acts & ACT_STARTTLS and acts & ACT_AUTH), "STARTTLS and AUTH at once", acts)
            if acts & ACT_STARTTLS:
                self.drop = True
                if self.spec.on_starttls is not None:
                    self.spec.on_starttls()
                acts = m.on_tls_done()
                continue
            if acts & ACT_TIMER:
                check(m.timer_ms > 0, "a timer of no delay", m.timer_ms)
                self.timer = True
            if acts & ACT_AUTH:
                auth = m.auth
                if not isinstance(auth, AuthRequest):
                    raise Broken("ACT_AUTH without an AuthRequest")
                self.spec.check_auth(auth)
                check_request(auth, self.spec.client_host)
                if self.spec.on_auth is not None:
                    self.spec.on_auth(m, auth)
                r.events.append(snapshot(auth))
                what, deferred = self.answers.pop(0) if self.answers else ("retry", False)
                if deferred:
                    self.pending = what
                    return
                acts = self.answer(what)
                if r.relay is not None:
                    return
                continue
            return

    def answer(self, what: str) -> int:
        m = self.m
        self.pending = None
        if what == "ok":
            acts = m.on_auth_ok()
            out = m.take_output()
            # the engine goes to the backend and reads no action from on_auth_ok
            check(acts == 0 and not out, "on_auth_ok asked for something", acts, out)
            self.r.relay = bytearray(m.take_input())
            return 0
        if what == "error":
            return m.on_auth_error()
        msg = MESSAGES[len(self.r.events) % len(MESSAGES)]
        if what == "sasl":
            return m.on_auth_fail(msg, None, True, SASL)
        if what in ("code", "fail-code"):
            code = CODES[len(self.r.events) % len(CODES)]
            return m.on_auth_fail(msg, code, what == "code")
        return m.on_auth_fail(msg, None, what != "fail")

    def boundary(self, op: int) -> None:
        if self.pending is not None:
            self.react(self.answer(self.pending))
        if self.r.closed or self.r.relay is not None or self.pending is not None:
            return
        if op & 3 == OP_TIMER and self.timer:
            self.timer = False
            self.react(self.m.on_timer())
        elif op & 3 == OP_TIMEOUT:
            # the engine writes any reply and closes, whatever the bits say
            acts = self.m.on_timeout()
            out = self.m.take_output()
            check(bool(out) == bool(acts & ACT_SEND), "ACT_SEND and the output disagree", out)
            self.r.out += out
            self.r.events.append("timeout")
            self.r.closed = True
            self.r.close_reason = "timeout"

    def silent(self) -> None:
        """A closed session says nothing more, whatever comes (late bytes, a late handshake or
        timer; `timeout` is not one: the engine cancels it when it closes)."""
        m = self.m
        for call in (lambda: m.feed(b"a NOOP\r\nQUIT\r\n"), m.on_tls_done, m.on_timer):
            acts = call()
            out = m.take_output()
            check(acts & ~ACT_CLOSE == 0 and not out, "a closed session spoke", acts, out)


def whole(i: int, seg: bytes) -> list[bytes]:
    return [seg]


def bytewise(i: int, seg: bytes) -> list[bytes]:
    return [seg[j : j + 1] for j in range(len(seg))]


def cut_at(at: int, segs: list[tuple[int, bytes]]) -> Callable[[int, bytes], list[bytes]]:
    """One cut at offset `at` of the whole stream (in whichever segment holds it)."""
    where = []
    for i, (_, seg) in enumerate(segs):
        where.append((i, at))
        at -= len(seg)

    def cuts(i: int, seg: bytes) -> list[bytes]:
        off = where[i][1]
        if 0 < off < len(seg):
            return [seg[:off], seg[off:]]
        return [seg]

    return cuts


def ways(segs: list[tuple[int, bytes]]) -> Iterator[Callable[[int, bytes], list[bytes]]]:
    """The ways every script is fed besides one read per segment."""
    yield bytewise
    total = sum(len(s) for _, s in segs)
    if total <= ALL_CUTS:
        for at in range(1, total):
            yield cut_at(at, segs)
        return
    # longer: cuts spread evenly, and around the first line ends (CR|LF, a literal's end)
    stream = b"".join(s for _, s in segs)
    offsets = {total * k // 8 for k in range(1, 8)}
    for m in re.finditer(rb"[\r\n}]", stream[:4096]):
        offsets.update((m.start(), m.end()))
        if len(offsets) > 40:
            break
    for at in sorted(offsets):
        if 0 < at < total:
            yield cut_at(at, segs)


def fuzz_machine(spec: Spec, data: bytes) -> Run:
    """Every invariant of a client machine on one input; returns the one-read run."""
    knobs, segs = script(data)
    drv = Driver(spec, knobs, segs)
    ref = drv.run(whole)
    check(spec.replies(bytes(ref.out)), "a reply of no known form", bytes(ref.out))
    want = ref.same()
    for way in ways(segs):
        got = drv.run(way).same()
        if got != want:
            raise Broken(f"another chunking gives another result:\n{got!r}\n!=\n{want!r}")
    return ref


# --- seeds: the client's bytes of the test suite's transcripts --------------------------------

TESTS = __import__("pathlib").Path(__file__).resolve().parents[2]
SENDS = frozenset(("feed", "feed_chunks", "send", "sendall", "write", "c", "cmd", "login", "chat"))


def transcripts(files: list[str], sends: frozenset[str] = SENDS) -> list[list[bytes]]:
    """Per test function of these files (paths under tests/), the bytes literals it hands
    to a sending call (`pb.feed(b"a1 LOGIN ...")`, `sock.sendall(...)`), in order."""
    import ast

    out = []
    for name in files:
        tree = ast.parse((TESTS / name).read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef):
                continue
            sent: list[bytes] = []
            for call in ast.walk(fn):
                if not isinstance(call, ast.Call):
                    continue
                f = call.func
                fname = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                if fname not in sends:
                    continue
                for arg in call.args:
                    for node in ast.walk(arg):
                        if isinstance(node, ast.Constant) and isinstance(node.value, bytes):
                            sent.append(node.value)
            if sent:
                out.append(sent)
    return out


def machine_seeds(files: list[str], knob_sets: list[bytes]) -> list[bytes]:
    """Each transcript as one segment, and as one segment per send, under each knob set."""
    seeds = []
    for i, sent in enumerate(transcripts(files)):
        knobs = knob_sets[i % len(knob_sets)]
        seeds.append(encode([b"".join(sent)], knobs))
        if len(sent) > 1:
            seeds.append(encode(sent, knob_sets[(i + 1) % len(knob_sets)]))
    return seeds
