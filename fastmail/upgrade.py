"""The binary upgrade's two ends: starting a new binary on the listening sockets, and taking
them over in it. Mirrors ngx_exec_new_binary and ngx_add_inherited_sockets (src/core/nginx.c).

Owns: the `FASTMAIL` environment variable (`fd;fd;`, nginx's `NGINX` format), renaming the
pid file to `<pid>.oldbin` and back, spawning the new program with the sockets inheritable,
and matching inherited sockets to `listen` addresses. Must not bind, fork workers or handle
signals: process.py decides when.

The new program is the one that started this process (`sys.orig_argv`, under this Python), so
an upgraded installation runs its new code; the environment is passed on as it is (nginx keeps
only `env` names, but fastmail's prefix may come from `$FASTMAIL_PREFIX` and Python needs its
own variables). A fastmail started by nginx's own USR2 (nginx's binary replaced by a script
running fastmail) takes nginx's `NGINX` sockets the same way: a live move from nginx.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

from fastmail.conf.model import Listen
from fastmail.log import ALERT, CRIT, EMERG, NOTICE, ErrorLog

ENV = "FASTMAIL"
NGINX_ENV = "NGINX"
OLDBIN = ".oldbin"  # nginx's NGX_OLDPID_EXT

Key = tuple[int, Any, int]


def sock_key(family: int, addr: Any) -> Key:
    """What two sockets with the same address have in common (nginx's ngx_cmp_sockaddr)."""
    if family == socket.AF_UNIX:
        return (family, addr, 0)
    host, port = addr[0], addr[1]
    try:
        host = socket.inet_pton(family, host)
    except (OSError, ValueError):
        pass  # e.g. a scoped IPv6 address: compared as text
    return (family, host, port)


def listen_key(lst: Listen) -> Key:
    return sock_key(lst.family, lst.path if lst.family == socket.AF_UNIX else (lst.host, lst.port))


def inherited_sockets(log: ErrorLog) -> tuple[dict[Key, socket.socket], bool]:
    """The listening sockets an old master passed in `FASTMAIL` (or nginx in `NGINX`), by
    address, and whether there was such a variable; it is removed from the environment so
    workers and later upgrades do not see it."""
    name = ENV if ENV in os.environ else NGINX_ENV if NGINX_ENV in os.environ else None
    if name is None:
        return {}, False
    text = os.environ.pop(name)
    os.environ.pop(NGINX_ENV, None)
    log.log(NOTICE, f'using inherited sockets from "{text}"')
    fds: list[int] = []
    start = 0
    for i, c in enumerate(text):
        if c in ":;":
            if not text[start:i].isdigit():
                log.log(
                    EMERG,
                    f'invalid socket number "{text[start:]}" in {name} environment variable, '
                    "ignoring the rest of the variable",
                )
                break
            fds.append(int(text[start:i]))
            start = i + 1
    else:
        if start != len(text):
            log.log(
                EMERG,
                f'invalid socket number "{text[start:]}" in {name} environment variable, ignoring',
            )
    out: dict[Key, socket.socket] = {}
    for fd in fds:
        try:
            sock = socket.socket(fileno=fd)
        except OSError as e:
            log.log(
                CRIT,
                f"getsockname() of the inherited socket #{fd} failed ({e.errno}: {e.strerror})",
            )
            continue
        try:
            key = sock_key(sock.family, sock.getsockname())
        except OSError as e:
            log.log(
                CRIT,
                f"getsockname() of the inherited socket #{fd} failed ({e.errno}: {e.strerror})",
            )
            sock.detach()
            continue
        os.set_inheritable(fd, False)
        out[key] = sock
    return out, True


def program(args: list[str]) -> list[str]:
    """The command line of the new binary: this one's as Python saw it when `args` are the
    process's own arguments (console script or `-m fastmail`, interpreter options kept), else
    `python -m fastmail args` (fastmail started from another program's code)."""
    orig = sys.orig_argv
    if args == sys.argv[1:] and len(orig) > len(args) and orig[len(orig) - len(args) :] == args:
        return [sys.executable, *orig[1:]]
    return [sys.executable, "-m", "fastmail", *args]


def exec_new_binary(
    argv: list[str], sockets: list[socket.socket], pid_path: str | None, log: ErrorLog
) -> int:
    """Renames the pid file to `.oldbin` and starts `argv` with the sockets inherited;
    returns its pid, or 0 after logging why not (the pid file is renamed back)."""
    env = {k: v for k, v in os.environ.items() if k not in (ENV, NGINX_ENV)}
    env[ENV] = "".join(f"{s.fileno()};" for s in sockets)
    if pid_path is not None:
        try:
            os.rename(pid_path, pid_path + OLDBIN)
        except OSError as e:
            log.log(
                ALERT,
                f"rename() {pid_path} to {pid_path}{OLDBIN} failed ({e.errno}: {e.strerror}) "
                f'before executing new binary process "{argv[0]}"',
            )
            return 0
    for s in sockets:
        os.set_inheritable(s.fileno(), True)
    try:
        pid = os.posix_spawn(argv[0], argv, env, setsigmask=())
    except OSError as e:
        log.log(
            ALERT,
            f'execve() failed while executing new binary process "{argv[0]}" '
            f"({e.errno}: {e.strerror})",
        )
        if pid_path is not None:
            rename_back(
                pid_path,
                log,
                f'after an attempt to execute new binary process "{argv[0]}"',
            )
        return 0
    finally:
        for s in sockets:
            os.set_inheritable(s.fileno(), False)
    log.log(NOTICE, f"start new binary process {pid}")
    return pid


def rename_back(pid_path: str, log: ErrorLog, why: str) -> None:
    """`.oldbin` back to the pid file: the new binary is gone, this master is the one."""
    try:
        os.rename(pid_path + OLDBIN, pid_path)
    except OSError as e:
        log.log(
            ALERT,
            f"rename() {pid_path}{OLDBIN} back to {pid_path} failed ({e.errno}: {e.strerror}) "
            + why,
        )
