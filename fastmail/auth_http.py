"""auth_http: which backend, for which credentials (ngx_mail_auth_http_module).

Owns the auth_http client's configuration (`client_for` makes the engine's C client,
fastmail/_auth.pyx, from a server block's config) and the Python reference of the protocol
that client speaks in C (fastmail/_authreq.pyx, _authproto.pyx): the request bytes nginx sends
(`build_request`), the reading of an answer (`ResponseReader` on httptools, which also reads
for the C client every answer its fast path does not take), and nginx's header rules
(`interpret`). tests/unit/test_auth_proto.py holds the C code to these.
Must not do I/O: the C client does.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import httptools

from fastmail._auth import AuthClient
from fastmail._authcache import AuthCache
from fastmail._authproto import MAX_HEADER_BLOCK
from fastmail._authurl import Target

if TYPE_CHECKING:
    from fastmail._core import AuthRequest
    from fastmail._poll import Loop
    from fastmail.conf.model import AuthHttpUrl, ServerConf
    from fastmail.resolver import Resolver

# MAX_HEADER_BLOCK (from the C side, which defines the limits): nginx reads the answer into
# one 1024-byte buffer, status line and headers included; a longer block fails the login with
# nothing logged at info or above.

Status = Literal["ok", "fail", "wait", "error"]


@dataclass(slots=True)
class AuthResult:
    """What the auth server decided. `user`/`passwd` are None unless Auth-User/Auth-Pass came
    (raw, not percent-decoded). For "ok", `server`/`port` are the Auth-Server/Auth-Port texts
    (the backend's display name is `server:port`) and `addr` the address to connect to.
    For "fail", `error_message` is the Auth-Status text, `error_code` the SMTP Auth-Error-Code,
    `wait` the Auth-Wait seconds (0: reply and close). `log_message`/`log_level` is nginx's log
    line without the ` while in http auth state, ...` suffix, or None when nginx logs nothing."""

    status: Status
    server: bytes | None = None
    port: int | None = None
    addr: str | None = None
    user: bytes | None = None
    passwd: bytes | None = None
    error_message: bytes | None = None
    error_code: bytes | None = None
    sasl_error: bytes | None = None
    wait: int = 0
    log_message: str | None = None
    log_level: str | None = None
    ssl_backend: bytes | None = None  # fastmail: Auth-SSL-Backend (off | on | starttls)
    backend_auth: bytes | None = None  # fastmail: Auth-SMTP-Auth-Method (off | plain | login)


# --- the request (ngx_mail_auth_http_create_request) -----------------------------------------

_ESCAPE = bytes(range(0x21)) + b"%"
_ESCAPE_RE = re.compile(b"[" + re.escape(_ESCAPE) + b"]")


def _hex_escape(m: re.Match[bytes]) -> bytes:
    return b"%%%02X" % m.group()[0]


def escape(value: bytes) -> bytes:
    """nginx's NGX_ESCAPE_MAIL_AUTH: 0x00-0x20 and '%' as %XX (upper-case); all else raw."""
    return _ESCAPE_RE.sub(_hex_escape, value)


# Mainline (1.29.1) sends Auth-Salt only for these, and then forgets the password.
_SALTED = (b"apop", b"cram-md5")


def build_request(
    auth: AuthRequest,
    *,
    uri_path: bytes,
    host_header: bytes,
    client_ip: bytes,
    client_host: bytes | None,
    extra_headers: list[tuple[bytes, bytes]],
    ssl_info: dict[str, bytes] | None = None,
    pass_client_cert: bool = False,
    keepalive: bool,
    proxy_protocol: tuple[bytes, int, bytes, int] | None = None,
    client_port: int | None = None,
    server_addr: tuple[bytes, int] | None = None,
    failed: list[bytes] | None = None,
) -> bytes:
    """The auth_http request, line for line as ngx_mail_auth_http_create_request writes it.

    `client_host` None means no Client-Host line (IMAP/POP3); SMTP always passes one (the
    resolver's answer or b"[UNAVAILABLE]"). `proxy_protocol` is (src addr text, src port,
    dst addr text, dst port) from a PROXY header. `ssl_info` keys: protocol, cipher, and when
    ssl_verify_client is on: verify, subject, issuer, serial, fingerprint, cert (PEM).

    keepalive=False gives nginx's bytes exactly. keepalive=True (beyond nginx) changes only
    `HTTP/1.0` to `HTTP/1.1` and adds `Connection: keep-alive` as the last line before the
    empty line, so every nginx line keeps its place.

    Beyond nginx, after nginx's lines and before the auth_http_header ones: `client_port`
    (Client-Port), `server_addr` (Server-IP, Server-Port: where the client connected), and for
    a backend failover `failed` (one Auth-Failed-Server per backend that failed, then
    Auth-Backend-Attempt: the try this answer is for).
    """
    out = [
        b"GET ",
        uri_path or b"/",
        b" HTTP/1.1\r\n" if keepalive else b" HTTP/1.0\r\n",
        b"Host: ",
        host_header,
        b"\r\nAuth-Method: ",
        auth.method,
        b"\r\nAuth-User: ",
        escape(auth.user),
        b"\r\nAuth-Pass: ",
        escape(auth.passwd),
        b"\r\n",
    ]
    if auth.salt and auth.method in _SALTED:
        out += (b"Auth-Salt: ", auth.salt)  # the salt carries its own CRLF
    out += (
        b"Auth-Protocol: ",
        auth.protocol,
        b"\r\nAuth-Login-Attempt: %d\r\nClient-IP: " % auth.login_attempt,
        client_ip,
        b"\r\n",
    )
    if client_host is not None:
        out += (b"Client-Host: ", client_host, b"\r\n")
    if proxy_protocol is not None:
        src, sport, dst, dport = proxy_protocol
        out.append(
            b"Proxy-Protocol-Addr: %s\r\nProxy-Protocol-Port: %d\r\n"
            b"Proxy-Protocol-Server-Addr: %s\r\nProxy-Protocol-Server-Port: %d\r\n"
            % (src, sport, dst, dport)
        )
    if auth.method == b"none":
        out += (
            b"Auth-SMTP-Helo: ",
            auth.smtp_helo,
            b"\r\nAuth-SMTP-From: ",
            auth.smtp_from,
            b"\r\nAuth-SMTP-To: ",
            auth.smtp_to,
            b"\r\n",
        )
    if ssl_info is not None:
        out.append(b"Auth-SSL: on\r\n")
        for key, name in ((b"protocol", b"Protocol"), (b"cipher", b"Cipher")):
            value = ssl_info.get(key.decode())
            if value:
                out += (b"Auth-SSL-", name, b": ", value, b"\r\n")
        verify = ssl_info.get("verify")
        if verify:
            out += (b"Auth-SSL-Verify: ", verify, b"\r\n")
            for key, name in (
                (b"subject", b"Subject"),
                (b"issuer", b"Issuer"),
                (b"serial", b"Serial"),
                (b"fingerprint", b"Fingerprint"),
            ):
                value = ssl_info.get(key.decode())
                if value:
                    out += (b"Auth-SSL-", name, b": ", value, b"\r\n")
            cert = ssl_info.get("cert")
            if pass_client_cert and cert:
                out += (b"Auth-SSL-Cert: ", escape(cert), b"\r\n")
    if client_port is not None:
        out.append(b"Client-Port: %d\r\n" % client_port)
    if server_addr is not None:
        out.append(b"Server-IP: %s\r\nServer-Port: %d\r\n" % server_addr)
    if failed:
        out += [b"Auth-Failed-Server: %s\r\n" % f for f in failed]
        out.append(b"Auth-Backend-Attempt: %d\r\n" % (len(failed) + 1))
    for name, value in extra_headers:
        out += (name, b": ", value, b"\r\n")
    if keepalive:
        out.append(b"Connection: keep-alive\r\n")
    out.append(b"\r\n")
    return b"".join(out)


# --- the response (ngx_mail_auth_http_read_handler and the parsers it calls) -----------------

_NAME_RE = re.compile(rb"[A-Za-z0-9][A-Za-z0-9-]*\Z")
_STATUS_RE = re.compile(rb"HTTP/1\.[01] [1-9][0-9][0-9](?: [^\r\n]*)?\r?\n\Z")
_SYNTH_10 = b"HTTP/1.0 200 OK\r\n"


class ResponseReader:
    """Reads one auth_http answer. nginx's rules decide what the headers mean (status line
    skipped, names letters/digits/'-', trailing spaces cut, 1024-byte cap); httptools does the
    HTTP framing (line ends, where the body ends, whether the connection may be reused).

    feed() returns True once the header block is complete or an error is known; then
    `error` (None, "invalid response", "invalid header", "too big") and `headers` are set.
    After that, keep calling feed() with later bytes to learn `message_complete`."""

    __slots__ = (
        "_pending",
        "_parser",
        "_header_bytes",
        "_synthetic",
        "headers",
        "error",
        "headers_complete",
        "message_complete",
        "body_bytes",
        "keep_alive",
        "received",
        "status_code",
        "_server_keep_alive",
    )

    def __init__(self) -> None:
        self._pending = b""
        self._parser: httptools.HttpResponseParser | None = None
        self._header_bytes = 0
        self._synthetic = False
        self.headers: list[tuple[bytes, bytes]] = []
        self.error: str | None = None
        self.headers_complete = False
        self.message_complete = False
        self.body_bytes = 0
        self.keep_alive = False
        self.received = 0
        self.status_code = 0  # 0: no status line (nginx reads headers from the first byte)
        self._server_keep_alive = False

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if self.error is None and not _NAME_RE.match(name):
            self.error = "invalid header"
        self.headers.append((name, value.rstrip(b" ")))

    def on_headers_complete(self) -> None:
        self.headers_complete = True
        # llhttp resets this once the message is complete, so read it now.
        assert self._parser is not None
        self._server_keep_alive = self._parser.should_keep_alive()
        if not self._synthetic:
            self.status_code = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)

    def on_message_complete(self) -> None:
        self.message_complete = True

    def _start(self) -> bool:
        """Skips the status line as nginx does; False while more bytes are needed."""
        data = self._pending
        if len(data) < 5 and b"HTTP/"[: len(data)] == data:
            return False
        parser = httptools.HttpResponseParser(self)
        parser.set_dangerous_leniencies(lenient_headers=True, lenient_optional_cr_before_lf=True)
        self._parser = parser
        if not data.startswith(b"HTTP/"):
            # nginx reads headers from the first byte; no framing, so no reuse.
            self._synthetic = True
            self._feed_parser(_SYNTH_10, count=False)
            return True
        lf = data.find(b"\n")
        cr = data.find(b"\r", 0, lf if lf >= 0 else len(data))
        if 0 <= cr and cr + 1 < len(data) and data[cr + 1] != 0x0A:
            self.error = "invalid response"
            return True
        if lf < 0:
            if len(data) > MAX_HEADER_BLOCK:
                self.error = "too big"
                return True
            self._parser = None
            return False
        line = data[: lf + 1]
        self._header_bytes = len(line)
        self._pending = data[lf + 1 :]
        if _STATUS_RE.match(line):
            self._feed_parser(line, count=False)
        else:
            # nginx ignores the status line whatever it holds; httptools would not.
            self._synthetic = True
            self._feed_parser(_SYNTH_10, count=False)
        return True

    def _feed_parser(self, data: bytes, count: bool = True) -> None:
        assert self._parser is not None
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError:
            if not self.headers_complete:
                self.error = "invalid header"
            else:
                self.message_complete = False
                self.keep_alive = False
                self._synthetic = True

    def feed(self, data: bytes) -> bool:
        self.received += len(data)
        if self.headers_complete or self.error:
            if self._parser is not None and not self.error:
                self._feed_parser(data)
                self._update_keep_alive()
            return True
        if self._parser is None:
            self._pending += data
            if not self._start():
                return False
            if self.error:
                return True
            data, self._pending = self._pending, b""
        # a status line alone may already be longer than nginx's buffer
        room = max(MAX_HEADER_BLOCK - self._header_bytes, 0)
        head = data[:room]
        self._header_bytes += len(head)
        self._feed_parser(head)
        if self.error:
            return True
        if self.headers_complete:
            if len(data) > room:
                self._feed_parser(data[room:])
            self._update_keep_alive()
            return True
        if self._header_bytes >= MAX_HEADER_BLOCK:
            self.error = "too big"
            return True
        return False

    def _update_keep_alive(self) -> None:
        parser = self._parser
        self.keep_alive = (
            not self._synthetic
            and self.message_complete
            and parser is not None
            and self._server_keep_alive
        )


def _parse_ipv4(text: bytes) -> str | None:
    """ngx_inet_addr: digits and exactly three dots, parts <= 255, an empty part is 0,
    and 255.255.255.255 (INADDR_NONE) is refused."""
    parts = text.split(b".")
    if len(parts) != 4:
        return None
    nums = []
    for part in parts:
        if part and not part.isdigit():
            return None
        n = int(part) if part else 0
        if n > 255:
            return None
        nums.append(n)
    if nums == [255, 255, 255, 255]:
        return None
    return ".".join(map(str, nums))


_ADDR_CACHE: dict[bytes, str | None] = {}  # Auth-Server texts seen (a few backends, mostly)


def parse_server_addr(text: bytes) -> str | None:
    """Auth-Server as nginx accepts it: an IPv4 dotted quad or IPv6 text without brackets."""
    addr = _ADDR_CACHE.get(text, False)
    if addr is False:
        addr = _parse_server_addr(text)
        if len(_ADDR_CACHE) < 4096:
            _ADDR_CACHE[text] = addr
    return addr  # type: ignore[return-value]


def _parse_server_addr(text: bytes) -> str | None:
    if not text or not text.isascii():
        return None
    v4 = _parse_ipv4(text)
    if v4 is not None:
        return v4
    if b"." in text and b":" not in text:
        return None
    try:
        return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, text.decode()))
    except (OSError, ValueError):
        return None


def _atoi(text: bytes) -> int | None:
    """ngx_atoi: decimal digits only, no sign, no empty string, no overflow."""
    if not text or not text.isdigit() or not text.isascii() or len(text) > 18:
        return None
    return int(text)


_HOSTNAME_RE = re.compile(rb"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?\Z")


def interpret(
    headers: list[tuple[bytes, bytes]],
    auth: AuthRequest,
    peer: str,
    *,
    allow_names: bool = False,
) -> AuthResult:
    """ngx_mail_auth_http_process_headers over parsed headers (for a reader without error):
    the headers it knows, then its decision in its order. `allow_names`
    (beyond nginx, when a resolver exists) lets Auth-Server be a host name; then `addr` is
    None and the caller resolves `server`."""
    smtp = auth.protocol == b"smtp"
    fail: bytes | None = None
    wait_flag = False
    server = port = user = passwd = wait_txt = code = sasl = ssl_backend = None
    backend_auth = None
    for raw_name, value in headers:
        name = raw_name.lower()
        if not name.startswith(b"auth-"):
            continue  # Content-Length, Connection, ...
        if name == b"auth-status":
            if value == b"OK":
                pass
            elif value == b"WAIT":
                wait_flag = True
            elif value or not smtp:
                fail = value
        elif name == b"auth-server":
            server = value
        elif name == b"auth-port":
            port = value
        elif name == b"auth-user":
            user = value
        elif name == b"auth-pass":
            passwd = value
        elif name == b"auth-wait":
            if _atoi(value) is not None:
                wait_txt = value
        elif name == b"auth-error-code":
            if smtp:
                code = value
        elif name == b"auth-error-sasl":
            sasl = value
        elif name == b"auth-ssl-backend":
            ssl_backend = value
        elif name == b"auth-smtp-auth-method":
            if smtp:
                backend_auth = value
    wait = _atoi(wait_txt) if wait_txt is not None else 0
    wait = wait or 0
    if fail is not None:
        text = fail.decode("utf-8", "backslashreplace")
        return AuthResult(
            "fail",
            error_message=fail,
            error_code=code,
            sasl_error=sasl,
            wait=wait,
            log_message=f'client login failed: "{text}"',
            log_level="info",
            user=user,
            passwd=passwd,
        )
    if wait_flag:
        return AuthResult("wait", wait=wait, user=user, passwd=passwd)
    if not server or not port:
        return _error(f"auth http server {peer} did not send server or port", user, passwd)
    if not smtp and passwd is None and _no_password(auth):
        return _error(f"auth http server {peer} did not send password", user, passwd)
    addr = parse_server_addr(server)
    if addr is None and not (allow_names and _HOSTNAME_RE.match(server)):
        v = server.decode("utf-8", "backslashreplace")
        return _error(f'auth http server {peer} sent invalid server address:"{v}"', user, passwd)
    n = _atoi(port)
    if n is None or not 1 <= n <= 65535:
        v = port.decode("utf-8", "backslashreplace")
        return _error(f'auth http server {peer} sent invalid server port:"{v}"', user, passwd)
    if backend_auth is not None:
        if backend_auth.lower() not in _BACKEND_AUTH:
            v = backend_auth.decode("utf-8", "backslashreplace")
            msg = f'auth http server {peer} sent invalid SMTP auth method:"{v}"'
            return _error(msg, user, passwd)
        backend_auth = backend_auth.lower()
    return AuthResult(
        "ok", server, n, addr, user, passwd, ssl_backend=ssl_backend, backend_auth=backend_auth
    )


# fastmail's Auth-SMTP-Auth-Method: AUTH to the SMTP backend for this login, whatever
# proxy_smtp_auth and proxy_smtp_auth_method say (off: none, XCLIENT carries LOGIN=)
_BACKEND_AUTH = (b"off", b"plain", b"login")


def _no_password(auth: AuthRequest) -> bool:
    """The session has no password once a salt was sent (nginx forgets it), and for an
    EXTERNAL login (fastmail never carries a stale one over)."""
    if auth.method in _SALTED and auth.salt:
        return True
    return auth.method == b"external" and not auth.passwd


def _error(msg: str | None, user: bytes | None = None, passwd: bytes | None = None) -> AuthResult:
    level = "error" if msg else None
    return AuthResult("error", user=user, passwd=passwd, log_message=msg, log_level=level)


def reader_error(reader: ResponseReader, peer: str) -> AuthResult:
    """The AuthResult for a reader that stopped on an error: a broken status line or header
    line is logged at error, a header block over 1024 bytes not at all, as nginx does."""
    if reader.error == "invalid response":
        return _error(f"auth http server {peer} sent invalid response")
    if reader.error == "invalid header":
        return _error(f"auth http server {peer} sent invalid header in response")
    return _error(None)  # too big: nginx logs nothing at info or above


def parse_response(
    data: bytes, auth: AuthRequest, peer: str, *, allow_names: bool = False
) -> AuthResult:
    """One whole answer at once (tests, tools): the reader plus `interpret`. A header block
    that never ends is an error with nothing logged, as an early close is for nginx."""
    reader = ResponseReader()
    if not reader.feed(data):
        return _error(None)
    if reader.error:
        return reader_error(reader, peer)
    return interpret(reader.headers, auth, peer, allow_names=allow_names)


# --- the engine's client (fastmail/_auth.pyx) ---------------------------------------------------


def client_for(loop: Loop, conf: ServerConf, resolver: Resolver | None) -> AuthClient:
    """The C client of a server block's auth_http config, on the worker's Loop: for each URL
    the address the config resolved at load (nginx uses the first one) or the unix socket and
    for https the TLS context and name, the request template's constant parts,
    auth_http_timeout, the keep-alive pool (0: nginx's HTTP/1.0 connection per request), the
    auth_http_send lines, the cache, and this module's ResponseReader for answers it reads no
    other way. With a resolver, Auth-Server may name a host."""
    first, *more = [conf.auth_http, *conf.auth_http_backups]
    cache = None
    if conf.auth_http_cache is not None:
        cache = AuthCache(*conf.auth_http_cache)
    return AuthClient(
        loop,
        first.host or None,
        first.port,
        first.uri.encode(),
        first.host_header.encode(),
        conf.auth_http_timeout,
        conf.auth_http_keepalive,
        unix_path=first.path,
        extra_headers=[(k.encode(), v.encode()) for k, v in conf.auth_http_header],
        pass_client_cert=conf.auth_http_pass_client_cert,
        resolver=resolver,
        reader_factory=ResponseReader,
        tls=conf.auth_http_tls if first.tls else None,
        tls_name=_tls_name(first),
        more=[
            Target(
                u.host or None,
                u.port,
                u.uri.encode(),
                u.host_header.encode(),
                unix_path=u.path,
                tls=conf.auth_http_tls if u.tls else None,
                tls_name=_tls_name(u),
            )
            for u in more
        ],
        send=tuple(conf.auth_http_send),
        cache=cache,
    )


def _tls_name(url: AuthHttpUrl) -> bytes | None:
    """The name an https URL's certificate must hold, sent as SNI unless it is an address:
    the URL's host ([::1] without its brackets)."""
    if not url.tls:
        return None
    return url.host_header.strip("[]").encode("idna")


__all__ = [
    "client_for",
    "AuthResult",
    "ResponseReader",
    "build_request",
    "escape",
    "interpret",
    "parse_response",
    "parse_server_addr",
]
