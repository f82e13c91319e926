"""fastmail's command line as nginx's: flags, messages, exit codes, -t/-T/-q/-s."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fastmail.cli import main, parse_args

ROOT = Path(__file__).resolve().parents[2]
GOOD = "events {}\nmail {\n auth_http 127.0.0.1:9/a;\n server { listen 127.0.0.1; protocol imap; }\n}\n"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fastmail", *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def prefix(tmp_path: Path) -> Path:
    (tmp_path / "logs").mkdir()
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "fastmail.conf").write_text(GOOD)
    return tmp_path


def test_t_success(prefix: Path) -> None:
    r = run("-t", "-p", str(prefix))
    conf = f"{prefix}/conf/fastmail.conf"
    assert r.returncode == 0
    assert r.stderr == (
        f"fastmail: the configuration file {conf} syntax is ok\n"
        f"fastmail: configuration file {conf} test is successful\n"
    )
    assert (prefix / "logs" / "fastmail.pid").exists()  # -t creates the pid file, as nginx does
    assert r.stdout == ""


def test_t_failure_prints_location(prefix: Path) -> None:
    conf = prefix / "conf" / "fastmail.conf"
    conf.write_text("events {}\n\nfoo;\n")
    r = run("-tp", f"{prefix}")
    assert r.returncode == 1
    assert r.stderr == (
        f'fastmail: [emerg] unknown directive "foo" in {conf}:3\n'
        f"fastmail: configuration file {conf} test failed\n"
    )
    assert 'unknown directive "foo"' in (prefix / "logs" / "error.log").read_text()


def test_t_error_after_parse_says_syntax_ok(prefix: Path) -> None:
    conf = prefix / "conf" / "fastmail.conf"
    conf.write_text("")
    r = run("-t", "-p", str(prefix))
    assert r.stderr.splitlines() == [
        f"fastmail: the configuration file {conf} syntax is ok",
        'fastmail: [emerg] no "events" section in configuration',
        f"fastmail: configuration file {conf} test failed",
    ]


def test_q_and_T(prefix: Path) -> None:
    r = run("-tq", "-p", str(prefix))
    assert (r.returncode, r.stderr) == (0, "")
    r = run("-T", "-q", "-p", str(prefix))
    assert r.stdout == f"# configuration file {prefix}/conf/fastmail.conf:\n{GOOD}\n"


def test_c_relative_to_prefix_and_g(prefix: Path) -> None:
    (prefix / "other.conf").write_text("events {}\n")
    r = run("-t", "-p", str(prefix), "-c", "other.conf", "-g", "foo;")
    assert r.stderr.splitlines()[0] == 'fastmail: [emerg] unknown directive "foo" in command line'


def test_missing_config(prefix: Path) -> None:
    r = run("-t", "-p", str(prefix), "-c", "nope.conf")
    assert (
        r.stderr.splitlines()[0]
        == f'fastmail: [emerg] open() "{prefix}/nope.conf" failed (2: No such file or directory)'
    )
    assert r.returncode == 1


def test_bind_error_and_eaddrinuse_ignored(prefix: Path) -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    port = s.getsockname()[1]
    conf = prefix / "conf" / "fastmail.conf"
    conf.write_text(GOOD.replace("127.0.0.1;", f"127.0.0.1:{port};"))
    try:
        assert run("-t", "-p", str(prefix)).returncode == 0
    finally:
        s.close()
    conf.write_text(GOOD.replace("127.0.0.1;", "192.0.2.1:10143;"))
    r = run("-t", "-p", str(prefix))
    assert (
        "[emerg] bind() to 192.0.2.1:10143 failed (99: Cannot assign requested address)" in r.stderr
    )


@pytest.mark.parametrize(
    "argv,message",
    [
        (["foo"], 'fastmail: invalid option: "foo"'),
        (["-x"], 'fastmail: invalid option: "x"'),
        (["-vx"], 'fastmail: invalid option: "x"'),
        (["-s"], 'fastmail: option "-s" requires parameter'),
        (["-s", "bogus"], 'fastmail: invalid option: "-s bogus"'),
        (["-p"], 'fastmail: option "-p" requires directory name'),
        (["-c"], 'fastmail: option "-c" requires file name'),
        (["-e"], 'fastmail: option "-e" requires file name'),
        (["-g"], 'fastmail: option "-g" requires parameter'),
    ],
)
def test_option_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 1
    assert capsys.readouterr().err == message + "\n"


def test_version_and_help() -> None:
    r = run("-v")
    assert (r.returncode, r.stderr) == (0, "fastmail version: fastmail/0.1.0\n")
    r = run("-V")
    lines = r.stderr.splitlines()
    assert lines[1].startswith("built with OpenSSL ") and "nginx/1.22.1" in r.stderr
    r = run("-h")
    assert r.stderr.startswith("fastmail version: fastmail/0.1.0\nUsage: fastmail [-?hvVtTq]")
    assert r.stderr.endswith("global directives out of configuration file\n\n")
    assert "FASTMAIL_PREFIX" in r.stderr


def test_bundling_and_last_wins() -> None:
    o = parse_args(["-tq", "-p/x", "-c", "a", "-c", "b", "-sreload"])
    assert (o.test, o.quiet, o.prefix, o.conf, o.signal) == (True, True, "/x", "b", "reload")


def test_signal(prefix: Path) -> None:
    pidfile = prefix / "logs" / "fastmail.pid"
    r = run("-s", "reload", "-p", str(prefix))
    assert (
        r.stderr == f'fastmail: [error] open() "{pidfile}" failed (2: No such file or directory)\n'
    )
    assert r.returncode == 1
    pidfile.write_text("abc\n")
    r = run("-s", "stop", "-p", str(prefix))
    assert r.stderr == f'fastmail: [error] invalid PID number "abc" in "{pidfile}"\n'
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        pidfile.write_text(f"{child.pid}\n")
        assert run("-s", "stop", "-p", str(prefix)).returncode == 0
        assert child.wait(timeout=10) == -15
    finally:
        child.kill()


def test_env_prefix(prefix: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "fastmail", "-t"],
        capture_output=True,
        text=True,
        env={**os.environ, "FASTMAIL_PREFIX": str(prefix)},
        timeout=60,
    )
    assert r.returncode == 0, r.stderr


def test_seed_example_passes(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    r = run("-t", "-p", str(tmp_path), "-c", str(ROOT / "fastmail" / "conf" / "example.conf"))
    assert r.returncode == 0, r.stderr


def test_directives_doc_is_fresh() -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_directive_docs.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr


def test_log_on_stderr_prints_log_lines(prefix: Path) -> None:
    """With `-e stderr`, or a -e file that cannot be opened, the startup log is stderr itself:
    nginx prints its timestamped log line there, not `nginx: [emerg] ...` (checked against
    Debian's nginx, whose compiled-in error log is stderr)."""
    conf = prefix / "conf" / "fastmail.conf"
    conf.write_text("events {}\nfoo;\n")
    line = r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[emerg\] \d+#\d+: "
    for e in ("stderr", f"{prefix}/nodir/e.log"):
        r = run("-t", "-p", str(prefix), "-e", e)
        lines = r.stderr.splitlines()
        if e != "stderr":
            assert lines.pop(0) == (
                f'fastmail: [alert] could not open error log file: open() "{e}" failed '
                "(2: No such file or directory)"
            )
        assert re.fullmatch(line + f'unknown directive "foo" in {conf}:2', lines[0]), lines
        assert lines[1:] == [f"fastmail: configuration file {conf} test failed"]


# -- files and paths after a pip install (README "Files and paths")


def run_env(args: list[str], prefix: Path | None, cwd: Path | None = None):
    """`python -m fastmail ARGS` with FASTMAIL_PREFIX standing in for the compiled-in default
    prefix (/usr/local/fastmail/), umask 022."""
    env = {k: v for k, v in os.environ.items() if k != "FASTMAIL_PREFIX"}
    if prefix is not None:
        env["FASTMAIL_PREFIX"] = str(prefix)
    return subprocess.run(
        [sys.executable, "-m", "fastmail", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
        preexec_fn=lambda: os.umask(0o022),
    )


def test_default_prefix_gets_its_logs_dir(tmp_path: Path) -> None:
    """No prefix exists after a pip install: the default pid file and error log under the
    default prefix get their logs/ directory (0755), for -t and a real start."""
    fresh = tmp_path / "fresh"  # not there yet, like /usr/local/fastmail/ after pip install
    conf = tmp_path / "mail.conf"
    conf.write_text(GOOD)
    r = run_env(["-t", "-c", str(conf)], fresh)
    assert (r.returncode, r.stderr) == (
        0,
        f"fastmail: the configuration file {conf} syntax is ok\n"
        f"fastmail: configuration file {conf} test is successful\n",
    )
    assert oct((fresh / "logs").stat().st_mode & 0o777) == oct(0o755)
    assert (fresh / "logs" / "fastmail.pid").exists()
    assert (fresh / "logs" / "error.log").exists()


def test_default_prefix_start_and_stop(tmp_path: Path) -> None:
    """README's `fastmail -c FILE` then `fastmail -s quit` on a fresh default prefix."""
    from support.clients import wait_greeting
    from support.ports import free_port

    fresh = tmp_path / "fresh"
    port = free_port()
    conf = tmp_path / "mail.conf"
    conf.write_text(GOOD.replace("127.0.0.1;", f"127.0.0.1:{port};"))
    env = {**os.environ, "FASTMAIL_PREFIX": str(fresh)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastmail", "-c", str(conf), "-g", "daemon off;"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_greeting("127.0.0.1", port, b"* OK", 15, lambda: proc.poll() is None)
        assert (fresh / "logs" / "fastmail.pid").read_text().strip() == str(proc.pid)
        r = run_env(["-s", "quit", "-c", str(conf)], fresh)
        assert (r.returncode, r.stderr) == (0, "")
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        assert proc.stderr is not None
        proc.stderr.close()


def test_explicit_paths_under_default_prefix_are_not_created(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    conf = tmp_path / "mail.conf"
    conf.write_text(f"pid {tmp_path}/run/f.pid;\nerror_log {tmp_path}/log/e.log;\n{GOOD}")
    r = run_env(["-t", "-c", str(conf), "-e", f"{tmp_path}/elog/s.log"], fresh)
    assert r.returncode == 1
    assert f'open() "{tmp_path}/run/f.pid" failed (2: No such file or directory)' in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mail.conf"]


def test_explicit_prefix_is_not_created_and_fails_as_nginx(tmp_path: Path) -> None:
    """-p keeps nginx's meaning: no directory is made, and the messages are nginx's (Debian's
    nginx is built with other defaults, so it is given fastmail's as -g and -e)."""
    from support import MissingPackage
    from support import nginx as ng
    from support.process import config_messages

    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "fastmail.conf").write_text("events {}\n")
    r = run_env(["-t", "-p", f"{tmp_path}/"], None)
    assert r.returncode == 1
    logs = f"{tmp_path}/logs"
    assert config_messages(r.stderr) == [
        f'could not open error log file: open() "{logs}/error.log" failed (2: No such file or directory)',
        f'open() "{logs}/fastmail.pid" failed (2: No such file or directory)',
    ]
    assert not (tmp_path / "logs").exists()
    try:
        ng_run = ng.config_test(
            "-p", f"{tmp_path}/", "-c", "conf/fastmail.conf", "-e", "logs/error.log",
            "-g", "pid logs/fastmail.pid; error_log logs/error.log;",
        )  # fmt: skip
    except MissingPackage:
        return
    assert config_messages(ng_run.stderr) == config_messages(r.stderr)
    assert (
        ng_run.stderr.replace("nginx: ", "fastmail: ").splitlines()[0] == r.stderr.splitlines()[0]
    )
