"""What an operator meets, with real processes: signals, broken log pipes, misleading messages."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from roundrunner import (
    ServerProcess,
    log_events,
    lottery_command,
    parse_log_line,
    start_agency,
    start_server,
    stop_server,
    wait_agencies,
)

from .conftest import UNIT
from .helpers import make_rows, run_lottery, write_agency_file

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

#: How long a process gets for what should be prompt (start, stop, a log line).
PROMPT = 15 * UNIT


def wait_for(condition: Callable[[], bool], what: str, timeout: float = PROMPT) -> None:
    """Poll ``condition`` (a process's log) until it holds; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def server_logged(server: ServerProcess, action: str, **fields: str) -> Callable[[], bool]:
    return lambda: bool(log_events(list(server.lines), action, **fields))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A real server for 2 agencies, so agency 1 waits at the barrier once it is done."""
    process = start_server(tmp_path / "data", 2)
    yield process
    stop_server(process)


# -- Ctrl-C and SIGTERM on an agency -----------------------------------------------------------


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signalled_agency_says_what_is_stored_and_exits_128_plus_signal(
    tmp_path: Path, server: ServerProcess, sig: signal.Signals, status: int
) -> None:
    """SIGINT/SIGTERM on a waiting agency: one line (stored, how to resume), exit 130/143."""
    bets = write_agency_file(tmp_path / "agency-1.csv", make_rows(300))
    agency = start_agency(1, server.port, bets)
    try:
        wait_for(server_logged(server, "agencia_lista", agencia="1"), "agency 1 to be done")
        agency.proc.send_signal(sig)
    finally:
        wait_agencies([agency], timeout=PROMPT)
    assert agency.returncode == status, agency.output
    assert "Traceback" not in agency.output
    lines = [parse_log_line(line) for line in agency.output.splitlines()]
    interrupted = [line for line in lines if line.get("action") == "interrumpida"]
    assert len(interrupted) == 1, agency.output
    assert interrupted[0]["senal"] == sig.name and interrupted[0]["almacenadas"] == "300"
    assert "run the same command again" in interrupted[0]["detalle"]
    assert agency.output.strip().splitlines()[-1].find("action: interrumpida") > 0


def test_a_resumed_agency_after_ctrl_c_completes_the_round(
    tmp_path: Path, server: ServerProcess
) -> None:
    """After Ctrl-C, running the same command again finishes the round with no bet twice."""
    bets = write_agency_file(tmp_path / "agency-1.csv", make_rows(300, winners=[5]))
    first = start_agency(1, server.port, bets)
    try:
        wait_for(server_logged(server, "agencia_lista", agencia="1"), "agency 1 to be done")
        first.proc.send_signal(signal.SIGINT)
    finally:
        wait_agencies([first], timeout=PROMPT)
    assert first.returncode == 130
    other = write_agency_file(tmp_path / "agency-2.csv", make_rows(10, start=1000))
    again = [start_agency(1, server.port, bets), start_agency(2, server.port, other)]
    wait_agencies(again, timeout=60 * UNIT)
    assert [a.returncode for a in again] == [0, 0], [a.output for a in again]
    assert again[0].winners == ["30000005"]
    assert log_events(again[0].output, "apuestas_enviadas")[0]["cantidad"] == "0"


# -- messages that pointed the wrong way, against a real TLS server ---------------------------


def test_ping_and_status_against_a_real_tls_server_hint_at_tls_ca(
    tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    """Without --tls-ca, ping and status against a TLS server say to pass it; with it, they work."""
    cert, key = certificate
    server = start_server(
        tmp_path / "data", 1, extra_args=["--tls-cert", str(cert), "--tls-key", str(key)]
    )
    try:
        address = f"127.0.0.1:{server.port}"
        # A generous --timeout: on a loaded machine a slow answer must not read as "no lottery".
        timeout = ["--timeout", str(30 * UNIT)]
        for args in (["ping", address, *timeout], ["status", "--server", address, *timeout]):
            done = run_lottery(*args)
            assert done.returncode == 1
            assert "if the server uses TLS, pass --tls-ca" in done.stdout + done.stderr, args
            assert run_lottery(*args, "--tls-ca", str(cert)).returncode == 0, args
    finally:
        assert stop_server(server) == 0


# -- a broken log pipe ----------------------------------------------------------------------


def test_a_server_whose_log_pipe_closes_keeps_serving_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    """`lottery server ... 2>&1 | head -1`: a round still completes and SIGTERM stops it at once."""
    proc = subprocess.Popen(
        [*lottery_command(), "server", "--host", "127.0.0.1", "--port", "0", "--agencies", "2",
         "--data-dir", str(tmp_path / "data")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8",
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = parse_log_line(proc.stdout.readline())  # what `head -1` reads
        proc.stdout.close()  # ...before `head` exits and the pipe breaks
        assert first["action"] == "config"
        port = int(first["port"])
        files = [
            write_agency_file(tmp_path / f"agency-{i}.csv", make_rows(500, start=1000 * i))
            for i in (1, 2)
        ]
        agencies = [start_agency(i, port, f) for i, f in enumerate(files, 1)]
        wait_agencies(agencies, timeout=60 * UNIT)
        assert [a.returncode for a in agencies] == [0, 0], [a.output for a in agencies]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=PROMPT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_output_the_disk_refuses_fails_the_command(tmp_path: Path) -> None:
    """`lottery` ends with os._exit: output it cannot flush is said, and exits 120."""
    import os
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # block-buffered
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "lottery", "make-secrets", "1", str(tmp_path / "secrets")],
            stdout=full, stderr=subprocess.PIPE, text=True, env=env, timeout=30 * UNIT,
            check=False,
        )  # fmt: skip
    assert done.returncode == 120, done.stderr
    assert "the output was not written" in done.stderr


def test_a_reader_that_leaves_early_is_no_failure(tmp_path: Path) -> None:
    """`lottery ... | head -c1`: the broken pipe at exit neither fails nor tracebacks."""
    import os
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    lottery = subprocess.Popen(
        [sys.executable, "-m", "lottery", "make-secrets", "3", str(tmp_path / "secrets")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    assert lottery.stdout is not None
    lottery.stdout.close()  # the reader is gone before anything is written
    _, err = lottery.communicate(timeout=30 * UNIT)
    assert lottery.returncode == 0, err
    assert b"Traceback" not in err
