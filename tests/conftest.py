"""Shared fixtures for tests with real parts: TLS certs, Dovecot, Postfix, HAProxy, nginx, the
reference auth_http server and the fake backend (fastmail.testing), free ports, raw clients.

Costly daemons are session-scoped; every fixture stops what it started and removes its temp
dir. A missing Debian package skips the test with the package's name.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fastmail.testing import LoopThread
from fastmail.testing.authd import AuthServer, UserDB
from fastmail.testing.backend import BackendServer
from support import MissingPackage
from support.certs import TestCerts, make_certs
from support.clients import LineClient
from support.dovecot import Dovecot, managesieve_installed
from support.fastmail import running_authd
from support.haproxy import HAProxy
from support.nginx import Nginx
from support.ports import free_port as _free_port
from support.postfix import Postfix

FAKE_USERS = {"alice": "secret", "bob": "pw"}


def _needs(factory: Callable[[], Any]) -> Any:
    try:
        return factory()
    except MissingPackage as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def certs() -> Iterator[TestCerts]:
    d = tempfile.mkdtemp(prefix="fastmail-certs-")
    try:
        yield make_certs(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def dovecot(certs: TestCerts) -> Iterator[Dovecot]:
    """Dovecot with users alice/secret, bob/pw, carol/carol-pass; alice's INBOX holds
    support.dovecot.ALICE_MESSAGES (leave it as it is: other tests read it). ManageSieve runs
    too when dovecot-managesieved is installed (`sieve_port`, else 0): its login process
    starts only when a client comes."""
    d: Dovecot = _needs(lambda: Dovecot(certs=certs, sieve=managesieve_installed()))
    with d:
        yield d


@pytest.fixture(scope="session")
def postfix(dovecot: Dovecot, certs: TestCerts) -> Iterator[Postfix]:
    """Postfix delivering {alice,bob,carol}@example.test into Dovecot's Maildirs, SASL through
    Dovecot. Send test mail to bob or carol with a unique subject, then `wait_message`."""
    p: Postfix = _needs(
        lambda: Postfix(mail_dir=dovecot.mail_dir, sasl_port=dovecot.auth_port, certs=certs)
    )
    with p:
        yield p


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    """A uvloop loop in a thread, for the in-process services."""
    with LoopThread() as lt:
        yield lt


@pytest.fixture
def fake_backend(loop_thread: LoopThread) -> Iterator[BackendServer]:
    """fastmail.testing.backend with users alice/secret and bob/pw on one IMAP, one POP3 and
    one SMTP port: `fake_backend.port("imap")`; `.sessions[-1].received` is what it got."""
    be = BackendServer(users=dict(FAKE_USERS))
    for proto in ("imap", "pop3", "smtp"):
        loop_thread.run(be.listen(proto))
    try:
        yield be
    finally:
        loop_thread.run(be.stop())


@pytest.fixture
def authd(loop_thread: LoopThread, tmp_path: Path) -> Iterator[AuthServer]:
    """The reference auth_http server on a fresh SQLite DB (no users: add them through
    `authd.db.add_user`). `authd.url` goes after `auth_http`; `authd.requests` is its log."""
    with running_authd(loop_thread, UserDB(tmp_path / "users.sqlite"), 1) as server:
        yield server


@pytest.fixture
def authd0(loop_thread: LoopThread, tmp_path: Path) -> Iterator[AuthServer]:
    """authd answering failures without Auth-Wait: the proxy closes."""
    with running_authd(loop_thread, UserDB(tmp_path / "users.sqlite"), 0) as server:
        yield server


@pytest.fixture
def free_port() -> Callable[[], int]:
    return _free_port


@pytest.fixture
def line_client() -> Iterator[Callable[..., LineClient]]:
    """`line_client(port)` connects a LineClient to 127.0.0.1:port; all closed afterwards."""
    made: list[LineClient] = []

    def connect(port: int, host: str = "127.0.0.1", **kw: Any) -> LineClient:
        c = LineClient(host, port, **kw)
        made.append(c)
        return c

    yield connect
    for c in made:
        c.close()


@pytest.fixture
def haproxy() -> Iterator[Callable[..., HAProxy]]:
    """`haproxy([(host, port), ...], send_proxy="send-proxy-v2", check=False)` -> running HAProxy."""
    made: list[HAProxy] = []

    def start(servers: list[tuple[str, int]], **kw: Any) -> HAProxy:
        h: HAProxy = _needs(lambda: HAProxy(servers, **kw))
        made.append(h)
        return h.start()

    yield start
    for h in made:
        h.stop()


@pytest.fixture
def nginx() -> Iterator[Callable[..., Nginx]]:
    """`nginx(mail_block_body, greetings=[(port, b"* OK")])` -> running Debian nginx."""
    made: list[Nginx] = []

    def start(mail: str, greetings: list[tuple[int, bytes]] = (), **kw: Any) -> Nginx:  # type: ignore[assignment]
        n: Nginx = _needs(lambda: Nginx(mail, greetings, **kw))
        made.append(n)
        return n.start()

    yield start
    for n in made:
        n.stop()


@pytest.fixture(autouse=True)
def _no_live_ssl() -> Iterator[None]:
    """Debug build: every SSL object fastmail's TLS layer made is freed when a test ends."""
    yield
    from fastmail import _tls

    if _tls.DEBUG_BUILD:
        import gc

        gc.collect()
        assert _tls.live_count() == 0, f"{_tls.live_count()} SSL objects left"
