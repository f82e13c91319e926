"""The per-connection driver: runs a client session from accept to the relay.

Owns: the client transport (an asyncio Protocol on uvloop), the pre-login deadline, the
PROXY header and realip, feeding the client machine and carrying out its actions, the
auth_http call, the backend connection and its login machine, and the hand-over to the
relay. Must not parse any mail protocol (the machines do) nor build auth_http bytes
(auth_http.py does). Mirrors ngx_mail_handler.c, ngx_mail_auth_http_module.c (the session
side) and ngx_mail_proxy_module.c (connect and login).
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import TYPE_CHECKING, Any, cast

from fastmail import _login, proxy_protocol, tls
from fastmail._core import (
    ACT_AUTH,
    ACT_BACKEND,
    ACT_CLOSE,
    ACT_DONE,
    ACT_SEND,
    ACT_STARTTLS,
    ACT_TIMER,
)
from fastmail._relay import BackendSocket, ClientConn
from fastmail.debuglog import Trace, TracedLogin
from fastmail.log import ALERT, DEBUG, ERROR, INFO

if TYPE_CHECKING:
    import ssl

    from fastmail.auth_http import AuthCall, AuthResult
    from fastmail.conf.model import ListenSocket
    from fastmail.deadlines import Deadline
    from fastmail.resolver import ClientHost, Lookup
    from fastmail.server import ClientMachine, ServerRuntime
    from fastmail.worker import Worker

# session states
PROXY_HEADER, RESOLVING, DIALOGUE, AUTH, BACKEND, RELAY, CLOSED, HANDSHAKE = range(8)
# nginx's log action for each, in debug lines (HANDSHAKE: _hs_action())
STATE_ACTIONS = (
    "reading PROXY protocol", "in resolving client address", "in auth state",
    "in http auth state", "connecting to upstream", "proxying", "closed", "SSL handshaking",
)  # fmt: skip
PROXY_HEADER_LIMIT = 4096  # mainline nginx's PROXY protocol read size
HOLD_LIMIT = 65536  # client bytes read ahead while auth_http or the backend login runs


def _addr_text(addr: object) -> tuple[str, int]:
    if isinstance(addr, tuple):
        return addr[0], addr[1]
    return "unix:", 0


class ClientSession(asyncio.Protocol):
    """One client connection before the relay; it hands its socket to the relay."""

    __slots__ = (
        "worker", "loop", "rt", "transport", "sock", "id", "state", "machine", "login",
        "client_ip", "client_port", "local_ip", "local_port", "server_text", "client_host",
        "deadline", "timer", "pending", "auth_call", "backend", "proxy_header", "upstream",
        "handover", "tls", "lookup", "held", "implicit", "hs_implicit", "ssl_obj", "starttls",
        "trace",
    )  # fmt: skip

    def __init__(self, worker: Worker, listen: ListenSocket) -> None:
        self.worker = worker
        self.loop = worker.loop
        self.rt: ServerRuntime = None  # type: ignore[assignment]
        self.transport: asyncio.Transport | None = None
        self.state = DIALOGUE
        self.machine: ClientMachine | None = None
        self.login: _login.BackendLogin | None = None
        self.deadline: Deadline | None = None  # `timeout`: one loop timer for all sessions
        self.timer: asyncio.TimerHandle | None = None
        self.pending = bytearray()
        self.auth_call: AuthCall | None = None
        self.backend: BackendSocket | TransportBackend | None = None
        self.proxy_header: proxy_protocol.ProxyHeader | None = None
        self.client_host = b"[UNAVAILABLE]"
        self.upstream = ""
        self.handover = False
        self.tls = False
        self.implicit = False  # the listen entry says ssl: handshake before anything else
        self.hs_implicit = False
        self.starttls = False  # nginx's " using starttls" in log lines
        self.ssl_obj: ssl.SSLObject | None = None
        self.lookup: Lookup | None = None
        self.held = 0
        self.trace: Trace | None = None  # debug lines: only when the log takes them
        # the ListenSocket until connection_made, then the transport's socket (one slot)
        self.sock: Any = listen

    # --- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = cast("asyncio.Transport", transport)  # a stream transport (uvloop's or ClientConn)
        self.transport = t
        w = self.worker
        self.id = w.next_id()
        ls: ListenSocket = self.sock
        self.sock = transport.get_extra_info("socket")
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self.client_ip, self.client_port = _addr_text(peer)
        self.local_ip, self.local_port = _addr_text(local)
        entry = ls.entry_for(self.local_ip)
        self.rt = w.runtimes[id(entry.server)]
        self.server_text = entry.addr_text
        if w.connections() >= w.config.events.worker_connections:
            # nginx counts every socket: client, auth_http and backend connections alike
            self.rt.log.log(
                ALERT, f"{w.config.events.worker_connections} worker_connections are not enough"
            )
            self.state = CLOSED
            self.handover = True  # nothing to clean up in connection_lost
            t.abort()
            return
        w.sessions.add(self)
        log = self.rt.log
        if log.level >= DEBUG:
            self.trace = Trace(log, self.id, self.rt.protocol, self.sock.fileno())
            self.trace.accepted(self._peer_text())
        if log.level >= INFO:
            log.log(
                INFO,
                f"client {self._peer_text()} connected to {self._local_text()}",
                self.id,
            )
        self.deadline = self.worker.deadline(self.rt.timeout_s, self._timed_out)
        self.implicit = entry.ssl and self.rt.conf.ssl_context is not None
        if entry.proxy_protocol:
            self.state = PROXY_HEADER
            if self.trace is not None:
                self.trace.state(STATE_ACTIONS[PROXY_HEADER])
        elif self.implicit:
            self._start_tls(b"", True)
        else:
            self._begin()

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state == DIALOGUE:
            if self.trace is not None:
                self.trace.client_read(data)
            self._run(self.machine.feed(data))  # type: ignore[union-attr]
        elif state in (AUTH, BACKEND):
            # kept for the relay (or the next login after a failure); nginx leaves such
            # bytes in the kernel, we read on to notice a client that leaves, within a bound
            if self.trace is not None:
                self.trace.client_read(data)
            self.machine.feed(data)  # type: ignore[union-attr]
            self.held += len(data)
            if self.held > HOLD_LIMIT:
                self.transport.pause_reading()  # type: ignore[union-attr]
        elif state == PROXY_HEADER:
            self._proxy_header(data)
        elif state in (RESOLVING, HANDSHAKE):
            # HANDSHAKE: bytes that came with the client's last handshake flight
            self.pending += data

    def eof_received(self) -> bool | None:
        return False  # close: a client that half-closes before the relay is gone

    def connection_lost(self, exc: Exception | None) -> None:
        if self.handover:
            return
        if self.state != CLOSED:
            self._close()  # nginx logs nothing when a client leaves before the relay

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        if self.state == RELAY and not self.handover:
            self._to_relay()

    # --- stages ------------------------------------------------------------------------

    def _begin(self) -> None:
        rt = self.rt
        if rt.protocol == "smtp" and rt.resolver is not None:
            self.state = RESOLVING
            if self.trace is not None:
                self.trace.state(STATE_ACTIONS[RESOLVING])
            self.lookup = rt.resolver.client_host(self.client_ip, self._resolved)
            return
        self._start_machine()

    def _resolved(self, result: ClientHost) -> None:
        self.lookup = None
        if self.state != RESOLVING:
            return
        self.client_host = result.host
        if result.log_message:
            self._log(ERROR, result.log_message, result.log_action)
        self._start_machine()
        if self.pending and self.state == DIALOGUE:
            data, self.pending = bytes(self.pending), bytearray()
            self._run(self.machine.feed(data))  # type: ignore[union-attr]

    def _start_machine(self) -> None:
        self.state = DIALOGUE
        if self.trace is not None:
            self.trace.state(STATE_ACTIONS[DIALOGUE])
            if self.rt.protocol == "smtp":
                self.trace.line(f'smtp greeting for "{self.client_host.decode("latin-1")}"')
        self.machine = self.rt.machine_class(self.rt.profile, tls=self.tls)
        self._run(self.machine.start())

    def _proxy_header(self, data: bytes) -> None:
        # Beyond nginx, a header split over several reads is reassembled (nginx reads once).
        self.pending += data
        res = proxy_protocol.parse(bytes(self.pending), limit=PROXY_HEADER_LIMIT)
        if isinstance(res, proxy_protocol.ProxyError):
            if res.message:
                self._log(ERROR, res.message, "reading PROXY protocol")
            self._close()
            return
        if not isinstance(res, proxy_protocol.ProxyHeader):
            return  # NEED_MORE
        self.proxy_header = res
        rest = bytes(self.pending[res.consumed :])
        self.pending = bytearray()
        peer = None if self.client_ip == "unix:" else self.client_ip
        real = proxy_protocol.realip(peer, res, self.rt.trusted)
        if real is not None:
            self.client_ip, self.client_port = real
        if self.implicit:
            self._start_tls(rest, True)
            return
        self._begin()
        if rest:
            self.data_received(rest)

    def _run(self, acts: int) -> None:
        m = self.machine
        if acts & ACT_SEND:
            out = m.take_output()  # type: ignore[union-attr]
            self.transport.write(out)  # type: ignore[union-attr]
            if self.trace is not None:
                self.trace.client_reply(out)
        if acts & ACT_STARTTLS and not acts & ACT_CLOSE:
            # the machine dropped what followed the command (CVE-2014-3556); bytes still in
            # the kernel become handshake input, as in nginx
            self.starttls = True
            self._start_tls(b"", False)
            return
        if acts & ACT_CLOSE:
            if m.close_reason:  # type: ignore[union-attr]
                self._log(INFO, m.close_reason)  # type: ignore[union-attr]
            self._close()
            return
        if acts & ACT_TIMER:
            self.timer = self.loop.call_later(m.timer_ms / 1000, self._on_timer)  # type: ignore[union-attr]
        if acts & ACT_AUTH:
            self._ask_auth()

    def _on_timer(self) -> None:
        self.timer = None
        if self.state == DIALOGUE:
            self._run(self.machine.on_timer())  # type: ignore[union-attr]

    def _timed_out(self) -> None:
        self.deadline = None
        if self.state == BACKEND and self.backend is not None:
            # nginx logs the backend timeout at info, other backend failures at error
            self._backend_failed("upstream timed out (110: Connection timed out)", "info")
            return
        if self.state == HANDSHAKE:
            self._log(INFO, "client timed out (110: Connection timed out)", self._hs_action())
            self._close()
            return
        if self.state in (DIALOGUE, PROXY_HEADER, RESOLVING):
            action = "reading PROXY protocol" if self.state == PROXY_HEADER else None
            self._log(INFO, "client timed out (110: Connection timed out)", action)
            if self.machine is not None:
                acts = self.machine.on_timeout()
                if acts & ACT_SEND:
                    self.transport.write(self.machine.take_output())  # type: ignore[union-attr]
            self._close()

    # --- TLS ---------------------------------------------------------------------------

    def _hs_action(self) -> str:
        return "SSL handshaking" if self.hs_implicit else "in starttls state"

    def _start_tls(self, early: bytes, implicit: bool) -> None:
        """Implicit TLS (after any PROXY header) or STARTTLS: the handshake runs under the
        deadline already set (nginx's `timeout`), then _tls_done goes on."""
        self.state = HANDSHAKE
        self.hs_implicit = implicit
        if self.trace is not None:
            self.trace.state(self._hs_action())
        self.transport = tls.start_server_tls(
            self.loop,
            self.transport,  # type: ignore[arg-type]
            self,
            self.rt.conf.ssl_context,  # type: ignore[arg-type]
            early,
            self._tls_done,
        )

    def _tls_done(self, fut: asyncio.Future[None]) -> None:
        if self.state != HANDSHAKE:
            return
        exc = fut.exception() if not fut.cancelled() else asyncio.CancelledError()
        action = self._hs_action()
        if exc is not None:
            if self.rt.log.level >= INFO:
                self._log(INFO, tls.handshake_error_text(exc), action)
            self._close()
            return
        obj = self.transport.get_extra_info("ssl_object")  # type: ignore[union-attr]
        self.ssl_obj = obj
        self.tls = True
        if self.hs_implicit and obj.context is not self.rt.conf.ssl_context:
            # SNI chose another server{} sharing this address
            for rt in self.worker.runtimes.values():
                if rt.conf.ssl_context is obj.context:
                    self.rt = rt
                    if self.trace is not None or rt.log.level >= DEBUG:
                        fd = self.sock.fileno()
                        debug = rt.log.level >= DEBUG
                        self.trace = Trace(rt.log, self.id, rt.protocol, fd) if debug else None
                    break
        rejected = tls.check_client_cert(obj, self.rt.conf.ssl_verify_client, self.rt.protocol)
        if rejected is not None:
            self._log(INFO, rejected[1], action)
            self.transport.write(rejected[0])  # type: ignore[union-attr]
            self._close()
            return
        data, self.pending = bytes(self.pending), bytearray()
        if self.hs_implicit:
            self._begin()
            if self.state == RESOLVING:
                self.pending += data
                return
        else:
            self.state = DIALOGUE
            if self.trace is not None:
                self.trace.state(STATE_ACTIONS[DIALOGUE])
            self._run(self.machine.on_tls_done())  # type: ignore[union-attr]
        if data and self.state == DIALOGUE:
            self.data_received(data)

    # --- auth_http ---------------------------------------------------------------------

    def _ask_auth(self) -> None:
        self.state = AUTH
        if self.trace is not None:
            self.trace.state(STATE_ACTIONS[AUTH])
        if self.deadline is not None:
            self.deadline.cancel()  # nginx removes the client timer while auth_http runs
            self.deadline = None
        rt = self.rt
        auth = self.machine.auth  # type: ignore[union-attr]
        assert auth is not None  # ACT_AUTH: the machine has built it
        pp = None
        h = self.proxy_header
        if h is not None and h.src_addr is not None:
            pp = (h.src_addr.encode(), h.src_port, (h.dst_addr or "").encode(), h.dst_port)
        info = None
        if self.ssl_obj is not None:
            info = tls.ssl_info(self.ssl_obj, rt.conf.ssl_verify_client)
        self.auth_call = rt.auth.authenticate(
            auth,
            client_ip=self.client_ip.encode(),
            client_host=self.client_host if rt.protocol == "smtp" else None,  # nginx: SMTP only
            callback=self._auth_done,
            ssl_info=info,
            proxy_protocol=pp,
            trace=self.trace,
        )

    def _auth_done(self, res: AuthResult) -> None:
        self.auth_call = None
        if self.state != AUTH:
            return
        m = self.machine
        if res.log_message:
            self._log(
                ERROR if res.log_level == "error" else INFO, res.log_message, "in http auth state"
            )
        if res.status == "ok":
            m.on_auth_ok()  # type: ignore[union-attr]
            self._connect_backend(res)
            return
        if res.status == "fail":
            if res.wait > 0:
                # nginx reads nothing and answers after Auth-Wait, then takes a new login
                self.timer = self.loop.call_later(res.wait, self._auth_failed, res, True)
            else:
                self._auth_failed(res, False)
            return
        self.state = DIALOGUE
        if self.trace is not None:
            self.trace.state(STATE_ACTIONS[DIALOGUE])
        self._run(m.on_auth_error())  # type: ignore[union-attr]

    def _auth_failed(self, res: AuthResult, retry: bool) -> None:
        self.timer = None
        if self.state != AUTH:
            return
        self.state = DIALOGUE
        if self.trace is not None:
            self.trace.state(STATE_ACTIONS[DIALOGUE])
        if self.held > HOLD_LIMIT:
            self.transport.resume_reading()  # type: ignore[union-attr]
        self.held = 0
        if retry:
            self.deadline = self.worker.deadline(self.rt.timeout_s, self._timed_out)
        acts = self.machine.on_auth_fail(  # type: ignore[union-attr]
            res.error_message or b"", res.error_code, retry, res.sasl_error
        )
        self._run(acts)

    # --- backend -----------------------------------------------------------------------

    def _connect_backend(self, res: AuthResult) -> None:
        self.state = BACKEND
        if self.trace is not None:
            self.trace.state(STATE_ACTIONS[BACKEND])
        rt = self.rt
        conf = rt.conf
        auth = self.machine.auth  # type: ignore[union-attr]
        assert auth is not None  # auth_http answered the machine's request
        self.upstream = f"{res.server.decode('latin-1')}:{res.port}"  # type: ignore[union-attr]
        header = b""
        if conf.proxy_protocol != "off":
            header = self._backend_proxy_header(conf.proxy_protocol, res.addr or "")
        mode = conf.proxy_ssl
        if res.ssl_backend is not None:
            text = res.ssl_backend.decode("latin-1").strip().lower()
            if text in tls.BACKEND_MODES:
                mode = text
        # a TLS side relays through transports: the backend gets one from the start
        transport_backend = self.tls or mode != "off"
        tb_header = b""
        if transport_backend:
            tb_header, header = header, b""
        login: _login.BackendLogin
        if rt.protocol == "imap":
            login = _login.ImapLogin(
                auth,
                proxy_buffer=conf.proxy_buffer,
                pass_error_message=conf.proxy_pass_error_message,
                proxy_header=header,
            )
        elif rt.protocol == "pop3":
            login = _login.Pop3Login(
                auth,
                proxy_buffer=conf.proxy_buffer,
                pass_error_message=conf.proxy_pass_error_message,
                proxy_header=header,
            )
        else:
            login = _login.SmtpLogin(
                auth,
                server_name=rt.server_name,
                client_addr=self.client_ip.encode(),
                client_host=self.client_host,
                xclient=conf.xclient,
                proxy_smtp_auth=conf.proxy_smtp_auth,
                proxy_buffer=conf.proxy_buffer,
                pass_error_message=conf.proxy_pass_error_message,
                proxy_header=header,
            )
        if self.trace is not None:
            login = TracedLogin(login, self.trace)  # type: ignore[assignment]
        self.login = login
        self.deadline = self.worker.deadline(rt.timeout_s, self._timed_out)
        if transport_backend:
            name = conf.proxy_ssl_name or res.server.decode("latin-1")  # type: ignore[union-attr]
            self.backend = TransportBackend(
                self, res.addr or "", res.port or 0, mode, name, tb_header
            )
            if self.trace is not None:
                self.trace.connect(_peer(res.addr or "", res.port or 0), -1)
            return
        try:
            self.backend = BackendSocket(self.loop, res.addr or "", res.port or 0, self, login)
            if self.trace is not None:
                self.trace.connect(_peer(res.addr or "", res.port or 0), self.backend.fd)
        except OSError as e:
            self._backend_failed(f"connect() failed ({e.errno}: {os.strerror(e.errno or 0)})")

    def _backend_proxy_header(self, version: str, backend_addr: str) -> bytes:
        unix = self.client_ip == "unix:"
        client = None if unix else (self.client_ip, self.client_port)
        local = None if self.local_ip == "unix:" else (self.local_ip, self.local_port)
        if version == "v2":
            return proxy_protocol.build_v2(client, local)
        return proxy_protocol.build_v1(client, local)

    def _login_actions(self, acts: int) -> None:
        login = self.login
        if acts & ACT_BACKEND:
            self.backend.write(login.take_backend_output())  # type: ignore[union-attr]
        if acts & ACT_SEND and not acts & ACT_DONE:
            self.transport.write(login.take_output())  # type: ignore[union-attr]
        if acts & ACT_CLOSE:
            reason = login.close_reason  # type: ignore[union-attr]
            if reason:
                level = ERROR if login.log_level == "error" else INFO  # type: ignore[union-attr]
                self._log(level, reason, login.phase)  # type: ignore[union-attr]
            self._close()
        elif acts & ACT_DONE:
            self._logged_in()

    def _backend_failed(self, reason: str, level: str = "error") -> None:
        if self.login is None or self.state != BACKEND:
            return
        acts = self.login.on_error(reason)
        self.login.log_level = level
        self._login_actions(acts)

    # --- relay -------------------------------------------------------------------------

    def _logged_in(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        self.state = RELAY
        if self.trace is not None:
            self.trace.state(STATE_ACTIONS[RELAY])
        rt = self.rt
        if rt.log.level >= INFO:
            auth = self.machine.auth  # type: ignore[union-attr]
            user = auth.user.decode("latin-1") if auth is not None else ""
            rt.log.log(
                INFO,
                f"client logged in, client: {self.client_ip}, server: {self.server_text}, "
                f'login: "{user}", upstream: {self.upstream}',
                self.id,
            )
        self.transport.pause_reading()  # type: ignore[union-attr]
        if isinstance(self.backend, TransportBackend):
            self._to_buffer_relay()
        elif self.transport.get_write_buffer_size() == 0:  # type: ignore[union-attr]
            self._to_relay()
        else:
            # resume_writing() fires once the reply is out of uvloop's buffer
            self.transport.set_write_buffer_limits(high=0)  # type: ignore[union-attr]

    def _to_relay(self) -> None:
        """Hands both sockets to the relay: the client transport's fd is duplicated and
        the transport dropped (design.md: uvloop hand-over), the backend socket moves."""
        self.handover = True
        backend = self.backend
        client = self.transport
        if isinstance(client, ClientConn):
            client_fd: int | ClientConn = client  # its fd and poller registration move as is
        else:
            client_fd = os.dup(self.sock.fileno())
            client.abort()  # type: ignore[union-attr]
        self.transport = None
        self.backend = None
        to_backend = self.machine.take_input()  # type: ignore[union-attr]
        to_client = self.login.take_output()  # type: ignore[union-attr]
        self.worker.sessions.discard(self)
        self.worker.start_relay(self, client_fd, backend, to_backend, to_client)  # type: ignore[arg-type]

    def _to_buffer_relay(self) -> None:
        """TLS on either side: both transports move to a BufferRelay as they are (their
        write buffers included), no fd changes hands."""
        self.handover = True
        backend: TransportBackend = self.backend  # type: ignore[assignment]
        self.backend = None
        client = self.transport
        self.transport = None
        to_backend = self.machine.take_input()  # type: ignore[union-attr]
        to_client = self.login.take_output()  # type: ignore[union-attr]
        self.worker.sessions.discard(self)
        self.worker.start_buffer_relay(
            self,
            client,  # type: ignore[arg-type]
            backend.detach_transport(),
            to_backend,
            to_client,
        )

    # --- ending ------------------------------------------------------------------------

    def _peer_text(self) -> str:
        if self.client_ip == "unix:":
            return "unix:"
        return f"{self.client_ip}:{self.client_port}"

    def _local_text(self) -> str:
        if self.local_ip == "unix:":
            return self.server_text
        if ":" in self.local_ip:
            return f"[{self.local_ip}]:{self.local_port}"
        return f"{self.local_ip}:{self.local_port}"

    def context(self, action: str | None = None) -> str:
        """nginx's ` while ACTION, client: ..., server: ...[, login: "..."]` suffix."""
        if action is None:
            action = self.machine.phase if self.machine is not None else "in auth state"
        starttls = " using starttls" if self.starttls else ""
        text = f" while {action}, client: {self.client_ip}{starttls}, server: {self.server_text}"
        auth = self.machine.auth if self.machine is not None else None
        if auth is not None and auth.user:
            text += f', login: "{auth.user.decode("latin-1")}"'
        if self.upstream:
            text += f", upstream: {self.upstream}"
        return text

    def _log(self, level: int, message: str, action: str | None = None) -> None:
        log = self.rt.log
        if log.level >= level:
            log.log(level, message + self.context(action), self.id)

    def _close(self) -> None:
        if self.state == CLOSED:
            return
        if self.state == HANDSHAKE and self.transport is not None:
            self.transport.abort()  # no TLS alert or shutdown for a half-done handshake
            self.transport = None
        self.state = CLOSED
        if self.trace is not None:
            self.trace.closed()
        for h in (self.deadline, self.timer):
            if h is not None:
                h.cancel()
        self.deadline = self.timer = None
        for call in (self.auth_call, self.lookup):
            if call is not None:
                call.cancel()
        self.auth_call = self.lookup = None
        if self.backend is not None:
            self.backend.close()
            self.backend = None
        if self.transport is not None:
            self.transport.close()  # writes what is pending, then closes
        self.worker.session_closed(self)

    def shutdown(self) -> None:
        """Graceful stop of a worker: sessions not yet relaying are closed."""
        self._close()


class TransportBackend(asyncio.Protocol):
    """The backend connection when TLS is on either side (beyond nginx for the backend side):
    an asyncio transport from the start, so the relay takes it as is. Modes: "off" (plain),
    "on" (TLS right after connect and any PROXY header), "starttls" (greeting, STARTTLS/STLS
    or EHLO+STARTTLS, then TLS; the greeting is replayed to the login machine, and whatever the
    backend sent after its go-ahead is discarded: the response-injection class)."""

    __slots__ = (
        "session", "loop", "transport", "mode", "name", "header", "stage", "buf", "greeting",
        "ready", "closed",
    )  # fmt: skip

    def __init__(
        self, session: ClientSession, host: str, port: int, mode: str, name: str, header: bytes
    ) -> None:
        self.session = session
        self.loop = session.loop
        self.transport: asyncio.Transport | None = None
        self.mode = mode
        self.name = name
        self.header = header
        self.stage = 0
        self.buf = bytearray()
        self.greeting = b""
        self.ready = False  # the login machine runs
        self.closed = False
        self.loop.create_task(self._connect(host, port))

    async def _connect(self, host: str, port: int) -> None:
        try:
            await self.loop.create_connection(lambda: self, host, port)
        except OSError as e:
            if not self.closed:
                err = e.errno or 0
                self.fail(f"connect() failed ({err}: {os.strerror(err)})")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = cast("asyncio.Transport", transport)  # create_connection's stream transport
        self.transport = t
        if self.closed:
            t.abort()
            return
        sock = t.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.header:
            t.write(self.header)
        if self.mode == "on":
            self.loop.create_task(self._tls())
        elif self.mode == "off":
            self._start_login()

    def _start_login(self, greeting: bytes = b"") -> None:
        self.ready = True
        s = self.session
        s._login_actions(s.login.start())  # type: ignore[union-attr]
        if greeting and s.state == BACKEND:
            s._login_actions(s.login.feed(greeting))  # type: ignore[union-attr]

    async def _tls(self, greeting: bytes = b"") -> None:
        conf = self.session.rt.conf
        ctx = tls.backend_context(conf.proxy_ssl_verify, conf.proxy_ssl_trusted_certificate)
        name = self.name if ctx.check_hostname or not _is_addr(self.name) else None
        try:
            t = await self.loop.start_tls(
                self.transport,  # type: ignore[arg-type]
                self,
                ctx,
                server_hostname=name,
                ssl_handshake_timeout=86400.0,
            )
        except (OSError, ValueError, asyncio.CancelledError) as e:
            if not self.closed:
                text = tls.handshake_error_text(e)
                self.fail(f"upstream {text}" if text.startswith("SSL") else text)
            return
        assert t is not None  # typeshed allows None; start_tls returns the new transport
        if self.closed:
            t.abort()
            return
        self.transport = t
        self.session.login.phase = "reading response from upstream"  # type: ignore[union-attr]
        self._start_login(greeting)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if self.ready:
            s = self.session
            s._login_actions(s.login.feed(data))  # type: ignore[union-attr]
            return
        if self.mode != "starttls":
            return
        self.buf += data
        while True:
            status, used, command = tls.backend_starttls_done(
                self.session.rt.protocol, self.stage, bytes(self.buf)
            )
            if status == 0:
                if len(self.buf) > self.session.rt.conf.proxy_buffer:
                    self.fail("upstream sent too long response line during STARTTLS")
                return
            reply = bytes(self.buf[:used])
            del self.buf[:used]
            if status < 0:
                text = reply.strip().decode("latin-1")
                self.fail(f'upstream refused STARTTLS: "{text}"')
                return
            if self.stage == 0:
                self.greeting = reply
            if status == 2:
                # the go-ahead: later plaintext would be read as TLS-protected (discarded)
                self.buf.clear()
                self.transport.pause_reading()  # type: ignore[union-attr]
                self.ready = False
                self.mode = "started"
                self.loop.create_task(self._tls(self.greeting))
                return
            self.stage += 1
            self.transport.write(command)  # type: ignore[union-attr]

    def eof_received(self) -> bool | None:
        self.fail("upstream prematurely closed connection")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.fail("upstream prematurely closed connection")

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def fail(self, reason: str) -> None:
        if self.closed:
            return
        self.session._backend_failed(reason)

    def detach_transport(self) -> asyncio.Transport:
        self.closed = True  # its callbacks go to the relay from now on
        return self.transport  # type: ignore[return-value]

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
            self.transport = None


def _peer(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _is_addr(name: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in name else socket.AF_INET, name)
    except OSError:
        return False
    return True
