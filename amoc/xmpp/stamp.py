"""The time-to-delivery stamp that travels in each chat message.

A sent message carries `<stamp xmlns='urn:amoc:ttd' us='1764041123456789'/>`: the sender's
wall clock in integer microseconds since the epoch. The receiver subtracts it from its own
wall clock. In one process both ends read the same clock; across machines the clocks are
assumed synchronised (NTP / PTP), and any offset between them shows up in the TTD figures.
"""

from __future__ import annotations

import time
from xml.etree import ElementTree as ET

NAMESPACE = "urn:amoc:ttd"
TAG = f"{{{NAMESPACE}}}stamp"


def now_us() -> int:
    """Wall-clock time in integer microseconds since the epoch."""
    return time.time_ns() // 1000


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
