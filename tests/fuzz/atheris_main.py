"""One fuzz target under atheris (libFuzzer): `python atheris_main.py TARGET [libFuzzer args]`.

scripts/fuzz runs this with the instrumented build on PYTHONPATH and atheris' sanitizer
runtime preloaded; `--write-seeds DIR` writes the target's seed corpus instead.
fastmail's Python modules (conf/, auth_http.py, debuglog.py) are instrumented for coverage
as they are imported; the Cython extensions carry libFuzzer's counters from their build.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the fuzz package


def main() -> None:
    name = sys.argv.pop(1)
    if len(sys.argv) == 3 and sys.argv[1] == "--write-seeds":
        mod = importlib.import_module(f"fuzz.targets.{name}")
        out = Path(sys.argv[2])
        out.mkdir(parents=True, exist_ok=True)
        for seed in mod.seeds():
            (out / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
        return
    import atheris

    with atheris.instrument_imports(include=["fastmail"]):
        mod = importlib.import_module(f"fuzz.targets.{name}")
    if os.environ.get("FASTMAIL_FUZZ_CHECK_BUILD"):
        import fastmail._core

        assert os.environ["FASTMAIL_FUZZ_CHECK_BUILD"] in fastmail._core.__file__
    # libFuzzer's -merge (and -fork) run argv[0] again through sh: this interpreter, this
    # script and the target, with the environment as it is
    sys.argv[0] = f"{sys.executable} {Path(__file__).resolve()} {name}"
    atheris.Setup(sys.argv, mod.test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
