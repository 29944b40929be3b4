"""amoc.runner.Controller: pacing, repeats, add / remove, errors isolated per user."""

import asyncio
import time
from pathlib import Path

import pytest

from amoc.config import Config
from amoc.errors import ConfigError, RunnerError, ScenarioError
from amoc.runner import Controller
from tests.unit import probe
from tests.wait import until

pytestmark = pytest.mark.unit

COUNTING = """
import asyncio
from tests.unit import probe

async def start(user_id):
    probe.runs[user_id] += 1
    await asyncio.sleep(WAIT)
    probe.finished[user_id] += 1
"""


@pytest.fixture(autouse=True)
def _reset_probe() -> None:
    probe.reset()


def controller(tmp_path: Path, scenarios: dict[str, str], **config: object) -> Controller:
    for name, source in scenarios.items():
        (tmp_path / f"{name}.py").write_text(source)
    cfg = Config(environ={})
    for key, value in {"interarrival": 0, "repeat_interval": 10, **config}.items():
        cfg.set(key, value)
    return Controller([tmp_path], cfg)


def counting(wait: float) -> str:
    return COUNTING.replace("WAIT", repr(wait))


async def test_do_add_remove_force(tmp_path: Path) -> None:
    ctl = controller(tmp_path, {"c": counting(10)})
    await ctl.do("c", 1, 10)
    await until(lambda: ctl.status().users.running == 10, "10 users running")
    assert sorted(probe.runs) == list(range(1, 11))
    await ctl.add(5)
    await until(lambda: ctl.status().users.running == 15, "15 users running")
    assert sorted(probe.runs) == list(range(1, 16))
    reply = await ctl.remove(3, force=True)
    assert reply.removed == [15, 14, 13]
    assert ctl.user_ids() == list(range(1, 13))
    assert not probe.finished  # killed in the middle of start
    await ctl.add(2)  # ids go on after the newest ever given
    await until(lambda: 17 in probe.runs, "user 17 started")
    assert ctl.user_ids() == [*range(1, 13), 16, 17]
    final = await ctl.stop()
    assert final.users.started == 17 and ctl.status().state == "idle"


async def test_gentle_remove_lets_the_run_finish(tmp_path: Path) -> None:
    ctl = controller(tmp_path, {"c": counting(0.3)})
    await ctl.do("c", 1, 4)
    await until(lambda: len(probe.runs) == 4, "4 users started")
    await ctl.remove(2)
    assert ctl.user_ids() == [1, 2]
    await until(lambda: probe.finished[3] == probe.finished[4] == 1, "users 3 and 4 finished")
    await until(lambda: ctl.status().users.stopping == 0, "no user stopping")
    await asyncio.sleep(0.1)
    assert probe.runs[3] == 1 and probe.runs[4] == 1  # never started again
    await ctl.stop()


async def test_gentle_remove_of_a_user_between_runs_is_immediate(tmp_path: Path) -> None:
    ctl = controller(tmp_path, {"c": counting(0)}, repeat_interval=60_000)
    await ctl.do("c", 1, 3)
    await until(lambda: sum(probe.finished.values()) == 3, "3 users finished")
    await ctl.remove(1)
    await until(lambda: ctl.status().users.stopping == 0, "no user stopping")
    assert ctl.user_ids() == [1, 2]
    await ctl.stop()


async def test_repeat_num_and_interval(tmp_path: Path) -> None:
    ctl = controller(tmp_path, {"c": counting(0)}, repeat_num=3, repeat_interval=100)
    begun = time.monotonic()
    await ctl.do("c", 1, 5)
    await until(lambda: ctl.status().state == "finished", "the run finished")
    elapsed = time.monotonic() - begun
    assert all(probe.runs[u] == 3 for u in range(1, 6))
    assert elapsed >= 0.2  # two waits of repeat_interval between three runs
    status = ctl.status().users
    assert status.finished == 5 and status.runs == 15 and status.running == 0
    await ctl.add(1)  # a finished scenario takes more users
    await until(lambda: probe.runs[6] == 3, "user 6 ran 3 times")
    await ctl.stop()


async def test_interarrival_paces_users_and_applies_at_run_time(tmp_path: Path) -> None:
    ctl = controller(tmp_path, {"c": counting(10)}, interarrival=100)
    begun = time.monotonic()
    await ctl.do("c", 1, 4)
    await until(lambda: len(probe.runs) == 4, "4 users started")
    assert time.monotonic() - begun >= 0.3
    ctl.config.set("interarrival", 0)
    begun = time.monotonic()
    await ctl.add(50)
    await until(lambda: len(probe.runs) == 54, "54 users started")
    assert time.monotonic() - begun < 0.5
    await ctl.stop()


async def test_a_failing_user_is_counted_and_others_go_on(tmp_path: Path) -> None:
    source = """
from tests.unit import probe

async def start(user_id):
    probe.runs[user_id] += 1
    if user_id == 2:
        raise ValueError("user 2 always fails")
"""
    ctl = controller(tmp_path, {"f": source}, repeat_num=3, repeat_interval=20)
    await ctl.do("f", 1, 3)
    await until(lambda: ctl.status().state == "finished", "the run finished")
    assert probe.runs == {1: 3, 2: 3, 3: 3}  # retried after repeat_interval
    assert ctl.status().users.failed_runs == 3
    await ctl.stop()


async def test_sync_start_runs_in_a_worker_thread(tmp_path: Path) -> None:
    source = """
import threading
from tests.unit import probe

def start(user_id, state):
    probe.threads.add(threading.current_thread().name)
    probe.events.append(("state", state))
    probe.runs[user_id] += 1

def init():
    return "shared"
"""
    ctl = controller(tmp_path, {"s": source}, repeat_num=1)
    await ctl.do("s", 1, 3)
    await until(lambda: ctl.status().state == "finished", "the run finished")
    assert all(name.startswith("amoc-sync-start") for name in probe.threads)
    assert probe.events == [("state", "shared")] * 3
    await ctl.stop()


async def test_bad_commands_do_not_disturb_the_run(tmp_path: Path) -> None:
    ctl = controller(tmp_path, {"c": counting(10)})
    await ctl.do("c", 1, 5)
    await until(lambda: ctl.status().users.running == 5, "5 users running")
    with pytest.raises(RunnerError, match="already running"):
        await ctl.do("c", 1, 5)
    with pytest.raises(RunnerError, match="only 5 are running"):
        await ctl.remove(6)
    with pytest.raises(RunnerError, match="count must be an integer"):
        await ctl.add(0)
    assert ctl.status().users.running == 5 and ctl.user_ids() == [1, 2, 3, 4, 5]
    await ctl.stop()


async def test_bad_do_starts_nothing(tmp_path: Path) -> None:
    sources = {
        "c": counting(10),
        "boom": "def init():\n    raise RuntimeError('no database')\nasync def start(u): pass\n",
        "needs": (
            "from amoc.config import param\n"
            "PARAMETERS = [param('target_host', description='where')]\n"
            "async def start(u): pass\n"
        ),
    }
    ctl = controller(tmp_path, sources)
    with pytest.raises(RunnerError, match="ids out of order"):
        await ctl.do("c", 10, 1)
    with pytest.raises(RunnerError, match="start at 1"):
        await ctl.do("c", 0, 3)
    with pytest.raises(ScenarioError, match="init of scenario 'boom' raised RuntimeError"):
        await ctl.do("boom", 1, 3)
    with pytest.raises(ScenarioError, match="'target_host'"):
        await ctl.do("needs", 1, 3)
    with pytest.raises(ConfigError, match="unknown setting 'bogus'"):
        await ctl.do("c", 1, 3, settings={"bogus": 1})
    with pytest.raises(RunnerError, match="no scenario is running"):
        await ctl.add(1)
    assert ctl.status().state == "idle" and not probe.runs


async def test_terminate_gets_the_state(tmp_path: Path) -> None:
    source = """
from tests.unit import probe

def init():
    return {"k": 1}

async def start(user_id, state):
    pass

async def terminate(state):
    probe.events.append(("terminate", state))
"""
    ctl = controller(tmp_path, {"t": source}, repeat_num=1)
    await ctl.do("t", 1, 2)
    await ctl.stop()
    assert probe.events == [("terminate", {"k": 1})]
