"""The capacity search's plan: steps that rise, durations, thresholds on known metrics, the
bisection's middle, and how an outcome reads."""

from __future__ import annotations

import math
from typing import Any

import pytest

from amoc import capacity

pytestmark = pytest.mark.unit


def test_a_plan_rises_to_its_maximum() -> None:
    steps = capacity.parse_steps("200:400:1800", "--users", whole=True)
    assert steps.loads() == [200, 600, 1000, 1400, 1800]
    assert capacity.parse_steps("100:300:500", "--users", whole=True).loads() == [100, 400, 500]
    assert capacity.parse_steps("0.5:0.5:2", "--rate", whole=False).loads() == [0.5, 1, 1.5, 2]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("400:0:800", "the plan does not rise"),
        ("400:-100:100", "the plan does not rise"),
        ("800:100:400", "the plan does not rise"),
        ("0:100:400", "START must be > 0"),
        ("100:100", "expected START:STEP:MAX"),
        ("a:b:c", "expected START:STEP:MAX"),
        ("10.5:10:100", "users are whole numbers"),
    ],
)
def test_a_plan_that_does_not_rise_is_refused_naming_the_option(text: str, says: str) -> None:
    with pytest.raises(capacity.CapacityError, match=f"--users '{text}'.*{says}"):
        capacity.parse_steps(text, "--users", whole=True)


def test_durations() -> None:
    assert capacity.parse_duration("60s", "--hold") == 60
    assert capacity.parse_duration("2m", "--hold") == 120
    assert capacity.parse_duration("500ms", "--hold") == 0.5
    assert capacity.parse_duration(3, "--hold") == 3
    assert capacity.parse_duration("0s", "--cooldown", zero=True) == 0
    for bad in ("soon", "0s", "-1s"):
        with pytest.raises(capacity.CapacityError, match="--hold"):
            capacity.parse_duration(bad, "--hold")


def test_thresholds_name_known_metrics() -> None:
    found = capacity.parse_thresholds(["xmpp.ttd_ms.p99 < 5; server.cpu < 90"], monitored=True)
    assert [t.metric for t in found] == ["xmpp.ttd_ms.p99", "server.cpu", "error_ratio"]
    assert capacity.parse_thresholds(["error_ratio <= 0.1"])[0].limit == 0.1  # none added
    with pytest.raises(capacity.CapacityError, match="did you mean 'xmpp.ttd_ms.p99'"):
        capacity.parse_thresholds(["xmpp.tdd_ms.p99 < 5"])
    with pytest.raises(capacity.CapacityError, match="unknown metric 'xmpp.ttd_ms'"):
        capacity.parse_thresholds(["xmpp.ttd_ms < 5"])  # a histogram needs its statistic
    with pytest.raises(capacity.CapacityError, match="needs monitor_hosts"):
        capacity.parse_thresholds(["server.rss_mb < 900"], monitored=False)
    with pytest.raises(capacity.CapacityError, match="expected METRIC OP NUMBER"):
        capacity.parse_thresholds(["ttd is low"])


def _plan(mode: str = "users", steps: str = "200:400:1800") -> capacity.Plan:
    return capacity.Plan(
        "xmpp_one_to_one", mode, capacity.parse_steps(steps, "--x", whole=mode == "users"),
        tuple(capacity.parse_thresholds(["xmpp.ttd_ms.p99 < 5"])),
    )  # fmt: skip


def test_the_bisection_keeps_pairs_and_stops_at_the_resolution() -> None:
    plan = _plan()
    assert plan.unit == 2 and plan.finest == 100
    search = capacity.Search(plan, bench=None)  # type: ignore[arg-type]
    assert search._middle(1000, 1400) == 1200 and search._middle(1000, 1200) == 1100
    assert search._middle(1000, 1002) is None
    odd = _plan(steps="101:100:501")
    assert odd.unit == 1 and capacity.Search(odd, None)._middle(101, 201) == 151  # type: ignore[arg-type]
    rate = _plan("rate", "10:10:50")
    assert rate.count(10) == 10 * (10 + 2 + 60 + 5)
    # Every probe has fresh ids: the rising steps, then at most three halvings of a step,
    # and each failed probe tried once more.
    assert plan.ids_needed() == 200 + 600 + 1000 + 1400 + 1800 + 1800 + 3 * 2 * 1800
    assert "user ids from 1, at most 17600" in plan.describe()
    assert rate.probe_settings(12.5)["user_rate"] == 750
    assert plan.probe_settings(200)["interarrival"] == 10


def _result(load: float, ok: bool, **kw: object) -> capacity.Result:
    figures = {"messages_s": load * 20, "ttd_p99": 1.0 if ok else 30.0, "error_ratio": 0.0,
               "amoc_cpu": load / 20, "lag_p99": 1.0, "server_cpu": load / 10}  # fmt: skip
    failed = [] if ok else ["xmpp.ttd_ms.p99 < 5 (was 30 on node amoc)"]
    return capacity.Result(load, ok, failed, figures, **kw)  # type: ignore[arg-type]


def test_an_outcome_reads_as_a_table_and_a_verdict() -> None:
    plan = _plan()
    results = [_result(200, True), _result(600, True), _result(1000, False), _result(800, True)]
    results[2].retried = True
    out = capacity.Outcome(plan, 800, results[2], results)
    text = repr(out)
    assert text.splitlines()[1].split()[:3] == ["step", "load", "msgs/s"]
    verdict = "capacity: 800 users held; first limit: xmpp.ttd_ms.p99 < 5 (was 30 on node amoc)"
    assert f"{verdict} at 1000 users" in text and out.exit_code() == 0
    assert "failed, tried again: xmpp.ttd_ms.p99 < 5" in out.table()
    first = capacity.Outcome(plan, None, results[2], results[2:3])
    assert first.exit_code() == 1 and "the first step (1000 users) failed" in first.verdict()
    bound = _result(600, False, client_bound="client-bound: figures include ... (node amoc: ...)")
    starved = capacity.Outcome(plan, 200, bound, [results[0], bound], more_nodes=2)
    assert starved.client_bound and "first limit" not in starved.verdict()
    assert "at 600 users the load generator was saturated, not the server" in starved.verdict()
    assert "about 2 more amoc node(s)" in starved.verdict()
    assert math.isnan(capacity._mean([]))


class Scripted(capacity.Search):
    """The search's decisions over scripted steps: (ok, client-bound) by load, in order."""

    def __init__(self, plan: capacity.Plan, script: dict[float, list[tuple[bool, bool]]]):
        nothing: Any = None  # no runner: _probe is scripted
        super().__init__(plan, capacity.Bench(nothing, nothing, nothing, nothing, nothing))
        self.script = script

    def _probe(self, load: float) -> capacity.Result:
        ok, bound = self.script[load].pop(0)
        r = _result(load, ok, client_bound="client-bound: ..." if bound else None)
        self.results.append(r)
        return r


def test_the_search_rises_confirms_bisects_and_knows_the_load_generator() -> None:
    plan = _plan(steps="200:400:1800")  # finest 100
    clean, fail, starved = (True, False), (False, False), (False, True)
    out = Scripted(plan, {200: [clean], 600: [clean], 1000: [fail, fail], 800: [clean],
                          900: [fail, clean]}).run()  # fmt: skip
    assert (out.held, out.broke and out.broke.load) == (900, 1000) and not out.client_bound
    assert [r.load for r in out.results] == [200, 600, 1000, 1000, 800, 900, 900]
    # A step that fails while the load generator was short of CPU ends the rise: client-bound.
    out = Scripted(plan, {200: [clean], 600: [starved]}).run()
    assert out.client_bound and out.held == 200 and out.exit_code() == 0
    # In the bisection, the server's failure above it stands: a note, no client-bound verdict.
    out = Scripted(plan, {200: [clean], 600: [clean], 1000: [fail, fail], 800: [starved]}).run()
    assert not out.client_bound and (out.held, out.broke.load) == (600, 1000)  # type: ignore[union-attr]
    assert out.notes == ["the step at 800 was client-bound: the bisection stopped there"]
    # A failure tried again that comes back client-bound is still a failure.
    out = Scripted(plan, {200: [clean], 600: [fail, starved], 400: [clean], 500: [clean]}).run()
    assert (out.held, out.broke.load) == (500, 600)  # type: ignore[union-attr]
    out = Scripted(plan, {200: [fail, fail]}).run()
    assert out.held is None and out.exit_code() == 1
