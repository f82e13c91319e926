"""Coverage-guided fuzz harnesses (atheris), one module per target; scripts/fuzz runs them.

Each module defines `test_one_input(data: bytes) -> None` (raises on a broken invariant; the
invariants are listed at the top of the module) and `seeds() -> list[bytes]` (its seed
corpus, taken from the test suite's transcripts). `TARGETS` names them in run order.
"""

TARGETS = ("imap", "pop3", "smtp", "sieve", "login", "proxy", "authanswer", "conf", "debuglog")
