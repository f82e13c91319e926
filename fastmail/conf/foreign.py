"""The http{} and stream{} blocks of a shared nginx.conf: read for syntax, never served.

Owns the two block directives. Their contents are parsed by the same lexer and parser as the
rest (quotes, nested blocks, `include` followed with its glob), in the FOREIGN context where no
directive but `include` is looked up: fastmail does not know http's or stream's directives, so it
judges their syntax only. load() turns the recorded blocks into one [notice] line.
"""

from __future__ import annotations

from fastmail.conf.parser import Ctx, Loader
from fastmail.conf.table import BLOCK, FOREIGN, MAIN, NOARGS, Directive


def foreign_block(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
    seen: list[tuple[str, str, int]] = ld.state.setdefault("foreign", [])
    if any(name == d.name for name, _, _ in seen):
        raise ld.error(f'"{d.name}" directive is duplicate')
    ld.state["modules_used"] = True  # a later load_module is "specified too late", as in nginx
    where = (ld.file, ld.line)
    ld.parse_block(Ctx(kind=FOREIGN, file=where[0], line=where[1]))
    seen.append((d.name, *where))  # noticed once read whole: an error inside says enough


def notice(ld: Loader) -> str | None:
    """The one notice for the whole run, located at the first such block."""
    seen: list[tuple[str, str, int]] = ld.state.get("foreign", [])
    if not seen:
        return None
    names = " and ".join(f'"{name}"' for name, _, _ in seen)
    blocks = "blocks are" if len(seen) > 1 else "block is"
    _, file, line = seen[0]
    return f"{names} {blocks} read for syntax only and not served in {file}:{line}"


DIRECTIVES: tuple[Directive, ...] = tuple(
    Directive(
        name,
        MAIN,
        BLOCK | NOARGS,
        foreign_block,
        syntax="{ ... }",
        merge=False,
        doc=f"Read for syntax only and not served (fastmail is a mail proxy): the {name}{{}} "
        "block of an nginx.conf shared with mail{} may stay. Its files are included and "
        "tokenized as nginx does; its directives are not checked (one [notice] says so).",
        module=name,
    )
    for name in ("http", "stream")
)
