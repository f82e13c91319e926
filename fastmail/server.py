"""Listeners: the sockets `listen` names, and what each accepted connection is served with.

Owns: binding listen sockets (done in the master, before workers fork, as nginx does), and
one `ServerRuntime` per `server {}` a worker serves: the machine profile with its prebuilt
replies, the auth_http client with its keep-alive pool, the resolver, the realip networks.
Must not speak any mail protocol: session.py drives the machines. Mirrors ngx_mail.c
(ngx_mail_optimize_servers) and ngx_mail_core_module.c.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from collections.abc import Callable, Iterable

from fastmail import _imap, _pop3, _smtp
from fastmail.auth_http import AuthHttpClient
from fastmail.conf.model import Config, ListenSocket, ServerConf
from fastmail.log import ErrorLog
from fastmail.proxy_protocol import TrustedNetworks

# The client session machine of a server{}'s protocol: session.py drives any of them.
ClientMachine = _imap.ImapSession | _pop3.Pop3Session | _smtp.SmtpSession


def bind_socket(ls: ListenSocket) -> socket.socket:
    """Creates, binds and listens one socket with the options of its `listen`."""
    lst = ls.listen
    sock = socket.socket(lst.family, socket.SOCK_STREAM)
    try:
        if lst.family != socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if lst.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(lst.ipv6only))
        if lst.rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, lst.rcvbuf)
        if lst.sndbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, lst.sndbuf)
        if lst.so_keepalive is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, int(lst.so_keepalive))
        idle, intvl, cnt = lst.keepalive
        if idle:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        if intvl:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, intvl)
        if cnt:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, cnt)
        if lst.path is not None:
            # nginx removes a stale socket file left by an earlier run
            try:
                if stat.S_ISSOCK(os.stat(lst.path).st_mode):
                    os.unlink(lst.path)
            except FileNotFoundError:
                pass
        sock.bind(lst.sockaddr)
        sock.listen(lst.backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_all(config: Config) -> list[tuple[ListenSocket, socket.socket]]:
    """Binds every listening socket the config plans; closes them all on the first error."""
    if config.mail is None:
        return []
    bound: list[tuple[ListenSocket, socket.socket]] = []
    try:
        for ls in config.mail.sockets:
            bound.append((ls, bind_socket(ls)))
    except OSError:
        for _, s in bound:
            s.close()
        raise
    return bound


class ServerRuntime:
    """What one worker needs to serve one `server {}`: built once, shared by its sessions."""

    __slots__ = (
        "conf", "protocol", "profile", "auth", "resolver", "trusted", "log", "server_name",
        "timeout_s", "proxy_timeout_s", "machine_class",
    )  # fmt: skip

    def __init__(
        self,
        conf: ServerConf,
        loop: asyncio.AbstractEventLoop,
        log: ErrorLog,
        main_log: ErrorLog | None = None,
    ) -> None:
        """`log` is the server's error_log, `main_log` the main one (the resolver's)."""
        self.conf = conf
        self.protocol = conf.protocol
        self.server_name = conf.server_name.encode()
        self.log = log
        self.timeout_s = conf.timeout / 1000
        self.proxy_timeout_s = conf.proxy_timeout / 1000
        tls = conf.ssl_context is not None
        self.profile: _imap.ImapProfile | _pop3.Pop3Profile | _smtp.SmtpProfile
        # called with self.profile: each protocol's class goes with its own profile
        self.machine_class: Callable[..., ClientMachine]
        if conf.protocol == "imap":
            self.profile = _imap.ImapProfile(
                capabilities=[c.encode() for c in conf.imap_capabilities],
                auth_methods=conf.imap_auth,
                starttls=conf.starttls,
                tls_available=tls,
                client_buffer=conf.imap_client_buffer,
                max_errors=conf.max_errors,
                max_commands=conf.max_commands,
                server_name=self.server_name,
            )
            self.machine_class = _imap.ImapSession
        elif conf.protocol == "pop3":
            self.profile = _pop3.Pop3Profile(
                capabilities=[c.encode() for c in conf.pop3_capabilities],
                auth_methods=conf.pop3_auth,
                starttls=conf.starttls,
                tls_available=tls,
                max_errors=conf.max_errors,
                max_commands=conf.max_commands,
                server_name=self.server_name,
            )
            self.machine_class = _pop3.Pop3Session
        else:
            self.profile = _smtp.SmtpProfile(
                capabilities=[c.encode() for c in conf.smtp_capabilities],
                auth_methods=conf.smtp_auth,
                starttls=conf.starttls if tls else "off",
                tls_available=tls,
                client_buffer=conf.smtp_client_buffer,
                max_errors=conf.max_errors,
                max_commands=conf.max_commands,
                server_name=self.server_name,
                greeting_delay=conf.smtp_greeting_delay,
            )
            self.machine_class = _smtp.SmtpSession
        self.resolver = None
        if conf.resolver is not None:
            from fastmail.resolver import Resolver

            self.resolver = Resolver(
                loop,
                servers=[(host, port) for _, host, port in conf.resolver.servers],
                valid_s=conf.resolver.valid,
                ipv4=conf.resolver.ipv4,
                ipv6=conf.resolver.ipv6,
                timeout_s=conf.resolver_timeout / 1000,
                log=main_log or log,
            )
        url = conf.auth_http
        self.auth = AuthHttpClient(
            loop,
            url.host or None,
            url.port,
            url.uri.encode(),
            url.host_header.encode(),
            conf.auth_http_timeout / 1000,
            conf.auth_http_keepalive,
            unix_path=url.path,
            extra_headers=[(k.encode(), v.encode()) for k, v in conf.auth_http_header],
            pass_client_cert=conf.auth_http_pass_client_cert,
            resolver=self.resolver,
        )
        self.trusted = TrustedNetworks.from_entries(conf.set_real_ip_from)

    def close(self) -> None:
        self.auth.close()
        if self.resolver is not None:
            self.resolver.close()


def install_sni(config: Config) -> None:
    """Beyond nginx: server{} blocks sharing one TLS address are chosen by the client's SNI
    name against their server_name; the first one declared is the default."""
    from fastmail import tls

    if config.mail is None:
        return
    for ls in config.mail.sockets:
        groups: dict[str, list[ServerConf]] = {}
        for e in ls.entries:
            if e.ssl and e.server is not None and e.server.ssl_context is not None:
                groups.setdefault(e.addr_text, []).append(e.server)
        for servers in groups.values():
            if len(servers) < 2:
                continue
            sni = tls.SniMap()
            for srv in servers:
                sni.add([srv.server_name], srv.ssl_context, srv)  # type: ignore[arg-type]
            tls.install_sni(servers[0].ssl_context, sni)  # type: ignore[arg-type]


def runtimes_for(
    config: Config, loop: asyncio.AbstractEventLoop, log: ErrorLog
) -> dict[int, ServerRuntime]:
    """One runtime per server block, keyed by id(ServerConf)."""
    servers: Iterable[ServerConf] = config.mail.servers if config.mail else ()
    return {id(s): ServerRuntime(s, loop, log) for s in servers}
