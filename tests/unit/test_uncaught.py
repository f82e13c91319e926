"""Uncaught exceptions become one `[alert]` line each in the error log (fastmail.uncaught):
from the process's top level, a thread, a callback from C (unraisable) and the event loop."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

from fastmail._poll import Loop
from fastmail.conf.model import LogTarget
from fastmail.log import ErrorLog
from fastmail.uncaught import describe, loop_handler

LINE = re.compile(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[alert\] \d+#\d+: ")


def outer() -> None:
    inner()


def inner() -> None:
    raise ValueError("bad\nvalue")


def test_describe_is_one_line_with_the_innermost_frames_first() -> None:
    try:
        outer()
    except ValueError as e:
        text = describe(e)
    assert "\n" not in text
    assert re.fullmatch(
        r"ValueError: bad value \(at test_uncaught\.py:\d+ inner < test_uncaught\.py:\d+ outer"
        r" < test_uncaught\.py:\d+ test_describe_is_one_line_with_the_innermost_frames_first\)",
        text,
    ), text


def test_top_level_thread_and_unraisable_exceptions_reach_the_log(tmp_path: Path) -> None:
    log = tmp_path / "error.log"
    script = textwrap.dedent(f"""
        import threading
        from fastmail.conf.model import LogTarget
        from fastmail.log import ErrorLog
        from fastmail.uncaught import install

        install(ErrorLog([LogTarget(kind="file", path={str(log)!r}, level=4)]))

        class Leaky:
            def __del__(self):
                raise KeyError("in __del__")

        Leaky()  # unraisable: nothing can catch it
        t = threading.Thread(target=lambda: 1 / 0, name="helper")
        t.start()
        t.join()
        raise RuntimeError("at the top")
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert run.returncode == 1
    assert run.stderr == ""  # nothing for a daemon to lose
    lines = log.read_text().splitlines()
    assert len(lines) == 3, lines
    assert all(LINE.match(x) for x in lines), lines
    assert "Exception ignored in: <function Leaky.__del__" in lines[0]
    assert "KeyError: 'in __del__' (at <string>:" in lines[0]
    assert "unhandled exception in thread helper: ZeroDivisionError: division by zero" in lines[1]
    assert "unhandled exception: RuntimeError: at the top (at <string>:" in lines[2]


class Session:
    id = 7  # a session's connection number, as ClientSession has


def test_the_loop_handler_names_the_connection(tmp_path: Path) -> None:
    path = tmp_path / "error.log"
    log = ErrorLog([LogTarget(kind="file", path=str(path), level=4)])
    loop = Loop()  # the worker's own loop
    try:
        loop.set_exception_handler(loop_handler(log))

        def boom() -> None:
            raise OSError(5, "Input/output error")

        loop.call_soon(boom)
        loop.call_soon(loop.stop)
        loop.run_forever()
        loop.call_exception_handler(
            {"message": "fastmail relay callback failed", "exception": KeyError("k"),
             "protocol": Session()}
        )  # fmt: skip
    finally:
        loop.close()
        log.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and all(LINE.match(x) for x in lines), lines
    assert re.search(
        r"unhandled exception in .*boom.*: OSError: \[Errno 5\] Input/output error", lines[0]
    )
    assert lines[1].endswith(": *7 fastmail relay callback failed: KeyError: 'k'")
