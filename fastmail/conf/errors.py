"""Config errors with nginx's wording and location suffix.

Owns ConfigError, the one exception the config layer raises. str(err) is exactly the text nginx
prints after `nginx: [emerg] ` (fastmail prints `fastmail: [emerg] `). Nothing here reads files.
"""

from __future__ import annotations

# NGX_MAX_CONF_ERRSTR: nginx cuts a config message before appending the location.
MAX_ERRSTR = 1024


class ConfigError(Exception):
    """A config that nginx would refuse. `level` is nginx's log level name ("emerg", "crit")."""

    def __init__(
        self,
        message: str,
        file: str | None = None,
        line: int | None = None,
        *,
        command_line: bool = False,
        level: str = "emerg",
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.command_line = command_line
        self.level = level
        # warnings raised before the error; the CLI prints them first, as nginx does
        self.warnings: list[str] = []
        self.notices: list[str] = []  # likewise ([notice]: http{} read, not served)
        super().__init__(self.text)

    @property
    def text(self) -> str:
        msg = self.message
        if len(msg.encode("utf-8", "surrogateescape")) > MAX_ERRSTR:
            msg = msg.encode("utf-8", "surrogateescape")[:MAX_ERRSTR].decode(
                "utf-8", "surrogateescape"
            )
        if self.command_line:
            return f"{msg} in command line"
        if self.file is not None:
            return f"{msg} in {self.file}:{self.line}"
        return msg

    def __str__(self) -> str:
        return self.text


def strerror(errno_: int) -> str:
    """nginx's `(ERRNO: text)` suffix for a system error."""
    import os

    return f"({errno_}: {os.strerror(errno_)})"
