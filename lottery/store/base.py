"""What a store must guarantee: the contract every backend keeps.

The server relies on these five guarantees and on nothing else, so a second
backend (a shared PostgreSQL, say) is a new class, not a change to the server:

1. **Atomic group commit with per-agency dedup.** `commit` stores a group of
   batches in one transaction: when it returns, every batch reported `STORED`
   is durable (it survives a crash and, with ``sync=FULL``, a power loss), and
   the server may acknowledge it. If it raises `StoreError`, none of the group
   is stored. Per agency it keeps the last stored sequence and bet count *in
   the same transaction* as the bets: a batch whose sequence is already stored
   is `DUPLICATE` (acknowledged again, stored once); one that skips ahead is
   `GAP` (refused).
2. **Durable done marks.** After `mark_done(agency)` returns, `done_agencies`
   includes it, across restarts.
3. **A draw made once.** `draw` records the draw; exactly one call over the
   store's whole life returns True, however many servers or restarts ask.
   Once it is recorded, `commit` stores nothing more: every batch is `LATE`.
   A commit and the draw are ordered: each commit is wholly before the draw
   (its bets take part) or wholly after it (`LATE`).
4. **Winners fixed by the stored bets.** `winners` lists each agency's
   winning documents among the bets stored before the draw, in store order.
5. **Progress reads.** `progress` and `all_progress` report what is durably
   stored, per agency, as a `Progress`: the last stored sequence, the bets
   stored, the agency's input position after its last stored bet (the
   ``input_rows`` of its last stored batch) and its agency digest
   (`lottery.models.agency_digest` over every stored bet's record, in
   sequence order). All four are kept *in the same transaction* as the bets,
   and a restarted agency resumes from them: it skips ``input_rows`` rows of
   its input and checks the digest. `round_date` is the day every bet of the
   round is validated against, recorded when the store is created.
6. **A draw nobody can rig** (docs/DRAW.md). A store opened for a round
   records its draw mode (``fixed``, or ``random``) with the round: reopened
   with the other one it refuses (a store holding bets but no mode is a
   fixed round). A random round's secret seed is chosen and stored when the
   round is created, before any bet. `commit_nonce` stores an agency's
   *first* commitment durably and returns the one on record; `record_reveal`
   stores a nonce (already checked against that commitment by the caller)
   only before the draw, and never after `refuse_reveal` (a wrong nonce
   counts as not revealing, across restarts); `set_beacon` likewise. In random mode `draw` does,
   in the same transaction that records it: the number from the seed, the
   reveals stored by then and the beacon (`lottery.draw.derive_number`), the
   winners by reading every stored bet, and each agency's receipt: its bet
   count and agency digest recomputed from its stored batches in sequence
   order (`lottery.models.agency_digest`, the digest of guarantee 5, so on an
   undamaged store it equals `progress`'s).
   `draw_state` reads all of it back, the same after any restart.

7. **Fencing, for a store several servers share** (`SharedStore`). Each
   handshake calls `admit(agency)`, which bumps the agency's *epoch* and
   records this server as the one the agency speaks to, in one transaction,
   and returns the new epoch with the agency's progress. Every batch carries
   the epoch of the connection that read it (`PendingBatch.epoch`); `commit`
   checks it *inside its own transaction*, with the agency's progress row
   locked: a batch whose epoch is no longer the agency's current one is
   `STALE`, not stored, and takes no sequence number. So a server that
   stalled with batches read but not committed cannot store them after the
   agency moved to another server and was told what is stored there.

Two shapes of the same contract:

- `Store` blocks. A backend whose driver blocks (sqlite3) implements it and
  runs behind `ThreadedStore`, on one thread of its own, off the event loop.
- `AsyncStore` is what the server holds. A backend with an asyncio driver may
  implement it natively, with no thread.

`SharedStore` adds what several servers over one store need: fencing
(guarantee 7), a view of the whole round (`RoundView`) and a way to wait for
another server's change (`wait_changed`: LISTEN/NOTIFY, with polling behind).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from ..models import EMPTY_DIGEST, Record

__all__ = [
    "AsyncStore",
    "DrawState",
    "Outcome",
    "PendingBatch",
    "Progress",
    "RoundView",
    "SharedStore",
    "Store",
    "refused_by_sequence",
]


class Progress(NamedTuple):
    """How far an agency got, as stored (guarantee 5); what a WELCOME says."""

    last_seq: int = 0
    committed_bets: int = 0
    input_rows: int = 0  # the agency's input position after its last stored bet
    digest: bytes = EMPTY_DIGEST  # the agency digest of every stored bet


class Outcome(enum.Enum):
    """What `Store.commit` did with one batch."""

    STORED = "stored"
    DUPLICATE = "duplicate"  # its sequence was already committed: acknowledge again
    GAP = "gap"  # its sequence skips ahead of the last committed one: refuse
    LATE = "late"  # the draw was made first: not stored
    STALE = "stale"  # a newer connection of its agency was admitted (guarantee 7): not stored


def refused_by_sequence(seq: int, last_seq: int) -> Outcome | None:
    """Guarantee 1's per-agency dedup, for every backend: DUPLICATE, GAP, or None (store it)."""
    if seq <= last_seq:
        return Outcome.DUPLICATE
    if seq != last_seq + 1:
        return Outcome.GAP
    return None


@dataclass(frozen=True, slots=True)
class PendingBatch:
    """One batch waiting for a commit: whose, which sequence, which bets, where in the input."""

    agency: int
    seq: int
    records: Sequence[Record]  # a `Records` from the server; any rows will do
    input_rows: int = 0  # the agency's input position after the batch's last bet
    #: The fencing token of the connection that read it (`SharedStore.admit`);
    #: 0 for a store only one server uses, which ignores it.
    epoch: int = 0


@dataclass(frozen=True)
class DrawState:
    """What the store holds about the draw (guarantee 6)."""

    mode: str = "fixed"
    #: The server's secret seed (random mode); published only once drawn.
    seed: bytes | None = None
    commitments: dict[int, bytes] = field(default_factory=dict)
    reveals: dict[int, bytes] = field(default_factory=dict)
    #: Agencies that revealed a wrong nonce: they count as not revealing, for good.
    refused: set[int] = field(default_factory=set)
    beacon: bytes = b""
    drawn: bool = False
    #: The winning number once drawn (random), or the fixed one.
    number: int | None = None
    #: agency -> (bets, receipt digest), recorded at a random draw.
    receipts: dict[int, tuple[int, bytes]] = field(default_factory=dict)


class Store(Protocol):
    """The contract (see the module docstring), for a backend that blocks."""

    #: The round's identity, made when the store was created and never changed.
    round_id: str

    def progress(self, agency: int) -> Progress:
        """How far ``agency`` got (guarantee 5); ``Progress()`` if it stored nothing."""
        ...

    def all_progress(self) -> dict[int, Progress]:
        """`progress` of every agency that stored something."""
        ...

    def round_date(self) -> str:
        """The round's date (ISO): every bet is valid or not as of this day."""
        ...

    def commit(self, batches: Sequence[PendingBatch]) -> list[Outcome]:
        """Store ``batches`` in one durable transaction; one outcome per batch."""
        ...

    def mark_done(self, agency: int) -> None:
        """Durably record that ``agency`` has sent all its bets."""
        ...

    def done_agencies(self) -> set[int]:
        """The agencies recorded done."""
        ...

    def drawn(self) -> bool:
        """Whether the draw is recorded."""
        ...

    def draw(self) -> bool:
        """Record the draw; True only for the call that recorded it."""
        ...

    def winners(self) -> dict[int, list[str]]:
        """Each agency's winning documents (empty lists are left out)."""
        ...

    def bets(self) -> Iterator[tuple[int, str, str, str, str, int]]:
        """Every stored bet, in the order it was stored (for the export)."""
        ...

    def draw_state(self) -> DrawState:
        """The draw's mode, seed, commitments, reveals and results (guarantee 6)."""
        ...

    def commit_nonce(self, agency: int, commitment: bytes) -> bytes:
        """Store ``agency``'s first commitment; returns the one on record."""
        ...

    def record_reveal(self, agency: int, nonce: bytes) -> bool:
        """Store ``agency``'s checked nonce; False once drawn or with no commitment."""
        ...

    def refuse_reveal(self, agency: int) -> None:
        """Durably record that ``agency`` revealed a wrong nonce: no reveal of it counts."""
        ...

    def set_beacon(self, beacon: bytes) -> None:
        """Store the outside beacon; `StoreError` once drawn."""
        ...

    def close(self) -> None: ...


class AsyncStore(Protocol):
    """The same contract, awaited: what the server's `Round` and `Committer` hold."""

    round_id: str

    async def progress(self, agency: int) -> Progress: ...

    async def all_progress(self) -> dict[int, Progress]: ...

    async def round_date(self) -> str: ...

    async def commit(self, batches: Sequence[PendingBatch]) -> list[Outcome]: ...

    async def mark_done(self, agency: int) -> None: ...

    async def done_agencies(self) -> set[int]: ...

    async def drawn(self) -> bool: ...

    async def draw(self) -> bool: ...

    async def winners(self) -> dict[int, list[str]]: ...

    async def draw_state(self) -> DrawState: ...

    async def commit_nonce(self, agency: int, commitment: bytes) -> bytes: ...

    async def record_reveal(self, agency: int, nonce: bytes) -> bool: ...

    async def refuse_reveal(self, agency: int) -> None: ...

    async def aclose(self) -> None:
        """Close the store; safe to call twice."""
        ...


@dataclass(frozen=True)
class RoundView:
    """The whole round as a shared store holds it: every server's part."""

    done: frozenset[int] = frozenset()
    drawn: bool = False
    #: agency -> what it has stored (every agency that stored something).
    progress: dict[int, Progress] = field(default_factory=dict)
    #: agency -> id of the server it is connected to now (absent: none).
    servers: dict[int, str] = field(default_factory=dict)


class SharedStore(AsyncStore, Protocol):
    """An `AsyncStore` several server processes share: one round across them."""

    #: This server's id among the store's users (host:port, or one given).
    server_id: str

    async def admit(self, agency: int) -> tuple[int, Progress]:
        """Bump ``agency``'s epoch, record this server as its server (guarantee 7).

        Returns the new epoch and what is stored of the agency, read in the
        same transaction: every later commit of a batch with an older epoch
        is `Outcome.STALE`.
        """
        ...

    async def release(self, agency: int, epoch: int) -> None:
        """The connection admitted with ``epoch`` closed: clear this server's mark
        of ``agency`` if no newer admission replaced it."""
        ...

    async def view(self) -> RoundView:
        """The whole round: done marks, the draw, progress and servers."""
        ...

    async def wait_changed(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for another server's change (a done mark, the
        draw, an admission); True if one was signalled, False on timeout (the
        caller then reads `view` anyway: polling is the fallback)."""
        ...
