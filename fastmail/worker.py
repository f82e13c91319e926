"""One worker: fastmail's own event loop serving the listening sockets the master bound.

Owns: the loop (fastmail._poll.Loop: the only epoll in the process), the engine with its
sessions, the per-server runtimes and listeners, and the worker's signals (QUIT drains,
TERM/INT stop, USR1 reopens logs, WINCH drains a daemonized master's worker; HUP, USR2, ALRM
and IO are nginx's signals too and must not kill it). Must not bind sockets or read config
text: the master (process.py) gives it both. Mirrors ngx_worker_process_cycle.
"""

from __future__ import annotations

import signal
import socket
from dataclasses import astuple
from typing import TYPE_CHECKING

from fastmail import _relay, metrics, uncaught
from fastmail._conn import Listener
from fastmail._engine import Engine, debug_counters
from fastmail._poll import Loop
from fastmail._report import Server
from fastmail._session import DEBUG_BUILD
from fastmail.accesslog import Files, Logs
from fastmail.exporter import Exporter
from fastmail.log import ALERT, NOTICE, ErrorLog
from fastmail.server import close_server, entries_for, make_server

if TYPE_CHECKING:
    from fastmail.conf.model import Config, ListenSocket, LogTarget


class Worker:
    __slots__ = (
        "config", "sockets", "log", "loop", "engine", "servers", "listeners", "_logs",
        "serving", "winch_quits", "exporter", "files", "alogs",
    )  # fmt: skip

    def __init__(
        self,
        config: Config,
        sockets: list[tuple[ListenSocket, socket.socket]],
        log: ErrorLog,
        winch_quits: bool = False,
        files: Files | None = None,
    ) -> None:
        self.config = config
        self.sockets = sockets
        self.log = log
        self.serving = False  # past startup: a failure now is not nginx's fatal exit code 2
        self.winch_quits = winch_quits  # nginx: WINCH quits a worker of a daemonized master
        self.loop: Loop = None  # type: ignore[assignment]
        self.engine: Engine = None  # type: ignore[assignment]
        self.servers: dict[int, Server] = {}
        self.listeners: list[Listener] = []
        self._logs: dict[tuple[object, ...], ErrorLog] = {}
        self.exporter: Exporter | None = None
        self.files = files  # the access log files the master opened
        self.alogs: Logs = None  # type: ignore[assignment]

    def _server_log(self, targets: list[LogTarget]) -> ErrorLog:
        if not targets or targets == self.config.main.error_log:
            return self.log
        key = tuple(astuple(t) for t in targets)  # level, debug mask, syslog server included
        if key not in self._logs:
            self._logs[key] = ErrorLog(targets)
        return self._logs[key]

    def run(self) -> None:
        """Serves until the worker is told to stop."""
        loop = Loop()
        self.loop = loop
        loop.set_exception_handler(uncaught.loop_handler(self.log))
        self.engine = Engine(loop, self.log, self.config.events.worker_connections)
        self.engine.mx_dropped = metrics.series(metrics.CONNECTIONS_DROPPED, "worker_connections")
        self.alogs = Logs(loop, self.files, self.log)
        try:
            if self.config.mail is not None:
                for s in self.config.mail.servers:
                    self.servers[id(s)] = make_server(
                        s, loop, self._server_log(s.error_log), self.log, self.alogs.for_server(s)
                    )
                self.engine.by_conf = dict(self.servers)  # keyed by id(ServerConf): SNI's choice
            metrics_listen = self.config.main.metrics_listen
            for ls, sock in self.sockets:
                if ls.listen is metrics_listen and metrics.enabled():
                    self.exporter = Exporter(loop, sock, self.log)
                    continue
                entries = entries_for(ls, self.servers)
                if entries:
                    self.listeners.append(Listener(loop, sock, self.engine, entries))
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
            loop.run_forever()
        finally:
            # closing the loop restores the default actions: a late signal must not kill
            # the worker mid-exit, as nginx's never dies of its own signals
            signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
            if self.exporter is not None:
                self.exporter.close()
            self.alogs.close()  # what is pending is written
            for srv in self.servers.values():
                close_server(srv)
            _relay.pool_clear()
            if DEBUG_BUILD:
                self._report_counters()
            loop.close()
        self.log.log(NOTICE, "exit")

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

    def stop(self, graceful: bool = True) -> None:
        """QUIT: stop accepting and let the sessions end, those logging in too, as nginx's
        (bounded by their `timeout` and by worker_shutdown_timeout): a reload or an upgrade
        loses no login. TERM/INT: close everything now."""
        engine = self.engine
        if graceful and not engine.stopping:
            self.log.log(NOTICE, "gracefully shutting down")
        for lst in self.listeners:
            lst.close()
        self.listeners.clear()
        if self.exporter is not None:
            self.exporter.stop_listening()  # the new workers answer scrapes
        if not graceful:
            engine.close_all(None)
            self.loop.stop()
            return
        engine.stopping = True
        if not engine.sessions:
            self._exiting()
            return
        engine.on_idle = self._exiting
        limit = self.config.main.worker_shutdown_timeout
        if limit:
            self.loop.call_later(limit / 1000, self._shutdown_timeout)

    def _exiting(self) -> None:
        self.log.log(NOTICE, "exiting")
        self.loop.stop()

    def _shutdown_timeout(self) -> None:
        self.engine.close_all("shutdown timeout")
        self.loop.stop()

    def reopen(self) -> None:
        self.log.reopen()
        for log in self._logs.values():
            log.reopen()
        self.alogs.reopen()


# every signal the worker handles (nginx's set; SIGCHLD, SIGPIPE and SIGSYS stay ignored)
SIGNALS = (
    signal.SIGQUIT, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGWINCH,
    signal.SIGHUP, signal.SIGUSR2, signal.SIGALRM, signal.SIGIO,
)  # fmt: skip


def _ignore() -> None:
    pass
