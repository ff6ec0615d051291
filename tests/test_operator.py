"""What an operator meets: export rules, make-secrets, help text, warnings (operator issue)."""

from __future__ import annotations

import asyncio
import csv
import errno
import io
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lottery.advice import batch_cap_advice
from lottery.auth import agency_secret_path, load_secrets, parse_secret
from lottery.cli import main
from lottery.client import AsyncAgency, query_status
from lottery.config import SERVER_OPTIONS, load_agency_config, load_server_config, unknown_names
from lottery.connection import HostNotFound
from lottery.csvfiles import excel_safe, write_bets_csv
from lottery.errors import ConnectionLost, ErrorCode, ProtocolError, ServerRefused
from lottery.log import SafeStream
from lottery.protocol import Error, encode
from lottery.store import SQLiteStore
from lottery.store.base import PendingBatch
from roundrunner import log_events

from .conftest import UNIT
from .helpers import LOOPBACK, REPLY_TIMEOUT, fake_server, run_lottery

pytestmark = pytest.mark.timeout(60)

FORMULA_NAMES = ['=HYPERLINK("http://x")', "+1+1", "-2+3", "@SUM(A1)"]


def _store_with(data_dir: Path, rows: list[tuple[str, str, str, str, str]]) -> None:
    store = SQLiteStore(data_dir, agencies=1)
    try:
        store.commit([PendingBatch(1, 1, rows)])
    finally:
        store.close()


# -- the export ---------------------------------------------------------------------------


def test_excel_safe_quotes_only_cells_a_spreadsheet_would_run() -> None:
    """Text starting with = + - @ tab or CR gets a leading quote; other cells are unchanged."""
    for name in [*FORMULA_NAMES, "\tx", "\rx"]:
        assert excel_safe(name) == "'" + name
    for value in ["Ana", "O'Hara", "", "1999-03-17", 7574, -1]:
        assert excel_safe(value) == value


def test_export_is_tp0_exact_by_default_and_neutralised_with_excel_safe() -> None:
    """Without the option names are written as stored; with it, formula-like names are quoted."""
    rows = [(1, name, "Lorca", "30904465", "1999-03-17", 7574) for name in FORMULA_NAMES]
    plain, safe = io.StringIO(newline=""), io.StringIO(newline="")
    write_bets_csv(rows, plain)
    write_bets_csv(rows, safe, excel_safe_cells=True)
    assert [r[1] for r in csv.reader(io.StringIO(plain.getvalue()))] == FORMULA_NAMES
    safe_rows = list(csv.reader(io.StringIO(safe.getvalue())))
    assert [r[1] for r in safe_rows] == ["'" + n for n in FORMULA_NAMES]
    assert [r[2:] for r in safe_rows] == [["Lorca", "30904465", "1999-03-17", "7574"]] * 4


@pytest.mark.e2e
def test_lottery_export_to_stdout_with_excel_safe(tmp_path: Path) -> None:
    """`lottery export --csv - --excel-safe` writes the CSV (CRLF) to stdout and no file named -."""
    _store_with(tmp_path / "data", [("=cmd", "-Lorca", "30904465", "1999-03-17", "7574")])
    done = subprocess.run(
        [sys.executable, "-m", "lottery", "export", "--data-dir", "data", "--csv", "-",
         "--excel-safe"],
        capture_output=True, timeout=30 * UNIT, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"1,'=cmd,'-Lorca,30904465,1999-03-17,7574\r\n"
    assert not (tmp_path / "-").exists()
    assert b"action: export | result: success | cantidad: 1" in done.stderr


# -- settings that were silently ignored --------------------------------------------------


def test_typo_keys_and_tp0_names_are_warned_with_the_closest_setting(tmp_path: Path) -> None:
    """A typo in config.ini/config.yaml or the environment, or tp0's SERVER_IP, gets a hint."""
    ini = tmp_path / "config.ini"
    ini.write_text("[DEFAULT]\nSERVER_PROT = 1\nSERVER_IP = 0.0.0.0\n", encoding="utf-8")
    warnings: list[str] = []
    load_server_config({}, {"SERVER_LISTEN_BACKLGO": "5", "HOME": "/"}, str(ini), warnings)
    assert warnings == [
        f"{ini} key SERVER_PROT is not a setting and is ignored; did you mean SERVER_PORT?",
        f"{ini} key SERVER_IP is not a setting and is ignored; it is SERVER_HOST here",
        "environment variable SERVER_LISTEN_BACKLGO is not a setting and is ignored; "
        "did you mean SERVER_LISTEN_BACKLOG?",
    ]
    yaml_file = tmp_path / "config.yaml"
    yaml_file.write_text("id: 1\nserver:\n  adress: h:1\nloop:\n  amount: 5\n", encoding="utf-8")
    warnings = []
    load_agency_config({}, {}, str(yaml_file), warnings)
    assert warnings == [
        f"{yaml_file} key server.adress is not a setting and is ignored; "
        "did you mean server.address?",
        f"{yaml_file} key loop.amount is not a setting and is ignored; "
        "tp0 used it, lottery does not",
    ]


def test_known_keys_give_no_warning(tmp_path: Path) -> None:
    """The shipped docker/config.ini and config.yaml, and every setting's name, warn of nothing."""
    root = Path(__file__).parent.parent
    warnings: list[str] = []
    env = {opt.env: "1" for opt in SERVER_OPTIONS}
    load_server_config({}, {}, str(root / "docker" / "config.ini"), warnings)
    assert unknown_names(SERVER_OPTIONS, env, {}, "", ("SERVER_",)) == []
    load_agency_config({"id": "1"}, {}, str(root / "docker" / "config.yaml"), warnings)
    assert warnings == []


def test_a_batch_setting_the_frame_caps_is_said_once(tmp_path: Path) -> None:
    """--batch-max-amount above what an 8 KiB frame holds of the file's bets gets one sentence."""
    path = tmp_path / "agency-1.csv"
    path.write_text("Santiago Lionel,Lorca,30904465,1999-03-17,2201\n" * 500, encoding="utf-8")
    advice = batch_cap_advice(path, 65535)
    assert len(advice) == 1
    fits = int(advice[0].split("holds about ")[1].split()[0])
    assert 150 < fits < 200 and "--batch-max-amount 65535" in advice[0]
    assert batch_cap_advice(path, 180) == []  # within 10% of what fits
    assert batch_cap_advice(path, 100) == []
    assert batch_cap_advice(tmp_path / "missing.csv", 65535) == []


@pytest.mark.e2e
def test_the_agency_logs_its_config_warnings_at_start(tmp_path: Path) -> None:
    """An agency with a typo key and a capped batch size logs both as tp0 warning lines."""
    (tmp_path / "config.yaml").write_text("server:\n  adress: 127.0.0.1:1\n", encoding="utf-8")
    (tmp_path / "a.csv").write_text("Ana,Lorca,1,1999-03-17,1\n", encoding="utf-8")
    done = run_lottery(
        "agency", "--id", "1", "--config", "config.yaml", "--bets", "a.csv",
        "--batch-max-amount", "65535", "--server", "127.0.0.1:1", "--reconnect-attempts", "1",
        cwd=tmp_path,
    )  # fmt: skip
    warnings = log_events(done.stderr, "config", result="warning")
    assert [w["detalle"].split(" ")[:3] for w in warnings] == [
        ["config.yaml", "key", "server.adress"],
        ["--batch-max-amount", "65535:", "a"],
    ], done.stderr


# -- help, make-secrets, library log lines -------------------------------------------------


@pytest.mark.e2e
def test_python_m_lottery_help_is_plain_text_listing_every_command() -> None:
    """`python -m lottery --help` shows no reST markup and names all six commands."""
    done = run_lottery("--help")
    assert done.returncode == 0
    assert "``" not in done.stdout
    for command in ("server", "agency", "status", "ping", "make-secrets", "export"):
        assert f"\n    {command}" in done.stdout, command


def test_make_secrets_writes_one_file_per_agency(tmp_path: Path) -> None:
    """--per-agency-dir writes agency-<id>.secret (0600) holding exactly that agency's secret."""
    table_path, directory = tmp_path / "secrets.txt", tmp_path / "agencies"
    assert main(["make-secrets", "3", str(table_path), "--per-agency-dir", str(directory)]) == 0
    table = load_secrets(table_path, 3)
    for agency in (1, 2, 3):
        path = agency_secret_path(directory, agency)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert parse_secret(path.read_text(encoding="utf-8"), str(path)) == table[agency]
    assert sorted(p.name for p in directory.iterdir()) == [f"agency-{i}.secret" for i in (1, 2, 3)]


def test_make_secrets_writes_nothing_if_one_file_exists(tmp_path: Path) -> None:
    """If any agency file exists already, make-secrets refuses and creates no file at all."""
    directory = tmp_path / "agencies"
    directory.mkdir()
    agency_secret_path(directory, 2).write_text("keep me", encoding="utf-8")
    assert (
        main(["make-secrets", "3", str(tmp_path / "s.txt"), "--per-agency-dir", str(directory)])
        == 2
    )
    assert not (tmp_path / "s.txt").exists()
    assert sorted(p.name for p in directory.iterdir()) == ["agency-2.secret"]


@pytest.mark.e2e
def test_library_log_lines_follow_tp0_format_without_configure() -> None:
    """A script that never configures logging still gets tp0 lines, debug ones included."""
    code = (
        "from lottery.log import get_logger\n"
        "get_logger(agencia=1).debug('handshake', result='success', last_seq=0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30 * UNIT, check=True
    )
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d DEBUG    "
        r"action: handshake \| result: success \| last_seq: 0 \| agencia: 1\n",
        done.stdout,
    ), done.stdout


# -- messages that pointed the wrong way ---------------------------------------------------


async def _closes_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """What a TLS server does to a plain-TCP client: read its first bytes, close."""
    await reader.read(100)


async def _speaks_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(100)
    writer.write(b"HTTP/1.0 400 Bad Request\r\n\r\n")
    await writer.drain()


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(100)
    await asyncio.Event().wait()  # never answers; the fixture cancels it


async def _at_its_limit(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(encode(Error(ErrorCode.TOO_MANY_CONNECTIONS, "at the limit of 1026 connections")))
    await writer.drain()
    await reader.read(100)


async def test_status_against_a_tls_server_without_tls_ca_hints_at_it() -> None:
    """A server that closes without a word (TLS meeting plain TCP) gets the --tls-ca hint."""
    async with fake_server(_closes_at_once) as port:
        with pytest.raises(ConnectionResetError, match="if the server uses TLS, pass --tls-ca"):
            await query_status(LOOPBACK, port, REPLY_TIMEOUT)


async def test_status_against_another_kind_of_server_says_so() -> None:
    """An HTTP answer, or none at all, is a plain sentence naming the address, never empty."""
    async with fake_server(_speaks_http) as port:
        with pytest.raises(ProtocolError, match=f"127.0.0.1:{port} is not a lottery server"):
            await query_status(LOOPBACK, port, REPLY_TIMEOUT)
    async with fake_server(_silent) as port:
        with pytest.raises(TimeoutError, match="is it a lottery server, on the right port"):
            await query_status(LOOPBACK, port, 0.2 * UNIT)


async def test_status_at_the_connection_limit_gives_the_servers_message() -> None:
    """An ERROR reply to STATUS (connection limit) is the server's own words, not a type name."""
    async with fake_server(_at_its_limit) as port:
        with pytest.raises(ServerRefused, match="at the limit of 1026 connections") as error:
            await query_status(LOOPBACK, port, REPLY_TIMEOUT)
    assert error.value.code == ErrorCode.TOO_MANY_CONNECTIONS
    assert "TOO_MANY_CONNECTIONS" in str(error.value)


@pytest.mark.e2e
async def test_lottery_status_prints_the_servers_refusal() -> None:
    """`lottery status` at the connection limit prints the server's message on one line, exit 1."""
    async with fake_server(_at_its_limit) as port:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "lottery", "status", "--server", f"127.0.0.1:{port}",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        async with asyncio.timeout(30 * UNIT):
            _, err = await proc.communicate()
    assert proc.returncode == 1
    assert err.decode().strip() == (
        "lottery status: server refused (TOO_MANY_CONNECTIONS): at the limit of 1026 connections"
    )


async def test_the_agency_gives_its_tls_hint_at_the_first_close(log_stream: io.StringIO) -> None:
    """The first connection closed before any reply logs the --tls-ca hint, not the last."""
    async with fake_server(_closes_at_once) as port:
        agency = AsyncAgency(1, LOOPBACK, port, timeout=REPLY_TIMEOUT, reconnect_attempts=3)
        with pytest.raises(ConnectionLost, match="pass --tls-ca"):
            await agency.connect()
    lines = [line for line in log_stream.getvalue().splitlines() if "action: conectar" in line]
    assert "pista: if the server uses TLS, pass --tls-ca" in lines[0]
    assert sum("pista:" in line for line in lines) == 1


async def test_an_unknown_host_name_fails_at_once(log_stream: io.StringIO) -> None:
    """A host name that does not resolve is one error, never retried."""
    agency = AsyncAgency(1, "no-such-host.invalid", 1, timeout=REPLY_TIMEOUT, reconnect_attempts=10)
    with pytest.raises(HostNotFound, match=r"cannot resolve the host name 'no-such-host\.invalid'"):
        await agency.connect()
    assert "action: conectar" not in log_stream.getvalue()
    with pytest.raises(HostNotFound):
        await query_status("no-such-host.invalid", 1, REPLY_TIMEOUT)


# -- a failing log stream ------------------------------------------------------------------


class _FlakyStream(io.StringIO):
    """A stream that fails its next ``failures`` writes with ``error``, writing nothing."""

    def __init__(self, error: OSError, failures: int) -> None:
        super().__init__()
        self.error, self.failures = error, failures

    def write(self, text: str) -> int:
        if self.failures:
            self.failures -= 1
            raise self.error
        return super().write(text)


def test_a_log_stream_that_fails_for_a_moment_says_how_many_lines_it_lost() -> None:
    """Writes that fail with EAGAIN are dropped and counted; the next good write says how many."""
    flaky = _FlakyStream(BlockingIOError(errno.EAGAIN, "busy"), failures=2)
    safe = SafeStream(flaky)
    for line in ("a\n", "b\n", "c\n"):
        safe.write(line)
    assert flaky.getvalue().splitlines()[1:] == ["c"]  # a and b were lost, not half-written
    assert "action: log | result: fail | detalle: 2 log lines were lost" in flaky.getvalue()
    assert flaky.getvalue().endswith("c\n") and safe.dropped == 0 and not safe.gone


def test_a_broken_log_pipe_falls_back_and_never_raises() -> None:
    """A broken pipe is given up at once; later lines go to the fallback, after one notice."""
    broken = _FlakyStream(BrokenPipeError(errno.EPIPE, "Broken pipe"), failures=10**6)
    fallback = io.StringIO()
    safe = SafeStream(broken, fallback=fallback)
    safe.write("lost\n")
    safe.write("kept\n")
    assert safe.gone.startswith("BrokenPipeError")
    lines = fallback.getvalue().splitlines()
    assert "the log stream failed (BrokenPipeError" in lines[0] and "1 lines lost" in lines[0]
    assert lines[1:] == ["kept"]
    without = SafeStream(_FlakyStream(BrokenPipeError(errno.EPIPE, "x"), failures=10**6))
    for _ in range(3):
        without.write("line\n")
    assert without.dropped == 3
