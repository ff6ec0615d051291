#!/usr/bin/env python3
"""What 1,000 silent or slow connections cost a round: a bench figure, not a test.

    python scripts/bench_slow_clients.py                # 5 agencies × 50,000 bets, best of 5
    python scripts/bench_slow_clients.py --repeat 9 --crowd 2000
    python scripts/bench.py --slow-clients              # the same, inside the bench's report

The round runs in-process (server, agencies and the crowd share one event
loop), so what the crowd costs the server shows up directly in the round's
time. It prints the crowded round's time over the plain one's (target ≤ 1.10,
the server's promise in docs/RELIABILITY.md). Why these choices:

- 5 agencies × 50,000 bets: with ``sync="OFF"`` a round of 5 × 2,000 bets
  takes ~35 ms, where 10 % is timer noise and a client dripping one byte a
  second never even sends its second byte. 50,000 each takes ~0.6 s.
- best of ``--repeat`` rounds each way, interleaved (plain, crowded, plain,
  crowded...): the minimum drops one-off stalls (a GC pass, another process on
  a 2-core machine), and interleaving keeps a slow drift from favouring either side.
- the crowd is opened afresh for each crowded round, just before it: the
  server closes connections that have not shaken hands within
  ``timeout_handshake`` (10 s), and the point is a round that runs *with* the
  crowd connected, which each crowded round checks in the server's status.
- logs at WARNING, into memory: a line per batch written to a terminal is most
  of the spread between two identical rounds.

tests/test_slow_clients.py uses `Crowd` and `crowded_round` for the functional
part (the round completes, the crowd stays connected), without timing it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import io
import resource
import struct
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from lottery.client import AsyncAgency, query_status
from lottery.config import ServerConfig
from lottery.log import configure
from lottery.models import DEFAULT_WINNING_NUMBER
from lottery.protocol import MAX_FRAME_SIZE, FrameType
from lottery.server import Server
from lottery.store import SQLiteStore

__all__ = ["Crowd", "SlowClientsFigure", "crowded_round", "main", "measure", "rows_for"]

LOOPBACK = "127.0.0.1"
WINNING_NUMBER = DEFAULT_WINNING_NUMBER
#: The crowded round may take at most this much longer than the plain one (a target, not a gate).
TARGET_RATIO = 1.10
#: A frame that never completes at one byte a second: a header announcing a
#: full-size HELLO body, then zeros (a slowloris handshake).
DRIP = struct.pack("!IB", MAX_FRAME_SIZE - 5, FrameType.HELLO) + bytes(MAX_FRAME_SIZE - 5)
DRIP_GROUPS = 10  # drippers take turns: a tenth of them every 0.1 s, each once a second
WAVE = 100  # connections opened at once: the listen backlog is 128

Row = tuple[str, str, str, str, str]


class Crowd:
    """Connections that never say anything (half of them) or drip one byte a second."""

    def __init__(self) -> None:
        self.silent: list[asyncio.StreamWriter] = []
        self.drippers: list[asyncio.StreamWriter] = []
        self._readers: list[asyncio.StreamReader] = []
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, port: int, size: int) -> Crowd:
        crowd = cls()
        try:
            for start in range(0, size, WAVE):
                wave = await asyncio.gather(
                    *(
                        asyncio.open_connection(LOOPBACK, port)
                        for _ in range(min(WAVE, size - start))
                    )
                )
                for reader, writer in wave:
                    crowd._readers.append(reader)
                    group = crowd.drippers if len(crowd._readers) % 2 else crowd.silent
                    group.append(writer)
        except BaseException:
            await crowd.close()
            raise
        crowd._task = asyncio.create_task(crowd._drip())
        return crowd

    @property
    def size(self) -> int:
        return len(self._readers)

    @property
    def closed_by_server(self) -> int:
        return sum(reader.at_eof() for reader in self._readers)

    async def _drip(self) -> None:
        """One task drives every dripper: each gets its next byte once a second."""
        groups = [self.drippers[i::DRIP_GROUPS] for i in range(DRIP_GROUPS)]
        second = 0
        while True:
            for group in groups:
                for writer in group:
                    if not writer.is_closing():
                        writer.write(DRIP[second : second + 1])
                await asyncio.sleep(1 / DRIP_GROUPS)  # the deliberate drip rate
            second += 1

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        writers = self.silent + self.drippers
        for writer in writers:
            writer.close()
        await asyncio.gather(*(_wait_closed(w) for w in writers))


async def _wait_closed(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        await writer.wait_closed()


def rows_for(agencies: int, bets: int) -> list[list[Row]]:
    """Each agency's rows: distinct documents, the first row of each the only winner."""
    out: list[list[Row]] = []
    for agency in range(agencies):
        rows: list[Row] = []
        for i in range(bets):
            number = WINNING_NUMBER if i == 0 else i % 7000 + 1
            rows.append(("Ana", "Pérez", str(30_000_000 + agency * bets + i), "1990-05-17",
                         str(number)))  # fmt: skip
        out.append(rows)
    return out


@contextlib.asynccontextmanager
async def _server(data_dir: Path, agencies: int) -> AsyncIterator[Server]:
    server = Server(
        ServerConfig(host=LOOPBACK, port=0, agencies=agencies, data_dir=str(data_dir), sync="OFF")
    )
    await server.start()
    try:
        yield server
    finally:
        server.close()
        await server.wait_closed()


async def _run_agency(agency_id: int, port: int, rows: list[Row], timeout: float) -> list[str]:
    async with AsyncAgency(agency_id, LOOPBACK, port, timeout=timeout) as agency:
        return (await agency.run(rows)).winners


async def crowded_round(
    data_dir: Path, rows: list[list[Row]], crowd: int, *, timeout: float = 30.0
) -> float:
    """One whole round (send, done, winners) on a fresh server, ``crowd`` connections around.

    Checks that every agency got its one winner, every bet was stored, and (with
    a crowd) that the crowd was connected before the round and still is after
    it. Returns the round's seconds.
    """
    agencies = len(rows)
    async with _server(data_dir, agencies) as server:
        room = server.config.connection_limit
        if room < crowd + 2 * agencies:
            raise RuntimeError(f"the connection limit {room} leaves no room for the crowd")
        people = await Crowd.open(server.port, crowd) if crowd else None
        try:
            if people is not None:
                # The server accepts in arrival order: once a later connection
                # is answered, every one of the crowd has its handler.
                status = await query_status(LOOPBACK, server.port, timeout=timeout)
                assert status["connections"] == crowd + 1, status
            gc.collect()
            loop = asyncio.get_running_loop()
            started = loop.time()
            winners = await asyncio.gather(
                *(_run_agency(i + 1, server.port, r, timeout) for i, r in enumerate(rows))
            )
            seconds = loop.time() - started
            if people is not None:
                assert people.closed_by_server == 0, "the crowd left before the round ended"
                status = await query_status(LOOPBACK, server.port, timeout=timeout)
                assert status["connections"] >= crowd, status
        finally:
            if people is not None:
                await people.close()
    for i, documents in enumerate(winners):
        assert documents == [rows[i][0][2]], (i, documents)
    store = SQLiteStore(data_dir)
    try:
        stored = sum(1 for _ in store.bets())
    finally:
        store.close()
    assert stored == sum(map(len, rows)), stored
    return seconds


@dataclass
class SlowClientsFigure:
    agencies: int
    bets: int  # per agency
    crowd: int
    plain_s: list[float]
    crowded_s: list[float]

    @property
    def ratio(self) -> float:
        """Best crowded round over best plain round."""
        return min(self.crowded_s) / min(self.plain_s)

    def text(self) -> str:
        return (
            f"slow clients: a round of {self.agencies} × {self.bets:,} bets takes "
            f"{min(self.plain_s):.3f} s plain, {min(self.crowded_s):.3f} s with {self.crowd:,} "
            f"idle or byte-a-second connections (best of {len(self.plain_s)}): ratio "
            f"{self.ratio:.3f} (target ≤ {TARGET_RATIO:.2f})"
        )


def _room_for(crowd: int) -> None:
    """Raise the open-file limit so the crowd's sockets fit at both ends."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * crowd + 1024
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            raise SystemExit(f"the open-file hard limit ({hard}) is below {wanted}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


async def _measure(
    work: Path, agencies: int, bets: int, crowd: int, repeat: int
) -> SlowClientsFigure:
    rows = rows_for(agencies, bets)
    figure = SlowClientsFigure(agencies, bets, crowd, [], [])
    for attempt in range(repeat):
        figure.plain_s.append(await crowded_round(work / f"plain-{attempt}", rows, 0))
        figure.crowded_s.append(await crowded_round(work / f"crowd-{attempt}", rows, crowd))
    return figure


def measure(
    agencies: int = 5, bets: int = 50_000, crowd: int = 1_000, repeat: int = 5
) -> SlowClientsFigure:
    """Plain and crowded rounds, interleaved, ``repeat`` of each; logs go quiet meanwhile."""
    _room_for(crowd)
    configure("WARNING", "console", io.StringIO())
    with tempfile.TemporaryDirectory(prefix="lottery-bench-slow-") as tmp:
        return asyncio.run(_measure(Path(tmp), agencies, bets, crowd, repeat))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agencies", type=int, default=5)
    parser.add_argument("--bets", type=int, default=50_000, help="bets per agency")
    parser.add_argument("--crowd", type=int, default=1_000, help="idle and dripping connections")
    parser.add_argument("--repeat", type=int, default=5, help="rounds each way; the best counts")
    args = parser.parse_args(argv)
    if min(args.agencies, args.bets, args.repeat) < 1 or args.crowd < 0:
        parser.error("--agencies, --bets and --repeat must be ≥ 1, --crowd ≥ 0")
    figure = measure(args.agencies, args.bets, args.crowd, args.repeat)
    print(f"plain rounds:   {[round(s, 3) for s in figure.plain_s]} s")
    print(f"crowded rounds: {[round(s, 3) for s in figure.crowded_s]} s")
    print(figure.text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
