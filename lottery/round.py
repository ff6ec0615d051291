"""The round: one owner for everything the connections share.

Entry point: `Round.load(store, committer, agencies, ...)`, once, when the
server starts; every connection `Handler` then gets the same `Round` as its
handle (mini-redis's `Db`), never the server itself.

A `Round` owns:

- the barrier (`DrawBarrier`): which agencies are done, whether it is open;
- the draw: whether it is made, its lock, the winners it gave;
- who speaks for each agency: the live connections that passed the handshake
  as that agency (a newer one stops the older ones);
- progress as the connections see it (what each agency has stored), kept in
  memory from the store at start plus every batch stored since, so a STATUS
  costs no store round trip;
- the round's counters (`RoundStats`);
- the round's date (`today`): the one day every bet is validated against, as
  the store recorded it when the round began (lottery/clock.py).

It writes through the `Committer` (batches) and the `AsyncStore` (done marks,
the draw); it reads the store only at start and in the handshake, whose
WELCOME must say what is durably stored.

Why a lock for the draw, in a single-threaded event loop: every other piece
of shared state here changes in plain synchronous code, which no other
coroutine can interleave with. The draw is a critical section with awaits in
the middle (the store records it, then reads the winners), and other
coroutines run during them: a second caller (the deadline, a winners query
retrying a failed draw) must wait for the first and then find it made.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import clock
from .barrier import DrawBarrier
from .committer import CommitResult, Committer
from .errors import ErrorCode, StoreError
from .log import get_logger
from .models import Record
from .stats import LatencySample
from .store import AsyncStore, Outcome, PendingBatch, Progress

__all__ = ["Round", "RoundStats", "Speaker", "Superseded", "WinnersWait"]


class Superseded(Exception):
    """A newer handshake for the same agency began while this one was admitting."""


class Speaker(Protocol):
    """A connection that speaks for an agency: the round can stop it reading."""

    def stop_reading(self) -> None: ...


class WinnersWait(enum.Enum):
    """Why `Round.winners` has no list to give."""

    NOT_READY = "not_ready"  # the draw is not made yet: ask again later
    SHUTTING_DOWN = "shutting_down"  # the server is stopping


@dataclass
class RoundStats:
    """Counters since this process started (for metrics and the shutdown log)."""

    bets_stored: int = 0
    batches_stored: int = 0
    batches_refused: int = 0
    draw_seconds: float | None = None
    #: Seconds from reading each batch to writing its ack.
    ack_latencies: LatencySample = field(default_factory=LatencySample)


class Round:
    """The round's shared state; see the module docstring. Build with `load`."""

    def __init__(
        self,
        store: AsyncStore,
        committer: Committer,
        agencies: int,
        *,
        done: Sequence[int] = (),
        progress: dict[int, Progress] | None = None,
        fault_draw_delay: float = 0.0,
        winning_number: int | None = None,
        today: str | None = None,
    ) -> None:
        self.agencies = agencies
        #: The round's identity (from the store): in the start line, status and the logs.
        self.round_id = store.round_id
        #: The number the draw picks winners by, shown once it is made (None: not known here).
        self.winning_number = winning_number
        self.barrier = DrawBarrier(agencies, done)
        self.stats = RoundStats()
        self._store = store
        self._committer = committer
        self._winners: dict[int, tuple[str, ...]] | None = None  # None until the draw
        self._draw_lock = asyncio.Lock()
        self._finishing: set[int] = set()  # agencies whose DONE is being stored
        self._speakers: dict[int, list[Speaker]] = collections.defaultdict(list)
        #: Handshakes begun per agency: the newest one is the one admitted.
        self._handshakes: collections.Counter[int] = collections.Counter()
        self._progress = dict(progress or {})
        #: The round's date (ISO), for the birthdate rule and the WELCOME.
        self.today = today or clock.today()
        self._fault_draw_delay = fault_draw_delay  # env-only hook for scripts/chaos.py
        self._deadline_task: asyncio.Task[None] | None = None
        self._log = get_logger()
        #: Connections open now, handshake done or not (the server counts them).
        self.connections = 0

    @classmethod
    async def load(
        cls,
        store: AsyncStore,
        committer: Committer,
        agencies: int,
        *,
        draw_deadline: float = 0.0,
        fault_draw_delay: float = 0.0,
        winning_number: int | None = None,
    ) -> Round:
        """The round as the store has it; draws at once if every agency was done.

        Args:
            draw_deadline: seconds after which the draw is made without the
                agencies still missing (0: wait for all of them).
            winning_number: the store's winning number, for `status` once drawn.
        """
        done = sorted(await store.done_agencies())
        progress = await store.all_progress()
        round_ = cls(
            store,
            committer,
            agencies,
            done=done,
            progress=progress,
            fault_draw_delay=fault_draw_delay,
            winning_number=winning_number,
            today=await store.round_date(),
        )
        if await store.drawn():
            round_._set_winners(await store.winners())
        elif round_.barrier.opened:  # every agency was done when the server stopped
            await round_.draw()
        if draw_deadline and not round_.drawn:
            round_._deadline_task = asyncio.create_task(
                round_._draw_at_deadline(draw_deadline), name="lottery-draw-deadline"
            )
        return round_

    # -- the draw ------------------------------------------------------------------------

    @property
    def drawn(self) -> bool:
        """Whether the draw is made (the one place this is known in memory)."""
        return self._winners is not None

    def _set_winners(self, winners: dict[int, list[str]]) -> None:
        self._winners = {agency: tuple(docs) for agency, docs in winners.items()}
        self.barrier.release()

    async def draw(self) -> None:
        """Make the draw, once; a store error is logged and the draw may be retried."""
        async with self._draw_lock:
            if self.drawn:
                return
            loop = asyncio.get_running_loop()
            started = loop.time()
            try:
                made = await self._store.draw()
                winners = await self._store.winners()
            except StoreError as exc:
                self._log.error("sorteo", result="fail", error=str(exc))
                return
            if made:  # else another server, or this one before a restart, made it
                self.stats.draw_seconds = loop.time() - started
                self._log.info(
                    "sorteo",
                    result="success",
                    cant_ganadores=sum(len(d) for d in winners.values()),
                    segundos=round(self.stats.draw_seconds, 3),
                )
            self._set_winners(winners)

    async def _draw_at_deadline(self, seconds: float) -> None:
        """--draw-deadline: when it passes, draw without the agencies still missing."""
        await asyncio.sleep(seconds)
        missing = self.barrier.close_early()
        if missing is None:  # every agency made it in time
            return
        self._log.warning(
            "sorteo",
            result="in_progress",
            motivo=f"draw deadline of {seconds:g} s passed",
            faltantes=" ".join(map(str, missing)),
        )
        await self.draw()

    async def winners(self, agency: int, timeout: float) -> tuple[str, ...] | WinnersWait:
        """``agency``'s winning documents, waiting up to ``timeout`` for the draw."""
        if self.barrier.opened and not self.drawn:  # the draw failed (store error): retry
            await self.draw()
        try:
            async with asyncio.timeout(timeout):
                released = await self.barrier.wait()
        except TimeoutError:
            return WinnersWait.NOT_READY
        if not released or self._winners is None:
            return WinnersWait.SHUTTING_DOWN
        return self._winners.get(agency, ())

    # -- agencies --------------------------------------------------------------------------

    def refuse_bets(self, agency: int) -> tuple[ErrorCode, str] | None:
        """Why ``agency`` may send no more bets, or None if it may."""
        if self.barrier.opened:
            # Every agency is done (or the deadline passed): the draw is made
            # or about to be, and a bet now could not take part in it.
            return ErrorCode.DRAW_MADE, "the draw is made"
        if agency in self._finishing or agency in self.barrier.done:
            # Done is per agency, not per connection: no bets after it, even
            # on a new connection (they would miss the draw).
            return ErrorCode.OUT_OF_ORDER, f"agency {agency} is done"
        return None

    async def admit(self, agency: int, speaker: Speaker) -> Progress:
        """``speaker`` now speaks for ``agency``; returns what the store has of it.

        An older connection of the same agency (its process died, or the line
        dropped) may still hold batches it read but the store has not
        committed. It is stopped, and those batches let settle, before the
        progress is read: else the WELCOME would be short, and a late old
        batch would take a sequence the agency reuses.

        A newer HELLO wins, also against one still admitting: when another
        handshake for ``agency`` begins during the awaits here, this one is
        not admitted (two connections told the same last sequence would both
        send its successor, and one of them would be acked but not stored).

        Raises:
            Superseded: a newer handshake for ``agency`` began meanwhile.
        """
        self._handshakes[agency] += 1
        mine = self._handshakes[agency]
        for other in self._speakers[agency]:
            other.stop_reading()
        self._speakers[agency].append(speaker)
        try:
            await self._committer.settle(agency)
            progress = await self._store.progress(agency)
            if self._handshakes[agency] != mine:
                raise Superseded(f"agency {agency} began a newer connection")
        except BaseException:
            self.leave(agency, speaker)
            raise
        return progress

    def leave(self, agency: int, speaker: Speaker) -> None:
        """``speaker``'s connection closed."""
        speakers = self._speakers.get(agency, [])
        with contextlib.suppress(ValueError):
            speakers.remove(speaker)
        if not speakers:
            self._speakers.pop(agency, None)

    async def wait_for_room(self) -> None:
        """Backpressure: wait until the commit queue takes more bets."""
        await self._committer.wait_for_room()

    def submit(
        self, agency: int, seq: int, records: Sequence[Record], input_rows: int = 0
    ) -> asyncio.Future[Any]:
        """Hand a batch to the next group commit; the future gives its `CommitResult`."""
        future = self._committer.submit(PendingBatch(agency, seq, records, input_rows))
        count = len(records)
        future.add_done_callback(lambda f: self._count(f, agency, seq, count, input_rows))
        return future

    def _count(
        self,
        future: asyncio.Future[CommitResult],
        agency: int,
        seq: int,
        count: int,
        input_rows: int,
    ) -> None:
        if future.cancelled() or future.result() is not Outcome.STORED:
            return
        # The digest here stays as loaded (stale): only the store's counts, and the
        # WELCOME reads it there. Hashing every batch again here would cost the loop.
        last_seq, stored, _, digest = self._progress.get(agency, Progress())
        self._progress[agency] = Progress(max(last_seq, seq), stored + count, input_rows, digest)
        self.stats.batches_stored += 1
        self.stats.bets_stored += count

    async def agency_done(self, agency: int) -> None:
        """Durably record ``agency`` as done; the last one to arrive runs the draw.

        From the moment DONE is read, the agency's bets are refused on every
        connection, and the ones handed over before it are let settle first:
        done means every bet before it is stored and none after it will be.

        Raises:
            StoreError: the done mark was not stored; the agency may say DONE again.
        """
        self._finishing.add(agency)
        try:
            await self._committer.settle(agency)
            await self._store.mark_done(agency)
        except BaseException:
            self._finishing.discard(agency)  # not done after all: it may try again
            raise
        self._log.info("agencia_lista", result="success", agencia=agency)
        if self.barrier.arrive(agency):
            if self._fault_draw_delay:
                self._log.warning("sorteo", result="in_progress", demora=self._fault_draw_delay)
                await asyncio.sleep(self._fault_draw_delay)
            await self.draw()

    # -- reading -----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The round's state, for STATUS replies, ``lottery status`` and metrics.

        From memory: it costs no store round trip, however often it is asked.
        Once the draw is made it also holds ``winning_number`` and each
        agency's ``winners`` (how many); before it, those keys are absent.
        """
        barrier = self.barrier
        status: dict[str, Any] = {
            "round": self.round_id,
            "agencies": self.agencies,
            "opened": barrier.opened,
            "drawn": self.drawn,
            "draw_seconds": self.stats.draw_seconds,
            "connections": self.connections,
            "agency": [
                {
                    "id": agency,
                    "committed_bets": self._progress.get(agency, Progress()).committed_bets,
                    "last_seq": self._progress.get(agency, Progress()).last_seq,
                    "connected": bool(self._speakers.get(agency)),
                    "done": agency in barrier.done,
                }
                for agency in range(1, self.agencies + 1)
            ],
        }
        if self._winners is not None:  # added, never changed: readers of the old keys go on
            status["winning_number"] = self.winning_number
            for entry in status["agency"]:
                entry["winners"] = len(self._winners.get(entry["id"], ()))
        return status

    # -- shutdown ------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Wake every winners query (they answer SHUTTING_DOWN) and stop the deadline."""
        self.barrier.shutdown()
        if self._deadline_task is not None:
            self._deadline_task.cancel()

    async def wait_closed(self) -> None:
        """Wait for the deadline task and any draw under way (before the store closes)."""
        if self._deadline_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._deadline_task
        async with self._draw_lock:
            pass
