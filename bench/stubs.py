"""Bench-only auth_http server and IMAP/POP3/SMTP backend, each a process of its own.

Owns: the smallest servers the bench can drive a proxy against when `fastmail.testing` is not
there (or is chosen away with `--servers stub`). They accept any user, answer nginx's
auth_http request with the backend's port, and do just enough backend login for nginx's and
fastmail's proxy modules. After login, users whose name starts with "echo" get every byte
echoed back (the relay scenario); the others get LOGOUT/QUIT. Must not be used by tests of
the proxy: they check nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource

BACKEND_PORTS: dict[str, int] = {}


class Auth(asyncio.Protocol):
    """nginx's auth_http: one request per connection (HTTP/1.0), keep-alive when asked."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, _, self.buf = self.buf.partition(b"\r\n\r\n")
            proto = b"imap"
            keep = False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"auth-protocol":
                    proto = value.strip()
                elif name == b"connection":
                    keep = value.strip().lower() == b"keep-alive"
            port = BACKEND_PORTS.get(proto.decode(), 0)
            self.t.write(
                b"HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\n"
                b"Auth-Port: %d\r\nContent-Length: 0\r\n%s\r\n"
                % (port, b"Connection: keep-alive\r\n" if keep else b"")
            )
            if not keep:
                self.t.close()
                return


class Backend(asyncio.Protocol):
    proto = "imap"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = b""
        self.echo = False
        self.literal = 0
        self.parts: list[bytes] = []
        self.lits: list[bytes] = []
        self.user = b""
        self.t.write(
            {
                "imap": b"* OK bench backend ready\r\n",
                "pop3": b"+OK bench backend ready\r\n",
                "smtp": b"220 bench.backend ESMTP\r\n",
            }[self.proto]
        )

    def data_received(self, data: bytes) -> None:
        if self.echo:
            self.t.write(data)
            return
        self.buf += data
        while not self.echo:
            if self.literal:
                if len(self.buf) < self.literal:
                    return
                self.lits.append(self.buf[: self.literal])
                self.buf = self.buf[self.literal :]
                self.literal = 0
            line, sep, rest = self.buf.partition(b"\n")
            if not sep:
                return
            self.buf = rest
            line = line.rstrip(b"\r")
            if self.proto == "imap" and line.endswith(b"}") and b"{" in line:
                # nginx logs in with literals: "a LOGIN {5}", "user5 {4}", "pass"
                self.parts.append(line)
                self.literal = int(line[line.rindex(b"{") + 1 : -1].rstrip(b"+"))
                if not line.endswith(b"+}"):
                    self.t.write(b"+ OK\r\n")
                continue
            self.parts.append(line)
            self.command(self.parts[0], self.lits)
            self.parts, self.lits = [], []
        if self.buf:
            self.t.write(self.buf)
            self.buf = b""

    def logged_in(self) -> None:
        self.echo = self.user.startswith(b"echo")

    def command(self, line: bytes, lits: list[bytes]) -> None:
        w = self.t.write
        words = line.split(b" ")
        if self.proto == "imap":
            tag = words[0]
            cmd = words[1].upper() if len(words) > 1 else b""
            if cmd == b"LOGIN":
                self.user = lits[0] if lits else (words[2] if len(words) > 2 else b"")
                w(tag + b" OK LOGIN completed\r\n")
                self.logged_in()
            elif cmd == b"LOGOUT":
                w(b"* BYE\r\n" + tag + b" OK LOGOUT completed\r\n")
                self.t.close()
            else:
                w(tag + b" OK\r\n")
        elif self.proto == "pop3":
            cmd = words[0].upper()
            if cmd == b"USER":
                self.user = words[1] if len(words) > 1 else b""
                w(b"+OK\r\n")
            elif cmd == b"PASS":
                w(b"+OK logged in\r\n")
                self.logged_in()
            elif cmd == b"QUIT":
                w(b"+OK bye\r\n")
                self.t.close()
            else:
                w(b"+OK\r\n")
        else:
            cmd = words[0].upper()
            if cmd in (b"EHLO", b"HELO"):
                w(b"250 bench.backend\r\n")
                if self.user:
                    self.logged_in()
            elif cmd == b"XCLIENT":
                for word in words[1:]:
                    if word.upper().startswith(b"LOGIN="):
                        self.user = word[6:]
                w(b"220 bench.backend ESMTP\r\n")
            elif cmd == b"QUIT":
                w(b"221 bye\r\n")
                self.t.close()
            else:
                w(b"250 OK\r\n")


def _factory(proto: str) -> type[Backend]:
    return type(f"{proto.title()}Backend", (Backend,), {"proto": proto})


async def _serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    servers = []
    if args.role == "auth":
        for item in args.backends.split(","):
            proto, _, port = item.partition("=")
            BACKEND_PORTS[proto] = int(port)
        servers.append(await loop.create_server(Auth, "127.0.0.1", args.port, backlog=4096))
    else:
        for item in args.backends.split(","):
            proto, _, port = item.partition("=")
            servers.append(
                await loop.create_server(_factory(proto), "127.0.0.1", int(port), backlog=4096)
            )
    print("ready", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.stubs")
    p.add_argument("role", choices=["auth", "backend"])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--backends", required=True, help="imap=PORT,pop3=PORT,smtp=PORT")
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop

        uvloop.run(_serve(args))
    except ImportError:  # pragma: no cover
        asyncio.run(_serve(args))
    os._exit(0)


if __name__ == "__main__":
    main()
