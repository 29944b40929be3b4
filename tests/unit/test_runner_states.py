"""The controller's run state machine and its bounded stops: one run at a time, every stop ends."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from amoc.errors import RunnerError, ScenarioError
from amoc.local import AmocLocal
from amoc.runner import Controller
from amoc.status import RunStatus
from tests.unit import probe
from tests.unit.test_runner import controller as make_controller
from tests.unit.test_runner import counting
from tests.wait import until, wait_until

pytestmark = pytest.mark.unit

# A user whose start swallows every cancellation for `HOLD` seconds.
STUBBORN = """
import asyncio, time

async def start(user_id):
    end = time.monotonic() + HOLD
    while time.monotonic() < end:
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            pass
"""

SLOW_INIT = """
import asyncio
from tests.unit import probe

async def init():
    probe.events.append(("init", None))
    await asyncio.sleep(INIT_WAIT)
    return "state"

async def start(user_id, state):
    probe.runs[user_id] += 1
    await asyncio.sleep(60)
"""


def controller(tmp_path: Path, scenarios: dict[str, str], **config: object) -> Controller:
    """A controller with its own config; runner settings (stop_timeout...) may be given."""
    ctl = make_controller(tmp_path, scenarios)
    for key, value in config.items():
        ctl.config.set(key, value)
    return ctl


@pytest.fixture(autouse=True)
def _reset_probe() -> None:
    probe.reset()


def stubborn(hold: float) -> str:
    return STUBBORN.replace("HOLD", repr(hold))


def slow_init(wait: float) -> str:
    return SLOW_INIT.replace("INIT_WAIT", repr(wait))


async def test_concurrent_do_admits_exactly_one(tmp_path: Path) -> None:
    ctl = controller(tmp_path, {"c": counting(60), "other": counting(60)})
    calls = [ctl.do("c" if i % 2 else "other", 1, 10) for i in range(20)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    admitted = [r for r in results if isinstance(r, RunStatus)]
    refused = [r for r in results if isinstance(r, RunnerError)]
    assert len(admitted) == 1 and len(refused) == 19, results
    name = admitted[0].scenario
    # Refused while it was starting (it loads in a thread): named, with how to get past it.
    assert all(repr(name) in str(e) for e in refused), refused
    assert all("stop()" in str(e) for e in refused)
    await until(lambda: ctl.status().users.running == 10, "10 users running")
    assert sorted(probe.runs) == list(range(1, 11))
    with pytest.raises(RunnerError, match=rf"{name!r} is already running with 10 users; stop"):
        await ctl.do("c", 11, 12)
    final = await ctl.stop()
    assert final.users.started == 10
    assert ctl.status().users.running == 0 and not ctl.user_ids()
    assert sum(1 for t in asyncio.all_tasks() if t.get_name().startswith("user-")) == 0


async def test_stop_during_a_slow_init_starts_no_user(tmp_path: Path) -> None:
    ctl = controller(tmp_path, {"s": slow_init(30)})
    starting = asyncio.ensure_future(ctl.do("s", 1, 50))
    await until(lambda: probe.events == [("init", None)], "init called")
    assert ctl.status().state == "starting" and ctl.status().scenario == "s"
    with pytest.raises(RunnerError, match="'s' is starting"):
        await ctl.do("s", 1, 2)
    with pytest.raises(RunnerError, match="'s' is starting"):
        await ctl.add(1)
    begun = time.monotonic()
    await ctl.stop()
    assert time.monotonic() - begun < 1
    with pytest.raises(RunnerError, match="stopped while starting; no user was started"):
        await starting
    await asyncio.sleep(0.1)
    assert not probe.runs and ctl.status().state == "idle" and not ctl.user_ids()


async def test_a_hanging_init_is_bounded_by_init_timeout(tmp_path: Path) -> None:
    ctl = controller(tmp_path, {"s": slow_init(600)}, init_timeout=300)
    begun = time.monotonic()
    with pytest.raises(ScenarioError, match=r"did not return within 0.3 s \(init_timeout\)"):
        await ctl.do("s", 1, 5)
    assert 0.25 < time.monotonic() - begun < 2
    assert ctl.status().state == "idle" and not probe.runs
    (tmp_path / "s.py").write_text(slow_init(0))  # the run can start once init returns
    await ctl.do("s", 1, 3)
    await until(lambda: ctl.status().users.running == 3, "3 users running")
    await ctl.stop()


async def test_stop_abandons_users_that_swallow_cancellation(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ctl = controller(tmp_path, {"s": stubborn(1.5), "c": counting(60)}, stop_timeout=300)
    await ctl.do("s", 1, 6)
    await until(lambda: ctl.status().users.running == 6, "6 users running")
    begun = time.monotonic()
    with caplog.at_level(logging.WARNING, "amoc.runner"):
        final = await ctl.stop()
    assert time.monotonic() - begun < 1.5
    assert final.users.abandoned == 6 and final.users.running == 0
    assert "6 users did not end within stop_timeout" in caplog.text
    assert ctl.status().state == "idle" and not ctl.user_ids()
    # The next run counts only its own users, even when the abandoned ones end meanwhile.
    await ctl.do("c", 1, 4)
    await asyncio.sleep(1.7)
    status = ctl.status().users
    assert status.running == 4 and status.finished == 0 and status.abandoned == 0
    await ctl.stop()


async def test_force_remove_is_bounded(tmp_path: Path) -> None:
    ctl = controller(tmp_path, {"s": stubborn(2)}, stop_timeout=200)
    await ctl.do("s", 1, 5)
    await until(lambda: ctl.status().users.running == 5, "5 users running")
    begun = time.monotonic()
    reply = await ctl.remove(2, force=True)
    assert time.monotonic() - begun < 1
    assert reply.removed == [5, 4] and reply.status.users.abandoned == 2
    assert reply.status.users.running == 3 and ctl.user_ids() == [1, 2, 3]
    await ctl.stop()


async def test_a_hanging_terminate_does_not_hang_stop(tmp_path: Path) -> None:
    source = counting(60) + "\nasync def terminate():\n    await asyncio.sleep(600)\n"
    ctl = controller(tmp_path, {"t": source}, stop_timeout=200)
    await ctl.do("t", 1, 2)
    await until(lambda: ctl.status().users.running == 2, "2 users running")
    begun = time.monotonic()
    await ctl.stop()
    assert time.monotonic() - begun < 1 and ctl.status().state == "idle"


async def test_concurrent_stops_share_one_stop(tmp_path: Path) -> None:
    ctl = controller(tmp_path, {"c": counting(60)})
    await ctl.do("c", 1, 20)
    await until(lambda: ctl.status().users.running == 20, "20 users running")
    finals = await asyncio.gather(*(ctl.stop() for _ in range(5)))
    assert all(f.users.started == 20 for f in finals)
    assert ctl.status().users.running == 0 and ctl.status().users.stopping == 0


async def test_a_do_racing_a_stop_leaves_no_orphan(tmp_path: Path) -> None:
    ctl = controller(tmp_path, {"c": counting(60)})
    for _ in range(5):
        racing = [ctl.do("c", 1, 30) for _ in range(10)]
        stopping = [ctl.stop() for _ in range(3)]
        await asyncio.gather(*racing, *stopping, return_exceptions=True)
        await ctl.stop()
        await asyncio.sleep(0.05)
        assert ctl.status().state == "idle" and not ctl.user_ids()
        assert sum(1 for t in asyncio.all_tasks() if t.get_name().startswith("user-")) == 0


class LoopThread:
    """An event loop in its own thread, as a node runs it; `call` is what Node.call does."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float | None = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


def test_status_from_other_threads_during_a_20000_user_ramp(
    tmp_path: Path, loop_thread: LoopThread
) -> None:
    users = 20_000
    ctl = controller(tmp_path, {"c": counting(60)}, interarrival=0.05)
    local = AmocLocal(ctl, loop_thread.call)
    failures: list[BaseException] = []
    seen: list[int] = []
    done = threading.Event()

    def hammer() -> None:
        reads = 0
        try:
            while not done.is_set():
                s = local.status()
                u = s["users"]
                assert s["state"] == "running", s
                assert u["running"] + u["pending"] == users, u  # placed = running + pending
                assert u["started"] == u["running"] and u["stopping"] == 0, u
                reads += 1
        except BaseException as exc:
            failures.append(exc)
        seen.append(reads)

    local.do("c", 1, users)
    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: local.status()["users"]["running"] >= users, "every user running", 20)
    finally:
        done.set()
        for t in threads:
            t.join(10)
    assert not failures, failures[0]
    assert local.status()["users"]["running"] == users
    assert local.users() == list(range(1, users + 1))
    assert sum(seen) > 30, seen  # the readers really ran during the ramp
    final = local.stop()
    assert final["users"]["started"] == users
    after = local.status()["users"]
    assert after["running"] == 0 and after["stopping"] == 0 and local.users() == []
