"""Free loopback ports for fixtures: bind to port 0, remember what was handed out.

A port found free can still be taken before the daemon binds it; runners that see EADDRINUSE
ask again (`retry_on_port_clash`). Never touches anything but loopback.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
_given: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now, and not handed out before in this process."""
    for _ in range(100):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in _given:
            _given.add(port)
            return port
    raise RuntimeError("no free port found")


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    return [free_port(host) for _ in range(n)]


class PortClash(RuntimeError):
    """A daemon could not bind one of its ports (someone took it after free_port)."""


def retry_on_port_clash(start: Callable[[], T], attempts: int = 3) -> T:
    """Call `start` (which picks fresh ports each time) until it does not clash."""
    for i in range(attempts):
        try:
            return start()
        except PortClash:
            if i == attempts - 1:
                raise
    raise AssertionError("unreachable")
