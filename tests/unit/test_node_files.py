"""A node's name lock, its loop watchdog, and the report's directory and run figures."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from pathlib import Path

import pytest

from amoc.config import Config
from amoc.home import Home
from amoc.report.recorder import _new_directory, since
from amoc.watchdog import PARAMETERS, Watchdog
from tests.wait import wait_until

pytestmark = pytest.mark.unit


def test_the_pid_file_is_held_while_the_node_lives(tmp_path: Path) -> None:
    home = Home(tmp_path, "n1")
    assert home.holder() is None
    fd = home.lock()
    try:
        assert home.holder() == os.getpid()
        with pytest.raises(BlockingIOError):
            home.lock()  # a second node under the same name
    finally:
        os.close(fd)
    assert home.pidfile.exists() and home.holder() is None  # a dead node's file: free
    os.close(home.lock())


def blocked_loop(seconds: float) -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    loop = asyncio.new_event_loop()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    async def stuck_in_a_blocking_call() -> None:
        time.sleep(seconds)

    loop.call_soon_threadsafe(lambda: loop.create_task(stuck_in_a_blocking_call(), name="u-7"))
    return loop, thread


def test_the_watchdog_names_what_blocks_the_loop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = Config(environ={})
    config.declare(PARAMETERS)
    config.set("loop_block_warn", 300)
    config.set("loop_block_log_every", 10_000)
    busy = tmp_path / "loop.busy"
    with caplog.at_level(logging.INFO, "amoc.watchdog"):
        loop, thread = blocked_loop(1.6)
        dog = Watchdog(loop, thread, busy, config)
        dog.start()
        try:
            wait_until(busy.exists, "the busy file", 5)
            assert 0 <= time.time() - float(busy.read_text()) < 3
            wait_until(lambda: not busy.exists(), "the busy file gone (the loop turns again)", 5)
        finally:
            dog.stop()
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            loop.close()
    warnings = [r.getMessage() for r in caplog.records if "has been blocked" in r.getMessage()]
    assert len(warnings) == 1, warnings  # at most one every loop_block_log_every
    assert "task 'u-7'" in warnings[0] and "stuck_in_a_blocking_call" in warnings[0]
    assert "time.sleep(seconds)" in warnings[0]
    assert any("turns again" in r.getMessage() for r in caplog.records)


def test_report_directories_never_collide(tmp_path: Path) -> None:
    made = [_new_directory(tmp_path, "20261202-101010-dummy") for _ in range(3)]
    assert [d.name for d in made] == [
        "20261202-101010-dummy",
        "20261202-101010-dummy-2",
        "20261202-101010-dummy-3",
    ]
    assert all((d.stat().st_mode & 0o777) == 0o700 for d in made)


def test_the_summary_counts_the_run_not_the_node(tmp_path: Path) -> None:
    before = {
        "counters": {"users.started": 8, "dummy.runs": 40},
        "gauges": {"users.running": 0},
        "histograms": {"t": {"buckets": {3: 2}, "count": 2, "sum": 2.0, "min": 1.0, "max": 1.0}},
    }
    now = {
        "counters": {"users.started": 11, "dummy.runs": 46, "new": 2},
        "gauges": {"users.running": 3},
        "histograms": {"t": {"buckets": {3: 5}, "count": 5, "sum": 5.0, "min": 1.0, "max": 1.0}},
    }
    run = since(now, before)
    assert run["counters"] == {"users.started": 3, "dummy.runs": 6, "new": 2}
    assert run["gauges"] == {"users.running": 3}
    assert run["histograms"]["t"]["count"] == 3 and run["histograms"]["t"]["sum"] == 3.0
    assert since(now, None) == now
