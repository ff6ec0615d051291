"""Run whole rounds with real ``lottery`` processes on loopback: the scripts' one helper.

Used by ``make run`` (scripts/demo_round.py), the benchmarks, the chaos and
fuzz rounds and the tests (pytest puts scripts/ on ``pythonpath``), so that
all of them start servers and agencies, read log lines, read replies and
export the same way:

    server = start_server(data_dir, agencies=5, log_path=...)
    agencies = [start_agency(i, server.port, bets_file, log_path=...) for i in ...]
    results = wait_agencies(agencies, timeout=60)
    stop_server(server)

The server listens on port 0 unless told otherwise; its ``action: config``
log line says which port it got, so rounds never collide on a fixed port.
"""

from __future__ import annotations

import asyncio
import csv
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from lottery.protocol import ClientProtocol, Message

__all__ = [
    "READ_SIZE",
    "AgencyProcess",
    "ReplyReader",
    "ServerProcess",
    "ServerStartError",
    "export_bets",
    "input_bets",
    "log_events",
    "log_value",
    "lottery_command",
    "parse_log_line",
    "start_agency",
    "start_server",
    "stop_server",
    "wait_agencies",
]

#: How much one read takes off a socket (the client's and server's own size).
READ_SIZE = 65536
#: Environment for a child: the variables given on top of ours; None removes one.
Env = Mapping[str, str | None]


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


def log_events(lines: str | Iterable[str], action: str, **fields: object) -> list[dict[str, str]]:
    """The logged events named ``action`` whose fields include ``fields`` (compared as text).

    ``lines`` is a whole log as one string, or its lines.
    """
    if isinstance(lines, str):
        lines = lines.splitlines()
    wanted = {key: str(value) for key, value in fields.items()}
    events = (parse_log_line(line) for line in lines)
    return [
        event
        for event in events
        if event.get("action") == action and all(event.get(k) == v for k, v in wanted.items())
    ]


def log_value(lines: str | Iterable[str], action: str, key: str) -> str | None:
    """Field ``key`` of the first ``action: <action> | result: success`` line, if any."""
    for event in log_events(lines, action, result="success"):
        if key in event:
            return event[key]
    return None


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


def export_bets(
    data_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    env: Env | None = None,
    timeout: float = 120.0,
) -> list[tuple[str, ...]]:
    """``lottery export`` of a (stopped) server's data into ``out``, read back as rows.

    Each row is (agency, first_name, last_name, document, birthdate, number), as
    `input_bets` gives them; raises `subprocess.CalledProcessError` if the export fails.
    """
    subprocess.run(
        [*lottery_command(), "export", "--data-dir", str(data_dir), "--csv", str(out)],
        check=True,
        capture_output=True,
        env=_environment(env),
        timeout=timeout,
    )
    with open(out, newline="", encoding="utf-8") as f:
        return [tuple(row) for row in csv.reader(f) if row]


class ReplyReader:
    """The server's replies on one connection, read off ``reader`` and decoded in order."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.protocol = ClientProtocol()

    async def next(self) -> Message | None:
        """The next reply, or None once the server closed the connection between frames.

        Raises:
            ProtocolError: the server's bytes break the protocol (EOF inside a frame too).
            OSError: the connection failed (a reset, say).
        """
        while (message := self.protocol.next_event()) is None:
            data = await self.reader.read(READ_SIZE)
            if not data:
                self.protocol.receive_eof()
                return None
            self.protocol.receive_data(data)
        return message


def _environment(env: Env | None) -> dict[str, str]:
    merged = dict(os.environ)
    for key, value in (env or {}).items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def lottery_command() -> list[str]:
    """The ``lottery`` console script beside this Python, else ``python -m lottery``."""
    script = Path(sys.executable).parent / "lottery"
    if script.exists():
        return [str(script)]
    found = shutil.which("lottery")
    return [found] if found else [sys.executable, "-m", "lottery"]


@dataclass
class ServerProcess:
    """A running server process and every log line it has written so far."""

    proc: subprocess.Popen[str]
    port: int
    lines: list[str] = field(default_factory=list)
    pump: threading.Thread | None = None  # copies the log into ``lines`` until EOF

    def log(self) -> str:
        return "\n".join(self.lines)

    def close_log(self, timeout: float = 10.0) -> None:
        """Once the process has exited: wait for its last log lines, close the pipe."""
        if self.pump is not None:
            self.pump.join(timeout)
        if self.proc.stderr is not None and (self.pump is None or not self.pump.is_alive()):
            self.proc.stderr.close()


class ServerStartError(RuntimeError):
    """The server exited, or did not log its port in time; ``lines`` is what it logged."""

    def __init__(self, message: str, lines: list[str], returncode: int | None) -> None:
        super().__init__(message)
        self.lines = lines
        self.returncode = returncode


def start_server(
    data_dir: str | os.PathLike[str],
    agencies: int,
    *,
    port: int = 0,
    extra_args: Sequence[str] = (),
    env: Env | None = None,
    log_file: IO[str] | None = None,
    timeout: float = 15.0,
    program: Sequence[str] | None = None,
) -> ServerProcess:
    """Start ``lottery server`` on 127.0.0.1:``port``; return once it listens.

    ``program`` replaces ``lottery`` (the threaded baseline takes the same
    flags). Raises `ServerStartError` if the process ends or has not logged its
    ``action: config`` line within ``timeout`` seconds; it is killed then.
    """
    cmd = [
        *(program or lottery_command()), "server", "--host", "127.0.0.1", "--port", str(port),
        "--agencies", str(agencies), "--data-dir", str(data_dir), *extra_args,
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        env=_environment(env),
    )
    assert proc.stderr is not None
    lines: list[str] = []
    ports: list[int] = []
    # Set by the pump at the config line, or at EOF: either way there is news.
    news = threading.Event()

    def pump(stream: IO[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))
            if log_file is not None:
                log_file.write(line)
                log_file.flush()
            if not ports:
                fields = parse_log_line(line)
                if fields.get("action") == "config" and fields.get("result") == "success":
                    ports.append(int(fields["port"]))
                    news.set()
        news.set()

    thread = threading.Thread(target=pump, args=(proc.stderr,), daemon=True)
    thread.start()
    server = ServerProcess(proc, 0, lines, thread)
    if not news.wait(timeout) or not ports:
        proc.kill()
        returncode = proc.wait()
        server.close_log(timeout)
        raise ServerStartError("server did not start:\n" + server.log(), list(lines), returncode)
    server.port = ports[0]
    return server


def stop_server(server: ServerProcess, timeout: float = 10.0, *, sig: int = signal.SIGTERM) -> int:
    """Send ``sig`` (SIGTERM) to the server and wait for it; returns its exit status.

    A server still running after ``timeout`` seconds is killed.
    """
    if server.proc.poll() is None:
        server.proc.send_signal(sig)
    try:
        code = server.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        code = server.proc.wait()
    server.close_log(timeout)
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
        text = log_value(self.output, "ganadores", "dnis")
        if text is None:
            return None
        return [] if text.strip() in ("", "-") else text.split()


def start_agency(
    agency: int,
    port: int,
    bets: str | os.PathLike[str] | None,
    *,
    extra_args: Sequence[str] = (),
    env: Env | None = None,
    output: str | os.PathLike[str] | None = None,
    program: Sequence[str] | None = None,
) -> AgencyProcess:
    """Start ``lottery agency`` (or ``program agency``) against 127.0.0.1:port.

    Its stdout and stderr go to ``output`` if given (readable while it runs),
    else to a temporary file; `wait_agencies` reads them into ``.output``.
    """
    cmd = [
        *(program or lottery_command()), "agency", "--id", str(agency),
        "--server", f"127.0.0.1:{port}",
    ]  # fmt: skip
    if bets is not None:
        cmd += ["--bets", str(bets)]
    # A file, not a pipe: an agency that logs a lot (many rejected rows) must
    # not block on a full pipe while we wait for another agency.
    out = (
        tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115 - closed by wait_agencies
        if output is None
        else open(output, "w+", encoding="utf-8")  # noqa: SIM115 - closed by wait_agencies
    )
    proc = subprocess.Popen(
        [*cmd, *extra_args],
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        env=_environment(env),
    )
    return AgencyProcess(agency, proc, out)


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
