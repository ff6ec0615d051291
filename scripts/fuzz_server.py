#!/usr/bin/env python3
"""Hostile input: thousands of random and mutated frames against a real server, mid-round.

    python scripts/fuzz_server.py                      # 5 agencies, ≥ 10,000 frames, seed 1
    python scripts/fuzz_server.py --auth               # the server has secrets; we know none
    python scripts/fuzz_server.py --seed 7 --frames 50000 --keep out

What one run does, on 127.0.0.1 with real ``lottery`` processes:

1. writes one file per agency (``gen_dataset.generate_agency_file``; agency i
   gets i/N of ``--bets``, so they finish one after another) with 0..3 winners
   each at rows chosen by the seed, and starts ``lottery server``;
2. from asyncio, runs ``--concurrency`` workers that open short connections,
   one after the other, each sending a *script*: random bytes; valid frames
   with mutations (bit flips, truncation, wrong and huge length headers,
   unknown and swapped types, broken bodies with the length fixed up, splices);
   frames out of order; batches with invalid bets; sequence 0, gaps and
   duplicates; handshakes as agencies 1..N and outside it, with bad versions;
   AUTH frames; frames at and over the 8 KiB limit; partial frames, then EOF
   or an abort; slow drips. A script is written in one go, in random pieces, or
   a byte at a time; the connection then half-closes, lingers for the replies,
   or aborts. Each connection is bounded by ``--timeout``;
3. after a twentieth of the frames, starts the N ``lottery agency`` processes:
   the round runs while the fuzzing goes on. It goes on until at least
   ``--frames`` frames were sent, the agencies have exited, and a twentieth of
   the frames went out after the round (every agency done: every kind of frame
   is safe, and a bet must be refused with DRAW_MADE);
4. checks: the server process is alive and ``lottery ping`` answers; every
   agency exited 0 with exactly the winners its file holds; the server logged
   ``sorteo | result: success`` once and no unhandled exception, and exited 0 on
   SIGTERM; ``lottery export`` equals the input bet for bet (as multisets); and
   every reply matched the *oracle* (below), none was undecodable.

Nothing the fuzzer sends may change the round, or step 4 could not be exact:
a valid BATCH, BET or DONE as a real agency before the draw would be a
legitimate bet. So before a script is sent, `predict` runs it through the same
sans-I/O `ServerProtocol` the server uses, with the server's handshake and
sequence rules on top, and a script that could store a bet or mark an agency
done is drawn again. What may reach the store is a gap (sequence ≥ 2**30:
BAD_SEQUENCE) or a duplicate (at most the ``last_seq`` the WELCOME just gave:
acknowledged, not stored).

A handshake as agency X stops X's older connections (the server's rule, so a
restarted agency's WELCOME is exact). So our connections admitted as X take
turns (a lock per agency), and while the real agencies run, a script that
would be admitted as one of them goes out at most once per
``--impostor-interval`` seconds per agency (the real agency reconnects and
resends; our connection may then end early, counted as ``kicked``). A tp0
server without secrets cannot tell an impostor from the agency, so a much
higher rate can make a real agency give up: that is what ``--auth`` is for.
With ``--auth`` the server gets ``--secrets`` (``lottery make-secrets``) and
each agency its own secret; every HELLO of ours gets a CHALLENGE, and every
AUTH of ours AUTH_FAILED, so nothing needs rationing.

The oracle: `predict` also says which replies the server owes, in order
(WELCOME, INVALID_BET, BAD_FRAME then EOF...), and `judge` compares them with
what came back (`ClientProtocol`). It checks the server's wiring (ordering,
closing, refusals); the decoder itself is checked against an independent
model in tests/test_fuzz.py. A connection reset (RST) may cut the replies
short: that is allowed, and counted.

``--seed`` makes each connection's bytes a function of the seed and the
connection's number; which connections run during the round is up to timing.
A mismatch is printed with its connection number, kind and bytes (hex) so it
can be replayed. Exit status 0 only on PASS.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import csv
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fuzzing import FuzzStats, ScriptMaker, agency_locks, fuzz
from gen_dataset import generate_agency_file
from lottery.client import query_status
from lottery.errors import ProtocolError
from roundrunner import (
    AgencyProcess,
    export_bets,
    input_bets,
    lottery_command,
    start_agency,
    start_server,
    stop_server,
    wait_agencies,
)

__all__ = ["Round", "main", "make_round", "run"]


# -- the real round ----------------------------------------------------------------------------


@dataclass
class Round:
    files: list[Path]
    winners: list[list[str]]  # expected documents per agency


def make_round(workdir: Path, agencies: int, bets: int, seed: int) -> Round:
    rng = random.Random(f"round:{seed}")
    files, winners = [], []
    for agency in range(1, agencies + 1):
        size = max(1, bets * agency // agencies)  # agencies finish one after another
        rows = set(rng.sample(range(size), rng.randint(0, min(3, size))))
        path = workdir / f"agency-{agency}.csv"
        generate_agency_file(path, size, rows, seed=seed * 1000 + agency)
        with path.open(newline="", encoding="utf-8") as f:
            docs = [row[2] for i, row in enumerate(csv.reader(f)) if i in rows]
        files.append(path)
        winners.append(sorted(docs))
    return Round(files, winners)


def _why(output: str) -> str:
    """The reason an agency gave for failing: its ``result: fail`` line or last exception."""
    lines = output.strip().splitlines()
    crash = _unhandled(output)
    for line in reversed(lines):
        if "result: fail" in line and "ronda" in line:
            return line[line.find("action:") :][:300]
    if crash:
        return "; ".join(crash)
    for line in reversed(lines):
        if "Error" in line.split(":")[0]:
            return line[:300]
    return lines[-1][:300] if lines else "(no output)"


def _unhandled(log: str) -> collections.Counter[str]:
    """Unhandled exceptions in a server log, by their final ``Error: message`` line."""
    found: collections.Counter[str] = collections.Counter()
    lines = log.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith(("Unhandled exception", "Task exception", "Exception in callback")):
            last = lines[i]
            j = i + 1
            # The block runs until the next log line (it starts with the date).
            while j < len(lines) and not lines[j][:2].isdigit():
                text = lines[j].strip(" |+-")
                if text and ("Error" in text.split(":")[0] or "Exception" in text.split(":")[0]):
                    last = re.sub(r"0x[0-9a-f]+", "0x…", text[:160])
                j += 1
            found[last] += 1
            i = j
        elif lines[i].startswith("Traceback"):
            found[lines[i]] += 1
            i += 1
        else:
            i += 1
    return found


def _hex(data: bytes, limit: int = 160) -> str:
    text = data[:limit].hex(" ")
    return text + (f" … ({len(data)} bytes)" if len(data) > limit else "")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=10_000, help="least frames to send")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--agencies", type=int, default=5)
    parser.add_argument("--bets", type=int, default=50_000, help="agency i has i/N of them")
    parser.add_argument("--concurrency", type=int, default=50, help="connections at a time")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per connection")
    parser.add_argument("--batch-max-amount", type=int, default=50, help="for the agencies")
    parser.add_argument(
        "--auth", action="store_true",
        help="server with --secrets, agencies with theirs; the fuzzer knows none",
    )  # fmt: skip
    parser.add_argument(
        "--impostor-interval", type=float, default=5.0,
        help="without --auth: least seconds between two of our handshakes as the same "
        "running agency (each one stops its connection); 0: none during the round",
    )  # fmt: skip
    parser.add_argument("--limit-connections", type=int, default=0, help="0: server default")
    loops = ("auto", "asyncio", "uvloop")
    parser.add_argument("--server-loop", default="auto", choices=loops, help="server's --loop")
    parser.add_argument("--agency-loop", default="auto", choices=loops, help="agencies' --loop")
    parser.add_argument("--deadline", type=float, default=600, help="seconds for the fuzzing")
    parser.add_argument("--keep", type=Path, help="keep files, data and logs in this directory")
    args = parser.parse_args(argv)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        return run(args, args.keep)
    with tempfile.TemporaryDirectory(prefix="lottery-fuzz-") as tmp:
        return run(args, Path(tmp))


def _secrets(workdir: Path, agencies: int) -> tuple[Path, list[Path]]:
    """``lottery make-secrets``, then one file per agency with its own secret."""
    table = workdir / "secrets"
    subprocess.run(
        [*lottery_command(), "make-secrets", str(agencies), str(table)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    own = []
    for line in table.read_text(encoding="utf-8").splitlines():
        agency, sep, secret = line.split("#", 1)[0].partition(":")
        if sep:
            path = workdir / f"secret-{agency.strip()}"
            path.write_text(secret.strip() + "\n", encoding="utf-8")
            path.chmod(0o600)
            own.append(path)
    return table, own


def run(args: argparse.Namespace, workdir: Path) -> int:
    started = time.monotonic()
    print(
        f"fuzz_server: seed {args.seed}, {args.agencies} agencies, up to {args.bets} bets each, "
        f"≥ {args.frames} frames, {args.concurrency} connections at a time"
        f"{', --auth' if args.auth else ''}, in {workdir}"
    )
    the_round = make_round(workdir, args.agencies, args.bets, args.seed)
    server_args = ["--loop", args.server_loop]
    agency_args = ["--loop", args.agency_loop, "--batch-max-amount", str(args.batch_max_amount)]
    agency_secrets: list[Path] = []
    if args.auth:
        table, agency_secrets = _secrets(workdir, args.agencies)
        server_args += ["--secrets", str(table)]
    if args.limit_connections:
        server_args += ["--limit-connections", str(args.limit_connections)]
    agencies: list[AgencyProcess] = []
    with (workdir / "server.log").open("w", encoding="utf-8") as log_file:
        server = start_server(
            workdir / "data", args.agencies, extra_args=server_args, log_file=log_file
        )
        try:

            def start(agency: int, path: Path) -> AgencyProcess:
                extra = list(agency_args)
                if agency_secrets:
                    extra += ["--secret-file", str(agency_secrets[agency - 1])]
                return start_agency(agency, server.port, path, extra_args=extra)

            report = asyncio.run(_fuzz_round(args, server.port, the_round, agencies, start))
            alive = server.proc.poll() is None
            ping = subprocess.run(
                [*lottery_command(), "ping", f"127.0.0.1:{server.port}"],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
        finally:
            for agency in agencies:
                if agency.proc.poll() is None:
                    agency.proc.kill()
            status = stop_server(server)
    for agency in agencies:
        (workdir / f"agency-{agency.agency}.log").write_text(agency.output, encoding="utf-8")
    exported = export_bets(workdir / "data", workdir / "bets.csv")
    return _verdict(args, report, the_round, agencies, server, status, alive, ping, exported,
                    time.monotonic() - started)  # fmt: skip


@dataclass
class Report:
    stats: FuzzStats
    maker: ScriptMaker
    round_seconds: float = 0.0
    draw_seen_after: float | None = None
    out_of_time: bool = False


BEFORE, DURING, AFTER = "before the round", "during the round", "after the round"


async def _fuzz_round(
    args: argparse.Namespace,
    port: int,
    the_round: Round,
    agencies: list[AgencyProcess],
    start: Callable[[int, Path], AgencyProcess],
) -> Report:
    host = "127.0.0.1"
    maker = ScriptMaker(args.agencies, args.seed, auth=args.auth)
    stats = FuzzStats()
    stop = asyncio.Event()
    state: dict[str, Any] = {"phase": BEFORE, "drawn": False}
    report = Report(stats, maker)
    locks = agency_locks(args.agencies)
    last_impostor: dict[int, float] = {}
    loop_started = time.monotonic()

    async def monitor() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError, ProtocolError, TimeoutError):
                status = await query_status(host, port, timeout=5)
                if status.get("drawn") and not state["drawn"]:
                    state["drawn"] = True
                    report.draw_seen_after = time.monotonic() - loop_started
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.05):
                    await stop.wait()

    async def round_runner() -> None:
        await stats.reached(max(1, args.frames // 20))
        state["phase"] = DURING
        async with contextlib.AsyncExitStack() as quiet:  # none of ours is admitted now
            for agency in sorted(locks):
                await quiet.enter_async_context(locks[agency])
            begun = time.monotonic()
            agencies.extend(start(i, path) for i, path in enumerate(the_round.files, 1))
        await asyncio.to_thread(wait_agencies, agencies, args.deadline)
        report.round_seconds = time.monotonic() - begun
        state["phase"] = AFTER

    def may_admit(ids: frozenset[int]) -> bool:
        """During the round: one of our handshakes per agency per --impostor-interval."""
        now = time.monotonic()
        interval = args.impostor_interval
        if not interval or any(now - last_impostor.get(a, -1e9) < interval for a in ids):
            return False
        last_impostor.update(dict.fromkeys(ids, now))
        return True

    rounds: asyncio.Task[None] | None = None
    deadline = time.monotonic() + args.deadline

    def keep_going(s: FuzzStats) -> bool:
        if time.monotonic() > deadline:
            report.out_of_time = True
            return False
        over = rounds is not None and rounds.done()
        # After the round, a twentieth of the frames (every agency done, so every
        # kind of frame is safe); without a draw there is no such phase to wait for.
        after = s.frames_by_phase[AFTER] >= args.frames // 20 or not state["drawn"]
        return not (s.frames >= args.frames and over and after)

    async with asyncio.TaskGroup() as group:
        watcher = group.create_task(monitor())
        rounds = group.create_task(round_runner())
        await fuzz(
            host, port, maker, concurrency=args.concurrency, timeout=args.timeout,
            keep_going=keep_going, drawn=lambda: bool(state["drawn"]),
            running=lambda: state["phase"] == DURING, may_admit=may_admit,
            phase=lambda: str(state["phase"]), locks=locks, stats=stats,
        )  # fmt: skip
        stop.set()
        await watcher
    return report


def _verdict(
    args: argparse.Namespace, report: Report, the_round: Round, agencies: list[AgencyProcess],
    server: Any, status: int, alive: bool, ping: subprocess.CompletedProcess[str],
    exported: list[tuple[str, ...]], seconds: float,
) -> int:  # fmt: skip
    stats = report.stats
    failures: list[str] = []

    def line(label: str, counter: collections.Counter[str]) -> None:
        print(f"{label}: " + ", ".join(f"{k} {n}" for k, n in counter.most_common()))

    phases = ", ".join(f"{p}: {stats.frames_by_phase[p]}" for p in (BEFORE, DURING, AFTER))
    print(f"\nframes sent: {stats.frames} in {stats.connections} connections ({phases})")
    line("connections by kind", stats.kinds)
    line("mutations", stats.mutations)
    line("replies by kind", stats.replies)
    line("connection ends", stats.ends)
    print(f"scripts redrawn as unsafe for the round: {report.maker.unsafe_drawn_again}; "
          f"admitted as a running agency (impostors): {report.maker.impostors}")  # fmt: skip
    lost = stats.lost_to_reset
    print(f"resets (RST) that cut replies the server owed: {len(lost)}")
    for result in lost[:2]:
        print(f"  e.g. conn {result.script.index} ({result.script.kind}): got "
              f"{result.replies}, owed {[sorted(e.kinds) for e in result.expects]}")  # fmt: skip
    print(f"round: {report.round_seconds:.1f} s; draw seen "
          f"{report.draw_seen_after or 0:.1f} s into the fuzzing")  # fmt: skip
    if report.out_of_time:
        failures.append(f"the fuzzing ran out of time (--deadline {args.deadline:g} s)")
    if report.draw_seen_after is None:
        failures.append("the draw was never seen in the server's status")
    if stats.frames < args.frames:
        failures.append(f"only {stats.frames} frames sent")
    if stats.mismatch_count:
        failures.append(f"{stats.mismatch_count} connections broke the oracle")
        for result in stats.mismatches:
            script = result.script
            how = f"{script.kind}, {script.ending}, {script.write}"
            how += ", drawn" if script.drawn else ""
            print(f"  MISMATCH conn {script.index} ({how}): {result.mismatch}")
            print(f"    replies {result.replies}, end {result.end} {result.detail}")
            print(f"    bytes {_hex(script.data)}")
    if not alive:
        failures.append("the server process died")
    if ping.returncode != 0:
        failures.append(f"lottery ping failed: {ping.stdout.strip()} {ping.stderr.strip()}")
    else:
        print(ping.stdout.strip())
    if len(agencies) != len(the_round.files):
        failures.append("the agencies did not all start")
    for agency, expected in zip(agencies, the_round.winners, strict=False):
        if agency.returncode != 0:
            failures.append(
                f"agency {agency.agency} exited {agency.returncode}: {_why(agency.output)}"
            )
        elif sorted(agency.winners or []) != expected:
            failures.append(f"agency {agency.agency} winners {agency.winners} != {expected}")
    log = server.log()
    draws = log.count("action: sorteo | result: success")
    if draws != 1:
        failures.append(f"the draw was logged {draws} times")
    crashes = _unhandled(log)
    if crashes:
        failures.append(
            f"the server log has {sum(crashes.values())} unhandled exceptions: "
            + "; ".join(f"{n} × {text}" for text, n in crashes.most_common(3))
        )
    if status != 0:
        failures.append(f"the server exited {status} on SIGTERM")
    wanted = collections.Counter(input_bets(the_round.files))
    got = collections.Counter(exported)
    missing, extra = wanted - got, got - wanted
    if missing or extra:
        failures.append(
            f"export differs from the input: {sum(missing.values())} bets missing, "
            f"{sum(extra.values())} extra"
        )
    else:
        print(f"export: {len(exported)} bets, equal to the input")
    print(f"time: {seconds:.1f} s; seed {args.seed}")
    if failures:
        print("\nFAIL")
        for failure in failures:
            print(f"  - {failure}")
        return 1
    print("\nPASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
