#!/usr/bin/env python3
"""Chaos round: kill -9 the server and an agency during a real round, then judge it.

    python scripts/chaos.py                      # 4 agencies × 50,000 bets, 10 server kills
    python scripts/chaos.py --seed 7 --keep out  # replay a run; keep data, files and logs
    python scripts/chaos.py --draw random        # the same, with a random draw (docs/DRAW.md)

What one run does, on 127.0.0.1 with real ``lottery`` processes:

1. writes one file per agency (``gen_dataset.generate_agency_file``) with
   0..3 winners each, at rows chosen by the seed;
2. starts the server on a fixed free port (agencies reconnect to a fixed
   address) and the agencies;
3. while bets are being sent, kills the server with SIGKILL ``--server-kills``
   times and restarts it on the same data dir and port. Each kill waits for a
   random number of stored bets (one random point in each of ``--server-kills``
   equal slices of 5 %..90 % of the round), so the kills are spread over the
   sending phase however fast it runs; each restart waits a random 0..0.3 s;
4. once, when a random agency has stored a random 20 %..70 % of its file,
   kills that agency with SIGKILL and restarts it with another
   ``--batch-max-amount``: it must skip what the server holds and send the rest;
5. every server life so far runs with ``LOTTERY_FAULT_DRAW_DELAY`` (the server
   waits that long between the last agency's DONE being stored and the draw).
   As soon as the logs show all N agencies done (``action: agencia_lista``),
   the server is killed, and restarted without the variable: it must draw at
   start, once. The phase counts only if the one draw was made at the start of
   a life (logged before its ``action: config``); if a running server drew
   first (one that ignores the variable), the run says so and fails;
6. waits for the agencies, stops the server with SIGTERM, and checks: every
   agency exited 0 with exactly the winners its file holds; ``lottery export``
   equals the input bet for bet (as multisets: nothing missing, nothing twice);
   ``action: sorteo | result: success`` appears once across all server lives;
   no log line says ``result: fail``.

``--stall S`` also stops the server (SIGSTOP) for S seconds around the
agency kill, as a slow disk would, so the restarted agency's handshake can
overtake batches of its dead process that the server has not stored yet.

With ``--draw random`` the server draws at random: agencies commit to nonces
(a restarted agency reads its nonce back from beside its file) and reveal them
after the barrier; the kill "between barrier and draw" then lands before the
reveals, and the next life must take the reveals and draw once. The judge
exports the draw record, expects each agency's winners of the drawn number,
and runs ``lottery verify`` on the export.

It prints what it did as it goes (with the seed, to replay it) and a summary;
exit status 0 only on PASS. Every wait is bounded (``--deadline``), and every
process it started is killed on the way out.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gen_dataset import generate_agency_file
from lottery.models import DEFAULT_WINNING_NUMBER
from roundrunner import (
    AgencyProcess,
    ServerProcess,
    ServerStartError,
    export_bets,
    input_bets,
    log_value,
    lottery_command,
    parse_log_line,
    start_agency,
    start_server,
    stop_server,
)

__all__ = [
    "ChaosConfig",
    "ChaosResult",
    "Check",
    "ServerLife",
    "agency_kill_spread",
    "connect_hint",
    "free_port",
    "main",
    "run_chaos",
    "split_by_agency",
]

# Many server deaths in a row: the agencies must keep trying through them.
RECONNECT_ATTEMPTS = 30

DRAW_DELAY_ENV = "LOTTERY_FAULT_DRAW_DELAY"
WINNING_NUMBER = DEFAULT_WINNING_NUMBER
POLL = 0.002  # seconds between looks at the logs
SERVER_START_TIMEOUT = 15.0
PORT_RETRY_SECONDS = 10.0
KILL_WAIT = 10.0
STALL_FILL = 0.2  # with --stall: seconds the agency keeps sending to the stopped server
KILL_SPREAD = (0.05, 0.90)  # server kills land between these fractions of the stored bets
AGENCY_KILL_SPREAD = (0.20, 0.70)  # of the killed agency's own file
BATCH_SIZES = (37, 64, 101, 150, 256, 333)
#: The agency to be killed starts with small batches, one in flight: a fast
#: agency could otherwise store its whole file between two looks at the logs.
VICTIM_BATCH = BATCH_SIZES[0]


@dataclass
class ChaosConfig:
    agencies: int = 4
    bets: int = 50_000  # per agency
    server_kills: int = 10
    seed: int | None = None
    keep: Path | None = None  # keep data, input files and logs here
    batch_max_amount: int = 200
    max_in_flight: int = 8
    draw_delay: float = 5.0  # LOTTERY_FAULT_DRAW_DELAY for the lives before the draw kill
    max_downtime: float = 0.3  # the server stays dead a random 0..this seconds
    deadline: float = 600.0  # the whole run, seconds
    agency_timeout: float = 60.0  # the agencies' --timeout
    winners_attempts: int = 15
    winners_base_delay: float = 0.05
    stall: float = 0.0  # SIGSTOP the server this long around the agency kill (0: no)
    server_args: Sequence[str] = ()  # more `lottery server` flags
    draw: str = "fixed"  # or "random" (docs/DRAW.md)
    echo: Callable[[str], None] = print


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class ChaosResult:
    seed: int
    passed: bool = False
    checks: list[Check] = field(default_factory=list)
    server_kills: int = 0
    agency_kills: int = 0
    total_bets: int = 0
    seconds: float = 0.0
    summary: str = ""


# -- processes -----------------------------------------------------------------------------


class ServerLife:
    """One run of ``lottery server``, numbered from 1: its process and every log line it wrote.

    A life that did not start has no process (``server`` is None), only its lines.
    """

    def __init__(self, number: int, lines: list[str], server: ServerProcess | None) -> None:
        self.number = number
        self.lines = lines
        self.server = server

    @property
    def proc(self) -> subprocess.Popen[str]:
        assert self.server is not None, f"server life {self.number} never started"
        return self.server.proc

    def kill(self) -> None:
        """SIGKILL, then wait for the process and for the last of its log lines."""
        if self.server is not None:
            stop_server(self.server, KILL_WAIT, sig=signal.SIGKILL)

    def terminate(self, timeout: float) -> int:
        """SIGTERM and wait; SIGKILL if it does not stop in time. The exit status."""
        return stop_server(self.server, timeout) if self.server is not None else -1


@dataclass
class AgencyRun:
    run: int  # 1 for the first process of this agency, 2 after a restart
    batch_max_amount: int
    process: AgencyProcess
    log_path: Path
    killed: bool = False

    @property
    def agency(self) -> int:
        return self.process.agency

    @property
    def proc(self) -> subprocess.Popen[str]:
        return self.process.proc

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def value(self, action: str, key: str) -> str | None:
        return log_value(self.output(), action, key)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the round's observed state, from the server logs -----------------------------------------


class Watcher:
    """Reads every server life's log lines as they come: stored bets, done agencies, draws."""

    def __init__(self) -> None:
        self.lives: list[ServerLife] = []
        self._seen: dict[int, int] = {}
        self.stored: collections.Counter[int] = collections.Counter()  # per agency
        self.done: set[int] = set()
        self.draws = 0
        self.fails: list[str] = []

    @property
    def total_stored(self) -> int:
        return sum(self.stored.values())

    def update(self) -> None:
        for life in self.lives:
            start = self._seen.get(life.number, 0)
            lines = life.lines[start:]
            self._seen[life.number] = start + len(lines)
            for line in lines:
                self._observe(life, line)

    def _observe(self, life: ServerLife, line: str) -> None:
        fields = parse_log_line(line)
        action, result = fields.get("action"), fields.get("result")
        if result == "fail":
            self.fails.append(f"server life {life.number}: {line}")
        elif action == "apuesta_recibida" and result == "success":
            self.stored[int(fields.get("agencia", "0"))] += int(fields.get("cantidad", "0"))
        elif action == "apuesta_almacenada" and result == "success":
            self.stored[int(fields.get("agencia", "0"))] += 1
        elif action == "agencia_lista" and result == "success":
            self.done.add(int(fields.get("agencia", "0")))
        elif action == "sorteo" and result == "success":
            self.draws += 1


# -- the run -------------------------------------------------------------------------------


def agency_kill_spread(cfg: ChaosConfig) -> tuple[float, float]:
    """Where in its file the agency dies: early enough that its window of batches in
    flight (which the server may still store after the kill) cannot hold the rest."""
    window = cfg.batch_max_amount * cfg.max_in_flight
    high = min(AGENCY_KILL_SPREAD[1], 1 - 2 * window / cfg.bets)
    if high <= 0.05:
        raise ValueError(
            f"{cfg.bets} bets per agency are too few for a mid-file agency kill with "
            f"{cfg.max_in_flight} batches of {cfg.batch_max_amount} in flight"
        )
    return min(AGENCY_KILL_SPREAD[0], high / 2), high


def _kill_thresholds(rng: random.Random, total: int, kills: int) -> list[int]:
    low, high = KILL_SPREAD
    width = (high - low) / max(kills, 1)
    return [int(total * (low + width * (i + rng.random()))) for i in range(kills)]


class ChaosRun:
    def __init__(self, config: ChaosConfig, work: Path) -> None:
        self.cfg = config
        self.work = work
        self.seed = (
            config.seed if config.seed is not None else random.SystemRandom().randrange(10**9)
        )
        self.rng = random.Random(self.seed)
        self.data_dir = work / "data"
        self.port = free_port()
        self.watcher = Watcher()
        self.agency_runs: list[AgencyRun] = []
        self.files: list[Path] = []
        self.expected_winners: dict[int, list[str]] = {}
        self.result = ChaosResult(self.seed)
        self.started = time.monotonic()
        self.deadline = self.started + config.deadline
        self.events: list[str] = []
        self.server_log = (work / "server.log").open("a", encoding="utf-8")
        self.draw_kill: str = "not reached"
        self.draw_kill_ok = False
        self.resume: tuple[int, int, int] | None = None  # agency, seen stored, batch

    # -- output

    def say(self, text: str) -> None:
        line = f"[{time.monotonic() - self.started:7.2f}s] {text}"
        self.events.append(line)
        self.cfg.echo(line)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    # -- processes

    def start_server(self, draw_delay: float | None) -> ServerLife:
        # Only the lives before the draw kill wait before drawing.
        env = {DRAW_DELAY_ENV: str(draw_delay) if draw_delay else None}
        args = ["--winning-number", str(WINNING_NUMBER), "--draw", self.cfg.draw]
        if self.cfg.draw == "random":
            args += ["--reveal-deadline", str(self.cfg.agency_timeout)]
        args += self.cfg.server_args
        began = time.monotonic()
        retry_until = began + PORT_RETRY_SECONDS
        while True:
            number = len(self.watcher.lives) + 1
            self.server_log.write(f"----- server life {number} (draw delay: {draw_delay}) -----\n")
            try:
                server = start_server(
                    self.data_dir, self.cfg.agencies, port=self.port, extra_args=args, env=env,
                    log_file=self.server_log,
                    timeout=min(SERVER_START_TIMEOUT, max(self.left(), 0.1)),
                )  # fmt: skip
            except ServerStartError as exc:
                self.watcher.lives.append(ServerLife(number, exc.lines, None))
                text = "\n".join(exc.lines[-5:])
                usage_error = exc.returncode == 2  # a bad flag or variable: retrying cannot help
                if usage_error or time.monotonic() > retry_until or self.left() <= 0:
                    raise RuntimeError(
                        f"the server did not start again on port {self.port}:\n{text}"
                    ) from None
                self.say(f"server life {number} did not start ({text[-200:]!r}); retrying")
                time.sleep(0.2)  # let the dead life's port be freed
                continue
            life = ServerLife(number, server.lines, server)
            self.watcher.lives.append(life)
            took = time.monotonic() - began
            self.say(f"server life {number} listening on {self.port} after {took:.2f} s")
            return life

    def start_agency(
        self, agency: int, batch: int, run: int, in_flight: int | None = None
    ) -> AgencyRun:
        log_path = self.work / f"agency-{agency}.run{run}.log"
        in_flight = in_flight or self.cfg.max_in_flight
        flags = [
            "--batch-max-amount", str(batch), "--max-in-flight", str(in_flight),
            "--timeout", str(self.cfg.agency_timeout),
            "--winners-attempts", str(self.cfg.winners_attempts),
            "--winners-base-delay", str(self.cfg.winners_base_delay), "--quiet",
            "--reconnect-attempts", str(RECONNECT_ATTEMPTS),
        ]  # fmt: skip
        process = start_agency(
            agency, self.port, self.files[agency - 1], extra_args=flags, output=log_path
        )
        item = AgencyRun(run, batch, process, log_path)
        self.agency_runs.append(item)
        return item

    def kill_everything(self) -> None:
        for item in self.agency_runs:
            if item.proc.poll() is None:
                item.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                item.proc.wait(KILL_WAIT)
        for item in self.agency_runs:
            item.process.output_file.close()
        for life in self.watcher.lives:
            if life.server is not None and life.proc.poll() is None:
                with contextlib.suppress(OSError):
                    life.proc.send_signal(signal.SIGCONT)
            life.kill()
        self.server_log.close()

    # -- phases

    def make_files(self) -> None:
        self.say(
            f"writing {self.cfg.agencies} agency files of {self.cfg.bets:,} bets (seed {self.seed})"
        )
        for agency in range(1, self.cfg.agencies + 1):
            count = self.rng.randint(0, 3) if agency > 1 else self.rng.randint(1, 3)
            rows = set(self.rng.sample(range(self.cfg.bets), min(count, self.cfg.bets)))
            path = self.work / f"agency-{agency}.csv"
            generate_agency_file(path, self.cfg.bets, rows, self.seed * 1000 + agency)
            self.files.append(path)
        if self.cfg.draw == "fixed":  # a random draw's winners are known after it
            for agency, bets in enumerate(split_by_agency(input_bets(self.files)), 1):
                self.expected_winners[agency] = [b[3] for b in bets if int(b[5]) == WINNING_NUMBER]
        self.result.total_bets = self.cfg.agencies * self.cfg.bets

    def wait_until(self, condition: Callable[[], bool], what: str) -> None:
        while not condition():
            if self.left() <= 0:
                raise TimeoutError(f"gave up waiting for {what}")
            time.sleep(POLL)
            self.watcher.update()

    def sending_phase(self, server: ServerLife) -> ServerLife:
        cfg, rng, watcher = self.cfg, self.rng, self.watcher
        total = cfg.agencies * cfg.bets
        thresholds = _kill_thresholds(rng, total, cfg.server_kills)
        victim = rng.randint(1, cfg.agencies)
        victim_at = int(cfg.bets * rng.uniform(*agency_kill_spread(cfg)))
        new_batch = rng.choice([b for b in BATCH_SIZES if b != VICTIM_BATCH])
        self.say(
            "server kills at stored bets "
            + ", ".join(f"{t:,}" for t in thresholds)
            + f"; agency {victim} killed at {victim_at:,} of its bets, restarted with "
            f"--batch-max-amount {new_batch}"
        )
        runs = {
            a: self.start_agency(a, cfg.batch_max_amount, 1) if a != victim
            else self.start_agency(a, VICTIM_BATCH, 1, in_flight=1)
            for a in range(1, cfg.agencies + 1)
        }  # fmt: skip
        agency_killed = False
        pending = list(thresholds)
        exited: set[int] = set()

        def new_exit() -> AgencyRun | None:
            return next(
                (r for r in runs.values() if r.agency not in exited and r.proc.poll() is not None),
                None,
            )

        while pending or not agency_killed:
            self.wait_until(
                lambda killed=agency_killed: (
                    (bool(pending) and watcher.total_stored >= pending[0])
                    or (not killed and watcher.stored[victim] >= victim_at)
                    or new_exit() is not None
                ),
                "the next kill",
            )
            ended = new_exit()
            if ended is not None:
                # An agency ended before the kills were all done: say so; fail if it gave up.
                exited.add(ended.agency)
                self.say(
                    f"agency {ended.agency} exited with {ended.proc.returncode} while "
                    f"{len(pending)} server kills and {int(not agency_killed)} agency kills "
                    "were still to come"
                )
                if ended.proc.returncode != 0 or (ended.agency == victim and not agency_killed):
                    raise RuntimeError(
                        f"agency {ended.agency} exited early:\n{ended.output()[-1500:]}"
                    )
            if not agency_killed and watcher.stored[victim] >= victim_at:
                old = runs[victim]
                stalled = cfg.stall > 0 and server.proc.poll() is None
                if stalled:  # the server hangs (think: a slow fsync) while the agency dies
                    server.proc.send_signal(signal.SIGSTOP)
                    time.sleep(STALL_FILL)
                old.proc.send_signal(signal.SIGKILL)
                old.proc.wait(KILL_WAIT)
                old.killed = True
                stored_then = watcher.stored[victim]
                runs[victim] = self.start_agency(victim, new_batch, 2)
                if stalled:
                    time.sleep(cfg.stall)
                    server.proc.send_signal(signal.SIGCONT)
                    self.say(f"server stopped (SIGSTOP) around the agency kill, {cfg.stall} s")
                agency_killed = True
                self.result.agency_kills += 1
                self.resume = (victim, stored_then, new_batch)
                self.say(
                    f"agency {victim} killed -9 with {stored_then:,} of its bets stored; "
                    f"restarted with --batch-max-amount {new_batch}"
                )
            if pending and watcher.total_stored >= pending[0]:
                pending.pop(0)
                stored_then = watcher.total_stored
                server.kill()
                self.result.server_kills += 1
                self.say(
                    f"server kill {self.result.server_kills}/{cfg.server_kills}: life "
                    f"{server.number} killed -9 at {stored_then:,} stored bets "
                    f"({100 * stored_then / total:.1f} %)"
                )
                time.sleep(rng.uniform(0, cfg.max_downtime))
                server = self.start_server(cfg.draw_delay)
        return server

    def draw_phase(self, server: ServerLife) -> ServerLife:
        cfg, watcher = self.cfg, self.watcher
        self.say(f"waiting for all {cfg.agencies} agencies to be done (agencia_lista)")
        self.wait_until(
            lambda: (
                len(watcher.done) >= cfg.agencies
                or watcher.draws > 0
                or server.proc.poll() is not None
            ),
            "every agency's DONE",
        )
        if watcher.draws == 0 and len(watcher.done) < cfg.agencies:
            raise RuntimeError(f"server life {server.number} ended by itself")
        if watcher.draws == 0:
            server.kill()
            watcher.update()
            waiting = any(_is_draw_delay(line) for line in server.lines)
            self.say(
                f"server life {server.number} killed -9 once all {cfg.agencies} "
                f"agencies were done{' (in its draw delay)' if waiting else ''}"
            )
            time.sleep(self.rng.uniform(0, cfg.max_downtime))
            server = self.start_server(None)
        else:  # a kill while sending already came after the last DONE (a short round)
            self.say("the draw was made before the draw kill; no kill needed")
        if self.cfg.draw == "random":  # the draw waits for the reveals: judged at the end
            self.say("draw kill: done; the next life must take the reveals and draw")
            return server
        self.draw_kill_ok, self.draw_kill = self._judge_draw_kill()
        self.say("draw kill: " + self.draw_kill)
        return server

    def _judge_draw_kill(self) -> tuple[bool, str]:
        """Did a kill land between the barrier opening and the draw? Then the draw was
        made at the start of the next life (logged before its config line)."""
        if self.cfg.draw == "random":
            return self._judge_random_draw_kill()
        for life in self.watcher.lives:
            actions = [parse_log_line(line) for line in life.lines]
            for i, fields in enumerate(actions):
                if fields.get("action") == "sorteo" and fields.get("result") == "success":
                    if any(f.get("action") == "config" for f in actions[:i]):
                        return False, (
                            f"NOT EXERCISED: server life {life.number} drew while running, "
                            "before it could be killed (does the server honour "
                            f"{DRAW_DELAY_ENV}?)"
                        )
                    before = self.watcher.lives[life.number - 2]
                    waited = any(_is_draw_delay(line) for line in before.lines)
                    return True, (
                        f"server life {before.number} killed -9 after the barrier opened "
                        f"{'(in its draw delay) ' if waited else ''}and before the draw; "
                        f"life {life.number} drew at start"
                    )
        recorded = [
            life.number
            for life in self.watcher.lives
            if any(parse_log_line(line).get("drawn") == "True" for line in life.lines)
        ]
        if recorded:
            return False, (
                f"NOT EXERCISED: no life logged the draw, yet life {recorded[0]} found it made: "
                f"life {recorded[0] - 1} was killed between storing the draw and logging it "
                f"(does the server honour {DRAW_DELAY_ENV}?)"
            )
        return False, "no server life logged the draw"

    def _judge_random_draw_kill(self) -> tuple[bool, str]:
        """Random draw: the draw waits for reveals, so it is never made at a life's start.
        The kill counts if a life with every agency done died without drawing, and the
        draw came in a later life."""
        lives = self.watcher.lives
        for life in lives:
            actions = [parse_log_line(line) for line in life.lines]
            if any(f.get("action") == "sorteo" and f.get("result") == "success" for f in actions):
                if life.number < 2:
                    return False, f"NOT EXERCISED: server life {life.number} drew, never killed"
                return True, (
                    f"server life {life.number - 1} killed -9 after the barrier opened and "
                    f"before the reveals; life {life.number} took the reveals and drew"
                )
        return False, "no server life logged the draw"

    def finish(self, server: ServerLife) -> int | None:
        self.say("waiting for the agencies to get their winners and exit")
        live = [r for r in self.agency_runs if not r.killed]
        self.wait_until(lambda: all(r.proc.poll() is not None for r in live), "the agencies")
        status = server.terminate(timeout=min(20.0, max(self.left(), 1.0)))
        self.say(f"server life {server.number} stopped with SIGTERM: exit status {status}")
        return status

    def export(self) -> list[tuple[str, ...]]:
        return export_bets(self.data_dir, self.work / "bets.csv", timeout=max(self.left(), 30.0))

    # -- judging

    def judge(self, server_status: int | None) -> None:
        cfg, result, watcher = self.cfg, self.result, self.watcher
        checks = result.checks
        watcher.update()

        checks.append(
            Check(
                "server kills",
                result.server_kills >= cfg.server_kills,
                f"{result.server_kills} of {cfg.server_kills} during the sending phase",
            )
        )
        resumed = self._resume_check()
        checks.append(resumed)
        if cfg.draw == "random":
            self.draw_kill_ok, self.draw_kill = self._judge_draw_kill()
        checks.append(Check("kill between barrier and draw", self.draw_kill_ok, self.draw_kill))

        if cfg.draw == "random":
            checks.append(self._verify_random_draw())
        final = {r.agency: r for r in self.agency_runs if not r.killed}
        for agency in range(1, cfg.agencies + 1):
            run = final[agency]
            got = run.value("ganadores", "dnis")
            winners = [] if got is None or got.strip() in ("", "-") else got.split()
            expected = self.expected_winners[agency]
            ok = (
                run.proc.returncode == 0 and got is not None and sorted(winners) == sorted(expected)
            )
            checks.append(
                Check(
                    f"agency {agency}",
                    ok,
                    f"exit {run.proc.returncode}, winners {winners if got is not None else None}"
                    f" (expected {expected})",
                )
            )

        exported = self.export()
        wanted = collections.Counter(input_bets(self.files))
        have = collections.Counter(exported)
        missing = sum((wanted - have).values())
        extra = sum((have - wanted).values())
        checks.append(
            Check(
                "export equals input",
                missing == 0 and extra == 0,
                f"{len(exported):,} exported, {sum(wanted.values()):,} in the files: "
                f"{missing} missing, {extra} extra or twice",
            )
        )
        draws = sum(
            line.count("action: sorteo | result: success")
            for life in watcher.lives
            for line in life.lines
        )
        checks.append(Check("one draw", draws == 1, f"{draws} across {len(watcher.lives)} lives"))
        checks.append(Check("last server exit", server_status == 0, f"status {server_status}"))
        fails = list(watcher.fails)
        for run in self.agency_runs:
            fails += [
                f"agency {run.agency} run {run.run}: {line}"
                for line in run.output().splitlines()
                if "result: fail" in line and not connect_hint(line)
            ]
        checks.append(Check("no result: fail", not fails, f"{len(fails)} lines" + _first(fails)))
        result.passed = all(c.ok for c in checks)

    def _verify_random_draw(self) -> Check:
        """Export the draw record, learn the number, and run ``lottery verify`` on it."""
        record_path, bets_path = self.work / "draw.json", self.work / "verify-bets.csv"
        timeout = max(self.left(), 30.0)
        export_bets(self.data_dir, bets_path, timeout=timeout)
        subprocess.run(
            [*lottery_command(), "export", "--data-dir", str(self.data_dir),
             "--draw-record", str(record_path)],
            check=True, capture_output=True, timeout=timeout,
        )  # fmt: skip
        record = json.loads(record_path.read_text(encoding="utf-8"))
        number = int(record["number"])
        for agency, bets in enumerate(split_by_agency(input_bets(self.files)), 1):
            self.expected_winners[agency] = [b[3] for b in bets if int(b[5]) == number]
        verify = subprocess.run(
            [*lottery_command(), "verify", "--csv", str(bets_path), "--record", str(record_path)],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        lines = (verify.stdout + verify.stderr).strip().splitlines()
        return Check(
            "lottery verify",
            verify.returncode == 0,
            f"number {number}, not revealed {record.get('not_revealed')}: "
            + (lines[-1] if lines else "(no output)"),
        )

    def _resume_check(self) -> Check:
        if self.resume is None:
            return Check("agency kill and resume", False, "the agency kill did not happen")
        agency, seen, batch = self.resume
        restarted = next(r for r in self.agency_runs if r.agency == agency and r.run == 2)
        skipped = restarted.value("apuestas_enviadas", "omitidas")
        sent = restarted.value("apuestas_enviadas", "cantidad")
        ok = skipped is not None and seen <= int(skipped) < self.cfg.bets and int(skipped) > 0
        if ok and sent is not None:
            ok = int(skipped) + int(sent) == self.cfg.bets
        return Check(
            "agency kill and resume",
            ok,
            f"agency {agency} restarted with --batch-max-amount {batch}: "
            f"skipped {skipped} stored bets (≥ {seen} seen stored at the kill), sent {sent} "
            f"(of {self.cfg.bets:,})",
        )

    def figures(self) -> dict[str, int]:
        """How hard the agencies had to work, from their logs and the server's."""
        out = {"losses": 0, "connect_streak": 0, "winners_tries": 0, "resumes": 0}
        for run in self.agency_runs:
            for line in run.output().splitlines():
                fields = parse_log_line(line)
                action, tries = fields.get("action"), int(fields.get("intento", "0"))
                if action == "reconectar":
                    out["losses"] += 1
                elif action == "conectar":
                    out["connect_streak"] = max(out["connect_streak"], tries)
                elif action == "consulta_ganadores" and fields.get("result") == "in_progress":
                    out["losses"] += fields.get("motivo") not in ("not ready", "timeout")
                    out["winners_tries"] = max(out["winners_tries"], tries)
        for life in self.watcher.lives:
            for line in life.lines:
                fields = parse_log_line(line)
                if fields.get("action") == "handshake" and int(fields.get("last_seq", "0")) > 0:
                    out["resumes"] += 1
        return out

    def summarize(self) -> str:
        r = self.result
        width = max(len(c.name) for c in r.checks) if r.checks else 10
        f = self.figures()
        cfg = self.cfg
        lines = [
            "",
            f"chaos run, seed {r.seed}: {cfg.agencies} agencies × {cfg.bets:,} bets "
            f"= {r.total_bets:,} bets in {r.seconds:.1f} s",
            f"server kills: {r.server_kills} while sending + {int(self.draw_kill_ok)} between "
            f"barrier and draw; agency kills: {r.agency_kills}; server lives: "
            f"{len(self.watcher.lives)}",
            f"agencies: {f['losses']} connections lost, {f['resumes']} handshakes resuming after "
            f"stored batches; longest run of failed connects {f['connect_streak']} (of "
            f"{RECONNECT_ATTEMPTS} allowed), most winners tries {f['winners_tries'] + 1} "
            f"(of {cfg.winners_attempts})",
        ]
        for c in r.checks:
            lines.append(f"  {'ok  ' if c.ok else 'FAIL'} {c.name:<{width}}  {c.detail}")
        lines.append("PASS" if r.passed else "FAIL")
        return "\n".join(lines)


def _is_draw_delay(line: str) -> bool:
    fields = parse_log_line(line)
    return fields.get("action") == "sorteo" and fields.get("result") == "in_progress"


def connect_hint(line: str) -> bool:
    """An agency's advice after a killed server closed its connect at once (it retries).

    `Session.connect` logs ``action: conectar | result: fail`` with a ``pista``
    (the TLS hint) on the first connect the server closes without a reply; a
    server killed mid-handshake does exactly that, and the agency goes on.
    """
    return "action: conectar | result: fail" in line and "pista:" in line


def _first(items: list[str]) -> str:
    return f"; first: {items[0][-300:]}" if items else ""


def split_by_agency(bets: list[tuple[str, ...]]) -> list[list[tuple[str, ...]]]:
    by_agency: dict[str, list[tuple[str, ...]]] = collections.defaultdict(list)
    for bet in bets:
        by_agency[bet[0]].append(bet)
    return [by_agency[k] for k in sorted(by_agency, key=int)]


def run_chaos(config: ChaosConfig) -> ChaosResult:
    """Run one chaos round as ``config`` says; the result says PASS or FAIL and why."""
    work = config.keep or Path(tempfile.mkdtemp(prefix="lottery-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    if (work / "data").exists():
        shutil.rmtree(work / "data")
    run = ChaosRun(config, work)
    result = run.result
    status: int | None = None
    try:
        run.make_files()
        run.started = time.monotonic()
        run.deadline = run.started + config.deadline
        server = run.start_server(config.draw_delay)
        server = run.sending_phase(server)
        server = run.draw_phase(server)
        status = run.finish(server)
        result.seconds = time.monotonic() - run.started
        run.judge(status)
    except Exception as exc:  # a broken run is a FAIL with its reason, not a traceback
        result.seconds = time.monotonic() - run.started
        result.checks.append(Check("run completed", False, f"{type(exc).__name__}: {exc}"))
        result.passed = False
        run.say(f"run aborted: {type(exc).__name__}: {exc}")
    finally:
        run.kill_everything()
        result.summary = run.summarize()
        if config.keep is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            result.summary += f"\nfiles, data and logs kept in {work}"
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agencies", type=int, default=4)
    parser.add_argument("--bets", type=int, default=50_000, help="bets per agency")
    parser.add_argument("--server-kills", type=int, default=10, help="kills while sending")
    parser.add_argument("--batch-max-amount", type=int, default=200, help="the agencies' batches")
    parser.add_argument("--max-in-flight", type=int, default=8, help="the agencies' window")
    parser.add_argument("--seed", type=int, default=None, help="replay a run (default: random)")
    parser.add_argument("--keep", type=Path, default=None, help="keep files, data and logs here")
    parser.add_argument(
        "--draw-delay", type=float, default=5.0, help=f"{DRAW_DELAY_ENV} (0: do not set it)"
    )
    parser.add_argument("--deadline", type=float, default=600.0, help="seconds for the whole run")
    parser.add_argument(
        "--stall",
        type=float,
        default=0.0,
        help="SIGSTOP the server this many seconds around the agency kill (default 0: off)",
    )
    parser.add_argument(
        "--server-args", default="", help='more server flags, e.g. "--max-group-bets 50"'
    )
    parser.add_argument("--draw", choices=("fixed", "random"), default="fixed")
    args = parser.parse_args(argv)
    if args.agencies < 1 or args.bets < 10 or args.server_kills < 0:
        parser.error("need ≥ 1 agency, ≥ 10 bets per agency and ≥ 0 server kills")
    config = ChaosConfig(
        agencies=args.agencies,
        bets=args.bets,
        server_kills=args.server_kills,
        batch_max_amount=args.batch_max_amount,
        max_in_flight=args.max_in_flight,
        seed=args.seed,
        keep=args.keep,
        draw_delay=args.draw_delay,
        deadline=args.deadline,
        stall=args.stall,
        server_args=shlex.split(args.server_args),
        draw=args.draw,
    )
    try:
        agency_kill_spread(config)
    except ValueError as exc:
        parser.error(str(exc))
    result = run_chaos(config)
    print(result.summary)
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
