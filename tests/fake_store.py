"""A fake blocking store for the committer, store-thread and round tests."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Iterator, Sequence
from typing import TypeVar

from lottery.protocol import Record
from lottery.store import DrawState, Outcome, PendingBatch, Progress

#: Longest a gate may stay closed before the fake store gives up (a test bug).
GATE_TIMEOUT = 10.0
#: How long a future must stay pending to count as "still pending".
STILL_PENDING = 0.05
#: Longest an expected result may take: a dead commit loop fails fast, not at the test timeout.
SETTLE_TIMEOUT = 5.0

T = TypeVar("T")


def rec(document: str, number: str = "1234") -> Record:
    return ("Ana", "Pérez", document, "1990-05-17", number)


def batch(agency: int, seq: int, bets: int = 1) -> PendingBatch:
    """A batch of ``bets`` bets, documents named after agency, sequence and index."""
    return PendingBatch(agency, seq, tuple(rec(f"{agency}{seq:03d}{i:03d}") for i in range(bets)))


class FakeStore:
    """An in-memory `Store` that records its calls and threads, and can block or fail."""

    def __init__(self) -> None:
        self.round_id = "20261201-000000-fa4e00"
        self.threads: set[int] = set()
        self.calls: list[str] = []
        self.commits: list[list[PendingBatch]] = []
        self.finished_commits = 0
        self.commit_entered = threading.Event()
        self.commit_gate = threading.Event()
        self.commit_gate.set()
        #: commit call index -> exception that call raises (after its gate).
        self.commit_failures: dict[int, BaseException] = {}
        #: (agency, seq) -> outcome; every other batch is STORED.
        self.outcomes: dict[tuple[int, int], Outcome] = {}
        self.draw_entered = threading.Event()
        self.draw_gate = threading.Event()
        self.draw_gate.set()
        self.draw_failures: list[BaseException] = []
        self.draw_calls = 0
        self.is_drawn = False
        self.done: set[int] = set()
        self.closed = False

    def release(self) -> None:
        """Open every gate, so the store thread can never stay blocked."""
        self.commit_gate.set()
        self.draw_gate.set()

    def _enter(self, name: str) -> None:
        self.threads.add(threading.get_ident())
        self.calls.append(name)
        assert not self.closed, f"{name} called on a closed store"

    def open(self) -> FakeStore:
        """The ``open_store`` of `ThreadedStore.open`: records the thread it is called on."""
        self._enter("open")
        return self

    def progress(self, agency: int) -> Progress:
        self._enter("progress")
        return Progress()

    def all_progress(self) -> dict[int, Progress]:
        self._enter("all_progress")
        return {}

    def round_date(self) -> str:
        return "2024-06-01"

    def commit(self, batches: Sequence[PendingBatch]) -> list[Outcome]:
        self._enter("commit")
        if self.is_drawn:  # the contract: nothing is stored after the draw
            return [Outcome.LATE] * len(batches)
        index = len(self.commits)
        self.commits.append(list(batches))
        self.commit_entered.set()
        if not self.commit_gate.wait(GATE_TIMEOUT):
            raise AssertionError("the test never opened the commit gate")
        failure = self.commit_failures.get(index)
        if failure is not None:
            raise failure
        self.finished_commits += 1
        return [self.outcomes.get((b.agency, b.seq), Outcome.STORED) for b in batches]

    def mark_done(self, agency: int) -> None:
        self._enter("mark_done")
        self.done.add(agency)

    def done_agencies(self) -> set[int]:
        self._enter("done_agencies")
        return set(self.done)

    def drawn(self) -> bool:
        self._enter("drawn")
        return self.is_drawn

    def draw(self) -> bool:
        self._enter("draw")
        self.draw_calls += 1
        self.draw_entered.set()
        if not self.draw_gate.wait(GATE_TIMEOUT):
            raise AssertionError("the test never opened the draw gate")
        if self.draw_failures:
            raise self.draw_failures.pop(0)
        made = not self.is_drawn
        self.is_drawn = True
        return made

    def winners(self) -> dict[int, list[str]]:
        self._enter("winners")
        return {1: ["7574"]} if self.is_drawn else {}

    def bets(self) -> Iterator[tuple[int, str, str, str, str, int]]:
        self._enter("bets")
        return iter(())

    def draw_state(self) -> DrawState:
        # Not recorded in `calls`: the round reads it once at start, in every test.
        return DrawState(drawn=self.is_drawn)

    def commit_nonce(self, agency: int, commitment: bytes) -> bytes:
        return commitment

    def record_reveal(self, agency: int, nonce: bytes) -> bool:
        return not self.is_drawn

    def refuse_reveal(self, agency: int) -> None:
        return None

    def set_beacon(self, beacon: bytes) -> None:
        return None

    def close(self) -> None:
        self._enter("close")
        self.closed = True


async def wait_for_thread_event(event: threading.Event) -> None:
    """Await a threading.Event set by the store thread, without blocking the loop."""
    assert await asyncio.to_thread(event.wait, GATE_TIMEOUT), "the store never got there"


async def settled(aw: Awaitable[T]) -> T:
    """Await ``aw``, failing the test if it does not complete in SETTLE_TIMEOUT."""
    async with asyncio.timeout(SETTLE_TIMEOUT):
        return await aw


async def still_pending(*aws: asyncio.Future[object]) -> bool:
    """Whether none of ``aws`` completes within a short while."""
    done, _ = await asyncio.wait(aws, timeout=STILL_PENDING)
    return not done
