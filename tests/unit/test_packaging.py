"""What the installed distribution says about itself: one version everywhere, the license."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import fastmail

ROOT = Path(__file__).resolve().parents[2]


def test_fastmail_v_and_the_package_metadata_agree() -> None:
    """fastmail/__init__.py is the one version source: `fastmail -v` and the installed
    metadata (what the wheel's METADATA says) read it; pyproject.toml has no version."""
    r = subprocess.run(
        [sys.executable, "-m", "fastmail", "-v"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    installed = metadata.version("fastmail")
    assert r.stderr == f"fastmail version: fastmail/{installed}\n"
    assert installed == fastmail.__version__
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]


def test_license_metadata_is_the_spdx_expression() -> None:
    meta = metadata.metadata("fastmail")
    assert meta["License-Expression"] == "BSD-2-Clause"
    assert "BSD 2-Clause License" in (ROOT / "LICENSE").read_text()
