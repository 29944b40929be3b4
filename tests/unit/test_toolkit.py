"""amoc.throttle, amoc.coordinator and the full form of declared parameters, on one node."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from amoc import coordinator, throttle
from amoc.config import READ_ONLY, Config, param
from amoc.errors import ConfigError

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def clean() -> Iterator[None]:
    yield
    throttle.stop_all()
    coordinator.stop_all()
    throttle.set_share(1.0)


async def releases(name: str, callers: int, seconds: float) -> list[float]:
    """Times at which `callers` concurrent waiters got through in the `seconds` that follow
    the first release, counted from it: a stall of the loop (a busy machine) before the
    first release does not shorten the window."""
    loop = asyncio.get_running_loop()
    times: list[float] = []

    async def one() -> None:
        await throttle.wait(name)
        times.append(loop.time())

    tasks = [asyncio.create_task(one()) for _ in range(callers)]
    give_up = loop.time() + seconds + 5.0
    while not times and loop.time() < give_up:
        await asyncio.sleep(0.001)
    if times:
        await asyncio.sleep(max(0.0, times[0] + seconds - loop.time()))
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    first = min(times, default=0.0)
    return sorted(t - first for t in times if t - first < seconds)


async def test_a_rate_is_held_evenly_and_never_exceeded() -> None:
    throttle.start("t", 1200)  # 1200 per minute: 20 per second, one every 50 ms
    times = await releases("t", 100, 1.0)
    assert 19 <= len(times) <= 21
    # No bursts: the throttle keeps its cadence through a loop stall, so the release after a
    # late one may follow it closely, but never do three releases come within one spacing
    # (a stall longer than a spacing restarts the cadence instead of catching up).
    spans = [c - a for a, c in zip(times, times[2:], strict=False)]
    assert min(spans) > 0.045


async def test_the_share_divides_the_rate_and_changes_apply_at_once() -> None:
    throttle.start("t", 40, interval=1000)
    throttle.set_share(0.5)  # two slaves: this node gets 20/s
    # Never above the share; a loop stall on a busy machine may delay the last release or two.
    assert 8 <= len(await releases("t", 50, 0.5)) <= 11
    throttle.change_rate("t", 80, 1000)  # now 40/s here
    assert 17 <= len(await releases("t", 50, 0.5)) <= 21


async def test_a_gradual_plan_steps_the_rate() -> None:
    throttle.start("g", 10, interval=1000)
    throttle.change_rate_gradually("g", 10, 50, step_interval=100, steps=4)
    seen: list[float] = []
    started = time.monotonic()
    while time.monotonic() - started < 0.7:
        rate = throttle.info()[0]["rate"]
        if not seen or seen[-1] != rate:
            seen.append(rate)
        await asyncio.sleep(0.01)
    assert seen == [10, 20, 30, 40, 50]


async def test_interval_zero_limits_parallelism() -> None:
    throttle.start("p", 3, interval=0)
    running, peak = 0, 0

    async def work() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1

    await asyncio.gather(*(throttle.run("p", work) for _ in range(12)))
    assert peak == 3


async def test_send_and_wait_runs_the_function_under_the_throttle() -> None:
    throttle.start("s", 1, interval=0)
    running = 0

    async def work(x: int) -> int:
        nonlocal running
        running += 1
        assert running == 1, "two calls ran at once under a parallelism of 1"
        await asyncio.sleep(0.01)
        running -= 1
        return x * 2

    got = await asyncio.gather(*(throttle.send_and_wait("s", work, i) for i in range(4)))
    assert got == [0, 2, 4, 6]


async def test_throttle_errors_name_the_problem() -> None:
    with pytest.raises(throttle.ThrottleError, match="no throttle 'x'"):
        await throttle.wait("x")
    with pytest.raises(throttle.ThrottleError, match="rate must be a number > 0"):
        throttle.start("y", 0)


async def test_coordinator_pairs_batches_and_timeout() -> None:
    pairs: list[tuple[Any, Any]] = []
    batches: list[tuple[str, list[Any]]] = []
    events: list[str] = []
    coordinator.start(
        "c",
        [
            (2, lambda e, a, b: pairs.append((a[0], b[0]))),
            (3, lambda e, us: batches.append((e, us))),
            ("all", lambda e: events.append(e)),
        ],
        timeout=200,
    )
    futures = [coordinator.add("c", uid, data=f"d{uid}") for uid in range(1, 6)]
    got = await asyncio.wait_for(asyncio.gather(*futures[:4]), 1)
    assert got[0] == [(1, "d1"), (2, "d2")] and got[3] == [(3, "d3"), (4, "d4")]
    assert pairs == [(1, 2), (3, 4)]
    started = time.monotonic()
    last = await asyncio.wait_for(futures[4], 2)  # user 5 is alone: the timeout flushes it
    assert last == [(5, "d5")] and time.monotonic() - started >= 0.15
    assert batches == [
        ("coordinate", [(1, "d1"), (2, "d2"), (3, "d3")]),
        ("timeout", [(4, "d4"), (5, "d5")]),
    ]
    assert events == ["timeout"]


def test_bad_plans_are_refused() -> None:
    with pytest.raises(coordinator.CoordinatorError, match="size must be an int >= 1 or 'all'"):
        coordinator.start("b", [(0, lambda e: None)])
    with pytest.raises(coordinator.CoordinatorError, match="an action takes"):
        coordinator.start("b", [(2, lambda: None)])


def test_parameters_verify_and_update() -> None:
    applied: list[Any] = []

    def apply(name: str, value: Any) -> None:
        if value == 13:
            raise ValueError("unlucky")
        applied.append((name, value))

    config = Config(environ={})
    config.declare(
        [
            param("mode", "a", "one of a list", verify=["a", "b"]),
            param("level", 1, "applied at run time", update=apply),
            param("fixed", 5, "set once", update=READ_ONLY),
        ]
    )
    with pytest.raises(ConfigError, match=r"config 'mode' = 'c' .* must be one of \['a', 'b'\]"):
        config.set("mode", "c")
    config.set("level", 2)
    assert applied == [("level", 2)] and config.get("level") == 2
    with pytest.raises(ConfigError, match="refused by its update function: ValueError: unlucky"):
        config.set("level", 13)
    assert config.get("level") == 2  # the old value stays
    with pytest.raises(ConfigError, match="'fixed' is read-only"):
        config.set("fixed", 6)
