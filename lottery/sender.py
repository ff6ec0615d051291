"""`BatchSender`: how `AsyncAgency.send_bets` streams a file of bets to the server.

The asyncio version of the seed's goroutines and channels: three tasks in one
`TaskGroup`, joined by bounded queues. The *reader* validates the source in a
worker thread and the *cutter* skips what an earlier run stored and cuts the
rest into batches (both lottery/batching.py); the *sender* keeps up to
``max_in_flight`` batches on the wire, while a helper task reads their acks.
A batch, numbered (``seq``) when it first goes out, stays in the window until
its ack arrives (lottery/window.py); if the line is lost, the session
reconnects with back-off, the WELCOME says which batches the server already
stored, and the rest are sent again. The server drops a resent batch it
already has, so every bet is stored exactly once.

A bet the server refuses (ERROR ``INVALID_BET``; both sides validate as of the
round's date, so it should not happen) is reported with its file and line and
left out; the batches from it on, not stored, are renumbered and sent again
without it (lottery/refusal.py).

The reader works on any `readers.BlockReader` (a CSV file or an iterable);
`SendReport`, what a send did, is in lottery/reports.py.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

from .batching import BATCH_LISTS_QUEUE_SIZE, cut_batches, read_blocks
from .connection import Connection, raise_for, run_together
from .csvfiles import RecordBlock
from .log import get_logger
from .protocol import Ack, Message
from .readers import BlockReader, Source, open_reader
from .refusal import RefusedBet, leave_out, refused_bet
from .reports import SendReport
from .session import Session
from .window import Outgoing, Window

__all__ = ["BLOCK_QUEUE_SIZE", "BatchSender", "SendReport"]

#: Blocks of validated records waiting for the cutter.
BLOCK_QUEUE_SIZE = 4


class BatchSender:
    """Sends batches over a `Session`, and counts them for a progress display."""

    def __init__(self, session: Session, batch_max_amount: int, max_in_flight: int) -> None:
        self.session = session
        self.batch_max_amount = batch_max_amount
        self.max_in_flight = max_in_flight
        self.batches_sent = 0
        self.bets_read = 0  # valid bets read from the source
        self.bets_sent = 0  # resends not counted again
        self.bets_acknowledged = 0
        #: Input position after the last bet stored (by an earlier run or this one).
        self.input_rows_stored = 0
        #: Seconds from sending each batch to its ack (the latest 100,000).
        self.ack_latencies: collections.deque[float] = collections.deque(maxlen=100_000)
        self._window: Window | None = None  # while send() runs
        self._reader: BlockReader | None = None  # the same
        self._base = 0  # input rows of the sources sent before this one
        self._log = get_logger(agencia=session.agency_id)

    def __repr__(self) -> str:
        return (
            f"<BatchSender read={self.bets_read} sent={self.bets_sent} "
            f"acknowledged={self.bets_acknowledged} batches_sent={self.batches_sent} "
            f"in_flight={len(self._window.unacked) if self._window else 0}>"
        )

    async def send_source(self, source: Source) -> SendReport:
        """Open a reader for ``source`` (a path or an iterable of bets) and `send` it."""
        # The first handshake says the round's date, and where to resume: before reading.
        await self.session.ensure_open()
        reader = await open_reader(source, self.session.today)
        try:
            return await self.send(reader)
        finally:
            reader.close()

    async def send(self, reader: BlockReader) -> SendReport:
        """Send every record ``reader`` gives; returns once all are acknowledged.

        Raises:
            ResumeMismatch: the input does not start with the bets already stored.
        """
        report = SendReport()
        self._reader = reader
        self._base = self.session.position
        self.input_rows_stored = max(self.input_rows_stored, self.session.resume.input_rows)
        blocks: asyncio.Queue[RecordBlock | None] = asyncio.Queue(BLOCK_QUEUE_SIZE)
        batches: asyncio.Queue[list[Outgoing] | None] = asyncio.Queue(BATCH_LISTS_QUEUE_SIZE)
        try:
            await run_together(
                read_blocks(reader, blocks, self._log, self._count_read),
                cut_batches(
                    blocks, batches, report, self.batch_max_amount, self.session, self._base
                ),
                self._send_batches(batches, report),
            )
        except BaseException:
            # Batches numbered but never acknowledged are abandoned: the next
            # handshake takes the sequence from what the server stored.
            self.session.resync = True
            await self.session.drop()
            raise
        finally:
            self._window = None
            self.session.position = self._base + reader.rows
        report.rejected = sorted(reader.rejected + report.rejected, key=lambda r: r.line)
        report.input_rows = self.input_rows_stored
        return report

    def _count_read(self, bets: int) -> None:
        self.bets_read += bets

    def _number(self, item: Outgoing) -> Outgoing:
        item.seq, self.session.next_seq = self.session.next_seq, self.session.next_seq + 1
        return item

    async def _send_batches(self, batches: asyncio.Queue[Any], report: SendReport) -> None:
        window = self._window = Window(self.max_in_flight)
        retry = self.session.retry()
        while True:
            acknowledged = report.acknowledged
            try:
                conn = await self.session.ensure_open()
                # The handshake says what the server stored: those need no resend.
                self._acknowledged(window.acknowledge_through(self.session.last_seq), report)
                now = asyncio.get_running_loop().time()
                for item in window.unacked.values():  # resend, in order, after a reconnect
                    item.sent = now
                    conn.send_batch(item.seq, item.records, item.count, item.input_rows)
                await run_together(
                    self._write_batches(conn, batches, window),
                    self._receive_acks(conn, window, report),
                )
                return
            except RefusedBet as exc:
                # Not a failure of the line: the bet is left out and the rest sent again.
                await self.session.drop()
                name = self._reader.name if self._reader else "<bets>"
                self.session.next_seq = leave_out(window, exc, report, name, self._base, self._log)
            except Exception as exc:
                if report.acknowledged > acknowledged:  # progress: a new run of tries
                    retry.reset()
                await self.session.retry_or_raise(retry, exc, "sending batches")

    def _acknowledged(self, items: list[Outgoing], report: SendReport, now: float = 0.0) -> None:
        draw = self.session.draw
        for item in items:  # in sequence order: the order the receipt digests them
            self.input_rows_stored = max(self.input_rows_stored, item.input_rows)
            if draw is not None:
                draw.digest.update(item.records, item.count)
            report.acknowledged += item.count
            self.bets_acknowledged += item.count
            if now:
                self.ack_latencies.append(now - item.sent)

    async def _write_batches(
        self, conn: Connection, batches: asyncio.Queue[list[Outgoing] | None], window: Window
    ) -> None:
        loop = asyncio.get_running_loop()
        pending = window.pending
        while not window.input_done:
            await window.wait_for_room()
            if not pending:
                ready = await batches.get()
                if ready is None:
                    window.finish_input()
                    return
                pending.extend(ready)
            going: list[Outgoing] = []
            now = loop.time()
            while pending and len(window.unacked) < window.size:
                item = self._number(pending.popleft())
                window.add(item)  # before sending: a lost line resends it
                item.sent = now
                going.append(item)
                self.bets_sent += item.count
            # What the window lets out goes in one write (acks come in bunches,
            # so does room). The window bounds what the transport buffers; a
            # drain (and its timer) only when the kernel did not take it all.
            conn.send_batches([(i.seq, i.records, i.count, i.input_rows) for i in going])
            self.batches_sent += len(going)
            if conn.write_buffered:
                await conn.drain(self.session.timeout)

    async def _receive_acks(self, conn: Connection, window: Window, report: SendReport) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await window.wait_for_unacked()
            if window.input_done and not window.unacked:
                return
            reply: Message | None = await conn.receive(self.session.timeout)
            # The acks already read are taken together: one window change for them all.
            last = None
            while isinstance(reply, Ack):
                last = reply.seq
                reply = conn.next_buffered()
            if last is not None:
                self._acknowledged(window.acknowledge_through(last), report, loop.time())
            if reply is None:
                continue
            refused = refused_bet(reply)
            if refused is not None:
                raise refused
            raise_for(reply)
