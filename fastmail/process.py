"""Processes: nginx's master/worker model.

Owns: daemonizing, the pid file, binding the listening sockets before workers fork (or taking
them over from an old master), forking `worker_processes` workers and replacing those that
die, and the master's signals, as nginx's: HUP reloads (new config, new workers, old workers
drain), QUIT stops gracefully, TERM/INT stop fast, USR1 reopens logs, USR2 starts a new
binary on the same sockets (upgrade.py), WINCH retires the workers of a daemonized master,
ALRM/IO/CHLD wake it, SYS and PIPE are ignored: no signal nginx handles kills a master.
With `master_process off` the one process is the worker. Must not parse config text (conf/
does) nor serve connections (worker.py does). Mirrors src/os/unix/ngx_process_cycle.c.

Beyond nginx: a worker that keeps dying soon after its start is respawned after a growing
delay (0.1 s doubling up to 5 s) instead of at once, so a crash loop does not spin the master.
"""

from __future__ import annotations

import grp
import os
import pwd
import resource
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastmail import metrics, sdnotify, uncaught, upgrade
from fastmail.accesslog import Files
from fastmail.conf import load
from fastmail.conf.errors import ConfigError
from fastmail.conf.model import Config, ListenSocket
from fastmail.log import ALERT, CRIT, EMERG, NOTICE, WARN, ErrorLog
from fastmail.server import bind_socket

if TYPE_CHECKING:
    from fastmail.worker import Worker

Bound = list[tuple[ListenSocket, socket.socket]]
BIND_TRIES = 5  # nginx retries bind() for 2.5 s before "still could not bind()"
QUICK_EXIT = 10.0  # s: a worker dying sooner after its start counts toward the back-off
BACKOFF_FIRST = 0.1  # s: the delay of the second quick death in a row; doubles after
BACKOFF_MAX = 5.0
KILL_AFTER = 1.55  # s from TERM to SIGKILL (nginx: 50 ms doubling until past 1 s)
FATAL = 2  # a worker's exit code for "cannot start": never respawned, as nginx

SIGHUP, SIGQUIT, SIGTERM, SIGINT = signal.SIGHUP, signal.SIGQUIT, signal.SIGTERM, signal.SIGINT
SIGUSR1, SIGUSR2, SIGWINCH, SIGCHLD = signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH, signal.SIGCHLD  # fmt: skip
MASTER_SIGNALS = {SIGHUP, SIGQUIT, SIGTERM, SIGINT, SIGUSR1, SIGUSR2, SIGWINCH, SIGCHLD,
                  signal.SIGALRM, signal.SIGIO}  # fmt: skip


def _planned(config: Config) -> list[ListenSocket]:
    """The sockets a config listens on: the mail ones, then metrics_listen's (a socket like
    the others for reloads and upgrades; no server{} is served on it)."""
    out = list(config.mail.sockets) if config.mail is not None else []
    lst = config.main.metrics_listen
    if lst is not None:
        out.append(ListenSocket(lst, [lst]))
    return out


def _bind(config: Config, reuse: dict[upgrade.Key, socket.socket], log: ErrorLog) -> Bound:
    """Binds the config's sockets; a socket in `reuse` with the same address (the previous
    config's, or one an old master passed on) is taken from it instead."""
    bound: Bound = []
    fresh: set[socket.socket] = set()
    for ls in _planned(config):
        sock = reuse.pop(upgrade.listen_key(ls.listen), None)
        if sock is not None:
            sock.setblocking(False)
            sock.listen(ls.listen.backlog)  # as nginx, a changed backlog applies
        else:
            for attempt in range(BIND_TRIES):
                try:
                    sock = bind_socket(ls)
                    fresh.add(sock)
                    break
                except OSError as e:
                    log.log(
                        EMERG, f"bind() to {ls.listen.addr_text} failed ({e.errno}: {e.strerror})"
                    )
                    if e.errno != 98 or attempt == BIND_TRIES - 1:
                        for kept_ls, s in bound:  # reused ones go back, new ones close
                            if s in fresh:
                                s.close()
                            else:
                                reuse[upgrade.listen_key(kept_ls.listen)] = s
                        raise
                    time.sleep(0.5)
        bound.append((ls, sock))  # type: ignore[arg-type]
    return bound


def _write_pid(path: str | None) -> None:
    if path:
        with open(path, "w") as f:
            f.write(f"{os.getpid()}\n")


def _remove_pid(path: str | None, log: ErrorLog) -> None:
    if path:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.log(ALERT, f'unlink() "{path}" failed ({e.errno}: {e.strerror})')


def _daemonize() -> None:
    if os.fork():
        os._exit(0)
    os.setsid()
    fd = os.open(os.devnull, os.O_RDWR)
    os.dup2(fd, 0)
    os.dup2(fd, 1)  # stderr stays until redirect_stderr() points it at the error log
    if fd > 2:
        os.close(fd)


class WorkerFatal(Exception):
    """A worker cannot start; the reason is logged already. Exit code 2, as nginx's."""


def _spawn(
    config: Config, sockets: Bound, log: ErrorLog, daemonized: bool, files: Files | None
) -> int:
    slot = metrics.reserve()
    if slot < 0 and metrics.enabled():
        log.log(ALERT, "metrics: no slot left for a new worker, its sessions are not counted")
    pid = os.fork()
    if pid:
        metrics.forked(slot, pid)
        return pid
    code = 0
    worker = None
    try:
        metrics.bind(slot)
        # the master's signals stay blocked until the worker's loop handles them (worker.py):
        # one sent meanwhile (a QUIT right after a reload) waits instead of killing it
        worker = _worker(config, sockets, log, forked=True, daemonized=daemonized, files=files)
        worker.run()
    except WorkerFatal:
        code = FATAL
    except BaseException as e:  # noqa: BLE001 - a worker must never return into the master
        log.log(ALERT, f"worker process failed: {uncaught.describe(e)}")
        code = 1 if worker is not None and worker.serving else FATAL
    os._exit(code)


def _worker(
    config: Config,
    sockets: Bound,
    log: ErrorLog,
    forked: bool,
    daemonized: bool,
    files: Files | None = None,
) -> Worker:
    """nginx's ngx_worker_process_init, then the Worker that serves."""
    from fastmail.worker import Worker  # noqa: PLC0415 - the master does not serve

    main = config.main
    log.reopen()  # this process's pid in the lines
    if forked and main.worker_priority:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, main.worker_priority)
        except OSError as e:
            log.log(ALERT, f"setpriority({main.worker_priority}) failed ({e.errno}: {e.strerror})")
    if main.worker_rlimit_nofile:
        n = main.worker_rlimit_nofile
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
        except (OSError, ValueError) as e:
            log.log(ALERT, f"setrlimit(RLIMIT_NOFILE, {n}) failed ({e})")
    if forked and main.user is not None and os.geteuid() == 0:
        # nginx: only workers of a root master switch; files are already open
        user, group = main.user
        pw = pwd.getpwnam(user)
        gid = grp.getgrnam(group).gr_gid if group else pw.pw_gid
        os.setgid(gid)
        os.initgroups(user, gid)
        os.setuid(pw.pw_uid)
    if forked and main.working_directory:
        try:
            os.chdir(main.working_directory)
        except OSError as e:
            log.log(ALERT, f'chdir("{main.working_directory}") failed ({e.errno}: {e.strerror})')
            raise WorkerFatal from None
    return Worker(config, sockets, log, winch_quits=forked and daemonized, files=files)


def run(
    config: Config, *, prefix: str = "", error_log: str | None = None, argv: list[str] | None = None
) -> int:
    """Starts fastmail with a loaded config; returns the exit code. `argv` is the command
    line's arguments (default sys.argv[1:]): a binary upgrade starts fastmail with them."""
    # nginx's signals wait until someone handles them: the master's sigwait, the loop of a
    # worker or of the single process; whatever else the parent blocked is unblocked
    signal.pthread_sigmask(signal.SIG_SETMASK, MASTER_SIGNALS)
    for sig in (signal.SIGSYS, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    parent = os.getppid()
    log = ErrorLog(config.main.error_log) if config.main.error_log else ErrorLog.stderr()
    uncaught.install(log)
    reuse, inherited = upgrade.inherited_sockets(log)
    passed = set(reuse.values())
    try:
        files = Files(config)  # access logs: opened before fork, as the error log is
    except OSError as e:
        log.log(EMERG, e.strerror or str(e))
        return 1
    try:
        sockets = _bind(config, reuse, log)
    except OSError:
        files.close()
        return 1
    finally:
        for s in reuse.values():  # inherited ones no listen names any more
            s.close()
    daemonized = inherited  # a new binary stays the old master's child, as nginx's
    if config.main.daemon and not inherited:
        parent = os.getpid()  # nginx's ngx_daemon: the parent is the process that exited
        _daemonize()
        log.pid = os.getpid()
        daemonized = True
    master = Master(config, sockets, log, argv, parent, daemonized)
    master.files = files
    master.inherited = {s for _, s in sockets if s in passed}
    master.plan_metrics()
    try:
        _write_pid(config.main.pid)
    except OSError as e:
        log.log(EMERG, f'open() "{config.main.pid}" failed ({e.errno}: {e.strerror})')
        master.close_listening()
        return 1
    try:
        log.redirect_stderr()
        log.log(NOTICE, 'using the "epoll" event method')
        if not config.main.master_process:
            slot = metrics.reserve()
            metrics.bind(slot)  # the one process is its own worker
            worker = _worker(config, sockets, log, False, daemonized, files)
            sdnotify.ready()  # the sockets listen: connections queue until the loop runs
            worker.run()
            sdnotify.stopping()
            return 0
        return master.run()
    finally:
        pid = master.config.main.pid
        _remove_pid(pid + upgrade.OLDBIN if pid and master.new_binary else pid, master.log)
        master.close_listening()


@dataclass(slots=True)
class Child:
    config: Config
    sockets: Bound
    started: float  # time.monotonic()
    exiting: bool = False  # told to stop: not respawned


class Master:
    """ngx_master_process_cycle: signals in, workers out."""

    def __init__(
        self,
        config: Config,
        sockets: Bound,
        log: ErrorLog,
        argv: list[str] | None,
        parent: int,
        daemonized: bool,
    ) -> None:
        self.config = config
        self.sockets = sockets
        self.log = log
        self.argv = upgrade.program(sys.argv[1:] if argv is None else argv)
        self.parent = parent  # getppid() at start: USR2 waits until it changes
        self.daemonized = daemonized
        self.workers: dict[int, Child] = {}
        self.pending: list[float] = []  # due times of delayed respawns
        self.streak = 0  # quick worker deaths in a row
        self.new_binary = 0
        self.noaccepting = False
        self.quit = False
        self.terminate = False
        self.kill_at = 0.0
        self.inherited: set[socket.socket] = set()  # passed on by an old master
        self.files: Files | None = None  # the config's access log files

    def run(self) -> int:
        self.start_workers()
        sdnotify.ready()
        while True:
            wait = self._next_timer()
            info: signal.struct_siginfo | None  # None: sigtimedwait timed out
            if wait is None:
                info = signal.sigwaitinfo(MASTER_SIGNALS)
            else:
                info = signal.sigtimedwait(MASTER_SIGNALS, wait)
            try:
                if info is not None:
                    self._signal(info.si_signo, info.si_pid)
                self._timers()
                if metrics.enabled():
                    metrics.refresh_self(0, metrics.fds_of_self())
            except Exception as e:  # noqa: BLE001 - a bug here must not orphan the workers
                self.log.log(ALERT, f"master process: {uncaught.describe(e)}")
            if (self.quit or self.terminate) and not self.workers:
                self.log.log(NOTICE, "exit")
                return 0

    def plan_metrics(self) -> None:
        """The config's metric series, planned before any worker of it forks."""
        alert = metrics.setup(self.config)
        if alert is not None:
            self.log.log(ALERT, alert)
        if metrics.enabled():
            metrics.refresh_self(0, metrics.fds_of_self())

    # --- signals -----------------------------------------------------------------------

    def _signal(self, sig: int, sender: int) -> None:
        action, ignored = "", False
        if sig == SIGQUIT:
            action = ", shutting down"
        elif sig in (SIGTERM, SIGINT):
            action = ", exiting"
        elif sig == SIGWINCH and self.daemonized:
            action = ", stop accepting connections"
        elif sig == SIGHUP:
            action = ", reconfiguring"
        elif sig == SIGUSR1:
            action = ", reopening logs"
        elif sig == SIGUSR2:
            # a new binary waits until its old master is gone, an old one for its new binary
            ignored = os.getppid() == self.parent or self.new_binary > 0
            action = ", ignoring" if ignored else ", changing binary"
        name = signal.Signals(sig).name
        src = f" from {sender}" if sender else ""
        self.log.log(NOTICE, f"signal {sig} ({name}) received{src}{action}")
        if ignored:
            self.log.log(
                CRIT,
                "the changing binary signal is ignored: you should shutdown or terminate "
                "before either old or new binary's process",
            )
            return
        if sig == SIGCHLD:
            self._reap()
        elif sig == SIGQUIT:
            if not self.new_binary:  # else the new master is the service's main process
                sdnotify.stopping()
            self.quit = True
            self.pending.clear()
            self._signal_workers(SIGQUIT)
            self.close_listening()
        elif sig in (SIGTERM, SIGINT):
            if not self.new_binary:
                sdnotify.stopping()
            self.pending.clear()
            if not self.terminate:
                self.kill_at = time.monotonic() + KILL_AFTER
            self.terminate = True
            self._signal_workers(SIGTERM)
        elif self.quit or self.terminate:
            return  # stopping: nothing new starts
        elif sig == SIGHUP:
            sdnotify.reloading()
            try:
                self._reconfigure()
            finally:
                sdnotify.ready()  # the new config, or the old one when it was refused
        elif sig == SIGUSR1:
            self.log.log(NOTICE, "reopening logs")
            self.log.reopen()
            if self.files is not None:
                self.files.reopen(self.log)  # for workers forked from now on
            self._signal_workers(SIGUSR1)
        elif sig == SIGUSR2:
            self.log.log(NOTICE, "changing binary")
            sockets = [s for _, s in self.sockets]
            self.new_binary = upgrade.exec_new_binary(
                self.argv, sockets, self.config.main.pid, self.log
            )
        elif sig == SIGWINCH and self.daemonized:
            self.noaccepting = True
            self.pending.clear()
            self._signal_workers(SIGQUIT)

    def _signal_workers(self, sig: int) -> None:
        for pid, child in self.workers.items():
            if sig == SIGQUIT and child.exiting:
                continue
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass  # exited; the SIGCHLD is on its way
            if sig != SIGUSR1:
                child.exiting = True

    def _reconfigure(self) -> None:
        if self.new_binary:
            # nginx: the old master of an upgrade starts workers again (a rollback) and does
            # not reread its config; with workers still running there is nothing to start
            if self.noaccepting:
                self.noaccepting = False
                self.start_workers()
            return
        self.log.log(NOTICE, "reconfiguring")
        old = self.config
        reuse = {upgrade.listen_key(ls.listen): s for ls, s in self.sockets}
        try:
            config = load(old.path, old.prefix)
        except ConfigError as e:
            self.log.log(EMERG, str(e))
            return
        try:
            files = Files(config)
        except OSError as e:
            self.log.log(EMERG, e.strerror or str(e))
            return
        try:
            sockets = _bind(config, reuse, self.log)
        except OSError as e:
            files.close()
            self.log.log(EMERG, str(e))
            return
        for s in reuse.values():  # addresses no listen names any more
            s.close()
        if config.main.error_log != old.main.error_log:
            log = ErrorLog(config.main.error_log) if config.main.error_log else ErrorLog.stderr()
            log.redirect_stderr()
            uncaught.install(log)
            self.log.close()
            self.log = log
        previous = [pid for pid, c in self.workers.items() if not c.exiting]
        self.config, self.sockets = config, sockets
        if self.files is not None:
            self.files.close()  # the old workers have their own copies; no new one needs them
        self.files = files
        self.plan_metrics()
        self.pending.clear()  # the new set is complete
        self.start_workers()
        for pid in previous:
            self.workers[pid].exiting = True
            try:
                os.kill(pid, SIGQUIT)
            except ProcessLookupError:
                pass

    # --- workers -----------------------------------------------------------------------

    def start_workers(self) -> None:
        self.log.log(NOTICE, "start worker processes")
        for _ in range(self.config.main.worker_processes):
            self._start_worker()

    def _start_worker(self) -> None:
        pid = _spawn(self.config, self.sockets, self.log, self.daemonized, self.files)
        self.workers[pid] = Child(self.config, self.sockets, time.monotonic())
        self.log.log(NOTICE, f"start worker process {pid}")

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if not pid:
                return
            child = self.workers.pop(pid, None)
            metrics.exited(pid)  # its counters join the retired totals
            name = (
                "worker process"
                if child is not None
                else "new binary process"
                if pid == self.new_binary
                else "unknown process"
            )
            code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 0
            if os.WIFSIGNALED(status):
                core = " (core dumped)" if os.WCOREDUMP(status) else ""
                self.log.log(ALERT, f"{name} {pid} exited on signal {os.WTERMSIG(status)}{core}")
            else:
                self.log.log(NOTICE, f"{name} {pid} exited with code {code}")
            if pid == self.new_binary:
                self.new_binary = 0
                if not (self.quit or self.terminate):
                    sdnotify.ready()  # the main process again (MAINPID=): a rollback
                pid_path = self.config.main.pid
                if pid_path is not None:
                    why = f'after the new binary process "{self.argv[0]}" exited'
                    upgrade.rename_back(pid_path, self.log, why)
                if self.noaccepting and not (self.quit or self.terminate):
                    self.noaccepting = False
                    self.start_workers()
            elif child is not None:
                self._respawn(pid, child, code)

    def _respawn(self, pid: int, child: Child, code: int) -> None:
        if child.exiting or self.quit or self.terminate or child.config is not self.config:
            return
        if code == FATAL:
            self.log.log(
                ALERT,
                f"worker process {pid} exited with fatal code {FATAL} and cannot be respawned",
            )
            return
        now = time.monotonic()
        self.streak = self.streak + 1 if now - child.started < QUICK_EXIT else 1
        if self.streak <= 1:
            self._start_worker()  # nginx: at once
            return
        delay = min(BACKOFF_FIRST * 2 ** (self.streak - 2), BACKOFF_MAX)
        self.log.log(
            WARN,
            f"{self.streak} worker processes in a row exited within {QUICK_EXIT:g}s of "
            f"starting, respawning in {int(delay * 1000)}ms",
        )
        self.pending.append(now + delay)

    def _next_timer(self) -> float | None:
        due = [*self.pending, self.kill_at] if self.kill_at else self.pending
        if not due:
            return None
        return max(0.0, min(due) - time.monotonic())

    def _timers(self) -> None:
        now = time.monotonic()
        if self.kill_at and now >= self.kill_at:
            self.kill_at = 0.0
            for pid in self.workers:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        due = [t for t in self.pending if t <= now]
        if due:
            self.pending = [t for t in self.pending if t > now]
            for _ in due:
                self._start_worker()

    # --- sockets -----------------------------------------------------------------------

    def close_listening(self) -> None:
        """ngx_close_listening_sockets: a unix socket's file is removed, unless a new
        binary serves it, or an old master that passed it on still runs."""
        for ls, sock in self.sockets:
            path = ls.listen.path
            sock.close()
            if (
                path is not None
                and not self.new_binary
                and (sock not in self.inherited or os.getppid() != self.parent)
            ):
                try:
                    os.unlink(path)
                except OSError as e:
                    self.log.log(CRIT, f'unlink() "{path}" failed ({e.errno}: {e.strerror})')
        self.sockets = []
