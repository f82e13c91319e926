"""README's first command: the demo proxies all three protocols with nothing else set up."""

from __future__ import annotations

import subprocess
import sys

from support.ports import free_port


def test_demo_logs_in_through_every_protocol_and_exits_clean(tmp_path) -> None:
    ports = [str(free_port()) for _ in range(3)]
    proc = subprocess.run(
        [sys.executable, "-m", "fastmail.demo", "--check"]
        + ["--imap", ports[0], "--pop3", ports[1], "--smtp", ports[2]],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "IMAP  login ok, INBOX holds 2 message(s)" in out
    assert "POP3  login ok, 2 message(s)" in out
    assert "SMTP  login ok, message accepted by the backend" in out
