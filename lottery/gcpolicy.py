"""The server's garbage-collector thresholds: no full collection in the middle of a round.

CPython's collector is generational: a young collection every 700 new
container objects (gen 0), a middle one every 10 of those (gen 1), and a full
one every 10 middle ones once the objects that survived to the old
generation have grown by a quarter since the last. Every object a connection
keeps for its life (its handler, two tasks, their coroutines, events,
futures, the stream objects: about 45 per connection) survives to the old
generation, so while 10,000 agencies connect the old generation keeps
growing by a quarter, and the server made about eleven full collections in
one such round, each a pause of the whole event loop over every object it
holds: 20 ms at first, 550 ms by the end, 2.3 s of CPU in all (a tenth of a
microsecond to a few tenths per object on the 2-core VM; see
docs/PERFORMANCE.md). Those pauses were the round's p99 from reading a
batch to acking it (230–300 ms; 66 ms with no full collection).

`tune` makes the young collections rarer (every 7,000 objects: most of a
batch's objects die before one looks at them) and a full collection a matter
of every 100 middle ones (7,000,000 new objects that survived, and still the
quarter's growth). Cycles are still found young, where they are made (a
connection's exception and its traceback); the full collections of the round
above found no garbage at all. Only the server calls it: it is a process-wide
setting, like the open-file limit.
"""

from __future__ import annotations

import gc

__all__ = ["SERVER_THRESHOLDS", "tune"]

#: (gen 0, gen 1, gen 2) thresholds for the server (CPython's default: 700, 10, 10).
SERVER_THRESHOLDS = (7_000, 10, 100)


def tune() -> tuple[int, int, int]:
    """Set the server's collector thresholds; the ones they replace (to put back)."""
    old = gc.get_threshold()
    gc.set_threshold(*SERVER_THRESHOLDS)
    return old
