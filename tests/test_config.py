"""Settings (flag > environment > config file > default), the CLI's usage errors, and logging."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import io
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog

from lottery.cli import build_parser, main
from lottery.config import (
    AGENCY_OPTIONS,
    DEFAULT_WINNING_NUMBER,
    SERVER_OPTIONS,
    AgencyConfig,
    Option,
    ServerConfig,
    boolean,
    load_agency_config,
    load_server_config,
)
from lottery.errors import ConfigError
from lottery.log import (
    LineLogger,
    Tp0Renderer,
    configure,
    get_logger,
    hot_line,
    line_logger,
    reset,
)
from lottery.server import Server

from .conftest import UNIT
from .helpers import make_rows, running_server, write_agency_file

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No setting leaks in from the real environment, and logging is reset after each test."""
    for option in (*SERVER_OPTIONS, *AGENCY_OPTIONS):
        monkeypatch.delenv(option.env, raising=False)
    for name in ("NOMBRE", "APELLIDO", "DOCUMENTO", "NACIMIENTO", "NUMERO"):
        monkeypatch.delenv(name, raising=False)
    yield
    structlog.reset_defaults()


def write_ini(tmp_path: Path, **values: object) -> str:
    """A tp0 ``config.ini`` with ``values`` in its [DEFAULT] section; returns its path."""
    path = tmp_path / "config.ini"
    lines = ["[DEFAULT]", *(f"{key} = {value}" for key, value in values.items())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def write_yaml(tmp_path: Path, text: str) -> str:
    """A tp0 ``config.yaml`` with ``text``; returns its path."""
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


# -- the server's settings ---------------------------------------------------------------------

# (field, name in config.ini and environment, flag value, env value, file value, the three
# parsed, the default)
SERVER_CASES = [
    ("port", "SERVER_PORT", "1111", "2222", "3333", (1111, 2222, 3333), 12345),
    ("listen_backlog", "SERVER_LISTEN_BACKLOG", "10", "20", "30", (10, 20, 30), 128),
    ("log_level", "LOGGING_LEVEL", "error", "debug", "ERROR", ("ERROR", "DEBUG", "ERROR"), "INFO"),
    ("agencies", "AGENCIES", "3", "4", "6", (3, 4, 6), 5),
]  # fmt: skip


@pytest.mark.parametrize(
    ("field", "key", "flag", "env", "file", "parsed", "default"),
    SERVER_CASES,
    ids=[case[0] for case in SERVER_CASES],
)
def test_server_setting_precedence(
    tmp_path: Path,
    field: str,
    key: str,
    flag: str,
    env: str,
    file: str,
    parsed: tuple[object, object, object],
    default: object,
) -> None:
    """A server setting comes from the flag, else the environment, else config.ini, else default."""
    ini = write_ini(tmp_path, **{key: file})
    from_flag, from_env, from_file = parsed
    assert getattr(load_server_config({field: flag}, {key: env}, ini), field) == from_flag
    assert getattr(load_server_config({}, {key: env}, ini), field) == from_env
    assert getattr(load_server_config({}, {}, ini), field) == from_file
    assert getattr(load_server_config({}, {}, None), field) == default
    assert getattr(ServerConfig(), field) == default


def test_server_config_ini_in_tp0_layout(tmp_path: Path) -> None:
    """tp0's own config.ini (upper-case keys in [DEFAULT]) is read as is."""
    ini = write_ini(tmp_path, SERVER_PORT=12345, SERVER_LISTEN_BACKLOG=5, LOGGING_LEVEL="DEBUG")
    config = load_server_config({}, {"AGENCIES": "2"}, ini)
    assert (config.port, config.listen_backlog, config.log_level, config.agencies) == (
        12345,
        5,
        "DEBUG",
        2,
    )


# -- the agency's settings ---------------------------------------------------------------------

AGENCY_YAML = """\
id: 3
server:
  address: "file-host:3333"
loop:
  amount: 5
  period: "5s"
log:
  level: "warning"
batch:
  maxAmount: 30
"""

# (field, environment variable, flag value, env value, the three parsed, the default)
AGENCY_CASES = [
    ("id", "CLI_ID", "1", "2", (1, 2, 3), None),
    (
        "server_address",
        "CLI_SERVER_ADDRESS",
        "flag-host:1111",
        "env-host:2222",
        ("flag-host:1111", "env-host:2222", "file-host:3333"),
        "127.0.0.1:12345",
    ),
    ("log_level", "CLI_LOG_LEVEL", "error", "DEBUG", ("ERROR", "DEBUG", "WARNING"), "INFO"),
    ("batch_max_amount", "CLI_BATCH_MAXAMOUNT", "10", "20", (10, 20, 30), 200),
]


@pytest.mark.parametrize(
    ("field", "env_name", "flag", "env", "parsed", "default"),
    AGENCY_CASES,
    ids=[case[0] for case in AGENCY_CASES],
)
def test_agency_setting_precedence(
    tmp_path: Path,
    field: str,
    env_name: str,
    flag: str,
    env: str,
    parsed: tuple[object, object, object],
    default: object,
) -> None:
    """An agency setting comes from the flag, else CLI_*, else config.yaml, else the default."""
    yaml_path = write_yaml(tmp_path, AGENCY_YAML)
    from_flag, from_env, from_file = parsed
    assert getattr(load_agency_config({field: flag}, {env_name: env}, yaml_path), field) == (
        from_flag
    )
    assert getattr(load_agency_config({}, {env_name: env}, yaml_path), field) == from_env
    assert getattr(load_agency_config({}, {}, yaml_path), field) == from_file
    if default is not None:  # the id has no default: it is required
        assert getattr(load_agency_config({}, {"CLI_ID": "1"}, None), field) == default
        assert getattr(AgencyConfig(), field) == default


def test_agency_id_is_required() -> None:
    """An agency with no id anywhere is a ConfigError that says how to give one."""
    with pytest.raises(ConfigError, match="--id"):
        load_agency_config({}, {}, None)


# -- bad values ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "env", "ini", "names"),
    [
        ({"port": "abc"}, {}, {}, ["--port", "'abc'"]),
        ({}, {"SERVER_PORT": "70000"}, {}, ["environment variable SERVER_PORT", "70000"]),
        ({}, {}, {"SERVER_LISTEN_BACKLOG": "zero"}, ["config.ini SERVER_LISTEN_BACKLOG", "zero"]),
        ({}, {}, {"LOGGING_LEVEL": "LOUD"}, ["config.ini LOGGING_LEVEL", "LOUD"]),
        ({"timeout_winners": "-1"}, {}, {}, ["--timeout-winners", "-1"]),
    ],
    ids=["flag", "env", "file", "level", "seconds"],
)
def test_bad_server_value_names_setting_and_source(
    tmp_path: Path,
    flags: dict[str, str],
    env: dict[str, str],
    ini: dict[str, str],
    names: list[str],
) -> None:
    """A bad server value raises ConfigError naming the setting, where it came from, and it."""
    with pytest.raises(ConfigError) as error:
        load_server_config(flags, env, write_ini(tmp_path, **ini))
    message = str(error.value)
    assert "\n" not in message
    for name in names:
        assert name in message


@pytest.mark.parametrize(
    ("flags", "env", "yaml_text", "names"),
    [
        ({"id": "1", "server_address": "nohostport"}, {}, "", ["--server", "nohostport"]),
        ({}, {"CLI_ID": "x"}, "", ["environment variable CLI_ID", "'x'"]),
        ({"id": "1"}, {"CLI_LOG_LEVEL": "LOUD"}, "", ["CLI_LOG_LEVEL", "LOUD"]),
        ({"id": "1"}, {}, "batch:\n  maxAmount: 0\n", ["config.yaml batch.maxAmount", "0"]),
        ({"id": "1"}, {}, "server:\n  address: nope\n", ["config.yaml server.address", "nope"]),
    ],
    ids=["flag", "env-id", "env-level", "file-batch", "file-address"],
)
def test_bad_agency_value_names_setting_and_source(
    tmp_path: Path,
    flags: dict[str, str],
    env: dict[str, str],
    yaml_text: str,
    names: list[str],
) -> None:
    """A bad agency value raises ConfigError naming the setting, where it came from, and it."""
    with pytest.raises(ConfigError) as error:
        load_agency_config(flags, env, write_yaml(tmp_path, yaml_text))
    message = str(error.value)
    assert "\n" not in message
    for name in names:
        assert name in message
    assert "--server-address" not in message  # the flag is spelled --server


def test_unreadable_config_file_is_a_config_error(tmp_path: Path) -> None:
    """A config file that is missing or not YAML/INI is a ConfigError naming the file."""
    with pytest.raises(ConfigError, match=r"missing\.ini"):
        load_server_config({}, {}, str(tmp_path / "missing.ini"))
    with pytest.raises(ConfigError, match=r"config\.yaml"):
        load_agency_config({"id": "1"}, {}, write_yaml(tmp_path, "- a list\n- not a mapping\n"))


def test_connection_limit_below_agencies_is_refused() -> None:
    """limit_connections below the agency count is a ConfigError naming both."""
    with pytest.raises(ConfigError, match="limit_connections=3") as error:
        ServerConfig(agencies=5, limit_connections=3)
    assert "5 agencies" in str(error.value)
    assert ServerConfig(agencies=5, limit_connections=5).connection_limit == 5
    assert ServerConfig(agencies=5).connection_limit == 2 * 5 + 1024


# Settings deliberately kept off the command line or out of config files.
NOT_ON_COMMAND_LINE = {"fault_draw_delay", "secret"}
NOT_IN_FILES = {"fault_draw_delay"}


@pytest.mark.parametrize(
    ("command", "options", "config_class"),
    [("server", SERVER_OPTIONS, ServerConfig), ("agency", AGENCY_OPTIONS, AgencyConfig)],
    ids=["server", "agency"],
)
def test_every_setting_has_its_flag_env_name_and_file_key(
    command: str,
    options: tuple[Option, ...],
    config_class: type[Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each config field has one Option with an env name, file key and help, exposed as a flag."""
    assert {f.name for f in dataclasses.fields(config_class)} == {opt.field for opt in options}
    for attribute in ("field", "env", "file_key", "flag_name"):
        names = [getattr(opt, attribute) for opt in options if getattr(opt, attribute)]
        assert len(names) == len(set(names)), f"two settings share a {attribute}"
    with pytest.raises(SystemExit):
        main([command, "--help"])
    help_text = " ".join(capsys.readouterr().out.split())  # argparse's line breaks undone
    parser = build_parser()
    for opt in options:
        assert opt.env and opt.help, opt.field
        assert bool(opt.file_key) != (opt.field in NOT_IN_FILES), opt.field
        if opt.field in NOT_ON_COMMAND_LINE:
            assert not opt.command_line
            assert f"{opt.flag_name} " not in help_text
            continue
        if opt.parse is boolean:  # a flag with no value
            assert getattr(parser.parse_args([command, opt.flag_name]), opt.field) == "true"
            entry = f"{opt.flag_name} {opt.help} ("
        else:
            assert getattr(parser.parse_args([command, opt.flag_name, "x"]), opt.field) == "x"
            entry = f"{opt.flag_name} {opt.field.upper()} {opt.help} ("
        assert entry in help_text, opt.flag_name
        where = help_text[help_text.index(entry) + len(entry) :].split(")")[0]
        assert f"env {opt.env}" in where
        assert not opt.file_key or where.endswith(f" {opt.file_key}")


def test_help_states_the_real_connection_limit(capsys: pytest.CaptureFixture[str]) -> None:
    """The server's help gives the automatic connection limit config.py computes, 2N+1024."""
    with pytest.raises(SystemExit):
        main(["server", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert ServerConfig(agencies=1).connection_limit == 2 * 1 + 1024
    assert "unset: 2N+1024" in help_text
    assert "2N+16" not in help_text
    assert f"default {DEFAULT_WINNING_NUMBER};" in help_text


@pytest.mark.parametrize(
    "argv",
    [
        ["server", "--port", "abc"],
        ["server", "--agencies", "5", "--limit-connections", "3"],
        ["agency", "--id", "1", "--server", "nohostport", "--bets", "x"],
        ["agency", "--server", "127.0.0.1:1", "--bets", "x"],
        ["server", "--log-level", "loud"],
        ["server", "--sync", "sometimes"],
        ["agency", "--id", "1", "--bets", "x", "--log-format", "xml"],
        ["export", "--data-dir", "/nonexistent/lottery-data", "--csv", "out.csv"],
    ],
    ids=[
        "server-port",
        "server-limit",
        "agency-server",
        "agency-no-id",
        "server-level",
        "server-sync",
        "agency-format",
        "export-no-store",
    ],
)
def test_cli_bad_value_exits_2_with_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad value on the command line exits with status 2 and one line on stderr."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"lottery {argv[0]}: ")
    assert captured.out == ""


def test_cli_bad_value_from_environment_is_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad value in the environment is reported with the variable's name."""
    monkeypatch.setenv("SERVER_PORT", "port")
    assert main(["server"]) == 2
    assert "environment variable SERVER_PORT" in capsys.readouterr().err


# -- the log renderer ------------------------------------------------------------------------------


def render(method: str = "info", **event: Any) -> str:
    """One line of Tp0Renderer output, without its timestamp."""
    return Tp0Renderer()(None, method, dict(event)).strip()


def test_renderer_writes_tp0_lines() -> None:
    """An event renders as ``action: X | result: Y | key: value``, in the order logged."""
    line = render(event="apuesta_recibida", result="success", cantidad=150, extra="x")
    assert line == "INFO     action: apuesta_recibida | result: success | cantidad: 150 | extra: x"


def test_renderer_replaces_pipes_and_newlines_in_values() -> None:
    """A ``|`` or a line break inside a value cannot add a field or a line."""
    line = render(event="apuesta|rara", result="fail|x", motivo="a | b\nc\rd")
    assert line.count("|") == 2
    assert "\n" not in line
    assert line.endswith("action: apuesta/rara | result: fail/x | motivo: a / b c d")


def test_renderer_puts_the_event_fields_right_after_result() -> None:
    """tp0's fields follow ``result`` directly; bound context (ip, agencia) closes the line."""
    stream = io.StringIO()
    configure("INFO", "console", stream)
    get_logger(ip="127.0.0.1").bind(agencia=1).info(
        "apuesta_almacenada", result="success", dni="30904465", numero=7574
    )
    assert (
        stream.getvalue()
        .rstrip("\n")
        .endswith(
            " INFO     action: apuesta_almacenada | result: success | dni: 30904465"
            " | numero: 7574 | ip: 127.0.0.1 | agencia: 1"
        )
    )


async def test_hot_line_writes_what_the_logger_would_after_the_lines_before_it() -> None:
    """The per-batch line's cheap path: the same text, in the order things were logged."""
    stream = io.StringIO()
    configure("INFO", "console", stream)
    log = get_logger(ip="127.0.0.1", agencia=3)
    line = hot_line("apuesta_recibida", "success", "cantidad", ip="127.0.0.1", agencia=3)
    assert line is not None
    log.info("apuesta_recibida", result="success", cantidad=150)  # the structlog path
    line(150)  # queued until the end of this loop turn...
    log.info("agencia_lista", result="success")  # ...unless another line comes first
    line(7)
    assert stream.getvalue().count("\n") == 3
    await asyncio.sleep(0)
    first, second, done, last = (text.split(" ", 2)[2] for text in stream.getvalue().splitlines())
    assert (
        first
        == second
        == (
            "INFO     action: apuesta_recibida | result: success | cantidad: 150"
            " | ip: 127.0.0.1 | agencia: 3"
        )
    )
    assert done.startswith("INFO     action: agencia_lista")
    assert last.endswith("| cantidad: 7 | ip: 127.0.0.1 | agencia: 3")
    structlog.reset_defaults()


async def test_line_logger_writes_what_the_structlog_logger_would() -> None:
    """The per-connection lines' cheap path: the same text, bound fields and all, in order."""
    stream = io.StringIO()
    configure("DEBUG", "console", stream)
    plain = get_logger(ip="127.0.0.1").bind(agencia=3)
    cheap = line_logger(ip="127.0.0.1").bind(agencia=3)
    assert isinstance(cheap, LineLogger)
    for log in (plain, cheap):
        log.info("handshake", result="success", last_seq=0, bets=1, filas="a|b")
        log.info("close_resource", result="success", resource="connection", agencia=None)
        log.warning("protocolo", result="fail", error="bad\nframe")
        log.error("sorteo", result="fail", error="x")
        log.debug("apuesta_duplicada", result="success", seq=4)
        await asyncio.sleep(0)  # the cheap path's INFO lines go out at the end of the turn
    lines = [text.split(" ", 2)[2] for text in stream.getvalue().splitlines()]
    assert len(lines) == 10
    assert lines[:5] == lines[5:]
    assert lines[1].endswith("resource: connection | ip: 127.0.0.1 | agencia: None")
    structlog.reset_defaults()


@pytest.mark.parametrize(("level", "fmt"), [("WARNING", "console"), ("INFO", "json")])
def test_line_logger_is_structlog_where_it_would_not_write_console_lines(
    level: str, fmt: str
) -> None:
    """JSON lines and levels above INFO take structlog's path."""
    configure(level, fmt, io.StringIO())
    assert not isinstance(line_logger(agencia=1), LineLogger)
    structlog.reset_defaults()
    assert not isinstance(line_logger(agencia=1), LineLogger)


@pytest.mark.parametrize(("level", "fmt"), [("WARNING", "console"), ("INFO", "json")])
def test_hot_line_is_none_where_it_would_not_write_that_line(level: str, fmt: str) -> None:
    """JSON lines and levels above INFO take the logger's own path (or none)."""
    configure(level, fmt, io.StringIO())
    assert hot_line("apuesta_recibida", "success", "cantidad", agencia=1) is None
    structlog.reset_defaults()
    assert hot_line("apuesta_recibida", "success", "cantidad", agencia=1) is None


def test_configured_logger_filters_levels() -> None:
    """configure() sends lines at or above its level to the stream and drops the rest."""
    stream = io.StringIO()
    configure("WARNING", "console", stream)
    log = get_logger()
    log.info("hidden", result="success")
    log.warning("apuesta_recibida", result="fail", cantidad=4)
    (line,) = stream.getvalue().splitlines()
    assert line.endswith(" WARNING  action: apuesta_recibida | result: fail | cantidad: 4")


def _log_some(fmt_light: bool, level: str = "INFO") -> list[str]:
    """A few lines, bound fields and all, through structlog or the light logger."""
    stream = io.StringIO()
    configure(level, "console", stream, light=fmt_light)
    try:
        log = get_logger(ip="10.0.0.1", agencia=3).bind(ronda="r1")
        log.debug("oculta", result="success")
        log.info("apuesta_enviada", result="success", dni="30904465", numero=7574)
        log.warning("reconectar", result="in_progress", error="a | b\nc")
        log.error("ronda", result="fail")
        log.critical("fin")
    finally:
        reset()
        structlog.reset_defaults()
    # The timestamp (to the second) may differ between the two runs.
    return [line.split(" ", 2)[2] for line in stream.getvalue().splitlines()]


@pytest.mark.parametrize("level", ["DEBUG", "INFO", "ERROR"])
def test_light_logger_writes_what_structlog_writes(level: str) -> None:
    """An agency's structlog-free lines: the same text, order and level filter as structlog's."""
    assert _log_some(True, level) == _log_some(False, level)
    assert _log_some(True, "INFO")[0] == (
        "INFO     action: apuesta_enviada | result: success | ronda: r1 | dni: 30904465"
        " | numero: 7574 | ip: 10.0.0.1 | agencia: 3"
    )


def test_light_configuration_lasts_until_reset() -> None:
    """configure(light=True) gives LineLoggers (console only); reset gives structlog's back."""
    configure("INFO", "console", io.StringIO(), light=True)
    assert isinstance(get_logger(agencia=1), LineLogger)
    reset()
    assert not isinstance(get_logger(agencia=1), LineLogger)
    configure("INFO", "json", io.StringIO(), light=True)  # JSON lines stay structlog's
    assert not isinstance(get_logger(agencia=1), LineLogger)
    structlog.reset_defaults()


def test_json_format_writes_one_object_per_line() -> None:
    """With the json format every event is one JSON object, its name under ``action``."""
    stream = io.StringIO()
    configure("INFO", "json", stream)
    get_logger(agencia=1).info("sorteo", result="success", motivo="a | b")
    get_logger().error("otro", result="fail")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["action"] == "sorteo"
    assert first["result"] == "success"
    assert first["motivo"] == "a | b"
    assert first["agencia"] == 1
    assert first["level"] == "info"
    assert "timestamp" in first
    assert second["level"] == "error"


@contextmanager
def server_in_thread(tmp_path: Path, **config: Any) -> Iterator[int]:
    """A real server on its own event loop in a thread; yields its port."""
    started: concurrent.futures.Future[tuple[asyncio.AbstractEventLoop, Server]]
    started = concurrent.futures.Future()

    async def serve() -> None:
        async with running_server(tmp_path, **config) as server:
            started.set_result((asyncio.get_running_loop(), server))
            await server.serve_forever()

    def run() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            raise

    thread = threading.Thread(target=run, name="test-server")
    thread.start()
    loop, server = started.result(timeout=10 * UNIT)
    try:
        yield server.port
    finally:
        loop.call_soon_threadsafe(server.close)
        thread.join(timeout=10 * UNIT)
        assert not thread.is_alive()


def test_cli_agency_round_with_json_logs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``lottery agency --log-format json`` runs a whole round and logs JSON lines only."""
    rows = make_rows(12, winners=[5])
    bets = write_agency_file(tmp_path / "agency-1.csv", rows)
    with server_in_thread(tmp_path, agencies=1) as port:
        status = main(
            [
                "agency", "--id", "1", "--server", f"127.0.0.1:{port}", "--bets", str(bets),
                "--batch-max-amount", "5", "--log-format", "json", "--loop", "asyncio",
            ]
        )  # fmt: skip
    assert status == 0
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert events
    by_action = {event["action"]: event for event in events}
    assert by_action["apuestas_enviadas"]["cantidad"] == 12
    assert by_action["ganadores"]["dnis"] == rows[5][2]
