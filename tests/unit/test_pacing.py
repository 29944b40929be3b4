"""amoc.pacing: timed calls from the loop's timers, by arrival process."""

from __future__ import annotations

import asyncio
import itertools
import math
import statistics

import pytest

from amoc import pacing

pytestmark = pytest.mark.unit


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_even_calls_are_interval_apart_from_start_and_the_task_waits_for_the_last() -> None:
    async def main() -> tuple[int, list[float], float]:
        loop = asyncio.get_running_loop()
        times: list[float] = []
        start = loop.time() + 0.02
        ran = await pacing.every(0.01, lambda: times.append(loop.time()), 5, start=start)
        return ran, [t - start for t in times], loop.time() - start

    ran, offsets, waited = run(main())
    assert ran == 5 and len(offsets) == 5
    for k, offset in enumerate(offsets):
        assert offset == pytest.approx(0.01 * k, abs=0.006), offsets
    assert waited >= 0.04


def test_poisson_calls_fall_at_random_within_the_even_span() -> None:
    async def main() -> tuple[float, list[float]]:
        loop = asyncio.get_running_loop()
        times: list[float] = []
        start = loop.time() + 0.01
        await pacing.every(
            0.002, lambda: times.append(loop.time()), 400, start=start, process="poisson"
        )
        return start, times

    start, times = run(main())
    assert len(times) == 400 and times == sorted(times)
    assert times[0] >= start - 0.001
    assert times[-1] <= start + 400 * 0.002 + 0.01  # never far past the even schedule's end
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert statistics.mean(gaps) == pytest.approx(0.002, rel=0.35)
    assert statistics.pstdev(gaps) > 0.0005  # random gaps, not a fixed step


def test_burst_bunches_calls_onto_the_grid() -> None:
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        times: list[float] = []
        await pacing.every(0.003, lambda: times.append(loop.time()), 12, process="burst",
                           burst=0.02)  # fmt: skip
        return times

    times = run(main())
    assert len(times) == 12
    cells = {math.floor(t / 0.02 + 0.25) for t in times}  # a timer fires a little late
    assert len(cells) <= 4, times  # 12 calls over ~36 ms in at most 3-4 grid cells


def test_what_fn_raises_ends_the_schedule_and_reaches_the_await() -> None:
    calls: list[int] = []

    def fn() -> None:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("not live")

    async def main() -> None:
        await pacing.every(0.001, fn, 10)

    with pytest.raises(RuntimeError, match="not live"):
        run(main())
    assert len(calls) == 3


def test_a_cancelled_await_cancels_the_calls_left() -> None:
    calls: list[int] = []

    async def user() -> None:
        await pacing.every(0.005, lambda: calls.append(1), 100)

    async def main() -> None:
        task = asyncio.create_task(user())
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        seen = len(calls)
        await asyncio.sleep(0.03)
        assert len(calls) == seen  # nothing ran after the cancel

    run(main())
    assert 0 < len(calls) < 100


def test_the_schedules_of_a_loop_share_one_timer_and_keep_their_own_times() -> None:
    # 200 users, each 4 calls 20 ms apart from its own start; one fails at its 2nd call,
    # one is cancelled: the others run on time, in order, from one loop timer at a time.
    async def main() -> tuple[dict[int, list[float]], int]:
        loop = asyncio.get_running_loop()
        times: dict[int, list[float]] = {i: [] for i in range(200)}
        begin = loop.time() + 0.02
        armed = 0
        real_call_at = loop.call_at

        def call_at(when, callback, *args, **kwargs):  # type: ignore[no-untyped-def]
            nonlocal armed
            armed += 1
            return real_call_at(when, callback, *args, **kwargs)

        loop.call_at = call_at  # type: ignore[method-assign]

        def fn(i: int) -> None:
            times[i].append(loop.time() - begin - i * 0.0001)
            if i == 7 and len(times[i]) == 2:
                raise RuntimeError("user 7 failed")

        tasks = [
            asyncio.ensure_future(
                pacing.every(0.02, lambda i=i: fn(i), 4, start=begin + i * 0.0001)
            )
            for i in range(200)
        ]
        await asyncio.sleep(begin + 0.03 - loop.time())  # user 9 made 2 calls (0, 20 ms)
        tasks[9].cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(done[7], RuntimeError) and isinstance(done[9], asyncio.CancelledError)
        assert [d for i, d in enumerate(done) if i not in (7, 9)] == [4] * 198
        return times, armed

    times, armed = run(main())
    assert len(times[7]) == 2 and len(times[9]) == 2
    for i, offsets in times.items():
        for k, offset in enumerate(offsets):
            assert offset == pytest.approx(0.02 * k, abs=0.008), (i, offsets)
    # A timer per call would be 800; the shared one re-arms at most once per due time.
    assert armed < 800 / 2, armed


def test_no_call_and_bad_arguments() -> None:
    async def main() -> int:
        return await pacing.every(1.0, lambda: None, 0)

    assert run(main()) == 0

    async def bad(**kwargs: object) -> None:
        await pacing.every(**kwargs)  # type: ignore[arg-type]

    for kwargs, message in (
        ({"interval": 1.0, "fn": print, "count": 1, "process": "steady"}, "one of even"),
        ({"interval": -1.0, "fn": print, "count": 1}, "seconds >= 0"),
        ({"interval": 0.0, "fn": print, "count": 1, "process": "poisson"}, "interval > 0"),
        ({"interval": 1.0, "fn": print, "count": 1, "process": "burst", "burst": 0}, "> 0"),
    ):
        with pytest.raises(ValueError, match=message):
            run(bad(**kwargs))
