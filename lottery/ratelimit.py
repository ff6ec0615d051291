"""STATUS costs: token buckets and one cached snapshot of the round's state.

Entry points: `TokenBucket` (one per connection, one for the server) and
`StatusSnapshots` (one per server), used by the connection handler to answer
STATUS_QUERY.

Why: STATUS is asked before any handshake and its answer grows with the
agencies (about 84 KB at N=1,000). Unbounded, twenty connections asking in a
loop make the server serialise the whole round thousands of times a second,
and take the event loop from the agencies. With a bucket per connection and
one for the server, and the JSON rebuilt only when the round changed, at most
`SNAPSHOT_BUILDS` times a second (a burst of `SNAPSHOT_BURST`) however many
ask, STATUS costs the server a bounded share of its time. A quiet round's
answer is never stale; a busy, flooded one's is a fraction of a second old.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

__all__ = ["SNAPSHOT_BUILDS", "StatusSnapshots", "TokenBucket", "round_summary"]

#: Most rebuilds of the STATUS JSON a second, past a burst of `SNAPSHOT_BURST`.
SNAPSHOT_BUILDS = 5.0
SNAPSHOT_BURST = 5.0


class TokenBucket:
    """``rate`` tokens a second, up to ``burst`` saved; `reserve` says how long to wait."""

    def __init__(
        self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = rate if burst is None else burst
        self._clock = clock
        self._tokens = self.burst
        self._stamp = clock()

    def reserve(self) -> float:
        """Take one token; the seconds to wait before using it (0: at once).

        A taken token is owed even while its taker waits, so waiters queue up
        in order and the rate holds however many wait.
        """
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= 1
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def try_take(self) -> bool:
        """Take one token if there is one now."""
        if self.reserve() == 0.0:
            return True
        self._tokens += 1  # give back what reserve took
        return False


#: A random draw's values that are public by design (docs/DRAW.md): anyone may check it.
_PUBLIC_DRAW_KEYS = ("draw_mode", "commitment", "number", "seed", "reveals", "not_revealed")


def round_summary(status: dict[str, Any]) -> dict[str, Any]:
    """What anyone may see: the round's size, how many agencies are done, the draw."""
    summary = {
        "agencies": status.get("agencies"),
        "agencies_done": sum(1 for a in status.get("agency", ()) if a["done"]),
        "opened": status.get("opened"),
        "drawn": status.get("drawn"),
        "draw_seconds": status.get("draw_seconds"),
    }
    if status.get("draw_mode") == "random":
        summary.update({key: status[key] for key in _PUBLIC_DRAW_KEYS if key in status})
    return summary


class StatusSnapshots:
    """The round's STATUS JSON (full, and summary), rebuilt only when it may differ.

    Args:
        status: the round's state now.
        bucket: the server-wide STATUS rate, shared by every connection.
        version: a cheap value that changes whenever ``status()`` would
            (counters); None: every answer is rebuilt (within the build rate).
    """

    def __init__(
        self,
        status: Callable[[], dict[str, Any]],
        bucket: TokenBucket,
        version: Callable[[], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bucket = bucket
        self._status = status
        self._version = version
        self._builds = TokenBucket(SNAPSHOT_BUILDS, SNAPSHOT_BURST, clock)
        self._built_version: object = object()  # equal to nothing: the first one builds
        self._full = ""
        self._summary = ""
        self.builds = 0

    def text(self, *, full: bool) -> str:
        """The JSON text of the full view, or of `round_summary`."""
        version = self._version() if self._version is not None else object()
        if version != self._built_version and (self.builds == 0 or self._builds.try_take()):
            status = self._status()
            self._full = json.dumps(status)
            self._summary = json.dumps(round_summary(status))
            self._built_version = version
            self.builds += 1
        return self._full if full else self._summary
