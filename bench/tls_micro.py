"""What fastmail's own TLS calls cost (fastmail._tls) against Python's ssl module doing the same
work on the same OpenSSL: server-side CPU per full and per resumed handshake, per GB relayed in
each direction, and per call that finds nothing to read. Both ends run in this process over
socket pairs; only the server side's calls are timed (thread CPU time), with fastmail's client
calls on the other end for both (so the client's cost is the same and not counted).

    python -m bench.tls_micro [--seconds 2] [--key rsa|ecdsa] [--json]

TLSv1.3 with OpenSSL's defaults on both (the client's first suite, TLS_AES_256_GCM_SHA384, and
X25519), an RSA 2048 (or ECDSA P-256) certificate; resumption by ticket (TLSv1.3 PSK) and, for
fastmail, by session ID (TLSv1.2, the shared cache).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trustme

from fastmail._tls import TLS_CODES, TlsStream
from fastmail._tlscache import zone
from fastmail._tlsctx import ClientContext, ServerContext
from fastmail.protocols import PROTOCOLS

OK, WANT_READ, WANT_WRITE = TLS_CODES["OK"], TLS_CODES["WANT_READ"], TLS_CODES["WANT_WRITE"]
CHUNK = 64 * 1024


class Material:
    def __init__(self, key: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="fastmail-tls-micro-"))
        kt = trustme.KeyType.RSA if key == "rsa" else trustme.KeyType.ECDSA
        ca = trustme.CA(key_type=kt)
        self.pem = self.dir / "srv.pem"
        ca.issue_cert("localhost", key_type=kt).private_key_and_cert_chain_pem.write_to_path(
            str(self.pem)
        )

    def ours(self, tls12: bool = False, shared: bool = False) -> ServerContext:
        imap = PROTOCOLS["imap"]
        ctx = ServerContext("imap", ["TLSv1.2"] if tls12 else ["TLSv1.3"], imap.alpn,
                            imap.cert_replies)  # fmt: skip
        ctx.set_ciphers("HIGH:!aNULL:!MD5", False)
        ctx.add_certificate(str(self.pem), str(self.pem), [])
        ctx.set_ecdh_curve("X25519")
        ctx.set_session_cache(
            "cache" if shared else "none", None, zone("micro", 1 << 20) if shared else None, 300
        )
        ctx.set_session_tickets(not shared, [])
        return ctx

    def python(self, tls12: bool = False) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.pem))
        ctx.minimum_version = ctx.maximum_version = (
            ssl.TLSVersion.TLSv1_2 if tls12 else ssl.TLSVersion.TLSv1_3
        )
        ctx.set_ciphers("HIGH:!aNULL:!MD5")
        return ctx


class PyServer:
    """Python's ssl module as the server end, with TlsStream's call shapes."""

    def __init__(self, ctx: ssl.SSLContext, sock: socket.socket) -> None:
        self.obj = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)

    def handshake(self) -> int:
        try:
            self.obj.do_handshake()
            return OK
        except ssl.SSLWantReadError:
            return WANT_READ
        except ssl.SSLWantWriteError:
            return WANT_WRITE

    def readinto(self, buf: bytearray) -> int:
        try:
            return self.obj.recv_into(buf)
        except ssl.SSLWantReadError:
            return WANT_READ

    def write(self, data: Any) -> int:
        try:
            return self.obj.send(data)
        except (ssl.SSLWantWriteError, BlockingIOError):
            return WANT_WRITE

    def close(self) -> None:
        self.obj.close()

    @property
    def reused(self) -> bool:
        return bool(self.obj.session_reused)


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    for s in (a, b):
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    return a, b


def _server(kind: str, ctx: Any, sock: socket.socket) -> Any:
    return TlsStream(ctx, sock.fileno()) if kind == "fastmail" else PyServer(ctx, sock)


def handshakes(kind: str, ctx: Any, client: ClientContext, resume: bool, seconds: float):
    """(server CPU µs per handshake, handshakes) over about `seconds` of server CPU."""
    spent, n, session = 0.0, 0, None
    while spent < seconds:
        a, b = _pair()
        srv = _server(kind, ctx, a)
        cli = TlsStream(client, b.fileno(), b"localhost")
        if session is not None:
            cli.set_session(session)
        rs = rc = WANT_READ
        while rs != OK or rc != OK:
            if rc != OK:
                rc = cli.handshake()
            if rs != OK:
                t = time.thread_time()
                rs = srv.handshake()
                spent += time.thread_time() - t
            assert rs in (OK, WANT_READ, WANT_WRITE) and rc in (OK, WANT_READ, WANT_WRITE)
        if resume:
            # TLSv1.3 tickets arrive after the handshake: the client reads them
            cli.read(1)
            if session is not None:
                assert srv.reused, "not resumed"
            session = cli.session()
        n += 1
        srv.close()
        cli.close()
        a.close()
        b.close()
    return spent / n * 1e6, n


def relay(kind: str, ctx: Any, client: ClientContext, seconds: float) -> dict[str, float]:
    """Server-side CPU per GB read (decrypt) and written (encrypt), and the MB/s that makes."""
    a, b = _pair()
    srv = _server(kind, ctx, a)
    cli = TlsStream(client, b.fileno(), b"localhost")
    rs = rc = WANT_READ
    while rs != OK or rc != OK:
        rc = cli.handshake() if rc != OK else rc
        rs = srv.handshake() if rs != OK else rs
    data = memoryview(os.urandom(CHUNK))
    buf = bytearray(CHUNK)
    out: dict[str, float] = {}
    for direction in ("read", "write"):
        spent, moved = 0.0, 0
        while spent < seconds:
            if direction == "read":
                cli.write(data)
                t = time.thread_time()
                while True:
                    got = srv.readinto(buf)
                    if got <= 0:
                        break
                    moved += got
                spent += time.thread_time() - t
            else:
                t = time.thread_time()
                sent = srv.write(data)
                spent += time.thread_time() - t
                moved += max(sent, 0)
                while cli.readinto(buf) > 0:
                    pass
        out[f"{direction}_cpu_s_per_gb"] = spent / moved * 1e9
        out[f"{direction}_mb_per_cpu_s"] = moved / spent / 1e6
    srv.close()
    cli.close()
    a.close()
    b.close()
    return out


def empty_read(kind: str, ctx: Any, client: ClientContext, calls: int = 200_000) -> float:
    """ns per read that finds nothing (the call an edge-triggered engine makes last)."""
    a, b = _pair()
    srv = _server(kind, ctx, a)
    cli = TlsStream(client, b.fileno(), b"localhost")
    rs = rc = WANT_READ
    while rs != OK or rc != OK:
        rc = cli.handshake() if rc != OK else rc
        rs = srv.handshake() if rs != OK else rs
    buf = bytearray(CHUNK)
    read: Callable[[bytearray], int] = srv.readinto
    t = time.thread_time()
    for _ in range(calls):
        read(buf)
    spent = time.thread_time() - t
    srv.close()
    cli.close()
    a.close()
    b.close()
    return spent / calls * 1e9


def run(seconds: float, key: str) -> dict[str, Any]:
    m = Material(key)
    client = ClientContext(False)
    results: dict[str, Any] = {"key": key, "openssl": ssl.OPENSSL_VERSION}
    for kind in ("fastmail", "python"):
        full = m.ours() if kind == "fastmail" else m.python()
        r: dict[str, Any] = {}
        r["full_us"], _ = handshakes(kind, full, client, False, seconds)
        r["resumed_ticket_us"], _ = handshakes(kind, full, client, True, seconds)
        if kind == "fastmail":
            r["resumed_shared_cache_tls12_us"], _ = handshakes(
                kind, m.ours(tls12=True, shared=True), client, True, seconds
            )
        r.update(relay(kind, full, client, seconds))
        r["empty_read_ns"] = empty_read(kind, full, client, max(1000, int(seconds * 100_000)))
        results[kind] = r
    return results


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="server CPU per figure")
    ap.add_argument("--key", choices=("rsa", "ecdsa"), default="rsa")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    res = run(args.seconds, args.key)
    if args.json:
        print(json.dumps(res, indent=2))
        return
    f, p = res["fastmail"], res["python"]
    print(f"{res['openssl']}, {args.key} key, server-side CPU (fastmail._tls | Python ssl)")
    for name, unit in (
        ("full_us", "µs per full handshake"),
        ("resumed_ticket_us", "µs per resumed handshake (TLSv1.3 ticket)"),
        ("read_cpu_s_per_gb", "CPU s per GB read (decrypt)"),
        ("write_cpu_s_per_gb", "CPU s per GB written (encrypt)"),
        ("empty_read_ns", "ns per read finding nothing"),
    ):
        print(f"  {unit:46} {f[name]:10.3f} | {p[name]:10.3f}   ({f[name] / p[name]:.2f}x)")
    print(
        f"  {'µs per resumed handshake (TLSv1.2 shared cache)':46} "
        f"{f['resumed_shared_cache_tls12_us']:10.1f}"
    )


if __name__ == "__main__":
    main()
