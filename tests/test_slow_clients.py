"""Silent and slow clients do not stop a round; past the limit, refusals are loud.

What the crowd costs in time is a bench figure, not an assertion here (it
flakes on a loaded machine): ``python scripts/bench_slow_clients.py``, or
``make bench BENCH_ARGS=--slow-clients``, prints the crowded round's time over
the plain one's. This file keeps the functional part: a round completes, with
the right winners and every bet stored, while 1,000 connections that never
speak, or drip a byte a second, stay connected; and connections past the
limit are refused out loud.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from bench_slow_clients import crowded_round, rows_for
from lottery.log import configure
from lottery.protocol import Error, ErrorCode, Status, StatusQuery

from .conftest import UNIT
from .helpers import REPLY_TIMEOUT, RawConnection, open_files, running_server

pytestmark = pytest.mark.timeout(120 * UNIT)

AGENCIES = 5
#: Enough bets that the round outlasts a few drips (at 2,000 a dripper never
#: sends its second byte).
BETS = 50_000
CROWD = 1_000


@pytest.fixture
def quiet_logs() -> Iterator[None]:
    """Log WARNING and up, into memory, for the test; structlog's defaults come back after."""
    configure("WARNING", "console", io.StringIO())
    yield
    structlog.reset_defaults()


@pytest.fixture
def many_files() -> Iterator[None]:
    """Room for the crowd's sockets at both ends; the old limit is restored after."""
    with open_files(2 * CROWD + 1024):
        yield


@pytest.mark.slow
async def test_a_round_completes_with_a_thousand_idle_or_dripping_connections(
    tmp_path: Path, many_files: None, quiet_logs: None
) -> None:
    """A 5-agency round with 1,000 silent or byte-a-second connections open gets every winner."""
    rows = rows_for(AGENCIES, BETS)
    # crowded_round checks the winners, the stored bets, and that the whole
    # crowd was connected before the round and still is after it.
    await crowded_round(tmp_path / "data", rows, CROWD, timeout=30 * UNIT)


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
