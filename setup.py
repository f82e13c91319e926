"""Build the Cython core: one extension per fastmail/_*.pyx.

FASTMAIL_DEBUG=1 gives the debug build: bounds checks, line tracing, the
FASTMAIL_DEBUG macro (see fastmail/_debug.h) and debug symbols, as uvloop and asyncpg
do; the release build is stripped, unless FASTMAIL_SYMBOLS=1 (a release build whose
profiles name Cython's functions: perf, callgrind).

FASTMAIL_FUZZ=1 gives the fuzz build (scripts/fuzz): the release code (no bounds checks:
the fuzzer must see what ships) compiled by clang with libFuzzer's coverage counters,
AddressSanitizer and UndefinedBehaviorSanitizer. Its C goes to build/cython-fuzz and
scripts/fuzz builds it outside the source tree (build_ext --build-lib), so it never
replaces the editable install's extensions; its runtime is atheris' asan_with_fuzzer.so,
LD_PRELOADed by scripts/fuzz.
"""

import glob
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("FASTMAIL_DEBUG", "") not in ("", "0")
SYMBOLS = os.environ.get("FASTMAIL_SYMBOLS", "") not in ("", "0")
FUZZ = os.environ.get("FASTMAIL_FUZZ", "") not in ("", "0")
if DEBUG and FUZZ:
    raise SystemExit("setup.py: FASTMAIL_DEBUG and FASTMAIL_FUZZ are separate builds")
SANITIZE = "-fsanitize=fuzzer-no-link,address,undefined"
if FUZZ:
    # setuptools takes the compiler and the shared-object linker from these
    os.environ["CC"] = os.environ.get("FASTMAIL_FUZZ_CC", "clang")
    os.environ["LDSHARED"] = os.environ["CC"] + " -shared"

macros = [("FASTMAIL_DEBUG", "1" if DEBUG else "0")]
directives = {"language_level": "3", "embedsignature": True}
if DEBUG:
    macros += [("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")]
    directives.update(boundscheck=True, wraparound=True, initializedcheck=True, linetrace=True)
else:
    directives.update(boundscheck=False, wraparound=False, initializedcheck=False)

# fastmail's own OpenSSL binding links the system libssl/libcrypto (a manylinux wheel bundles
# them through auditwheel). _tlsctx calls nginx 1.22.1's DH functions, deprecated in OpenSSL 3.
OPENSSL = {"libraries": ["ssl", "crypto"]}
LINK = {
    "_tls": OPENSSL,
    "_tlsctx": {**OPENSSL, "extra_compile_args": ["-Wno-deprecated-declarations"]},
}


def compile_args() -> list[str]:
    if DEBUG:
        return ["-O0", "-g"]
    if FUZZ:
        # -O1 and frame pointers: sanitizer stacks that read; a UB report aborts (a crash)
        return ["-O1", "-g", "-fno-omit-frame-pointer", SANITIZE, "-fno-sanitize-recover=all"]
    return ["-O2", "-g" if SYMBOLS else "-g0"]


def extension(path: str) -> Extension:
    name = os.path.basename(path)[:-4]
    extra = LINK.get(name, {})
    return Extension(
        "fastmail." + name,
        [path],
        include_dirs=["fastmail"],  # _debug.h, for the C files under build/
        define_macros=macros,
        libraries=extra.get("libraries", []),
        # Release builds: Python's CFLAGS carry -g, which -g0 undoes, and the linker strips
        # the symbol table (the dynamic symbols Python imports stay): _relay 1.9 MB -> 0.3 MB.
        extra_compile_args=compile_args() + extra.get("extra_compile_args", []),
        extra_link_args=[] if DEBUG or SYMBOLS or FUZZ else ["-s"],
    )


extensions = [extension(path) for path in sorted(glob.glob("fastmail/_*.pyx"))]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=directives,
        annotate=DEBUG,
        compile_time_env={"DEBUG": DEBUG},
        # Cython's up-to-date check looks at timestamps, not at the variant: each variant
        # generates its C in a directory of its own, so a release build never reuses the
        # debug build's C (bounds checks, line tracing) or the other way round.
        build_dir="build/cython-debug"
        if DEBUG
        else "build/cython-fuzz"
        if FUZZ
        else "build/cython-release",
    ),
    # nor does setuptools' check (the in-place .so may be the other variant's); the fuzz
    # build has a build-lib of its own, where timestamps tell the truth
    options={"build_ext": {"force": not FUZZ}},
)
