#!/usr/bin/env python3
"""How long the draw takes over many stored bets.

    python scripts/bench_draw.py --bets 10000000

Fills a data directory with ``--bets`` bets from 5 agencies (through
`SQLiteStore.commit`, as the server stores them), with agencies 1-4 already
done. Then it starts a real ``lottery server`` on it, sends agency 5's DONE,
and measures from that DONE to its acknowledgement, which the server sends
after the draw is made and ``action: sorteo | result: success`` is logged.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

from lottery.protocol import Ack, Done, Hello, Welcome, encode
from lottery.store import PendingBatch, SQLiteStore
from roundrunner import ReplyReader, start_server, stop_server

AGENCIES = 5
BATCH = 8192


def fill(data_dir: Path, bets: int, winners: int) -> None:
    rng = random.Random(7574)
    store = SQLiteStore(data_dir, AGENCIES, synchronous="OFF")  # filling, not measuring
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
        store.commit([PendingBatch(agency, seqs[agency], records)])
        row += count
    for agency in range(1, AGENCIES):
        store.mark_done(agency)
    store.close()


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bets", type=int, default=10_000_000)
    parser.add_argument("--winners", type=int, default=1000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="lottery-draw-") as tmp:
        data_dir = Path(tmp)
        started = time.perf_counter()
        fill(data_dir, args.bets, args.winners)
        print(f"stored {args.bets:,} bets in {time.perf_counter() - started:.1f} s")
        server = start_server(data_dir, AGENCIES)
        try:
            elapsed = asyncio.run(last_done(server.port))
        finally:
            stop_server(server)
        drawn = [line for line in server.lines if "action: sorteo | result: success" in line]
        assert len(drawn) == 1, server.log()
        print(drawn[0])
        print(
            f"draw over {args.bets:,} bets: {elapsed * 1000:.1f} ms from the last DONE to its ack"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
