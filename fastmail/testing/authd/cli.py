"""The reference auth server's command line: serve, or manage the user database."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import signal
import ssl
import sys

from fastmail.testing.authd.messages import AuthQuery, Reply, load_rules
from fastmail.testing.authd.server import AuthServer
from fastmail.testing.authd.users import DEFAULT_USER, PROTOCOLS, Backend, UserDB


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
    tls = None
    if args.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    if args.listen.startswith("unix:"):
        await server.start(path=args.listen[5:], tls=tls)
    else:
        be = Backend.parse(args.listen)
        await server.start(be.host, be.port, tls=tls)
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
            f"--{proto}",
            type=Backend.parse,
            action="append",
            metavar="HOST:PORT",
            help=f"{proto} backend; repeated: the next ones, handed out in order when the "
            "proxy reports the earlier ones down (Auth-Failed-Server)",
        )


def _shown(bes: list[Backend]) -> str:
    return ",".join(map(str, bes))


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
    p.add_argument("--tls-cert", help="serve https with this certificate chain (PEM)")
    p.add_argument("--tls-key", help="the key of --tls-cert (PEM; default: in the cert file)")
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
                    db.set_backend(DEFAULT_USER, proto, getattr(args, proto))
        elif args.command == "domain":
            db.set_domain(args.domain, args.backend)
        elif args.command == "list":
            for name, plain, bes in db.users():
                routes = " ".join(f"{k}={_shown(v)}" for k, v in sorted(bes.items()))
                print(f"{name}{' (plain stored)' if plain else ''} {routes}".rstrip())
            for proto, defaults in sorted(db.defaults().items()):
                print(f"default {proto}={_shown(defaults)}")
            for domain, be in sorted(db.domains().items()):
                print(f"domain {domain} smtp={be}")
    finally:
        db.close()
    return 0
