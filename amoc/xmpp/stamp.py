"""The time-to-delivery stamp that travels in each chat message.

A sent message carries `<stamp xmlns='urn:amoc:ttd' us='1764041123456789'/>`: the sender's
clock in integer microseconds since the epoch. The receiver subtracts it from its own clock.

Both read `now_us()`: the node's wall clock in the cluster's time base, the master's
(amoc.clock). A slave's master measures the slave's clock offset from their heartbeat
exchange and tells it; the slave's stamps and receipts are then its clock minus that
offset. So a TTD between two nodes is corrected by the difference of their offsets (receiver's
minus sender's) without the stamp naming its node, and on one node the two cancel. A
local node, or a slave before its first estimate, uses its own clock as it is.
"""

from __future__ import annotations

from xml.etree import ElementTree as ET

from amoc import clock

NAMESPACE = "urn:amoc:ttd"
TAG = f"{{{NAMESPACE}}}stamp"


# The cluster's time base (amoc.clock): what stamps carry and receipts are timed by.
now_us = clock.now_us


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
