"""Postfix 3.7 as a throwaway SMTP backend: smtpd on loopback ports (plain,
PROXY-protocol, implicit TLS, and one that does not grant the proxy XCLIENT), XCLIENT allowed
from 127.0.0.0/8 elsewhere, virtual delivery into Maildirs
the test reads (optionally Dovecot's, so mail sent through SMTP can be read back over IMAP),
optional SASL through Dovecot's auth port. Nothing leaves the machine (default_transport=error).

Never touches /etc/postfix or the system queue; `postfix -c DIR stop` is the only way to stop
it (start-fg's master calls setsid and would outlive a killed wrapper).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from .certs import TestCerts, make_certs
from .clients import wait_greeting
from .ports import PortClash, free_port
from .process import Runner, find_binary, start_failure

MAIL_UID = 10000

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {T}/spool
data_directory = {T}/data
mail_owner = postfix
setgid_group = postdrop
maillog_file = {T}/maillog
maillog_file_prefixes = {T}
myhostname = {hostname}
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
alias_maps =
alias_database =
local_recipient_maps =
smtpd_peername_lookup = no
smtpd_authorized_xclient_hosts = 127.0.0.0/8
smtpd_relay_restrictions = permit_sasl_authenticated, reject_unauth_destination
default_transport = error:outbound delivery disabled in tests
virtual_mailbox_domains = {domain}
virtual_mailbox_base = {mail}
virtual_mailbox_maps = inline:{{ {maps} }}
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{uid}
recipient_delimiter = +
smtpd_tls_security_level = may
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
{sasl}"""

SASL = """\
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = inet:127.0.0.1:{port}
"""

SERVICES = """\
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
tlsmgr unix - - n 1000? 1 tlsmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
virtual unix - n n - - virtual
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"""


class Postfix(Runner):
    """One Postfix instance. `users` are local parts in `domain`; mail for them lands in
    `mail_dir/<user>/Maildir/new/` (pass Dovecot's `mail_dir` to read it over IMAP)."""

    log_names = ("maillog",)

    def __init__(
        self,
        users: Sequence[str] = ("alice", "bob", "carol"),
        domain: str = "example.test",
        mail_dir: str | os.PathLike[str] | None = None,
        sasl_port: int | None = None,
        certs: TestCerts | None = None,
        hostname: str = "backend.example.test",
    ) -> None:
        self.binary = find_binary("postfix", "postfix")
        self.users = list(users)
        self.domain = domain
        self.hostname = hostname
        self.sasl_port = sasl_port
        super().__init__("fastmail-postfix-")
        self.certs = certs or make_certs(self.dir / "tls")
        self.mail_dir = Path(mail_dir) if mail_dir else self.dir / "mail"
        self.etc = self.dir / "etc"
        self.running = False
        self.smtp_port = self.proxy_port = self.smtps_port = 0
        self.noxclient_port = 0  # its EHLO reply lists no XCLIENT: only 192.0.2.1 may use it

    def _write_config(self) -> None:
        self.smtp_port, self.proxy_port, self.smtps_port = (free_port() for _ in range(3))
        self.noxclient_port = free_port()
        maps = ", ".join(f"{u}@{self.domain}={u}/Maildir/" for u in self.users)
        (self.etc / "main.cf").write_text(
            MAIN_CF.format(
                T=self.dir,
                hostname=self.hostname,
                domain=self.domain,
                mail=self.mail_dir,
                maps=maps,
                uid=MAIL_UID,
                cert=self.certs.server_cert,
                key=self.certs.server_key,
                sasl=SASL.format(port=self.sasl_port) if self.sasl_port else "",
            )
        )
        (self.etc / "master.cf").write_text(
            f"127.0.0.1:{self.smtp_port} inet n - n - - smtpd\n"
            f"127.0.0.1:{self.proxy_port} inet n - n - - smtpd\n"
            "  -o smtpd_upstream_proxy_protocol=haproxy\n"
            f"127.0.0.1:{self.smtps_port} inet n - n - - smtpd\n"
            "  -o smtpd_tls_wrappermode=yes\n"
            f"127.0.0.1:{self.noxclient_port} inet n - n - - smtpd\n"
            "  -o smtpd_authorized_xclient_hosts=192.0.2.1\n" + SERVICES
        )

    def _postfix(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
        # Without a TTY postfix(1) sends its errors to syslog (absent here): `script` gives it one.
        cmd = " ".join([self.binary, "-c", str(self.etc), *args])
        return subprocess.run(
            ["script", "-qec", cmd, "/dev/null"],
            capture_output=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def start(self, timeout: float = 15.0) -> Postfix:
        for sub in ("etc", "spool", "data"):
            (self.dir / sub).mkdir(exist_ok=True)
        shutil.chown(self.dir / "data", "postfix")
        self.mail_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.mail_dir, 0o755)
        for u in self.users:
            box = self.mail_dir / u
            box.mkdir(exist_ok=True)
            os.chown(box, MAIL_UID, MAIL_UID)
        self._start_retrying(lambda: self._start_once(timeout))
        return self

    def _start_once(self, timeout: float) -> None:
        self._write_config()
        r = self._postfix("start")
        if r.returncode != 0:
            out = r.stdout.decode(errors="replace") + self.log()
            if "Address already in use" in out:
                raise PortClash(out)
            raise RuntimeError(f"postfix start failed ({r.returncode}): {out[-2000:]}")
        self.running = True
        try:
            wait_greeting("127.0.0.1", self.smtp_port, b"220 ", timeout)
        except TimeoutError as exc:
            log = self.log()
            self._kill()
            raise start_failure("postfix did not greet", exc, log) from exc

    def _kill(self) -> None:
        # `postfix stop`, not a signal: the master is not our child (start-fg's setsid)
        if not self.running:
            return
        self._postfix("stop")
        pidfile = self.dir / "spool" / "pid" / "master.pid"
        deadline = time.monotonic() + 5
        while pidfile.exists() and time.monotonic() < deadline:
            try:
                pid = int(pidfile.read_text().split()[0])
                os.kill(pid, 0)
            except (ValueError, IndexError, ProcessLookupError, FileNotFoundError):
                break
            time.sleep(0.02)
        else:
            if pidfile.exists():
                try:
                    os.kill(int(pidfile.read_text().split()[0]), 9)
                except (ValueError, IndexError, ProcessLookupError, FileNotFoundError):
                    pass
        self.running = False

    def log(self) -> str:
        return self._read_logs()

    def maildir(self, user: str) -> Path:
        return self.mail_dir / user / "Maildir"

    def messages(self, user: str) -> list[bytes]:
        new = self.maildir(user) / "new"
        cur = self.maildir(user) / "cur"
        files = [p for d in (new, cur) if d.exists() for p in d.iterdir()]
        return [p.read_bytes() for p in sorted(files, key=lambda p: p.name)]

    def wait_message(self, user: str, needle: bytes, timeout: float = 5.0) -> bytes:
        """The first delivered message for `user` containing `needle` (polls ~10 ms)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for msg in self.messages(user):
                if needle in msg:
                    return msg
            time.sleep(0.01)
        raise TimeoutError(f"no message with {needle!r} for {user}; log:\n{self.log()[-2000:]}")
