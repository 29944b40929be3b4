"""Real processes and signals: reports written on SIGTERM, busy nodes told from dead ones."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.terminal import Terminal, amoc
from tests.wait import wait_until

pytestmark = pytest.mark.e2e

_names = itertools.count()


@pytest.fixture
def node_name() -> str:
    return f"s{os.getpid()}_{next(_names)}"


def status_json(release: Path, name: str) -> dict | None:  # type: ignore[type-arg]
    done = amoc(release, "--name", name, "status", "--json")
    return json.loads(done.stdout) if done.returncode == 0 else None


def running(release: Path, name: str, users: int) -> bool:
    answer = status_json(release, name)
    return bool(answer) and answer["controller"]["users"]["running"] == users  # type: ignore[index]


def summary(report_dir: Path) -> dict:  # type: ignore[type-arg]
    (found,) = report_dir.glob("*/summary.json")
    result: dict = json.loads(found.read_text())  # type: ignore[type-arg]
    return result


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts: killed by pid at the end if still alive."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signalled_headless_run_writes_its_report(
    release: Path,
    tmp_path: Path,
    node_name: str,
    started: list[subprocess.Popen[str]],
    signum: signal.Signals,
) -> None:
    proc = subprocess.Popen(
        [str(release / "bin" / "amoc"), "--name", node_name, "run", "dummy", "--users", "6",
         "--duration", "120", "--rate", "100", "--set", "dummy_wait=200",
         "--set", "repeat_interval=0", "--report", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    started.append(proc)
    wait_until(lambda: running(release, node_name, 6), "6 users running", 30, every=0.1)
    time.sleep(0.5)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signum, err
    assert f"ended early by {signum.name}" in err
    assert "report: " in out, out
    figures = summary(tmp_path)
    runs = figures["metrics"]["dummy.runs"]
    assert figures["metrics"]["users.started"] == 6 and runs >= 6, figures
    assert "6 users started" in out


def test_a_daemon_stopped_by_sigterm_writes_the_report_of_its_run(
    release: Path, tmp_path: Path, node_name: str
) -> None:
    env = {"AMOC_INTERARRIVAL": "0", "AMOC_DUMMY_WAIT": "100", "AMOC_REPEAT_INTERVAL": "0",
           "AMOC_REPORT_DIR": str(tmp_path)}  # fmt: skip
    assert amoc(release, "--name", node_name, "start", env=env).returncode == 0
    answer = status_json(release, node_name)
    assert answer is not None
    pid = answer["pid"]
    try:
        # A first run, stopped: its report counts only its own users.
        term = Terminal(release, ["--name", node_name, "attach"], env)
        term.run('amoc_local.do("dummy", 1, 8)')
        term.wait('status()["users"]["running"]', lambda n: n == 8)
        term.run("amoc_local.stop()")
        term.run('amoc_local.do("dummy", 1, 3)')
        term.wait('status()["users"]["running"]', lambda n: n == 3)
        term.leave()
        os.kill(pid, signal.SIGTERM)
        wait_until(
            lambda: amoc(release, "--name", node_name, "status").returncode == 3,
            "the node stopped",
            30,
            every=0.1,
        )
    finally:
        if amoc(release, "--name", node_name, "status").returncode != 3:
            os.kill(pid, signal.SIGKILL)
    reports = sorted(tmp_path.glob("*/summary.json"))
    assert len(reports) == 2, reports  # two runs, maybe in one second: two directories
    counted = sorted(json.loads(r.read_text())["metrics"]["users.started"] for r in reports)
    assert counted == [3, 8]


BLOCKER = """
import asyncio
import os
import time

LET_GO = {let_go!r}


async def start(user_id):
    await asyncio.sleep(0.5)
    deadline = time.monotonic() + 60
    while not os.path.exists(LET_GO) and time.monotonic() < deadline:
        time.sleep(0.05)  # wrong on purpose: blocks the event loop until the test lets go
    await asyncio.sleep(3600)
"""


def test_a_blocked_node_is_busy_not_dead_and_keeps_its_name(release: Path, node_name: str) -> None:
    let_go = release / "run" / f"{node_name}.let_go"  # the blocked loop turns once it exists
    (release / "scenarios" / "blocker.py").write_text(BLOCKER.format(let_go=str(let_go)))
    env = {"AMOC_LOOP_BLOCK_WARN": "1000"}
    assert amoc(release, "--name", node_name, "start", env=env).returncode == 0
    answer = status_json(release, node_name)
    assert answer is not None
    pid = answer["pid"]
    try:
        term = Terminal(release, ["--name", node_name, "attach"], env)
        term.run('amoc_local.do("blocker", 1, 1)')
        term.child.sendeof()  # detach; the loop blocks half a second later
        term.child.close()

        def busy() -> bool:
            done = amoc(release, "--name", node_name, "status")
            return done.returncode == 4 and "not answering (busy for" in done.stdout

        wait_until(busy, "status says busy", 6, every=0.1)
        again = amoc(release, "--name", node_name, "start")
        assert again.returncode == 1, again.stdout
        assert f"already running (pid {pid}, not answering)" in again.stderr
        log = release / "log" / f"{node_name}.log"
        wait_until(
            lambda: "event loop has been blocked" in log.read_text(),
            "the watchdog warning",
            6,
            every=0.1,
        )
        text = log.read_text()
        # The blocking line is named (the loop sleeps, now and then it looks for the file).
        assert "blocker.py" in text, text[-3000:]
        assert "time.sleep(0.05)" in text or "os.path.exists(LET_GO)" in text, text[-3000:]
        # Once the loop turns again, the node answers and stops cleanly.
        let_go.touch()
        stopped = amoc(release, "--name", node_name, "stop")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert not (release / "run" / node_name / "loop.busy").exists()
    finally:
        if amoc(release, "--name", node_name, "status").returncode != 3:
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("duration", ["nan", "inf", "-1", "0"])
def test_a_duration_that_is_not_a_finite_positive_number_is_refused(
    release: Path, node_name: str, duration: str
) -> None:
    done = amoc(release, "--name", node_name, "run", "dummy", "--users", "1",
                "--duration", duration)  # fmt: skip
    assert done.returncode == 2 and "finite number of seconds" in done.stderr, done.stderr
