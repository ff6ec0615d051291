"""Run whole rounds with real ``lottery`` processes on loopback.

Used by ``make run`` (scripts/demo_round.py), the benchmark and the end-to-end
tests, so that all three start servers and agencies the same way:

    server = start_server(data_dir, agencies=5, log_path=...)
    agencies = [start_agency(i, server.port, bets_file, log_path=...) for i in ...]
    results = wait_agencies(agencies, timeout=60)
    stop_server(server)

The server listens on port 0; its ``action: config`` log line says which port
it got, so rounds never collide on a fixed port.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

__all__ = [
    "AgencyProcess",
    "ServerProcess",
    "input_bets",
    "lottery_command",
    "parse_log_line",
    "start_agency",
    "start_server",
    "stop_server",
    "wait_agencies",
]


def parse_log_line(line: str) -> dict[str, str]:
    """The ``key: value`` fields of a tp0 log line (``action``, ``result``...)."""
    start = line.find("action: ")
    if start < 0:
        return {}
    fields = {}
    for part in line[start:].split(" | "):
        key, sep, value = part.partition(": ")
        if sep:
            fields[key.strip()] = value
    return fields


def input_bets(files: Sequence[os.PathLike[str] | str]) -> list[tuple[str, ...]]:
    """Every bet of agency files 1..N, as ``lottery export`` writes it back.

    (agency, first_name, last_name, document, birthdate, number as an int's
    text): compare it with the export as a multiset to prove nothing was
    lost or stored twice.
    """
    bets = []
    for agency, path in enumerate(files, 1):
        with open(path, newline="", encoding="utf-8-sig") as f:
            for row in csv.reader(f):
                if row:
                    first, last, document, birthdate, number = row
                    bets.append((str(agency), first, last, document, birthdate, str(int(number))))
    return bets


def lottery_command() -> list[str]:
    """The ``lottery`` console script beside this Python, else ``python -m lottery``."""
    script = Path(sys.executable).parent / "lottery"
    if script.exists():
        return [str(script)]
    found = shutil.which("lottery")
    return [found] if found else [sys.executable, "-m", "lottery"]


@dataclass
class ServerProcess:
    proc: subprocess.Popen[str]
    port: int
    lines: list[str] = field(default_factory=list)  # every log line so far
    _pump: threading.Thread | None = None

    def log(self) -> str:
        return "\n".join(self.lines)


def _pump_lines(stream: IO[str], lines: list[str], copy: IO[str] | None) -> None:
    for line in stream:
        lines.append(line.rstrip("\n"))
        if copy is not None:
            copy.write(line)
            copy.flush()


def start_server(
    data_dir: str | os.PathLike[str],
    agencies: int,
    *,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    log_file: IO[str] | None = None,
    timeout: float = 15.0,
) -> ServerProcess:
    """Start ``lottery server`` on 127.0.0.1, port 0; return once it listens."""
    cmd = [
        *lottery_command(), "server", "--host", "127.0.0.1", "--port", "0",
        "--agencies", str(agencies), "--data-dir", str(data_dir), *extra_args,
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        env={**os.environ, **(env or {})},
    )
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    port = None
    # Read the log until the config line names the port (readline blocks until
    # a line or EOF, so this waits on the process itself, not on a timer).
    while port is None:
        line = proc.stderr.readline()
        if not line or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            proc.stderr.close()
            raise RuntimeError("server did not start:\n" + "".join(lines) + line)
        lines.append(line.rstrip("\n"))
        if log_file is not None:
            log_file.write(line)
        fields = parse_log_line(line)
        if fields.get("action") == "config" and fields.get("result") == "success":
            port = int(fields["port"])
    pump = threading.Thread(target=_pump_lines, args=(proc.stderr, lines, log_file), daemon=True)
    pump.start()
    return ServerProcess(proc, port, lines, pump)


def stop_server(server: ServerProcess, timeout: float = 10.0) -> int:
    """SIGTERM the server and wait for it; returns its exit status."""
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
    try:
        code = server.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        code = server.proc.wait()
    if server._pump is not None:
        server._pump.join(timeout)
    if server.proc.stderr is not None:
        server.proc.stderr.close()
    return code


@dataclass
class AgencyProcess:
    agency: int
    proc: subprocess.Popen[str]
    output_file: IO[str]
    output: str = ""
    returncode: int | None = None

    @property
    def winners(self) -> list[str] | None:
        """The documents from the agency's ``action: ganadores`` line, if any."""
        for line in self.output.splitlines():
            fields = parse_log_line(line)
            if fields.get("action") == "ganadores" and fields.get("result") == "success":
                text = fields.get("dnis", "").strip()
                return [] if text in ("", "-") else text.split()
        return None


def start_agency(
    agency: int,
    port: int,
    bets: str | os.PathLike[str] | None,
    *,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> AgencyProcess:
    """Start ``lottery agency`` against 127.0.0.1:port."""
    cmd = [*lottery_command(), "agency", "--id", str(agency), "--server", f"127.0.0.1:{port}"]
    if bets is not None:
        cmd += ["--bets", str(bets)]
    # A file, not a pipe: an agency that logs a lot (many rejected rows) must
    # not block on a full pipe while we wait for another agency.
    output = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115 - closed by wait_agencies
    proc = subprocess.Popen(
        [*cmd, *extra_args],
        stdout=output,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        env={**os.environ, **(env or {})},
    )
    return AgencyProcess(agency, proc, output)


def wait_agencies(agencies: Sequence[AgencyProcess], timeout: float = 120.0) -> None:
    """Wait for every agency to exit (killing any still running at the deadline)."""
    deadline = time.monotonic() + timeout
    for agency in agencies:
        try:
            agency.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            agency.proc.kill()
            agency.proc.wait()
        agency.output_file.seek(0)
        agency.output = agency.output_file.read()
        agency.output_file.close()
        agency.returncode = agency.proc.returncode
