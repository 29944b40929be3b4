"""The time-to-delivery stamp that travels in each chat message.

A sent message carries `<stamp xmlns='urn:amoc:ttd' us='1764041123456789'/>`: the sender's
clock in integer microseconds since the epoch. The receiver subtracts it from its own clock.

Both read `now_us()`: the node's wall clock in the cluster's time base, the master's. A
slave's master measures the slave's clock offset from their heartbeat exchange and tells
it (`set_offset_us`); the slave's stamps and receipts are then its clock minus that offset.
So a TTD between two nodes is corrected by the difference of their offsets (receiver's
minus sender's) without the stamp naming its node, and on one node the two cancel. A
local node, or a slave before its first estimate, uses its own clock as it is.
"""

from __future__ import annotations

import time
from xml.etree import ElementTree as ET

NAMESPACE = "urn:amoc:ttd"
TAG = f"{{{NAMESPACE}}}stamp"


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


def encode(ts_us: int) -> str:
    """The stamp element for a send time, as XML text."""
    return f"<stamp xmlns='{NAMESPACE}' us='{int(ts_us)}'/>"


def decode_value(value: str | None) -> int | None:
    """A stamp's `us` attribute as an int, or None when absent or not a positive integer."""
    if not value or not value.isdigit():
        return None
    ts = int(value)
    return ts if ts > 0 else None


def read(message: ET.Element) -> int | None:
    """The send time stamped in a received `<message/>` element, or None."""
    child = message.find(TAG)
    return None if child is None else decode_value(child.get("us"))


def ttd_ms(sent_us: int, received_us: int) -> float:
    """Time to delivery in milliseconds."""
    return (received_us - sent_us) / 1000.0
