"""Dovecot 2.3 as a throwaway IMAP + POP3 backend: passwd-file users, Maildirs
seeded with known messages, plain ports, `haproxy = yes` ports, implicit-TLS ports prepared for
the TLS issue, and an auth port Postfix can use for SASL. With `sieve=True` also ManageSieve
(Pigeonhole's managesieve, Debian's dovecot-managesieved) on a port of its own.

Never touches /etc/dovecot or system services; everything lives in the runner's temp dir.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from . import MissingPackage
from .certs import TestCerts, make_certs
from .ports import free_port
from .process import Runner, find_binary, start_failure, wait_text

MAIL_UID = 10000

# Seeded into alice's INBOX: tests compare what a client reads through the proxy with these.
ALICE_MESSAGES: tuple[bytes, ...] = (
    b"From: Bob <bob@example.test>\nTo: Alice <alice@example.test>\n"
    b"Subject: first seeded message\nMessage-ID: <seed-1@example.test>\n\nHello Alice.\n",
    b"From: Carol <carol@example.test>\nTo: Alice <alice@example.test>\n"
    b"Subject: second seeded message\nMessage-ID: <seed-2@example.test>\n\n"
    b"Line one.\n.line starting with a dot\nLast line.\n",
    b"From: Bob <bob@example.test>\nTo: Alice <alice@example.test>\n"
    b"Subject: third seeded message\nMessage-ID: <seed-3@example.test>\n\n" + b"x" * 5000 + b"\n",
)
DEFAULT_USERS = {"alice": "secret", "bob": "pw", "carol": "carol-pass"}


def managesieve_installed() -> bool:
    return os.path.exists("/usr/lib/dovecot/managesieve-login")


def dovecot_binary() -> str:
    path = find_binary("dovecot", "dovecot-imapd")
    if not os.path.exists("/usr/lib/dovecot/pop3-login"):
        raise MissingPackage("dovecot pop3-login", "dovecot-pop3d")
    return path


CONF = """\
base_dir = {T}/run
state_dir = {T}/state
log_path = {T}/dovecot.log
instance_name = {name}
protocols = imap pop3{sieve_protocol}
listen = 127.0.0.1
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
disable_plaintext_auth = no
auth_mechanisms = plain login cram-md5 apop
auth_failure_delay = 0
auth_verbose = yes
login_trusted_networks = 127.0.0.0/8
haproxy_trusted_networks = 127.0.0.0/8
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = {T}/users.passwd
}}
userdb {{
  driver = passwd-file
  args = {T}/users.passwd
  default_fields = uid={uid} gid={uid} home={mail}/%u
}}
service imap-login {{
  inet_listener imap {{
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = {imaps_port}
    ssl = yes
  }}
  inet_listener imap_proxy {{
    port = {imap_proxy_port}
    haproxy = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {pop3_port}
  }}
  inet_listener pop3s {{
    port = {pop3s_port}
    ssl = yes
  }}
  inet_listener pop3_proxy {{
    port = {pop3_proxy_port}
    haproxy = yes
  }}
}}
service anvil {{
  unix_listener anvil-auth-penalty {{
    path = anvil-auth-penalty-unused
  }}
}}
service auth {{
  inet_listener smtp_auth {{
    port = {auth_port}
  }}
}}
{sieve_conf}"""

# Debian's default listener is 4190 on every address: the listener named `sieve` is overridden
SIEVE_CONF = """\
service managesieve-login {{
  inet_listener sieve {{
    address = 127.0.0.1
    port = {sieve_port}
  }}
}}
plugin {{
  sieve = file:~/sieve;active=~/.dovecot.sieve
}}
"""


class Dovecot(Runner):
    """One Dovecot instance. Ports are attributes after `start()`; `dir` is its temp dir."""

    _count = 0
    log_names = ("dovecot.log", "dovecot.stderr")

    def __init__(
        self,
        users: Mapping[str, str] = DEFAULT_USERS,
        messages: Mapping[str, Sequence[bytes]] | None = None,
        certs: TestCerts | None = None,
        mail_dir: str | os.PathLike[str] | None = None,
        sieve: bool = False,
    ) -> None:
        self.binary = dovecot_binary()
        if sieve and not managesieve_installed():
            raise MissingPackage("dovecot managesieve-login", "dovecot-managesieved")
        self.sieve = sieve
        self.users = dict(users)
        self.messages = {"alice": ALICE_MESSAGES} if messages is None else dict(messages)
        super().__init__("fastmail-dovecot-")
        self.certs = certs or make_certs(self.dir / "tls")
        self.mail_dir = Path(mail_dir) if mail_dir else self.dir / "mail"
        self.conf = self.dir / "dovecot.conf"
        Dovecot._count += 1
        self.name = f"fm-dovecot-{os.getpid()}-{Dovecot._count}"
        self.imap_port = self.imaps_port = self.imap_proxy_port = 0
        self.pop3_port = self.pop3s_port = self.pop3_proxy_port = self.auth_port = 0
        self.sieve_port = 0  # ManageSieve (sieve=True only)

    # -- setup

    def _write_users(self) -> None:
        lines = [f"{u}:{{PLAIN}}{p}::::::\n" for u, p in self.users.items()]
        path = self.dir / "users.passwd"
        path.write_text("".join(lines))
        os.chmod(path, 0o644)

    def add_user(self, name: str, password: str) -> None:
        """Dovecot re-reads the passwd-file when it changes: works while running."""
        self.users[name] = password
        self._write_users()

    def _seed(self) -> None:
        for user in self.users:
            box = self.mail_dir / user / "Maildir"
            for sub in ("cur", "new", "tmp"):
                (box / sub).mkdir(parents=True, exist_ok=True)
            for i, msg in enumerate(self.messages.get(user, ()), 1):
                (box / "new" / f"{1700000000 + i}.seed{i}.fastmail-test").write_bytes(msg)
        for root, dirs, files in os.walk(self.mail_dir):
            for n in [root, *(os.path.join(root, x) for x in dirs + files)]:
                os.chown(n, MAIL_UID, MAIL_UID)
        os.chmod(self.mail_dir, 0o755)

    def _config(self) -> None:
        self.imap_port, self.imaps_port, self.imap_proxy_port = (free_port() for _ in range(3))
        self.pop3_port, self.pop3s_port, self.pop3_proxy_port = (free_port() for _ in range(3))
        self.auth_port = free_port()
        self.sieve_port = free_port() if self.sieve else 0
        shutil.rmtree(self.dir / "run", ignore_errors=True)  # a stale base_dir breaks start-up
        self.conf.write_text(
            CONF.format(
                T=self.dir,
                name=self.name,
                cert=self.certs.server_cert,
                key=self.certs.server_key,
                uid=MAIL_UID,
                mail=self.mail_dir,
                imap_port=self.imap_port,
                imaps_port=self.imaps_port,
                imap_proxy_port=self.imap_proxy_port,
                pop3_port=self.pop3_port,
                pop3s_port=self.pop3s_port,
                pop3_proxy_port=self.pop3_proxy_port,
                auth_port=self.auth_port,
                sieve_protocol=" sieve" if self.sieve else "",
                sieve_conf=SIEVE_CONF.format(sieve_port=self.sieve_port) if self.sieve else "",
            )
        )

    # -- lifecycle

    def start(self, timeout: float = 15.0) -> Dovecot:
        self._write_users()
        self.mail_dir.mkdir(parents=True, exist_ok=True)
        self._seed()
        self._start_retrying(lambda: self._start_once(timeout))
        return self

    def _start_once(self, timeout: float) -> None:
        self._config()
        check = subprocess.run(
            [self.binary, "-c", str(self.conf), "-n"], capture_output=True, timeout=30
        )
        if check.returncode != 0:
            # "-n" on the dovecot binary prints the config: a failure is a config error.
            raise RuntimeError(f"dovecot config rejected: {check.stderr.decode()}")
        with open(self.dir / "dovecot.stderr", "wb") as err:
            self.proc = subprocess.Popen(
                [self.binary, "-F", "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=err
            )
        try:
            greetings = [(self.imap_port, b"* OK"), (self.pop3_port, b"+OK")]
            if self.sieve:
                greetings.append((self.sieve_port, b'"IMPLEMENTATION"'))
            self._wait_greetings(greetings, timeout)
        except (RuntimeError, TimeoutError) as exc:
            log = self.log()
            self._kill()
            raise start_failure("dovecot did not start", exc, log) from exc

    # -- inspection

    def log(self) -> str:
        return self._read_logs()

    def wait_log(self, text: str, timeout: float = 5.0) -> str:
        return wait_text(self.log, text, "dovecot log", timeout, 0.05, 2000)

    def maildir(self, user: str) -> Path:
        return self.mail_dir / user / "Maildir"
