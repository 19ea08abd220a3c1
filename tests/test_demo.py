"""``mailtracker demo`` in a subprocess: the whole cycle within 90 s, nothing left running."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

DEMO_TIMEOUT = 90
DEMO_MARKERS = ("mailtracker-demo-dovecot-", "@demo.example")


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def demo_processes() -> list[str]:
    """Command lines of running processes that belong to a demo's servers."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(marker in text for marker in DEMO_MARKERS):
            found.append(text)
    return found


def run_demo(*options: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "mailtracker", "demo", *options],
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def check_tour(out: str) -> None:
    for ref in ("QN-0001", "QN-0002", "QN-0003", "QN-0004", "QN-0005"):
        assert ref in out
    assert "5 case(s)" in out
    subject = re.search(
        r"^Subject: (\[QN\] Bản tin \d\d/\d\d/\d{4}: \d+ quá hạn, 4 mới)$", out, re.M
    )
    assert subject is not None, out
    assert re.search(r"^Reply-To: cdc-inbox\+t\.\S+@demo\.example$", out, re.M)
    assert "[QN-0001] Cảnh báo: nguy cơ cao" in out  # the high-risk alert went out
    # the acknowledgement: applied lines, a refused one with its reason
    ack = out[out.index("Subject: [QN] Đã nhận") :]
    assert "Đã nhận: 2 áp dụng, 2 từ chối" in ack
    assert re.search(r"✓ QN-0001 cách ly tại nhà \d\d/\d\d/\d{4}\n\s+→ đã áp dụng: QN-0001, "
                     r"trạng thái cách ly tại nhà", ack)  # fmt: skip
    assert "✗ QN-0003 check 37,2" in ack
    # the updated case with its history
    case = out[out.index("== 6. The case QN-0001 now") :]
    assert "QN-0001  home_isolation" in case
    assert "units: cdc, soyte" in case
    assert re.search(r"home new -> home_isolation\s+\(epi@cdc\.demo\.example, email\)", case)
    assert "period start reason: command" in case
    html = re.search(r"HTML version of the digest: (\S+)", out)
    assert html is not None and "<table" in Path(html.group(1)).read_text(encoding="utf-8")


def check_stopped(out: str) -> None:
    stopped = re.search(r"All servers stopped \(ports ([\d, ]+) closed: yes\)", out)
    assert stopped is not None, out[-500:]
    ports = [int(port) for port in stopped.group(1).split(", ")]
    assert len(ports) >= 2
    assert not [port for port in ports if listening(port)]
    assert demo_processes() == []


@pytest.mark.integration
def test_demo_runs_the_whole_cycle_and_leaves_nothing_running(tmp_path: Path) -> None:
    out = run_demo("--keep", str(tmp_path / "kept"))
    check_tour(out)
    check_stopped(out)
    kept = tmp_path / "kept"
    assert {"config.toml", "mailtracker.db", "digest-cdc.html"} <= {p.name for p in kept.iterdir()}
    assert (
        "password" in (kept / "config.toml").read_text()
        and "env:" in (kept / "config.toml").read_text()
    )


@pytest.mark.integration
def test_demo_on_pymap() -> None:
    pytest.importorskip("pymap", reason="pymap (the demo extra) is not installed")
    out = run_demo("--imap-server", "pymap")
    assert "(pymap)" in out
    check_tour(out)
    check_stopped(out)
    html = re.search(r"HTML version of the digest: (\S+)", out)
    assert html is not None
    left = {path.name for path in Path(html.group(1)).parent.iterdir()}
    assert left == {"digest-cdc.html"}  # config and database removed
    Path(html.group(1)).unlink()
    Path(html.group(1)).parent.rmdir()
