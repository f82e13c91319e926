"""The one-pass config parser: files, include, -g, dispatch (ngx_conf_parse / ngx_conf_handler).

Owns reading config files, resolving include globs against the conf prefix, the context stack
and the dispatch checks in nginx's order (unknown, not allowed here, terminator, arity). Directive
semantics live in the module files; this file must not know any directive but `include`.
"""

from __future__ import annotations

import errno
import glob
from dataclasses import dataclass, field
from typing import Any

from fastmail.conf import lexer
from fastmail.conf.errors import ConfigError, strerror
from fastmail.conf.table import (
    ANY,
    BLOCK,
    FLAG,
    FOREIGN,
    MAX_ARGS,
    ONE_MORE,
    TWO_MORE,
    Directive,
    Registry,
)


@dataclass(slots=True)
class Ctx:
    """A context being parsed: its directive values by field and where each was set."""

    kind: int
    file: str = ""
    line: int = 0
    values: dict[str, Any] = field(default_factory=dict)
    where: dict[str, tuple[str, int]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


class Loader:
    def __init__(self, registry: Registry, prefix: str, conf_prefix: str) -> None:
        self.registry = registry
        self.prefix = prefix
        self.conf_prefix = conf_prefix
        self.files: list[tuple[str, bytes]] = []
        self._seen: set[str] = set()
        self.warnings: list[str] = []
        self.lex: lexer.Lexer | None = None
        self.state: dict[str, Any] = {}  # module state across contexts (mail block, events, ...)

    # -- locations and messages

    @property
    def file(self) -> str:
        return self.lex.file if self.lex and self.lex.file else ""

    @property
    def line(self) -> int:
        return self.lex.line if self.lex else 0

    def error(self, message: str) -> ConfigError:
        if self.lex is None:
            return ConfigError(message)
        if self.lex.file is None:
            return ConfigError(message, command_line=True)
        return ConfigError(message, self.lex.file, self.lex.line)

    def warn(self, message: str) -> None:
        self.warnings.append(str(self.error(message)))

    def prefix_path(self, p: str) -> str:
        return p if p.startswith("/") else self.prefix + p

    def conf_path(self, p: str) -> str:
        return p if p.startswith("/") else self.conf_prefix + p

    # -- files

    def read_file(self, path: str, located: bool) -> bytes:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except IsADirectoryError:
            raise ConfigError(
                f'pread() "{path}" failed {strerror(errno.EISDIR)}', level="crit"
            ) from None
        except OSError as e:
            msg = f'open() "{path}" failed {strerror(e.errno or errno.EIO)}'
            raise (self.error(msg) if located else ConfigError(msg)) from None
        if path not in self._seen:
            self._seen.add(path)
            self.files.append((path, data))
        return data

    def parse_file(self, path: str, ctx: Ctx, located: bool = True) -> None:
        data = self.read_file(path, located)
        saved = self.lex
        self.lex = lexer.Lexer(data, path)
        try:
            self.parse(ctx, block=False)
        finally:
            self.lex = saved

    def parse_param(self, text: str, ctx: Ctx) -> None:
        saved = self.lex
        self.lex = lexer.Lexer(text.encode("utf-8", "surrogateescape"), None)
        try:
            self.parse(ctx, block=False, param=True)
        finally:
            self.lex = saved

    def include(self, pattern: str, ctx: Ctx) -> None:
        # nginx's open() and glob() see a C string, which ends at the first NUL (found by
        # tests/fuzz: open() raised ValueError on it)
        path = self.conf_path(pattern.split("\0", 1)[0])
        if not any(c in path for c in "*?["):
            self.parse_file(path, ctx)
            return
        names = glob.glob(path)  # sorted below: nginx's glob(3) sorts bytewise, C locale
        for name in sorted(names, key=lambda s: s.encode("utf-8", "surrogateescape")):
            self.parse_file(name, ctx)

    # -- the parse loop

    def parse(self, ctx: Ctx, block: bool, param: bool = False) -> None:
        assert self.lex is not None
        while True:
            kind, words = self.lex.read()
            if kind == lexer.BLOCK_DONE:
                if not block:
                    raise self.error('unexpected "}"')
                return
            if kind == lexer.FILE_DONE:
                if block:
                    raise self.error('unexpected end of file, expecting "}"')
                return
            if kind == lexer.BLOCK_START and param:
                raise self.error("block directives are not supported in -g option")
            self.dispatch(ctx, words, kind == lexer.BLOCK_START)

    def dispatch(self, ctx: Ctx, words: list[str], is_block: bool) -> None:
        name, args = words[0], words[1:]
        if ctx.kind == FOREIGN and name != "include":
            # http{}/stream{} directives are not fastmail's to judge, only their syntax
            if is_block:
                self.parse_block(ctx)
            return
        candidates = self.registry.by_name.get(name)
        if not candidates:
            raise self.error(f'unknown directive "{name}"')
        d = next((c for c in candidates if c.contexts & ctx.kind), None)
        if d is None:
            raise self.error(f'"{name}" directive is not allowed here')
        if not d.args & BLOCK and is_block:
            raise self.error(f'directive "{name}" is not terminated by ";"')
        if d.args & BLOCK and not is_block:
            raise self.error(f'directive "{name}" has no opening "{{"')
        if not arity_ok(d, len(args)):
            raise self.error(f'invalid number of arguments in "{name}" directive')
        d.handler(self, ctx, d, args)

    def parse_block(self, ctx: Ctx) -> None:
        self.parse(ctx, block=True)


def arity_ok(d: Directive, n: int) -> bool:
    if d.args & FLAG:
        return n == 1
    if d.args & ONE_MORE:
        return n >= 1
    if d.args & TWO_MORE:
        return n >= 2
    if n + 1 > MAX_ARGS:
        return False
    return bool(d.args & (1 << n))


def include_handler(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
    ld.include(args[0], ctx)


from fastmail.conf.table import TAKE1  # noqa: E402

INCLUDE = Directive(
    "include",
    ANY,
    TAKE1,
    include_handler,
    syntax="file | mask",
    merge=False,
    doc="Reads another file (or every file a glob matches, sorted) in the current context; "
    "relative paths are resolved against the main config file's directory.",
    module="core",
)
