"""Docs, comments and tests cite only what a reader of this repository can open: its own files
(docs/differences.md, docs/internals.md, a test...), nginx's source by file and function, RFC
sections. Never the notes the project was written from (a spec folder, design or recipe notes,
their section and quirk numbers, paths on the machine they lived on)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().relative_to(ROOT).as_posix()

# Third-party files kept verbatim (their headers cite their own sources); the fuzzers' inputs
# (whatever bytes they mutated into).
VERBATIM = ("tests/data/", "tests/fuzz/corpus/", "tests/fuzz/crashes/")

PATTERNS = [
    (re.compile(r"/work/"), "a path on the development machine"),
    (re.compile(r"\bshared/"), "the shared notes folder"),
    (re.compile(r"\bspec(/|\s+README\b|'s\b|\s+§|\s+[PQ]\d)", re.IGNORECASE), "the spec notes"),
    (re.compile(r"\bthe spec\b", re.IGNORECASE), "the spec notes"),
    (re.compile(r"(\(|#\s*|\bnginx |\bquirks? )[PQ]\d{1,2}\b"), "a quirk number of the notes"),
]
MD_NAME = re.compile(r"\b([\w-]+\.md)\b")
SECTION = re.compile(r"§")
RFC_BEFORE = re.compile(r"\bRFC ?\d+,? ?$")


def tracked_files() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the tracked files are unknown")
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60
    ).stdout
    return [p for p in out.decode().split("\0") if p]


def citations(path: str, text: str, md_names: set[str]) -> list[str]:
    found = []
    for n, line in enumerate(text.splitlines(), 1):
        where = f"{path}:{n}: {line.strip()}"
        for pattern, what in PATTERNS:
            if pattern.search(line):
                found.append(f"{where}  ({what})")
        for m in MD_NAME.finditer(line):
            if m[1] not in md_names:
                found.append(f"{where}  ({m[1]} is not a file of this repository)")
        for m in SECTION.finditer(line):
            if not RFC_BEFORE.search(line[: m.start()]):
                found.append(f"{where}  (a section sign not after an RFC number)")
    return found


def test_no_citation_of_files_outside_the_repository() -> None:
    files = tracked_files()
    md_names = {Path(p).name for p in files if p.endswith(".md")}
    found: list[str] = []
    for path in files:
        if path == HERE or path.startswith(VERBATIM):
            continue
        try:
            text = (ROOT / path).read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError):
            continue  # images; a file deleted but not yet committed
        found += citations(path, text, md_names)
    assert not found, "cite the repository, nginx's source or an RFC:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "line",
    [
        "# see /work/shared/spec/pop3.md",
        "(spec README)",
        "as the spec's transcripts show",
        "replies (spec §4.3)",
        "imap.md §15",
        "as design.md measured",
        "the listen plan (§4.4)",
        "{0} takes one byte (Q4)",
        "# nginx Q12",
    ],
)
def test_each_kind_of_citation_is_caught(line: str) -> None:
    assert citations("x.py", line, {"README.md", "differences.md"})


@pytest.mark.parametrize(
    "line",
    [
        "RFC 5804 §2.2: the capabilities again",
        "see docs/differences.md and README.md",
        "ngx_mail_proxy_imap_handler sends them",
        "spec: dict[str, Any]",
    ],
)
def test_what_may_be_cited_passes(line: str) -> None:
    assert not citations("x.py", line, {"README.md", "differences.md"})
