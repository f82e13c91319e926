"""The machine micro-benchmarks stay runnable: every recorded session reaches its auth
request through a fresh machine (bench.machines.drive raises otherwise)."""

from __future__ import annotations

import importlib

import pytest

from bench import machines


@pytest.mark.parametrize("proto", ["imap", "pop3", "smtp"])
def test_recorded_sessions_reach_the_auth_request(proto: str) -> None:
    mod = importlib.import_module(f"bench.parse_{proto}")
    assert mod.SESSIONS
    for rec in mod.SESSIONS:
        machines.drive(mod.make(rec), rec)
