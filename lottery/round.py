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

Several servers, one round (docs/SCALING.md): over a `SharedStore` (detected
once, when the round is built) the round is the store's, not this process's.
Each handshake is an admission in the store (`SharedStore.admit`), which
returns the connection's *epoch*; every batch it submits carries that epoch,
and the store refuses it (`Outcome.STALE`) once the agency was admitted again,
here or on another server (guarantee 7, fencing). A *watcher* task, owned by
the round, waits for another server's change (`SharedStore.wait_changed`:
NOTIFY, or the poll interval) and reads the whole round (`SharedStore.view`):
other servers' done marks arrive at this barrier, their agencies' counts and
servers refresh what STATUS shows, a draw another server made is loaded and
releases the winners queries waiting here, and a round whose every agency is
done but whose draw nobody recorded (the server that saw the last DONE died)
is drawn here: the store makes it once, whoever asks. Over any other store
nothing of this runs and the round is this process's, as always.

Why a lock for the draw, in a single-threaded event loop: every other piece
of shared state here changes in plain synchronous code, which no other
coroutine can interleave with. The draw is a critical section with awaits in
the middle (the store records it, then reads the winners), and other
coroutines run during them: a second caller (the deadline, a winners query
retrying a failed draw) must wait for the first and then find it made.

A random draw (``--draw random``, docs/DRAW.md) adds a phase between the
barrier and the draw: the *reveal*. Agencies commit to a nonce in their
handshake (`commit`); once the barrier opens, a winners query of an agency
that has not revealed is answered `WinnersWait.REVEAL`, the agency sends its
nonce (`reveal`), and the draw is made when every committed agency has
revealed, or ``reveal_deadline`` seconds after the barrier opened, without
the missing ones. The store makes the number, winners and receipts inside
the draw's own transaction, so a restart anywhere around it finds either no
draw (and waits for reveals again) or the whole of it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from . import clock
from .backoff import exponential_backoff
from .barrier import DrawBarrier
from .committer import CommitResult, Committer
from .draw import MODE_RANDOM, agency_commitment, seed_commitment
from .errors import ErrorCode, StoreError
from .log import get_logger
from .models import EMPTY_DIGEST, Record
from .stats import LatencySample
from .store import (
    AsyncStore,
    DrawState,
    Outcome,
    PendingBatch,
    Progress,
    RoundView,
    SharedStore,
)

__all__ = ["Round", "RoundStats", "Speaker", "Superseded", "WinnersWait", "shared_store"]

#: Seconds between two reads of a shared store's round when no change is
#: signalled (the fallback when NOTIFY is lost, e.g. across a reconnect).
POLL_INTERVAL = 1.0
#: Longest a release of an agency's admission may take (it only tidies STATUS).
RELEASE_TIMEOUT = 5.0


def shared_store(store: AsyncStore) -> SharedStore | None:
    """``store`` as a `SharedStore` if it is one (several servers share it), else None."""
    if all(callable(getattr(store, name, None)) for name in ("admit", "release", "view")):
        return cast(SharedStore, store)
    return None


class Superseded(Exception):
    """A newer handshake for the same agency began while this one was admitting."""


class Speaker(Protocol):
    """A connection that speaks for an agency: the round can stop it reading."""

    def stop_reading(self) -> None: ...


class WinnersWait(enum.Enum):
    """Why `Round.winners` has no list to give."""

    NOT_READY = "not_ready"  # the draw is not made yet: ask again later
    SHUTTING_DOWN = "shutting_down"  # the server is stopping
    REVEAL = "reveal"  # random draw: betting closed, this agency's nonce is wanted


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
        draw_state: DrawState | None = None,
        reveal_deadline: float = 30.0,
        poll_interval: float | None = None,
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
        #: agency → (last stored seq, stored bets), as STATUS shows them. Only the
        #: counts: the store keeps the rest of `Progress` (input rows, digest), and
        #: the handshake reads it there.
        self._stored = {a: (p.last_seq, p.committed_bets) for a, p in (progress or {}).items()}
        #: The round's date (ISO), for the birthdate rule and the WELCOME.
        self.today = today or clock.today()
        self._fault_draw_delay = fault_draw_delay  # env-only hook for scripts/chaos.py
        self._delaying = False  # inside that delay: the draw waits for it
        self._deadline_task: asyncio.Task[None] | None = None
        self._log = get_logger()
        # The random draw (docs/DRAW.md); all of it from the store at start.
        self._draw_state = draw_state or DrawState()
        self.draw_mode = self._draw_state.mode
        self._commitments = dict(self._draw_state.commitments)
        self._reveals = dict(self._draw_state.reveals)
        #: Agencies whose reveal did not match: not revealing, and not asked again.
        self._refused = set(self._draw_state.refused)
        self._reveal_deadline = reveal_deadline
        self._revealed = asyncio.Event()  # every committed agency revealed
        self._opened = asyncio.Event()  # the barrier opened (or shutdown began)
        self._reveal_task: asyncio.Task[None] | None = None
        self._draw_due = False  # the reveal phase is over: the draw may be made
        self._stopping = False
        #: How many connections are open now (the server owns them and says).
        self.open_connections: Callable[[], int] = lambda: 0
        # Several servers over one store (docs/SCALING.md); None: this process's round.
        self._shared = shared_store(store)
        self._poll_interval = POLL_INTERVAL if poll_interval is None else poll_interval
        #: agency -> the server it is connected to, as the shared store last said.
        self._servers: dict[int, str] = {}
        #: The epoch each admitted connection was given (guarantee 7); released on leave.
        self._epochs: dict[Speaker, int] = {}
        self._watch_task: asyncio.Task[None] | None = None
        self._releases: set[asyncio.Task[None]] = set()

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
        reveal_deadline: float = 30.0,
        poll_interval: float | None = None,
    ) -> Round:
        """The round as the store has it; draws at once if every agency was done.

        Args:
            draw_deadline: seconds after which the draw is made without the
                agencies still missing (0: wait for all of them).
            winning_number: the store's winning number, for `status` once drawn.
            reveal_deadline: random draw: seconds after the barrier opens
                (or after a restart that finds it open) to wait for reveals.
            poll_interval: a shared store: longest wait between two reads of
                the whole round when no change is signalled (None: `POLL_INTERVAL`).
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
            draw_state=await store.draw_state(),
            reveal_deadline=reveal_deadline,
            poll_interval=poll_interval,
        )
        if round_._shared is not None:
            round_._servers = dict((await round_._shared.view()).servers)
        round_._log_commitment()
        if await store.drawn():
            round_._set_winners(await store.winners())
            round_._draw_state = await store.draw_state()
            if round_.random:  # the process that drew may have died before saying so
                round_._log.info("sorteo_publicado", result="success", **round_._reveal_fields())
        elif round_.barrier.opened:  # every agency was done when the server stopped
            await round_._betting_closed()
        if draw_deadline and not round_.drawn:
            round_._deadline_task = asyncio.create_task(
                round_._draw_at_deadline(draw_deadline), name="lottery-draw-deadline"
            )
        if round_._shared is not None:
            round_._watch_task = asyncio.create_task(
                round_._watch(round_._shared), name="lottery-round-watcher"
            )
        return round_

    # -- the draw ------------------------------------------------------------------------

    @property
    def drawn(self) -> bool:
        """Whether the draw is made (the one place this is known in memory)."""
        return self._winners is not None

    def _set_winners(self, winners: dict[int, list[str]]) -> None:
        self._winners = {agency: tuple(docs) for agency, docs in winners.items()}
        self._opened.set()
        self.barrier.release()

    @property
    def random(self) -> bool:
        """Whether this round's draw is random (docs/DRAW.md)."""
        return self.draw_mode == MODE_RANDOM

    def _log_commitment(self) -> None:
        seed = self._draw_state.seed
        if self.random and seed is not None:
            self._log.info("compromiso_sorteo", result="success", compromiso=self.commitment.hex())

    @property
    def commitment(self) -> bytes:
        """The server's commitment (SHA-256 of its seed); zeros in fixed mode."""
        seed = self._draw_state.seed
        return seed_commitment(seed) if self.random and seed is not None else bytes(32)

    async def _betting_closed(self) -> None:
        """The barrier opened: draw now (fixed), or after the reveals (random)."""
        self._opened.set()
        if not self.random:
            await self.draw()
        elif self._reveal_task is None and not self.drawn:
            self._check_revealed()
            self._reveal_task = asyncio.create_task(
                self._draw_after_reveals(), name="lottery-reveals"
            )

    def _reveal_fields(self) -> dict[str, Any]:
        """The drawn random round's secrets, for the ``sorteo`` log line."""
        state = self._draw_state
        assert state.seed is not None
        reveals = " ".join(f"{a}:{n.hex()}" for a, n in sorted(state.reveals.items()))
        missing = [str(a) for a in sorted(state.commitments) if a not in state.reveals]
        return {
            "numero": state.number,
            "semilla": state.seed.hex(),
            "revelaciones": reveals or "-",
            "no_revelaron": " ".join(missing) or "-",
        }

    async def _draw_after_reveals(self) -> None:
        """Wait for every committed agency's nonce, up to the reveal deadline; then draw.

        Over a shared store "every" is checked against the store's own record
        before drawing: this server's copy may miss a commitment another
        server took, and a draw made without that agency's nonce would be
        made too early.
        """
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._reveal_deadline):
                await self._revealed.wait()
                while not await self._revealed_in_store():
                    self._revealed.clear()  # set again by a reveal, here or elsewhere
                    await self._revealed.wait()
        if self._stopping:
            return
        missing = self._unrevealed()
        if missing:
            self._log.warning(
                "revelacion", result="fail", motivo="reveal deadline passed",
                no_revelaron=" ".join(map(str, missing)),
            )  # fmt: skip
        self._draw_due = True
        await self.draw()

    async def _revealed_in_store(self) -> bool:
        """Whether every committed agency revealed, as the shared store says (True if unshared)."""
        if self._shared is None:
            return True
        try:
            self._adopt_draw_state(await self._shared.draw_state())
        except StoreError:
            return False  # the watcher sets `_revealed` again once it reads the store
        return all(a in self._reveals or a in self._refused for a in self._commitments)

    def _unrevealed(self) -> list[int]:
        return sorted(a for a in self._commitments if a not in self._reveals)

    def _check_revealed(self) -> None:
        if all(a in self._reveals or a in self._refused for a in self._commitments):
            self._revealed.set()

    async def receipt(self, agency: int) -> tuple[int, bytes] | None:
        """(bets, digest) the server holds of ``agency``, once the draw is made (else None).

        A random draw recorded them with the draw. A fixed one reads the
        store's progress: after the draw no batch is stored any more, so it
        is final.
        """
        if not self.drawn:
            return None
        if self.random:
            return self._draw_state.receipts.get(agency, (0, EMPTY_DIGEST))
        progress = await self._store.progress(agency)
        return progress.committed_bets, progress.digest

    async def commit(self, agency: int, commitment: bytes) -> str | None:
        """Record ``agency``'s commitment; why it is refused, or None.

        Raises:
            StoreError: it could not be stored; the agency may send it again.
        """
        if not self.random:
            return "this round's draw is fixed: it takes no commitments"
        if self.barrier.opened and agency not in self._commitments:
            await self._refresh_draw_state()  # it may have committed on another server
        if self.barrier.opened and agency not in self._commitments:
            return "betting has closed: too late to commit"
        stored = await self._store.commit_nonce(agency, commitment)
        self._commitments[agency] = stored
        if stored != commitment:
            self._log.warning(
                "compromiso_agencia", result="fail", agencia=agency, compromiso=commitment.hex(),
                registrado=stored.hex(),
            )  # fmt: skip
            return "a different commitment of this agency is on record"
        self._log.info(
            "compromiso_agencia", result="success", agencia=agency, compromiso=stored.hex()
        )
        return None

    async def reveal(self, agency: int, nonce: bytes) -> str | None:
        """Record ``agency``'s nonce after the barrier; why it is refused, or None.

        Raises:
            StoreError: it could not be stored; the agency may send it again.
        """
        why = None
        if agency not in self._commitments:
            await self._refresh_draw_state()  # it may have committed on another server
        commitment = self._commitments.get(agency)
        if self.drawn:
            why = "the draw is made: too late to reveal"
        elif commitment is None:
            why = "this agency made no commitment"
        elif agency in self._refused:  # one try: a wrong nonce counts as not revealing
            why = "an earlier reveal of this agency did not match its commitment"
        elif agency_commitment(agency, nonce) != commitment:
            why = "the nonce does not match the commitment"
            await self._store.refuse_reveal(agency)  # for good: a restart must not undo it
            self._refused.add(agency)  # counts as not revealing
            self._check_revealed()
        elif agency not in self._reveals and not await self._store.record_reveal(agency, nonce):
            why = "the draw is made: too late to reveal"
        if why is not None:
            self._log.warning("revelacion", result="fail", agencia=agency, motivo=why)
            return why
        if agency not in self._reveals:
            self._reveals[agency] = nonce
            self._log.info("revelacion", result="success", agencia=agency, nonce=nonce.hex())
        self._check_revealed()
        return None

    async def draw(self) -> None:
        """Make the draw, once; a store error is logged and the draw may be retried."""
        await self._take_draw(make=True)

    async def _take_draw(self, *, make: bool) -> None:
        """Make the draw (``make``), or load the one the store holds; then release the waiters.

        Loading is for a draw another server made (the watcher saw it): the
        store's draw is the only one, so this server serves its winners.
        """
        async with self._draw_lock:
            if self.drawn:
                return
            loop = asyncio.get_running_loop()
            started = loop.time()
            try:
                made = await self._store.draw() if make else False
                winners = await self._store.winners()
                # The number, seed and receipts the draw recorded.
                self._draw_state = await self._store.draw_state()
            except StoreError as exc:
                self._log.error("sorteo", result="fail", error=str(exc))
                return
            if not made and not make:
                self._log.info(
                    "sorteo_recibido", result="success",
                    cant_ganadores=sum(len(d) for d in winners.values()),
                )  # fmt: skip
            if made:  # else another server, or this one before a restart, made it
                self.stats.draw_seconds = loop.time() - started
                extra = self._reveal_fields() if self.random else {}
                self._log.info(
                    "sorteo",
                    result="success",
                    cant_ganadores=sum(len(d) for d in winners.values()),
                    segundos=round(self.stats.draw_seconds, 3),
                    **extra,
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
        await self._betting_closed()

    async def winners(
        self, agency: int, timeout: float, *, can_reveal: bool = True
    ) -> tuple[str, ...] | WinnersWait:
        """``agency``'s winning documents, waiting up to ``timeout`` for the draw.

        Args:
            can_reveal: False for a connection whose COMMIT was refused (its
                process lost the nonce on record): it is never asked to reveal.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self.random and not self.drawn:
            # Betting must close before a nonce is asked for; then it is asked at once.
            if not self.barrier.opened:
                try:
                    async with asyncio.timeout_at(deadline):
                        await self._opened.wait()
                except TimeoutError:
                    return WinnersWait.NOT_READY
                if self._stopping:
                    return WinnersWait.SHUTTING_DOWN
            if agency not in self._commitments or agency not in self._reveals:
                # It may have committed, or revealed, on another server.
                with contextlib.suppress(StoreError):
                    await self._refresh_draw_state()
            if (
                can_reveal
                and agency in self._commitments
                and agency not in self._reveals
                and agency not in self._refused
            ):
                return WinnersWait.REVEAL
        ready = (self._draw_due or not self.random) and not self._delaying
        if self.barrier.opened and not self.drawn and ready:  # the draw failed: retry
            await self.draw()
        try:
            async with asyncio.timeout_at(deadline):
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
        if agency in self._finishing or self.barrier.is_done(agency):
            # Done is per agency, not per connection: no bets after it, even
            # on a new connection (they would miss the draw).
            return ErrorCode.OUT_OF_ORDER, f"agency {agency} is done"
        return None

    async def admit(self, agency: int, speaker: Speaker) -> tuple[int, Progress]:
        """``speaker`` now speaks for ``agency``; returns its epoch and what the store has of it.

        An older connection of the same agency (its process died, or the line
        dropped) may still hold batches it read but the store has not
        committed. It is stopped, and those batches let settle, before the
        progress is read: else the WELCOME would be short, and a late old
        batch would take a sequence the agency reuses.

        A newer HELLO wins, also against one still admitting: when another
        handshake for ``agency`` begins during the awaits here, this one is
        not admitted (two connections told the same last sequence would both
        send its successor, and one of them would be acked but not stored).

        Over a shared store the same holds across servers: the store's
        admission bumps the agency's epoch (every batch ``speaker`` submits
        must carry the one returned here), so a batch another server read on
        an older connection and has not committed yet can never be stored
        once the progress returned here is read. Over any other store the
        epoch is 0.

        Raises:
            Superseded: a newer handshake for ``agency`` began meanwhile.
            StoreError: the store could not admit it; the agency may try again.
        """
        self._handshakes[agency] += 1
        mine = self._handshakes[agency]
        for other in self._speakers[agency]:
            other.stop_reading()
        self._speakers[agency].append(speaker)
        try:
            await self._committer.settle(agency)
            if self._shared is not None:
                # Two handshakes of one agency here may reach the store in either
                # order; if the superseded one's admission lands last, the newer
                # connection's epoch is stale and its batches are refused: a
                # reconnect, never a batch stored wrongly.
                epoch, progress = await self._shared.admit(agency)
            else:
                epoch, progress = 0, await self._store.progress(agency)
            if self._handshakes[agency] != mine:
                raise Superseded(f"agency {agency} began a newer connection")
        except BaseException:
            self.leave(agency, speaker)
            raise
        if self._shared is not None:
            self._epochs[speaker] = epoch
            self._servers[agency] = self._shared.server_id
            self._note_stored(agency, progress.last_seq, progress.committed_bets)
        return epoch, progress

    def leave(self, agency: int, speaker: Speaker) -> None:
        """``speaker``'s connection closed."""
        speakers = self._speakers.get(agency, [])
        with contextlib.suppress(ValueError):
            speakers.remove(speaker)
        if not speakers:
            self._speakers.pop(agency, None)
        epoch = self._epochs.pop(speaker, None)
        if self._shared is not None and epoch is not None:
            # Only STATUS reads the mark this clears (the epoch fences, not the
            # mark): a release that fails or never runs (kill -9) leaves an
            # agency shown on its last server until it is admitted again.
            task = asyncio.create_task(self._release(self._shared, agency, epoch))
            self._releases.add(task)
            task.add_done_callback(self._releases.discard)

    async def _release(self, store: SharedStore, agency: int, epoch: int) -> None:
        try:
            async with asyncio.timeout(RELEASE_TIMEOUT):
                await store.release(agency, epoch)
        except (StoreError, TimeoutError) as exc:
            self._log.warning("liberar_agencia", result="fail", agencia=agency, error=str(exc))
            return
        if not self._speakers.get(agency) and self._servers.get(agency) == store.server_id:
            self._servers.pop(agency, None)

    async def wait_for_room(self, bets: int = 1) -> None:
        """Backpressure: wait until the commit queue takes ``bets`` more bets."""
        await self._committer.wait_for_room(bets)

    def submit(
        self, agency: int, seq: int, records: Sequence[Record], input_rows: int = 0, epoch: int = 0
    ) -> asyncio.Future[Any]:
        """Hand a batch to the next group commit; the future gives its `CommitResult`.

        ``epoch`` is the one `admit` gave the submitting connection.
        """
        future = self._committer.submit(PendingBatch(agency, seq, records, input_rows, epoch))
        count = len(records)
        future.add_done_callback(lambda f: self._count(f, agency, seq, count))
        return future

    def _count(
        self,
        future: asyncio.Future[CommitResult],
        agency: int,
        seq: int,
        count: int,
    ) -> None:
        if future.cancelled() or future.result() is not Outcome.STORED:
            return
        last_seq, stored = self._stored.get(agency, (0, 0))
        self._stored[agency] = (max(last_seq, seq), stored + count)
        self.stats.batches_stored += 1
        self.stats.bets_stored += count

    def _note_stored(self, agency: int, last_seq: int, bets: int) -> None:
        """What the store says ``agency`` has: never behind what this server counted."""
        known_seq, known_bets = self._stored.get(agency, (0, 0))
        if (last_seq, bets) != (0, 0) or agency in self._stored:
            self._stored[agency] = (max(known_seq, last_seq), max(known_bets, bets))

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
        if self.barrier.arrive(agency) | await self._arrive_from_store():
            if self._fault_draw_delay:
                self._log.warning("sorteo", result="in_progress", demora=self._fault_draw_delay)
                self._delaying = True  # a winners query must not draw meanwhile
                try:
                    await asyncio.sleep(self._fault_draw_delay)
                finally:
                    self._delaying = False
            await self._betting_closed()

    # -- several servers (a shared store) -------------------------------------------------

    @property
    def server_id(self) -> str | None:
        """This server's id in a shared store (None: the store is this process's)."""
        return self._shared.server_id if self._shared is not None else None

    async def _watch(self, store: SharedStore) -> None:
        """Follow the round in the shared store until shutdown (see the module docstring)."""

        def backoff() -> Iterator[float]:  # up to the poll interval: never slower than polling
            return exponential_backoff(0.05, cap=max(self._poll_interval, 0.05), floor=0.5)

        delays = backoff()
        failing = False
        while not self._stopping:
            try:
                await store.wait_changed(self._poll_interval)
                view = await store.view()
                # Random draw: the commitments and reveals other servers took.
                state = await store.draw_state() if self.random and not self.drawn else None
                if failing:
                    failing, delays = False, backoff()
                    self._log.info("seguir_ronda", result="success")
                await self._follow(view, state)
            except Exception as exc:  # the store is down (or a bug): say so once, go on
                if not failing:
                    self._log.warning("seguir_ronda", result="fail", error=repr(exc))
                failing = True
                await asyncio.sleep(next(delays))

    async def _follow(self, view: RoundView, state: DrawState | None) -> None:
        """Take in what the shared store says of the round (the watcher's one step)."""
        self._servers = dict(view.servers)
        for agency, progress in view.progress.items():
            self._note_stored(agency, progress.last_seq, progress.committed_bets)
        if state is not None:
            self._adopt_draw_state(state)
        if view.drawn:
            await self._take_draw(make=False)  # another server made it: serve its winners
            return
        opened = False
        for agency in sorted(view.done - self.barrier.done):
            if 1 <= agency <= self.agencies:
                opened |= self.barrier.arrive(agency)  # done on another server
        if opened:  # the server that stored the last DONE may have died before drawing
            self._log.info("barrera", result="success", detalle="last agency done elsewhere")
            await self._betting_closed()
        elif self.barrier.opened and not self.drawn and not self._delaying:
            if self.random and self._reveal_task is None:
                # A DONE whose handler was cancelled after opening the barrier
                # (shutdown) never started the reveals: start them now.
                await self._betting_closed()
            elif self._draw_due or not self.random:
                # Betting closed and nobody recorded the draw: the server that
                # should have died, or it failed here. The store makes it once.
                await self.draw()

    async def _arrive_from_store(self) -> bool:
        """A shared store: count every agency done on any server; True if that opened the barrier.

        Read after this server's own done mark is stored, so of two servers
        storing the last two marks at once, at least the later one sees them
        both (and both may: the store makes one draw).
        """
        if self._shared is None:
            return False
        try:
            done = await self._shared.done_agencies()
        except StoreError as exc:  # the watcher will see them once the store is back
            self._log.warning("barrera", result="fail", error=str(exc))
            return False
        opened = False
        for agency in sorted(done - self.barrier.done):
            if 1 <= agency <= self.agencies:
                opened |= self.barrier.arrive(agency)
        return opened

    async def _refresh_draw_state(self) -> None:
        """A shared store: read the commitments and reveals every server took."""
        if self._shared is not None and not self.drawn:
            self._adopt_draw_state(await self._shared.draw_state())

    def _adopt_draw_state(self, state: DrawState) -> None:
        self._commitments.update(state.commitments)
        for agency, nonce in state.reveals.items():
            self._reveals.setdefault(agency, nonce)
        self._refused |= state.refused
        self._check_revealed()

    # -- reading -----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The round's state, for STATUS replies, ``lottery status`` and metrics.

        From memory: it costs no store round trip, however often it is asked.
        Once the draw is made it also holds ``winning_number`` and each
        agency's ``winners`` (how many); before it, those keys are absent.
        Over a shared store it shows the whole round (as of the watcher's
        last read) and each agency's ``server`` (the id of the server it is
        connected to, or None), plus this server's ``server_id``.
        """
        barrier = self.barrier
        status: dict[str, Any] = {
            "round": self.round_id,
            "agencies": self.agencies,
            "opened": barrier.opened,
            "drawn": self.drawn,
            "draw_seconds": self.stats.draw_seconds,
            "connections": self.open_connections(),
            "agency": [
                {
                    "id": agency,
                    "committed_bets": self._stored.get(agency, (0, 0))[1],
                    "last_seq": self._stored.get(agency, (0, 0))[0],
                    "connected": bool(self._speakers.get(agency)) or agency in self._servers,
                    "done": barrier.is_done(agency),
                }
                for agency in range(1, self.agencies + 1)
            ],
        }
        if self._shared is not None:  # added keys only: readers of the old ones go on
            status["server_id"] = self._shared.server_id
            for entry in status["agency"]:
                entry["server"] = self._servers.get(entry["id"])
        if self._winners is not None:  # added, never changed: readers of the old keys go on
            status["winning_number"] = (
                self._draw_state.number if self.random else self.winning_number
            )
            for entry in status["agency"]:
                entry["winners"] = len(self._winners.get(entry["id"], ()))
        status.update(self._draw_status(status["agency"]))
        return status

    def _draw_status(self, agencies: list[dict[str, Any]]) -> dict[str, Any]:
        """The draw's part of the status (added keys only; docs/DRAW.md)."""
        state = self._draw_state
        extra: dict[str, Any] = {"draw_mode": self.draw_mode}
        if self.drawn and state.number is not None:
            extra["number"] = state.number
        if not self.random:
            return extra
        extra["commitment"] = self.commitment.hex()
        for entry in agencies:
            entry["committed"] = entry["id"] in self._commitments
            entry["revealed"] = entry["id"] in self._reveals
        if self.drawn and state.seed is not None:  # the seed is secret until the draw
            extra["seed"] = state.seed.hex()
            extra["reveals"] = {str(a): n.hex() for a, n in sorted(state.reveals.items())}
            extra["not_revealed"] = [a for a in sorted(state.commitments) if a not in state.reveals]
        return extra

    # -- shutdown ------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Wake every winners query (they answer SHUTTING_DOWN) and stop the deadline."""
        self._stopping = True
        self._opened.set()
        self.barrier.shutdown()
        if self._deadline_task is not None:
            self._deadline_task.cancel()
        if self._reveal_task is not None:
            self._reveal_task.cancel()
        if self._watch_task is not None:
            self._watch_task.cancel()

    async def wait_closed(self) -> None:
        """Wait for the round's tasks and any draw under way (before the store closes)."""
        if self._watch_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        if self._releases:  # each bounded by RELEASE_TIMEOUT
            await asyncio.gather(*self._releases, return_exceptions=True)
        if self._deadline_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._deadline_task
        if self._reveal_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reveal_task
        async with self._draw_lock:
            pass
