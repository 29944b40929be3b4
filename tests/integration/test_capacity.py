"""`bin/amoc find-capacity` against the managed ejabberd: a limit this machine reaches (TTD
p99 under 25 ms while the message rate rises with the users) found by a search, and a
second search within 20% of it; the same search with the amoc node held to a tenth of a
core (a cgroup CPU quota) says client-bound, not a server limit; bad plans and thresholds
refused before any user starts.

The searched server is held to 0.7 of a core (a cgroup CPU quota), as a server under test
has cores of its own: on this 2-core machine an unheld ejabberd takes a core and a half at
1300 users, and the amoc node beside it then waits for a CPU (client-bound) before the
server's TTD breaks, which would leave nothing for the search to find."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.integration.xmpp_fixture import XmppServer, own_server

pytestmark = pytest.mark.integration

FIRST = 170_001
MOST = 1600
IDS = 19_500  # every step has fresh users: the plan needs at most this many ids
# The quota's period: a starved process waits up to 0.8 of it between its turns (400 ms:
# its loop lag is far above any bound, not near one).
PERIOD_US = 500_000
SERVER_SHARE = 0.7  # of one core, the searched server's quota
SERVER_PERIOD_US = 100_000  # held past its quota, it waits 30 ms: a TTD p99 over 25 ms


def search(
    release: Path, server: XmppServer, report: Path, *extra: str, prefix: list[str] | None = None
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """A search of xmpp_one_to_one (each user sends 10 messages a second) over
    100:300:1600 users (bisected to 50), holding each step 4 s, for a TTD p99 under 25 ms
    (past that the server saturates: the TTD climbs to hundreds of ms within one step, so
    noise on a shared machine moves the limit little); its output and capacity.json."""
    pid = int(server.state()["pid"])
    args = [
        *(prefix or []), str(release / "bin" / "amoc"), "--name", f"cap{os.getpid()}",
        "find-capacity", "xmpp_one_to_one", "--users", f"100:300:{MOST}", "--resolution", "50",
        "--first", str(FIRST),
        "--hold", "4s", "--settle", "1s", "--cooldown", "2s", "--arrival", "1000",
        "--report", str(report),
        "--thresholds", "xmpp.ttd_ms.p99 < 25",
        "--set", f"xmpp_port={server.port}", "--set", "xmpp_sasl=PLAIN",
        "--set", "messages_per_user=300", "--set", "message_interval=100",
        "--set", f"monitor_hosts=['local:{pid}']", *extra,
    ]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=400)
    print(f"\n{done.stdout}")  # the table and the verdict (pytest -s shows them)
    found = re.search(r"capacity report: (\S+)", done.stdout)
    assert found, (done.stdout, done.stderr)
    outcome = json.loads((Path(found.group(1)).parent / "capacity.json").read_text())
    return done, outcome


@pytest.fixture(scope="module")
def users() -> Iterator[XmppServer]:
    """An ejabberd of this module's own: a search overloads it on purpose, which must not
    reach the other tests' server (nor the next search: each of those has its own)."""
    with own_server(f"cap{os.getpid()}", mam=False) as server:
        server.register(FIRST, FIRST + IDS - 1)
        yield server


def test_a_search_finds_the_limit_and_a_second_lands_within_20_percent(
    release: Path, tmp_path: Path
) -> None:
    found = []
    for n in (1, 2):
        with own_server(f"cap{n}_{os.getpid()}", mam=False) as fresh:
            fresh.register(FIRST, FIRST + IDS - 1)
            with cpu_group(SERVER_SHARE, SERVER_PERIOD_US) as group:
                (group / "cgroup.procs").write_text(f"{fresh.state()['pid']}\n")
                done, outcome = search(release, fresh, tmp_path / str(n))
        assert done.returncode == 0, (done.stdout, done.stderr)
        assert not outcome["client_bound"], done.stdout
        assert outcome["held"] and outcome["broke"], done.stdout
        assert "xmpp.ttd_ms.p99 < 25" in outcome["broke"]["failed"][0], done.stdout
        assert outcome["held"] < outcome["broke"]["load"] <= outcome["held"] + 50, done.stdout
        steps = [s["load"] for s in outcome["steps"]]
        assert steps[0] == 100 and 400 in steps and all(s % 2 == 0 for s in steps)
        # The printed table and verdict, and the server's CPU measured on every step.
        assert re.search(r"^ +1 +100 ", done.stdout, re.M), done.stdout
        assert f"capacity: {outcome['held']:g} users held; first limit:" in done.stdout
        assert all(s["figures"]["server_cpu"] > 0 for s in outcome["steps"]), outcome
        found.append(outcome["held"])
    print(f"capacity found: {found[0]:g} then {found[1]:g} users")
    assert abs(found[1] - found[0]) <= 0.2 * found[0], found


@contextmanager
def cpu_group(share: float, period_us: int) -> Iterator[Path]:
    """A cgroup holding what is moved into it (its `cgroup.procs`) to `share` of one core
    (cgroup v2's cpu.max, else v1's cpu.cfs_quota_us); whatever is left in it when done
    goes back to the root group, and the group is removed."""
    v2 = Path("/sys/fs/cgroup/cpu.max")
    name = f"amoc_test_{os.getpid()}_{time.monotonic_ns()}"
    if Path("/sys/fs/cgroup/cgroup.controllers").exists() and v2.exists():
        group = Path("/sys/fs/cgroup") / name
        group.mkdir()
        (group / "cpu.max").write_text(f"{int(share * period_us)} {period_us}\n")
    else:
        group = Path("/sys/fs/cgroup/cpu") / name
        assert group.parent.is_dir(), "no cgroup CPU controller: cannot limit a process"
        group.mkdir()
        (group / "cpu.cfs_period_us").write_text(f"{period_us}\n")
        (group / "cpu.cfs_quota_us").write_text(f"{int(share * period_us)}\n")
    try:
        yield group
    finally:
        for pid in (group / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError):
                (group.parent / "cgroup.procs").write_text(f"{pid}\n")
        group.rmdir()


@contextmanager
def cpu_limited(share: float) -> Iterator[list[str]]:
    """A command prefix that runs a program with at most `share` of one core."""
    with cpu_group(share, PERIOD_US) as group:
        yield ["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$@"', "limited"]


def test_a_search_whose_amoc_node_is_starved_says_client_bound(
    release: Path, users: XmppServer, tmp_path: Path
) -> None:
    with cpu_limited(0.1) as prefix:
        done, outcome = search(release, users, tmp_path, prefix=prefix)
    assert outcome["client_bound"], done.stdout
    assert "the load generator was saturated, not the server" in done.stdout, done.stdout
    assert "client-bound: figures include the load generator's delay (node cap" in done.stdout
    assert "first limit:" not in done.stdout  # no false server limit
    assert outcome["more_nodes"] >= 1 and "more amoc node" in done.stdout
    assert done.returncode == (0 if outcome["held"] else 1)
    # The step's own report says so too, naming the node.
    index = Path(outcome["steps"][-1]["report"])
    summary = json.loads((index.parent / "summary.json").read_text())
    assert summary["client_bound"].startswith("client-bound: figures include"), summary
    assert 'id="client-bound"' in index.read_text()


def test_a_starved_headless_run_says_client_bound_in_its_summary(
    release: Path, users: XmppServer, tmp_path: Path
) -> None:
    with cpu_limited(0.1) as prefix:
        done = subprocess.run(
            [*prefix, str(release / "bin" / "amoc"), "--name", f"run{os.getpid()}", "run",
             "xmpp_one_to_one", "--users", "400", "--first", str(FIRST), "--duration", "12",
             "--rate", "1000", "--report", str(tmp_path), "--max-error-ratio", "1",
             "--set", f"xmpp_port={users.port}", "--set", "xmpp_sasl=PLAIN",
             "--set", "messages_per_user=300", "--set", "message_interval=100"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == 0, (done.stdout, done.stderr)
    line = "client-bound: figures include the load generator's delay (node run"
    assert line in done.stdout and f"amoc: {line}" in done.stderr, (done.stdout, done.stderr)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--users", "400:0:800"], "--users '400:0:800': the plan does not rise"),
        (["--users", "800:100:400"], "the plan does not rise"),
        (["--users", "100:100"], "expected START:STEP:MAX"),
        (["--users", "100:100:400", "--thresholds", "xmpp.tdd_ms.p99 < 5"],
         "unknown metric 'xmpp.tdd_ms.p99' (did you mean 'xmpp.ttd_ms.p99'?)"),
        (["--users", "100:100:400", "--thresholds", "server.cpu < 90"],
         "server metric needs monitor_hosts"),
        (["--users", "100:100:400", "--hold", "soon"], "--hold 'soon'"),
        (["--users", "100:100:400", "--set", "monitor_hosts=['snmp:h']"],
         "unknown monitor kind 'snmp'"),
    ],
)  # fmt: skip
def test_bad_searches_are_refused_before_any_user_starts(
    release: Path, tmp_path: Path, args: list[str], says: str
) -> None:
    done = subprocess.run(
        [str(release / "bin" / "amoc"), "--name", f"bad{os.getpid()}", "find-capacity", "dummy",
         "--report", str(tmp_path), *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert says in done.stderr, done.stderr
    assert not list(tmp_path.iterdir())  # no step ran
