"""Fuzz target: the config lexer, parser and checks (fastmail/conf/) on arbitrary text, as
`fastmail -t` reads it (conf.load: parse, merge, check), in memory.

Input: up to four files cut by common.SEP: the main config and three files it may include
(`a.conf`, `b.conf`, `sub/c.conf` beside it; globs match among them). Nothing touches the
disk or the network: files come from the input (any other path is missing), and host names
resolve to 127.0.0.1 for `localhost` and to nothing else. Invariants, on every input:
- only ConfigError escapes (nginx's message: text, a file and line when it has them), never
  another exception;
- no hang: every input finishes within libFuzzer's -timeout.
"""

from __future__ import annotations

import contextlib
import fnmatch
import ipaddress
import socket
import types
from collections.abc import Iterator
from typing import Any

from fastmail import conf
from fastmail.conf import ConfigError, parser

from . import common

DIR = "/nonexistent-fuzz/conf/"
NAMES = ("fastmail.conf", "a.conf", "b.conf", "sub/c.conf")
FILES: dict[str, bytes] = {}


class MemLoader(parser.Loader):
    def read_file(self, path: str, located: bool) -> bytes:
        if path in FILES:
            if path not in self._seen:
                self._seen.add(path)
                self.files.append((path, FILES[path]))
            return FILES[path]
        return super().read_file(path, located)  # a missing file: nginx's open() error


def _glob(pattern: str) -> list[str]:
    return [p for p in FILES if fnmatch.fnmatchcase(p, pattern)]


def _getaddrinfo(host: Any, port: Any, *args: Any, **kw: Any) -> list[Any]:
    if isinstance(host, bytes):
        host = host.decode("latin-1")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None
    if ip.version == 4:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (str(ip), 0))]
    return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", (str(ip), 0, 0, 0))]


@contextlib.contextmanager
def in_memory() -> Iterator[None]:
    """Files from FILES, globs among them, names resolved without DNS; undone after (the
    replay tests run in the suite's process)."""
    patches = (
        (conf, "Loader", MemLoader),
        (parser, "glob", types.SimpleNamespace(glob=_glob)),
        (socket, "getaddrinfo", _getaddrinfo),
    )
    saved = [(mod, name, getattr(mod, name)) for mod, name, _ in patches]
    for mod, name, value in patches:
        setattr(mod, name, value)
    try:
        yield
    finally:
        for mod, name, value in saved:
            setattr(mod, name, value)


def test_one_input(data: bytes) -> None:
    FILES.clear()
    for name, text in zip(NAMES, data.split(common.SEP), strict=False):
        FILES[DIR + name] = text
    with in_memory():
        try:
            conf.load(DIR + NAMES[0], "/nonexistent-fuzz/")
        except ConfigError as e:
            common.check(isinstance(e.message, str) and e.message, "an empty ConfigError", e)


def seeds() -> list[bytes]:
    import ast

    out = [(common.TESTS.parent / "fastmail/conf/example.conf").read_bytes()]
    out += [p.read_bytes() for p in sorted((common.TESTS / "data/real-world").glob("**/*.conf"))]
    files = ["unit/conf/test_conf.py", "unit/conf/test_tls_conf.py", "unit/test_cli.py",
             "e2e/test_real_world_configs.py", "e2e/test_nginx_conf_compat.py"]  # fmt: skip
    for name in files:
        for node in ast.walk(ast.parse((common.TESTS / name).read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str | bytes):
                v = (
                    node.value.encode("utf-8", "surrogateescape")
                    if isinstance(node.value, str)
                    else node.value
                )
                if b";" in v and len(v) > 8:
                    # fragments too, inside the blocks they are written for
                    out += [v, b"events {}\nmail {\n" + v + b"\n}\n"]
                    out.append(b"events {} mail { auth_http 127.0.0.1:9; server {\n" + v + b"\n}}")
    return out
