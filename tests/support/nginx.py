"""Debian's nginx (nginx-light + libnginx-mod-mail) with a given mail config, in a temp prefix:
the reference fastmail is compared with. Collects the error log; never uses /etc/nginx.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from . import MissingPackage
from .clients import wait_greeting

MAIL_MODULE = "/usr/lib/nginx/modules/ngx_mail_module.so"

CONF = """\
load_module {module};
daemon off;
master_process on;
worker_processes 1;
pid {T}/nginx.pid;
error_log {T}/error.log {level};
events {{
    worker_connections 1024;
}}
{main}
mail {{
{mail}
}}
"""


class Nginx:
    """nginx running `mail { <mail> }`. `greetings` are (port, first-line prefix) pairs that
    must answer before `start()` returns, e.g. [(p, b"* OK")]."""

    def __init__(
        self,
        mail: str,
        greetings: Iterable[tuple[int, bytes]] = (),
        main: str = "",
        log_level: str = "info",
    ) -> None:
        self.binary = shutil.which("nginx") or (
            "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
        )
        if not self.binary:
            raise MissingPackage("nginx", "nginx-light")
        if not os.path.exists(MAIL_MODULE):
            raise MissingPackage("ngx_mail_module", "libnginx-mod-mail")
        self.mail = mail
        self.main = main
        self.greetings = list(greetings)
        self.dir = Path(tempfile.mkdtemp(prefix="fastmail-nginx-"))
        os.chmod(self.dir, 0o755)
        self.conf = self.dir / "nginx.conf"
        self.conf.write_text(
            CONF.format(module=MAIL_MODULE, T=self.dir, level=log_level, main=main, mail=mail)
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def _cmd(self, *extra: str) -> list[str]:
        assert self.binary
        return [
            self.binary,
            "-p",
            f"{self.dir}/",
            "-c",
            str(self.conf),
            "-e",
            str(self.dir / "error.log"),
            *extra,
        ]

    def start(self, timeout: float = 10.0) -> Nginx:
        test = subprocess.run(self._cmd("-t"), capture_output=True, timeout=30)
        if test.returncode != 0:
            self.stop()
            raise RuntimeError(f"nginx -t failed:\n{test.stderr.decode(errors='replace')}")
        with open(self.dir / "stderr.log", "wb") as err:
            self.proc = subprocess.Popen(self._cmd(), stdout=subprocess.DEVNULL, stderr=err)
        try:
            alive = lambda: self.proc is not None and self.proc.poll() is None  # noqa: E731
            for port, prefix in self.greetings:
                wait_greeting("127.0.0.1", port, prefix, timeout, alive)
        except BaseException as exc:
            log = self.error_log()
            self.stop()
            raise RuntimeError(f"nginx did not start: {exc}\n{log[-2000:]}") from exc
        return self

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def error_log(self) -> str:
        out = []
        for name in ("error.log", "stderr.log"):
            p = self.dir / name
            if p.exists():
                out.append(p.read_text(errors="replace"))
        return "".join(out)

    def wait_log(self, text: str, timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.error_log()
            if text in log:
                return log
            time.sleep(0.02)
        raise TimeoutError(f"{text!r} not in nginx error log:\n{self.error_log()[-2000:]}")
