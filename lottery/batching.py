"""The first two stages of `BatchSender`: the reader and the cutter.

- `read_blocks`, the *reader*, parses and validates the source in a worker
  thread, a block of rows at a time, so file I/O never blocks the event loop;
- `cut_batches`, the *cutter*, skips what an earlier run stored (by input
  position, checked by digest: lottery/resume.py), then cuts records into
  batches of at most ``batch_max_amount`` bets that also fit the 8 KiB frame
  limit, each with the input position of its last bet, and hands each
  block's batches over as one list. The batches go out unnumbered: the
  sender numbers each one when it first goes out.

Both are joined to the sender (lottery/sender.py) by bounded queues.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Sequence
from typing import Any

from .csvfiles import RecordBlock
from .protocol import BatchCutter
from .readers import BlockReader
from .reports import SendReport
from .session import Session
from .window import Outgoing

__all__ = ["BATCH_LISTS_QUEUE_SIZE", "BLOCKS_PER_READ", "cut_batches", "read_blocks"]

#: Blocks' worth of batches cut and waiting for the sender: a block's batches
#: travel together, one hand-over per block, not per batch.
BATCH_LISTS_QUEUE_SIZE = 2


def _lines_of(blocks: collections.deque[Sequence[int]], count: int) -> Sequence[int]:
    """The input positions of the next ``count`` records, taken from ``blocks``."""
    parts: list[Sequence[int]] = []
    while count:
        head = blocks[0]
        take = min(count, len(head))
        parts.append(head[:take])
        count -= take
        if take == len(head):
            blocks.popleft()
        else:
            blocks[0] = head[take:]
    if len(parts) == 1:
        return parts[0]  # a range, mostly: no list of a million positions
    return [line for part in parts for line in part]


#: Blocks read per trip to the worker thread: small blocks are checked faster
#: (they stay in the CPU's cache), and each trip costs a thread hand-over and
#: GIL hand-overs with the loop while it lasts. 16 (1 MiB of file a trip):
#: 12-17 ms less CPU per 200,000-bet agency than 4 (scripts/bench_agency.py).
BLOCKS_PER_READ = 16


def _read_some(reader: BlockReader) -> list[RecordBlock | None]:
    """Up to `BLOCKS_PER_READ` blocks of ``reader``; the list ends with None at the end."""
    blocks: list[RecordBlock | None] = []
    while len(blocks) < BLOCKS_PER_READ:
        block = reader.read_block()
        blocks.append(block)
        if block is None:
            break
    return blocks


async def read_blocks(
    reader: BlockReader, out: asyncio.Queue[Any], log: Any, counted: Callable[[int], None]
) -> None:
    """Put ``reader``'s blocks on ``out``, then None; log rejected rows, count valid bets."""
    logged = 0
    while True:
        # Reading and validating blocks is blocking work: off the loop.
        blocks = await asyncio.to_thread(_read_some, reader)
        for row in reader.rejected[logged:]:
            log.warning(
                "apuesta_rechazada", result="fail", archivo=row.path, linea=row.line,
                motivo=row.reason,
            )  # fmt: skip
        logged = len(reader.rejected)
        for block in blocks:
            if block is None:
                await out.put(None)
                return
            counted(block.count)
            await out.put(block)


async def cut_batches(
    inp: asyncio.Queue[RecordBlock | None],
    out: asyncio.Queue[list[Outgoing] | None],
    report: SendReport,
    batch_max_amount: int,
    session: Session,
    base: int,
) -> None:
    """Skip the stored prefix of ``inp``'s records, cut the rest into batches on ``out``.

    ``session`` holds what to skip and the draw's digest; ``base`` is the
    input rows of the sources sent before this one.
    """
    cutter = BatchCutter(batch_max_amount)
    resume, draw = session.resume, session.draw
    lines: collections.deque[Sequence[int]] = collections.deque()  # of records in the cutter
    while (block := await inp.get()) is not None:
        # Positions count from the start of everything this process sent.
        at = block.lines
        at = (
            range(at.start + base, at.stop + base)
            if isinstance(at, range)
            else [base + n for n in at]
        )
        # What an earlier run of this agency stored: skipped, and checked.
        data, at, skipped = resume.take(block.data, at)
        if skipped and draw is not None:  # acknowledged by the WELCOME: in the receipt
            draw.digest.update(block.data[: len(block.data) - len(data)], skipped)
        report.skipped += skipped
        if at:
            lines.append(at)
        cut = [
            Outgoing(0, records, count, lines=_lines_of(lines, count))
            for records, count in cutter.feed(data)
        ]
        if cut:  # a block's batches in one hand-over: the writer takes them as room allows
            await out.put(cut)
    resume.check()  # the input may end inside the stored prefix: check it all the same
    last = cutter.flush()
    if last is not None:  # the last, short batch: never drop it
        records, count = last
        await out.put([Outgoing(0, records, count, lines=_lines_of(lines, count))])
    await out.put(None)
