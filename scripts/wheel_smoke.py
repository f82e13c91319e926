"""scripts/wheel's TLS smoke, run by the python of a venv that has only the wheel installed
(no extras, so no trustme or cryptography): one IMAPS login through fastmail with a client
certificate, `ssl_verify_client on`, the bundled auth_http server and fake backend.

Certificates come from the openssl command. Passes when a login without a certificate gets
nginx's `* BYE No required SSL certificate`, the login with one succeeds, and the auth
server saw Auth-SSL-Verify: SUCCESS with the certificate's serial as OpenSSL prints it.
Run it from outside the source tree, so that `import fastmail` is the installed wheel.
"""

from __future__ import annotations

import imaplib
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import fastmail
from fastmail.testing import LoopThread
from fastmail.testing.authd import AuthServer, Backend, UserDB
from fastmail.testing.backend import BackendServer

CONFIG = """\
daemon off;
master_process off;
error_log {dir}/error.log info;
events {{ worker_connections 64; }}
mail {{
    auth_http 127.0.0.1:{auth}/auth;
    server {{
        listen 127.0.0.1:{port} ssl;
        protocol imap;
        ssl_certificate {dir}/server.pem;
        ssl_certificate_key {dir}/server.key;
        ssl_verify_client on;
        ssl_client_certificate {dir}/ca.pem;
        auth_http_pass_client_cert on;
    }}
}}
"""


def openssl(*args: str, cwd: Path) -> str:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise SystemExit(f"openssl {' '.join(args)} failed: {r.stderr}")
    return r.stdout


def make_certs(d: Path) -> str:
    """A CA, a server certificate for 127.0.0.1 and a client certificate; the client's
    serial as OpenSSL prints it."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/O=fastmail wheel smoke/CN=smoke CA",
        cwd=d,
    )
    for name, subj, ext in (
        ("server", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1"),
        ("client", "/CN=client one", "extendedKeyUsage=clientAuth"),
    ):
        openssl(
            "req",
            "-new",
            *ec,
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            subj,
            cwd=d,
        )
        (d / f"{name}.ext").write_text(ext + "\n")
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            "0x" + os.urandom(16).hex(),
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
            "-out",
            f"{name}.pem",
            cwd=d,
        )
    return openssl("x509", "-in", "client.pem", "-noout", "-serial", cwd=d).strip()[7:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"fastmail exited with {proc.returncode}:\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"fastmail did not listen on {port}:\n{log.read_text()}")


def main() -> int:
    here = Path(fastmail.__file__).resolve().parent
    print(f"fastmail {fastmail.__version__} from {here}")
    with tempfile.TemporaryDirectory(prefix="fastmail-wheel-smoke-") as tmp:
        d = Path(tmp)
        (d / "logs").mkdir()
        serial = make_certs(d)
        services = LoopThread("wheel-smoke").start()
        proc: subprocess.Popen[bytes] | None = None
        try:
            backend = BackendServer(users={"alice": "secret"})
            imap_port = services.run(backend.listen("imap"))
            db = UserDB(d / "users.sqlite")
            db.add_user("alice", "secret", {"imap": Backend("127.0.0.1", imap_port)}, scrypt_ln=4)
            auth = AuthServer(db)
            auth_port = free_port()
            services.run(auth.start("127.0.0.1", auth_port))
            port = free_port()
            conf = d / "fastmail.conf"
            conf.write_text(CONFIG.format(dir=d, auth=auth_port, port=port))
            proc = subprocess.Popen(
                [sys.executable, "-m", "fastmail", "-p", f"{d}/", "-c", str(conf)], cwd=d
            )
            wait_port(port, proc, d / "error.log")

            ctx = ssl.create_default_context(cafile=str(d / "ca.pem"))
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                with ctx.wrap_socket(s, server_hostname="127.0.0.1") as t:
                    bye = t.recv(100)
            if bye != b"* BYE No required SSL certificate\r\n":
                raise SystemExit(f"without a client certificate: {bye!r}")
            ctx.load_cert_chain(str(d / "client.pem"), str(d / "client.key"))
            with imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=ctx, timeout=10) as m:
                if m.login("alice", "secret")[0] != "OK":
                    raise SystemExit("login refused")
                typ, data = m.select("INBOX")
                m.logout()
            req = auth.requests[-1]
            got = {k: req.get(k) for k in ("Auth-SSL-Verify", "Auth-SSL-Serial", "Auth-User")}
            want = {"Auth-SSL-Verify": "SUCCESS", "Auth-SSL-Serial": serial, "Auth-User": "alice"}
            if got != want:
                raise SystemExit(f"auth_http request: {got}, expected {want}")
            print(f"IMAPS login with a client certificate ok (INBOX: {typ} {data}), auth_http saw")
            for k, v in got.items():
                print(f"  {k}: {v}")
        finally:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGQUIT)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            services.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
