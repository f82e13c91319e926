"""fastmail's command line, nginx's flags and messages (`fastmail:` where nginx says `nginx:`).

Owns option parsing (-h -? -v -V -t -T -q -p -c -e -g -s), the config test (-t/-T: load, open
the pid and log files, bind+listen+close every listening socket as nginx does) and sending
signals (-s). A real start is handed to fastmail.process.run(); this file never serves traffic.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys
import time
from typing import TextIO

from fastmail import NGINX_COMPAT, __version__
from fastmail.conf import AccessLog, Config, ConfigError, load
from fastmail.conf.errors import strerror
from fastmail.conf.main import DEFAULT_CONF, DEFAULT_ERROR_LOG, DEFAULT_PID, DEFAULT_PREFIX

SIGNALS = {
    "stop": signal.SIGTERM,
    "quit": signal.SIGQUIT,
    "reopen": signal.SIGUSR1,
    "reload": signal.SIGHUP,
}

HELP = f"""Usage: fastmail [-?hvVtTq] [-s signal] [-p prefix]
                [-e filename] [-c filename] [-g directives]

Options:
  -?,-h         : this help
  -v            : show version and exit
  -V            : show version and configure options then exit
  -t            : test configuration and exit
  -T            : test configuration, dump it and exit
  -q            : suppress non-error messages during configuration testing
  -s signal     : send signal to a master process: stop, quit, reopen, reload
  -p prefix     : set prefix path (default: $FASTMAIL_PREFIX, else {DEFAULT_PREFIX})
  -e filename   : set error log file (default: {DEFAULT_ERROR_LOG})
  -c filename   : set configuration file (default: {DEFAULT_CONF})
  -g directives : set global directives out of configuration file

"""


class StartupLog:
    """nginx's startup log: every message to the -e file (timestamped) and, echoed, to stderr as
    `fastmail: [level] message`. With `-e stderr`, or when the file cannot be opened, the log
    is stderr itself and the timestamped line is all that is printed, as in nginx."""

    def __init__(self, path: str | None) -> None:
        self.file: TextIO = sys.stderr
        if path is None:
            return
        try:
            self.file = open(path, "a", encoding="utf-8", errors="surrogateescape")  # noqa: SIM115
        except OSError as e:
            self.stderr(
                "[alert] could not open error log file: "
                f'open() "{path}" failed {strerror(e.errno or errno.EIO)}'
            )

    @staticmethod
    def stderr(text: str) -> None:
        sys.stderr.write(f"fastmail: {text}\n")
        sys.stderr.flush()

    def log(self, level: str, msg: str, echo: bool = True) -> None:
        stamp = time.strftime("%Y/%m/%d %H:%M:%S")
        pid = os.getpid()
        self.file.write(f"{stamp} [{level}] {pid}#{pid}: {msg}\n")
        self.file.flush()
        if echo and self.file is not sys.stderr:
            self.stderr(f"[{level}] {msg}")

    def close(self) -> None:
        if self.file is not sys.stderr:
            self.file.close()


class Options:
    def __init__(self) -> None:
        self.help = self.version = self.configure = False
        self.test = self.dump = self.quiet = False
        self.prefix: str | None = None
        self.conf: str | None = None
        self.error_log: str | None = None
        self.params: str | None = None
        self.signal: str | None = None


def parse_args(argv: list[str]) -> Options:
    """Raises ValueError with nginx's message (after `fastmail: `)."""
    o = Options()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-"):
            raise ValueError(f'invalid option: "{arg}"')
        j = 1
        while j < len(arg):
            c = arg[j]
            j += 1
            if c in "?h":
                o.version = o.help = True
            elif c == "v":
                o.version = True
            elif c == "V":
                o.version = o.configure = True
            elif c == "t":
                o.test = True
            elif c == "T":
                o.test = o.dump = True
            elif c == "q":
                o.quiet = True
            elif c in "pceg s".replace(" ", ""):
                if j < len(arg):
                    value = arg[j:]
                elif i + 1 < len(argv):
                    i += 1
                    value = argv[i]
                else:
                    need = {"p": "directory name", "c": "file name", "e": "file name"}
                    raise ValueError(f'option "-{c}" requires {need.get(c, "parameter")}')
                if c == "s":
                    if value not in SIGNALS:
                        raise ValueError(f'invalid option: "-s {value}"')
                    o.signal = value
                else:
                    setattr(
                        o, {"p": "prefix", "c": "conf", "e": "error_log", "g": "params"}[c], value
                    )
                break
            else:
                raise ValueError(f'invalid option: "{c}"')
        i += 1
    return o


def show_version(o: Options) -> None:
    out = [f"fastmail version: fastmail/{__version__}"]
    if o.help:
        out.append(HELP.rstrip("\n") + "\n")
    if o.configure:
        from fastmail._tlsctx import openssl_versions

        built, running = openssl_versions()
        out.append(
            f"built with {built}" + (f" (running with {running})" if running != built else "")
        )
        out.append("TLS SNI support enabled")
        out.append(f"mirrors the mail proxy of nginx/{NGINX_COMPAT}")
        out.append(
            f"configure arguments: --prefix={DEFAULT_PREFIX} --conf-path={DEFAULT_CONF} "
            f"--error-log-path={DEFAULT_ERROR_LOG} --pid-path=logs/fastmail.pid --with-mail "
            "--with-mail_ssl_module"
        )
    sys.stderr.write("\n".join(out) + "\n")


def log_files(cfg: Config) -> list[str]:
    """Every error_log file of the config (main, mail{} and server{}), once each, in order."""
    targets = list(cfg.main.error_log)
    if cfg.mail is not None:
        for srv in cfg.mail.servers:
            targets.extend(srv.error_log)
    paths = [t.path for t in targets if t.kind == "file" and t.path is not None]
    return list(dict.fromkeys(paths))


def make_default_logs(prefix: str, paths: list[str | None]) -> None:
    """A pip install makes no prefix, as nginx's installer does: so when a file in use is the
    built-in default under the default prefix (no -p), its logs/ directory is created (0755).
    Explicit -p, -e, pid and error_log paths are left as nginx leaves them. A failure here
    surfaces as nginx's open() error on the file itself."""
    defaults = {prefix + DEFAULT_PID, prefix + DEFAULT_ERROR_LOG}
    if any(p in defaults for p in paths):
        try:
            os.makedirs(prefix + "logs", 0o755, exist_ok=True)
        except OSError:
            pass


def open_files(cfg: Config) -> None:
    """-t opens (and creates) the pid file, every error_log and access_log file, as nginx
    does."""
    if cfg.main.pid is not None:
        try:
            os.close(os.open(cfg.main.pid, os.O_RDWR | os.O_CREAT, 0o644))
        except OSError as e:
            raise ConfigError(
                f'open() "{cfg.main.pid}" failed {strerror(e.errno or errno.EIO)}'
            ) from None
    access = [a.path for a in cfg_access_logs(cfg) if a.path is not None]
    for path in dict.fromkeys([*log_files(cfg), *access]):
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
        except OSError as e:
            raise ConfigError(f'open() "{path}" failed {strerror(e.errno or errno.EIO)}') from None


def cfg_access_logs(cfg: Config) -> list[AccessLog]:
    return [a for s in (cfg.mail.servers if cfg.mail else []) for a in s.access_log]


def test_bind(cfg: Config) -> None:
    """Bind, listen and close every planned socket (metrics_listen's too); EADDRINUSE is
    ignored under -t, as nginx's ngx_open_listening_sockets does with ngx_test_config."""
    planned = [p.listen for p in cfg.mail.sockets] if cfg.mail is not None else []
    if cfg.main.metrics_listen is not None:
        planned.append(cfg.main.metrics_listen)
    for ls in planned:
        s = socket.socket(ls.family, socket.SOCK_STREAM)
        try:
            if ls.family != socket.AF_UNIX:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if ls.family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(ls.ipv6only))
            try:
                s.bind(ls.sockaddr)
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    continue
                raise ConfigError(
                    f"bind() to {ls.addr_text} failed {strerror(e.errno or 0)}"
                ) from None
            s.listen(ls.backlog)
            if ls.path is not None:
                os.unlink(ls.path)
        finally:
            s.close()


def send_signal(cfg: Config, name: str, log: StartupLog) -> int:
    log.log("notice", "signal process started", echo=False)
    path = cfg.main.pid
    if path is None:
        log.log("error", "no pid file is configured (pid off)")
        return 1
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        log.log("error", f'open() "{path}" failed {strerror(e.errno or errno.EIO)}')
        return 1
    text = raw.rstrip(b"\r\n").decode("utf-8", "surrogateescape")
    if not text.isascii() or not text.isdigit():
        log.log("error", f'invalid PID number "{text}" in "{path}"')
        return 1
    pid, sig = int(text), SIGNALS[name]
    try:
        os.kill(pid, sig)
    except OSError as e:
        log.log("alert", f"kill({pid}, {int(sig)}) failed {strerror(e.errno or 0)}")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        o = parse_args(args)
    except ValueError as e:
        StartupLog.stderr(str(e))
        return 1
    if o.version:
        show_version(o)
        if not o.test:
            return 0
    prefix = o.prefix or os.environ.get("FASTMAIL_PREFIX") or DEFAULT_PREFIX
    if not prefix.endswith("/"):
        prefix += "/"
    # the default prefix: no -p (FASTMAIL_PREFIX stands in for the compiled-in one)
    default_prefix = not o.prefix and not o.signal
    conf = o.conf or DEFAULT_CONF
    conf_path = conf if conf.startswith("/") else prefix + conf
    elog = o.error_log or DEFAULT_ERROR_LOG
    elog_path = None if elog == "stderr" else (elog if elog.startswith("/") else prefix + elog)
    if default_prefix:
        make_default_logs(prefix, [elog_path])
    log = StartupLog(elog_path)
    try:
        return _run(o, prefix, conf_path, elog_path, log, default_prefix, args)
    finally:
        log.close()


def _notices(o: Options, log: StartupLog, notices: list[str]) -> None:
    # nginx keeps notices out of stderr; these are echoed (not with -q or -s) so that nobody
    # takes the http{} part of their nginx.conf for served
    for n in notices:
        log.log("notice", n, echo=not (o.quiet or o.signal))


def _run(
    o: Options,
    prefix: str,
    conf_path: str,
    elog_path: str | None,
    log: StartupLog,
    default_prefix: bool,
    args: list[str],
) -> int:
    parsed = False
    try:
        try:
            cfg = load(conf_path, prefix, o.params)
        except ConfigError as e:
            for w in e.warnings:
                log.log("warn", w)
            _notices(o, log, e.notices)
            if getattr(e, "after_parse", False) and o.test and not o.quiet:
                log.stderr(f"the configuration file {conf_path} syntax is ok")
            raise
        for w in cfg.warnings:
            log.log("warn", w)
        _notices(o, log, cfg.notices)
        if default_prefix:
            make_default_logs(prefix, [cfg.main.pid, *log_files(cfg)])
        parsed = True
        if o.test:
            if not o.quiet:
                log.stderr(f"the configuration file {conf_path} syntax is ok")
            open_files(cfg)
            test_bind(cfg)
    except ConfigError as e:
        log.log(e.level, str(e))
        if o.test:
            log.stderr(f"configuration file {conf_path} test failed")
        return 1
    _ = parsed
    if o.test:
        if not o.quiet:
            log.stderr(f"configuration file {conf_path} test is successful")
        if o.dump:
            out = sys.stdout.buffer
            for path, data in cfg.files:
                out.write(f"# configuration file {path}:\n".encode("utf-8", "surrogateescape"))
                out.write(data)
                out.write(b"\n")
            out.flush()
        return 0
    if o.signal:
        return send_signal(cfg, o.signal, log)
    from fastmail import process  # noqa: PLC0415 - the serving code is not needed for -t/-s

    rc = process.run(cfg, prefix=prefix, error_log=elog_path, argv=args)
    return int(rc or 0)
