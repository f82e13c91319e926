"""Session resumption and server choice with fastmail's own TLS contexts: ticket key files
(nginx's layouts, several keys: the first encrypts), the master's own ticket key surviving a
reload, the shared session-ID cache across worker processes (and the builtin one not), the
zone's ring, SNI choosing the server{} and its certificate, and no leak over many handshakes."""

from __future__ import annotations

import os
import select
import ssl
import time
from pathlib import Path

import pytest
import trustme

from fastmail import _tls
from fastmail._tlscache import SessionZone, zone
from fastmail._tlsctx import ClientContext
from support.tlspair import OK, Pair, native_handshake, server_conf, tcp_pair


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def pem(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("certs") / "srv.pem"
    ca.issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(str(p))
    return p


def _server(tmp: Path, pem: Path, extra: str, name: str = "f.conf"):
    text = (
        "server { listen 127.0.0.1:1993 ssl; protocol imap; "
        f"ssl_certificate {pem}; ssl_certificate_key {pem}; {extra} }}"
    )
    return server_conf(tmp, text, name)[0]


def _client(ca: trustme.CA, tls13: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    if not tls13:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _session(server_ctx, client: ssl.SSLContext, session=None) -> tuple[bool, ssl.SSLSession]:
    """One connection: (resumed, the client's session afterwards). Data goes both ways, so a
    TLSv1.3 ticket reaches the client."""
    p = Pair(server_ctx, client, session=session)
    try:
        assert p.handshake() == OK, p.server.error()
        assert p.down(b"* OK\r\n") == b"* OK\r\n"
        assert p.up(b"a NOOP\r\n") == b"a NOOP\r\n"
        assert p.server.reused == p.client.session_reused
        session = p.client.session
        assert session is not None
        return p.server.reused, session
    finally:
        p.close()


# --- tickets ----------------------------------------------------------------------------------


def test_ticket_key_files_rotate_as_nginx(tmp_path: Path, ca, pem) -> None:
    k1, k2, k3 = (tmp_path / n for n in ("k1.key", "k2.key", "k3.key"))
    k1.write_bytes(os.urandom(80))
    k2.write_bytes(os.urandom(48))  # nginx's 48-byte layout: AES-128
    k3.write_bytes(os.urandom(80))
    tickets = "ssl_session_cache none; "
    old = _server(tmp_path, pem, tickets + f"ssl_session_ticket_key {k1};", "a.conf")
    rotated = _server(
        tmp_path, pem, tickets + f"ssl_session_ticket_key {k2}; ssl_session_ticket_key {k1};",
        "b.conf",
    )  # fmt: skip
    new = _server(tmp_path, pem, tickets + f"ssl_session_ticket_key {k2};", "c.conf")
    other = _server(tmp_path, pem, tickets + f"ssl_session_ticket_key {k3};", "d.conf")
    assert rotated.tls.ticket_key_names == [k2.read_bytes()[:16], k1.read_bytes()[:16]]
    for tls13 in (False, True):
        c = _client(ca, tls13)
        reused, first = _session(old.tls, c)
        assert not reused and first.has_ticket
        reused, renewed = _session(rotated.tls, c, first)  # k1 still decrypts
        assert reused
        assert _session(new.tls, c, renewed)[0]  # the renewed ticket is k2's
        assert not _session(new.tls, c, first)[0]  # k1 is gone there
        assert not _session(other.tls, c, renewed)[0]


def test_master_ticket_key_survives_reload(tmp_path: Path, ca, pem) -> None:
    """Without key files, the contexts of a reload (a new load in the same master) accept the
    tickets of the old ones; a server{} with other certificates does not (session id context,
    CVE-2014-3616)."""
    before = _server(tmp_path, pem, "")
    after = _server(tmp_path, pem, "")
    assert before.tls is not after.tls
    c = _client(ca, tls13=True)
    reused, s = _session(before.tls, c)
    assert not reused
    assert _session(after.tls, c, s)[0]
    other_pem = tmp_path / "other.pem"
    ca.issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(str(other_pem))
    other = _server(tmp_path, other_pem, "", "o.conf")
    assert not _session(other.tls, c, s)[0]
    off = _server(tmp_path, pem, "ssl_session_tickets off;", "off.conf")
    c = _client(ca)
    reused, s = _session(off.tls, c)
    assert not s.has_ticket and not _session(off.tls, c, s)[0]  # and no cache: a full one


# --- the shared session-ID cache -------------------------------------------------------------


def _worker(server_ctx, sock, go: int) -> None:
    """A forked worker: waits for `go`, serves one handshake, exits 1 if it resumed, 0 if not,
    2 on failure."""
    code = 2
    try:
        os.read(go, 1)
        stream = _tls.TlsStream(server_ctx, sock.fileno())
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            r = stream.handshake()
            if r == OK:
                code = 1 if stream.reused else 0
                stream.write(b"* OK\r\n")
                break
            if r not in (_tls.TLS_CODES["WANT_READ"], _tls.TLS_CODES["WANT_WRITE"]):
                break
            select.select([sock], [], [], 0.05)
        stream.close()
    finally:
        os._exit(code)


def _two_workers(server_ctx, client: ssl.SSLContext) -> tuple[int, int]:
    """Two workers forked before any handshake (as from the master); a client session made
    on the first is offered to the second. Their exit codes."""
    pairs = [tcp_pair(), tcp_pair()]
    pipes = [os.pipe(), os.pipe()]
    pids = []
    for (s, _), (r, _) in zip(pairs, pipes, strict=True):
        pid = os.fork()
        if pid == 0:
            _worker(server_ctx, s, r)
        pids.append(pid)
    codes = []
    session = None
    try:
        for pid, (s, c), (_, w) in zip(pids, pairs, pipes, strict=True):
            s.close()
            os.write(w, b"g")
            c.setblocking(True)
            c.settimeout(5)
            t = client.wrap_socket(c, server_hostname="localhost", session=session)
            assert t.recv(10) == b"* OK\r\n"
            session = t.session
            t.close()
            _, status = os.waitpid(pid, 0)
            codes.append(os.waitstatus_to_exitcode(status))
    finally:
        for r, w in pipes:
            os.close(r)
            os.close(w)
    return codes[0], codes[1]


@pytest.mark.parametrize("tls13", [False, True])
def test_shared_cache_resumes_across_workers(tmp_path: Path, ca, pem, tls13: bool) -> None:
    name = f"W{int(tls13)}"
    srv = _server(tmp_path, pem, f"ssl_session_tickets off; ssl_session_cache shared:{name}:1m;")
    assert _two_workers(srv.tls, _client(ca, tls13)) == (0, 1)
    stats = zone(name, 1024 * 1024).stats()  # the master's view of the workers' zone
    # TLSv1.3 issues (stateful) tickets, each a session: two on the full handshake, one on the
    # resumed one; TLSv1.2 stores the one session once
    assert stats["live"] == (3 if tls13 else 1) and stats["hits"] == 1


def test_shared_zone_is_kept_across_reload(tmp_path: Path, ca, pem) -> None:
    """A reload loads the new config while the old one still serves: a zone of the same name
    and size is the same memory, so sessions of the old contexts resume on the new ones."""
    extra = "ssl_session_tickets off; ssl_session_cache shared:R:1m;"
    old = _server(tmp_path, pem, extra, "old.conf")
    new = _server(tmp_path, pem, extra, "new.conf")
    c = _client(ca)
    reused, s = _session(old.tls, c)
    assert not reused and _session(new.tls, c, s)[0]
    resized = _server(tmp_path, pem, extra.replace(":1m", ":2m"), "resized.conf")
    assert not _session(resized.tls, c, s)[0]  # another size: a new, empty zone


@pytest.mark.parametrize(
    ("cache", "resumes"),
    [("none shared:N:1m", False), ("shared:N:1m off", False), ("shared:N:1m", True),
     ("builtin:10 shared:N:1m", True), ("shared:N:1m builtin", True)],
)  # fmt: skip
def test_session_cache_words_combine_as_nginx_s(tmp_path: Path, ca, pem, cache, resumes) -> None:
    """The last of off/none/builtin wins whatever the order of `shared:`; a zone alone caches."""
    srv = _server(tmp_path, pem, f"ssl_session_tickets off; ssl_session_cache {cache};")
    c = _client(ca)
    _, s = _session(srv.tls, c)
    assert _session(srv.tls, c, s)[0] is resumes


def test_builtin_cache_is_per_worker(tmp_path: Path, ca, pem) -> None:
    srv = _server(tmp_path, pem, "ssl_session_tickets off; ssl_session_cache builtin:100;")
    assert _two_workers(srv.tls, _client(ca)) == (0, 0)
    c = _client(ca)  # within one worker it resumes
    _, s = _session(srv.tls, c)
    assert _session(srv.tls, c, s)[0]


def test_zone_drops_the_oldest_and_expired() -> None:
    z = SessionZone("t", 32768)
    now = int(time.time())
    der = os.urandom(400)
    assert z.put(b"a" * 32, der, now + 60) and z.get(b"a" * 32, now) == der
    assert z.get(b"a" * 32, now + 61) is None  # expired
    assert z.get(b"b" * 32, now) is None
    for i in range(200):  # far more than fit
        assert z.put(i.to_bytes(32, "big"), der, now + 60)
    stats = z.stats()
    assert 50 < stats["live"] < 80 and stats["drops"] == 200 - stats["live"]
    assert z.get((199).to_bytes(32, "big"), now) == der  # the newest are kept
    assert z.get((0).to_bytes(32, "big"), now) is None  # the oldest went
    z.delete((199).to_bytes(32, "big"))
    assert z.get((199).to_bytes(32, "big"), now) is None
    assert not z.put(b"x" * 33, der, now + 60)  # not a session ID
    assert not z.put(b"x" * 32, os.urandom(9000), now + 60)  # too big to keep


def test_zone_survives_a_worker_dying_in_the_lock() -> None:
    z = SessionZone("d", 32768)
    now = int(time.time())
    z.put(b"k" * 32, b"der", now + 60)
    pid = os.fork()
    if pid == 0:
        z.hold_lock()
        os._exit(0)
    os.waitpid(pid, 0)
    assert z.get(b"k" * 32, now) is None  # the zone was emptied, not deadlocked
    assert z.put(b"k" * 32, b"der", now + 60) and z.get(b"k" * 32, now) == b"der"


def test_zones_are_kept_by_name_and_size() -> None:
    a = zone("keep", 65536)
    assert zone("keep", 65536) is a
    assert zone("keep", 131072) is not a


# --- SNI -------------------------------------------------------------------------------------


def test_sni_picks_the_server_and_its_certificate(tmp_path: Path) -> None:
    ca = trustme.CA()
    blocks = []
    names = ["mail.a.test", "*.b.test", "mail.*", "~^imap[0-9]+\\.c\\.test$"]
    for i, name in enumerate(names):
        path = tmp_path / f"{i}.pem"
        ca.issue_cert(f"cert{i}.test").private_key_and_cert_chain_pem.write_to_path(str(path))
        blocks.append(
            f"server {{ listen 127.0.0.1:1993 ssl; protocol imap; server_name {name}; "
            f"ssl_certificate {path}; ssl_certificate_key {path}; }}"
        )
    servers = server_conf(tmp_path, "\n".join(blocks))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    client.check_hostname = False
    expect: dict[str | None, int] = {
        "MAIL.A.TEST": 0, "x.y.b.test": 1, "mail.example.org": 2, "imap7.c.test": 3,
        "unknown.test": 0, None: 0,
    }  # fmt: skip
    for sni_name, index in expect.items():
        p = Pair(servers[0].tls, client, server_hostname=sni_name)
        try:
            assert p.handshake() == OK
            assert p.server.chosen is servers[index]
            cert = p.client.getpeercert()
            assert cert is not None
            assert ("DNS", f"cert{index}.test") in cert["subjectAltName"]
        finally:
            p.close()


def test_sni_after_starttls_picks_the_server(tmp_path: Path) -> None:
    """Two server{} doing STARTTLS on one plain address: the connection starts with the first
    (its greeting); the name sent in the STARTTLS handshake picks the server{} that goes on."""
    ca = trustme.CA()
    blocks = []
    for name in ("a.test", "b.test"):
        path = tmp_path / f"{name}.pem"
        ca.issue_cert(name).private_key_and_cert_chain_pem.write_to_path(str(path))
        blocks.append(
            f"server {{ listen 127.0.0.1:1143; protocol imap; server_name {name}; "
            f"starttls on; ssl_certificate {path}; ssl_certificate_key {path}; }}"
        )
    a, b = server_conf(tmp_path, "\n".join(blocks))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    client.check_hostname = False  # c.test gets the default's certificate
    for name, srv in (("b.test", b), ("a.test", a), ("c.test", a)):
        p = Pair(a.tls, client, server_hostname=name)
        try:
            assert p.handshake() == OK
            assert p.server.chosen is srv
            cert = p.client.getpeercert()
            assert cert is not None
            assert ("DNS", "b.test" if srv is b else "a.test") in cert["subjectAltName"]
        finally:
            p.close()


# --- leaks ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cache",
    ["ssl_session_cache shared:L:1m; ssl_session_tickets off;",
     "ssl_session_cache builtin:200; ssl_session_tickets off;", ""],
    ids=["shared", "builtin", "tickets"],
)  # fmt: skip
def test_no_leak_over_many_handshakes(tmp_path: Path, pem, cache: str) -> None:
    """Full and resumed handshakes, fastmail's calls on both ends (Python's ssl client itself
    grows with every resumed session): memory and fds stay flat."""
    srv = _server(tmp_path, pem, f"ssl_protocols TLSv1.2; {cache}")
    client = ClientContext(False)
    resumed = 0

    def run(n: int) -> None:
        nonlocal resumed
        session = None
        for i in range(n):
            s, c, socks = native_handshake(srv.tls, client, session=session)
            resumed += s.reused
            session = c.session() if i % 2 == 0 else None
            s.close()
            c.close()
            for x in socks:
                x.close()

    run(600)  # warm up: allocator pools, OpenSSL's builtin cache fills
    fds, rss = len(os.listdir("/proc/self/fd")), _rss()
    run(1000)
    assert len(os.listdir("/proc/self/fd")) == fds
    assert _rss() - rss < 512  # KiB
    assert resumed == 800
    if _tls.DEBUG_BUILD:
        assert _tls.live_count() == 0


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
