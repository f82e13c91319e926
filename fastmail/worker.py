"""One worker: fastmail's own event loop serving the listening sockets the master bound.

Owns: the loop (fastmail._poll.Loop: the only epoll in the process), the engine with its
sessions, the per-server runtimes and listeners, and the worker's signals (QUIT drains, TERM/
INT stop, USR1 reopens logs). Must not bind sockets or read config text: the master
(process.py) gives it both. Mirrors ngx_worker_process_cycle.
"""

from __future__ import annotations

import signal
import socket
from typing import TYPE_CHECKING

from fastmail import _relay
from fastmail._conn import Listener
from fastmail._poll import Loop
from fastmail._session import DEBUG_BUILD, Engine, Server, debug_counters
from fastmail.log import ALERT, NOTICE, ErrorLog
from fastmail.server import close_server, entries_for, make_server

if TYPE_CHECKING:
    from fastmail.conf.model import Config, ListenSocket, LogTarget


class Worker:
    __slots__ = ("config", "sockets", "log", "loop", "engine", "servers", "listeners", "_logs")

    def __init__(
        self, config: Config, sockets: list[tuple[ListenSocket, socket.socket]], log: ErrorLog
    ) -> None:
        self.config = config
        self.sockets = sockets
        self.log = log
        self.loop: Loop = None  # type: ignore[assignment]
        self.engine: Engine = None  # type: ignore[assignment]
        self.servers: dict[int, Server] = {}
        self.listeners: list[Listener] = []
        self._logs: dict[tuple[object, ...], ErrorLog] = {}

    def _server_log(self, targets: list[LogTarget]) -> ErrorLog:
        if not targets or targets == self.config.main.error_log:
            return self.log
        key = tuple((t.kind, t.path, t.level) for t in targets)
        if key not in self._logs:
            self._logs[key] = ErrorLog(targets)
        return self._logs[key]

    def run(self) -> None:
        """Serves until the worker is told to stop."""
        loop = Loop()
        self.loop = loop
        loop.set_exception_handler(self._exception)
        self.engine = Engine(loop, self.log, self.config.events.worker_connections)
        try:
            if self.config.mail is not None:
                for s in self.config.mail.servers:
                    self.servers[id(s)] = make_server(s, loop, self._server_log(s.error_log))
            for ls, sock in self.sockets:
                entries = entries_for(ls, self.servers)
                if entries:
                    self.listeners.append(Listener(loop, sock, self.engine, entries))
            loop.add_signal_handler(signal.SIGQUIT, self.stop, True)
            loop.add_signal_handler(signal.SIGTERM, self.stop, False)
            loop.add_signal_handler(signal.SIGINT, self.stop, False)
            loop.add_signal_handler(signal.SIGUSR1, self.reopen)
            loop.add_signal_handler(signal.SIGHUP, lambda: None)  # the master reloads
            loop.run_forever()
        finally:
            for srv in self.servers.values():
                close_server(srv)
            _relay.pool_clear()
            if DEBUG_BUILD:
                self._report_counters()
            loop.close()

    def _report_counters(self) -> None:
        """The debug build's leak check: what is still alive once everything was closed.
        The test suite reads this line at teardown."""
        import gc

        self.engine = None  # type: ignore[assignment]
        gc.collect()
        counts = debug_counters(self.loop)
        text = ", ".join(f"{k} {v}" for k, v in counts.items())
        leaked = any(counts.values())
        self.log.log(ALERT if leaked else NOTICE, f"debug counters at exit: {text}")

    def _exception(self, loop: Loop, context: dict[str, object]) -> None:
        self.log.log(ALERT, f"{context.get('message')}: {context.get('exception')!r}")

    def stop(self, graceful: bool = True) -> None:
        """QUIT: stop accepting; every session goes on until it ends (bounded by
        worker_shutdown_timeout). TERM/INT: close everything now."""
        for lst in self.listeners:
            lst.close()
        self.listeners.clear()
        engine = self.engine
        if not graceful:
            engine.close_all(None)
            self.loop.stop()
            return
        engine.stopping = True
        if not engine.sessions:
            self.loop.stop()
            return
        engine.on_idle = self.loop.stop
        limit = self.config.main.worker_shutdown_timeout
        if limit:
            self.loop.call_later(limit / 1000, self._shutdown_timeout)

    def _shutdown_timeout(self) -> None:
        self.engine.close_all("shutdown timeout")
        self.loop.stop()

    def reopen(self) -> None:
        self.log.reopen()
        for log in self._logs.values():
            log.reopen()
