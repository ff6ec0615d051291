#!/usr/bin/env python3
"""``make bench``: our round against the threaded baseline, on the same data.

    .venv/bin/python scripts/bench.py                      # 5 agencies x 200,000 bets
    .venv/bin/python scripts/bench.py --agencies 3 --bets 2000 --repeat 3
    .venv/bin/python scripts/bench.py --agencies 1000 --bets 1000 --skip-e2e --skip-baseline
    .venv/bin/python scripts/bench.py --plot bench.png     # also sweep agencies and window
    .venv/bin/python scripts/bench.py --slow-clients       # also the 1,000 slow clients figure
    .venv/bin/python scripts/bench.py --store postgresql://postgres@127.0.0.1:5432/postgres

One run measures, on the same agency files (generated once into
``bench-data/<agencies>x<bets>/`` and reused):

- **ours, end to end**: ``lottery server`` plus N ``lottery agency`` processes;
  bets/s from starting the agencies to the last one exiting with its winners;
  the server's CPU seconds (its rusage, from ``os.wait4``) and peak RSS, batch
  ack latency (the agencies' ``--stats-file``, if they support it), batches per
  commit (the server's ``action: commits`` line, if it logs one), draw seconds;
- **baseline, end to end**: the same with benchmarks/threaded_baseline.py;
- **server alone**: the same ``lottery server`` fed pre-encoded BATCH frames by
  a minimal asyncio client in this process (N connections, a window of
  ``--window`` frames each), so the agencies' own cost is left out;
- **slow clients** (``--slow-clients``): an in-process round's time with
  1,000 idle or byte-a-second connections open over its time without them
  (scripts/bench_slow_clients.py; target ≤ 1.10);
- **STATUS flood** (``--status-flood``): agency 1's bets/s on a server of
  1,000 agencies while 20 connections ask STATUS in a loop and 100 ask and
  never read (another process), over its bets/s without them
  (scripts/attack.py; target ≥ 0.80).

With ``--store DSN`` our server keeps the round in PostgreSQL instead of
SQLite: each round gets a new database on that server, dropped after it
(scripts/pg_cluster.py ``fresh_database``); the server's CPU figure leaves
out PostgreSQL's own processes.

Every round's winners are checked against what the data was generated with; a
wrong round stops the benchmark (exit 1). Results go to a table on stdout and
to JSON (``bench-results/bench-<timestamp>.json`` unless ``--json``).
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import contextlib
import csv
import datetime
import importlib.metadata
import io
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from attack import status_flood_ratio
from bench_slow_clients import measure as measure_slow_clients
from lottery.fdlimit import raise_nofile_limit
from lottery.log import configure
from lottery.models import DEFAULT_WINNING_NUMBER
from lottery.protocol import (
    BATCH_OVERHEAD,
    MAX_FRAME_SIZE,
    Ack,
    Done,
    Hello,
    Message,
    NotReady,
    Welcome,
    Winners,
    WinnersQuery,
    encode,
    encode_batch,
    encode_record,
)
from lottery.stats import percentile
from pg_cluster import fresh_database
from roundrunner import (
    AgencyProcess,
    ReplyReader,
    ServerProcess,
    ServerStartError,
    log_value,
    lottery_command,
    start_agency,
    start_server,
    wait_agencies,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BASELINE = ROOT / "benchmarks" / "threaded_baseline.py"
ROUND_TIMEOUT = 600.0  # seconds one round may take before it is killed and failed
STOP_TIMEOUT = 30.0  # seconds a server may take to exit after SIGTERM
# Sweeps for --plot: total bets stay near PLOT_TOTAL_BETS so they take minutes.
PLOT_AGENCIES = (1, 5, 50, 500)
PLOT_WINDOWS = (1, 2, 4, 8, 16, 32)
PLOT_TOTAL_BETS = 100_000
PLOT_WINDOW_AGENCIES = 5
TARGET_BETS_PER_S = 600_000
TARGET_RATIO = 5.5  # against the stop-and-wait baseline at BASELINE_BATCH bets, tp0's store_bets
BASELINE_BATCH = 100  # the batch size the threaded design's users ship (cut at 8 kB too)
TARGET_SERVER_US_PER_BET = 0.8  # server CPU per bet, whole process (issue 13)
TARGET_AGENCY_US_PER_BET = 1.0  # agency CPU per bet, whole processes (issue 13)
# Many agencies (--agencies 10000 --bets 100, server alone): issue 13's targets.
TARGET_MANY_RSS_MIB = 400
TARGET_MANY_ACK_P99_MS = 100
#: Server-alone connections between connecting and WELCOME at once (see _feed_agency).
HANDSHAKES_AT_ONCE = 256


class BenchError(Exception):
    """A round failed or gave wrong results: the benchmark stops."""


# -- data -----------------------------------------------------------------------------------


@dataclass
class Dataset:
    folder: Path
    agencies: int
    bets: int  # per agency
    winners: list[int]  # expected winners per agency, index 0 = agency 1

    @property
    def files(self) -> list[Path]:
        return [self.folder / f"agency-{i}.csv" for i in range(1, self.agencies + 1)]

    @property
    def total(self) -> int:
        return self.agencies * self.bets


def ensure_dataset(root: Path, agencies: int, bets: int) -> Dataset:
    """The data for agencies x bets, generated by gen_dataset.py unless present."""
    winners = [i % 4 for i in range(1, agencies + 1)]  # 1, 2, 3, 0, 1, 2, ...
    if bets < max(winners):
        raise SystemExit(f"--bets must be at least {max(winners)} (the winners of an agency)")
    data = Dataset(root / f"{agencies}x{bets}", agencies, bets, winners)
    meta_path = data.folder / "meta.json"
    meta = {
        "agencies": agencies,
        "bets": bets,
        "winners": winners,
        "winning_number": DEFAULT_WINNING_NUMBER,
    }
    try:
        present = json.loads(meta_path.read_text()) == meta and all(f.exists() for f in data.files)
    except (OSError, ValueError):
        present = False
    if not present:
        print(f"generating {agencies} x {bets:,} bets into {data.folder} ...", flush=True)
        subprocess.run(
            [
                sys.executable, str(HERE / "gen_dataset.py"), "--out", str(data.folder),
                "--agencies", str(agencies), "--bets", str(bets),
                "--winners", ",".join(map(str, winners)),
            ],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        meta_path.write_text(json.dumps(meta))
    return data


# -- processes ------------------------------------------------------------------------------


def peak_rss_kib(pid: int) -> int | None:
    """The process's peak RSS so far (VmHWM), or None once it has exited."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


@dataclass
class Usage:
    cpu_s: float  # user + system, from os.wait4's rusage
    peak_rss_kib: int  # VmHWM, sampled until the process exited


def stop_and_reap(proc: subprocess.Popen[str], timeout: float = STOP_TIMEOUT) -> tuple[int, Usage]:
    """SIGTERM ``proc`` and reap it with os.wait4 for its rusage (SIGKILL at the deadline).

    Popen.wait is not used: it would reap the process and lose its rusage. Peak
    RSS is not rusage's ru_maxrss: Linux carries the spawning process's RSS over
    into a child's ru_maxrss at exec, so a small server started by this (large)
    process would report this process's size. /proc's VmHWM belongs to the
    server's own memory map; it is read until the process is gone.
    """
    peak = peak_rss_kib(proc.pid) or 0
    os.kill(proc.pid, signal.SIGTERM)  # not proc.send_signal: it polls, and could reap
    deadline = time.monotonic() + timeout
    while True:
        peak = max(peak, peak_rss_kib(proc.pid) or 0)
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            os.kill(proc.pid, signal.SIGKILL)
            pid, status, rusage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.005)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, Usage(rusage.ru_utime + rusage.ru_stime, peak)


def _finish_server(server: ServerProcess) -> tuple[int, Usage]:
    code, usage = stop_and_reap(server.proc)
    server.close_log(5)
    return code, usage


def start_baseline_server(data_dir: str, agencies: int, fsync: bool) -> ServerProcess:
    """benchmarks/threaded_baseline.py's server (it takes lottery's server flags)."""
    return start_server(
        data_dir,
        agencies,
        extra_args=["--fsync"] if fsync else [],
        program=[sys.executable, str(BASELINE)],
    )


def start_baseline_agency(agency: int, port: int, bets: Path, batch: int) -> AgencyProcess:
    return start_agency(
        agency,
        port,
        bets,
        extra_args=["--batch-max-amount", str(batch)],
        program=[sys.executable, str(BASELINE)],
    )


def agency_supports_stats_file() -> bool:
    out = subprocess.run(
        [*lottery_command(), "agency", "--help"], capture_output=True, text=True, check=False
    ).stdout
    return "--stats-file" in out


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- results --------------------------------------------------------------------------------


@dataclass
class Round:
    mode: str  # "ours", "baseline", "baseline_durable", "baseline_100" or "server_alone"
    agencies: int
    bets: int  # in the whole round
    window: int | None
    seconds: float
    server_cpu_s: float
    server_peak_rss_mib: float
    agencies_cpu_s: float | None = None  # every agency process together (end to end only)
    ack_p50_ms: float | None = None
    ack_p99_ms: float | None = None
    server_ack_p50_ms: float | None = None  # read to ack, inside the server
    server_ack_p99_ms: float | None = None
    batches_per_commit: float | None = None
    commits: int | None = None
    draw_s: float | None = None
    batch: int | None = None  # most bets per batch

    @property
    def bets_per_s(self) -> float:
        return self.bets / self.seconds

    @property
    def server_us_per_bet(self) -> float:
        """Server CPU per bet: the whole process (start-up included), from os.wait4."""
        return self.server_cpu_s / self.bets * 1e6

    @property
    def agency_us_per_bet(self) -> float | None:
        """Agency CPU per bet: every agency process, whole (start-up included)."""
        return None if self.agencies_cpu_s is None else self.agencies_cpu_s / self.bets * 1e6

    def as_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "bets_per_s": round(self.bets_per_s, 1),
            "server_cpu_us_per_bet": round(self.server_us_per_bet, 3),
            "agency_cpu_us_per_bet": None
            if self.agency_us_per_bet is None
            else round(self.agency_us_per_bet, 3),
        }


def _server_figures(
    mode: str, data: Dataset, window: int | None, seconds: float, server: ServerProcess,
    usage: Usage, latencies: list[float] | None,
) -> Round:  # fmt: skip
    lines = server.lines
    commits, batches = (
        log_value(lines, "commits", "commits"),
        log_value(lines, "commits", "batches"),
    )
    draw = log_value(lines, "sorteo", "segundos")
    ack_p50 = log_value(lines, "ack_latency", "p50_ms")
    ack_p99 = log_value(lines, "ack_latency", "p99_ms")
    return Round(
        mode=mode,
        agencies=data.agencies,
        bets=data.total,
        window=window,
        seconds=seconds,
        server_cpu_s=usage.cpu_s,
        server_peak_rss_mib=usage.peak_rss_kib / 1024,
        ack_p50_ms=percentile(latencies, 50) if latencies else None,
        ack_p99_ms=percentile(latencies, 99) if latencies else None,
        commits=None if commits is None else int(commits),
        batches_per_commit=None
        if commits is None or batches is None
        else int(batches) / max(1, int(commits)),
        draw_s=None if draw is None else float(draw),
        server_ack_p50_ms=None if ack_p50 is None else float(ack_p50),
        server_ack_p99_ms=None if ack_p99 is None else float(ack_p99),
    )


def _check_agencies(
    mode: str, data: Dataset, agencies: list[AgencyProcess], winners: list[int | None]
) -> None:
    for agency, got in zip(agencies, winners, strict=True):
        want = data.winners[agency.agency - 1]
        if agency.returncode != 0 or got != want:
            raise BenchError(
                f"{mode}: agency {agency.agency} exited {agency.returncode} with "
                f"{got} winners, expected {want}:\n{agency.output[-3000:]}"
            )


def _check_server(mode: str, code: int, server: ServerProcess) -> None:
    if code != 0:
        raise BenchError(f"{mode}: the server exited {code}:\n" + server.log()[-3000:])


# -- the rounds -----------------------------------------------------------------------------


def store_flags(args: argparse.Namespace) -> contextlib.AbstractContextManager[list[str]]:
    """The server's flags for one round's store: --store on a new database, or none (SQLite)."""
    if not args.store:
        return contextlib.nullcontext([])
    return _fresh_store(args.store)


@contextlib.contextmanager
def _fresh_store(dsn: str) -> Iterator[list[str]]:
    with fresh_database(dsn, "lottery_bench") as store:
        yield ["--store", store]


def run_ours(data: Dataset, args: argparse.Namespace, window: int, stats: bool) -> Round:
    """lottery server + N lottery agency processes."""
    with tempfile.TemporaryDirectory(prefix="lottery-bench-") as tmp, store_flags(args) as store:
        server = start_server(
            Path(tmp) / "store", data.agencies, extra_args=["--sync", args.sync, *store]
        )
        extra = ["--max-in-flight", str(window), "--batch-max-amount", str(args.batch_max_amount)]
        stats_files = [Path(tmp) / f"stats-{i}.json" for i in range(1, data.agencies + 1)]
        try:
            cpu_before = children_cpu()
            started = time.perf_counter()
            agencies = []
            for i, bets_file in enumerate(data.files, 1):
                flags = [*extra, "--stats-file", str(stats_files[i - 1])] if stats else extra
                agencies.append(start_agency(i, server.port, bets_file, extra_args=flags))
            wait_agencies(agencies, timeout=ROUND_TIMEOUT)
            seconds = time.perf_counter() - started
            agencies_cpu = children_cpu() - cpu_before
        finally:
            code, usage = _finish_server(server)
        latencies: list[float] = []
        if stats:
            for path in stats_files:
                if path.exists():
                    latencies.extend(json.loads(path.read_text()).get("ack_latencies_ms", []))
    if stats and any(a.returncode == 2 for a in agencies):
        raise _NoStatsFlag
    _check_agencies("ours", data, agencies, [_winners_count(a) for a in agencies])
    _check_server("ours", code, server)
    result = _server_figures("ours", data, window, seconds, server, usage, latencies)
    result.agencies_cpu_s = agencies_cpu
    result.batch = args.batch_max_amount
    return result


def run_ours_servers(
    data: Dataset, args: argparse.Namespace, window: int, stats: bool, servers: int
) -> Round:
    """lottery server x ``servers`` on one --store, + N lottery agency processes.

    Each agency is given every server (``--server a,b``), starting at a different
    one (agency i at server (i - 1) mod K), so the agencies are spread over the
    servers and one round runs on one database. CPU and commits are the servers'
    sums, peak RSS the largest; the draw is whichever server made it.
    """
    mode = f"ours_{servers}_servers"
    with (
        tempfile.TemporaryDirectory(prefix="lottery-bench-") as tmp,
        store_flags(args) as store,
        contextlib.ExitStack() as running,
    ):
        procs: list[ServerProcess] = []
        finished: list[tuple[int, Usage]] = []

        def stop_all() -> None:
            finished.extend(_finish_server(server) for server in procs)

        running.callback(stop_all)
        for k in range(servers):
            procs.append(
                start_server(
                    Path(tmp) / f"store-{k}",
                    data.agencies,
                    extra_args=["--sync", args.sync, *store],
                )
            )
        addresses = [f"127.0.0.1:{server.port}" for server in procs]
        extra = ["--max-in-flight", str(window), "--batch-max-amount", str(args.batch_max_amount)]
        stats_files = [Path(tmp) / f"stats-{i}.json" for i in range(1, data.agencies + 1)]
        cpu_before = children_cpu()
        started = time.perf_counter()
        agencies = []
        for i, bets_file in enumerate(data.files, 1):
            first = (i - 1) % servers
            order = ",".join(addresses[first:] + addresses[:first])
            flags = [*extra, "--server", order]
            if stats:
                flags += ["--stats-file", str(stats_files[i - 1])]
            agencies.append(start_agency(i, procs[first].port, bets_file, extra_args=flags))
        wait_agencies(agencies, timeout=ROUND_TIMEOUT)
        seconds = time.perf_counter() - started
        agencies_cpu = children_cpu() - cpu_before
        running.close()
        latencies: list[float] = []
        if stats:
            for path in stats_files:
                if path.exists():
                    latencies.extend(json.loads(path.read_text()).get("ack_latencies_ms", []))
    _check_agencies(mode, data, agencies, [_winners_count(a) for a in agencies])
    for server, (code, _) in zip(procs, finished, strict=True):
        _check_server(mode, code, server)
    parts = [
        _server_figures(mode, data, window, seconds, server, usage, latencies)
        for server, (_, usage) in zip(procs, finished, strict=True)
    ]
    result = parts[0]
    result.server_cpu_s = sum(p.server_cpu_s for p in parts)
    result.server_peak_rss_mib = max(p.server_peak_rss_mib for p in parts)
    commits = [p.commits for p in parts if p.commits is not None]
    batches = [
        p.commits * p.batches_per_commit
        for p in parts
        if p.commits is not None and p.batches_per_commit is not None
    ]
    if commits:
        result.commits = sum(commits)
        result.batches_per_commit = sum(batches) / max(1, result.commits)
    result.draw_s = next((p.draw_s for p in parts if p.draw_s is not None), None)
    result.agencies_cpu_s = agencies_cpu
    result.batch = args.batch_max_amount
    return result


class _NoStatsFlag(Exception):
    """The agency refused --stats-file (exit 2): run again without it."""


def _winners_count(agency: AgencyProcess) -> int | None:
    """How many documents the agency's ``action: ganadores`` line lists, if any."""
    winners = agency.winners
    return None if winners is None else len(winners)


def run_baseline(
    data: Dataset, args: argparse.Namespace, fsync: bool = False, batch: int | None = None
) -> Round:
    """benchmarks/threaded_baseline.py: its server + N agency processes.

    With ``fsync`` its acks are durable like ours ("baseline_durable"). Its
    batches are cut at ``batch`` bets (default: ours, ``--batch-max-amount``)
    and at 8 kB; at `BASELINE_BATCH` it is "baseline_100", the design as its
    users ship it.
    """
    batch = batch or args.batch_max_amount
    mode = "baseline_durable" if fsync else "baseline"
    if batch != args.batch_max_amount:
        mode = f"baseline_{batch}"
    with tempfile.TemporaryDirectory(prefix="lottery-bench-baseline-") as tmp:
        server = start_baseline_server(tmp, data.agencies, fsync)
        try:
            cpu_before = children_cpu()
            started = time.perf_counter()
            agencies = [
                start_baseline_agency(i, server.port, f, batch) for i, f in enumerate(data.files, 1)
            ]
            wait_agencies(agencies, timeout=ROUND_TIMEOUT)
            seconds = time.perf_counter() - started
            agencies_cpu = children_cpu() - cpu_before
        finally:
            code, usage = _finish_server(server)
    winners = []
    for agency in agencies:
        count = log_value(agency.output, "consulta_ganadores", "cant_ganadores")
        winners.append(None if count is None else int(count))
    _check_agencies(mode, data, agencies, winners)
    _check_server(mode, code, server)
    result = _server_figures(mode, data, None, seconds, server, usage, None)
    result.agencies_cpu_s = agencies_cpu
    result.batch = batch
    return result


def preencode(data: Dataset, batch_max_amount: int) -> list[list[bytes]]:
    """Each agency's BATCH frames, cut as the agency cuts them, sequences from 1.

    Each frame carries its input position (protocol version 2): the rows read
    so far, as the agency counts them.
    """
    today = datetime.date.today().isoformat()
    frames_per_agency: list[list[bytes]] = []
    for path in data.files:
        frames: list[bytes] = []
        batch: list[bytes] = []
        size = BATCH_OVERHEAD
        position = 0  # input rows read
        with path.open(newline="", encoding="utf-8-sig") as f:
            for row in csv.reader(f):
                if not row:
                    continue
                record = encode_record(row, today)
                if batch and (
                    len(batch) >= batch_max_amount or size + len(record) > MAX_FRAME_SIZE
                ):
                    frames.append(encode_batch(len(frames) + 1, batch, position))
                    batch, size = [], BATCH_OVERHEAD
                batch.append(record)
                size += len(record)
                position += 1
        if batch:
            frames.append(encode_batch(len(frames) + 1, batch, position))
        frames_per_agency.append(frames)
    return frames_per_agency


async def _feed_agency(
    agency: int,
    port: int,
    frames: list[bytes],
    window: int,
    latencies: list[float],
    handshakes: asyncio.Semaphore,
) -> int:
    """One agency's connection: HELLO, BATCH frames in a window, DONE, WINNERS_QUERY.

    At most `HANDSHAKES_AT_ONCE` connections are between connecting and
    WELCOME at any moment (``handshakes``), as agencies that do not all start
    in the same millisecond: the server keeps ``limit_unauthenticated`` (1,024)
    slots for connections that have not said who they are, and refuses a
    crowd from one address beyond that. Once welcomed, every connection stays
    open to the end of the round.
    """
    async with handshakes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        replies = ReplyReader(reader)
        try:
            writer.write(encode(Hello(agency)))
            welcome = await replies.next()
        except BaseException:
            writer.close()
            raise
    if not isinstance(welcome, Welcome):
        writer.close()
        raise BenchError(f"server alone: agency {agency}: expected Welcome, got {welcome}")

    async def receive() -> Message:
        if (message := await replies.next()) is None:
            raise BenchError(f"server alone: agency {agency}: the server closed")
        return message

    def expect(message: Message, kind: type) -> None:
        if not isinstance(message, kind):
            raise BenchError(
                f"server alone: agency {agency}: expected {kind.__name__}, got {message}"
            )

    try:
        room = asyncio.Semaphore(window)
        sent_at = [0.0] * (len(frames) + 1)

        async def send_frames() -> None:
            for seq, frame in enumerate(frames, 1):
                await room.acquire()
                sent_at[seq] = time.perf_counter()
                writer.write(frame)
                await writer.drain()

        async def read_acks() -> None:
            acked = 0
            while acked < len(frames):
                ack = await receive()
                expect(ack, Ack)
                assert isinstance(ack, Ack)
                now = time.perf_counter()
                for seq in range(acked + 1, ack.seq + 1):
                    latencies.append((now - sent_at[seq]) * 1000)
                    room.release()
                acked = max(acked, ack.seq)

        async with asyncio.TaskGroup() as tg:
            tg.create_task(send_frames())
            tg.create_task(read_acks())
        writer.write(encode(Done()))
        done = await receive()
        if done != Ack(0):
            raise BenchError(f"server alone: agency {agency}: DONE answered {done}")
        documents: list[str] = []
        writer.write(encode(WinnersQuery()))
        while True:
            reply = await receive()
            if isinstance(reply, NotReady):
                await asyncio.sleep(0.05)
                writer.write(encode(WinnersQuery()))
                continue
            expect(reply, Winners)
            assert isinstance(reply, Winners)
            documents.extend(reply.documents)
            if reply.last:
                return len(documents)
    finally:
        writer.close()


async def _feed_all(
    port: int, frames: list[list[bytes]], window: int, latencies: list[float]
) -> tuple[float, list[int]]:
    started = time.perf_counter()
    handshakes = asyncio.Semaphore(HANDSHAKES_AT_ONCE)
    async with asyncio.TaskGroup() as tg:
        tasks = [
            tg.create_task(_feed_agency(i, port, f, window, latencies, handshakes))
            for i, f in enumerate(frames, 1)
        ]
    return time.perf_counter() - started, [t.result() for t in tasks]


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run_server_alone(
    data: Dataset, frames: list[list[bytes]], args: argparse.Namespace, window: int
) -> Round:
    """lottery server fed pre-encoded frames by this process."""
    latencies: list[float] = []
    with (
        tempfile.TemporaryDirectory(prefix="lottery-bench-alone-") as tmp,
        store_flags(args) as store,
    ):
        server = start_server(
            Path(tmp) / "store", data.agencies, extra_args=["--sync", args.sync, *store]
        )
        try:
            with asyncio.Runner(loop_factory=_new_loop) as runner:
                seconds, winners = runner.run(
                    asyncio.wait_for(
                        _feed_all(server.port, frames, window, latencies), ROUND_TIMEOUT
                    )
                )
        except* (BenchError, OSError, TimeoutError) as group:
            raise BenchError(
                f"server alone: {group.exceptions[0]!r}\n" + server.log()[-3000:]
            ) from None
        finally:
            code, usage = _finish_server(server)
    for agency, (got, want) in enumerate(zip(winners, data.winners, strict=True), 1):
        if got != want:
            raise BenchError(f"server alone: agency {agency} got {got} winners, expected {want}")
    _check_server("server alone", code, server)
    result = _server_figures("server_alone", data, window, seconds, server, usage, latencies)
    result.batch = args.batch_max_amount
    return result


# -- report ---------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    try:
        loop = f"uvloop {importlib.metadata.version('uvloop')}"
    except importlib.metadata.PackageNotFoundError:
        loop = "asyncio"
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "event_loop": loop,
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


ROWS = [
    ("bets/s", "bets_per_s", ",.0f"),
    ("seconds", "seconds", ".2f"),
    ("batch (most bets)", "batch", ",.0f"),
    ("server CPU s", "server_cpu_s", ".2f"),
    ("server CPU µs/bet", "server_us_per_bet", ".2f"),
    ("server peak RSS MiB", "server_peak_rss_mib", ".1f"),
    ("agencies CPU s (all)", "agencies_cpu_s", ".2f"),
    ("agency CPU µs/bet", "agency_us_per_bet", ".2f"),
    ("ack latency p50 ms", "ack_p50_ms", ".2f"),
    ("ack latency p99 ms", "ack_p99_ms", ".2f"),
    ("server ack p50 ms", "server_ack_p50_ms", ".2f"),
    ("server ack p99 ms", "server_ack_p99_ms", ".2f"),
    ("batches per commit", "batches_per_commit", ".1f"),
    ("draw s (server log)", "draw_s", ".3f"),
]
COLUMNS = [
    ("ours", "ours e2e"),
    *((f"ours_{k}_servers", f"e2e {k} servers") for k in range(2, 10)),
    ("baseline_durable", "baseline fsync"),
    ("baseline", "baseline tp0"),
    (f"baseline_{BASELINE_BATCH}", f"tp0 @{BASELINE_BATCH}"),
    ("server_alone", "server alone"),
]


def table(best: dict[str, Round]) -> str:
    cols = [(key, title) for key, title in COLUMNS if key in best]
    lines = [f"{'':22}" + "".join(f"{title:>16}" for _, title in cols)]
    for label, attr, spec in ROWS:
        cells = "".join(f"{_fmt(getattr(best[key], attr), spec):>16}" for key, _ in cols)
        lines.append(f"{label:22}{cells}")
    return "\n".join(lines)


def ratios(best: dict[str, Round]) -> dict[str, float]:
    out: dict[str, float] = {}
    if "ours" in best and "baseline_durable" in best:
        out["ours_over_baseline"] = best["ours"].bets_per_s / best["baseline_durable"].bets_per_s
    if "ours" in best and "baseline" in best:
        out["ours_over_tp0_baseline"] = best["ours"].bets_per_s / best["baseline"].bets_per_s
    shipped = f"baseline_{BASELINE_BATCH}"
    if "ours" in best and shipped in best:
        out[f"ours_over_tp0_baseline_{BASELINE_BATCH}"] = (
            best["ours"].bets_per_s / best[shipped].bets_per_s
        )
    if "ours" in best and "server_alone" in best:
        out["e2e_over_server_alone"] = best["ours"].bets_per_s / best["server_alone"].bets_per_s
    return out


# -- sweeps for --plot ----------------------------------------------------------------------


def sweeps(args: argparse.Namespace, stats: bool) -> dict[str, list[dict[str, Any]]]:
    """bets/s against agencies and against the window, a round per point."""
    out: dict[str, list[dict[str, Any]]] = {"agencies": [], "window": []}
    for n in PLOT_AGENCIES:
        data = ensure_dataset(args.data_root, n, PLOT_TOTAL_BETS // n)
        point: dict[str, Any] = {"agencies": n, "bets": data.total}
        if n <= args.max_processes and not args.skip_e2e:
            point["ours"] = run_ours(data, args, args.window, stats).bets_per_s
        if n <= args.max_processes and not args.skip_baseline:
            point["baseline"] = run_baseline(data, args).bets_per_s
        if not args.skip_server_alone:
            frames = preencode(data, args.batch_max_amount)
            point["server_alone"] = run_server_alone(data, frames, args, args.window).bets_per_s
        print(f"  sweep agencies={n}: {_point_text(point)}", flush=True)
        out["agencies"].append(point)
    data = ensure_dataset(
        args.data_root, PLOT_WINDOW_AGENCIES, PLOT_TOTAL_BETS // PLOT_WINDOW_AGENCIES
    )
    frames = preencode(data, args.batch_max_amount)
    for window in PLOT_WINDOWS:
        point = {"window": window, "agencies": data.agencies, "bets": data.total}
        if not args.skip_e2e:
            point["ours"] = run_ours(data, args, window, stats).bets_per_s
        if not args.skip_server_alone:
            point["server_alone"] = run_server_alone(data, frames, args, window).bets_per_s
        print(f"  sweep window={window}: {_point_text(point)}", flush=True)
        out["window"].append(point)
    return out


def _point_text(point: dict[str, Any]) -> str:
    return ", ".join(
        f"{key} {point[key]:,.0f} bets/s"
        for key in ("ours", "baseline", "server_alone")
        if key in point
    )


def draw_plot(path: Path, sweep: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = {
        "ours": f"ours, end to end (processes, ≤ {args.max_processes} agencies)",
        "baseline": "threaded baseline, end to end",
        "server_alone": "ours, server alone",
    }
    for key, label in labels.items():
        points = [p for p in sweep["agencies"] if key in p]
        if points:
            left.plot([p["agencies"] for p in points], [p[key] for p in points], "o-", label=label)
    left.set_xscale("log")
    left.set_xticks(list(PLOT_AGENCIES), [str(n) for n in PLOT_AGENCIES])
    left.set_xlabel(f"agencies ({PLOT_TOTAL_BETS:,} bets in all)")
    left.set_ylabel("bets/s")
    left.set_title(f"bets/s against agencies (window {args.window})")
    for key in ("ours", "server_alone"):
        points = [p for p in sweep["window"] if key in p]
        label = labels[key].split(" (")[0]
        if points:
            right.plot([p["window"] for p in points], [p[key] for p in points], "o-", label=label)
    right.set_xscale("log", base=2)
    right.set_xticks(list(PLOT_WINDOWS), [str(w) for w in PLOT_WINDOWS])
    right.set_xlabel(f"window (batches in flight per agency), {PLOT_WINDOW_AGENCIES} agencies")
    right.set_title(f"bets/s against the window ({PLOT_TOTAL_BETS:,} bets)")
    for ax in (left, right):
        ax.set_ylim(bottom=0)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:,.0f}"))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(
        f"lottery on {os.cpu_count()} cores: sync {args.sync}, batch ≤ {args.batch_max_amount} bets"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agencies", type=int, default=5)
    parser.add_argument("--bets", type=int, default=200_000, help="bets per agency")
    parser.add_argument("--window", type=int, default=16, help="batches in flight per agency")
    parser.add_argument("--batch-max-amount", type=int, default=200, help="most bets per batch")
    parser.add_argument("--sync", type=str.upper, default="FULL", choices=("FULL", "NORMAL", "OFF"))
    parser.add_argument("--repeat", type=int, default=1, help="best of K rounds per figure")
    parser.add_argument("--skip-e2e", action="store_true", help="no lottery agency processes")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--skip-server-alone", action="store_true")
    parser.add_argument("--plot", type=Path, help="also sweep agencies and window; draw a PNG")
    parser.add_argument(
        "--slow-clients", action="store_true",
        help="also time a round with 1,000 idle or dripping connections against one without",
    )  # fmt: skip
    parser.add_argument(
        "--status-flood", action="store_true",
        help="also measure an agency's bets/s under a STATUS flood (N=1,000) against without",
    )  # fmt: skip
    parser.add_argument(
        "--store", help="postgresql://USER@HOST:PORT/DB: our server on PostgreSQL (a new "
        "database per round, on that server)",
    )  # fmt: skip
    parser.add_argument(
        "--servers", type=int, default=1,
        help="with --store: also run each e2e round on K servers over that one store, "
        "the agencies spread over them (alternating with the one-server round)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, help="default bench-results/bench-<timestamp>.json")
    parser.add_argument("--data-root", type=Path, default=ROOT / "bench-data")
    parser.add_argument(
        "--max-processes", type=int, default=200,
        help="most agency processes in one round (each takes ~30 MB); above it, "
        "use --skip-e2e --skip-baseline and measure the server alone",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if min(args.agencies, args.bets, args.window, args.batch_max_amount, args.repeat) < 1:
        parser.error("--agencies, --bets, --window, --batch-max-amount, --repeat must be ≥ 1")
    if args.servers < 1 or args.servers > 9 or (args.servers > 1 and not args.store):
        parser.error("--servers takes 1 to 9, and more than 1 only with --store")
    process_modes = not (args.skip_e2e and args.skip_baseline)
    if process_modes and args.agencies > args.max_processes:
        parser.error(
            f"{args.agencies} agency processes is over --max-processes {args.max_processes}; "
            "add --skip-e2e --skip-baseline to measure the server alone"
        )
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--plot needs matplotlib: .venv/bin/pip install matplotlib")
    return args


def prepare_processes() -> tuple[int, int]:
    """Set this machine up as a deployment would be, for the processes measured.

    - Bytecode for lottery/: an installed package has it (pip compiles it), a
      fresh checkout has none and PYTHONDONTWRITEBYTECODE=1 keeps it that way;
      then every process compiles every module again at start-up (60 ms of a
      server's CPU), which is a cost of the checkout, not of the program.
    - The open-file limit raised to the hard one for this process too: the
      server alone with 10,000 agencies opens 10,000 connections from here.

    Returns the (soft, hard) RLIMIT_NOFILE after.
    """
    compileall.compile_dir(ROOT / "lottery", quiet=1)
    return raise_nofile_limit()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    soft, _ = prepare_processes()
    if args.skip_e2e and args.skip_baseline and soft != -1 and args.agencies + 64 > soft:
        print(f"note: {args.agencies:,} connections but only {soft} open files allowed here")
    info = machine()
    print(
        f"machine: {info['cores']} cores, Python {info['python']}, {info['event_loop']}, "
        f"{info['platform']}, load {info['load_average_at_start']}"
    )
    data = ensure_dataset(args.data_root, args.agencies, args.bets)
    print(
        f"data: {data.agencies} agencies x {data.bets:,} bets = {data.total:,} bets "
        f"({data.folder}); window {args.window}, batch ≤ {args.batch_max_amount}, "
        f"sync {args.sync}, best of {args.repeat}"
        + (f", store {args.store}" if args.store else ""),
        flush=True,
    )
    stats = agency_supports_stats_file()
    frames = None if args.skip_server_alone else preencode(data, args.batch_max_amount)
    rounds: list[Round] = []
    try:
        for attempt in range(1, args.repeat + 1):
            modes = [
                mode
                for mode, skip in (
                    ("ours", args.skip_e2e),
                    (f"ours_{args.servers}_servers", args.skip_e2e or args.servers == 1),
                    ("baseline_durable", args.skip_baseline),
                    ("baseline", args.skip_baseline),
                    (
                        f"baseline_{BASELINE_BATCH}",
                        args.skip_baseline or args.batch_max_amount == BASELINE_BATCH,
                    ),
                    ("server_alone", frames is None),
                )
                if not skip
            ]
            for mode in modes:
                if mode == "ours":
                    try:
                        result = run_ours(data, args, args.window, stats)
                    except _NoStatsFlag:
                        stats = False
                        result = run_ours(data, args, args.window, stats)
                elif mode.endswith("_servers"):
                    result = run_ours_servers(data, args, args.window, stats, args.servers)
                elif mode in ("baseline", "baseline_durable"):
                    result = run_baseline(data, args, fsync=mode == "baseline_durable")
                elif mode.startswith("baseline_"):
                    result = run_baseline(data, args, batch=BASELINE_BATCH)
                else:
                    assert frames is not None
                    result = run_server_alone(data, frames, args, args.window)
                rounds.append(result)
                print(
                    f"  round {attempt} {mode}: {result.bets_per_s:,.0f} bets/s "
                    f"({result.seconds:.2f} s)",
                    flush=True,
                )
        sweep = sweeps(args, stats) if args.plot is not None else None
        slow = measure_slow_clients() if args.slow_clients else None
        flood = None
        if args.status_flood:
            configure("WARNING", "console", io.StringIO())  # the in-process agency: quiet
            flood = asyncio.run(status_flood_ratio(repeat=max(args.repeat, 2)))
    except (BenchError, ServerStartError) as exc:
        print(f"\nBENCHMARK FAILED: {exc}", file=sys.stderr)
        return 1

    best: dict[str, Round] = {}
    for r in rounds:
        if r.mode not in best or r.bets_per_s > best[r.mode].bets_per_s:
            best[r.mode] = r
    print()
    print(table(best))
    ratio = ratios(best)
    print()
    shipped = f"ours_over_tp0_baseline_{BASELINE_BATCH}"
    if shipped in ratio:
        print(f"ours / tp0 @{BASELINE_BATCH} bets:        {ratio[shipped]:.2f}x"
              f"   (target ≥ {TARGET_RATIO}x; the threaded design as shipped: stop-and-wait,"
              f" {BASELINE_BATCH}-bet batches, no fsync)")  # fmt: skip
    if "ours_over_tp0_baseline" in ratio:
        print(f"ours / tp0 @{args.batch_max_amount} bets:        "
              f"{ratio['ours_over_tp0_baseline']:.2f}x   (the same, at our batch size;"
              " tp0 acks before the bets reach the disk)")  # fmt: skip
    if "ours_over_baseline" in ratio:
        print(f"ours / baseline fsync:       {ratio['ours_over_baseline']:.2f}x"
              "   (like for like: both ack only what is on disk)")  # fmt: skip
    for key, label in (("ours", "ours e2e"), ("server_alone", "server alone")):
        if key in best:
            r = best[key]
            agency = ""
            if r.agency_us_per_bet is not None:
                agency = (f", agency CPU {r.agency_us_per_bet:.2f} µs/bet"
                          f" (target ≤ {TARGET_AGENCY_US_PER_BET})")  # fmt: skip
            print(f"{label + ':':29}server CPU {r.server_us_per_bet:.2f} µs/bet "
                  f"(target ≤ {TARGET_SERVER_US_PER_BET} for 5 x 200,000){agency}")  # fmt: skip
    if "server_alone" in best and args.agencies >= 1000:
        r = best["server_alone"]
        print(f"{args.agencies:,} agencies (server alone): peak RSS "
              f"{r.server_peak_rss_mib:.0f} MiB (target ≤ {TARGET_MANY_RSS_MIB} for 10,000), "
              f"server ack p99 {_fmt(r.server_ack_p99_ms, '.0f')} ms"
              f" (target ≤ {TARGET_MANY_ACK_P99_MS})")  # fmt: skip
    several = f"ours_{args.servers}_servers"
    if "ours" in best and several in best:
        ratio[f"{several}_over_one"] = best[several].bets_per_s / best["ours"].bets_per_s
        print(f"e2e {args.servers} servers / one:     {ratio[f'{several}_over_one']:.2f}"
              f"   ({best[several].bets_per_s:,.0f} bets/s; target ≥ 1.00)")  # fmt: skip
    if "e2e_over_server_alone" in ratio:
        print(f"ours e2e / server alone:     {ratio['e2e_over_server_alone']:.2f}")
    if "ours" in best:
        print(f"ours e2e bets/s:             {best['ours'].bets_per_s:,.0f}"
              f"   (target ≥ {TARGET_BETS_PER_S:,} for 5 x 200,000)")  # fmt: skip
    if slow is not None:
        print(slow.text())
    if flood is not None:
        plain, flooded, rss_before, rss_after = flood
        print(f"STATUS flood (N=1,000; 20 flooders + 100 never reading): agency "
              f"{plain:,.0f} -> {flooded:,.0f} bets/s, ratio {flooded / plain:.2f} "
              f"(target ≥ 0.80); server RSS {rss_before:.0f} -> {rss_after:.0f} MiB")  # fmt: skip
    if "ours" in best and not stats:
        print("note: the agency has no --stats-file yet; e2e ack latency is not measured")

    if sweep is not None and args.plot is not None:
        draw_plot(args.plot, sweep, args)
        print(f"plot: {args.plot}")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    json_path = args.json or ROOT / "bench-results" / f"bench-{stamp}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "when": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": info,
        "config": {
            "agencies": args.agencies,
            "bets_per_agency": args.bets,
            "total_bets": data.total,
            "window": args.window,
            "batch_max_amount": args.batch_max_amount,
            "sync": args.sync,
            "repeat": args.repeat,
            "data": str(data.folder),
            "agency_stats_file": stats,
        },
        "best": {mode: r.as_json() for mode, r in best.items()},
        "ratios": ratio,
        "rounds": [r.as_json() for r in rounds],
        "sweeps": sweep,
        "status_flood": None
        if flood is None
        else {
            "agencies": 1000,
            "plain_bets_per_s": flood[0],
            "flooded_bets_per_s": flood[1],
            "ratio": flood[1] / flood[0],
            "server_rss_mib": [flood[2], flood[3]],
        },
        "slow_clients": None
        if slow is None
        else {
            "agencies": slow.agencies,
            "bets_per_agency": slow.bets,
            "crowd": slow.crowd,
            "plain_s": slow.plain_s,
            "crowded_s": slow.crowded_s,
            "ratio": slow.ratio,
        },
    }
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"json: {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
