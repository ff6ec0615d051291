"""`DrawScan`: one pass over every stored batch at a random draw: winners and receipts.

A random draw's number is unknown until the draw, so its winners cannot be
picked out as bets are stored (docs/DRAW.md): the draw must read every bet,
and the same pass feeds each agency's receipt digest. Ten million bets are
some 360 MB of records, and the draw has two seconds. So the work is split
over two threads beside the store's own, which only reads the batches:

- the *digester* hashes each batch into its agency's `AgencyDigest`;
  hashlib releases the GIL on large buffers, so it runs truly in parallel;
- the *finder* looks for the number's field in each batch with
  ``bytes.find`` (C), and cuts out only the records it finds.

Both are fed in (agency, sequence) order through bounded queues and joined
before the draw's transaction commits.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable

from ..draw import AgencyDigest
from ..models import FS, RS

__all__ = ["DrawScan", "documents_with_number"]

_FS, _RS = FS.encode(), RS.encode()
_ZERO = ord("0")
_QUEUE = 16  # batches waiting per worker: about 5 MB at most
_Row = tuple[int, int, bytes]


def documents_with_number(data: bytes, number: int) -> list[str]:
    """The documents of the records in ``data`` whose number field reads ``number``.

    The number field is the last of a record: FS, 1 to 4 digits, RS; zero
    padding ("0042") reads as the number too. One ``bytes.find`` scan (two
    for a one-digit number, whose bare needle would hit a tenth of all bets)
    finds the candidates; each is checked by looking back to its field's FS.
    """
    digits = str(number).encode()
    if len(digits) == 4:  # no room for padding: the exact field
        needles, exact = [_FS + digits + _RS], True
    elif len(digits) == 1:
        needles, exact = [_FS + digits + _RS, b"0" + digits + _RS], False
    else:
        needles, exact = [digits + _RS], False
    found: dict[int, str] = {}
    for needle in needles:
        pos = data.find(needle)
        while pos != -1:
            end = pos + len(needle) - 1  # the RS
            field_start = data.rfind(_FS, 0, end) + 1
            field = data[field_start:end]
            if exact or (len(field) <= 4 and int(field) == number):
                start = data.rfind(_RS, 0, field_start) + 1
                found[start] = data[start:field_start].split(_FS)[2].decode()
            pos = data.find(needle, pos + 1)
    return [found[start] for start in sorted(found)]  # in stored order


class _Worker:
    """A thread that applies ``work`` to each row from a bounded queue."""

    def __init__(self, name: str, work: Callable[[_Row], None]) -> None:
        self._queue: queue.Queue[_Row | None] = queue.Queue(_QUEUE)
        self._work = work
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (row := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._work(row)
                except BaseException as exc:  # handed to the store thread at join
                    self._error = exc

    def put(self, row: _Row) -> None:
        self._queue.put(row)

    def join(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


class DrawScan:
    """Feed every batch (agency, bets, record bytes) in order; `finish` gives the results."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.digests: dict[int, AgencyDigest] = {}
        self.winners: list[tuple[int, str]] = []
        self._digester = _Worker("lottery-draw-digests", self._digest)
        self._finder = _Worker("lottery-draw-winners", self._find)

    def _digest(self, row: _Row) -> None:
        agency, count, data = row
        digest = self.digests.get(agency)
        if digest is None:
            digest = self.digests[agency] = AgencyDigest()
        digest.update(data, count)

    def _find(self, row: _Row) -> None:
        agency, _, data = row
        self.winners += [(agency, doc) for doc in documents_with_number(data, self.number)]

    def feed(self, agency: int, count: int, data: bytes) -> None:
        row = (agency, count, data)
        self._digester.put(row)
        self._finder.put(row)

    def finish(self) -> DrawScan:
        """Wait for both workers (re-raising what either raised)."""
        try:
            self._digester.join()
        finally:
            self._finder.join()
        return self

    def abort(self) -> None:
        """Stop both workers after an error of the reader's; never raises."""
        for worker in (self._digester, self._finder):
            with contextlib.suppress(BaseException):
                worker.join()

    def __repr__(self) -> str:
        return f"<DrawScan number={self.number} agencies={len(self.digests)}>"
