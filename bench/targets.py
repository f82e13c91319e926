"""Processes the bench runs: the proxies under test, the shared servers, and the load generator.

Owns: one config template rendered for fastmail and for nginx (same listeners, same auth_http,
one worker, `master_process off; daemon off;`, and for TLS runs the same pinned TLS version,
ciphersuite, group and certificate; a login mode picks the auth_http server and fastmail's
auth_http_keepalive/proxy_pipelining), starting/stopping each proxy, the auth_http servers
(keep-alive and HTTP/1.0-close) and backend they share, building bench/loadgen.c and bench/servers.c with the system cc into a
cache dir, and reading CPU (utime+stime) and RSS (smaps_rollup) from /proc for a process and
its children.
Must not: bind anything but 127.0.0.1, touch system services, or judge results (report.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOADGEN_SRC = Path(__file__).resolve().parent / "loadgen.c"
SERVERS_SRC = Path(__file__).resolve().parent / "servers.c"
NGINX_MAIL_MODULE = Path("/usr/lib/nginx/modules/ngx_mail_module.so")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROTOCOLS = ("imap", "pop3", "smtp", "sieve")
FASTMAIL_ONLY = ("sieve",)  # nginx has no ManageSieve: fastmail alone runs these
# fastmail with its access log (the default `combined` format, unbuffered: one write per
# session, as a user gets it) and its metrics listener on: the cost of observability, beside
# "fastmail" (both off), in the login scenarios (--observability)
OBSERVED = "fastmail-obs"
TESTING_PROTOCOLS = ("imap", "pop3", "smtp")  # what fastmail.testing's backend speaks

# Login modes: which auth_http server the proxy asks, and fastmail's settings for it (nginx
# takes neither directive and always sends one HTTP/1.0 request per connection).
#   keepalive: the keep-alive auth server; fastmail keeps auth_http connections (its default)
#              and logs in to the backend in fewer round trips (one-line IMAP LOGIN).
#   http10:    the auth server that answers HTTP/1.0 and closes, as nginx-style auth scripts
#              do; fastmail sends nginx's exact bytes to the auth server and the backend.
# Scenarios without a mode run fastmail's defaults against the keep-alive auth server.
#   cached:    keepalive plus fastmail's auth_http_cache: the reconnect scenario, where the
#              same user logs in again and again (nginx asks the auth server every time).
LOGIN_MODES = ("keepalive", "http10")
MODE_AUTH = {"keepalive": "keepalive", "http10": "http10", "cached": "keepalive", None: "keepalive"}
MODE_DIRECTIVES = {
    "keepalive": ["proxy_pipelining on;"],
    "http10": ["auth_http_keepalive 0;", "proxy_pipelining off;"],
    "cached": ["proxy_pipelining on;", "auth_http_cache 10000;"],
    None: [],
}

# TLS pinned the same on both proxies and in the load generator: nginx 1.22 and fastmail
# default to different protocol lists, and the handshake cost depends on all of these.
TLS_VERSION = "TLSv1.3"
TLS_SUITE = "TLS_AES_128_GCM_SHA256"
TLS_GROUP = "X25519"
TLS_KEY = "RSA 2048"  # server signature: the costly part of a full handshake, on the proxy

TLS_SERVERS = """
    server {{
        listen 127.0.0.1:{imaps_full} ssl;
        protocol imap;
        imap_auth login plain;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols {tls_version};
        ssl_conf_command Ciphersuites {tls_suite};
        ssl_conf_command Groups {tls_group};
        # full handshakes only: no tickets (NumTickets 0: TLS 1.3 sends none), no cache
        ssl_session_tickets off;
        ssl_session_cache off;
        ssl_conf_command NumTickets 0;
    }}
    server {{
        listen 127.0.0.1:{imaps_resume} ssl;
        protocol imap;
        imap_auth login plain;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols {tls_version};
        ssl_conf_command Ciphersuites {tls_suite};
        ssl_conf_command Groups {tls_group};
        ssl_session_tickets on;
    }}
"""

CONF_TEMPLATE = """\
{load_module}{main_directives}
master_process off;
daemon off;
worker_processes {workers};
error_log {errlog} warn;
pid {pidfile};

events {{
    worker_connections {worker_connections};
}}

mail {{
    auth_http 127.0.0.1:{auth_port}/auth;
    proxy_pass_error_message on;
{mode_directives}
    server {{
        listen 127.0.0.1:{imap};
        protocol imap;
        imap_auth login plain;
    }}
    server {{
        listen 127.0.0.1:{pop3};
        protocol pop3;
        pop3_auth plain;
    }}
    server {{
        listen 127.0.0.1:{smtp};
        protocol smtp;
        smtp_auth login plain;
    }}
{sieve_server}{tls_servers}}}
"""

SIEVE_SERVER = """\
    server {{
        listen 127.0.0.1:{sieve};
        protocol sieve;
        sieve_auth plain;
    }}
"""


class TargetError(Exception):
    """A proxy or server could not start; the message says why (log tail included)."""


class ServersDied(Exception):
    """The shared auth_http server or backend is gone: the whole run stops."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_nofile() -> None:
    """Called in children (preexec_fn) and in the harness: idle scenarios hold many sockets."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def nofile_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


# -- /proc accounting ---------------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (nginx workers, fastmail workers once it forks)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo.extend(int(c) for c in task.read_text().split())
    return out


def cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of pid and its descendants, in seconds: user space and kernel."""
    user = sys_ = 0
    for p in process_tree(pid):
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        user += int(fields[11])
        sys_ += int(fields[12])
    return user / CLK_TCK, sys_ / CLK_TCK


def cpu_seconds(pid: int) -> float:
    """utime+stime of pid and its descendants, in seconds (kernel time included)."""
    return sum(cpu_times(pid))


def machine_cpu_seconds() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat): with the proxy's and the
    harness's own, it tells how much other work on the machine took."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    guest = sum(fields[8:10])  # already counted in user/nice
    return (sum(fields) - idle - guest) / CLK_TCK


def rss_bytes(pid: int) -> int:
    """Resident memory of pid and its descendants (smaps_rollup Rss, else status VmRSS)."""
    total = 0
    for p in process_tree(pid):
        for name, key in (("smaps_rollup", "Rss:"), ("status", "VmRSS:")):
            try:
                text = Path(f"/proc/{p}/{name}").read_text()
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith(key):
                    total += int(line.split()[1]) * 1024
                    break
            else:
                continue
            break
    return total


def time_wait_by_port(ports: set[int]) -> int:
    """The most TIME_WAIT sockets that any one of `ports` is part of (either end)."""
    counts = dict.fromkeys(ports, 0)
    with contextlib.suppress(OSError), open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split(None, 4)
            if fields[3] != "06":
                continue
            for addr in (fields[1], fields[2]):
                port = int(addr[addr.index(":") + 1 :], 16)
                if port in counts:
                    counts[port] += 1
    return max(counts.values(), default=0)


def wait_for_ports(ports: set[int], max_tw: int, timeout: float = 65.0) -> float:
    """Each login leaves loopback connections to the proxy, auth_http and backend ports in
    TIME_WAIT for 60 s; with ~28k ephemeral ports per destination, past that new connects are
    refused and a run would measure the refusals. So wait until the kernel has let enough of
    the connections to our ports go (other programs' sockets do not matter). Returns the
    seconds waited."""
    t0 = time.monotonic()
    while time_wait_by_port(ports) > max_tw and time.monotonic() - t0 < timeout:
        time.sleep(0.5)
    return time.monotonic() - t0


# -- load generator -----------------------------------------------------------------------------


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    d = base / "fastmail-bench"
    d.mkdir(parents=True, exist_ok=True)
    return d


def build_c(src_path: Path, flags: tuple[str, ...] = (), libs: tuple[str, ...] = ()) -> Path:
    """Compile a bench C program once per source version and flags, into the cache dir."""
    src = src_path.read_bytes()
    key = hashlib.sha256(src + " ".join([*flags, *libs]).encode()).hexdigest()[:16]
    exe = cache_dir() / f"{src_path.stem}-{key}"
    if exe.exists():
        return exe
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise TargetError(f"no C compiler (cc) found: {src_path.name} is built with it")
    tmp = exe.with_suffix(f".tmp{os.getpid()}")
    r = subprocess.run(
        [cc, "-O2", "-Wall", *flags, "-o", str(tmp), str(src_path), *libs],
        capture_output=True,
        text=True,
    )
    if r.returncode:
        raise TargetError(f"building {src_path.name} failed:\n{r.stderr[-1500:]}")
    tmp.replace(exe)
    return exe


def openssl_headers() -> bool:
    return any(Path(d, "openssl/ssl.h").exists() for d in ("/usr/include", "/usr/local/include"))


def build_loadgen(install: bool = True, log: list[str] | None = None) -> tuple[Path, str | None]:
    """The load generator, with OpenSSL when its headers are there (libssl-dev is installed
    with apt when missing, if we are root and `install`). Returns (exe, why TLS is missing)."""
    if not openssl_headers() and install and shutil.which("apt-get") and os.geteuid() == 0:
        if log is not None:
            log.append("OpenSSL headers missing: installing libssl-dev for the TLS scenarios")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "libssl-dev"], env=env, capture_output=True
        )
    if openssl_headers():
        try:
            return build_c(LOADGEN_SRC, libs=("-lssl", "-lcrypto")), None
        except TargetError as e:
            why = f"loadgen does not build with OpenSSL: {str(e)[-300:]}"
    elif install:
        why = "OpenSSL headers (libssl-dev) are missing and could not be installed (apt, root)"
    else:
        why = "OpenSSL headers (libssl-dev) are missing (--no-install: not installed)"
    return build_c(LOADGEN_SRC, flags=("-DNO_TLS",)), why


def make_cert(d: Path) -> tuple[Path, Path] | str:
    """A self-signed RSA 2048 certificate for both proxies; a string says why there is none."""
    cert, key = d / "bench-cert.pem", d / "bench-key.pem"
    if cert.exists() and key.exists():
        return cert, key
    exe = shutil.which("openssl")
    if not exe:
        return "the openssl command is missing: no certificate for the TLS scenarios"
    r = subprocess.run(
        [exe, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
        + ["-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        capture_output=True,
        text=True,
    )
    if r.returncode:
        return f"openssl req failed: {r.stderr.strip()[-300:]}"
    return cert, key


# -- proxies ------------------------------------------------------------------------------------


@dataclass
class Ports:
    auth: dict[str, int]  # by MODE_AUTH value: keepalive, http10
    backend: dict[str, int]
    proxy: dict[str, int] = field(default_factory=dict)
    tls: dict[str, int] = field(default_factory=dict)  # imaps_full, imaps_resume


def nginx_binary() -> str | None:
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )


def ensure_nginx(log: list[str]) -> str | None:
    """The nginx binary with the mail module, installing Debian's packages when we can."""
    exe = nginx_binary()
    if exe and NGINX_MAIL_MODULE.exists():
        return exe
    if shutil.which("apt-get") and os.geteuid() == 0:
        log.append("nginx or its mail module is missing: installing nginx-light libnginx-mod-mail")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        r = subprocess.run(
            ["apt-get", "install", "-y", "-qq", "nginx-light", "libnginx-mod-mail"],
            env=env,
            capture_output=True,
            text=True,
        )
        # the package starts the system service; the bench runs its own nginx
        subprocess.run(["/etc/init.d/nginx", "stop"], capture_output=True)
        exe = nginx_binary()
        if r.returncode == 0 and exe and NGINX_MAIL_MODULE.exists():
            return exe
        log.append(f"installing nginx failed: {r.stderr.strip()[-300:]}")
        return None
    log.append("nginx with the mail module is not installed and apt is not available: skipped")
    return None


def nginx_version(exe: str) -> str:
    r = subprocess.run([exe, "-v"], capture_output=True, text=True)
    return (r.stderr or r.stdout).strip().split("/")[-1]


class Proxy:
    """One proxy process (fastmail or nginx) started from the shared template."""

    def __init__(
        self,
        name: str,
        workdir: Path,
        ports: Ports,
        workers: int = 1,
        cert: tuple[Path, Path] | None = None,
        mode: str | None = None,
    ) -> None:
        self.name = name
        self.fastmail = name != "nginx"
        self.observed = name == OBSERVED
        self.metrics_port = free_port() if self.observed else 0
        self.access_log = workdir / name / "access.log"
        self.cert = cert  # TLS listeners only when given
        self.mode = mode  # a LOGIN_MODES value, or None: fastmail's defaults
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ports = ports
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None
        self.errlog = self.dir / "error.log"
        self.conf = self.dir / f"{name}.conf"

    def render(self) -> str:
        tls = ""
        if self.cert:
            tls = TLS_SERVERS.format(
                cert=self.cert[0],
                key=self.cert[1],
                tls_version=TLS_VERSION,
                tls_suite=TLS_SUITE,
                tls_group=TLS_GROUP,
                **self.ports.tls,
            )
        extra = list(MODE_DIRECTIVES[self.mode]) if self.fastmail else []
        main = ""
        if self.observed:
            extra.append(f"access_log {self.access_log};")
            main = f"\nmetrics_listen 127.0.0.1:{self.metrics_port};"
        sieve = ""
        if self.serves("sieve") and "sieve" in self.ports.proxy:
            sieve = SIEVE_SERVER.format(sieve=self.ports.proxy["sieve"])
        return CONF_TEMPLATE.format(
            sieve_server=sieve,
            tls_servers=tls,
            mode_directives="".join(f"    {d}\n" for d in extra),
            load_module=f"load_module {NGINX_MAIL_MODULE};" if not self.fastmail else "",
            main_directives=main,
            workers=self.workers,
            errlog=self.errlog,
            pidfile=self.dir / f"{self.name}.pid",
            worker_connections=max(1024, nofile_limit() - 64),
            auth_port=self.ports.auth[MODE_AUTH[self.mode]],
            **self.ports.proxy,
        )

    def serves(self, proto: str) -> bool:
        return proto not in FASTMAIL_ONLY or self.fastmail

    def command(self) -> list[str]:
        if not self.fastmail:
            exe = nginx_binary() or "nginx"
            return [exe, "-p", f"{self.dir}/", "-e", str(self.errlog), "-c", str(self.conf)]
        # -p and -e as for nginx: the default prefix is a system path (fastmail would make its logs/)
        return [
            sys.executable,
            "-m",
            "fastmail",
            "-p",
            f"{self.dir}/",
            "-e",
            str(self.errlog),
            "-c",
            str(self.conf),
        ]

    def start(self, timeout: float = 15.0) -> None:
        self.conf.write_text(self.render())
        self.errlog.write_text("")
        if self.observed:
            self.access_log.write_text("")  # this run's lines only
        out = (self.dir / "stdout.log").open("wb")
        self.proc = subprocess.Popen(
            self.command(),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=raise_nofile,
        )
        out.close()
        ports = [port for p, port in self.ports.proxy.items() if self.serves(p)]
        if self.cert:
            ports += list(self.ports.tls.values())
        if self.observed:
            ports.append(self.metrics_port)
        wait_listening(self.proc, ports, timeout, self.name, self.log_tail)

    def observed_counts(self) -> dict[str, int]:
        """What the observed proxy recorded so far: access log lines, and successful logins
        by its metrics (a scrape): both count every session the bench made."""
        with self.access_log.open("rb") as f:
            lines = sum(1 for _ in f)
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
        ok = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("fastmail_logins_total{") and 'result="ok"' in line
        )
        return {"access_log_lines": lines, "metrics_logins_ok": int(ok)}

    def log_tail(self, n: int = 12) -> str:
        text = ""
        for f in (self.dir / "stdout.log", self.errlog):
            with contextlib.suppress(OSError):
                text += f.read_text(errors="replace")
        return "\n".join(text.strip().splitlines()[-n:])

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def died(self) -> str | None:
        """Why the proxy is gone, when it exited on its own (crashed) during a run."""
        rc = self.proc.poll() if self.proc else None
        if rc is None:
            return None
        how = f"signal {-rc} ({signal.Signals(-rc).name})" if rc < 0 else f"status {rc}"
        return f"{self.name} exited with {how} during the run:\n{self.log_tail()}"

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


def wait_listening(
    proc: subprocess.Popen[bytes],
    ports: list[int],
    timeout: float,
    name: str,
    tail: Callable[[], str],
) -> None:
    deadline = time.monotonic() + timeout
    pending = list(ports)
    while pending:
        if proc.poll() is not None:
            raise TargetError(
                f"{name} exited with status {proc.returncode} before listening:\n{tail()}"
            )
        if time.monotonic() > deadline:
            stop_process(proc)
            raise TargetError(
                f"{name} did not listen on {pending} within {timeout:.0f}s:\n{tail()}"
            )
        try:
            with socket.create_connection(("127.0.0.1", pending[0]), timeout=0.5):
                pending.pop(0)
        except OSError:
            time.sleep(0.05)


def stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


# -- shared auth_http server and backend --------------------------------------------------------


def auth_requests(port: int) -> int | None:
    """The requests the C auth server on `port` answered so far (its GET /stats), or None
    when it does not say (fastmail.testing's authd)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /stats HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
    except OSError:
        return None
    for line in data.split(b"\r\n"):
        if line.startswith(b"Requests: ") and line[10:].isdigit():
            return int(line[10:])
    return None


class Servers:
    """The auth_http server and backend every target shares, as separate processes.

    kind "c" (the default) runs bench/servers.c three times: the keep-alive auth_http
    server, the HTTP/1.0-close one (-C), and the backend: any user with password "pass",
    users named echo* echo after login. kind "testing" runs fastmail.testing's authd (SQLite
    users "user" and "echo", password "pass"; it closes after answering an HTTP/1.0 request,
    so one serves both modes) and two fake backends (the second echoes after login, for the
    relay scenario).
    """

    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind = kind
        self.dir = workdir / "servers"
        self.dir.mkdir(parents=True, exist_ok=True)
        auth = free_port()
        self.protocols = PROTOCOLS if kind == "c" else TESTING_PROTOCOLS
        self.ports = Ports(
            auth={"keepalive": auth, "http10": free_port() if kind == "c" else auth},
            backend={p: free_port() for p in self.protocols},
        )
        self.ports.proxy = {p: free_port() for p in self.protocols}
        self.ports.tls = {"imaps_full": free_port(), "imaps_resume": free_port()}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def _spawn(self, role: str, argv: list[str], ports: list[int]) -> None:
        out = (self.dir / f"{role}.log").open("wb")
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=raise_nofile,
        )
        out.close()
        self.procs[role] = proc
        wait_listening(proc, ports, 15, role, lambda: (self.dir / f"{role}.log").read_text())

    def start(self) -> None:
        py = sys.executable
        # relay sessions log in as "echo" and land on backends that echo after login
        self.echo_ports = {p: free_port() for p in self.protocols}
        if self.kind == "c":
            exe = str(build_c(SERVERS_SRC))
            b = ",".join(str(self.ports.backend[p]) for p in PROTOCOLS)
            self._spawn("backend", [exe, "backend", "-b", b], list(self.ports.backend.values()))
            for role, port, flags in (
                ("auth", self.ports.auth["keepalive"], []),
                ("auth-http10", self.ports.auth["http10"], ["-C"]),
            ):
                self._spawn(role, [exe, "auth", "-a", str(port), "-b", b, *flags], [port])
            return
        db = str(self.dir / "users.sqlite")
        authd = [py, "-m", "fastmail.testing.authd", "--db", db]

        def routes(ports: dict[str, int]) -> list[str]:
            return [a for p, port in ports.items() for a in (f"--{p}", f"127.0.0.1:{port}")]

        for name, ports in (("user", self.ports.backend), ("echo", self.echo_ports)):
            r = subprocess.run(
                [*authd, "adduser", name, "--password", "pass", "--scrypt-ln", "10"]
                + routes(ports),
                cwd=ROOT,
                capture_output=True,
                text=True,
            )
            if r.returncode:
                raise TargetError(f"fastmail.testing.authd adduser failed:\n{r.stderr}")
        backend = [py, "-m", "fastmail.testing.backend"]
        self._spawn(
            "backend",
            backend + [a for p, port in self.ports.backend.items() for a in (f"--{p}", str(port))],
            list(self.ports.backend.values()),
        )
        self._spawn(
            "echo-backend",
            backend
            + [a for p, port in self.echo_ports.items() for a in (f"--{p}", str(port))]
            + ["--after-login", "echo"],
            list(self.echo_ports.values()),
        )
        self._spawn(
            "auth",
            [*authd, "--listen", f"127.0.0.1:{self.ports.auth['keepalive']}", "--wait", "0"],
            [self.ports.auth["keepalive"]],
        )

    def pids(self) -> dict[str, int]:
        return {role: p.pid for role, p in self.procs.items()}

    def check_alive(self) -> None:
        for role, p in self.procs.items():
            if p.poll() is not None:
                log = (self.dir / f"{role}.log").read_text(errors="replace")[-800:]
                raise ServersDied(f"{role} exited with status {p.returncode}:\n{log}")

    def cpu(self) -> dict[str, float]:
        """CPU seconds per role; both backends count as "backend", both auth servers as "auth"."""
        out = {"backend": 0.0, "auth": 0.0}
        for role, p in self.procs.items():
            out["auth" if role.startswith("auth") else "backend"] += cpu_seconds(p.pid)
        return out

    def stop(self) -> None:
        for proc in self.procs.values():
            stop_process(proc)
        self.procs.clear()


def make_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="fastmail-bench-"))
