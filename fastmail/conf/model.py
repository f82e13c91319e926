"""The typed result of loading a config: what the rest of fastmail reads.

Owns the plain dataclasses (Config, MainConf, EventsConf, MailConf, ServerConf, Listen,
ListenSocket, LogTarget, Resolver, AuthHttpUrl, SessionCache). Every value here is final: merged
from mail{} into server{}, nginx's defaults applied, paths absolute, times in ms (or s where
named `_sec`). Nothing here parses text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastmail._tlsctx import ClientContext, ServerContext

# nginx's log levels, index = severity (NGX_LOG_EMERG = 1 ... NGX_LOG_DEBUG = 8)
LEVELS = ("", "emerg", "alert", "crit", "error", "warn", "notice", "info", "debug")


@dataclass(slots=True)
class LogTarget:
    """One error_log: kind is "file", "stderr" or "syslog"; `level` indexes LEVELS."""

    kind: str
    path: str | None = None  # absolute file path for kind == "file"
    level: int = 4
    debug: tuple[str, ...] = ()  # debug_core, debug_mail, ... when given
    syslog_server: tuple[int, str, int] | None = None  # (family, host, port)
    syslog_facility: str = "local7"
    syslog_severity: str = "info"
    syslog_tag: str = "nginx"
    syslog_nohostname: bool = False


@dataclass(slots=True)
class LogFormat:
    """A log_format: `parts` are literal texts and field names (e.g. "remote_addr"), in
    order; `json` is escape=json (else nginx's default escaping)."""

    name: str
    json: bool
    parts: list[tuple[str, str | None]]  # (text, None) or ("", field)


@dataclass(slots=True)
class AccessLog:
    """One access_log: a file or a syslog server, its format, its buffering."""

    name: str  # as written: the path or "syslog:..." (the `log` label of its metrics)
    path: str | None  # absolute, for a file
    syslog: LogTarget | None  # kind "syslog", for a syslog server
    format: LogFormat
    buffer: int = 0  # bytes; 0: each line is written at once
    flush: int = 0  # ms; 0: when the buffer is full (and at exit, reopen)


@dataclass(slots=True)
class MainConf:
    worker_processes: int = 1  # `auto` resolved to the CPU count
    error_log: list[LogTarget] = field(default_factory=list)
    pid: str | None = None  # absolute; None with freenginx's `pid off`
    daemon: bool = True
    master_process: bool = True
    user: tuple[str, str] | None = None  # (user, group); None: not set (root start uses nobody)
    worker_rlimit_nofile: int | None = None
    worker_shutdown_timeout: int | None = None  # ms
    env: list[str] = field(default_factory=list)
    load_module: list[str] = field(default_factory=list)  # accepted and ignored
    working_directory: str | None = None
    worker_priority: int = 0
    lock_file: str | None = None
    timer_resolution: int = 0  # ms
    metrics_listen: Listen | None = None  # fastmail: the Prometheus listener; None: off


@dataclass(slots=True)
class EventsConf:
    worker_connections: int = 512
    use: str | None = None  # "epoll" or None (best available)
    multi_accept: bool = False
    accept_mutex: bool = False
    accept_mutex_delay: int = 500  # ms


@dataclass(slots=True)
class Listen:
    """One listen address (a `listen` with a host resolving to N addresses gives N of these)."""

    family: int  # socket.AF_INET, AF_INET6 or AF_UNIX
    host: str  # "0.0.0.0", "127.0.0.1", "::1"; "" for unix sockets
    port: int  # 0 for unix sockets, and for a listen without a port (kernel-chosen)
    path: str | None  # unix socket path
    addr_text: str  # nginx's normalized text: "0.0.0.0:143", "[::1]:993", "unix:/run/x.sock"
    wildcard: bool = False
    ssl: bool = False  # TLS on connect (listen ... ssl, or the server's deprecated `ssl on`)
    proxy_protocol: bool = False  # expect a PROXY header from the client
    bind: bool = False  # a socket of its own (explicit, or implied by the options below)
    backlog: int = 511
    rcvbuf: int | None = None
    sndbuf: int | None = None
    ipv6only: bool = True
    so_keepalive: bool | None = None  # None: OS default; True: on; False: off
    keepalive: tuple[int, int, int] = (0, 0, 0)  # (idle s, interval s, count); 0 = OS default
    file: str = ""
    line: int = 0
    server: ServerConf | None = field(default=None, repr=False, compare=False)

    @property
    def sockaddr(self) -> tuple[str, int] | str:
        return self.path if self.path is not None else (self.host, self.port)


@dataclass(slots=True)
class ListenSocket:
    """One listening socket as ngx_mail_optimize_servers plans it: `listen` owns the bind
    address and options, `entries` are the addresses it serves; pick the entry whose host
    equals getsockname()'s, else the wildcard one (that chooses the server and the
    ssl/proxy_protocol flags)."""

    listen: Listen
    entries: list[Listen]

    def entry_for(self, local_host: str) -> Listen:
        for e in self.entries:
            if e.host == local_host and not e.wildcard:
                return e
        for e in self.entries:
            if e.wildcard:
                return e
        return self.entries[0]


@dataclass(slots=True)
class Resolver:
    servers: list[tuple[int, str, int]]  # (family, address, port)
    valid: int | None = None  # seconds; None: use the DNS TTL
    ipv4: bool = True
    ipv6: bool = True


@dataclass(slots=True)
class AuthHttpUrl:
    url: str  # as written
    family: int
    host: str  # address to connect to (first address of the name), "" for unix
    port: int
    path: str | None  # unix socket path
    uri: str  # "/" by default; may start with "?"
    host_header: str  # host text without the port; "localhost" for unix sockets
    tls: bool = False  # fastmail: https://


@dataclass(slots=True)
class SessionCache:
    mode: str = "none"  # "off", "none" or "cache"
    builtin: int | None = None  # builtin:N (None: not set; -1: builtin with the default size)
    shared_name: str | None = None
    shared_size: int = 0
    fixed: bool = False  # off/none/builtin given in this context: a zone does not change mode


@dataclass(frozen=True, slots=True)
class ConnLimit:
    count: int  # connections open at once from one client address
    ipv6_prefix: int  # IPv6 clients are counted by this prefix (bits)


@dataclass(frozen=True, slots=True)
class LoginFailLimit:
    count: int  # failed logins (per client address, and per login name) before throttling
    window: int  # ms: failures older than this are forgotten
    delay: int  # ms: the cap of the growing delay before each further attempt
    block: int  # ms: once failures reach twice `count`, logins are refused this long
    ipv6_prefix: int


@dataclass(slots=True)
class ServerConf:
    """One mail server{} after merging with mail{} (fields named after the directives)."""

    file: str
    line: int  # the line of the server's "{"
    protocol: str  # "imap" | "pop3" | "smtp" | "sieve"
    listens: list[Listen]
    # core
    timeout: int  # ms, the whole pre-login dialogue
    server_name: str
    error_log: list[LogTarget]
    resolver: Resolver | None
    resolver_timeout: int  # ms
    max_errors: int
    max_commands: int  # freenginx; 0 = unlimited
    # auth_http
    auth_http: AuthHttpUrl
    auth_http_timeout: int  # ms
    auth_http_header: list[tuple[str, str]]
    auth_http_pass_client_cert: bool
    auth_http_keepalive: int  # fastmail: idle keep-alive connections kept; 0 = nginx's HTTP/1.0
    # proxy
    proxy: bool
    proxy_buffer: int
    proxy_timeout: int  # ms
    proxy_pass_error_message: bool
    xclient: bool
    proxy_smtp_auth: bool
    proxy_protocol: str  # to the backend: "off" | "on" | "v2"
    proxy_pipelining: bool  # fastmail: one-line IMAP LOGIN, pipelined SMTP MAIL/RCPT
    proxy_smtp_auth_method: str  # fastmail: "plain" | "login"
    proxy_client_id: bool  # fastmail: IMAP ID, POP3 XCLIENT, the client's SMTP HELO name
    # imap
    imap_client_buffer: int
    imap_capabilities: list[str]
    imap_auth: list[str]  # keywords in nginx's bit order: plain login cram-md5 external ...
    # pop3
    pop3_capabilities: list[str]
    pop3_auth: list[str]  # plain apop cram-md5 external ... (plain implies SASL LOGIN)
    # smtp
    smtp_client_buffer: int
    smtp_greeting_delay: int  # ms
    smtp_capabilities: list[str]
    smtp_auth: list[str]  # plain login cram-md5 external none ...
    # sieve (fastmail: ManageSieve)
    sieve_client_buffer: int
    sieve_capabilities: list[str]
    sieve_auth: list[str]  # plain login external xoauth2 oauthbearer
    # ssl
    ssl: bool  # the deprecated `ssl on` (already folded into Listen.ssl)
    starttls: str  # "off" | "on" | "only"
    ssl_certificate: list[str]
    ssl_certificate_key: list[str]
    ssl_password_file: str | None
    ssl_dhparam: str | None
    ssl_ecdh_curve: str
    ssl_protocols: list[str]
    ssl_ciphers: str
    ssl_prefer_server_ciphers: bool
    ssl_session_cache: SessionCache
    ssl_session_tickets: bool
    ssl_session_ticket_key: list[str]
    ssl_session_timeout: int  # seconds
    ssl_verify_client: str  # "off" | "on" | "optional" | "optional_no_ca"
    ssl_verify_depth: int
    ssl_client_certificate: str | None
    ssl_trusted_certificate: str | None
    ssl_crl: str | None
    ssl_conf_command: list[tuple[str, str]]
    # the same settings as fastmail's own OpenSSL context (the engine's); owner = this server
    tls: ServerContext | None = field(default=None, repr=False, compare=False)
    tls_backend: ClientContext | None = field(default=None, repr=False, compare=False)
    # fastmail: TLS to the backend
    proxy_ssl: str = "off"  # "off" | "on" | "starttls"
    proxy_ssl_verify: bool = False
    proxy_ssl_trusted_certificate: str | None = None
    proxy_ssl_name: str | None = None
    # realip
    set_real_ip_from: list[str] = field(default_factory=list)  # CIDRs ("10.0.0.0/8") and "unix:"
    # fastmail: auth_http beyond nginx
    auth_http_backups: list[AuthHttpUrl] = field(default_factory=list)  # auth_http's further URLs
    auth_http_send: list[str] = field(default_factory=list)  # "client_port", "server_addr"
    auth_http_cache: tuple[int, int, int] | None = None  # (entries, valid ms, fail ms)
    auth_http_ssl_verify: bool = True
    auth_http_ssl_trusted_certificate: str | None = None
    auth_http_tls: ClientContext | None = field(default=None, repr=False, compare=False)
    # fastmail: backend failover through auth_http (1: nginx's one backend per login)
    proxy_next_upstream_tries: int = 1
    # fastmail: the access log (empty: off)
    access_log: list[AccessLog] = field(default_factory=list)
    # fastmail: abuse limits (conf/guard.py), None when off
    limit_conn_per_ip: ConnLimit | None = None
    login_fail_limit: LoginFailLimit | None = None


@dataclass(slots=True)
class MailConf:
    servers: list[ServerConf]
    sockets: list[ListenSocket]


@dataclass(slots=True)
class Config:
    path: str  # the main config file as opened (a relative -c under the prefix, once)
    prefix: str  # ends with "/"
    conf_prefix: str  # directory of `path`, ends with "/"
    main: MainConf
    events: EventsConf
    mail: MailConf | None
    files: list[tuple[str, bytes]]  # every file read, in first-open order (for -T)
    warnings: list[str] = field(default_factory=list)  # nginx's [warn] texts, with locations
    notices: list[str] = field(default_factory=list)  # [notice] texts (http{} not served)
