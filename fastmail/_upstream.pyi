"""Stubs for fastmail._upstream (the backend side of a session before the relay)."""

from typing_extensions import disjoint_base

from fastmail._relay import Relay

@disjoint_base
class Upstream(Relay): ...
