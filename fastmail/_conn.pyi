"""Stubs for fastmail._conn (sockets and listeners)."""

import socket

from typing_extensions import disjoint_base

from fastmail._poll import Loop, Watcher

class Acceptor(Watcher): ...

@disjoint_base
class Listener(Watcher):
    data: object
    @property
    def fd(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    def __init__(
        self, loop: Loop, sock: socket.socket, acceptor: Acceptor, data: object = None
    ) -> None: ...
    def close(self) -> None: ...
