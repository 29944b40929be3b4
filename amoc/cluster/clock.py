"""A slave's clock offset to the master's, measured from their heartbeat exchange.

The master's ping carries its send time t0 (master clock); the slave notes when it got it,
t1, and its next heartbeat carries t0, t1 and its own send time t2 (slave clock); the master
notes when that heartbeat arrived, t3. As in NTP, one exchange gives

    offset = ((t1 - t0) + (t2 - t3)) / 2      the slave's clock minus the master's
    delay  = (t3 - t0) - (t2 - t1)            the round trip, the slave's wait left out

and the true offset lies within delay / 2 of that estimate (whatever the split of the round
trip between the two ways). Of the last `SAMPLES` exchanges the one with the shortest round
trip is kept (NTP's clock filter): a heartbeat that queued behind other traffic says less.
The master tells each slave its offset in every ping (`amoc.clock.set_offset_us`), so
that its TTD stamps and receipts are in the master's time base.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

SAMPLES = 8
# An exchange whose round trip took longer than this says nothing useful (a ping that waited
# for a slave that was busy, or a heartbeat answering a ping from long ago).
MAX_DELAY_S = 5.0


class ClockOffset:
    """The offset estimate of one slave (seconds inside, milliseconds outside)."""

    __slots__ = ("_samples", "warned")

    def __init__(self) -> None:
        self._samples: deque[tuple[float, float]] = deque(maxlen=SAMPLES)  # (delay, offset)
        self.warned = False  # the master said once that this clock is far off

    def add(self, probe: Any, received: float) -> bool:
        """Take a heartbeat's `clock` field [t0, t1, t2] and its arrival time t3 (master
        clock, s); False when the probe is malformed or too slow to count."""
        if not isinstance(probe, list | tuple) or len(probe) != 3:
            return False
        if not all(isinstance(t, int | float) and math.isfinite(t) for t in probe):
            return False
        t0, t1, t2 = (float(t) for t in probe)
        delay = (received - t0) - (t2 - t1)
        if not 0 <= delay <= MAX_DELAY_S or t2 < t1:
            return False
        self._samples.append((delay, ((t1 - t0) + (t2 - received)) / 2))
        return True

    def _best(self) -> tuple[float, float] | None:
        return min(self._samples) if self._samples else None

    @property
    def offset_ms(self) -> float | None:
        """The slave's clock minus the master's, ms (None before the first exchange)."""
        best = self._best()
        return None if best is None else round(best[1] * 1000, 3)

    @property
    def error_ms(self) -> float | None:
        """The bound of the estimate's error, ms (half the shortest round trip)."""
        best = self._best()
        return None if best is None else round(best[0] * 500, 3)

    @property
    def offset_us(self) -> int | None:
        """The estimate in whole µs, as pings carry it."""
        best = self._best()
        return None if best is None else round(best[1] * 1_000_000)
