"""Processes: nginx's master/worker model.

Owns: daemonizing, the pid file, binding the listening sockets before workers fork, forking
`worker_processes` workers and replacing those that die, and the master's signals: HUP
reloads (new config, new workers, old workers drain), QUIT stops gracefully, TERM/INT stop
fast, USR1 reopens logs. With `master_process off` the one process is the worker. Must not
parse config text (conf/ does) nor serve connections (worker.py does). Mirrors
src/os/unix/ngx_process_cycle.c.
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

from fastmail.conf import load
from fastmail.conf.errors import ConfigError
from fastmail.conf.model import Config, ListenSocket
from fastmail.log import ALERT, EMERG, NOTICE, ErrorLog
from fastmail.server import bind_socket

Bound = list[tuple[ListenSocket, socket.socket]]
BIND_TRIES = 5  # nginx retries bind() for 2.5 s before "still could not bind()"


def _bind(config: Config, old: Bound, log: ErrorLog) -> Bound:
    """Binds the config's sockets, reusing already bound ones with the same address."""
    if config.mail is None:
        return []
    reuse = {ls.listen.addr_text: sock for ls, sock in old}
    bound: Bound = []
    for ls in config.mail.sockets:
        sock = reuse.pop(ls.listen.addr_text, None)
        if sock is None:
            for attempt in range(BIND_TRIES):
                try:
                    sock = bind_socket(ls)
                    break
                except OSError as e:
                    log.log(
                        EMERG, f"bind() to {ls.listen.addr_text} failed ({e.errno}: {e.strerror})"
                    )
                    if e.errno != 98 or attempt == BIND_TRIES - 1:
                        for _, s in bound:
                            if s not in dict(old).values():
                                s.close()
                        raise
                    time.sleep(0.5)
        bound.append((ls, sock))  # type: ignore[arg-type]
    return bound


def _write_pid(path: str | None) -> None:
    if path:
        with open(path, "w") as f:
            f.write(f"{os.getpid()}\n")


def _remove_pid(path: str | None) -> None:
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass


def _daemonize() -> None:
    if os.fork():
        os._exit(0)
    os.setsid()
    fd = os.open(os.devnull, os.O_RDWR)
    os.dup2(fd, 0)
    os.dup2(fd, 1)
    if fd > 2:
        os.close(fd)


def _spawn(config: Config, sockets: Bound, log: ErrorLog) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:
        for sig in (signal.SIGHUP, signal.SIGQUIT, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        _run_worker(config, sockets, log)
    except BaseException as e:  # noqa: BLE001 - a worker must never return into the master
        log.log(ALERT, f"worker process failed: {e!r}")
        code = 2
    os._exit(code)


def _run_worker(config: Config, sockets: Bound, log: ErrorLog, forked: bool = True) -> None:
    from fastmail.worker import Worker

    main = config.main
    if main.worker_rlimit_nofile:
        n = main.worker_rlimit_nofile
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
        except (OSError, ValueError) as e:
            log.log(ALERT, f"setrlimit(RLIMIT_NOFILE, {n}) failed ({e})")
    log.reopen()
    if forked and main.user is not None and os.geteuid() == 0:
        # nginx: only workers of a root master switch; files are already open
        user, group = main.user
        pw = pwd.getpwnam(user)
        gid = grp.getgrnam(group).gr_gid if group else pw.pw_gid
        os.setgid(gid)
        os.initgroups(user, gid)
        os.setuid(pw.pw_uid)
    Worker(config, sockets, log).run()


def run(config: Config, *, prefix: str = "", error_log: str | None = None) -> int:
    """Starts fastmail with a loaded config; returns the exit code."""
    signal.pthread_sigmask(signal.SIG_SETMASK, [])  # whatever the parent blocked, as nginx
    log = ErrorLog(config.main.error_log) if config.main.error_log else ErrorLog.stderr()
    try:
        sockets = _bind(config, [], log)
    except OSError:
        return 1
    if config.main.daemon:
        _daemonize()
    try:
        _write_pid(config.main.pid)
    except OSError as e:
        log.log(EMERG, f'open() "{config.main.pid}" failed ({e.errno}: {e.strerror})')
        return 1
    log.log(NOTICE, 'using the "epoll" event method')
    try:
        if not config.main.master_process:
            _run_worker(config, sockets, log, forked=False)
            return 0
        return _master(config, sockets, log)
    finally:
        _remove_pid(config.main.pid)
        for _, s in sockets:
            s.close()


def _master(config: Config, sockets: Bound, log: ErrorLog) -> int:
    signals = {signal.SIGHUP, signal.SIGQUIT, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1,
               signal.SIGCHLD}  # fmt: skip
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    workers: dict[int, tuple[Config, Bound]] = {}
    old: set[int] = set()  # workers of an earlier config, draining

    def start_workers() -> None:
        for _ in range(config.main.worker_processes):
            pid = _spawn(config, sockets, log)
            workers[pid] = (config, sockets)
            log.log(NOTICE, f"start worker process {pid}")

    start_workers()
    stopping = 0
    while True:
        sig = signal.sigwait(signals)
        if sig == signal.SIGCHLD:
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    pid = 0
                if not pid:
                    break
                workers.pop(pid, None)
                if pid in old:
                    old.discard(pid)
                    continue
                if not stopping:
                    code = os.waitstatus_to_exitcode(status)
                    log.log(ALERT, f"worker process {pid} exited with code {code}")
                    new = _spawn(config, sockets, log)
                    workers[new] = (config, sockets)
            if stopping and not workers:
                return 0
        elif sig in (signal.SIGQUIT, signal.SIGTERM, signal.SIGINT):
            stopping = sig
            for pid in workers:
                _kill(pid, signal.SIGQUIT if sig == signal.SIGQUIT else signal.SIGTERM)
            if not workers:
                return 0
        elif sig == signal.SIGUSR1:
            log.reopen()
            for pid in workers:
                _kill(pid, signal.SIGUSR1)
        elif sig == signal.SIGHUP:
            log.log(NOTICE, "reconfiguring")
            try:
                new_config = load(config.path, config.prefix)
                new_sockets = _bind(new_config, sockets, log)
            except (ConfigError, OSError) as e:
                log.log(EMERG, str(e))
                continue
            keep = {id(s) for _, s in new_sockets}
            for _, s in sockets:
                if id(s) not in keep:
                    s.close()
            previous = list(workers)
            config, sockets = new_config, new_sockets
            start_workers()
            for pid in previous:
                old.add(pid)
                _kill(pid, signal.SIGQUIT)


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: python -m fastmail")
