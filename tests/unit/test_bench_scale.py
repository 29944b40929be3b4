"""bench/bench_scale.py refuses a load this machine cannot hold before it starts anything,
and says why and how many users it can do."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_scale.py"


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=30,
        check=False,
    )  # fmt: skip


def test_too_few_processes_for_the_open_file_limit_is_refused_with_the_count_needed() -> None:
    out = bench("--users", "100000", "--slaves", "2", "--server-nodes", "2")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "cannot run 100000 users" in out.stderr
    assert "amoc slave node" in out.stderr and "ejabberd node" in out.stderr
    assert "open" in out.stderr and "--slaves " in out.stderr and "--server-nodes " in out.stderr
    assert "it can do at most" in out.stderr and "nothing was started" in out.stderr
    assert out.stdout == ""


def test_more_users_than_memory_holds_is_refused_with_the_most_it_can_do() -> None:
    out = bench("--users", "100000000")
    assert out.returncode == 2
    assert "GiB" in out.stderr and "available" in out.stderr
    most = int(out.stderr.rsplit("(--users ", 1)[1].split(")")[0])
    assert 0 < most < 100_000_000


def test_one_source_address_limits_the_connections_to_each_server_port() -> None:
    out = bench("--users", "60000", "--server-nodes", "2", "--slaves", "4")
    assert out.returncode == 2
    assert "ephemeral ports" in out.stderr and "--source-addresses" in out.stderr


def test_an_odd_user_count_is_refused() -> None:
    out = bench("--users", "2001")
    assert out.returncode == 2 and "even" in out.stderr
