#!/usr/bin/env python3
"""The agency's own cost: CPU per bet of ``lottery agency`` processes, and its start-up.

    .venv/bin/python scripts/bench_agency.py                   # 5 agencies x 200,000 bets
    .venv/bin/python scripts/bench_agency.py --agencies 1 --repeat 3
    .venv/bin/python scripts/bench_agency.py --profile prof/   # also a cProfile per agency
    .venv/bin/python scripts/bench_agency.py --phases          # and where each agency's CPU went
    .venv/bin/python scripts/bench_agency.py --skip-round      # start-up figures only

A real ``lottery server`` (``--sync OFF``: its CPU is not counted, and a slow
disk should not hold the agencies up) takes N real ``lottery agency``
processes, each sending its own file of ``--bets`` bets (made by
scripts/gen_dataset.py into ``bench-data/<agencies>x<bets>/``, reused). Each
agency is reaped with ``os.wait4``: its CPU (user + system) is the whole
process's, start-up, reading, validation, framing, sending, waiting for the
winners and exit included, divided by the bets it sent. Goal: ≤ 1.0 µs per bet.

Start-up is ``lottery agency --help``: wall clock, best of ``--startup-runs``
(goal ≤ 60 ms), and the modules that ``python -X importtime`` shows taking
longest (cumulative µs). With ``--profile DIR`` each agency runs under
cProfile (slower: the CPU figures are then not the goal's) and the top
entries by own time (main thread CPU) are printed. With ``--phases`` each
agency says where its CPU went (`_PHASES`): the interpreter's start, the
imports (to the end of `lottery.cli._import_agency`), the reader thread's
trips, and the main thread's work after the imports; these figures are
taken inside the agency, so they leave out its exit (rusage has it).
"""

from __future__ import annotations

import argparse
import os
import pstats
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench import ensure_dataset, stop_and_reap
from roundrunner import AgencyProcess, lottery_command, start_agency, start_server

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ROUND_TIMEOUT = 600.0
GOAL_US_PER_BET = 1.0
GOAL_STARTUP_MS = 60.0
# Bytecode as an installed package has it (pip compiles a wheel's modules): the
# agencies cache theirs under one prefix, whatever checkout --lottery names and
# whatever PYTHONDONTWRITEBYTECODE says, so that no figure includes compiling.
CHILD_ENV: dict[str, str | None] = {
    "PYTHONDONTWRITEBYTECODE": None,
    "PYTHONPYCACHEPREFIX": str(Path(tempfile.gettempdir()) / "lottery-bench-pycache"),
}


# ``python -c _PROFILED OUT agency ...``: the agency under cProfile, timed by the
# main thread's CPU clock (``-m cProfile`` times by the wall clock, so the time
# the loop waits for the server would show as work). The reader thread's work
# is not in the profile: cProfile follows the thread that starts it.
_PROFILED = """
import cProfile, sys, time
out = sys.argv[1]
sys.argv = ["lottery", *sys.argv[2:]]
profile = cProfile.Profile(time.thread_time)
profile.enable()
try:
    from lottery.cli import main
    code = main()
finally:
    profile.disable()
    profile.dump_stats(out)
sys.exit(code)
"""


# ``python -c _PHASES agency ...``: the agency, timed at its steps by CPU clocks
# (process_time at its start and after its imports, thread_time of each
# reader trip and of the main thread), printed as one PHASES line at exit.
_PHASES = """
import atexit, sys, time
started = time.process_time()
sys.argv = ["lottery", *sys.argv[1:]]
import lottery.cli as cli
marks = {"imports": 0.0, "reader": 0.0, "imported_main": 0.0}
import_agency = cli._import_agency
def timed_imports():
    import_agency()
    marks["imports"] = time.process_time()
    marks["imported_main"] = time.thread_time()
    import lottery.batching as batching
    read_some = batching._read_some
    def timed_read(reader):
        start = time.thread_time()
        try:
            return read_some(reader)
        finally:
            marks["reader"] += time.thread_time() - start
    batching._read_some = timed_read
cli._import_agency = timed_imports
def report():
    main = time.thread_time() - marks["imported_main"]
    sys.stderr.write(
        f"PHASES interpreter={started * 1e3:.1f} imports={(marks['imports'] - started) * 1e3:.1f} "
        f"reader={marks['reader'] * 1e3:.1f} main={main * 1e3:.1f} "
        f"total={time.process_time() * 1e3:.1f} ms\\n"
    )
atexit.register(report)
sys.exit(cli.main())
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for key, value in CHILD_ENV.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def reap(agencies: Sequence[AgencyProcess], timeout: float) -> list[tuple[float, float]]:
    """Wait for every agency with os.wait4; each one's user and system CPU seconds."""
    cpu: dict[int, tuple[float, float]] = {}
    deadline = time.monotonic() + timeout
    pending = {a.proc.pid: a for a in agencies}
    while pending:
        for pid, agency in list(pending.items()):
            done, status, usage = os.wait4(pid, os.WNOHANG)
            if done:
                agency.proc.returncode = agency.returncode = os.waitstatus_to_exitcode(status)
                cpu[pid] = (usage.ru_utime, usage.ru_stime)
                del pending[pid]
        if pending and time.monotonic() > deadline:
            for pid in pending:
                os.kill(pid, 9)
            raise SystemExit("agencies did not finish in time")
        time.sleep(0.005)
    for agency in agencies:
        agency.output_file.seek(0)
        agency.output = agency.output_file.read()
        agency.output_file.close()
    return [cpu[a.proc.pid] for a in agencies]


def one_round(
    files: Sequence[Path],
    bets: int,
    batch: int,
    window: int,
    profile: Path | None,
    agency_program: Sequence[str] | None = None,
    phases: list[str] | None = None,
) -> list[tuple[float, float]]:
    """One round; each agency's user and system CPU, µs per bet."""
    with tempfile.TemporaryDirectory(prefix="lottery-bench-agency-") as tmp:
        server = start_server(Path(tmp) / "store", len(files), extra_args=["--sync", "OFF"])
        try:
            agencies = []
            for i, path in enumerate(files, 1):
                program = agency_program
                if profile is not None:
                    out = profile / f"agency-{i}.prof"
                    program = [sys.executable, "-c", _PROFILED, str(out)]
                elif phases is not None:
                    program = [_python(agency_program), "-c", _PHASES]
                extra = ["--max-in-flight", str(window), "--batch-max-amount", str(batch)]
                agencies.append(
                    start_agency(
                        i, server.port, path, extra_args=extra, program=program, env=CHILD_ENV
                    )
                )
            cpu = reap(agencies, ROUND_TIMEOUT)
        finally:
            stop_and_reap(server.proc)
            server.close_log(5)
    for agency in agencies:
        if agency.returncode != 0:
            raise SystemExit(f"agency {agency.agency} exited {agency.returncode}:\n{agency.output}")
        if phases is not None:
            phases += [line for line in agency.output.splitlines() if line.startswith("PHASES")]
    return [(user / bets * 1e6, system / bets * 1e6) for user, system in cpu]


def _python(program: Sequence[str] | None) -> str:
    """The python beside a ``lottery`` command (this one's for None)."""
    return str(Path(program[0]).parent / "python") if program else sys.executable


def startup_ms(runs: int, command: Sequence[str]) -> float:
    """``lottery agency --help``, wall clock, best of ``runs`` (ms)."""
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(
            [*command, "agency", "--help"], check=True, stdout=subprocess.DEVNULL, env=_env()
        )
        best = min(best, time.perf_counter() - started)
    return best * 1000


def startup_cpu_ms(command: Sequence[str]) -> float:
    """``lottery agency --help``'s CPU (os.wait4), ms."""
    proc = subprocess.Popen([*command, "agency", "--help"], stdout=subprocess.DEVNULL, env=_env())
    _, _, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0
    return (usage.ru_utime + usage.ru_stime) * 1000


_IMPORTTIME = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)")


def import_top(count: int, python: str) -> tuple[int, list[tuple[int, str]]]:
    """Total µs of ``-X importtime`` for ``-m lottery agency --help``, and its top modules."""
    err = subprocess.run(
        [python, "-X", "importtime", "-m", "lottery", "agency", "--help"],
        env=_env(),
        cwd=tempfile.gettempdir(),  # -m puts the working directory first on sys.path
        check=True,
        capture_output=True,
        text=True,
    ).stderr
    rows = []
    total = 0
    for line in err.splitlines():
        match = _IMPORTTIME.match(line)
        if match:
            cumulative, name = int(match[2]), match[4]
            depth = len(match[3]) - 1
            if depth == 0:
                total += cumulative
            rows.append((cumulative, ("  " * (depth // 2)) + name))
    rows.sort(reverse=True)
    return total, rows[:count]


def print_profile(folder: Path, top: int) -> None:
    files = sorted(folder.glob("agency-*.prof"))
    if not files:
        return
    stats = pstats.Stats(str(files[0]))
    for path in files[1:]:
        stats.add(str(path))
    print(f"\ncProfile, {len(files)} agencies together, top {top} by own time:")
    stats.sort_stats("tottime").print_stats(top)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agencies", type=int, default=5)
    parser.add_argument("--bets", type=int, default=200_000, help="bets per agency")
    parser.add_argument("--batch-max-amount", type=int, default=200)
    parser.add_argument("--window", type=int, default=16, help="batches in flight per agency")
    parser.add_argument("--repeat", type=int, default=1, help="rounds; each agency's best counts")
    parser.add_argument("--startup-runs", type=int, default=5)
    parser.add_argument("--import-top", type=int, default=12)
    parser.add_argument("--skip-round", action="store_true", help="start-up figures only")
    parser.add_argument("--profile", type=Path, help="run the agencies under cProfile, into DIR")
    parser.add_argument(
        "--phases", action="store_true", help="print where each agency's CPU went (ms)"
    )
    parser.add_argument("--data-root", type=Path, default=ROOT / "bench-data")
    parser.add_argument(
        "--lottery",
        help="the lottery command whose agencies to measure (default: this venv's); "
        "its python must be beside it (e.g. another checkout's .venv/bin/lottery)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = [args.lottery] if args.lottery else lottery_command()
    python = str(Path(args.lottery).parent / "python") if args.lottery else sys.executable
    startup_ms(1, command)  # writes the bytecode
    ms = startup_ms(args.startup_runs, command)
    cpu_ms = startup_cpu_ms(command)
    total, top = import_top(args.import_top, python)
    verdict = "ok" if ms <= GOAL_STARTUP_MS else "MISSED"
    print(
        f"lottery agency --help: {ms:.1f} ms wall (best of {args.startup_runs}), "
        f"{cpu_ms:.1f} ms CPU; goal ≤ {GOAL_STARTUP_MS:.0f} ms wall: {verdict}"
    )
    print(f"-X importtime: {total / 1000:.1f} ms in imports; slowest (cumulative µs):")
    for us, name in top:
        print(f"  {us:>8}  {name}")
    if args.skip_round:
        return 0
    data = ensure_dataset(args.data_root, args.agencies, args.bets)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    # A first, unmeasured round writes every module's bytecode.
    one_round(data.files[:1], args.bets, args.batch_max_amount, args.window, None, command)
    best: list[float] | None = None
    for run in range(args.repeat):
        phases: list[str] | None = [] if args.phases else None
        split = one_round(
            data.files, args.bets, args.batch_max_amount, args.window, args.profile, command,
            phases,
        )  # fmt: skip
        for line in phases or []:
            print(f"  {line}")
        per_bet = [user + system for user, system in split]
        figures = " ".join(f"{u + s:.3f} ({u:.3f}+{s:.3f})" for u, s in split)
        print(f"round {run + 1}: agency CPU µs/bet, user+system: {figures}", flush=True)
        best = per_bet if best is None else [min(a, b) for a, b in zip(best, per_bet, strict=True)]
    assert best is not None
    worst = max(best)
    mean = sum(best) / len(best)
    verdict = "ok" if worst <= GOAL_US_PER_BET else "MISSED"
    print(
        f"agency CPU per bet ({args.agencies} x {args.bets:,} bets, best of {args.repeat}): "
        f"mean {mean:.3f} µs, worst {worst:.3f} µs; goal ≤ {GOAL_US_PER_BET} µs: {verdict}"
    )
    if args.profile is not None:
        print_profile(args.profile, 25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
