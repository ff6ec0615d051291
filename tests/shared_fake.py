"""An in-memory `SharedStore` several `Round`s in one process can share, with fault hooks.

`SharedDatabase` is the one store (what PostgreSQL is for real servers); each
server gets its own handle on it, `SharedFake`, with its own ``server_id`` and
its own change signal (the NOTIFY stand-in). A handle keeps the contract of
lottery/store/base.py, guarantee 7 included: each `commit` decides every
batch at once, with no await between the epoch check and the write, as one
transaction does. ``commit_gate`` holds a handle's commits *before* that
check (a server stalled with batches read, not committed); ``unavailable``
makes every call fail with `StoreError` (the database is down), and a
handle's ``partitioned`` that handle's calls only (its server is cut off).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence

from lottery.errors import StoreError
from lottery.models import FS, RS, RunningDigest, agency_digest
from lottery.store import DrawState, Outcome, PendingBatch, Progress, RoundView
from lottery.store.base import refused_by_sequence

from .helpers import WINNING_NUMBER

#: Longest a gate may stay closed before the fake gives up (a test bug).
GATE_TIMEOUT = 10.0


class SharedDatabase:
    """The state every handle shares: bets, progress, epochs, servers, done marks, the draw."""

    def __init__(self) -> None:
        self.round_id = "20261201-000000-5a4ed0"
        self.bets: list[tuple[int, str, str, str, str, int]] = []
        self.progress: dict[int, Progress] = {}
        self.digests: dict[int, RunningDigest] = {}
        self.epochs: collections.Counter[int] = collections.Counter()
        self.servers: dict[int, str] = {}
        self.done: set[int] = set()
        self.drawn = False
        self.draws_made = 0
        #: Which servers asked the store to draw, in order (made or not).
        self.draw_attempts: list[str] = []
        self.unavailable = False
        #: Every change, in order, as (server id, what): tests assert orders of events.
        self.events: list[tuple[str, str]] = []
        self.handles: list[SharedFake] = []

    def handle(self, server_id: str = "") -> SharedFake:
        """A new server's connection to this store."""
        handle = SharedFake(self, server_id or f"fake-{len(self.handles) + 1}")
        self.handles.append(handle)
        return handle

    def changed(self, by: SharedFake, what: str) -> None:
        """Record a change and signal every other handle (NOTIFY)."""
        self.events.append((by.server_id, what))
        for handle in self.handles:
            if handle is not by:
                handle.signal.set()

    def winners(self) -> dict[int, list[str]]:
        found: dict[int, list[str]] = {}
        for agency, _, _, document, _, number in self.bets:
            if number == WINNING_NUMBER:
                found.setdefault(agency, []).append(document)
        return found


class SharedFake:
    """One server's handle on a `SharedDatabase`: a `SharedStore`."""

    def __init__(self, db: SharedDatabase, server_id: str) -> None:
        self.db = db
        self.server_id = server_id
        self.round_id = db.round_id
        self.signal = asyncio.Event()
        self.commit_gate = asyncio.Event()
        self.commit_gate.set()
        self.commit_entered = asyncio.Event()
        self.admitted = asyncio.Event()  # this handle admitted an agency
        #: This server cannot reach the store (a partition); ``db.unavailable``: nobody can.
        self.partitioned = False
        self.closed = False
        self.view_calls = 0
        self._viewed = asyncio.Event()

    async def followed(self, reads: int = 2) -> None:
        """Wait until this handle's round read the whole round ``reads`` more times.

        With two, the first of them began after the call, and the round has
        taken it in before it asked for the second (its watcher does one at a time).
        """
        target = self.view_calls + reads
        while self.view_calls < target:
            self._viewed.clear()
            await self._viewed.wait()

    def _check(self) -> None:
        assert not self.closed, "a call on a closed store"
        if self.db.unavailable or self.partitioned:
            raise StoreError("the shared store is unreachable")

    async def commit(self, batches: Sequence[PendingBatch]) -> list[Outcome]:
        self.commit_entered.set()
        async with asyncio.timeout(GATE_TIMEOUT):
            await self.commit_gate.wait()
        self._check()
        db = self.db
        if db.drawn:
            return [Outcome.LATE] * len(batches)
        outcomes = []
        for batch in batches:  # one transaction: nothing below awaits
            last_seq, count, _, _ = db.progress.get(batch.agency, Progress())
            refused = refused_by_sequence(batch.seq, last_seq)
            if batch.epoch != db.epochs[batch.agency]:
                outcomes.append(Outcome.STALE)
            elif refused is not None:
                outcomes.append(refused)
            else:
                running = db.digests.setdefault(batch.agency, agency_digest())
                for record in batch.records:
                    running.update((FS.join(record) + RS).encode())
                    name, surname, document, birthdate, number = record
                    db.bets.append((batch.agency, name, surname, document, birthdate, int(number)))
                db.progress[batch.agency] = Progress(
                    batch.seq, count + len(batch.records), batch.input_rows, running.digest()
                )
                outcomes.append(Outcome.STORED)
        db.events.append((self.server_id, f"commit {[o.value for o in outcomes]}"))
        return outcomes

    async def admit(self, agency: int) -> tuple[int, Progress]:
        self._check()
        self.db.epochs[agency] += 1
        self.db.servers[agency] = self.server_id
        self.db.changed(self, f"admit {agency}")
        self.admitted.set()
        return self.db.epochs[agency], self.db.progress.get(agency, Progress())

    async def release(self, agency: int, epoch: int) -> None:
        self._check()
        if self.db.epochs[agency] == epoch and self.db.servers.get(agency) == self.server_id:
            del self.db.servers[agency]
            self.db.changed(self, f"release {agency}")

    async def view(self) -> RoundView:
        self.view_calls += 1  # tries count too: `followed` then waits for retries
        self._viewed.set()
        self._check()
        db = self.db
        return RoundView(frozenset(db.done), db.drawn, dict(db.progress), dict(db.servers))

    async def wait_changed(self, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await self.signal.wait()
        except TimeoutError:
            return False
        self.signal.clear()
        return True

    async def progress(self, agency: int) -> Progress:
        self._check()
        return self.db.progress.get(agency, Progress())

    async def all_progress(self) -> dict[int, Progress]:
        self._check()
        return dict(self.db.progress)

    async def round_date(self) -> str:
        return "2024-06-01"

    async def mark_done(self, agency: int) -> None:
        self._check()
        self.db.done.add(agency)
        self.db.changed(self, f"done {agency}")

    async def done_agencies(self) -> set[int]:
        self._check()
        return set(self.db.done)

    async def drawn(self) -> bool:
        self._check()
        return self.db.drawn

    async def draw(self) -> bool:
        self._check()
        self.db.draw_attempts.append(self.server_id)
        if self.db.drawn:
            return False
        self.db.drawn = True
        self.db.draws_made += 1
        self.db.changed(self, "draw")
        return True

    async def winners(self) -> dict[int, list[str]]:
        self._check()
        return self.db.winners() if self.db.drawn else {}

    async def draw_state(self) -> DrawState:
        self._check()
        return DrawState(drawn=self.db.drawn, number=WINNING_NUMBER if self.db.drawn else None)

    async def commit_nonce(self, agency: int, commitment: bytes) -> bytes:
        raise StoreError("the shared fake keeps fixed draws only")

    async def record_reveal(self, agency: int, nonce: bytes) -> bool:
        return False

    async def refuse_reveal(self, agency: int) -> None:
        return None

    async def aclose(self) -> None:
        self.closed = True
