"""Debian's nginx (nginx-light + libnginx-mod-mail) with a given mail config, in a temp prefix:
the reference fastmail is compared with. Collects the error log; never uses /etc/nginx.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable

from . import MissingPackage
from .process import Runner, find_binary, wait_text

MAIL_MODULE = "/usr/lib/nginx/modules/ngx_mail_module.so"

CONF = """\
load_module {module};
daemon off;
master_process on;
worker_processes 1;
pid {T}/nginx.pid;
error_log {T}/error.log {level};
events {{
    worker_connections {connections};
}}
{main}
mail {{
{mail}
}}
"""


LOAD_MAIL = f"load_module {MAIL_MODULE};"  # for -g: a config without its own load_module line


def config_test(
    *args: str, cwd: str | os.PathLike[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`nginx -t ARGS` with Debian's binary, as a user runs it: the reference verdict and text
    for `fastmail -t` (support.fastmail.config_test). MissingPackage without nginx's mail module."""
    binary = find_binary("nginx", "nginx-light")
    if not os.path.exists(MAIL_MODULE):
        raise MissingPackage("ngx_mail_module", "libnginx-mod-mail")
    return subprocess.run(
        [binary, "-t", *args], capture_output=True, text=True, timeout=60, cwd=cwd
    )


class Nginx(Runner):
    """nginx running `mail { <mail> }`. `greetings` are (port, first-line prefix) pairs that
    must answer before `start()` returns, e.g. [(p, b"* OK")]."""

    log_names = ("error.log", "stderr.log")

    def __init__(
        self,
        mail: str,
        greetings: Iterable[tuple[int, bytes]] = (),
        main: str = "",
        log_level: str = "info",
        worker_connections: int = 1024,
    ) -> None:
        self.binary = find_binary("nginx", "nginx-light")
        if not os.path.exists(MAIL_MODULE):
            raise MissingPackage("ngx_mail_module", "libnginx-mod-mail")
        self.mail = mail
        self.main = main
        self.greetings = list(greetings)
        super().__init__("fastmail-nginx-")
        self.conf = self.dir / "nginx.conf"
        self.conf.write_text(
            CONF.format(
                module=MAIL_MODULE,
                T=self.dir,
                level=log_level,
                main=main,
                mail=mail,
                connections=worker_connections,
            )
        )

    def _cmd(self, *extra: str) -> list[str]:
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
            self._wait_greetings(self.greetings, timeout)
        except BaseException as exc:
            log = self.error_log()
            self.stop()
            raise RuntimeError(f"nginx did not start: {exc}\n{log[-2000:]}") from exc
        return self

    def error_log(self) -> str:
        return self._read_logs()

    def wait_log(self, text: str, timeout: float = 5.0) -> str:
        return wait_text(self.error_log, text, "nginx error log", timeout, 0.02, 2000)
