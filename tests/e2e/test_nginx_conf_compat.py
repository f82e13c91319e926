"""nginx's config files and command line, judged by `fastmail -t` and `nginx -t` side by side.

nginx (Debian's, with its mail module) is the oracle; where it is missing, fastmail's text is
still checked against nginx's wording written here.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from support import MissingPackage
from support import fastmail as fm
from support import nginx as ng
from support.process import config_messages


def nginx_t(
    *args: str, cwd: str | os.PathLike[str] | None = None
) -> subprocess.CompletedProcess[str] | None:
    """`nginx -t`, or None where Debian's nginx with its mail module is not installed."""
    try:
        return ng.config_test(*args, cwd=cwd)
    except MissingPackage:
        return None


def same_text(
    ng_run: subprocess.CompletedProcess[str] | None, fm_run: subprocess.CompletedProcess[str]
) -> None:
    """nginx (where installed) reaches fastmail's verdict with the same error texts."""
    if ng_run is None:
        return
    assert ng_run.returncode == fm_run.returncode, (ng_run.stderr, fm_run.stderr)
    assert config_messages(ng_run.stderr) == config_messages(fm_run.stderr), (
        ng_run.stderr,
        fm_run.stderr,
    )


# -- messages


@pytest.mark.parametrize("quote", ["'", '"'])
def test_unterminated_quote_message(tmp_path, quote):
    (tmp_path / "logs").mkdir()
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"events {{}}\nworker_processes {quote}{'a' * 5000}\n")
    args = ("-p", f"{tmp_path}/", "-c", str(conf), "-e", f"{tmp_path}/logs/s.log")
    r = fm.config_test(*args)
    assert config_messages(r.stderr) == [
        f'too long parameter, probably missing terminating "{quote}" character in {conf}:2'
    ]
    same_text(nginx_t(*args, "-g", f"pid {tmp_path}/nginx.pid;"), r)


@pytest.mark.parametrize("key", ["short", "missing"])
def test_ssl_session_ticket_key_errors_are_located(tmp_path, certs, free_port, key):
    """nginx checks the ticket key files where it merges mail{}: the message ends with the
    location of mail{}'s closing brace."""
    (tmp_path / "logs").mkdir()
    (tmp_path / "short.key").write_bytes(os.urandom(20))
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        "events {}\nmail {\n    auth_http 127.0.0.1:9/a;\n    server {\n"
        f"        listen 127.0.0.1:{free_port()} ssl;\n        protocol imap;\n"
        f"        ssl_certificate {certs.server_cert};\n"
        f"        ssl_certificate_key {certs.server_key};\n"
        f"        ssl_session_ticket_key {key}.key;\n    }}\n\n}}\n"
    )
    args = ("-p", f"{tmp_path}/", "-c", str(conf), "-e", f"{tmp_path}/logs/s.log")
    r = fm.config_test(*args)
    path = f"{tmp_path}/{key}.key"
    want = {
        "short": f'"{path}" must be 48 or 80 bytes',
        "missing": f'open() "{path}" failed (2: No such file or directory)',
    }[key]
    assert config_messages(r.stderr) == [f"{want} in {conf}:12"]
    same_text(nginx_t(*args, "-g", f"{ng.LOAD_MAIL} pid {tmp_path}/nginx.pid;"), r)


# -- the command line: a relative -p with a relative -c


def test_relative_prefix_and_relative_conf(tmp_path):
    """`-p t1/ -c t1/bad.conf` opens t1/t1/bad.conf (the prefix once), and its includes are
    under t1/t1/; both proxies name the file as they opened it."""
    (tmp_path / "t1" / "t1").mkdir(parents=True)
    (tmp_path / "t1" / "t1" / "inc.conf").write_text("\nfoo;\n")
    (tmp_path / "t1" / "t1" / "bad.conf").write_text("events {}\ninclude inc.conf;\n")
    globals_ = "pid nginx.pid; error_log error.log;"
    args = ("-p", "t1/", "-c", "t1/bad.conf", "-e", "startup.log", "-g", globals_)
    r = fm.config_test(*args, cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        'fastmail: [emerg] unknown directive "foo" in t1/t1/inc.conf:2',
        "fastmail: configuration file t1/t1/bad.conf test failed",
    ]
    ng_run = nginx_t(*args, cwd=tmp_path)
    if ng_run is not None:
        assert ng_run.stderr.replace("nginx: ", "fastmail: ") == r.stderr
    (tmp_path / "t1" / "t1" / "inc.conf").write_text("\n")
    r = fm.config_test(*args, cwd=tmp_path)
    assert r.stderr.splitlines() == [
        "fastmail: the configuration file t1/t1/bad.conf syntax is ok",
        "fastmail: configuration file t1/t1/bad.conf test is successful",
    ]
    assert (tmp_path / "t1" / "nginx.pid").exists()  # pid and logs are under the prefix, once
    assert (tmp_path / "t1" / "startup.log").exists()
