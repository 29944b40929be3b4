"""This node's clock in the cluster's time base (the master's), for TTD stamps.

A slave's master measures the slave's clock offset from their heartbeat exchange
(`amoc.cluster.clock`) and tells it (`set_offset_us`); `now_us()` is then this node's clock
minus that offset, so that stamps written on one node and read on another compare. A local
node, or a slave before its first estimate, uses its own clock as it is. No import of
amoc.xmpp here: the cluster's core sets the offset, the XMPP layer reads the time.
"""

from __future__ import annotations

import time

# This node's shift from its own clock to the cluster's time base, in µs: its simulated
# skew (tests only: cluster_clock_skew) minus its measured offset to the master.
_skew_us = 0
_offset_us = 0
_shift_us = 0


def now_us() -> int:
    """The cluster's time (the master's clock as this node knows it), integer µs since the
    epoch: what stamps carry and receipts are timed by."""
    return time.time_ns() // 1000 + _shift_us


def local_s() -> float:
    """This node's own wall clock in seconds (with the simulated skew of tests): what it
    reports to the master for the offset measurement."""
    return time.time() + _skew_us / 1e6


def set_offset_us(offset_us: int) -> None:
    """This node's clock is `offset_us` ahead of the master's (as the master measured)."""
    global _offset_us, _shift_us
    _offset_us = int(offset_us)
    _shift_us = _skew_us - _offset_us


def set_skew_ms(skew_ms: float) -> None:
    """Tests only: run this node's clock `skew_ms` ahead of the machine's; clears any
    measured offset (which was of the old clock)."""
    global _skew_us, _offset_us, _shift_us
    _skew_us = round(skew_ms * 1000)
    _offset_us = 0
    _shift_us = _skew_us


def offset_us() -> int:
    """The offset to the master this node corrects by (0 until measured)."""
    return _offset_us
