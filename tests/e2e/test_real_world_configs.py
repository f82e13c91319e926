"""The 33 real-world nginx mail configs of tests/data/real-world judged by `fastmail -t`.

Each folder is laid out in a temporary prefix as its header describes (http{}, stream{} and
load_module blanked line for line, certificates generated under certs/, logs/ created). fastmail
must accept the `expect=ok` ones and reject the others with nginx's words, file and line. Where
nginx is installed, `nginx -t` runs on the same layout and must reach the same verdict and text.
The blanking is for nginx's sake (it would judge the http{} part against this machine); fastmail
also reads every file as written, http{}, stream{} and load_module included, to the same verdict.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from support import MissingPackage
from support import fastmail as fm
from support import nginx as ng
from support.process import config_messages as messages

REAL = Path(__file__).resolve().parents[1] / "data" / "real-world"
FOLDERS = sorted(p.name for p in REAL.iterdir() if p.is_dir())

# nginx's verdict on each rejected config ({P} = the prefix the config was laid out in)
EXPECTED_ERRORS = {
    "debian-stock-mail-example-no-auth-http": 'no "auth_http" is defined for server in {P}nginx.conf:{L}',
    "learning-repo-ssl-typo": 'unknown directive "ssl_prefer_server_cipher" in {P}nginx.conf:{L}',
    "mailu-2022-tlsconf-missing-semicolon": 'invalid number of arguments in "ssl_trusted_certificate" directive in {P}tls.conf:{L}',
    "nesono-docker-sieve-in-mail-d": 'invalid port in "94190" of the "listen" directive in {P}mail.d/sieve.conf:{L}',
    "nginx-admin-guide-complete-example": 'no "events" section in configuration',
    "nginx-docs-zh-ssl-example": 'unknown directive "..." in {P}nginx.conf:{L}',
    "nginx-mail-tutorial-placeholders": 'invalid value "..." in {P}nginx.conf:{L}',
    "nginx-wiki-embedded-perl-auth": 'getgrnam("nobody") failed in {P}nginx.conf:{L}',
    "nginx-wiki-imap-starttls": '"starttls" directive conflicts with "ssl on" in {P}nginx.conf:{L}',
    "puppet-nginx-mailhost-ipv6": 'the invalid "default" parameter in {P}conf.mail.d/pop3.example.conf:{L}',
}

_BLOCK = re.compile(rb"(?m)^[ \t]*(http|stream)[ \t\r\n]*\{")
_LOAD_MODULE = re.compile(rb"(?m)^[ \t]*load_module[^;\n]*;")


def blank(data: bytes) -> bytes:
    """Replace http{}/stream{} blocks and load_module lines with spaces, keeping every LF."""
    out = bytearray(data)

    def wipe(a: int, b: int) -> None:
        for i in range(a, b):
            if out[i] != 0x0A:
                out[i] = 0x20

    for m in _LOAD_MODULE.finditer(data):
        wipe(m.start(), m.end())
    for m in _BLOCK.finditer(bytes(out)):
        if out[m.start() : m.end()].strip() == b"":
            continue
        depth, i, quote, comment = 0, m.end() - 1, 0, False
        while i < len(out):
            c = out[i]
            if comment:
                comment = c != 0x0A
            elif quote:
                if c == 0x5C:
                    i += 1
                elif c == quote:
                    quote = 0
            elif c in (0x22, 0x27) and out[i - 1] in b" \t\r\n":
                quote = c
            elif c == 0x23 and out[i - 1] in b" \t\r\n;{}":
                comment = True
            elif c == 0x7B:
                depth += 1
            elif c == 0x7D:
                depth -= 1
                if depth == 0:
                    break
            i += 1
        wipe(m.start(), i + 1)
    return bytes(out)


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    trustme = pytest.importorskip("trustme")
    d = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    rsa = ca.issue_cert("mail.example.test", "localhost")
    rsa.cert_chain_pems[0].write_to_path(str(d / "cert.pem"))
    rsa.private_key_pem.write_to_path(str(d / "key.pem"))
    ec = trustme.CA(key_type=trustme.KeyType.ECDSA).issue_cert("mail.example.test")
    ec.cert_chain_pems[0].write_to_path(str(d / "ecdsa.crt"))
    ec.private_key_pem.write_to_path(str(d / "ecdsa.key"))
    subprocess.run(
        [
            "openssl",
            "genpkey",
            "-genparam",
            "-algorithm",
            "DH",
            "-pkeyopt",
            "dh_param:ffdhe2048",
            "-out",
            str(d / "dhparam.pem"),
        ],
        check=True,
        capture_output=True,
    )
    for name in ("fullchain.pem", "privkey.pem", "cert.crt", "cert.key"):
        shutil.copy(d / ("key.pem" if "key" in name else "cert.pem"), d / name)
    return d


def layout(folder: str, dest: Path, certs: Path, as_written: bool = False) -> Path:
    src = REAL / folder
    for p in src.rglob("*"):
        rel = p.relative_to(src)
        if p.is_dir():
            (dest / rel).mkdir(parents=True, exist_ok=True)
        else:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            data = p.read_bytes()
            (dest / rel).write_bytes(data if as_written else blank(data))
    (dest / "logs").mkdir(exist_ok=True)
    shutil.copytree(certs, dest / "certs", dirs_exist_ok=True)
    return dest / "nginx.conf"


def expect_ok(folder: str) -> bool:
    head = (REAL / folder / "nginx.conf").read_text().splitlines()[0]
    return "expect=ok" in head


def run_fastmail(prefix: Path, conf: Path) -> subprocess.CompletedProcess[str]:
    return fm.config_test("-p", f"{prefix}/", "-c", str(conf), "-e", f"{prefix}/logs/startup.log")


def run_nginx(prefix: Path, conf: Path) -> subprocess.CompletedProcess[str]:
    return ng.config_test(
        "-p", f"{prefix}/", "-c", str(conf), "-e", f"{prefix}/logs/startup.log", "-g", ng.LOAD_MAIL
    )


@pytest.mark.parametrize("folder", FOLDERS)
def test_real_world_config(folder: str, tmp_path: Path, certs: Path) -> None:
    conf = layout(folder, tmp_path, certs)
    fm_run = run_fastmail(tmp_path, conf)
    ok = expect_ok(folder)
    assert (fm_run.returncode == 0) == ok, fm_run.stderr
    if ok:
        assert f"configuration file {conf} test is successful" in fm_run.stderr
    else:
        assert f"configuration file {conf} test failed" in fm_run.stderr
        got = messages(fm_run.stderr)
        assert got, fm_run.stderr
        want = EXPECTED_ERRORS[folder]
        pattern = re.escape(want).replace(re.escape("{P}"), re.escape(f"{tmp_path}/"))
        pattern = pattern.replace(re.escape("{L}"), r"\d+")
        assert re.fullmatch(pattern, got[-1]), got
    try:
        ng_run = run_nginx(tmp_path, conf)
    except MissingPackage:
        return  # fastmail's verdict is checked above; nginx is the oracle where installed
    assert ng_run.returncode == fm_run.returncode, (ng_run.stderr, fm_run.stderr)
    assert messages(ng_run.stderr) == messages(fm_run.stderr), (ng_run.stderr, fm_run.stderr)


_MISSING_INCLUDE = re.compile(
    r'open\(\) "(/etc/nginx/[^"]+)" failed \(2: No such file or directory\) in '
)


@pytest.mark.parametrize("folder", FOLDERS)
def test_real_world_config_as_written(folder: str, tmp_path: Path, certs: Path) -> None:
    """The file unchanged (http{}, stream{}, load_module kept) gets the blanked file's verdict
    and message; the one exception is an http{} include of a file this machine lacks (Mailu's
    /etc/nginx/proxy.conf), which nginx refuses with the same words."""
    blanked = run_fastmail(tmp_path / "b", layout(folder, tmp_path / "b", certs))
    conf = layout(folder, tmp_path / "w", certs, as_written=True)
    written = run_fastmail(tmp_path / "w", conf)
    got = [m.replace(f"{tmp_path}/w/", "{P}") for m in messages(written.stderr)]
    want = [m.replace(f"{tmp_path}/b/", "{P}") for m in messages(blanked.stderr)]
    missing = _MISSING_INCLUDE.match(got[0]) if got else None
    if missing and not os.path.exists(missing[1]):
        assert written.returncode == 1, written.stderr
        return
    assert (written.returncode, got) == (blanked.returncode, want), written.stderr
    has_foreign = re.search(rb"(?m)^[ \t]*(http|stream)[ \t\r\n]*\{", conf.read_bytes())
    notice = "read for syntax only and not served in " in written.stderr
    if not has_foreign:
        assert not notice, written.stderr
    elif written.returncode == 0:
        assert notice, written.stderr
