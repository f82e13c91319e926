"""The metrics API: counters in shared memory, a slot per process, summed by whoever reads;
an exited process's counters kept (monotonic), its gauges dropped; series planned from the
config with stable indices across reloads; the scrape's text read back with
prometheus_client's own parser."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fastmail import __version__, _metrics, _report, metrics
from fastmail.conf import ConfigError, load

EV = "events {}\n"
AUTH = "auth_http 127.0.0.1:9/auth;"


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    metrics.reset()
    yield
    metrics.reset()


def conf(tmp: Path, mail: str, main: str = "metrics_listen 127.0.0.1:9145;\n"):
    p = tmp / "f.conf"
    p.write_text(f"{EV}{main}mail {{ {AUTH}\n{mail} }}\n")
    return load(str(p), str(tmp))


def _child(work: Callable[[], None]) -> int:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            work()
        except BaseException:  # noqa: BLE001 - reported by the exit code
            code = 1
        os._exit(code)
    return pid


def _wait(pid: int) -> None:
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


# --- the region ----------------------------------------------------------------------------------


def test_slots_of_forked_processes_add_up_and_survive_their_exit():
    r = _metrics.Region(256, 4)
    r.used = 200
    r.set_gauge(101)
    slots = [r.reserve(), r.reserve()]
    pids = []
    for i, s in enumerate(slots):

        def work(s: int = s, i: int = i) -> None:
            r.bind(s)
            _metrics.add(100, 10 * (i + 1))  # a counter
            _metrics.add(101, 3)  # a gauge: 3 open
            _metrics.add(101, -1)

        pids.append(_child(work))
        r.set_pid(s, pids[-1])
    for p in pids:
        _wait(p)
    sums = r.sums()
    assert sums[100] == 30 and sums[101] == 4  # both slots, until the master retires them
    r.retire(slots[0])
    sums = r.sums()
    assert sums[100] == 30  # the counter is kept
    assert sums[101] == 2  # the gauge of the exited process is gone
    assert sorted(r.pids()) == [pids[1]]
    assert r.reserve() == slots[0]  # the slot is free again, and empty
    assert r.value(slots[0], 100) == 0


def test_a_slot_is_reserved_until_its_pid_is_known():
    r = _metrics.Region(128, 2)
    assert r.reserve() == 0 and r.reserve() == 1 and r.reserve() == -1
    assert r.pids() == []  # reserved, not yet counting
    r.set_pid(0, 4242)
    assert r.pids() == [4242]


def test_histogram_buckets_and_sum():
    r = _metrics.Region(256, 1)
    r.used = 200
    r.bind(0)
    for us in (50, 100, 101, 3_000_000, 99_000_000):
        _metrics.observe(100, us)
    sums = r.sums()
    buckets = sums[100 : 100 + len(_metrics.BUCKETS_US) + 1]
    assert buckets[0] == 2  # <= 100 us (the bound itself included)
    assert buckets[1] == 1  # <= 250 us
    assert buckets[_metrics.BUCKETS_US.index(5_000_000)] == 1
    assert buckets[-1] == 1  # +Inf
    assert sums[100 + len(_metrics.BUCKETS_US) + 1] == 50 + 100 + 101 + 3_000_000 + 99_000_000
    _metrics.unbind()


def test_a_scrape_during_retirements_never_goes_backwards():
    """The reader's sum of a counter only grows while the master folds slots into the
    retired totals (a fold is invisible to readers: no double count, no gap)."""
    r = _metrics.Region(256, 8)
    r.used = 128
    r.set_pid(0, os.getpid())
    stop = time.monotonic() + 1.5
    rounds = 0
    last = 0
    seen_reader = []

    def reader() -> None:
        prev = 0
        while time.monotonic() < stop:
            v = r.sums()[100]
            assert v >= prev, (v, prev)
            prev = v
        seen_reader.append(prev)

    rpid = _child(reader)
    while time.monotonic() < stop - 0.2:
        s = r.reserve()
        r.bind(s)
        _metrics.add(100, 7)
        _metrics.unbind()
        r.retire(s)
        rounds += 1
        last = r.sums()[100]
    _wait(rpid)
    assert rounds > 50 and last == 7 * rounds


# --- the plan and the text -----------------------------------------------------------------------


def test_session_series_names_match_the_engine():
    assert tuple(metrics.SESSION_SERIES) == _report.SERIES


def test_metrics_listen_directive(tmp_path):
    c = conf(tmp_path, "server { listen 127.0.0.1:1143; protocol imap; }")
    lst = c.main.metrics_listen
    assert lst is not None and (lst.host, lst.port, lst.addr_text) == (
        "127.0.0.1",
        9145,
        "127.0.0.1:9145",
    )
    c = conf(tmp_path, "server { listen 1143; protocol imap; }", "metrics_listen unix:/tmp/m.sock;")
    assert c.main.metrics_listen.path == "/tmp/m.sock"
    assert conf(tmp_path, "", "metrics_listen off;").main.metrics_listen is None
    assert conf(tmp_path, "", "").main.metrics_listen is None
    for text, message in (
        ("metrics_listen 127.0.0.1:9145; metrics_listen 127.0.0.1:9146;", "is duplicate"),
        ("metrics_listen 127.0.0.1:0;", 'invalid port in "127.0.0.1:0"'),
        ("metrics_listen 127.0.0.1:1-2;", 'invalid port range in "127.0.0.1:1-2"'),
        ("metrics_listen [::1;", 'invalid host in "[::1"'),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            conf(tmp_path, "", text)
    with pytest.raises(ConfigError, match='"metrics_listen" directive is not allowed here'):
        conf(tmp_path, "metrics_listen 127.0.0.1:9145;", "")


def test_off_means_no_region_and_no_series(tmp_path):
    c = conf(tmp_path, "server { listen 127.0.0.1:1143; protocol imap; }", "")
    assert metrics.setup(c) is None
    assert not metrics.enabled() and metrics.reserve() == -1
    assert set(metrics.session_series(c.mail.servers[0])) == {metrics.NONE}
    assert metrics.series(metrics.CONNECTIONS_DROPPED, "worker_connections") == metrics.NONE


def test_series_are_planned_per_server_and_stay_put_across_reloads(tmp_path):
    one = "server { listen 127.0.0.1:1143; protocol imap; }"
    two = "server { listen 127.0.0.1:1110; protocol pop3; }"
    c1 = conf(tmp_path, one)
    metrics.setup(c1)
    imap = metrics.session_series(c1.mail.servers[0])
    assert len(set(imap)) == len(imap) and min(imap) >= metrics.SCRATCH
    assert metrics.server_labels(c1.mail.servers[0]) == ("imap", "127.0.0.1:1143")
    c2 = conf(tmp_path, two + one)  # a reload: a server added before the old one
    metrics.setup(c2)
    assert metrics.session_series(c2.mail.servers[1]) == imap  # same labels, same indices
    pop3 = metrics.session_series(c2.mail.servers[0])
    assert not set(pop3) & set(imap)
    with pytest.raises(KeyError):
        metrics.series(metrics.LOGINS, "imap", "127.0.0.1:1143", "ok", "credentials")


def test_servers_sharing_an_address_get_distinct_labels(tmp_path, certs):
    c = conf(
        tmp_path,
        f"ssl_certificate {certs.server_cert}; ssl_certificate_key {certs.server_key};"
        "starttls only;"
        "server { listen 127.0.0.1:1143; protocol imap; server_name a.test; }"
        "server { listen 127.0.0.1:1143; protocol imap; server_name b.test; }",
    )
    metrics.setup(c)
    assert [metrics.server_labels(s)[1] for s in c.mail.servers] == [
        "127.0.0.1:1143",
        "127.0.0.1:1143 b.test",
    ]


def _families(text: str) -> list[object]:
    return list(text_string_to_metric_families(text))


def _sample(fams: list[object], name: str, **labels: str) -> float:
    for f in fams:
        for s in f.samples:  # type: ignore[attr-defined]
            if s.name == name and s.labels == labels:
                return float(s.value)
    raise KeyError((name, labels))


def test_the_scrape_text_reads_back_with_prometheus_client(tmp_path, certs):
    c = conf(
        tmp_path,
        "server { listen 127.0.0.1:1143; protocol imap; }"
        'server { listen 127.0.0.1:1143; protocol imap; server_name "a\\"b\\\\c"; }'
        f"starttls only; ssl_certificate {certs.server_cert};"
        f"ssl_certificate_key {certs.server_key};",
    )
    metrics.setup(c)
    slot = metrics.reserve()
    metrics.bind(slot)
    srv = c.mail.servers[0]
    idx = dict(zip(_report.SERIES, metrics.session_series(srv), strict=True))
    _metrics.add(idx["accepted"], 3)
    _metrics.add(idx["open"], 1)
    _metrics.add(idx["login_ok"], 2)
    _metrics.observe(idx["auth_seconds"], 150)
    _metrics.observe(idx["auth_seconds"], 2_000_000)
    fams = _families(metrics.scrape())
    lead = {"protocol": "imap", "server": "127.0.0.1:1143"}
    assert _sample(fams, "fastmail_connections_accepted_total", **lead) == 3
    assert _sample(fams, "fastmail_connections_open", **lead) == 1
    assert _sample(fams, "fastmail_logins_total", **lead, result="ok", reason="none") == 2
    assert (
        _sample(fams, "fastmail_logins_total", **lead, result="failed", reason="credentials") == 0
    )
    h = dict(lead)
    assert _sample(fams, "fastmail_auth_http_request_seconds_bucket", **h, le="0.0001") == 0
    assert _sample(fams, "fastmail_auth_http_request_seconds_bucket", **h, le="0.00025") == 1
    assert _sample(fams, "fastmail_auth_http_request_seconds_bucket", **h, le="2.5") == 2
    assert _sample(fams, "fastmail_auth_http_request_seconds_bucket", **h, le="+Inf") == 2
    assert _sample(fams, "fastmail_auth_http_request_seconds_count", **h) == 2
    assert _sample(fams, "fastmail_auth_http_request_seconds_sum", **h) == pytest.approx(2.00015)
    # a label value with a quote and a backslash (the second server's name) reads back whole
    other = {"protocol": "imap", "server": '127.0.0.1:1143 a"b\\c'}
    assert _sample(fams, "fastmail_connections_accepted_total", **other) == 0
    assert _sample(fams, "fastmail_worker_processes") == 1
    assert _sample(fams, "fastmail_build_info", version=__version__) == 1
    # this process bound a slot: it is its own worker (master_process off), no master figure
    with pytest.raises(KeyError):
        _sample(fams, "fastmail_process_resident_memory_bytes", role="master")
    metrics.refresh_self(rss=7 << 20, fds=9)
    fams = _families(metrics.scrape())
    assert _sample(fams, "fastmail_process_resident_memory_bytes", role="worker") == 7 << 20
    assert _sample(fams, "fastmail_process_open_fds", role="worker") == 9
    assert _sample(fams, "fastmail_start_time_seconds") <= time.time()


def test_a_worker_that_exits_keeps_its_counts(tmp_path):
    """A worker's counters outlive it (the master folds them when it reaps the worker);
    what a scrape returns only grows across worker exits."""
    c = conf(tmp_path, "server { listen 127.0.0.1:1143; protocol imap; }")
    metrics.setup(c)
    srv = c.mail.servers[0]
    idx = dict(zip(_report.SERIES, metrics.session_series(srv), strict=True))
    lead = {"protocol": "imap", "server": "127.0.0.1:1143"}
    for n in range(3):
        slot = metrics.reserve()

        def work(slot: int = slot) -> None:
            metrics.bind(slot)
            _metrics.add(idx["accepted"], 5)
            _metrics.add(idx["open"], 1)

        pid = _child(work)
        metrics.forked(slot, pid)
        _wait(pid)
        before = _sample(_families(metrics.scrape()), "fastmail_connections_accepted_total", **lead)
        assert before == 5 * (n + 1)
        metrics.exited(pid)
        fams = _families(metrics.scrape())
        assert _sample(fams, "fastmail_connections_accepted_total", **lead) == 5 * (n + 1)
        assert _sample(fams, "fastmail_connections_open", **lead) == 0
        assert _sample(fams, "fastmail_worker_processes") == 0


def test_a_dead_process_does_not_hang_a_reader(tmp_path):
    """A worker killed mid-count leaves its slot as it was; the next scrape reads it."""
    c = conf(tmp_path, "server { listen 127.0.0.1:1143; protocol imap; }")
    metrics.setup(c)
    slot = metrics.reserve()
    idx = metrics.session_series(c.mail.servers[0])[0]

    def work() -> None:
        metrics.bind(slot)
        _metrics.add(idx, 9)
        time.sleep(30)

    pid = _child(work)
    metrics.forked(slot, pid)
    deadline = time.monotonic() + 5
    while metrics._state.region.value(slot, idx) != 9:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    metrics.exited(pid)
    text = metrics.scrape()
    assert 'fastmail_connections_accepted_total{protocol="imap",server="127.0.0.1:1143"} 9' in text
