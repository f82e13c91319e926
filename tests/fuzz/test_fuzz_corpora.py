"""The fuzz targets' committed corpora and saved crashes, replayed through their harnesses on
the normal build: every invariant of tests/fuzz/targets holds on each input (a crash that
was fixed stays fixed; a harness that no longer runs fails here before ./scripts/fuzz)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from fuzz.targets import TARGETS

HERE = Path(__file__).parent


def inputs(target: str) -> list[Path]:
    found = sorted((HERE / "corpus" / target).glob("*"))
    return found + sorted((HERE / "crashes").glob(f"{target}-*"))


@pytest.mark.parametrize("target", TARGETS)
def test_every_saved_input_keeps_the_targets_invariants(target: str) -> None:
    mod = importlib.import_module(f"fuzz.targets.{target}")
    paths = inputs(target)
    assert paths, f"no corpus for {target}: run ./scripts/fuzz --seed --minimize {target}"
    for path in paths:
        try:
            mod.test_one_input(path.read_bytes())
        except AssertionError as e:
            raise AssertionError(f"{path.relative_to(HERE)}: {e}") from None


@pytest.mark.parametrize("target", TARGETS)
def test_seeds_come_from_the_suites_transcripts(target: str) -> None:
    mod = importlib.import_module(f"fuzz.targets.{target}")
    seeds = mod.seeds()
    assert len(seeds) >= 10, len(seeds)
    for seed in seeds[:50]:
        mod.test_one_input(seed)
