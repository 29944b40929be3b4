"""A scenario cannot end the node: BaseException contained; uploads checked in a child."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from amoc import scenario, scenario_check
from amoc.config import Config
from amoc.errors import ScenarioError
from amoc.runner import Controller
from tests.wait import until

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("raised", ["SystemExit(3)", "KeyboardInterrupt", "GeneratorExit"])
def test_import_raising_any_base_exception_is_a_scenario_error(raised: str) -> None:
    with pytest.raises(ScenarioError, match=r"'bad' failed to import: .*line 1"):
        scenario.load_source("bad", f"raise {raised}\n")


async def test_start_init_terminate_are_contained_and_keep_their_shape() -> None:
    loaded = scenario.load_source(
        "crash",
        "async def start(user_id, state):\n    raise SystemExit(4)\n"
        "def init():\n    raise KeyboardInterrupt\n"
        "def terminate(state):\n    raise SystemExit(6)\n",
    )
    assert loaded.is_async and loaded.start_takes_state
    with pytest.raises(ScenarioError, match=r"'crash': start raised SystemExit\(4\) at .*line 2"):
        await loaded.start(1, None)
    assert loaded.init is not None and loaded.terminate is not None
    with pytest.raises(ScenarioError, match="init raised KeyboardInterrupt"):
        await scenario.call(loaded.init)
    with pytest.raises(ScenarioError, match=r"terminate raised SystemExit\(6\)"):
        await scenario.call(loaded.terminate, None)


async def test_cancellation_still_reaches_a_contained_start() -> None:
    loaded = scenario.load_source(
        "waits", "import asyncio\nasync def start(u):\n    await asyncio.sleep(60)\n"
    )
    task = asyncio.ensure_future(loaded.start(1))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize(
    "start",
    [
        "def start(user_id):\n    raise SystemExit(2)\n",  # a worker thread's SystemExit
        # in the loop: the runner awaits the module's own start and guards it itself
        "async def start(user_id):\n    raise SystemExit(2)\n",
        "async def start(user_id):\n    raise KeyboardInterrupt\n",
    ],
)
async def test_users_that_exit_count_as_failed_runs(
    tmp_path: Path, start: str, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "exits.py").write_text(start + "async def _unused():\n    pass\n")
    config = Config(environ={})
    config.set("interarrival", 0)
    config.set("repeat_interval", 0)
    config.set("repeat_num", 2)
    controller = Controller([tmp_path], config)
    try:
        await controller.do("exits", 1, 3)
        await until(lambda: controller.status().users.failed_runs >= 6, controller.status)
    finally:
        final = await controller.stop()
        await controller.close()
    assert final.users.failed_runs == 6
    raised = "SystemExit(2)" if "SystemExit" in start else "KeyboardInterrupt"
    assert f"scenario 'exits': start raised {raised}" in caplog.text, caplog.text


async def test_the_check_runs_in_a_child_with_a_time_limit(tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    source = (
        "import os\nfrom amoc.config import param\n"
        f"open({str(marker)!r}, 'w').write(str(os.getpid()))\n"
        "PARAMETERS = [param('x_wait', 5, 'ms'), param('x_token', 'tk')]\n"
        "print('AMOC-SCENARIO-CHECK {\"loadable\": false}')\n"  # not taken for the answer
        "async def start(user_id):\n    pass\n"
    )
    facts = await scenario_check.check("x", source, "sha")
    assert facts.loadable and facts.is_async, facts
    assert int(marker.read_text()) != os.getpid()
    params = {p.name: p for p in facts.params()}
    assert params["x_wait"].default == 5 and params["x_token"].is_secret
    began = time.monotonic()
    blocked = await scenario_check.check("slow", "import time\ntime.sleep(60)\n", "s", 1.0)
    assert not blocked.loadable and "still importing after 1 s" in (blocked.problem or "")
    assert time.monotonic() - began < 5
    exits = await scenario_check.check("exits", "raise SystemExit(3)\n", "e")
    assert not exits.loadable and "SystemExit(3)" in (exits.problem or "")
