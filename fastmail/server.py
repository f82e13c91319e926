"""Listeners: the sockets `listen` names, and what each accepted connection is served with.

Owns: binding listen sockets (done in the master, before workers fork, as nginx does), and
the engine's `Server` for each `server {}` a worker serves (the machine profile with its
prebuilt replies, the backend login settings, the auth_http client, the resolver, the realip
networks) and the `Entry` list each listening socket serves. Must not speak any mail
protocol: the engine (_session.pyx) drives the machines. Mirrors ngx_mail.c
(ngx_mail_optimize_servers) and ngx_mail_core_module.c.
"""

from __future__ import annotations

import os
import socket
import stat

from fastmail import auth_http, metrics
from fastmail._accesslog import Format, Writer
from fastmail._poll import Loop
from fastmail._proxy import TrustedNetworks
from fastmail._report import Entry, Server
from fastmail.conf.model import Config, ListenSocket, ServerConf
from fastmail.log import ErrorLog
from fastmail.protocols import PROTOCOLS


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


def make_server(
    conf: ServerConf,
    loop: Loop,
    log: ErrorLog,
    main_log: ErrorLog | None = None,
    alog: tuple[tuple[Writer, Format], ...] | None = None,
) -> Server:
    """The engine's view of one server{} block, built once per worker. `log` is the
    server's error_log, `main_log` the main one (the resolver's, as nginx's); `alog` its
    access logs (accesslog.Logs.for_server)."""
    proto = PROTOCOLS[conf.protocol]
    srv = Server()
    srv.conf = conf
    srv.profile = proto.profile(conf)
    srv.login_conf = proto.login(conf)
    srv.log = log
    srv.log_level = log.level
    srv.smtp = proto.client_host
    srv.timeout = conf.timeout
    srv.proxy_timeout = conf.proxy_timeout
    # each auth_http URL a request may be sent on to has its own auth_http_timeout
    srv.auth_limit = conf.timeout + conf.auth_http_timeout * (1 + len(conf.auth_http_backups))
    srv.conn_limit = conf.limit_conn_per_ip
    srv.fail_limit = conf.login_fail_limit
    srv.busy_reply = proto.busy.replace(b"%s", conf.server_name.encode())
    srv.throttle_reply = proto.throttled
    srv.proxy_protocol = conf.proxy_protocol
    srv.tls = conf.tls
    srv.next_tries = conf.proxy_next_upstream_tries
    srv.set_series(metrics.session_series(conf))
    srv.alog = alog
    srv.alog_local = alog is not None and any(f.needs_local for _, f in alog)
    srv.alog_name = conf.server_name.encode()
    srv.alog_proto = conf.protocol.encode()
    srv.resolver = None
    if conf.resolver is not None:
        from fastmail.resolver import Resolver

        srv.resolver = Resolver(
            loop,
            servers=[(host, port) for _, host, port in conf.resolver.servers],
            valid_s=conf.resolver.valid,
            ipv4=conf.resolver.ipv4,
            ipv6=conf.resolver.ipv6,
            timeout_s=conf.resolver_timeout / 1000,
            log=main_log or log,
        )
    srv.auth = auth_http.client_for(loop, conf, srv.resolver)
    srv.trusted = TrustedNetworks.from_entries(conf.set_real_ip_from)
    return srv


def close_server(srv: Server) -> None:
    srv.auth.close()
    if srv.resolver is not None:
        srv.resolver.close()


def entries_for(ls: ListenSocket, servers: dict[int, Server]) -> list[Entry]:
    """What a listening socket serves, in the engine's terms (ListenSocket.entry_for's order)."""
    out = []
    for e in ls.entries:
        if e.server is None:
            continue
        entry = Entry()
        entry.server = servers[id(e.server)]
        entry.host = e.host.encode()
        entry.port = e.port
        entry.wildcard = e.wildcard
        entry.ssl = e.ssl
        entry.proxy_protocol = e.proxy_protocol
        entry.addr_text = e.addr_text
        out.append(entry)
    return out
