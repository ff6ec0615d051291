"""Silent and slow clients do not slow a round down; past the limit, refusals are loud.

The round runs in-process (server, agencies and the idle crowd share one event
loop), so what the crowd costs the server shows up directly in the round's
time. Sizes, and why:

- 5 agencies × 50,000 bets: in-process with ``sync="OFF"`` a round of 5 × 2,000
  bets takes ~35 ms, where 10 % is timer noise and a client dripping one byte a
  second never even sends its second byte. 50,000 each takes ~0.6 s.
- best of 5 rounds each way, interleaved (plain, crowded, plain, crowded...):
  the minimum drops one-off stalls (a GC pass, another process on a 2-core
  machine), and interleaving keeps a slow drift from favouring either side.
- + 0.05 s absolute slack on top of the 10 %: on a busy 2-core machine two
  identical rounds can differ by a few tens of milliseconds.
- the crowd is opened afresh for each crowded round, just before it: the server
  closes connections that have not shaken hands within ``timeout_handshake``
  (10 s), and the point is a round that runs *with* the crowd connected, which
  each crowded round checks in the server's status.
- logs at WARNING, into memory: a line per batch written to a terminal or a
  capture buffer is most of the spread between two identical rounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import json
import resource
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from lottery.client import AsyncAgency
from lottery.log import configure
from lottery.protocol import MAX_FRAME_SIZE, Error, ErrorCode, FrameType, Status, StatusQuery

from .conftest import UNIT
from .helpers import (
    LOOPBACK,
    REPLY_TIMEOUT,
    RawConnection,
    data_dir_of,
    make_rows,
    running_server,
    stored_bets,
)

pytestmark = pytest.mark.timeout(240 * UNIT)

AGENCIES = 5
BETS = 50_000
CROWD = 1_000
REPEATS = 5
#: The crowded round may take at most this much longer than the plain one.
RATIO, SLACK = 1.10, 0.05
#: A frame that never completes at one byte a second: a header announcing a
#: full-size HELLO body, then zeros (a slowloris handshake).
DRIP = struct.pack("!IB", MAX_FRAME_SIZE - 5, FrameType.HELLO) + bytes(MAX_FRAME_SIZE - 5)
DRIP_GROUPS = 10  # drippers take turns: a tenth of them every 0.1 s, each once a second


@pytest.fixture
def quiet_logs() -> Iterator[None]:
    """Log WARNING and up, into memory, for the test; structlog's defaults come back after."""
    configure("WARNING", "console", io.StringIO())
    yield
    structlog.reset_defaults()


@pytest.fixture
def many_files() -> Iterator[None]:
    """Room for the crowd's sockets at both ends; the old limit is restored after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * CROWD + 1024
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"the open-file hard limit ({hard}) is below {wanted}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class Crowd:
    """``size`` connections that never say anything, or drip one byte a second."""

    def __init__(self) -> None:
        self.silent: list[asyncio.StreamWriter] = []
        self.drippers: list[asyncio.StreamWriter] = []
        self._readers: list[asyncio.StreamReader] = []
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, port: int, size: int) -> Crowd:
        crowd = cls()
        try:
            for start in range(0, size, 100):  # in waves: the listen backlog is 128
                wave = await asyncio.gather(
                    *(
                        asyncio.open_connection(LOOPBACK, port)
                        for _ in range(min(100, size - start))
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


async def status_of(port: int) -> dict[str, object]:
    """The server's STATUS, over a new connection (it asks before any handshake)."""
    conn = await RawConnection.open(port)
    try:
        await conn.send(StatusQuery())
        reply = await conn.receive()
    finally:
        await conn.close()
    assert isinstance(reply, Status), reply
    return json.loads(reply.text)  # type: ignore[no-any-return]


async def run_agency(agency_id: int, port: int, rows: list[tuple[str, ...]]) -> list[str]:
    async with AsyncAgency(agency_id, LOOPBACK, port, timeout=30 * UNIT) as agency:
        return (await agency.run(rows)).winners


async def timed_round(data_dir: Path, rows: list[list[tuple[str, ...]]], crowd: bool) -> float:
    """One whole round (send, done, winners) on a fresh server; its seconds."""
    async with running_server(data_dir, agencies=AGENCIES) as server:
        assert server.config.connection_limit >= CROWD + 2 * AGENCIES, (
            "the default connection limit no longer leaves room for 1,000 idle "
            f"connections beside {AGENCIES} agencies: {server.config.connection_limit}"
        )
        people = await Crowd.open(server.port, CROWD) if crowd else None
        try:
            if people is not None:
                # The server accepts in arrival order: once a later connection
                # is answered, every one of the crowd has its handler.
                assert (await status_of(server.port))["connections"] == CROWD + 1
            gc.collect()
            loop = asyncio.get_running_loop()
            started = loop.time()
            winners = await asyncio.gather(
                *(run_agency(i + 1, server.port, r) for i, r in enumerate(rows))
            )
            seconds = loop.time() - started
            if people is not None:
                assert people.closed_by_server == 0, "the crowd left before the round ended"
                assert (await status_of(server.port))["connections"] >= CROWD
        finally:
            if people is not None:
                await people.close()
    for i, documents in enumerate(winners):
        assert documents == [rows[i][0][2]]
    assert len(stored_bets(data_dir_of(data_dir))) == AGENCIES * BETS
    return seconds


async def test_a_thousand_idle_or_dripping_connections_do_not_slow_a_round(
    tmp_path: Path, many_files: None, quiet_logs: None
) -> None:
    """A 5-agency round with 1,000 silent or byte-a-second connections open is ≤ 10 % slower."""
    rows = [make_rows(BETS, start=i * BETS, winners=[0]) for i in range(AGENCIES)]
    plain: list[float] = []
    crowded: list[float] = []
    for attempt in range(REPEATS):
        plain.append(await timed_round(tmp_path / f"plain-{attempt}", rows, crowd=False))
        crowded.append(await timed_round(tmp_path / f"crowd-{attempt}", rows, crowd=True))
    best_plain, best_crowded = min(plain), min(crowded)
    print(
        f"round of {AGENCIES} × {BETS} bets: plain {[round(s, 3) for s in plain]} s, "
        f"with {CROWD} idle/dripping connections {[round(s, 3) for s in crowded]} s; "
        f"best {best_plain:.3f} s vs {best_crowded:.3f} s"
    )
    assert best_crowded <= RATIO * best_plain + SLACK, (plain, crowded)


async def test_connections_past_the_limit_get_an_error_frame_then_eof(tmp_path: Path) -> None:
    """With a limit of N + 2, each connection past it reads ERROR TOO_MANY_CONNECTIONS, then EOF."""
    limit = AGENCIES + 2
    async with running_server(tmp_path, agencies=AGENCIES, limit_connections=limit) as server:
        held = [await RawConnection.open(server.port) for _ in range(limit)]
        try:
            for conn in held:  # each one answered: each one has its handler
                await conn.send(StatusQuery())
                assert isinstance(await conn.receive(), Status)
            for _ in range(3):
                extra = await RawConnection.open(server.port)
                try:
                    reply = await extra.receive()
                    assert isinstance(reply, Error), reply
                    assert reply.code == ErrorCode.TOO_MANY_CONNECTIONS, reply
                    assert str(limit) in reply.message
                    await extra.expect_eof()
                finally:
                    await extra.close()
            for conn in held:  # the refusals disturbed none of the admitted
                await conn.send(StatusQuery())
                assert isinstance(await conn.receive(REPLY_TIMEOUT), Status)
        finally:
            for conn in held:
                await conn.close()
