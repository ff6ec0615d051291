#!/usr/bin/env python3
"""Chaos round over several servers: kill -9 servers, restart PostgreSQL, stall one; judge it.

    python scripts/chaos_cluster.py                      # 3 servers, 5 agencies, 300,000 bets
    python scripts/chaos_cluster.py --seed 7 --keep out  # replay a run; keep files and logs

What one run does, on 127.0.0.1 with real ``lottery`` processes (docs/SCALING.md):

1. starts a THROWAWAY PostgreSQL cluster in a temporary folder
   (scripts/pg_cluster.py; never the shared one), or uses ``--pg-folder``;
2. writes one file per agency (0..3 winners each, at rows chosen by the seed);
3. starts ``--servers`` servers on fixed free ports, all with ``--store`` on
   that cluster, and the agencies, each with the whole server list (each
   starting at another server, so they spread);
4. while bets are being sent, runs the faults, each at a random point of
   the stored bets: first, early, one SIGSTOP for ``--stall`` seconds
   (longer than the agencies' ``--timeout``), then SIGCONT, of the server
   most agencies are on (as ``lottery status`` of a server says); then,
   shuffled, one in each of as many equal slices of the rest of 5 %..90 %
   of the round, ``--server-kills`` kill -9 of a random server, restarted
   on its port after 0..0.3 s, and ``--pg-restarts`` immediate restarts of
   PostgreSQL (``pg_ctl restart -m immediate``: a crash, to it). Each
   fault's recovery runs on a thread, beside the next fault; one server at
   least is always up;
5. waits for the agencies, stops the servers with SIGTERM, and judges:
   ``lottery export --store`` equals the input bet for bet (as multisets:
   nothing missing, nothing twice); exactly one ``action: sorteo | result:
   success`` across every server life; every agency exited 0 with exactly
   the winners its file holds; and no log line says ``result: fail``
   outside the faults' own windows (from a fault's start to ``--grace``
   seconds after it ended: the refusals, reconnects and stale batches a
   fault causes belong to it). With ``--draw random`` the servers draw at
   random (docs/DRAW.md): each agency's winners are judged by the drawn
   number, and ``lottery verify`` checks the export against the draw record.

It prints what it did as it goes (with the seed, to replay it) and a summary;
exit status 0 only on PASS. Every wait is bounded (``--deadline``); every
process it started is killed on the way out, and the cluster removed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import csv
import datetime
import functools
import itertools
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pg_cluster
from chaos import Check, ServerLife, connect_hint, free_port, split_by_agency
from gen_dataset import generate_agency_file
from lottery.connection import query_status
from lottery.errors import LotteryError
from lottery.models import DEFAULT_WINNING_NUMBER
from roundrunner import (
    AgencyProcess,
    ServerStartError,
    input_bets,
    log_value,
    lottery_command,
    parse_log_line,
    start_agency,
    start_server,
)

__all__ = ["ClusterChaosConfig", "ClusterChaosResult", "main", "run_cluster_chaos"]

WINNING_NUMBER = DEFAULT_WINNING_NUMBER
RECONNECT_ATTEMPTS = 30  # whole rounds of the server list, each ending in a back-off
POLL = 0.01  # seconds between looks at the logs
SERVER_START_TIMEOUT = 20.0
PORT_RETRY_SECONDS = 10.0
KILL_WAIT = 10.0
FAULT_SPREAD = (0.05, 0.90)  # faults land between these fractions of the stored bets
TIMESTAMP = "%Y-%m-%d %H:%M:%S"  # how every log line starts (console format)
REVEAL_DEADLINE = 60.0  # random draw: every agency reveals well before it


@dataclass
class ClusterChaosConfig:
    servers: int = 3
    agencies: int = 5
    bets: int = 60_000  # per agency: 5 × 60,000 = 300,000
    server_kills: int = 10
    pg_restarts: int = 2
    stall: float = 8.0  # SIGSTOP one server this long (0: no stall); > agency_timeout
    agency_timeout: float = 5.0
    grace: float = 8.0  # seconds after a fault whose `result: fail` lines are its own
    seed: int | None = None
    keep: Path | None = None
    pg_folder: Path | None = None  # an existing throwaway cluster (else one is made)
    batch_max_amount: int = 200
    max_in_flight: int = 8
    max_downtime: float = 0.3
    deadline: float = 900.0
    draw: str = "fixed"  # or "random" (docs/DRAW.md): then `lottery verify` judges it too
    echo: Callable[[str], None] = print


@dataclass
class ClusterChaosResult:
    seed: int
    passed: bool = False
    checks: list[Check] = field(default_factory=list)
    server_kills: int = 0
    pg_restarts: int = 0
    stalls: int = 0
    total_bets: int = 0
    seconds: float = 0.0
    summary: str = ""


@dataclass
class Window:
    """A fault's own time: its ``result: fail`` lines are expected."""

    what: str
    start: float  # time.time()
    end: float

    def holds(self, when: float) -> bool:
        return self.start - 1.0 <= when <= self.end + 1.0  # log stamps are whole seconds


class ClusterChaosRun:
    def __init__(self, config: ClusterChaosConfig, work: Path, pg_folder: Path) -> None:
        self.cfg = config
        self.work = work
        self.pg_folder = pg_folder
        self.seed = (
            config.seed if config.seed is not None else random.SystemRandom().randrange(10**9)
        )
        self.rng = random.Random(self.seed)
        self.dsn = ""
        self.ports = [free_port() for _ in range(config.servers)]
        self.slots: list[ServerLife | None] = [None] * config.servers
        self.lives: list[tuple[int, ServerLife]] = []  # (slot, life), every life so far
        self.agencies: list[AgencyProcess] = []
        self.logs: list[Path] = []
        self.files: list[Path] = []
        self.expected: dict[int, list[str]] = {}
        self.windows: list[Window] = []
        self.busy: set[int] = set()  # servers killed or stopped, not yet back
        self.pg_busy = False  # PostgreSQL is restarting
        self.stall_load = 0  # agencies on the stalled server, as STATUS said
        self.errors: list[str] = []  # from the faults' threads
        self._numbers = itertools.count(1)  # server lives, numbered from 1
        self._counted: dict[int, tuple[int, int]] = {}  # life -> (lines read, bets in them)
        self.result = ClusterChaosResult(self.seed)
        self.started = time.monotonic()
        self.deadline = self.started + config.deadline
        self.server_log = (work / "servers.log").open("a", encoding="utf-8")

    def say(self, text: str) -> None:
        self.cfg.echo(f"[{time.monotonic() - self.started:7.2f}s] {text}")

    def left(self) -> float:
        return self.deadline - time.monotonic()

    # -- processes

    def start_server(self, slot: int) -> ServerLife:
        port = self.ports[slot]
        args = ["--store", self.dsn, "--winning-number", str(WINNING_NUMBER),
                "--server-id", f"s{slot + 1}", "--draw", self.cfg.draw,
                "--reveal-deadline", str(REVEAL_DEADLINE)]  # fmt: skip
        retry_until = time.monotonic() + PORT_RETRY_SECONDS
        while True:
            number = next(self._numbers)  # restarts run on threads: numbers from one counter
            self.server_log.write(f"----- server s{slot + 1}, life {number} -----\n")
            try:
                server = start_server(
                    self.work / f"data-s{slot + 1}", self.cfg.agencies, port=port,
                    extra_args=args, log_file=self.server_log,
                    timeout=min(SERVER_START_TIMEOUT, max(self.left(), 0.1)),
                )  # fmt: skip
            except ServerStartError as exc:
                text = "\n".join(exc.lines[-3:])
                if exc.returncode == 2 or time.monotonic() > retry_until or self.left() <= 0:
                    raise RuntimeError(f"server s{slot + 1} did not start:\n{text}") from None
                self.say(f"server s{slot + 1} did not start ({text[-160:]!r}); retrying")
                time.sleep(0.2)
                continue
            life = ServerLife(number, server.lines, server)
            self.slots[slot] = life
            self.lives.append((slot, life))
            return life

    def start_agencies(self) -> None:
        addresses = [f"127.0.0.1:{p}" for p in self.ports]
        for agency in range(1, self.cfg.agencies + 1):
            turn = (agency - 1) % len(addresses)  # each starts at another server
            servers = ",".join(addresses[turn:] + addresses[:turn])
            log = self.work / f"agency-{agency}.log"
            flags = [
                "--server", servers, "--batch-max-amount", str(self.cfg.batch_max_amount),
                "--max-in-flight", str(self.cfg.max_in_flight),
                "--timeout", str(self.cfg.agency_timeout), "--winners-attempts", "30",
                "--winners-base-delay", "0.05", "--reconnect-attempts", str(RECONNECT_ATTEMPTS),
                "--quiet",
            ]  # fmt: skip
            self.agencies.append(
                start_agency(agency, self.ports[0], self.files[agency - 1], extra_args=flags,
                             output=log)
            )  # fmt: skip
            self.logs.append(log)

    def kill_everything(self) -> None:
        for agency in self.agencies:
            if agency.proc.poll() is None:
                agency.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                agency.proc.wait(KILL_WAIT)
            agency.output_file.close()
        for _, life in self.lives:
            if life.server is not None and life.proc.poll() is None:
                with contextlib.suppress(OSError):
                    life.proc.send_signal(signal.SIGCONT)
            life.kill()
        self.server_log.close()

    # -- what the logs say

    def stored(self) -> int:
        """Bets stored so far, from every server life's ``apuesta_recibida`` lines."""
        total = 0
        for _, life in list(self.lives):
            read, bets = self._counted.get(life.number, (0, 0))
            lines = life.lines[read:]
            for line in lines:
                if "action: apuesta_recibida | result: success" in line:
                    bets += int(parse_log_line(line).get("cantidad", "0"))
            self._counted[life.number] = (read + len(lines), bets)
            total += bets
        return total

    def wait_until(self, condition: Callable[[], bool], what: str) -> None:
        while not condition():
            if self.left() <= 0:
                raise TimeoutError(f"gave up waiting for {what}")
            if any(a.proc.poll() not in (None, 0) for a in self.agencies):
                failed = next(a for a in self.agencies if a.proc.poll() not in (None, 0))
                raise RuntimeError(f"agency {failed.agency} exited {failed.proc.returncode}")
            time.sleep(POLL)

    # -- phases

    def make_files(self) -> None:
        cfg = self.cfg
        self.say(f"writing {cfg.agencies} agency files of {cfg.bets:,} bets (seed {self.seed})")
        for agency in range(1, cfg.agencies + 1):
            count = self.rng.randint(0, 3) if agency > 1 else self.rng.randint(1, 3)
            rows = set(self.rng.sample(range(cfg.bets), min(count, cfg.bets)))
            path = self.work / f"agency-{agency}.csv"
            generate_agency_file(path, cfg.bets, rows, self.seed * 1000 + agency)
            self.files.append(path)
        if cfg.draw == "fixed":  # a random draw's winners are known once it is made
            for agency, bets in enumerate(split_by_agency(input_bets(self.files)), 1):
                self.expected[agency] = [b[3] for b in bets if int(b[5]) == WINNING_NUMBER]
        self.result.total_bets = cfg.agencies * cfg.bets

    def faults(self) -> None:
        """Each fault at its threshold; its recovery (a restart, the SIGCONT) runs on a
        thread of its own, so the next fault need not wait for it."""
        cfg, rng = self.cfg, self.rng
        kinds = ["kill"] * cfg.server_kills + ["pg"] * cfg.pg_restarts
        rng.shuffle(kinds)
        total = cfg.agencies * cfg.bets
        low, high = FAULT_SPREAD
        if cfg.stall > 0:
            # First, early, while every agency is sending: its agencies must
            # time out on it and move on, and its stale batches be refused.
            kinds.insert(0, "stall")
            low += (high - low) / (len(kinds) + 1)
        width = (high - low) / max(len(kinds), 1)
        at = [int(total * (low + width * (i + rng.random()))) for i in range(len(kinds))]
        if cfg.stall > 0:
            at[0] = int(total * rng.uniform(FAULT_SPREAD[0], low))
        plan = ", ".join(f"{k}@{t:,}" for k, t in zip(kinds, at, strict=True))
        self.say(f"faults at stored bets: {plan}")
        threads: list[threading.Thread] = []
        for kind, threshold in zip(kinds, at, strict=True):
            self.wait_until(lambda t=threshold: self.stored() >= t, f"{threshold:,} stored bets")
            if kind == "pg":
                self.wait_until(lambda: not self.pg_busy, "the last PostgreSQL restart")
                self.pg_busy = True
                recover: Callable[[], str] = self._restart_postgres
            else:
                # Never every server down or stopped at once: one keeps serving.
                self.wait_until(lambda: len(self.busy) < cfg.servers - 1, "a server to spare")
                free = [s for s in range(cfg.servers) if s not in self.busy]
                slot = self._busiest(free) if kind == "stall" else rng.choice(free)
                self.busy.add(slot)
                recover = functools.partial(
                    self._kill_and_restart if kind == "kill" else self._stall, slot
                )
            thread = threading.Thread(target=self._fault, args=(recover,), daemon=True)
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join(max(self.left(), 0.1))
        if self.errors:
            raise RuntimeError(self.errors[0])

    def _busiest(self, slots: list[int]) -> int:
        """Of ``slots``, the server most agencies are on, as `lottery status` of one says.

        A stall matters when agencies are waiting on it: they must time out
        and move on. Any server's STATUS shows where every agency is.
        """
        counts: collections.Counter[int] = collections.Counter()
        try:
            status = asyncio.run(query_status("127.0.0.1", self.ports[slots[0]], 2.0))
            for entry in status.get("agency", []):
                name = entry.get("server") or ""
                if name.startswith("s") and name[1:].isdigit():
                    counts[int(name[1:]) - 1] += 1
        except (OSError, TimeoutError, LotteryError, ValueError) as exc:
            self.say(f"status for the stall failed ({exc}); picking at random")
        best = max(slots, key=lambda s: counts[s])
        self.stall_load = counts[best]
        return best if counts[best] else self.rng.choice(slots)

    def _fault(self, run: Callable[[], str]) -> None:
        began, stored = time.time(), self.stored()
        try:
            what = run()
        except (Exception, SystemExit) as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
            return
        what += f" at {stored:,} stored bets"
        self.windows.append(Window(what, began, time.time() + self.cfg.grace))
        self.say(f"{what}; took {time.time() - began:.2f} s")

    def _kill_and_restart(self, slot: int) -> str:
        life = self.slots[slot]
        assert life is not None
        life.kill()
        self.result.server_kills += 1
        time.sleep(self.rng.uniform(0, self.cfg.max_downtime))
        self.start_server(slot)
        self.busy.discard(slot)
        return f"kill -9 of s{slot + 1} (life {life.number}), restarted"

    def _stall(self, slot: int) -> str:
        life = self.slots[slot]
        assert life is not None
        life.proc.send_signal(signal.SIGSTOP)
        time.sleep(self.cfg.stall)
        life.proc.send_signal(signal.SIGCONT)
        self.result.stalls += 1
        self.busy.discard(slot)
        return (
            f"SIGSTOP of s{slot + 1} for {self.cfg.stall:g} s "
            f"({self.stall_load} agencies on it by STATUS)"
        )

    def _restart_postgres(self) -> str:
        pg_cluster.restart(self.pg_folder, immediate=True)
        self.result.pg_restarts += 1
        self.pg_busy = False
        return "PostgreSQL restarted (immediate)"

    def finish(self) -> list[int]:
        self.say("waiting for the agencies to get their winners and exit")
        self.wait_until(lambda: all(a.proc.poll() is not None for a in self.agencies), "agencies")
        statuses = []
        for slot, life in enumerate(self.slots):
            statuses.append(
                life.terminate(timeout=min(20.0, max(self.left(), 1.0))) if life else -1
            )
            self.say(f"server s{slot + 1} stopped with SIGTERM: exit status {statuses[-1]}")
        return statuses

    # -- judging

    def judge(self, statuses: list[int]) -> None:
        cfg, checks = self.cfg, self.result.checks
        checks.append(
            Check(
                "faults",
                (self.result.server_kills, self.result.pg_restarts, self.result.stalls)
                == (cfg.server_kills, cfg.pg_restarts, int(cfg.stall > 0)),
                f"{self.result.server_kills} server kills, {self.result.pg_restarts} PostgreSQL "
                f"restarts, {self.result.stalls} stalls",
            )
        )
        out, record = self.work / "bets.csv", self.work / "draw.json"
        subprocess.run(
            [*lottery_command(), "export", "--store", self.dsn, "--csv", str(out),
             "--draw-record", str(record)],
            check=True, capture_output=True, timeout=max(self.left(), 60.0),
        )  # fmt: skip
        if cfg.draw == "random":
            checks.append(self._verify_random_draw(out, record))
        for agency, log in zip(self.agencies, self.logs, strict=True):
            text = log.read_text(encoding="utf-8", errors="replace")
            got = log_value(text, "ganadores", "dnis")
            winners = [] if got is None or got.strip() in ("", "-") else got.split()
            want = self.expected[agency.agency]
            checks.append(
                Check(
                    f"agency {agency.agency}",
                    agency.proc.returncode == 0
                    and got is not None
                    and sorted(winners) == sorted(want),
                    f"exit {agency.proc.returncode}, winners {winners} (expected {want})",
                )
            )
        with out.open(newline="", encoding="utf-8") as f:
            have = collections.Counter(tuple(row) for row in csv.reader(f) if row)
        wanted = collections.Counter(input_bets(self.files))
        missing, extra = sum((wanted - have).values()), sum((have - wanted).values())
        checks.append(
            Check(
                "export equals input",
                missing == extra == 0,
                f"{sum(have.values()):,} exported, {sum(wanted.values()):,} in the files: "
                f"{missing} missing, {extra} extra or twice",
            )
        )
        draws = sum(
            "action: sorteo | result: success" in line
            for _, life in self.lives
            for line in life.lines
        )
        checks.append(Check("one draw", draws == 1, f"{draws} across {len(self.lives)} lives"))
        checks.append(Check("servers exit 0", set(statuses) == {0}, f"statuses {statuses}"))
        outside, inside = self._fails()
        checks.append(
            Check(
                "no result: fail outside the faults",
                not outside,
                f"{len(outside)} outside, {inside} inside the faults' windows"
                + (f"; first: {outside[0][-300:]}" if outside else ""),
            )
        )
        self.result.passed = all(c.ok for c in checks)

    def _verify_random_draw(self, bets: Path, record: Path) -> Check:
        """The drawn number from the record, each agency's winners by it, and ``lottery verify``."""
        number = int(json.loads(record.read_text(encoding="utf-8"))["number"])
        for agency, rows in enumerate(split_by_agency(input_bets(self.files)), 1):
            self.expected[agency] = [b[3] for b in rows if int(b[5]) == number]
        verify = subprocess.run(
            [*lottery_command(), "verify", "--csv", str(bets), "--record", str(record)],
            capture_output=True, text=True, timeout=max(self.left(), 60.0),
        )  # fmt: skip
        lines = (verify.stdout + verify.stderr).strip().splitlines()
        return Check(
            "lottery verify",
            verify.returncode == 0,
            f"number {number}: " + (lines[-1] if lines else "(no output)"),
        )

    def _fails(self) -> tuple[list[str], int]:
        sources = [(f"s{slot + 1} life {life.number}", life.lines) for slot, life in self.lives]
        sources += [
            (f"agency {a.agency}", p.read_text(encoding="utf-8", errors="replace").splitlines())
            for a, p in zip(self.agencies, self.logs, strict=True)
        ]
        outside, inside = [], 0
        for name, lines in sources:
            for line in lines:
                if "result: fail" not in line or connect_hint(line):
                    continue
                when = _stamp(line)
                if when is not None and any(w.holds(when) for w in self.windows):
                    inside += 1
                else:
                    outside.append(f"{name}: {line}")
        return outside, inside

    def summarize(self) -> str:
        r, cfg = self.result, self.cfg
        width = max((len(c.name) for c in r.checks), default=10)
        lines = [
            "",
            f"cluster chaos run, seed {r.seed}: {cfg.servers} servers, {cfg.agencies} agencies × "
            f"{cfg.bets:,} bets = {r.total_bets:,} bets in {r.seconds:.1f} s",
            f"server kills: {r.server_kills}; PostgreSQL immediate restarts: {r.pg_restarts}; "
            f"stalls: {r.stalls}; server lives: {len(self.lives)}",
            *(f"  fault: {w.what}" for w in self.windows),
            f"agencies moved between servers {self._count('action: cambio_servidor')} times; "
            f"batches refused as stale (fencing) {self._count('on a newer connection')}",
        ]
        lines += [f"  {'ok  ' if c.ok else 'FAIL'} {c.name:<{width}}  {c.detail}" for c in r.checks]
        lines.append("PASS" if r.passed else "FAIL")
        return "\n".join(lines)

    def _count(self, text: str) -> int:
        lines = [line for _, life in self.lives for line in life.lines]
        for path in self.logs:
            with contextlib.suppress(OSError):
                lines += path.read_text(encoding="utf-8", errors="replace").splitlines()
        return sum(text in line for line in lines)


def _stamp(line: str) -> float | None:
    """The time a log line was written (its leading stamp, local time), or None."""
    try:
        return datetime.datetime.strptime(line[:19], TIMESTAMP).timestamp()
    except ValueError:
        return None


def run_cluster_chaos(config: ClusterChaosConfig) -> ClusterChaosResult:
    """Run one cluster chaos round as ``config`` says; the result says PASS or FAIL and why."""
    work = config.keep or Path(tempfile.mkdtemp(prefix="lottery-chaos-cluster-"))
    work.mkdir(parents=True, exist_ok=True)
    # Its own folder, not under ``work``: under root the cluster runs as postgres,
    # which must reach it.
    own_cluster = config.pg_folder is None
    pg_folder = config.pg_folder or Path(tempfile.mkdtemp(prefix="lottery-chaos-pg-"))
    run = ClusterChaosRun(config, work, pg_folder)
    result = run.result
    try:
        if pg_cluster.pg_bin() is None:
            raise RuntimeError("PostgreSQL's server binaries (initdb, pg_ctl) are not installed")
        base = pg_cluster.start(pg_folder) if own_cluster else pg_cluster.dsn(pg_folder)
        with pg_cluster.fresh_database(base, "chaos") as dsn:
            run.dsn = dsn
            try:
                run.make_files()
                run.started = time.monotonic()
                run.deadline = run.started + config.deadline
                for slot in range(config.servers):
                    run.start_server(slot)
                run.say(f"{config.servers} servers on ports {run.ports}, store {dsn}")
                run.start_agencies()
                run.faults()
                statuses = run.finish()
                result.seconds = time.monotonic() - run.started
                run.judge(statuses)
            finally:  # before the database is dropped
                run.kill_everything()
    except (Exception, SystemExit) as exc:  # a broken run is a FAIL with its reason
        result.seconds = time.monotonic() - run.started
        result.checks.append(Check("run completed", False, f"{type(exc).__name__}: {exc}"))
        result.passed = False
        run.say(f"run aborted: {type(exc).__name__}: {exc}")
    finally:
        run.kill_everything()
        if own_cluster:
            with contextlib.suppress(SystemExit):
                pg_cluster.stop(pg_folder, remove=True)
        result.summary = run.summarize()
        if config.keep is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            result.summary += f"\nfiles and logs kept in {work}"
    return result


def main(argv: Sequence[str] | None = None) -> int:
    defaults = ClusterChaosConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=defaults.servers)
    parser.add_argument("--agencies", type=int, default=defaults.agencies)
    parser.add_argument("--bets", type=int, default=defaults.bets, help="bets per agency")
    parser.add_argument("--server-kills", type=int, default=defaults.server_kills)
    parser.add_argument("--pg-restarts", type=int, default=defaults.pg_restarts)
    parser.add_argument("--stall", type=float, default=defaults.stall, help="seconds; 0: none")
    parser.add_argument("--agency-timeout", type=float, default=defaults.agency_timeout)
    parser.add_argument("--grace", type=float, default=defaults.grace)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", type=Path, default=None, help="keep files and logs here")
    parser.add_argument("--pg-folder", type=Path, default=None, help="a pg_cluster.py folder")
    parser.add_argument("--deadline", type=float, default=defaults.deadline)
    parser.add_argument("--batch-max-amount", type=int, default=defaults.batch_max_amount)
    parser.add_argument("--max-in-flight", type=int, default=defaults.max_in_flight)
    parser.add_argument("--draw", choices=("fixed", "random"), default=defaults.draw)
    args = parser.parse_args(argv)
    if args.servers < 1 or args.agencies < 1 or args.bets < 10:
        parser.error("need ≥ 1 server, ≥ 1 agency and ≥ 10 bets per agency")
    if args.servers < 2 and (args.server_kills or args.stall):
        parser.error("killing or stalling servers needs ≥ 2 of them (one keeps serving)")
    if args.stall and args.stall <= args.agency_timeout:
        parser.error("--stall must be longer than --agency-timeout (the agencies must move on)")
    config = ClusterChaosConfig(
        servers=args.servers, agencies=args.agencies, bets=args.bets,
        server_kills=args.server_kills, pg_restarts=args.pg_restarts, stall=args.stall,
        agency_timeout=args.agency_timeout, grace=args.grace, seed=args.seed, keep=args.keep,
        pg_folder=args.pg_folder, deadline=args.deadline,
        batch_max_amount=args.batch_max_amount, max_in_flight=args.max_in_flight,
        draw=args.draw,
    )  # fmt: skip
    result = run_cluster_chaos(config)
    print(result.summary)
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
