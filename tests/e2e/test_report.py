"""The live view in a real terminal, the end-of-run report, headless runs with thresholds."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.terminal import ANSI, PROMPT, Terminal, amoc
from tests.net import free_port

pytestmark = pytest.mark.e2e


def last_frame(screen: str) -> list[str]:
    """The lines of the last frame the live view drew."""
    text = ANSI.sub("", screen)
    start = text.rfind("amoc watch")
    assert start >= 0, text
    return [line for line in text[start:].splitlines() if line.strip()]


def test_watch_shows_the_figures_of_the_node(release: Path) -> None:
    name = f"w{os.getpid()}"
    term = Terminal(
        release,
        ["--name", name, "console"],
        {"AMOC_INTERARRIVAL": "0", "AMOC_DUMMY_WAIT": "600000"},
    )
    try:
        term.run('amoc_local.do("dummy", 1, 12)')
        term.wait('status()["users"]["running"]', lambda n: n == 12)
        term.child.sendline("watch(2.5)")
        term.child.expect(PROMPT, timeout=20)
        frame = last_frame(term.child.before)
        assert frame[0].startswith("amoc watch") and "scenario dummy" in frame[0]
        assert "100% 12/12 users" in frame[1]
        header, row = frame[2].split(), frame[3].split()
        assert header[:4] == ["node", "target", "running", "failed"]
        assert row[0] == name and row[1:4] == ["12", "12", "0"]

        # Over attach, the view is drawn by the attaching terminal from the node's samples.
        term.run("amoc_local.remove(2, force=True)")
        attached = Terminal(release, ["--name", name, "attach"], {})
        try:
            attached.child.sendline("watch(1.5)")
            attached.child.expect(PROMPT, timeout=20)
            frame = last_frame(attached.child.before)
            assert "100% 10/10 users" in frame[1]
            assert frame[3].split()[1:3] == ["10", "10"]
        finally:
            attached.leave()
        term.run("amoc_local.stop()")
        path = term.value("report()")
        assert isinstance(path, str) and Path(path).is_file()
    finally:
        term.leave()


def run(release: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return amoc(release, "--name", f"h{os.getpid()}", "run", *args)


def test_headless_run_writes_a_report_with_plots(release: Path, tmp_path: Path) -> None:
    done = run(
        release, "dummy", "--users", "20", "--duration", "4", "--rate", "10",
        "--set", "dummy_wait=300", "--set", "repeat_interval=100", "--comment", "nightly",
        "--report", str(tmp_path), "--threshold", "dummy.runs >= 20", "--max-error-ratio", "0",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    index = Path(re.search(r"report: (\S+)", done.stdout).group(1))  # type: ignore[union-attr]
    assert index.parent.parent == tmp_path
    page = index.read_text()
    assert "nightly" in page and "dummy_wait" in page
    # Users, rates, TTD, errors; the load generator's CPU and loop lag.
    assert page.count('class="chart"') == 6 and "echarts" in page
    rows = list(csv.DictReader((index.parent / "series.csv").read_text().splitlines()))
    assert len(rows) >= 4
    assert max(float(r["running"]) for r in rows) == 20
    assert float(rows[-1]["t"]) >= 3.5

    chromium = shutil.which("chromium")
    assert chromium, "chromium is missing: run `make deps`"
    shot = tmp_path / "report.png"
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
         "--window-size=900,1400", "--virtual-time-budget=5000", index.as_uri()],
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    assert shot.stat().st_size > 20_000
    dom = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
         "--virtual-time-budget=5000", index.as_uri()],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert 'data-charts="6"' in dom and "Time to delivery" in dom
    assert "amoc CPU" in dom and "loop lag p99" in dom
    assert "TTD p99" in dom and "do dummy (20 users)" in dom  # a legend entry, the do marker


def test_a_failing_threshold_fails_the_run(release: Path, tmp_path: Path) -> None:
    done = run(
        release, "dummy", "--users", "3", "--duration", "1.5", "--set", "dummy_wait=100",
        "--report", str(tmp_path), "--threshold", "dummy.runs > 1000",
    )  # fmt: skip
    assert done.returncode == 1
    assert "threshold failed: dummy.runs > 1000 (was 3)" in done.stderr
    done = run(release, "dummy", "--users", "3", "--duration", "1", "--threshold", "ttd < fast")
    assert done.returncode == 2 and "expected METRIC OP NUMBER" in done.stderr
    done = run(
        release, "dummy", "--users", "2", "--duration", "1", "--report", str(tmp_path),
        "--max-ttd-p99", "5",
    )  # fmt: skip
    assert done.returncode == 1 and "xmpp.ttd_ms.p99 <= 5.0 (never recorded)" in done.stderr


def test_a_run_whose_logins_fail_exits_1_unless_errors_are_allowed(
    release: Path, tmp_path: Path
) -> None:
    nothing = str(free_port())  # no XMPP server listens there
    args = (
        "xmpp_one_to_one", "--users", "2", "--duration", "3", "--report", str(tmp_path),
        "--set", f"xmpp_port={nothing}", "--set", "repeat_num=1",
        "--set", "xmpp_connect_timeout=1000",
    )  # fmt: skip
    done = run(release, *args)
    assert done.returncode == 1, done.stdout
    assert "threshold failed: error_ratio <= 0.0" in done.stderr
    allowed = run(release, *args, "--max-error-ratio", "1")
    assert allowed.returncode == 0, allowed.stderr
    bad = run(release, *args, "--max-error-ratio", "2")
    assert bad.returncode == 2 and "between 0 and 1" in bad.stderr


def test_settings_read_at_start_can_be_given_to_a_headless_run(release: Path) -> None:
    done = run(
        release, "dummy", "--users", "2", "--duration", "1", "--set", "dummy_wait=100",
        "--set", f"prometheus_port={free_port()}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    bad = run(release, "dummy", "--users", "1", "--duration", "1", "--set", "prometheus_port=abc")
    assert bad.returncode == 2 and "prometheus_port" in bad.stderr
