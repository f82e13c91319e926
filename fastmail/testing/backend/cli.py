"""The fake backend's command line: serve the given ports until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import signal
import sys

from fastmail.testing.backend.server import PROTOCOLS, BackendServer


def _user(text: str) -> tuple[str, str]:
    name, sep, password = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError("users are NAME:PASSWORD")
    return name, password


async def _serve(args: argparse.Namespace) -> None:
    users = dict(args.user) if args.user else None
    server = BackendServer(users=users, after_login=args.after_login, maildir=args.maildir)
    ipaddress.ip_address(args.host)
    for proto in PROTOCOLS:
        for port in getattr(args, proto) or ():
            bound = await server.listen(proto, args.host, port, args.proxy_protocol)
            print(f"fake {proto} on {args.host}:{bound}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()
    print(f"fake backend stats: {server.stats}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m fastmail.testing.backend", description="Fake IMAP/POP3/SMTP backend."
    )
    for proto in PROTOCOLS:
        p.add_argument(f"--{proto}", type=int, action="append", metavar="PORT")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--user", type=_user, action="append", help="NAME:PASSWORD (default: any)")
    p.add_argument("--after-login", choices=("echo", "sink"), help="relay-benchmark mode")
    p.add_argument("--proxy-protocol", action="store_true", help="expect a PROXY v1/v2 header")
    p.add_argument("--maildir", help="also write SMTP messages into this Maildir")
    args = p.parse_args(argv)
    if not any(getattr(args, proto) for proto in PROTOCOLS):
        p.error("give at least one of --imap, --pop3, --smtp")
    from fastmail.testing import new_loop

    loop = new_loop()
    try:
        loop.run_until_complete(_serve(args))
    except KeyboardInterrupt:
        pass
    finally:
        loop.close()
    return 0
