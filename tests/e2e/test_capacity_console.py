"""find_capacity from a real console (amoc_local), the way the README shows it: the table
and the verdict print, the outcome's files are written, a bad plan is refused with no run
(the limit is on the users running, so that no server is needed)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.e2e.terminal import Terminal

pytestmark = pytest.mark.e2e


def test_find_capacity_from_the_console(release: Path, tmp_path: Path) -> None:
    term = Terminal(
        release,
        ["--name", f"capc{os.getpid()}", "console"],
        {"AMOC_DUMMY_WAIT": "600000", "AMOC_REPORT_DIR": str(tmp_path)},
    )
    try:
        term.run('amoc_config.set("interarrival", 7)')
        out = term.run(
            'amoc_local.find_capacity("dummy", "users.running <= 4", users="2:2:6", '
            'hold="1s", settle="0.2s", cooldown="0.5s", arrival=50)',
            timeout=90,
        )
        lines = out.splitlines()
        head = next(i for i, line in enumerate(lines) if line.startswith("find-capacity dummy"))
        assert lines[head + 1].split()[:2] == ["step", "load"], out
        steps = [line.split() for line in lines[head + 2 : head + 6]]
        assert [s[:2] for s in steps] == [["1", "2"], ["2", "4"], ["3", "6"], ["4", "6"]], out
        assert steps[0][-1] == steps[1][-1] == "ok", out  # a failed step is tried again:
        assert "tried again:" in lines[head + 4] and "FAIL" in lines[head + 5], out
        assert "capacity: 4 users held; first limit: users.running <= 4 (was 6" in out, out
        assert list(tmp_path.glob("capacity-*-dummy/capacity.json")), list(tmp_path.iterdir())
        out = term.run('amoc_local.find_capacity("dummy", "users.running >= 1", users="4:2:4")')
        assert "CapacityError" in out and "the plan does not rise" in out, out
        assert term.value('amoc_local.status()["state"]') in ("idle", "finished")
        assert term.value('amoc_config.get("interarrival")') == 7  # the pace put back
    finally:
        term.leave()


def test_a_search_by_arrival_rate_from_the_command_line(release: Path, tmp_path: Path) -> None:
    """--rate: users arrive at so many a second (user_rate) for the ramp, settle and hold;
    the limit is on how many run by the end of the hold (about rate x 5.2 s here)."""
    done = subprocess.run(
        [str(release / "bin" / "amoc"), "--name", f"rate{os.getpid()}", "find-capacity",
         "dummy", "--rate", "20:40:100", "--ramp", "3s", "--settle", "0.2s", "--hold", "2s",
         "--cooldown", "0.5s", "--confirm", "0", "--thresholds", "users.running <= 130",
         "--set", "dummy_wait=600000", "--report", str(tmp_path), "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout, done.stderr)
    outcome = json.loads(done.stdout[: done.stdout.rindex("}") + 1])
    loads = [s["load"] for s in outcome["steps"]]
    assert loads[:2] == [20, 60] and outcome["held"] == 20, outcome["verdict"]
    assert outcome["broke"]["load"] == 30 and "users.running <= 130" in outcome["verdict"]
    assert loads == [20, 60, 40, 30] and [s["ok"] for s in outcome["steps"]] == [
        True, False, False, False]  # fmt: skip
