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


def test_tls_micro_runs_and_resumes() -> None:
    """bench.tls_micro stays runnable: tiny budgets; its handshakes assert resumption."""
    from bench import tls_micro

    res = tls_micro.run(0.005, "ecdsa")
    for kind in ("fastmail", "python"):
        assert res[kind]["full_us"] > 0 and res[kind]["read_mb_per_cpu_s"] > 0
    assert res["fastmail"]["resumed_shared_cache_tls12_us"] > 0
