#!/usr/bin/env python3
"""How long the draw takes over many stored bets.

    python scripts/bench_draw.py --bets 10000000                 # fixed draw (tp0)
    python scripts/bench_draw.py --bets 10000000 --draw random   # docs/DRAW.md
    python scripts/bench_draw.py --store postgresql://postgres@127.0.0.1:5432/postgres

Fills a data directory with ``--bets`` bets from 5 agencies (through
`SQLiteStore.commit`, as the server stores them), with agencies 1-4 already
done. Then it starts a real ``lottery server`` on it, sends agency 5's DONE,
and measures from that DONE to its acknowledgement, which the server sends
after the draw is made and ``action: sorteo | result: success`` is logged.

With ``--draw random`` the draw comes after the reveals, not in DONE's
answer: agency 5 commits to a nonce after its handshake, says DONE, asks for
its winners, is asked for its nonce (REVEAL_WANTED), reveals it, and asks
again; the time measured is from the REVEAL (the last one the draw waits
for) to the RECEIPT and WINNERS, which come after the draw: the number, the
read of every stored bet for the winners, and every agency's receipt digest.

With ``--store DSN`` the bets go to a new database on that PostgreSQL server
(through `PostgresStore.commit`, dropped afterwards) and the server runs with
``--store``: its draw picks the winners with one SQL scan of the ``bets`` table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg

from lottery.draw import agency_commitment
from lottery.protocol import (
    Ack,
    Commit,
    Done,
    DrawInfo,
    DrawQuery,
    Hello,
    Receipt,
    Reveal,
    RevealWanted,
    Welcome,
    Winners,
    WinnersQuery,
    encode,
)
from lottery.store import PendingBatch, PostgresStore, SQLiteStore
from pg_cluster import fresh_database
from roundrunner import ReplyReader, start_server, stop_server

AGENCIES = 5
BATCH = 8192


def batches(bets: int, winners: int) -> Iterator[PendingBatch]:
    """The bets to store, batch by batch, ``winners`` of them on the winning number."""
    rng = random.Random(7574)
    winning_rows = set(rng.sample(range(bets), winners))
    seqs = dict.fromkeys(range(1, AGENCIES + 1), 0)
    row = 0
    while row < bets:
        agency = (row // BATCH) % AGENCIES + 1
        count = min(BATCH, bets - row)
        records = [
            ("Ana", "Pérez", str(10_000_000 + row + i), "1990-05-17",
             "7574" if row + i in winning_rows else str((row + i) % 7574))
            for i in range(count)
        ]  # fmt: skip
        seqs[agency] += 1
        yield PendingBatch(agency, seqs[agency], records)
        row += count


def fill(data_dir: Path, bets: int, winners: int, draw: str = "fixed") -> None:
    # Filling, not measuring: no sync.
    store = SQLiteStore(data_dir, AGENCIES, synchronous="OFF", draw_mode=draw)
    for batch in batches(bets, winners):
        store.commit([batch])
    for agency in range(1, AGENCIES):
        store.mark_done(agency)
    store.close()


async def fill_postgres(dsn: str, bets: int, winners: int, draw: str = "fixed") -> None:
    store = await PostgresStore.open(dsn, agencies=AGENCIES, draw_mode=draw)
    try:
        for batch in batches(bets, winners):
            await store.commit([batch])
        for agency in range(1, AGENCIES):
            await store.mark_done(agency)
    finally:
        await store.aclose()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("VACUUM ANALYZE bets")  # as autovacuum would, given the time
    finally:
        await conn.close()


async def last_done(port: int) -> float:
    """Shake hands as the last agency, send DONE; seconds from DONE to its ack."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    replies = ReplyReader(reader)
    try:
        async with asyncio.timeout(60):
            writer.write(encode(Hello(AGENCIES)))
            welcome = await replies.next()
            assert isinstance(welcome, Welcome), welcome
            started = time.perf_counter()
            writer.write(encode(Done()))
            reply = await replies.next()
            elapsed = time.perf_counter() - started
        assert reply == Ack(0), reply
        return elapsed
    finally:
        writer.close()


async def last_reveal(port: int) -> float:
    """As the last agency of a random draw: seconds from its REVEAL to its winners."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    replies = ReplyReader(reader)
    nonce = bytes(range(32))
    try:
        async with asyncio.timeout(60):
            writer.write(encode(Hello(AGENCIES)) + encode(DrawQuery()))
            assert isinstance(await replies.next(), Welcome)
            assert isinstance(await replies.next(), DrawInfo)
            writer.write(encode(Commit(agency_commitment(AGENCIES, nonce))) + encode(Done()))
            assert await replies.next() == Ack(0)
            assert await replies.next() == Ack(0)
            writer.write(encode(WinnersQuery()))
            assert isinstance(await replies.next(), RevealWanted)
            started = time.perf_counter()
            writer.write(encode(Reveal(nonce)) + encode(WinnersQuery()))
            assert await replies.next() == Ack(0)
            receipt = await replies.next()
            assert isinstance(receipt, Receipt), receipt
            winners = await replies.next()
            while isinstance(winners, Winners) and not winners.last:
                winners = await replies.next()
            elapsed = time.perf_counter() - started
        assert isinstance(winners, Winners), winners
        return elapsed
    finally:
        writer.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bets", type=int, default=10_000_000)
    parser.add_argument("--winners", type=int, default=1000)
    parser.add_argument("--draw", choices=("fixed", "random"), default="fixed")
    parser.add_argument("--store", help="postgresql://USER@HOST:PORT/DB: the draw on PostgreSQL")
    args = parser.parse_args()

    with contextlib.ExitStack() as stack:
        data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lottery-draw-")))
        started = time.perf_counter()
        extra = ["--draw", args.draw]
        if args.store:
            dsn = stack.enter_context(fresh_database(args.store, "lottery_draw"))
            asyncio.run(fill_postgres(dsn, args.bets, args.winners, args.draw))
            extra += ["--store", dsn]
        else:
            fill(data_dir, args.bets, args.winners, args.draw)
        print(f"stored {args.bets:,} bets in {time.perf_counter() - started:.1f} s")
        server = start_server(data_dir, AGENCIES, extra_args=extra, timeout=60)
        measure = last_reveal if args.draw == "random" else last_done
        try:
            elapsed = asyncio.run(measure(server.port))
        finally:
            stop_server(server)
        drawn = [line for line in server.lines if "action: sorteo | result: success" in line]
        assert len(drawn) == 1, server.log()
        print(drawn[0])
        since = (
            "the last REVEAL to the winners"
            if args.draw == "random"
            else "the last DONE to its ack"
        )
        print(f"{args.draw} draw over {args.bets:,} bets: {elapsed * 1000:.1f} ms from {since}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
