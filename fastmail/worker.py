"""One worker: a uvloop event loop serving the listening sockets the master bound.

Owns: the loop, the per-server runtimes, the set of live sessions and relays, connection
ids, the hand-over from a session to the relay, and the worker's signals (QUIT drains,
TERM/INT stop, USR1 reopens logs, WINCH drains a daemonized master's worker; HUP, USR2, ALRM
and IO are nginx's signals too and must not kill it). Must not bind sockets or read config text: the master
(process.py) gives it both. Mirrors ngx_worker_process_cycle.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import socket
from collections.abc import Callable
from dataclasses import astuple
from typing import TYPE_CHECKING

import uvloop

from fastmail import uncaught
from fastmail._relay import BackendSocket, BufferRelay, ClientConn, Listener, SpliceRelay
from fastmail.deadlines import Deadline, Deadlines
from fastmail.log import INFO, NOTICE, ErrorLog
from fastmail.server import ServerRuntime, install_sni
from fastmail.session import ClientSession

if TYPE_CHECKING:
    from fastmail.conf.model import Config, ListenSocket, LogTarget


class Worker:
    __slots__ = (
        "config", "sockets", "log", "loop", "runtimes", "sessions", "relays", "servers",
        "_ids", "_stopping", "_done", "_logs", "_deadlines", "serving", "winch_quits",
    )  # fmt: skip

    def __init__(
        self,
        config: Config,
        sockets: list[tuple[ListenSocket, socket.socket]],
        log: ErrorLog,
        winch_quits: bool = False,
    ) -> None:
        self.config = config
        self.sockets = sockets
        self.log = log
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.runtimes: dict[int, ServerRuntime] = {}
        self.sessions: set[ClientSession] = set()
        self.relays: dict[SpliceRelay | BufferRelay, ClientSession] = {}
        self.servers: list[asyncio.AbstractServer | Listener] = []
        self._ids = 0
        self._stopping = False
        self._done: asyncio.Future[None] | None = None
        self._logs: dict[tuple[object, ...], ErrorLog] = {}
        self._deadlines: dict[float, Deadlines] = {}
        self.serving = False  # past startup: a failure now is not nginx's fatal exit code 2
        self.winch_quits = winch_quits  # nginx: WINCH quits a worker of a daemonized master

    def connections(self) -> int:
        """Open connections, counted as nginx counts them against worker_connections."""
        return len(self.sessions) + len(self.relays) * 2

    def next_id(self) -> int:
        self._ids += 1
        return self._ids

    def deadline(self, delay: float, callback: Callable[[], object]) -> Deadline:
        """`callback()` after `delay` seconds unless cancelled: the sessions' `timeout`, one
        loop timer per distinct delay instead of a TimerHandle per session and phase."""
        q = self._deadlines.get(delay)
        if q is None:
            q = self._deadlines[delay] = Deadlines(self.loop, delay)
        return q.add(callback)

    def _server_log(self, targets: list[LogTarget]) -> ErrorLog:
        if not targets or targets == self.config.main.error_log:
            return self.log
        key = tuple(astuple(t) for t in targets)  # level, debug mask, syslog server included
        if key not in self._logs:
            self._logs[key] = ErrorLog(targets)
        return self._logs[key]

    # --- running -----------------------------------------------------------------------

    def run(self) -> None:
        """Runs the loop until the worker is told to stop."""
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        loop.set_exception_handler(uncaught.loop_handler(self.log))
        self.loop = loop
        try:
            loop.run_until_complete(self._serve())
        finally:
            # closing the loop restores the default actions: a late signal must not kill
            # the worker mid-exit, as nginx's never dies of its own signals
            signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
            for rt in self.runtimes.values():
                rt.close()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
        self.log.log(NOTICE, "exit")

    async def _serve(self) -> None:
        loop = self.loop
        self._done = loop.create_future()
        if self.config.mail is not None:
            for s in self.config.mail.servers:
                self.runtimes[id(s)] = ServerRuntime(
                    s, loop, self._server_log(s.error_log), self.log
                )
            install_sni(self.config)
        for ls, sock in self.sockets:
            if _plain_ipv4(ls):
                # accepted in _relay's poller: no uvloop transport to build and unwind
                lst = ls.listen
                one = len(ls.entries) == 1 and not lst.wildcard and lst.port
                self.servers.append(
                    Listener(
                        loop,
                        sock,
                        functools.partial(ClientSession, self, ls),
                        (lst.host, lst.port) if one else None,
                    )
                )
                continue
            srv = await loop.create_server(
                functools.partial(ClientSession, self, ls), sock=sock, backlog=ls.listen.backlog
            )
            self.servers.append(srv)
        if any(isinstance(s, Listener) for s in self.servers):
            # libuv opens its spare fd for EMFILE (/dev/null) with the loop's first stream; a
            # uvloop server does that at startup, the first auth_http connection would do it
            # mid-run: open it now so the worker's fd count is steady from the start
            a, b = socket.socketpair()
            t, _ = await loop.create_unix_connection(asyncio.Protocol, sock=a)
            t.close()
            b.close()
        loop.add_signal_handler(signal.SIGQUIT, self.stop, True)
        loop.add_signal_handler(signal.SIGTERM, self.stop, False)
        loop.add_signal_handler(signal.SIGINT, self.stop, False)
        loop.add_signal_handler(signal.SIGUSR1, self.reopen)
        loop.add_signal_handler(signal.SIGWINCH, self.stop if self.winch_quits else _ignore)
        for sig in (signal.SIGHUP, signal.SIGUSR2, signal.SIGALRM, signal.SIGIO):
            loop.add_signal_handler(sig, _ignore)  # the master reloads and upgrades
        # blocked since before the fork (process.py): what came meanwhile is handled now
        signal.pthread_sigmask(signal.SIG_UNBLOCK, (*SIGNALS, signal.SIGCHLD))
        self.serving = True
        await self._done

    def stop(self, graceful: bool = True) -> None:
        """QUIT: stop accepting and let the sessions end, those logging in too, as nginx's
        (bounded by their `timeout` and by worker_shutdown_timeout): a reload or an upgrade
        loses no login; TERM/INT: close everything now."""
        if self._done is None or self._done.done():
            return
        if graceful and not self._stopping:
            self.log.log(NOTICE, "gracefully shutting down")
        for srv in self.servers:
            srv.close()
        self.servers.clear()
        if not graceful:
            for sess in list(self.sessions):
                sess.shutdown()
            for relay in list(self.relays):
                relay.close(None)
            self._done.set_result(None)
            return
        self._stopping = True
        limit = self.config.main.worker_shutdown_timeout
        if limit:
            self.loop.call_later(limit / 1000, self._shutdown_timeout)
        self._maybe_done()

    def _shutdown_timeout(self) -> None:
        for sess in list(self.sessions):
            sess.shutdown()
        for relay in list(self.relays):
            relay.close("shutdown timeout")
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self._stopping and not self.relays and not self.sessions:
            if self._done is not None and not self._done.done():
                self.log.log(NOTICE, "exiting")
                self._done.set_result(None)

    def reopen(self) -> None:
        self.log.reopen()
        for log in self._logs.values():
            log.reopen()

    # --- relay -------------------------------------------------------------------------

    def start_relay(
        self,
        session: ClientSession,
        client_fd: int | ClientConn,
        backend: BackendSocket,
        to_backend: bytes,
        to_client: bytes,
    ) -> None:
        relay = SpliceRelay(
            self.loop,
            client_fd,
            backend,
            self._relay_closed,
            to_backend=to_backend,
            to_client=to_client,
            timeout=session.rt.proxy_timeout_s,
            nonblocking=True,  # a dup of uvloop's socket and BackendSocket's own
        )
        self.relays[relay] = session
        relay.start()

    def start_buffer_relay(
        self,
        session: ClientSession,
        client: asyncio.Transport,
        backend: asyncio.Transport,
        to_backend: bytes,
        to_client: bytes,
    ) -> None:
        """TLS on either side: the transports themselves relay, bounded by proxy_buffer."""
        relay = BufferRelay(
            self.loop,
            client,
            backend,
            self._relay_closed,
            to_backend=to_backend,
            to_client=to_client,
            timeout=session.rt.proxy_timeout_s,
            # at least one TLS record, or every record would pause the other side
            buffer_size=max(session.rt.conf.proxy_buffer, 16384),
        )
        self.relays[relay] = session
        relay.start()

    def _relay_closed(self, relay: SpliceRelay | BufferRelay) -> None:
        session = self.relays.pop(relay, None)
        if session is not None:
            log = session.rt.log
            if relay.close_reason:
                if log.level >= INFO:
                    log.log(INFO, relay.close_reason + session.context(relay.action), session.id)
            elif log.level >= INFO:
                # nginx's usual suffix, login and upstream included, only without " while"
                ctx = session.context("-")
                log.log(INFO, "proxied session done" + ctx[ctx.index(",") :], session.id)
            if session.trace is not None:
                session.trace.closed()
        self._maybe_done()

    def session_closed(self, session: ClientSession) -> None:
        self.sessions.discard(session)
        self._maybe_done()


# every signal the worker handles (nginx's set; SIGCHLD, SIGPIPE and SIGSYS stay ignored)
SIGNALS = (
    signal.SIGQUIT, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGWINCH,
    signal.SIGHUP, signal.SIGUSR2, signal.SIGALRM, signal.SIGIO,
)  # fmt: skip


def _ignore() -> None:
    pass


def _plain_ipv4(ls: ListenSocket) -> bool:
    """A socket whose sessions never need an asyncio transport: IPv4, no TLS (implicit or
    STARTTLS) and no PROXY header on any server it serves."""
    if ls.listen.family != socket.AF_INET:
        return False
    for e in ls.entries:
        if e.ssl or e.proxy_protocol or e.server is None or e.server.ssl_context is not None:
            return False
    return True
