"""Process runners and helpers for tests with real parts (Dovecot, Postfix, HAProxy, nginx).

Each runner owns a temp dir (0755, so the daemons' own users can enter it), starts its daemon,
waits for the protocol greeting, and stops it for sure. A missing Debian package raises
`MissingPackage`, which tests/conftest.py turns into a skip naming the package.
"""

from __future__ import annotations


class MissingPackage(RuntimeError):
    """The program a fixture needs is not installed; `package` is the Debian package to add."""

    def __init__(self, program: str, package: str) -> None:
        super().__init__(f"{program} not found: install the Debian package {package}")
        self.program = program
        self.package = package
