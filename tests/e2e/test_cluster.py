"""The cluster from the release: a master console, three slave processes, CURVE keys."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import zmq
import zmq.auth

from tests.e2e.cluster import Cluster
from tests.e2e.terminal import Terminal, amoc
from tests.wait import wait_until

pytestmark = pytest.mark.e2e


def test_round_robin_add_remove_and_config(cluster: Cluster) -> None:
    term = cluster.start_master()
    for i in (1, 2, 3):  # one at a time: join order is placement order
        cluster.start_slave(i)
        wait_until(lambda i=i: cluster.node(i) in cluster.up(), f"slave {i} to join", 15, every=0.1)
    assert cluster.up() == [cluster.node(1), cluster.node(2), cluster.node(3)]

    out = term.run('amoc_dist.do("dummy", 1, 9, comment="baseline")')
    assert out.startswith("running dummy: 9 placed"), out
    term.wait('amoc_dist.status()["users"]["running"]', lambda n: n == 9)
    expected = {1: [1, 4, 7], 2: [2, 5, 8], 3: [3, 6, 9]}
    for i, ids in expected.items():
        assert cluster.slave_users(i) == ids
    assert term.value("amoc_dist.placement()") == {cluster.node(i): v for i, v in expected.items()}

    term.run("amoc_dist.add(4)")  # ids 10..13 continue the rotation: s1, s2, s3, s1
    term.wait('amoc_dist.status()["users"]["running"]', lambda n: n == 13)
    assert cluster.slave_users(1) == [1, 4, 7, 10, 13]
    assert cluster.slave_users(2) == [2, 5, 8, 11]
    assert cluster.slave_users(3) == [3, 6, 9, 12]

    out = term.run("amoc_dist.remove(2, force=True)")  # 13 on s1, 12 on s3, killed now
    assert out.startswith("removed 2 users (force)"), out
    assert cluster.slave_users(1) == [1, 4, 7, 10]
    assert cluster.slave_users(3) == [3, 6, 9]

    # Gentle: a user in its (long) start is not cut short; it just does not start again.
    term.run("amoc_dist.remove(1)")  # 11 on s2
    assert cluster.slave_users(2) == [2, 5, 8]
    status = term.value('amoc_dist.status()["users"]')
    assert isinstance(status, dict) and status["placed"] == 10

    # Run-time config reaches every slave.
    term.run('amoc_config.set("repeat_interval", 1234)')  # not in the environment
    for i in (1, 2, 3):
        term2 = Terminal(cluster.release, ["--name", cluster.name(i), "attach"], {})
        try:
            wait_until(
                lambda t=term2: t.value('amoc_config.get("repeat_interval")') == 1234,
                "config",
                10,
                every=0.1,
            )
        finally:
            term2.leave()

    # Bad commands: clear errors, the run goes on.
    assert "only 10 are placed" in term.run("amoc_dist.remove(50)")
    assert "runs on the cluster" in term.run('amoc_dist.do("dummy", 1, 2)')
    assert term.value('amoc_dist.status()["users"]["placed"]') == 10
    term.run("amoc_dist.stop()")
    term.wait('amoc_dist.status()["users"]["running"]', lambda n: n == 0)
    assert "need 1 <= first <= last" in term.run('amoc_dist.do("dummy", 5, 2)')
    assert "unknown nodes" in term.run('amoc_dist.do("dummy", 1, 3, nodes=["nope"])')
    assert "not found" in term.run('amoc_dist.do("no_such_scenario", 1, 3)')


def test_weighted_strategy_and_restricted_nodes(cluster: Cluster) -> None:
    term = cluster.start_master()
    for i in (1, 2):
        cluster.start_slave(i)
        wait_until(lambda i=i: cluster.node(i) in cluster.up(), f"slave {i} to join", 15, every=0.1)
    out = term.run(f'amoc_dist.do("dummy", 1, 4, nodes=["{cluster.node(2)}"])')
    assert out.startswith("running dummy: 4 placed"), out
    term.wait('amoc_dist.status()["users"]["running"]', lambda n: n == 4)
    assert cluster.slave_users(2) == [1, 2, 3, 4]
    assert cluster.slave_users(1) == []
    term.run("amoc_dist.stop()")
    term.wait('amoc_dist.status()["users"]["running"]', lambda n: n == 0)
    assert "unknown distribution strategy 'nope'" in term.run(
        'amoc_dist.do("dummy", 1, 2, strategy="nope")'
    )


def test_a_killed_slave_is_marked_down_and_its_users_rebalanced(cluster: Cluster) -> None:
    term = cluster.start_master()
    for i in (1, 2, 3):
        cluster.start_slave(i)
        wait_until(lambda i=i: cluster.node(i) in cluster.up(), f"slave {i} to join", 15, every=0.1)
    term.run('amoc_dist.do("dummy", 1, 30, rebalance=True)')
    term.wait('amoc_dist.status()["users"]["running"]', lambda n: n == 30)
    victim = cluster.slave_pid(3)
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_until(
        lambda: cluster.node(3) not in cluster.up(),
        "the killed slave to be marked down",
        10,
        every=0.1,
    )
    assert time.monotonic() - killed_at < 5
    cluster.slaves.remove(cluster.name(3))
    term.wait('amoc_dist.status()["users"]["running"]', lambda n: n == 30, timeout=15)
    placement = term.value("amoc_dist.placement()")
    assert isinstance(placement, dict) and set(placement) == {cluster.node(1), cluster.node(2)}
    assert sorted(placement[cluster.node(1)] + placement[cluster.node(2)]) == list(range(1, 31))
    assert sorted(cluster.slave_users(1) + cluster.slave_users(2)) == list(range(1, 31))
    assert term.value('metrics.show()["cluster.users.lost"]') == 10
    assert f"node {cluster.node(3)} is down" in cluster.log(f"{cluster.tag}m")

    # A slave that joins mid-run is used by add.
    cluster.start_slave(4)
    wait_until(lambda: cluster.node(4) in cluster.up(), "slave 4 to join", 15, every=0.1)
    term.run("amoc_dist.add(3)")
    term.wait('amoc_dist.status()["users"]["running"]', lambda n: n == 33)
    assert len(cluster.slave_users(4)) == 1


def test_master_restart_keeps_the_users(cluster: Cluster) -> None:
    term = cluster.start_master()
    for i in (1, 2):
        cluster.start_slave(i)
        wait_until(lambda i=i: cluster.node(i) in cluster.up(), f"slave {i} to join", 15, every=0.1)
    term.run('amoc_dist.do("dummy", 1, 10)')
    term.wait('amoc_dist.status()["users"]["running"]', lambda n: n == 10)
    term.leave()  # the master stops; slaves keep their users
    assert cluster.slave_users(1) == [1, 3, 5, 7, 9]
    term = cluster.start_master()
    wait_until(lambda: len(cluster.up()) == 2, "slaves to find the new master", 15, every=0.1)
    term.wait('amoc_dist.status()["users"]["placed"]', lambda n: n == 10)
    assert term.value('amoc_dist.status()["scenario"]') == "dummy"
    term.run("amoc_dist.add(2)")  # continues with ids 11, 12
    term.wait('amoc_dist.status()["users"]["running"]', lambda n: n == 12)
    assert sorted(cluster.slave_users(1) + cluster.slave_users(2)) == list(range(1, 13))


def test_wrong_keys_and_bad_messages_are_refused(cluster: Cluster, tmp_path: Path) -> None:
    term = cluster.start_master()
    cluster.start_slave(1)
    wait_until(lambda: cluster.node(1) in cluster.up(), "slave 1 to join", 15, every=0.1)
    # An intruder knows the master's public key but not the cluster's node key.
    other = tmp_path / "other"
    assert amoc(cluster.release, "keys", str(other)).returncode == 0
    shutil.copy(cluster.keys / "master.key", other / "master.key")
    cluster.start_slave(9, keys=other)
    wait_until(
        lambda: "refused a node with an unknown CURVE key" in cluster.log(f"{cluster.tag}m"),
        "the refusal in the master's log",
        10,
        every=0.1,
    )
    wait_until(
        lambda: "refused this node's key" in cluster.log(cluster.name(9)),
        "the slave's log",
        10,
        every=0.1,
    )
    names = term.value('[n["name"] for n in nodes()]')
    assert isinstance(names, list) and cluster.node(9) not in names

    # A holder of the keys that sends garbage and an oversized frame: dropped, logged.
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    secret = zmq.auth.load_certificate(cluster.keys / "node.key_secret")
    sock.curve_publickey, sock.curve_secretkey = secret
    sock.curve_serverkey = zmq.auth.load_certificate(cluster.keys / "master.key")[0]
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(cluster.endpoint)
    try:
        sock.send(b"\xc1 not msgpack")
        sock.send(b"\x93\x01\x02\x03")  # a list, not a map
        sock.send(b"x" * (9 << 20))
        wait_until(
            lambda: "dropped a control message" in cluster.log(f"{cluster.tag}m"),
            "the drop",
            10,
            every=0.1,
        )
    finally:
        sock.close(0)
        ctx.term()
    term.run('amoc_dist.do("dummy", 1, 2)')
    term.wait('amoc_dist.status()["users"]["running"]', lambda n: n == 2)


def test_a_headless_run_on_a_master_drives_the_slaves_and_judges_the_cluster(
    cluster: Cluster, tmp_path: Path
) -> None:
    for i in (1, 2):
        cluster.start_slave(i)
    env = {**cluster.env("master"), "AMOC_DUMMY_WAIT": "100", "AMOC_REPEAT_INTERVAL": "100"}
    args = ["--name", f"{cluster.tag}h", "run", "dummy", "--users", "6", "--duration", "3"]
    passed = amoc(cluster.release, *args, "--slaves", "2", "--threshold", "users.started >= 6",
                  "--report", str(tmp_path / "reports"), env=env)  # fmt: skip
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "on 2 slaves: 6 users placed, 6 started" in passed.stdout, passed.stdout
    assert list((tmp_path / "reports").glob("*-dummy/index.html")), passed.stdout
    # The slaves ran it and stopped it: idle again, and a failed threshold exits 1.
    failed = amoc(cluster.release, *args, "--slaves", "2", "--threshold",
                  "users.started >= 100", env=env)  # fmt: skip
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "users.started" in failed.stderr and "100" in failed.stderr, failed.stderr
    assert cluster.slave_users(1) == [] and cluster.slave_users(2) == []
