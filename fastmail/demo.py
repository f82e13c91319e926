"""`python -m fastmail.demo`: fastmail proxying IMAP, POP3 and SMTP with nothing else installed.

Owns: an embedded nginx-style config, a throw-away SQLite user database for the bundled
auth_http server (fastmail.testing.authd), the bundled fake backend, one login through the
proxy per protocol to show it works, and then serving until Ctrl-C (or exiting with
`--check`). Must not contain proxy logic: it runs `python -m fastmail` like a user would.
"""

from __future__ import annotations

import argparse
import imaplib
import os
import poplib
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time

from fastmail.testing import LoopThread
from fastmail.testing.authd import AuthServer, Backend, UserDB
from fastmail.testing.backend import BackendServer

USER, PASSWORD = "demo", "demo-password"

CONFIG = """\
# The demo's config: nginx's mail syntax, run unchanged by fastmail.
worker_processes 1;
daemon off;
master_process off;
pid {dir}/fastmail.pid;
error_log {dir}/error.log info;

events {{
    worker_connections 1024;
}}

mail {{
    server_name  demo.fastmail.test;
    auth_http    127.0.0.1:{auth}/auth;
    proxy_pass_error_message on;

    server {{
        listen   127.0.0.1:{imap};
        protocol imap;
        imap_auth plain login;
    }}
    server {{
        listen   127.0.0.1:{pop3};
        protocol pop3;
    }}
    server {{
        listen   127.0.0.1:{smtp};
        protocol smtp;
        smtp_auth plain login;
        xclient  off;
    }}
}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port(wanted: int) -> int:
    """The wanted port when it is free, else any free one."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", wanted))
            return wanted
        except OSError:
            return _free_port()


def _wait_port(port: int, proc: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"fastmail exited with code {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"fastmail did not listen on 127.0.0.1:{port}")


def _check(ports: dict[str, int]) -> list[str]:
    """One real login per protocol through the proxy, with the standard library's clients."""
    lines = []
    imap = imaplib.IMAP4("127.0.0.1", ports["imap"], timeout=10)
    imap.login(USER, PASSWORD)
    typ, data = imap.select("INBOX")
    imap.logout()
    lines.append(f"IMAP  login ok, INBOX holds {(data[0] or b'?').decode()} message(s)")
    pop = poplib.POP3("127.0.0.1", ports["pop3"], timeout=10)
    pop.user(USER)
    pop.pass_(PASSWORD)
    count, size = pop.stat()
    pop.quit()
    lines.append(f"POP3  login ok, {count} message(s), {size} bytes")
    smtp = smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=10)
    smtp.login(USER, PASSWORD)
    smtp.sendmail(
        "demo@example.com", ["demo@example.com"], b"Subject: hello\r\n\r\nvia fastmail\r\n"
    )
    smtp.quit()
    lines.append("SMTP  login ok, message accepted by the backend")
    return lines


def main(argv: list[str] | None = None) -> int:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    p = argparse.ArgumentParser(prog="python -m fastmail.demo", description=__doc__)
    p.add_argument("--check", action="store_true", help="log in once per protocol, then exit")
    p.add_argument("--imap", type=int, default=1143, help="IMAP port (default 1143)")
    p.add_argument("--pop3", type=int, default=1110, help="POP3 port (default 1110)")
    p.add_argument("--smtp", type=int, default=1025, help="SMTP port (default 1025)")
    args = p.parse_args(argv)

    tmp = tempfile.mkdtemp(prefix="fastmail-demo-")
    os.makedirs(os.path.join(tmp, "logs"))  # the -p prefix's default log directory
    services = LoopThread("fastmail-demo").start()
    proc: subprocess.Popen[bytes] | None = None
    try:
        backend = BackendServer(users={USER: PASSWORD})
        backend_ports = {
            proto: services.run(backend.listen(proto)) for proto in ("imap", "pop3", "smtp")
        }
        db = UserDB(os.path.join(tmp, "users.sqlite"))
        db.add_user(
            USER,
            PASSWORD,
            {k: Backend("127.0.0.1", v) for k, v in backend_ports.items()},
            scrypt_ln=10,
        )
        auth = AuthServer(db)
        auth_port = _free_port()
        services.run(auth.start("127.0.0.1", auth_port))

        ports = {"imap": _port(args.imap), "pop3": _port(args.pop3), "smtp": _port(args.smtp)}
        conf = os.path.join(tmp, "fastmail.conf")
        with open(conf, "w") as f:
            f.write(CONFIG.format(dir=tmp, auth=auth_port, **ports))
        # cwd: in a source checkout, `-m fastmail` must find the installed package
        proc = subprocess.Popen(
            [sys.executable, "-m", "fastmail", "-p", tmp + "/", "-c", conf], cwd=tmp
        )
        deadline = time.monotonic() + 20
        for port in ports.values():
            _wait_port(port, proc, deadline)

        print(f"fastmail is proxying (config {conf}, log {tmp}/error.log):")
        for line in _check(ports):
            print("  " + line)
        if args.check:
            return 0
        i, o, s = ports["imap"], ports["pop3"], ports["smtp"]
        print(
            f"\nTry it (user {USER!r}, password {PASSWORD!r}):\n"
            f"  curl 'imap://{USER}:{PASSWORD}@127.0.0.1:{i}/INBOX;UID=1'\n"
            f"  curl 'pop3://{USER}:{PASSWORD}@127.0.0.1:{o}/1'\n"
            f"  curl smtp://127.0.0.1:{s} -u {USER}:{PASSWORD} --mail-from a@example.com "
            f"--mail-rcpt b@example.com -T - <<< 'Subject: hi'\n"
            "Ctrl-C stops the demo."
        )
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        services.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
