"""Build the Cython core: one extension per fastmail/_*.pyx.

FASTMAIL_DEBUG=1 gives the debug build: bounds checks, line tracing, the
FASTMAIL_DEBUG macro (see fastmail/_debug.h) and debug symbols, as uvloop and asyncpg
do; the release build is stripped, unless FASTMAIL_SYMBOLS=1 (a release build whose
profiles name Cython's functions: perf, callgrind).
"""

import glob
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("FASTMAIL_DEBUG", "") not in ("", "0")
SYMBOLS = os.environ.get("FASTMAIL_SYMBOLS", "") not in ("", "0")

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
        extra_compile_args=(["-O0", "-g"] if DEBUG else ["-O2", "-g" if SYMBOLS else "-g0"])
        + extra.get("extra_compile_args", []),
        extra_link_args=[] if DEBUG or SYMBOLS else ["-s"],
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
        build_dir="build/cython-debug" if DEBUG else "build/cython-release",
    ),
    # nor does setuptools' check (the in-place .so may be the other variant's)
    options={"build_ext": {"force": True}},
)
