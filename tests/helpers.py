"""Shared test helpers: real servers on loopback, raw connections, proxies, bets."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import resource
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lottery.config import ServerConfig
from lottery.models import DEFAULT_WINNING_NUMBER
from lottery.protocol import Hello, Message, Welcome, encode
from lottery.server import Server
from lottery.store import AsyncStore, SQLiteStore, Store
from roundrunner import ReplyReader
from roundrunner import log_events as _log_events

from .conftest import UNIT

__all__ = [
    "LOOPBACK",
    "REPLY_TIMEOUT",
    "WINNING_NUMBER",
    "CuttableProxy",
    "RawConnection",
    "StoredBet",
    "data_dir_of",
    "fake_server",
    "log_events",
    "make_rows",
    "raw_connection",
    "running_server",
    "split_frames",
    "stored_bets",
    "write_agency_file",
]

LOOPBACK = "127.0.0.1"
WINNING_NUMBER = DEFAULT_WINNING_NUMBER
#: How long a test waits for something that should happen promptly.
REPLY_TIMEOUT = 5 * UNIT

#: A stored bet as `SQLiteStore.bets` yields it.
StoredBet = tuple[int, str, str, str, str, int]
Row = tuple[str, str, str, str, str]


def data_dir_of(tmp_path: Path) -> Path:
    """The data directory `running_server` uses under ``tmp_path`` by default."""
    return tmp_path / "data"


@asynccontextmanager
async def running_server(
    tmp_path: Path,
    open_store: Callable[[ServerConfig], Store] | None = None,
    *,
    store: AsyncStore | None = None,
    **config: Any,
) -> AsyncIterator[Server]:
    """A started `Server` on 127.0.0.1, port 0, that is always shut down after.

    ``config`` overrides `ServerConfig` fields; by default the round has two
    agencies, the store lives in ``tmp_path / "data"`` and commits with
    ``sync="OFF"`` (durability is the store's tests' business, not speed's).
    ``open_store(config)``, if given, builds the store (a faulty one, say);
    ``store``, an open one to serve instead (a handle on a shared store).
    """
    config.setdefault("agencies", 2)
    config.setdefault("data_dir", str(data_dir_of(tmp_path)))
    config.setdefault("sync", "OFF")
    settings = ServerConfig(host=LOOPBACK, port=0, **config)
    server = Server(settings, open_store and (lambda: open_store(settings)), store=store)
    await server.start()
    try:
        yield server
    finally:
        server.close()
        await server.wait_closed()


def stored_bets(data_dir: str | os.PathLike[str]) -> list[StoredBet]:
    """Every bet in a (stopped) server's data directory, in storage order."""
    store = SQLiteStore(data_dir)
    try:
        return [tuple(row) for row in store.bets()]  # type: ignore[misc]
    finally:
        store.close()


def make_rows(
    count: int, *, start: int = 0, winners: Iterable[int] = (), name: str = "Ana"
) -> list[Row]:
    """``count`` valid five-field rows with distinct documents.

    Rows whose index (counted from 0, before ``start`` is added) is in
    ``winners`` bet on the winning number; the others never do.
    """
    winning = set(winners)
    rows: list[Row] = []
    for i in range(count):
        number = WINNING_NUMBER if i in winning else (i % 7000) + 1
        rows.append((name, "Pérez", str(30_000_000 + start + i), "1990-05-17", str(number)))
    return rows


def write_agency_file(path: Path, rows: Iterable[Iterable[str]]) -> Path:
    """Write ``rows`` as an agency CSV file (tp0's layout, CRLF) and return its path."""
    import csv

    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\r\n").writerows(rows)
    return path


# -- logs ------------------------------------------------------------------------------------


def log_events(stream: io.StringIO, action: str, **fields: object) -> list[dict[str, str]]:
    """The logged events named ``action`` whose fields include ``fields`` (as text)."""
    return _log_events(stream.getvalue(), action, **fields)


# -- raw connections -------------------------------------------------------------------


class RawConnection:
    """A client connection speaking raw frames, decoded with `ClientProtocol`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._replies = ReplyReader(reader)

    @classmethod
    async def open(cls, port: int) -> RawConnection:
        async with asyncio.timeout(REPLY_TIMEOUT):
            reader, writer = await asyncio.open_connection(LOOPBACK, port)
        return cls(reader, writer)

    async def send(self, *items: Message | bytes) -> None:
        """Write the messages (encoded) or raw bytes in one write, then drain."""
        self.writer.write(b"".join(i if isinstance(i, bytes) else encode(i) for i in items))
        async with asyncio.timeout(REPLY_TIMEOUT):
            await self.writer.drain()

    async def receive(self, timeout: float = REPLY_TIMEOUT) -> Message:
        """The next message from the server; fails on EOF or after ``timeout``."""
        async with asyncio.timeout(timeout):
            message = await self._replies.next()
        if message is None:
            raise AssertionError("the server closed the connection")
        return message

    async def expect_eof(self, timeout: float = REPLY_TIMEOUT) -> None:
        """Wait until the server closes the connection, with nothing more to read."""
        async with asyncio.timeout(timeout):
            leftover = await self._replies.next()
        assert leftover is None, f"unexpected message before EOF: {leftover!r}"

    async def hello(self, agency: int) -> Welcome:
        """Shake hands as ``agency``; returns the WELCOME."""
        await self.send(Hello(agency))
        reply = await self.receive()
        assert isinstance(reply, Welcome), reply
        return reply

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


@asynccontextmanager
async def raw_connection(port: int, agency: int | None = None) -> AsyncIterator[RawConnection]:
    """A `RawConnection` (after a handshake as ``agency``, if given), always closed."""
    conn = await RawConnection.open(port)
    try:
        if agency is not None:
            await conn.hello(agency)
        yield conn
    finally:
        await conn.close()


# -- frames on the wire ------------------------------------------------------------------

_HEADER = struct.Struct("!IB")


def split_frames(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Split ``data`` into whole (type, frame bytes) pairs and the unfinished rest."""
    frames: list[tuple[int, bytes]] = []
    pos = 0
    while len(data) - pos >= _HEADER.size:
        length, ftype = _HEADER.unpack_from(data, pos)
        end = pos + _HEADER.size + length
        if end > len(data):
            break
        frames.append((ftype, data[pos:end]))
        pos = end
    return frames, data[pos:]


# -- a proxy that can cut connections ------------------------------------------------------


@dataclass
class CuttableProxy:
    """A TCP proxy to ``target_port`` that can cut a connection mid-stream.

    ``cut_after`` maps a connection's number (from 0) to how many bytes of the
    server's replies it forwards before cutting that connection (both sides).
    Every client→server frame that passes is recorded in ``client_frames``, and
    by connection number in ``sent``; the server's forwarded frames in ``received``.
    """

    target_port: int
    cut_after: dict[int, int] = field(default_factory=dict)
    connections: int = 0
    cuts: int = 0
    client_frames: list[tuple[int, bytes]] = field(default_factory=list)
    sent: dict[int, list[tuple[int, bytes]]] = field(default_factory=dict)
    received: dict[int, list[tuple[int, bytes]]] = field(default_factory=dict)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def __aenter__(self) -> CuttableProxy:
        self._server = await asyncio.start_server(self._handle, LOOPBACK, 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        number = self.connections
        self.connections += 1
        budget = self.cut_after.get(number)
        self.sent[number], self.received[number] = [], []
        s_writer: asyncio.StreamWriter | None = None
        try:
            s_reader, s_writer = await asyncio.open_connection(LOOPBACK, self.target_port)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._upstream(c_reader, s_writer, number))
                down = tg.create_task(self._downstream(s_reader, c_writer, budget, number))
                await down
                raise _Cut
        except* _Cut:
            pass
        except* (OSError, asyncio.CancelledError):
            pass
        finally:
            for writer in (c_writer, s_writer):
                if writer is not None:
                    writer.close()
                    with contextlib.suppress(OSError, asyncio.CancelledError):
                        await writer.wait_closed()
            self._tasks.discard(task)  # type: ignore[arg-type]

    async def _upstream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int
    ) -> None:
        pending = b""
        while data := await reader.read(65536):
            frames, pending = split_frames(pending + data)
            self.client_frames.extend(frames)
            self.sent[number].extend(frames)
            writer.write(data)
            await writer.drain()
        writer.write_eof()

    async def _downstream(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        budget: int | None,
        number: int,
    ) -> None:
        """Forward server→client bytes; return once ``budget`` bytes passed (the cut)."""
        forwarded = b""
        while data := await reader.read(65536):
            cut = budget is not None and len(data) >= budget
            if budget is not None:
                data = data[:budget]
                budget -= len(data)
            forwarded += data
            self.received[number] = split_frames(forwarded)[0]
            writer.write(data)
            await writer.drain()
            if cut:
                self.cuts += 1
                return
        # The server closed: the caller passes that on.


class _Cut(Exception):
    """Internal: the proxy's downstream side ended; close the whole connection."""


# -- fake servers ------------------------------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def fake_server(handle: Handler) -> AsyncIterator[int]:
    """Serve ``handle`` on 127.0.0.1, port 0; yields the port; cleans up every connection."""
    tasks: set[asyncio.Task[None]] = set()

    async def wrapper(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        tasks.add(task)  # type: ignore[arg-type]
        try:
            await handle(reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()
            tasks.discard(task)  # type: ignore[arg-type]

    server = await asyncio.start_server(wrapper, LOOPBACK, 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)


@contextlib.contextmanager
def open_files(wanted: int) -> Iterator[None]:
    """At least ``wanted`` open files here (skip if the hard limit is lower); restored after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"the open-file hard limit ({hard}) is below {wanted}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def run_lottery(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m lottery ARGS`` to its end (bounded); its output is captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "lottery", *args],
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
        cwd=cwd,
        check=False,
    )


#: Days whose birthdate check has an edge: leap days, the start of a year, short months.
EDGE_TODAYS = [
    "2026-12-01", "2024-02-29", "2024-03-01", "2025-01-01", "2000-12-31", "2100-03-01",
    "2400-02-29", "9999-12-31", "1000-01-01", "0100-01-10", "0001-03-05", "2026-09-30",
]  # fmt: skip


def edge_dates(today: str) -> Iterator[str]:
    """Every YYYY-MM-DD around the edges, as of ``today``: month and day 00 to past the
    last, the years around 0000, around leap centuries, and around ``today``'s."""
    year = int(today[:4])
    years = {*range(0, 12), *range(96, 105), *range(1896, 1905), *range(1996, 2005)}
    years |= {*range(2096, 2105), *range(2396, 2405), *range(9990, 10000)}
    years |= {y for y in range(year - 5, year + 6) if 0 <= y <= 9999}
    for y in sorted(years):
        for month in range(0, 14):
            for day in (0, 1, 9, 10, 19, 20, 27, 28, 29, 30, 31, 32):
                yield f"{y:04d}-{month:02d}-{day:02d}"
