"""nginx's config tokenizer (ngx_conf_read_token), byte for byte.

Owns turning config bytes into statements: words, the terminator and the line numbers nginx
reports. It knows nothing about directives or files; `parser.py` drives it one statement at a time
so that errors surface in the same order as in nginx's one-pass parse.
"""

from __future__ import annotations

from fastmail.conf.errors import ConfigError

# ngx_conf_read_token results
OK = 0  # statement ended by ";"
BLOCK_START = 1  # statement ended by "{"
BLOCK_DONE = 2  # "}"
FILE_DONE = 3  # end of input

# NGX_CONF_BUFFER: a word plus the byte that ends it must fit in the read buffer
CONF_BUFFER = 4096

_WS = b" \t\r\n"
_UNESCAPE = {
    ord('"'): b'"',
    ord("'"): b"'",
    ord("\\"): b"\\",
    ord("t"): b"\t",
    ord("r"): b"\r",
    ord("n"): b"\n",
}


def decode(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def unescape(raw: bytes) -> bytes:
    """nginx unescapes only \\" \\' \\\\ \\t \\r \\n; any other backslash stays with its byte."""
    if b"\\" not in raw:
        return raw
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c == 0x5C and i + 1 < n and raw[i + 1] in _UNESCAPE:
            out += _UNESCAPE[raw[i + 1]]
            i += 2
            continue
        out.append(c)
        i += 1
    return bytes(out)


class Lexer:
    """Yields one statement per `read()` call: (kind, words). `line` is nginx's line counter.

    `file` is None for the -g string, which changes the end-of-input wording.
    """

    def __init__(self, data: bytes, file: str | None) -> None:
        self.data = data
        self.pos = 0
        self.file = file
        self.line = 1

    def error(self, message: str, line: int | None = None) -> ConfigError:
        if self.file is None:
            return ConfigError(message, command_line=True)
        return ConfigError(message, self.file, self.line if line is None else line)

    def read(self) -> tuple[int, list[str]]:
        data, n = self.data, len(self.data)
        args: list[str] = []
        need_space = last_space = True
        need_space = False
        sharp_comment = quoted = variable = False
        s_quoted = d_quoted = False
        start = 0
        start_line = self.line
        pos = self.pos
        while True:
            if pos >= n:
                self.pos = pos
                if args or not last_space:
                    if d_quoted or s_quoted:
                        if pos - start >= CONF_BUFFER:
                            q = '"' if d_quoted else "'"
                            raise self.error(
                                f'too long parameter, probably missing terminating "{q}" character',
                                start_line,
                            )
                    elif not last_space and pos - start >= CONF_BUFFER:
                        raise self._too_long(start, start_line)
                    if self.file is None:
                        raise self.error('unexpected end of parameter, expecting ";"')
                    raise self.error('unexpected end of file, expecting ";" or "}"')
                return FILE_DONE, args
            ch = data[pos]
            pos += 1
            if ch == 0x0A:
                self.line += 1
                sharp_comment = False
            if sharp_comment:
                continue
            if quoted:
                quoted = False
                continue
            if need_space:
                if ch in _WS:
                    last_space = True
                    need_space = False
                    continue
                if ch == 0x3B:  # ;
                    self.pos = pos
                    return OK, args
                if ch == 0x7B:  # {
                    self.pos = pos
                    return BLOCK_START, args
                if ch == 0x29:  # ) -- left over from http's if (...)
                    last_space = True
                    need_space = False
                else:
                    self.pos = pos
                    raise self.error(f'unexpected "{chr(ch) if ch < 128 else decode(bytes([ch]))}"')
            if last_space:
                start = pos - 1
                start_line = self.line
                if ch in _WS:
                    continue
                if ch == 0x3B or ch == 0x7B:
                    if not args:
                        self.pos = pos
                        raise self.error(f'unexpected "{chr(ch)}"')
                    self.pos = pos
                    return (BLOCK_START if ch == 0x7B else OK), args
                if ch == 0x7D:  # }
                    self.pos = pos
                    if args:
                        raise self.error('unexpected "}"')
                    return BLOCK_DONE, args
                if ch == 0x23:  # #
                    sharp_comment = True
                    continue
                last_space = False
                if ch == 0x5C:
                    quoted = True
                elif ch == 0x22:
                    start += 1
                    d_quoted = True
                elif ch == 0x27:
                    start += 1
                    s_quoted = True
                elif ch == 0x24:
                    variable = True
                continue
            # inside a word
            if ch == 0x7B and variable:
                continue
            variable = False
            if ch == 0x5C:
                quoted = True
                continue
            if ch == 0x24:
                variable = True
                continue
            found = False
            if d_quoted:
                if ch == 0x22:
                    d_quoted = False
                    need_space = found = True
            elif s_quoted:
                if ch == 0x27:
                    s_quoted = False
                    need_space = found = True
            elif ch in _WS or ch == 0x3B or ch == 0x7B:
                last_space = found = True
            if not found:
                if pos - start >= CONF_BUFFER:
                    if d_quoted or s_quoted:
                        q = '"' if d_quoted else "'"
                        raise self.error(
                            f'too long parameter, probably missing terminating "{q}" character',
                            start_line,
                        )
                    raise self._too_long(start, start_line)
                continue
            if pos - start > CONF_BUFFER:
                raise self._too_long(start, start_line)
            args.append(decode(unescape(data[start : pos - 1])))
            if ch == 0x3B:
                self.pos = pos
                return OK, args
            if ch == 0x7B:
                self.pos = pos
                return BLOCK_START, args

    def _too_long(self, start: int, line: int) -> ConfigError:
        head = decode(self.data[start : start + 10])
        return self.error(f'too long parameter "{head}..." started', line)
