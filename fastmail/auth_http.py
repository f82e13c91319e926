"""The auth_http client: which backend, for which credentials (ngx_mail_auth_http_module).

Owns the auth_http policy and the Python reference of the protocol: the request bytes nginx
sends (`build_request`), the reading of the answer (`ResponseReader` on httptools plus
nginx's own header rules, `interpret`), and `client_for`, which makes the engine's C client
(fastmail/_auth.pyx, with _authproto.pyx: the same rules in C, held to these by
tests/unit/test_auth_proto.py) from a server block's config. ResponseReader also reads, for
the C client, every answer its fast path does not take. The asyncio client
(`AuthHttpClient`: Protocols, a bounded keep-alive pool, timeouts, the WAIT loop, Auth-Server
names resolved through resolver.py) serves session.py until the engine replaces it.
Must not touch the client connection, the session machines or the backend: it only hands an
`AuthResult` to a callback.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import httptools

from fastmail._auth import AuthClient
from fastmail._authproto import MAX_DRAIN_BODY, MAX_HEADER_BLOCK, WAIT_IMMEDIATE_RETRIES
from fastmail.deadlines import Deadline, Deadlines

if TYPE_CHECKING:
    from fastmail._core import AuthRequest
    from fastmail._poll import Loop
    from fastmail.conf.model import ServerConf
    from fastmail.debuglog import Trace
    from fastmail.resolver import Resolver

# The limits the C client (fastmail/_authproto.pyx) defines: nginx reads the answer into one
# 1024-byte buffer, status line and headers included (spec §4.3); WAIT without Auth-Wait is
# re-asked at most WAIT_IMMEDIATE_RETRIES times, then it is a temporary error (beyond nginx,
# which loops forever, spec §6.3); a kept-alive connection is only reused when the body after
# the headers is at most MAX_DRAIN_BODY bytes, read within DRAIN_TIMEOUT_S.
DRAIN_TIMEOUT_S = 5.0

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


# --- the request (spec §3) -------------------------------------------------------------------

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
) -> bytes:
    """The auth_http request, line for line as ngx_mail_auth_http_create_request writes it.

    `client_host` None means no Client-Host line (IMAP/POP3); SMTP always passes one (the
    resolver's answer or b"[UNAVAILABLE]"). `proxy_protocol` is (src addr text, src port,
    dst addr text, dst port) from a PROXY header. `ssl_info` keys: protocol, cipher, and when
    ssl_verify_client is on: verify, subject, issuer, serial, fingerprint, cert (PEM).

    keepalive=False gives nginx's bytes exactly. keepalive=True (beyond nginx) changes only
    `HTTP/1.0` to `HTTP/1.1` and adds `Connection: keep-alive` as the last line before the
    empty line, so every nginx line keeps its place.
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
    for name, value in extra_headers:
        out += (name, b": ", value, b"\r\n")
    if keepalive:
        out.append(b"Connection: keep-alive\r\n")
    out.append(b"\r\n")
    return b"".join(out)


# --- the response (spec §4) ------------------------------------------------------------------

_NAME_RE = re.compile(rb"[A-Za-z0-9][A-Za-z0-9-]*\Z")
_STATUS_RE = re.compile(rb"HTTP/1\.[01] [1-9][0-9][0-9](?: [^\r\n]*)?\r?\n\Z")
_SYNTH_10 = b"HTTP/1.0 200 OK\r\n"
# The usual answer, whole in one read: printable bytes only, simple "Name: value" lines, a
# Content-Length body. It is read without httptools (a third of the per-login Python time);
# anything else (tabs, folding, chunked, odd Connection tokens, 1xx/204/304, no length, bytes
# after the body) takes the general path, which gives the same result for these answers.
_FAST_RE = re.compile(
    rb"HTTP/1\.([01]) ([2-5][0-9][0-9])(?: [ -~]*)?\r\n"
    rb"((?:[A-Za-z0-9][A-Za-z0-9-]*:[ -~]*\r\n)*)\r\n"
)
_FRAMING = frozenset((b"content-length", b"connection", b"transfer-encoding", b"upgrade"))


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
        if not self.received and self._fast(data):
            self.received = len(data)
            return True
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

    def _fast(self, data: bytes) -> bool:
        m = _FAST_RE.match(data)
        if m is None or m.end() > MAX_HEADER_BLOCK // 2 or m.group(2) in (b"204", b"304"):
            return False
        # the match allowed only `name:[ -~]*` lines, so splitting them is exact
        headers: list[tuple[bytes, bytes]] = []
        length = conn = None
        for line in m.group(3).split(b"\r\n")[:-1]:
            name, _, value = line.partition(b":")
            value = value.strip(b" ")
            headers.append((name, value))
            low = name.lower()
            if low not in _FRAMING:
                continue
            if low == b"content-length":
                if length is not None or not value.isdigit() or len(value) > 9:
                    return False
                length = int(value)
            elif low == b"connection":
                if conn is not None:
                    return False
                conn = value.lower()
                if conn not in (b"close", b"keep-alive"):
                    return False
            elif low in (b"transfer-encoding", b"upgrade"):
                return False
        if length is None or len(data) - m.end() != length:
            return False
        keep = conn != b"close" if m.group(1) == b"1" else conn == b"keep-alive"
        self.headers = headers
        self._header_bytes = m.end()
        self.headers_complete = self.message_complete = True
        self.body_bytes = length
        self.keep_alive = self._server_keep_alive = keep
        return True

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
    """Spec §4.4/§4.5 over parsed headers (for a reader without error). `allow_names`
    (beyond nginx, when a resolver exists) lets Auth-Server be a host name; then `addr` is
    None and the caller resolves `server`."""
    smtp = auth.protocol == b"smtp"
    fail: bytes | None = None
    wait_flag = False
    server = port = user = passwd = wait_txt = code = sasl = ssl_backend = None
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
    return AuthResult("ok", server, n, addr, user, passwd, ssl_backend=ssl_backend)


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
    """The AuthResult for a reader that stopped on an error (spec §2 table)."""
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


# --- I/O: the client ---------------------------------------------------------------------------


def _os_error_text(call: str, exc: BaseException | None) -> str | None:
    if isinstance(exc, OSError) and exc.errno:
        return f"{call}() failed ({exc.errno}: {os.strerror(exc.errno)})"
    return None


class _Conn(asyncio.Protocol):
    """One connection to the auth server; carries one request at a time."""

    __slots__ = ("client", "transport", "ask", "reader", "reused", "drain_timer", "lost")

    def __init__(self, client: AuthHttpClient) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.ask: _Ask | None = None
        self.reader: ResponseReader | None = None
        self.reused = False
        self.drain_timer: asyncio.TimerHandle | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.client.connections_made += 1

    def send(self, ask: _Ask) -> None:
        self.ask = ask
        self.reader = ResponseReader()
        assert self.transport is not None
        self.transport.write(ask.request)

    def close(self) -> None:
        self.ask = None
        self.reader = None
        if self.drain_timer is not None:
            self.drain_timer.cancel()
            self.drain_timer = None
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        if reader is None:
            self.close()  # bytes on an idle connection: the server is out of step
            return
        ask = self.ask
        if ask is None:  # draining the body of an answered request
            reader.feed(data)
            self._after_body(reader)
            return
        if not reader.feed(data):
            return
        self.ask = None
        if reader.error:
            self.close()
            ask.finish(reader_error(reader, self.client.peer))
            return
        ask.answered(reader.headers)
        self._after_body(reader)

    def _after_body(self, reader: ResponseReader) -> None:
        if reader.message_complete:
            if self.drain_timer is not None:
                self.drain_timer.cancel()
                self.drain_timer = None
            self.reader = None
            if reader.keep_alive:
                self.client._release(self)
            else:
                self.close()
        elif (
            not self.client.pool_size
            or reader._synthetic
            or reader.body_bytes > MAX_DRAIN_BODY
            or self.lost
        ):
            self.close()
        elif self.drain_timer is None:
            self.drain_timer = self.client.loop.call_later(DRAIN_TIMEOUT_S, self.close)

    def eof_received(self) -> bool | None:
        return None  # let the transport close; connection_lost does the rest

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.drain_timer is not None:
            self.drain_timer.cancel()
            self.drain_timer = None
        self.client._forget(self)
        ask = self.ask
        self.ask = None
        if ask is not None:
            got_bytes = self.reader is not None and self.reader.received > 0
            self.reader = None
            ask.lost(self, exc, got_bytes)
        self.transport = None


class _Ask:
    """One request on the wire, from connect to the end of the header block, with its timer."""

    __slots__ = (
        "client",
        "request",
        "auth",
        "callback",
        "timer",
        "conn",
        "connect_task",
        "retried",
        "trace",
    )

    def __init__(
        self,
        client: AuthHttpClient,
        request: bytes,
        auth: AuthRequest,
        callback: Callable[[AuthResult], None],
        trace: Trace | None = None,
    ) -> None:
        self.client = client
        self.request = request
        self.auth = auth
        self.trace = trace
        self.callback: Callable[[AuthResult], None] | None = callback
        self.conn: _Conn | None = None
        self.connect_task: asyncio.Task[object] | None = None
        self.retried = False
        # One deadline for connect, send and the whole header block, never re-armed (spec §2).
        self.timer = client._deadline(self._timed_out)

    def start(self, fresh: bool = False) -> None:
        conn = None if fresh else self.client._acquire()
        if conn is not None:
            self.conn = conn
            conn.send(self)
            return
        conn = _Conn(self.client)
        self.conn = conn
        self.connect_task = self.client.loop.create_task(self.client._connect(conn))
        self.connect_task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[object]) -> None:
        self.connect_task = None
        if self.callback is None:
            if not task.cancelled() and task.exception() is None:
                assert self.conn is not None
                self.conn.close()
            return
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.finish(_error(_os_error_text("connect", exc) or f"connect() failed ({exc})"))
            return
        assert self.conn is not None
        self.conn.send(self)

    def _timed_out(self) -> None:
        peer = self.client.peer
        self.finish(_error(f"auth http server {peer} timed out (110: Connection timed out)"))

    def answered(self, headers: list[tuple[bytes, bytes]]) -> None:
        if self.trace is not None:
            self.trace.auth_answer(headers)
        allow = self.client.resolver is not None
        self.finish(interpret(headers, self.auth, self.client.peer, allow_names=allow), keep=True)

    def lost(self, conn: _Conn, exc: Exception | None, got_bytes: bool) -> None:
        if conn.reused and not got_bytes and not self.retried and self.callback is not None:
            # A kept-alive connection the server had already closed: ask once more, afresh.
            self.retried = True
            self.start(fresh=True)
            return
        self.finish(_error(_os_error_text("recv", exc)))

    def finish(self, result: AuthResult, keep: bool = False) -> None:
        callback = self.callback
        if callback is None:
            return
        self.callback = None
        self.timer.cancel()
        if self.connect_task is not None:
            self.connect_task.cancel()
            self.connect_task = None
        conn = self.conn
        self.conn = None
        if conn is not None and not keep:
            conn.close()
        callback(result)

    def cancel(self) -> None:
        """The session went away: drop the answer; the connection is not reused."""
        if self.callback is None:
            return
        self.callback = None
        self.timer.cancel()
        if self.connect_task is not None:
            self.connect_task.cancel()
            self.connect_task = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class AuthCall:
    """A running `authenticate()`: the request, WAIT repeats and an Auth-Server name lookup.
    `cancel()` when the client goes away; the callback is then never called."""

    __slots__ = (
        "client", "auth", "build", "callback", "_ask", "_timer", "_lookup", "_waits", "trace",
    )  # fmt: skip

    def __init__(
        self,
        client: AuthHttpClient,
        auth: AuthRequest,
        build: Callable[[], bytes],
        callback: Callable[[AuthResult], None],
        trace: Trace | None = None,
    ) -> None:
        self.client = client
        self.trace = trace
        self.auth = auth
        self.build = build
        self.callback: Callable[[AuthResult], None] | None = callback
        self._ask: _Ask | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._lookup: object | None = None
        self._waits = 0

    def _send(self) -> None:
        self._timer = None
        request = self.build()
        if self.auth.method in _SALTED and self.auth.salt:
            self.auth.passwd = b""  # nginx forgets the password once the salt went out
        if self.trace is not None:
            self.trace.auth_request(request)
        self._ask = self.client.ask(request, self.auth, self._on_result, self.trace)

    def _on_result(self, result: AuthResult) -> None:
        self._ask = None
        if self.callback is None:
            return
        # nginx applies these while parsing, whatever the outcome (spec §4.2, §6.2).
        if result.user is not None:
            self.auth.user = result.user
        if result.passwd is not None:
            self.auth.passwd = result.passwd
        if result.status == "wait":
            if result.wait > 0:
                self._waits = 0
                self._timer = self.client.loop.call_later(result.wait, self._send)
                return
            self._waits += 1
            if self._waits <= WAIT_IMMEDIATE_RETRIES:
                self._send()
                return
            peer = self.client.peer
            result = _error(
                f"auth http server {peer} sent WAIT without Auth-Wait {self._waits} times",
                user=result.user,
                passwd=result.passwd,
            )
        if result.status == "ok" and result.addr is None and self.client.resolver is not None:
            assert result.server is not None
            self._lookup = self.client.resolver.resolve_name(
                result.server, lambda addrs, err: self._resolved(result, addrs, err)
            )
            return
        self._deliver(result)

    def _resolved(self, result: AuthResult, addrs: list[str], err: str | None) -> None:
        self._lookup = None
        if addrs:
            result.addr = addrs[0]
            self._deliver(result)
            return
        v = result.server.decode("utf-8", "backslashreplace") if result.server else ""
        self._deliver(
            _error(
                f'auth http server {self.client.peer} sent server name "{v}" that could not'
                f" be resolved ({err})",
                user=result.user,
                passwd=result.passwd,
            )
        )

    def _deliver(self, result: AuthResult) -> None:
        callback = self.callback
        self.callback = None
        if callback is not None:
            callback(result)

    def cancel(self) -> None:
        self.callback = None
        if self._ask is not None:
            self._ask.cancel()
            self._ask = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._lookup is not None:
            self._lookup.cancel()  # type: ignore[attr-defined]
            self._lookup = None


class AuthHttpClient:
    """The auth_http server of one `server {}` block (or of `mail {}`), shared by its sessions.

    `url_host` is the address the config resolved at load (nginx uses the first one), or
    None with `unix_path`. `path` is the URI part, `host_header` the Host value.
    `pool_size` > 0 (beyond nginx) keeps up to that many idle HTTP/1.1 connections for reuse;
    0 is nginx's one connection per request with HTTP/1.0 bytes.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        url_host: str | None,
        url_port: int,
        path: bytes,
        host_header: bytes,
        timeout_s: float,
        pool_size: int = 64,
        *,
        unix_path: str | None = None,
        extra_headers: list[tuple[bytes, bytes]] | None = None,
        pass_client_cert: bool = False,
        resolver: Resolver | None = None,
    ) -> None:
        self.loop = loop
        self.host = url_host
        self.port = url_port
        self.unix_path = unix_path
        self.path = path or b"/"
        self.host_header = host_header
        self.timeout_s = timeout_s
        self.pool_size = pool_size
        self.extra_headers = list(extra_headers or ())
        self.pass_client_cert = pass_client_cert
        self.resolver = resolver
        if unix_path is not None:
            self.peer = f"unix:{unix_path}"
        elif url_host is not None and ":" in url_host:
            self.peer = f"[{url_host}]:{url_port}"
        else:
            self.peer = f"{url_host}:{url_port}"
        self._idle: list[_Conn] = []
        self._open: set[_Conn] = set()
        self._deadlines = Deadlines(loop, timeout_s)
        self.connections_made = 0  # for tests and counters

    def _deadline(self, callback: Callable[[], object]) -> Deadline:
        """A request's timeout: one loop timer serves every request of this client."""
        if self._deadlines.delay != self.timeout_s:
            self._deadlines = Deadlines(self.loop, self.timeout_s)
        return self._deadlines.add(callback)

    # pool
    async def _connect(self, conn: _Conn) -> None:
        self._open.add(conn)
        try:
            if self.unix_path is not None:
                await self.loop.create_unix_connection(lambda: conn, self.unix_path)
            else:
                assert self.host is not None  # url_host is None only with unix_path
                await self.loop.create_connection(lambda: conn, self.host, self.port)
        except BaseException:
            self._open.discard(conn)
            raise

    def _acquire(self) -> _Conn | None:
        while self._idle:
            conn = self._idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                conn.reused = True
                return conn
        return None

    def _release(self, conn: _Conn) -> None:
        if (
            len(self._idle) < self.pool_size
            and conn.transport is not None
            and not conn.transport.is_closing()
        ):
            self._idle.append(conn)
        else:
            conn.close()

    def _forget(self, conn: _Conn) -> None:
        self._open.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)

    def close(self) -> None:
        """Closes the idle and running connections (reload, shutdown)."""
        for conn in list(self._open):
            conn.close()
        self._idle.clear()

    # requests
    def ask(
        self,
        request: bytes,
        auth: AuthRequest,
        callback: Callable[[AuthResult], None],
        trace: Trace | None = None,
    ) -> _Ask:
        """Sends prebuilt request bytes and calls `callback(AuthResult)` once, on the loop.
        WAIT is returned as is; `authenticate()` is the call that handles it. `trace` gets
        the answer's headers as debug lines."""
        a = _Ask(self, request, auth, callback, trace)
        a.start()
        return a

    async def ask_async(self, request: bytes, auth: AuthRequest) -> AuthResult:
        fut: asyncio.Future[AuthResult] = self.loop.create_future()
        self.ask(request, auth, fut.set_result)
        return await fut

    def authenticate(
        self,
        auth: AuthRequest,
        *,
        client_ip: bytes,
        client_host: bytes | None,
        callback: Callable[[AuthResult], None],
        ssl_info: dict[str, bytes] | None = None,
        proxy_protocol: tuple[bytes, int, bytes, int] | None = None,
        trace: Trace | None = None,
    ) -> AuthCall:
        """The whole exchange a session needs: builds the request from `auth` (and again for
        each WAIT repeat, with the same Auth-Login-Attempt), applies Auth-User/Auth-Pass to
        `auth`, bounds WAIT without Auth-Wait, and resolves an Auth-Server host name.
        The callback gets "ok", "fail" (the driver delays the reply by `wait` seconds when it
        is > 0) or "error"; never "wait". `trace` (debug level only) gets every request and
        answer as debug lines."""

        def build() -> bytes:
            return build_request(
                auth,
                uri_path=self.path,
                host_header=self.host_header,
                client_ip=client_ip,
                client_host=client_host,
                extra_headers=self.extra_headers,
                ssl_info=ssl_info,
                pass_client_cert=self.pass_client_cert,
                keepalive=self.pool_size > 0,
                proxy_protocol=proxy_protocol,
            )

        call = AuthCall(self, auth, build, callback, trace)
        call._send()
        return call

    async def authenticate_async(self, auth: AuthRequest, **kw: object) -> AuthResult:
        fut: asyncio.Future[AuthResult] = self.loop.create_future()
        self.authenticate(auth, callback=fut.set_result, **kw)  # type: ignore[arg-type]
        return await fut


# --- the engine's client (fastmail/_auth.pyx) ---------------------------------------------------


def client_for(loop: Loop, conf: ServerConf, resolver: Resolver | None) -> AuthClient:
    """The C client of a server block's auth_http config, on the worker's Loop: the address the
    config resolved at load (nginx uses the first one) or the unix socket, the request
    template's constant parts, auth_http_timeout, the keep-alive pool (0: nginx's HTTP/1.0
    connection per request), and this module's ResponseReader for answers it reads no other
    way. With a resolver, Auth-Server may name a host."""
    url = conf.auth_http
    return AuthClient(
        loop,
        url.host or None,
        url.port,
        url.uri.encode(),
        url.host_header.encode(),
        conf.auth_http_timeout,
        conf.auth_http_keepalive,
        unix_path=url.path,
        extra_headers=[(k.encode(), v.encode()) for k, v in conf.auth_http_header],
        pass_client_cert=conf.auth_http_pass_client_cert,
        resolver=resolver,
        reader_factory=ResponseReader,
    )


__all__ = [
    "client_for",
    "AuthCall",
    "AuthHttpClient",
    "AuthResult",
    "ResponseReader",
    "build_request",
    "escape",
    "interpret",
    "parse_response",
    "parse_server_addr",
]
