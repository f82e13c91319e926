"""`error_log ... debug` and nginx's debug_* masks, through nginx and fastmail: `-t` takes
and refuses the same level lists with the same words, a login writes nginx's mail debug
lines (`*N` prefixed) to a debug log and none to an info or debug_http one, a main-context
error_log gets the sessions' lines of its level, and (beyond nginx, whose debug log shows the
Auth-Pass an auth server returns) no credential reaches the debug log.
"""

from __future__ import annotations

import base64
import imaplib
import poplib
import re
import smtplib
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fastmail.testing.backend import BackendServer
from support import MissingPackage
from support.fastmail import add_user, fastmail_only, mail_block, server
from support.nginx import MAIL_MODULE
from support.process import find_binary

PW = "Zq7-pw-Xy"  # distinctive: found in the log only if it leaked


# --- -t ---------------------------------------------------------------------------------------

T_CONF = """\
load_module {module};
pid {T}/test.pid;
error_log {T}/main.log {levels};
events {{ }}
mail {{
    auth_http 127.0.0.1:9/auth;
    server {{ listen 127.0.0.1:1143; protocol imap; error_log {T}/server.log {levels}; }}
}}
"""


def run_t(binary: list[str], prefix: Path) -> tuple[int, list[str]]:
    r = subprocess.run(
        [*binary, "-t", "-p", f"{prefix}/", "-c", str(prefix / "t.conf"), "-e", f"{prefix}/e.log"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    emerg = re.findall(r"^(?:nginx|fastmail): \[emerg\] (.*)$", r.stderr, re.M)
    return r.returncode, [m.replace(str(prefix), "P") for m in emerg]


@pytest.mark.parametrize(
    ("levels", "error"),
    [
        ("debug", None),
        ("debug_mail", None),
        ("debug_core debug_mail", None),
        ("debug_http", None),
        ("info debug_mail", 'invalid log level "debug_mail" in P/t.conf:3'),
        ("debug debug_mail", 'invalid log level "debug_mail" in P/t.conf:3'),
        ("debug_mail info", 'duplicate log level "info" in P/t.conf:3'),
        ("debug_mial", 'invalid log level "debug_mial" in P/t.conf:3'),
    ],
)
@pytest.mark.parametrize("kind", ["fastmail", "nginx"])
def test_t_takes_debug_levels_as_nginx(tmp_path: Path, kind: str, levels: str, error: str) -> None:
    if kind == "nginx":
        try:
            binary = [find_binary("nginx", "nginx-light")]
        except MissingPackage as exc:
            pytest.skip(f"nginx reference unavailable: {exc}")
    else:
        binary = [sys.executable, "-m", "fastmail"]
    (tmp_path / "t.conf").write_text(T_CONF.format(module=MAIL_MODULE, T=tmp_path, levels=levels))
    rc, emerg = run_t(binary, tmp_path)
    assert (rc, emerg) == ((0, []) if error is None else (1, [error]))


# --- levels and masks in a running proxy ----------------------------------------------------


def imap_login(port: int, user: str = "alice", password: str = "secret") -> None:
    with imaplib.IMAP4("127.0.0.1", port, timeout=10) as imap:
        assert imap.login(user, password)[0] == "OK"
        imap.logout()


def read_when(path: Path, text: str, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        log = path.read_text() if path.exists() else ""
        if text in log or time.monotonic() > deadline:
            return log
        time.sleep(0.02)


def session_lines(path: Path, port: int, patterns: list[str], timeout: float = 5.0) -> str:
    """The lines of the session that logged in on `port` (readiness probes left out), once
    they match every pattern (or after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        log = path.read_text() if path.exists() else ""
        m = re.search(rf"\*(\d+) client logged in, .*server: 127\.0\.0\.1:{port},", log)
        lines = "\n".join(x for x in log.splitlines() if m and f" *{m[1]} " in x)
        if all(re.search(p, lines, re.M) for p in patterns) or time.monotonic() > deadline:
            return lines


# nginx's mail debug lines of an IMAP login, as both proxies write them
MAIL_DEBUG = [
    r"\[debug\] \d+#\d+: \*\d+ imap auth state$",
    r'\[debug\] \d+#\d+: \*\d+ mail auth http header: "Auth-Status: OK"$',
    r"\[debug\] \d+#\d+: \*\d+ mail auth http header done$",
    r"\[debug\] \d+#\d+: \*\d+ mail proxy send login\b",
    r"\[debug\] \d+#\d+: \*\d+ mail proxy send passwd\b",
    r"\[debug\] \d+#\d+: \*\d+ close mail connection: \d+$",
]
SESSION_INFO = [
    r"\[info\] \d+#\d+: \*\d+ client 127\.0\.0\.1:\d+ connected to 127\.0\.0\.1:\d+$",
    r'\[info\] \d+#\d+: \*\d+ client logged in, client: 127\.0\.0\.1, .*login: "alice"',
    r"\[info\] \d+#\d+: \*\d+ proxied session done, client: 127\.0\.0\.1, ",
]


def check_levels(lines: str, mail_debug: bool) -> None:
    for pattern in SESSION_INFO:
        assert re.search(pattern, lines, re.M), (pattern, lines)
    for pattern in MAIL_DEBUG:
        assert bool(re.search(pattern, lines, re.M)) == mail_debug, (pattern, lines)


@pytest.mark.parametrize(
    ("levels", "mail_debug"),
    [("debug", True), ("debug_mail", True), ("debug_http", False), ("info", False)],
)
def test_main_error_log_gets_the_session_lines_of_its_level(
    proxy, authd, fake_backend, free_port, tmp_path, levels, mail_debug
):
    """A main-context error_log and no mail-level one: the sessions log there, at its level
    (nginx-tests mail_error_log.t); a mask without debug_mail takes no mail debug line."""
    add_user(authd, "alice", "secret", {"imap": ("127.0.0.1", fake_backend.port("imap"))})
    port = free_port()
    path = tmp_path / "glob.log"
    proxy(
        mail_block(authd, server(port, "imap")),
        greetings=[(port, b"* OK")],
        main=f"error_log {path} {levels};",
    )
    imap_login(port)
    want = SESSION_INFO + (MAIL_DEBUG if mail_debug else [])
    check_levels(session_lines(path, port, want), mail_debug)


def test_server_debug_log_leaves_the_main_log_at_info(
    proxy, authd, fake_backend, free_port, tmp_path
):
    add_user(authd, "alice", "secret", {"imap": ("127.0.0.1", fake_backend.port("imap"))})
    port = free_port()
    path = tmp_path / "server.log"
    p = proxy(
        mail_block(authd, server(port, "imap", f"error_log {path} debug;")),
        greetings=[(port, b"* OK")],
    )
    imap_login(port)
    check_levels(session_lines(path, port, SESSION_INFO + MAIL_DEBUG), True)
    # the main error_log (the runner's, at info) gets nothing of this server's sessions
    assert "imap auth state" not in p.error_log() and "client logged in" not in p.error_log()


def test_each_server_keeps_its_own_mask_on_a_shared_file(
    proxy, authd, fake_backend, free_port, tmp_path
):
    """Two servers log to one file, one with debug_http, one with debug_mail: only the
    second one's sessions write mail debug lines."""
    add_user(authd, "alice", "secret", {"imap": ("127.0.0.1", fake_backend.port("imap"))})
    http_port, mail_port = free_port(), free_port()
    path = tmp_path / "shared.log"
    servers = server(http_port, "imap", f"error_log {path} debug_http;")
    servers += server(mail_port, "imap", f"error_log {path} debug_mail;")
    proxy(mail_block(authd, servers), greetings=[(http_port, b"* OK"), (mail_port, b"* OK")])
    imap_login(http_port)
    imap_login(mail_port)
    check_levels(session_lines(path, http_port, SESSION_INFO), False)
    check_levels(session_lines(path, mail_port, SESSION_INFO + MAIL_DEBUG), True)


# --- credentials (beyond nginx) ---------------------------------------------------------------


def imap_plain(port: int) -> None:
    with imaplib.IMAP4("127.0.0.1", port, timeout=10) as imap:
        assert imap.authenticate("PLAIN", lambda _: f"\0alice\0{PW}".encode())[0] == "OK"


def imap_auth_login(port: int) -> None:
    answers = iter([b"alice", PW.encode()])
    with imaplib.IMAP4("127.0.0.1", port, timeout=10) as imap:
        assert imap.authenticate("LOGIN", lambda _: next(answers))[0] == "OK"


def pop3_user_pass(port: int) -> None:
    pop = poplib.POP3("127.0.0.1", port, timeout=10)
    pop.user("alice")
    assert pop.pass_(PW).startswith(b"+OK")
    pop.quit()


def pop3_apop(port: int) -> None:
    pop = poplib.POP3("127.0.0.1", port, timeout=10)
    assert pop.apop("alice", PW).startswith(b"+OK")
    pop.quit()


def smtp_auth(mech: str) -> Callable[[int], None]:
    def login(port: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, "client.example", timeout=10) as smtp:
            smtp.ehlo("client.example")
            smtp.user, smtp.password = "alice", PW
            # smtplib's own login() picks auth_plain/auth_login/auth_cram_md5 this way
            auth = getattr(smtp, "auth_" + mech.lower().replace("-", "_"))
            assert smtp.auth(mech, auth, initial_response_ok=mech != "CRAM-MD5")[0] == 235

    return login


METHODS = {
    "imap-login": ("imap", lambda port: imap_login(port, "alice", PW)),
    "imap-authenticate-plain": ("imap", imap_plain),
    "imap-authenticate-login": ("imap", imap_auth_login),
    "pop3-user-pass": ("pop3", pop3_user_pass),
    "pop3-apop": ("pop3", pop3_apop),
    "smtp-auth-plain": ("smtp", smtp_auth("PLAIN")),
    "smtp-auth-login": ("smtp", smtp_auth("LOGIN")),
    "smtp-auth-cram-md5": ("smtp", smtp_auth("CRAM-MD5")),
}
AUTH = {"imap": "imap_auth plain login;", "pop3": "pop3_auth plain apop;"}
AUTH["smtp"] = "smtp_auth plain login cram-md5; proxy_smtp_auth on;"  # AUTH PLAIN to the backend
GREETING = {"imap": b"* OK", "pop3": b"+OK", "smtp": b"220 "}


@pytest.fixture
def pw_backend(loop_thread):
    """The fake backend with alice's password PW."""
    be = BackendServer(users={"alice": PW})
    for proto in ("imap", "pop3", "smtp"):
        loop_thread.run(be.listen(proto))
    yield be
    loop_thread.run(be.stop())


@pytest.mark.parametrize("method", list(METHODS))
def test_debug_log_shows_the_login_without_credentials(
    proxy, authd, pw_backend, free_port, tmp_path, request, method
):
    fastmail_only(request.node.callspec.params["proxy"], "credentials masked in the debug log")
    protocol, login = METHODS[method]
    add_user(authd, "alice", PW, {protocol: ("127.0.0.1", pw_backend.port(protocol))}, True)
    port = free_port()
    path = tmp_path / "debug.log"
    extra = f"{AUTH[protocol]} error_log {path} debug;"
    proxy(mail_block(authd, server(port, protocol, extra)), greetings=[(port, GREETING[protocol])])
    login(port)
    log = read_when(path, "close mail connection", timeout=10)
    assert pw_backend.stats.logins == 1
    secrets = [PW, base64.b64encode(PW.encode()).decode()]
    secrets.append(base64.b64encode(f"\0alice\0{PW}".encode()).decode())
    for secret in secrets:
        assert secret not in log, (secret, log)
    for line in (
        f"{protocol} auth state",
        'mail auth http request: "Auth-User: alice"',
        'mail auth http request: "Auth-Pass: ********"',
        'mail auth http header: "Auth-Status: OK"',
        "mail state: connecting to upstream",
        "mail proxy read response: ",
        "mail state: proxying",
    ):
        assert re.search(r"\[debug\] \d+#\d+: \*\d+ " + re.escape(line), log), (line, log)
    sent = re.findall(r'\*\d+ (mail proxy send [^:]+): "', log)
    assert (
        sent[-1]
        in {
            "imap": ("mail proxy send passwd",),
            "pop3": ("mail proxy send pass",),
            "smtp": ("mail proxy send auth",),
        }[protocol]
    )
