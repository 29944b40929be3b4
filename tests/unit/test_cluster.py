"""The cluster's pure parts: id placement, message frames, key files, scenario shipping."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import msgpack
import pytest

from amoc.cluster import dispatch, keys
from amoc.cluster import settings as cluster_settings
from amoc.cluster.ids import from_runs, to_runs
from amoc.cluster.placement import Plan, RunMeta
from amoc.cluster.protocol import MAX_FRAME, Op, ProtocolError, decode, encode
from amoc.cluster.slave import SlaveLink
from amoc.config import Config
from amoc.errors import AmocError, ConfigError
from amoc.runner import Controller

pytestmark = pytest.mark.unit

NODES = {"a": 1.0, "b": 1.0, "c": 1.0}


def test_round_robin_places_id_by_id_and_continues() -> None:
    assert dispatch.round_robin([1, 2, 3, 4, 5], NODES) == {"a": [1, 4], "b": [2, 5], "c": [3]}
    # add() continues the rotation after the 5 ids already placed: 6 goes to c.
    assert dispatch.round_robin([6, 7], NODES, offset=5) == {"a": [7], "b": [], "c": [6]}


def test_weighted_follows_capacity_without_bursts() -> None:
    placed = dispatch.weighted(list(range(1, 31)), {"big": 2.0, "small": 1.0})
    assert (len(placed["big"]), len(placed["small"])) == (20, 10)
    order = sorted((uid, n) for n, ids in placed.items() for uid in ids)
    runs = "".join("B" if n == "big" else "s" for _, n in order)
    assert "BBB" not in runs and "ss" not in runs  # interleaved, never in bursts
    whole = dispatch.weighted(list(range(1, 31)), {"big": 2.0, "small": 1.0})
    first = dispatch.weighted(list(range(1, 11)), {"big": 2.0, "small": 1.0})
    rest = dispatch.weighted(list(range(11, 31)), {"big": 2.0, "small": 1.0}, offset=10)
    assert {n: first[n] + rest[n] for n in whole} == whole


def test_strategies_are_named_and_pluggable() -> None:
    with pytest.raises(AmocError, match="unknown distribution strategy 'x'; known: round_robin"):
        dispatch.get("x")
    with pytest.raises(AmocError, match="no slave node"):
        dispatch.round_robin([1], {})

    def everything_on_the_last(ids: list[int], nodes: dict[str, float], offset: int = 0) -> dict:
        return {name: (list(ids) if name == list(nodes)[-1] else []) for name in nodes}

    dispatch.register("last", everything_on_the_last)
    try:
        assert dispatch.get("last")([1, 2], NODES, 0) == {"a": [], "b": [], "c": [1, 2]}
    finally:
        del dispatch.STRATEGIES["last"]


def test_frames_round_trip_and_bad_ones_are_refused() -> None:
    msg = decode(encode(Op.HEARTBEAT, name="n1", status={"state": "idle"}))
    assert msg["op"] is Op.HEARTBEAT and msg["name"] == "n1"
    with pytest.raises(ProtocolError, match="not msgpack"):
        decode(b"\xc1")
    with pytest.raises(ProtocolError, match="not a map"):
        decode(msgpack.packb([1, 2]))
    with pytest.raises(ProtocolError, match="unknown op 'nope'"):
        decode(msgpack.packb({"op": "nope"}))
    with pytest.raises(ProtocolError, match="exceeds"):
        decode(b"x" * (MAX_FRAME + 1))


def test_keys_are_made_once_and_missing_ones_named(tmp_path: Path) -> None:
    written = keys.generate(tmp_path / "k")
    assert sorted(p.name for p in written) == [
        "master.key",
        "master.key_secret",
        "node.key",
        "node.key_secret",
    ]
    assert (tmp_path / "k" / "node.key_secret").stat().st_mode & 0o077 == 0
    assert keys.load(tmp_path / "k", "node", secret=True).secret
    with pytest.raises(ConfigError, match="exists; use --force"):
        keys.generate(tmp_path / "k")
    with pytest.raises(ConfigError, match=r"master.key_secret is missing: make the keys"):
        keys.load(tmp_path / "nowhere", "master", secret=True)


async def test_a_slave_takes_the_masters_source_unless_it_has_the_same(tmp_path: Path) -> None:
    bundled, uploaded = tmp_path / "scenarios", tmp_path / "uploaded"
    bundled.mkdir()
    mine = "async def start(user_id):\n    pass\n"
    (bundled / "s.py").write_text(mine)
    config = Config(environ={})
    config.declare(cluster_settings.PARAMETERS)
    ctl = Controller([bundled], config)
    link = SlaveLink("n", ctl, ctl.config, tmp_path / "keys", uploaded)
    link._scenario("s", mine, sha(mine))
    assert not (uploaded / "s.py").exists()  # the node's own copy hashes the same
    theirs = "import asyncio\n\nasync def start(user_id):\n    await asyncio.sleep(0)\n"
    loaded = link._scenario("s", theirs, sha(theirs))
    assert (uploaded / "s.py").read_text() == theirs and loaded.name == "s"
    with pytest.raises(ProtocolError, match="does not match its hash"):
        link._scenario("s", theirs, "0" * 64)
    with pytest.raises(AmocError, match="does not compile"):
        link._scenario("s", "def start(:\n", sha("def start(:\n"))
    await asyncio.sleep(0)
    await ctl.close()


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_id_sets_travel_as_runs_and_bad_runs_are_refused() -> None:
    assert from_runs(to_runs([1, 4, 7, 10, 2, 5])) == [1, 2, 4, 5, 7, 10]
    every_third = list(range(2, 60_000, 3))
    assert to_runs(every_third) == [[2, 3, len(every_third)]]
    assert from_runs(to_runs(every_third)) == every_third
    assert to_runs([]) == [] and from_runs([]) == []
    for ids in ([5], [1, 2, 3, 9, 10, 11, 20], [3, 1, 2, 100, 7]):
        assert from_runs(to_runs(ids)) == sorted(ids)
    for bad in ([[1, 2]], [[0, 1, 1]], [[1, 0, 5]], [[1, True, 2]], "1-5", [[1, 1, 20_000_000]]):
        with pytest.raises(ProtocolError):
            from_runs(bad)


def test_a_plan_places_removes_loses_and_adopts() -> None:
    meta = RunMeta.new("s", "d" * 64, {}, "c", "round_robin", None, True, 7)
    plan = Plan(meta, "source")
    assert plan.place([1, 2, 3, 4, 5, 6], NODES) == {"a": [1, 4], "b": [2, 5], "c": [3, 6]}
    v_a = plan.versions["a"]
    assert plan.take_newest(2, ["a", "b"]) == {"a": [4], "b": [5]}
    assert plan.versions["a"] > v_a and plan.placed() == 4
    assert plan.lose("c") == [3, 6] and plan.placed() == 2 and plan.lost == {3: "c", 6: "c"}
    assert plan.restore("c") == [3, 6] and plan.ids("c") == [3, 6]
    assert plan.behind("a", meta.run_id, plan.versions["a"] - 1)
    assert not plan.behind("a", meta.run_id, plan.versions["a"])
    assert plan.behind("a", None, 0) and not plan.behind("zz", None, 0)
    assert plan.behind("zz", "another-run", 3)
    reports = {n: (RunMeta.from_dict(meta.to_dict()), plan.ids(n), plan.versions[n]) for n in "abc"}
    adopted = Plan.adopt(reports, "source")
    assert adopted.desired == plan.desired and adopted.meta.comment == "c"
    assert adopted.meta.rebalance and adopted.meta.next_id == 7
    with pytest.raises(ProtocolError, match="rebalance"):
        RunMeta.from_dict({**meta.to_dict(), "rebalance": "yes"})
