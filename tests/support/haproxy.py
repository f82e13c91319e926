"""HAProxy 2.6 in TCP mode in front of N servers with send-proxy-v2: the
scale-out setup, and a way to see a real PROXY v2 header. Readiness and server state come from
the stats socket, never from probing the frontend (a probe would reach a backend).
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Sequence

from .ports import PortClash, free_port
from .process import Runner, find_binary

CONF = """\
global
    log stdout format raw local0 info
    stats socket {T}/admin.sock mode 600 level admin
defaults
    mode tcp
    log global
    option tcplog
    option redispatch
    retries 1
    timeout connect 2s
    timeout client 60s
    timeout server 60s
frontend fe
    bind {bind}:{port}
    default_backend be
backend be
    balance {balance}
{servers}
"""


class HAProxy(Runner):
    """HAProxy forwarding `127.0.0.1:port` to `servers` [(host, port)], each with `send_proxy`
    ("send-proxy-v2", "send-proxy" or "" for none). `check=True` adds health checks every
    500 ms (these send a v2 LOCAL header and then reset the connection)."""

    log_names = ("haproxy.log",)
    grace = 5.0

    def __init__(
        self,
        servers: Sequence[tuple[str, int]],
        send_proxy: str = "send-proxy-v2",
        check: bool = False,
        balance: str = "roundrobin",
        bind: str = "127.0.0.1",
    ) -> None:
        self.binary = find_binary("haproxy", "haproxy")
        self.servers = list(servers)
        self.send_proxy = send_proxy
        self.check = check
        self.balance = balance
        self.bind = bind
        super().__init__("fastmail-haproxy-")
        self.conf = self.dir / "haproxy.cfg"
        self.port = 0

    def _write(self) -> None:
        self.port = free_port()
        lines = []
        for i, (host, port) in enumerate(self.servers, 1):
            opts = " ".join(
                x for x in (self.send_proxy, "check inter 500ms" if self.check else "") if x
            )
            lines.append(f"    server s{i} {host}:{port} {opts}".rstrip())
        self.conf.write_text(
            CONF.format(
                T=self.dir,
                bind=self.bind,
                port=self.port,
                balance=self.balance,
                servers="\n".join(lines),
            )
        )

    def start(self, timeout: float = 10.0) -> HAProxy:
        self._start_retrying(lambda: self._start_once(timeout))
        return self

    def _start_once(self, timeout: float) -> None:
        self._write()
        check = subprocess.run([self.binary, "-c", "-f", str(self.conf)], capture_output=True)
        if check.returncode != 0:
            raise RuntimeError(
                f"haproxy config rejected: {check.stdout.decode()}{check.stderr.decode()}"
            )
        with open(self.dir / "haproxy.log", "wb") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-db", "-f", str(self.conf)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                text = self.log()
                self.proc = None
                if "Address already in use" in text or "cannot bind" in text:
                    raise PortClash(text)
                raise RuntimeError(f"haproxy exited: {text[-2000:]}")
            try:
                if "be," in self.stats_command("show stat"):
                    return
            except OSError:
                pass
            time.sleep(0.02)
        raise TimeoutError(f"haproxy stats socket never answered: {self.log()[-2000:]}")

    def stats_command(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(str(self.dir / "admin.sock"))
            s.sendall(command.encode() + b"\n")
            out = b""
            while chunk := s.recv(65536):
                out += chunk
        return out.decode(errors="replace")

    def server_states(self) -> dict[str, str]:
        """{"s1": "UP", ...} from `show stat` (column 18 is the status)."""
        out = {}
        for line in self.stats_command("show stat").splitlines():
            cols = line.split(",")
            if len(cols) > 17 and cols[0] == "be" and cols[1] not in ("BACKEND", "FRONTEND"):
                out[cols[1]] = cols[17]
        return out

    def log(self) -> str:
        return self._read_logs()
