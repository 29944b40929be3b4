"""The cluster's configuration parameters."""

from __future__ import annotations

from typing import Any

from amoc.config import Param, non_negative_ms, optional_text


def _role(value: Any) -> str:
    if not isinstance(value, str) or value.strip().lower() not in ("local", "master", "slave"):
        raise ValueError(f"must be 'local', 'master' or 'slave', got {value!r}")
    return value.strip().lower()


def _endpoint(value: Any) -> str:
    """tcp://host:port between machines; ipc:// or inproc:// (one process) also work."""
    ok = isinstance(value, str) and (
        (value.startswith("tcp://") and ":" in value[6:])
        or (value.startswith(("ipc://", "inproc://")) and len(value.split("://", 1)[1]) > 0)
    )
    if not ok:
        raise ValueError(f"must be a ZeroMQ endpoint like 'tcp://127.0.0.1:4200', got {value!r}")
    return str(value)


def _capacity(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"must be a number > 0, got {value!r}")
    return float(value)


def _positive_ms(value: Any) -> float:
    value = non_negative_ms(value)
    if value < 50:
        raise ValueError("must be at least 50 ms")
    return float(value)


def _skew(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or abs(value) > 3_600_000:
        raise ValueError(f"must be a number of ms within an hour either way, got {value!r}")
    return float(value)


# All read once, when the node starts: a change needs a restart.
PARAMETERS: tuple[Param, ...] = (
    Param("cluster_role", "local", "local (no cluster), master or slave", _role, start_only=True),
    Param(
        "cluster_bind",
        "tcp://127.0.0.1:4200",
        "where the master listens for slaves",
        _endpoint,
        start_only=True,
    ),
    Param(
        "cluster_master",
        "tcp://127.0.0.1:4200",
        "the master a slave dials",
        _endpoint,
        start_only=True,
    ),
    Param(
        "cluster_keys",
        None,
        "directory of the cluster's CURVE keys (default: the release's keys/)",
        optional_text,
        start_only=True,
    ),
    Param(
        "cluster_capacity",
        1.0,
        "this slave's weight for the weighted strategy",
        _capacity,
        start_only=True,
    ),
    Param(
        "cluster_heartbeat",
        1000,
        "ms between two heartbeats, both ways",
        _positive_ms,
        start_only=True,
    ),
    Param(
        "cluster_clock_warn",
        100,
        "ms: a slave whose clock is further than this from the master's gets a warning "
        "(its TTDs are corrected by the measured offset either way)",
        _positive_ms,
        start_only=True,
    ),
    Param(
        "cluster_clock_skew",
        0,
        "tests only: ms this node's clock runs ahead of the machine's (the offset that the "
        "clock measurement must find)",
        _skew,
        start_only=True,
    ),
    Param(
        "cluster_down_after",
        3000,
        "ms without a heartbeat after which a node is marked down",
        _positive_ms,
        start_only=True,
    ),
)
