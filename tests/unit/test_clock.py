"""A slave's clock offset from the heartbeat exchange, and the stamps that correct by it."""

from __future__ import annotations

import random
import time

import pytest

from amoc import clock as stamp
from amoc.cluster.clock import ClockOffset
from amoc.cluster.registry import NodeRegistry

pytestmark = pytest.mark.unit


def exchange(offset: float, out: float, wait: float, back: float, at: float) -> list[float]:
    """One ping and heartbeat: the slave's clock is `offset` s ahead; the ping takes `out`
    s, the slave waits `wait`, the heartbeat takes `back`. [t0, t1, t2], t3."""
    t0 = at
    t1 = t0 + out + offset
    t2 = t1 + wait
    return [t0, t1, t2, t2 - offset + back]


def test_one_exchange_finds_the_offset_within_half_the_round_trip() -> None:
    rng = random.Random(7)
    for _ in range(200):
        offset = rng.uniform(-5, 5)
        out, back, wait = rng.uniform(0, 0.02), rng.uniform(0, 0.02), rng.uniform(0, 1)
        *probe, t3 = exchange(offset, out, wait, back, 1.7e9)
        clock = ClockOffset()
        assert clock.add(probe, t3)
        assert clock.offset_ms is not None and clock.error_ms is not None
        assert clock.error_ms == pytest.approx((out + back) * 500, abs=1e-3)
        assert abs(clock.offset_ms - offset * 1000) <= clock.error_ms + 1e-3
        # A symmetric trip is exact.
        *probe, t3 = exchange(offset, out, wait, out, 1.7e9)
        even = ClockOffset()
        even.add(probe, t3)
        assert even.offset_ms == pytest.approx(offset * 1000, abs=1e-3)


def test_the_shortest_round_trip_of_the_last_eight_wins() -> None:
    clock = ClockOffset()
    trips = [(0.200, 0.001), (0.0005, 0.0005), (0.050, 0.002)]  # a slow, a quick, a lopsided
    for k, (out, back) in enumerate(trips):
        *probe, t3 = exchange(0.2, out, 0.3, back, 1.7e9 + k)
        clock.add(probe, t3)
    assert clock.offset_ms == pytest.approx(200.0, abs=1e-3)  # the quick one: symmetric
    assert clock.error_ms == pytest.approx(0.5, abs=1e-3)
    for k in range(8):  # eight slower ones push the quick one out
        *probe, t3 = exchange(0.2, 0.004, 0.3, 0.002, 1.8e9 + k)
        clock.add(probe, t3)
    assert clock.error_ms == pytest.approx(3.0, abs=1e-3)
    assert clock.offset_ms == pytest.approx(201.0, abs=1e-3)


@pytest.mark.parametrize(
    "probe",
    [None, [1.0, 2.0], ["a", 1.0, 2.0], [1.0, float("nan"), 2.0], [1.0, 3.0, 2.0]],
)
def test_a_malformed_probe_is_ignored(probe: object) -> None:
    clock = ClockOffset()
    assert not clock.add(probe, 5.0)
    assert clock.offset_ms is None and clock.offset_us is None


def test_an_exchange_too_slow_to_say_anything_is_ignored() -> None:
    clock = ClockOffset()
    *probe, t3 = exchange(0.0, 3.0, 0.1, 3.0, 1.7e9)  # a 6 s round trip
    assert not clock.add(probe, t3)


def beat(name: str, probe: list[float] | None) -> dict[str, object]:
    msg: dict[str, object] = {"name": name, "instance": "i1", "status": {"state": "idle"}}
    if probe is not None:
        msg["clock"] = probe
    return msg


def test_the_master_warns_once_of_a_clock_far_off(caplog: pytest.LogCaptureFixture) -> None:
    registry = NodeRegistry(1.0, lambda *_: None, clock_warn_ms=100)
    now = time.time()
    for k in range(3):
        t0 = now - 0.01
        registry.beat("s1@h/i1", beat("s1@h", [t0, t0 + 0.2 + 0.001, t0 + 0.202 + 0.0005 * k]))
    info = registry.nodes["s1@h"]
    assert info.clock.offset_ms is not None and abs(info.clock.offset_ms - 200) < 10
    view = info.view(time.monotonic(), 0)
    assert view.clock_offset_ms == info.clock.offset_ms and view.clock_error_ms is not None
    warnings = [r.getMessage() for r in caplog.records if "clock" in r.getMessage()]
    assert len(warnings) == 1 and "s1@h" in warnings[0] and "cluster_clock_warn" in warnings[0]


def test_stamps_are_in_the_masters_time_base() -> None:
    try:
        stamp.set_skew_ms(200)
        skewed = stamp.now_us() - time.time_ns() // 1000
        assert 199_000 <= skewed <= 201_000  # no offset measured yet: its own clock
        assert 0.199 <= stamp.local_s() - time.time() <= 0.201
        stamp.set_offset_us(199_500)
        assert -1_000 <= stamp.now_us() - time.time_ns() // 1000 <= 1_000
        assert 0.199 <= stamp.local_s() - time.time() <= 0.201  # what it reports stays raw
        assert stamp.offset_us() == 199_500
    finally:
        stamp.set_skew_ms(0)
    assert abs(stamp.now_us() - time.time_ns() // 1000) < 1_000 and stamp.offset_us() == 0
