"""Master and slaves in one process over inproc:// with CURVE: placement, loss, rebalance,
restarts, adoption, duplicate names, oversized snapshots. After every kill and restart the
counts must agree: ids placed per node = users running there = what the master reports."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from amoc import metrics
from amoc.cluster import keys
from amoc.cluster import settings as cluster_settings
from amoc.cluster.master import Master
from amoc.cluster.slave import SlaveLink
from amoc.config import Config
from amoc.runner import Controller
from tests.net import free_port

pytestmark = pytest.mark.unit

HOLD = '''"""Each user holds until stopped."""

import asyncio

from amoc.config import param

PARAMETERS = [param("hold_note", "", "a note that travels with the run")]


async def start(user_id: int) -> None:
    await asyncio.sleep(3600)
'''

_endpoints = itertools.count(1)


def _config(endpoint: str, role: str) -> Config:
    config = Config(
        environ={
            "AMOC_CLUSTER_ROLE": role,
            "AMOC_CLUSTER_BIND": endpoint,
            "AMOC_CLUSTER_MASTER": endpoint,
            "AMOC_CLUSTER_HEARTBEAT": "50",
            "AMOC_CLUSTER_DOWN_AFTER": "400",
            "AMOC_INTERARRIVAL": "0",
        }
    )
    config.declare(cluster_settings.PARAMETERS)
    return config


@dataclass
class Slave:
    name: str
    controller: Controller
    link: SlaveLink


@dataclass
class Bench:
    """A master and slaves in this loop."""

    tmp: Path
    endpoint: str
    keys: Path
    scenarios: Path
    master: Master | None = None
    slaves: dict[str, Slave] = field(default_factory=dict)
    gone: list[Slave] = field(default_factory=list)

    async def start_master(self) -> Master:
        self.master = Master(_config(self.endpoint, "master"), self.keys, [self.scenarios])
        await self.master.start()
        return self.master

    async def start_slave(self, name: str, keys_dir: Path | None = None) -> Slave:
        config = _config(self.endpoint, "slave")
        controller = Controller([self.scenarios], config)
        uploaded = self.tmp / f"uploaded-{name}-{len(self.gone)}"
        link = SlaveLink(name, controller, config, keys_dir or self.keys, uploaded)
        await link.start()
        slave = self.slaves[name] = Slave(name, controller, link)
        return slave

    async def kill(self, name: str) -> None:
        """The process dies: its users with it."""
        slave = self.slaves.pop(name)
        await slave.link.stop()
        await slave.controller.close()
        self.gone.append(slave)

    async def pause(self, name: str) -> None:
        """SIGSTOP: silent, its users kept (they run again on resume)."""
        await self.slaves[name].link.stop()

    async def resume(self, name: str) -> None:
        old = self.slaves[name]
        link = SlaveLink(name, old.controller, old.link.config, self.keys, old.link.uploaded_dir)
        link.instance, link.meta, link.version = old.link.instance, old.link.meta, old.link.version
        link.placed, link.source = old.link.placed, old.link.source
        await link.start()
        old.link = link

    async def close(self) -> None:
        for slave in list(self.slaves.values()):
            await slave.link.stop()
            await slave.controller.close()
        for slave in self.gone:
            await slave.controller.close()
        if self.master is not None:
            await self.master.close()

    def ids(self, name: str) -> list[int]:
        return self.slaves[name].controller.user_ids()


async def until(predicate: Callable[[], Any], what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


def agreed(bench: Bench) -> bool:
    """Placed per node = running per node (as the slave runs it and as the master heard)."""
    master = bench.master
    assert master is not None
    status = master.status()
    placement = master.placement()
    total = 0
    for view in status.node:
        if not view.up:
            continue  # a paused node's users are frozen: not counted, not placed
        slave = bench.slaves.get(view.name)
        running = slave.controller.user_ids() if slave else []
        if placement.get(view.name, []) != running or view.running != len(running):
            return False
        total += len(running)
    return status.users.placed == status.users.running == total


async def settled(bench: Bench, placed: int, timeout: float = 10.0) -> None:
    await until(
        lambda: agreed(bench) and bench.master is not None
        and bench.master.status().users.placed == placed,
        f"{placed} users placed and running, in agreement",
        timeout,
    )  # fmt: skip


@pytest.fixture
async def bench(tmp_path: Path) -> AsyncIterator[Bench]:
    keys.generate(tmp_path / "keys")
    scenarios = tmp_path / "scenarios"
    scenarios.mkdir()
    (scenarios / "hold.py").write_text(HOLD)
    b = Bench(tmp_path, f"inproc://amoc-test-{next(_endpoints)}", tmp_path / "keys", scenarios)
    try:
        yield b
    finally:
        await b.close()
        metrics.REGISTRY.reset()


async def three(bench: Bench) -> Master:
    master = await bench.start_master()
    for name in ("s1", "s2", "s3"):  # one at a time: join order is placement order
        await bench.start_slave(name)
        await until(lambda name=name: name in master.registry.up(), f"{name} to join")
    return master


async def test_do_add_remove_place_absolute_sets(bench: Bench) -> None:
    master = await three(bench)
    status = await master.do("hold", 1, 9, {"hold_note": "n1"}, "baseline")
    assert status.state == "running" and status.users.placed == 9
    await settled(bench, 9)
    assert [bench.ids(n) for n in ("s1", "s2", "s3")] == [[1, 4, 7], [2, 5, 8], [3, 6, 9]]
    await master.add(4)  # the rotation goes on: 10 s1, 11 s2, 12 s3, 13 s1
    await settled(bench, 13)
    assert bench.ids("s1") == [1, 4, 7, 10, 13]
    removal = await master.remove(2, force=True)
    assert removal.removed == {"s1": [13], "s3": [12]} and removal.count == 2
    await settled(bench, 11)
    assert bench.slaves["s2"].controller.config.get("hold_note") == "n1"
    with pytest.raises(Exception, match="runs on the cluster"):
        await master.do("hold", 1, 2)
    final = await master.stop()
    assert final.users.placed == 11
    await until(lambda: all(not bench.ids(n) for n in bench.slaves), "every user to stop")
    assert master.status().state == "idle"


async def test_a_dead_slave_is_rebalanced_and_its_restart_gets_nothing_twice(
    bench: Bench,
) -> None:
    master = await three(bench)
    await master.do("hold", 1, 30, rebalance=True)
    await settled(bench, 30)
    await bench.kill("s3")
    await until(lambda: "s3" not in master.registry.up(), "s3 to be marked down")
    await settled(bench, 30)
    assert sorted(bench.ids("s1") + bench.ids("s2")) == list(range(1, 31))
    assert master.status().users.lost == 0
    # s3 comes back as a new process: it runs nothing, and is given nothing twice.
    await bench.start_slave("s3")
    await until(lambda: "s3" in master.registry.up(), "s3 to join again")
    await asyncio.sleep(0.3)
    await settled(bench, 30)
    every = bench.ids("s1") + bench.ids("s2") + bench.ids("s3")
    assert sorted(every) == list(range(1, 31))
    await master.add(3)  # the newcomer takes its share again
    await settled(bench, 33)
    assert len(bench.ids("s3")) == 1


async def test_a_paused_slave_is_lost_then_found_again(bench: Bench) -> None:
    master = await three(bench)
    await master.do("hold", 1, 12)
    await settled(bench, 12)
    await bench.pause("s2")
    await until(lambda: master.status().users.lost == 4, "s2's users to be lost")
    assert master.status().users.placed == 8
    await bench.resume("s2")
    await settled(bench, 12)
    assert bench.ids("s2") == [2, 5, 8, 11] and master.status().users.lost == 0


async def test_a_paused_slave_whose_users_moved_drops_them_on_return(bench: Bench) -> None:
    master = await three(bench)
    await master.do("hold", 1, 12, rebalance=True)
    await settled(bench, 12)
    await bench.pause("s2")
    await until(lambda: "s2" not in master.registry.up(), "s2 to be marked down")
    await settled(bench, 12)
    await bench.resume("s2")
    await until(lambda: "s2" in master.registry.up(), "s2 back")
    await settled(bench, 12)
    every = bench.ids("s1") + bench.ids("s2") + bench.ids("s3")
    assert sorted(every) == list(range(1, 13)) and bench.ids("s2") == []


async def test_a_quick_restart_gets_its_users_back(bench: Bench) -> None:
    master = await three(bench)
    await master.do("hold", 1, 9)
    await settled(bench, 9)
    await bench.kill("s1")
    await bench.start_slave("s1")  # before the master marks it down
    await settled(bench, 9)
    assert bench.ids("s1") == [1, 4, 7]


async def test_a_restarted_master_adopts_the_whole_run_and_slave_restarts_converge(
    bench: Bench,
) -> None:
    master = await three(bench)
    await master.do("hold", 1, 9, {"hold_note": "kept"}, "the comment", rebalance=True)
    await settled(bench, 9)
    master.config.set("repeat_interval", 4321)  # a run-time change, broadcast
    await until(
        lambda: all(s.controller.config.get("repeat_interval") == 4321
                    for s in bench.slaves.values()),
        "the change on every slave",
    )  # fmt: skip
    await master.close()
    master = await bench.start_master()
    await until(lambda: master.plan is not None, "the run to be adopted")
    status = master.status()
    assert (status.scenario, status.comment, status.rebalance) == ("hold", "the comment", True)
    assert master.plan is not None and master.plan.meta.settings == {"hold_note": "kept"}
    assert master.config.get("repeat_interval") == 4321
    await settled(bench, 9)
    # Then a slave dies and comes back: placed = running everywhere, add and remove exact.
    await bench.kill("s2")
    await until(lambda: "s2" not in master.registry.up(), "s2 down")
    await settled(bench, 9)
    await bench.start_slave("s2")
    await until(lambda: "s2" in master.registry.up(), "s2 back")
    await master.add(3)
    await settled(bench, 12)
    assert sorted(bench.ids("s1") + bench.ids("s2") + bench.ids("s3")) == list(range(1, 13))
    removal = await master.remove(2)
    assert removal.count == 2
    await settled(bench, 10)
    assert bench.slaves["s2"].controller.config.get("repeat_interval") == 4321


async def test_a_second_node_with_the_same_name_is_refused(
    bench: Bench, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    master = await bench.start_master()
    first = await bench.start_slave("s1")
    await until(lambda: "s1" in master.registry.up(), "s1 to join")
    await master.do("hold", 1, 4)
    await settled(bench, 4)
    twin_config = _config(bench.endpoint, "slave")
    twin_ctl = Controller([bench.scenarios], twin_config)
    twin = SlaveLink("s1", twin_ctl, twin_config, bench.keys, bench.tmp / "twin")
    await twin.start()
    try:
        await until(
            lambda: first.link.refused is not None or twin.refused is not None,
            "one of the two to be refused",
        )
        assert "two nodes call themselves s1" in caplog.text
        survivor = first if twin.refused is not None else None
        refused_ctl = twin_ctl if twin.refused is not None else first.controller
        assert "another node named s1" in (twin.refused or first.link.refused or "")
        await until(lambda: not refused_ctl.user_ids(), "the refused node to run nothing")
        if survivor is not None:
            await settled(bench, 4)
        else:  # the newcomer took the name: the run is placed on it
            bench.slaves["s1"] = Slave("s1", twin_ctl, twin)
            await settled(bench, 4)
    finally:
        await twin.stop()
        await twin_ctl.close()


async def test_a_snapshot_too_large_for_a_frame_travels_in_parts(bench: Bench) -> None:
    master = await bench.start_master()
    slave = await bench.start_slave("s1")
    slave.link.frame_limit = 8 << 10
    for k in range(400):
        metrics.counter(f"big.counter_{k:03d}").inc(k)
    await until(
        lambda: (
            "s1" in master.registry.up()
            and len(master.nodes["s1"].snapshot.get("counters", {})) >= 400
        ),
        "every counter on the master",
    )
    assert master.nodes["s1"].snapshot["counters"]["big.counter_399"] == 399
    assert master.registry.up() == ["s1"]


async def test_a_heartbeat_that_fails_is_logged_and_tried_again(
    bench: Bench, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.WARNING)
    master = await bench.start_master()
    slave = await bench.start_slave("s1")
    real = slave.link.frames
    failures = iter([RuntimeError("boom"), RuntimeError("boom again")])

    def flaky() -> Any:
        fail = next(failures, None)
        if fail is not None:
            raise fail
        return real()

    monkeypatch.setattr(slave.link, "frames", flaky)
    await until(lambda: "s1" in master.registry.up(), "s1 to join after the failures")
    assert "a heartbeat could not be sent (trying again): boom" in caplog.text


async def test_a_node_with_other_keys_says_so_after_a_bounded_wait(
    bench: Bench, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    bench.endpoint = f"tcp://127.0.0.1:{free_port()}"  # inproc bypasses CURVE: tcp here
    master = await bench.start_master()
    other = bench.tmp / "other-keys"
    keys.generate(other)
    config = _config(bench.endpoint, "slave")
    ctl = Controller([bench.scenarios], config)
    link = SlaveLink("stranger", ctl, config, other, bench.tmp / "stranger")
    link.answer_wait = 0.5
    await link.start()
    try:
        await until(lambda: "wrong keys?" in caplog.text, "the slave's warning")
        await until(lambda: "failed the CURVE handshake" in caplog.text, "the master's warning")
        assert "stranger" not in master.nodes
    finally:
        await link.stop()
        await ctl.close()
