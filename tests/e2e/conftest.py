"""The `proxy` fixture: the same end-to-end test runs against fastmail and against Debian's
nginx (the reference), so a test that nginx fails checks the wrong thing.

`proxy(mail_body, greetings=[(port, b"* OK")])` starts the proxy under test with that `mail {}`
body and returns a `Proxy`: its error log, and the serving process's fds and TCP connections
for leak checks (support/fastmail.py, with the helpers that build mail configs).
`master(kind, mail_body, ...)` is the same pair as real masters with workers, for the process
model (support/masters.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import pytest

from support import MissingPackage
from support.fastmail import Fastmail, Proxy
from support.masters import Master, subreaper
from support.nginx import Nginx

PROXIES = ["fastmail", "nginx"]


@pytest.fixture(params=PROXIES)
def proxy(request: pytest.FixtureRequest) -> Iterator[Callable[..., Proxy]]:
    """`proxy(mail_body, greetings=[(port, prefix)], main="", files={}, worker_connections=1024)`
    -> a running Proxy; `files` (name -> bytes) are written next to its config first (relative
    paths in a config are under the config's directory)."""
    kind: str = request.param
    made: list[Fastmail | Nginx] = []

    def start(
        mail: str,
        greetings: Iterable[tuple[int, bytes]] = (),
        main: str = "",
        files: Mapping[str, bytes] | None = None,
        worker_connections: int = 1024,
    ) -> Proxy:
        runner: Fastmail | Nginx
        if kind == "nginx":
            try:
                runner = Nginx(
                    mail, list(greetings), main=main, worker_connections=worker_connections
                )
            except MissingPackage as exc:
                pytest.skip(f"nginx reference unavailable: {exc}")
        else:
            runner = Fastmail(
                mail, list(greetings), main=main, worker_connections=worker_connections
            )
        made.append(runner)
        for name, data in (files or {}).items():
            (runner.dir / name).write_bytes(data)
        runner.start()
        return Proxy(runner, kind)

    yield start
    for r in made:
        r.stop()


@pytest.fixture
def master() -> Iterator[Callable[..., Master]]:
    """`master(kind, mail_body, daemon=True, master=True, workers=2, main="")` -> a Master
    (fastmail or nginx, support/masters.py), not started; every process it had is killed
    afterwards. The test process reaps orphans meanwhile: daemons are nobody's children."""
    made: list[Master] = []

    def make(kind: str, mail: str, **kw: Any) -> Master:
        try:
            m = Master(kind, mail, **kw)
        except MissingPackage as exc:
            pytest.skip(f"nginx reference unavailable: {exc}")
        made.append(m)
        return m

    with subreaper():
        try:
            yield make
        finally:
            for m in made:
                m.stop()
