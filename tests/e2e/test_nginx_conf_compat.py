"""nginx's config files and command line, judged by `fastmail -t` and `nginx -t` side by side.

An nginx.conf shared with http{} and stream{} (Debian's stock file, Mailu, puppet-nginx) is read
unchanged: those blocks and the files they include are read for syntax only and not served, with
one [notice]; -T prints every file; the mail part is judged as nginx judges it. Debian's own
/etc/nginx/nginx.conf with a mail{} block appended passes both `-t`s and fastmail serves a login
through it. Also: a relative -p with a relative -c, the unterminated-quote message, and the
location of ssl_session_ticket_key errors. nginx (Debian's, with its mail module) is the oracle;
where it is missing, fastmail's text is still checked against nginx's wording written here.
"""

from __future__ import annotations

import imaplib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import MissingPackage
from support import fastmail as fm
from support import nginx as ng
from support.clients import wait_greeting
from support.fastmail import add_user, listening_ports
from support.process import config_messages, temp_dir, terminate


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


# -- an nginx.conf shared with http{} and stream{}


STOCK = Path("/etc/nginx/nginx.conf")
NOTICE = "read for syntax only and not served in "


@pytest.fixture
def work() -> Iterator[Path]:
    """A 0755 temp dir (the stock config's workers run as www-data)."""
    d = temp_dir("fastmail-conf-")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def stock_conf(dest: Path, mail: str) -> tuple[Path, int]:
    """Debian's nginx.conf with `mail` appended, its includes still pointing at /etc/nginx; only
    the files it writes (pid, error_log, access_log) move into `dest`. Returns the file and the
    line of its `http {`."""
    if not STOCK.exists():
        pytest.skip("Debian's /etc/nginx/nginx.conf is not installed (package nginx-common)")
    text = STOCK.read_text()
    for pattern, repl in (
        (r"(?m)^pid [^;]*;", f"pid {dest}/nginx.pid;"),
        (r"(?m)^error_log [^;]*;", f"error_log {dest}/error.log;"),
        (r"(?m)^(\s*)access_log [^;]*;", rf"\1access_log {dest}/access.log;"),
    ):
        text, n = re.subn(pattern, repl, text)
        assert n == 1, f"{STOCK} changed: {pattern!r} matched {n} times"
    assert "include /etc/nginx/modules-enabled/*.conf;" in text
    conf = dest / "nginx.conf"
    conf.write_text(text + mail)
    http_line = next(i for i, ln in enumerate(text.splitlines(), 1) if ln.startswith("http {"))
    return conf, http_line


def test_debian_stock_nginx_conf_passes_t(work, free_port):
    port = free_port()
    mail = f"\nmail {{\n    auth_http 127.0.0.1:9/auth;\n    server {{ listen 127.0.0.1:{port}; protocol imap; }}\n}}\n"
    conf, http_line = stock_conf(work, mail)
    r = fm.config_test("-p", f"{work}/", "-c", str(conf), "-e", f"{work}/startup.log")
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [
        f'fastmail: [notice] "http" block is {NOTICE}{conf}:{http_line}',
        f"fastmail: the configuration file {conf} syntax is ok",
        f"fastmail: configuration file {conf} test is successful",
    ]
    assert f'"http" block is {NOTICE}{conf}:{http_line}' in (work / "startup.log").read_text()
    # Debian's prefix (/usr/share/nginx/), where the modules-enabled lines find modules/
    ng_run = nginx_t("-c", str(conf), "-e", f"{work}/nginx-startup.log")
    assert ng_run is None or ng_run.returncode == 0, ng_run.stderr


def test_debian_stock_nginx_conf_dump_lists_every_file(work, free_port):
    port = free_port()
    mail = f"mail {{\n    auth_http 127.0.0.1:9/auth;\n    server {{ listen 127.0.0.1:{port}; protocol imap; }}\n}}\n"
    conf, _ = stock_conf(work, mail)
    r = fm.config_test("-T", "-q", "-p", f"{work}/", "-c", str(conf), "-e", f"{work}/startup.log")
    assert r.returncode == 0, r.stderr
    heads = re.findall(r"(?m)^# configuration file (.*):$", r.stdout)
    assert heads[0] == str(conf)
    assert "/etc/nginx/mime.types" in heads  # included from inside http{}
    assert any(h.startswith("/etc/nginx/modules-enabled/") for h in heads)
    ng_run = nginx_t("-T", "-q", "-c", str(conf), "-e", f"{work}/nginx-startup.log")
    if ng_run is not None:
        assert ng_run.stdout == r.stdout  # the same files, in the same order, byte for byte


def test_debian_stock_nginx_conf_serves_mail_not_http(work, authd, fake_backend, free_port):
    add_user(authd, "alice", "secret", {"imap": ("127.0.0.1", fake_backend.port("imap"))})
    port = free_port()
    mail = f"mail {{\n    auth_http {authd.url};\n    server {{ listen 127.0.0.1:{port}; protocol imap; }}\n}}\n"
    conf, http_line = stock_conf(work, mail)
    (work / "cwd").mkdir()
    with open(work / "stderr.log", "wb") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fastmail",
                "-p",
                f"{work}/",
                "-c",
                str(conf),
                "-e",
                f"{work}/startup.log",
                "-g",
                "daemon off;",
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=work / "cwd",
        )
    try:
        wait_greeting("127.0.0.1", port, b"* OK", 15, lambda: proc.poll() is None)
        with imaplib.IMAP4("127.0.0.1", port, timeout=10) as imap:
            assert imap.login("alice", "secret")[0] == "OK"
            assert imap.noop()[0] == "OK"
            imap.logout()
        assert listening_ports(proc.pid) == {port}  # not the http{} part's port 80
    finally:
        terminate(proc)
    notice = f'fastmail: [notice] "http" block is {NOTICE}{conf}:{http_line}\n'
    assert notice in (work / "stderr.log").read_text()


def test_stream_block_and_its_includes(tmp_path):
    """stream{} is read as http{} is (fastmail only: Debian's nginx here lacks its stream
    module, so it says `unknown directive "stream"`); one notice names both blocks."""
    (tmp_path / "logs").mkdir()
    (tmp_path / "stream.d").mkdir()
    (tmp_path / "stream.d" / "a.conf").write_text(
        "server { listen 12345; proxy_pass 10.0.0.1:1; }\n"
    )
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        "events {}\nhttp {\n  server { location / { return 204; } }\n}\n"
        "stream {\n  include stream.d/*.conf;\n  upstream u { server 10.0.0.2:1; }\n}\n"
    )
    r = fm.config_test("-T", "-p", f"{tmp_path}/", "-c", str(conf))
    assert r.returncode == 0, r.stderr
    assert f'fastmail: [notice] "http" and "stream" blocks are {NOTICE}{conf}:2\n' in r.stderr
    assert f"# configuration file {tmp_path}/stream.d/a.conf:\nserver {{ listen 12345;" in r.stdout


def test_directives_inside_http_are_not_judged(tmp_path):
    """fastmail does not know http's directives (docs/differences.md): an unknown one passes
    where nginx says `unknown directive`; the notice says the block is not served."""
    (tmp_path / "logs").mkdir()
    conf = tmp_path / "nginx.conf"
    conf.write_text("events {}\nhttp {\n    no_such_http_directive on;\n}\n")
    r = fm.config_test("-p", f"{tmp_path}/", "-c", str(conf))
    assert r.returncode == 0, r.stderr
    assert NOTICE in r.stderr


# what nginx judges inside http{} that fastmail judges too: the syntax, include, the block itself
HTTP_SYNTAX = [
    ("http { sendfile on }", 'unexpected "}" in {C}:2'),
    ("http { server { listen 80; }", 'unexpected end of file, expecting "}" in {C}:3'),
    ('http { "a }', 'unexpected end of file, expecting ";" or "}" in {C}:3'),
    (
        "http { include nope.conf; }",
        'open() "{D}nope.conf" failed (2: No such file or directory) in {C}:2',
    ),
    ("http { include; }", 'invalid number of arguments in "include" directive in {C}:2'),
    ("http { include a b; }", 'invalid number of arguments in "include" directive in {C}:2'),
    ("http { include x { } }", 'directive "include" is not terminated by ";" in {C}:2'),
    ("http foo { }", 'invalid number of arguments in "http" directive in {C}:2'),
    ("http;", 'directive "http" has no opening "{" in {C}:2'),
    ("http {}\nhttp {}", '"http" directive is duplicate in {C}:3'),
    ("http { }\nload_module x.so;", '"load_module" directive is specified too late in {C}:3'),
    ("mail { http { } }", '"http" directive is not allowed here in {C}:2'),
    ("mail { server { http { } } }", '"http" directive is not allowed here in {C}:2'),
]


@pytest.mark.parametrize("body,message", HTTP_SYNTAX, ids=[b for b, _ in HTTP_SYNTAX])
def test_http_block_syntax_judged_as_nginx(tmp_path, body, message):
    (tmp_path / "logs").mkdir()
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"events {{}}\n{body}\n")
    args = ("-p", f"{tmp_path}/", "-c", str(conf), "-e", f"{tmp_path}/logs/startup.log")
    fm_run = fm.config_test(*args)
    want = message.replace("{C}", str(conf)).replace("{D}", f"{tmp_path}/")
    assert fm_run.returncode == 1
    assert config_messages(fm_run.stderr) == [want], fm_run.stderr
    same_text(nginx_t(*args, "-g", f"{ng.LOAD_MAIL} pid {tmp_path}/nginx.pid;"), fm_run)


def test_include_inside_http_follows_globs_in_order(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "sites").mkdir()
    for name in ("b.conf", "a.conf", "c.txt"):
        (tmp_path / "sites" / name).write_text(f"# {name}\nserver {{ listen 80; }}\n")
    conf = tmp_path / "nginx.conf"
    conf.write_text("events {}\nhttp {\n    include sites/*.conf;\n    include sites/c.txt;\n}\n")
    args = ("-T", "-q", "-p", f"{tmp_path}/", "-c", str(conf), "-e", f"{tmp_path}/logs/s.log")
    r = fm.config_test(*args)
    assert r.returncode == 0, r.stderr
    heads = re.findall(r"(?m)^# configuration file (.*):$", r.stdout)
    assert heads == [str(conf), *(f"{tmp_path}/sites/{n}" for n in ("a.conf", "b.conf", "c.txt"))]
    ng_run = nginx_t(*args, "-g", f"pid {tmp_path}/nginx.pid;")
    if ng_run is not None:
        assert (ng_run.returncode, ng_run.stdout) == (0, r.stdout), ng_run.stderr
