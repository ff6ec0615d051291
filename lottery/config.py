"""Settings of the server and of an agency, and where they come from.

Each setting is looked up in order: command-line flag, environment variable,
config file, default (tp0's precedence). The names are tp0's: the server's
``config.ini`` ``[DEFAULT]`` section and environment use ``SERVER_PORT``,
``SERVER_LISTEN_BACKLOG``, ``LOGGING_LEVEL``...; the agency's ``config.yaml``
uses ``server.address``, ``log.level``, ``batch.maxAmount`` and its environment
``CLI_ID``, ``CLI_SERVER_ADDRESS``, ``CLI_LOG_LEVEL``, ``CLI_BATCH_MAXAMOUNT``.

A bad value raises `ConfigError` with one line saying which setting, from
which source, and what is wrong. A name that is no setting (a typo such as
``SERVER_PROT``, tp0's ``SERVER_IP``) is not an error, since tp0 ignored
such names too, but it is reported with the closest real name
(`unknown_names`), and the command logs it as a warning.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError
from .log import FORMATS, LEVELS
from .models import DEFAULT_WINNING_NUMBER

SYNC_MODES = ("FULL", "NORMAL", "OFF")  # lottery.store's (tested): importing it costs 30 ms


def is_postgres_dsn(value: str) -> bool:
    """Whether ``value`` names a PostgreSQL database (``postgresql://...``)."""
    return value.startswith(("postgresql://", "postgres://"))


__all__ = [
    "AGENCY_OPTIONS",
    "DEFAULT_WINNING_NUMBER",
    "SERVER_OPTIONS",
    "AgencyConfig",
    "Option",
    "ServerConfig",
    "load_agency_config",
    "load_server_config",
    "parse_address",
    "parse_addresses",
    "store_location",
    "unknown_names",
]

DEFAULT_PORT = 12345
DEFAULT_BATCH_MAX_AMOUNT = 200
#: A year: longer waits are typos, and asyncio cannot schedule an infinite one.
MAX_SECONDS = 365 * 24 * 3600.0
#: The number that wins when none is configured (tp0's).


@dataclass(frozen=True)
class ServerConfig:
    """Everything `lottery.server.Server` needs to know."""

    agencies: int = 5
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    data_dir: str = "./data"
    #: ``postgresql://USER@HOST:PORT/DB``: the round lives there, shared by every
    #: server given it; empty: SQLite in ``data_dir``.
    store: str = ""
    listen_backlog: int = 128
    winning_number: int = DEFAULT_WINNING_NUMBER
    sync: str = "FULL"
    #: 0 means automatic: the agencies plus room for reconnects and tools.
    limit_connections: int = 0
    #: Most connections not yet admitted as an agency (0: automatic, 1024).
    limit_unauthenticated: int = 0
    #: Most of those from one address once their pool is full (0: automatic, 64).
    limit_per_address: int = 0
    #: STATUS answers a second, per connection and for the whole server.
    limit_status_rate: int = 10
    limit_status_global_rate: int = 100
    timeout_idle: float = 60.0
    timeout_winners: float = 30.0
    timeout_graceful_shutdown: float = 5.0
    # 8192: with 4096, a 5-agency round waited on fsyncs (1.17-1.28M bets/s
    # against 1.35M, 16384 no better); with 10,000 agencies the groups do
    # not fill either way (server ack p99 46 ms against 53; docs/PERFORMANCE.md).
    max_group_bets: int = 8192
    timeout_handshake: float = 10.0
    #: Agency secrets (see lottery.auth); empty: no authentication, as tp0.
    secrets_file: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    #: Seconds after start when the draw is made without the missing agencies (0: never).
    draw_deadline: float = 0.0
    #: How the number is drawn: "fixed" (winning_number, tp0) or "random" (docs/DRAW.md).
    draw: str = "fixed"
    #: Random draw: seconds after betting closes to wait for the agencies' reveals.
    reveal_deadline: float = 30.0
    #: This server's name among several over one shared store (docs/SCALING.md);
    #: empty: the host:port it listens on.
    server_id: str = ""
    #: Fault injection for scripts/chaos.py: seconds between the barrier opening
    #: and the draw (environment LOTTERY_FAULT_DRAW_DELAY only; no flag).
    fault_draw_delay: float = 0.0
    #: Port for Prometheus metrics over HTTP (0: no metrics endpoint).
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    #: Port of the HTTP listener: the round's page, /status.json, /metrics (None: none;
    #: 0 picks a free one). ``metrics_port`` is its old name, on ``metrics_host``.
    http_port: int | None = None
    http_host: str = "127.0.0.1"
    log_level: str = "INFO"
    log_format: str = "console"

    def __post_init__(self) -> None:
        if self.limit_connections and self.limit_connections < self.agencies:
            raise ConfigError(
                f"limit_connections={self.limit_connections} is below the {self.agencies} "
                "agencies, which all stay connected while they wait for the draw"
            )
        if self.http_port is not None and self.metrics_port not in (0, self.http_port):
            raise ConfigError(
                f"--http-port {self.http_port} and --metrics-port {self.metrics_port} differ: "
                "one HTTP listener serves the page and the metrics; drop --metrics-port"
            )

    @property
    def http_address(self) -> tuple[str, int] | None:
        """(host, port) of the HTTP listener, or None for none; --metrics-port is an alias."""
        if self.http_port is not None:
            return self.http_host, self.http_port
        if self.metrics_port:
            return self.metrics_host, self.metrics_port
        return None

    @property
    def connection_limit(self) -> int:
        # Room for every agency twice (a reconnect may overlap its old
        # connection) and for a thousand more: idle or slow connections cost
        # little, and each must finish its handshake within timeout_handshake.
        return self.limit_connections or self.agencies * 2 + 1024

    @property
    def unauthenticated_limit(self) -> int:
        return self.limit_unauthenticated or 1024

    @property
    def per_address_limit(self) -> int:
        return self.limit_per_address or 64


@dataclass(frozen=True)
class AgencyConfig:
    """Everything `lottery agency` needs to know."""

    id: int = 0
    #: One ``HOST:PORT``, or several, comma-separated (`servers`).
    server_address: str = f"127.0.0.1:{DEFAULT_PORT}"
    bets: str = ""
    batch_max_amount: int = DEFAULT_BATCH_MAX_AMOUNT
    # 16 batches (~128 KiB) in flight: with 8, a 5-agency round on 2 cores left
    # the cores a third idle waiting for acks (docs/PERFORMANCE.md, issue 13).
    max_in_flight: int = 16
    timeout: float = 30.0
    winners_attempts: int = 5
    winners_base_delay: float = 0.5
    #: Seconds one winners query may wait for its answer (the server holds it
    #: up to its timeout_winners, 30 s by default, before NOT_READY).
    winners_poll: float = 40.0
    #: Seconds the agency waits for the draw in all before it gives up.
    winners_wait: float = 600.0
    reconnect_attempts: int = 10
    #: Hex secret for a server with --secrets (prefer a file or the environment:
    #: a command line is visible to every user of the machine).
    secret: str = ""
    secret_file: str = ""
    tls_ca: str = ""
    #: Say DONE even when rows were rejected (they are left out of the round).
    allow_rejected: bool = False
    #: Where the agency keeps its draw nonce across restarts (empty: beside the bets file).
    state_dir: str = ""
    log_level: str = "INFO"
    log_format: str = "console"

    @property
    def servers(self) -> list[tuple[str, int]]:
        """``server_address`` as (host, port) pairs, in the order given."""
        return parse_addresses(self.server_address)


# -- value parsers: text in, value out, ValueError with a plain reason -----------


def integer(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(str(raw).strip())
        except ValueError:
            raise ValueError(f"{raw!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise ValueError(f"{value} must be {bound}")
        return value

    return parse


def seconds(raw: str) -> float:
    try:
        value = float(str(raw).strip())
    except ValueError:
        raise ValueError(f"{raw!r} is not a number of seconds") from None
    if not 0 < value <= MAX_SECONDS:  # also refuses nan and inf
        raise ValueError(f"{value} must be more than 0 and at most {MAX_SECONDS:g} seconds")
    return value


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def boolean(raw: str) -> bool:
    """A yes/no setting; on the command line it is a flag that takes no value."""
    value = str(raw).strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{raw!r} is not one of {', '.join(_TRUE + _FALSE)}")


def choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = str(raw).strip()
        for option in allowed:
            if value.lower() == option.lower():
                return option
        raise ValueError(f"{raw!r} is not one of {', '.join(allowed)}")

    return parse


def text(raw: str) -> str:
    value = str(raw).strip()
    if not value:
        raise ValueError("is empty")
    return value


def store_location(raw: str) -> str:
    """A PostgreSQL DSN (``postgresql://USER@HOST:PORT/DB``) for --store."""
    value = text(raw)
    if not is_postgres_dsn(value):
        raise ValueError(f"{value[:60]!r} is not postgresql://USER@HOST:PORT/DB")
    return value


def parse_address(raw: str) -> tuple[str, int]:
    """``HOST:PORT`` → (host, port)."""
    host, sep, port = str(raw).strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"{raw!r} is not HOST:PORT")
    return host.strip("[]"), integer(1, 65535)(port)


def parse_addresses(raw: str) -> list[tuple[str, int]]:
    """``HOST:PORT[,HOST:PORT...]`` → [(host, port), ...]; a bad entry is named by place."""
    entries = str(raw).split(",")
    if len(entries) == 1:
        return [parse_address(raw)]
    servers = []
    for n, entry in enumerate(entries, 1):
        try:
            if not entry.strip():
                raise ValueError("is empty")
            servers.append(parse_address(entry))
        except ValueError as exc:
            raise ValueError(f"server {n} of {len(entries)} in {raw!r}: {exc}") from None
    return servers


def addresses(raw: str | list[str]) -> str:
    """One address, or several comma-separated (or a YAML list); kept as text, spaces dropped."""
    if isinstance(raw, list):
        raw = ",".join(map(str, raw))
    parse_addresses(raw)
    return ",".join(entry.strip() for entry in str(raw).split(","))


@dataclass(frozen=True)
class Option:
    """One setting: its field, environment variable, config-file key, parser and help.

    The command line is generated from these tables (`lottery.cli.build_parser`),
    so a setting is named here once. ``flag`` is its command-line flag when not
    ``--`` plus the field's name with dashes; ``command_line=False`` keeps a
    setting off the command line. An empty ``file_key`` keeps it out of files.
    """

    field: str
    env: str
    file_key: str
    parse: Callable[[str], Any]
    help: str
    flag: str | None = None
    command_line: bool = True

    @property
    def flag_name(self) -> str:
        """The command-line flag, e.g. ``--data-dir``."""
        return self.flag or _flag(self.field)


_LEVELS_HELP = "log level: " + ", ".join(LEVELS)
_FORMATS_HELP = "log format: " + ", ".join(FORMATS)

SERVER_OPTIONS = (
    Option("agencies", "AGENCIES", "AGENCIES", integer(1, 100_000),
           "N, the agencies of the round"),
    Option("host", "SERVER_HOST", "SERVER_HOST", text, "address to listen on"),
    Option("port", "SERVER_PORT", "SERVER_PORT", integer(0, 65535),
           "TCP port; 0 picks a free one"),
    Option("data_dir", "SERVER_DATA_DIR", "SERVER_DATA_DIR", text, "where the store lives"),
    Option("store", "LOTTERY_STORE", "STORE", store_location,
           "postgresql://USER@HOST:PORT/DB: a PostgreSQL store several servers share "
           "(default: SQLite in --data-dir)"),
    Option("listen_backlog", "SERVER_LISTEN_BACKLOG", "SERVER_LISTEN_BACKLOG", integer(1, 65535),
           "connections the kernel queues before they are accepted"),
    Option("winning_number", "WINNING_NUMBER", "WINNING_NUMBER", integer(0, 9999),
           "the number that wins, 0..9999"),
    Option("sync", "SERVER_SYNC", "SERVER_SYNC", choice(*SYNC_MODES),
           "how hard each commit reaches the disk: " + ", ".join(SYNC_MODES)),
    Option("limit_connections", "SERVER_LIMIT_CONNECTIONS", "SERVER_LIMIT_CONNECTIONS",
           integer(0), "most open connections, at least N; unset: 2N+1024"),
    Option("limit_unauthenticated", "SERVER_LIMIT_UNAUTHENTICATED",
           "SERVER_LIMIT_UNAUTHENTICATED", integer(0),
           "most connections not yet admitted as an agency; unset: 1024"),
    Option("limit_per_address", "SERVER_LIMIT_PER_ADDRESS", "SERVER_LIMIT_PER_ADDRESS",
           integer(0), "most of those from one address when they fill their pool; unset: 64"),
    Option("limit_status_rate", "SERVER_LIMIT_STATUS_RATE", "SERVER_LIMIT_STATUS_RATE",
           integer(1), "STATUS answers a second per connection"),
    Option("limit_status_global_rate", "SERVER_LIMIT_STATUS_GLOBAL_RATE",
           "SERVER_LIMIT_STATUS_GLOBAL_RATE", integer(1), "STATUS answers a second in all"),
    Option("timeout_idle", "SERVER_TIMEOUT_IDLE", "SERVER_TIMEOUT_IDLE", seconds,
           "seconds before a silent connection is closed"),
    Option("timeout_winners", "SERVER_TIMEOUT_WINNERS", "SERVER_TIMEOUT_WINNERS", seconds,
           "seconds a winners query waits for the draw"),
    Option("timeout_graceful_shutdown", "SERVER_TIMEOUT_GRACEFUL_SHUTDOWN",
           "SERVER_TIMEOUT_GRACEFUL_SHUTDOWN", seconds, "seconds to finish work on SIGTERM"),
    Option("max_group_bets", "SERVER_MAX_GROUP_BETS", "SERVER_MAX_GROUP_BETS", integer(1),
           "most bets in one commit"),
    Option("metrics_port", "SERVER_METRICS_PORT", "SERVER_METRICS_PORT", integer(0, 65535),
           "serve Prometheus metrics on this port (the same listener as --http-port, on "
           "--metrics-host); unset: no metrics"),
    Option("timeout_handshake", "SERVER_TIMEOUT_HANDSHAKE", "SERVER_TIMEOUT_HANDSHAKE", seconds,
           "seconds a connection has to say who it is"),
    Option("secrets_file", "SERVER_SECRETS_FILE", "SERVER_SECRETS_FILE", text,
           "agency secrets file: agencies must authenticate", flag="--secrets"),
    Option("tls_cert", "SERVER_TLS_CERT", "SERVER_TLS_CERT", text,
           "TLS certificate (PEM); with --tls-key"),
    Option("tls_key", "SERVER_TLS_KEY", "SERVER_TLS_KEY", text, "TLS private key (PEM)"),
    Option("draw_deadline", "SERVER_DRAW_DEADLINE", "SERVER_DRAW_DEADLINE", seconds,
           "seconds after start to draw without the missing agencies; unset: never"),
    Option("draw", "DRAW", "DRAW", choice("fixed", "random"),
           "how the number is drawn: fixed (--winning-number) or random (docs/DRAW.md)"),
    Option("reveal_deadline", "REVEAL_DEADLINE", "REVEAL_DEADLINE", seconds,
           "random draw: seconds after betting closes to wait for the agencies' nonces"),
    Option("server_id", "SERVER_ID", "SERVER_ID", text,
           "this server's name in a shared store's round (docs/SCALING.md); unset: host:port"),
    # Fault injection for scripts/chaos.py: not a setting to offer operators.
    Option("fault_draw_delay", "LOTTERY_FAULT_DRAW_DELAY", "", seconds,
           "seconds between the barrier opening and the draw (chaos tests)", command_line=False),
    Option("metrics_host", "SERVER_METRICS_HOST", "SERVER_METRICS_HOST", text,
           "address for the metrics"),
    Option("http_port", "SERVER_HTTP_PORT", "SERVER_HTTP_PORT", integer(0, 65535),
           "serve the round's web page, /status.json and /metrics on this port (0 picks a "
           "free one); unset: none. --metrics-port is its old name"),
    Option("http_host", "SERVER_HTTP_HOST", "SERVER_HTTP_HOST", text,
           "address for --http-port; anything but loopback exposes /metrics to that network"),
    Option("log_level", "LOGGING_LEVEL", "LOGGING_LEVEL", choice(*LEVELS), _LEVELS_HELP),
    Option("log_format", "LOG_FORMAT", "LOG_FORMAT", choice(*FORMATS), _FORMATS_HELP),
)  # fmt: skip

AGENCY_OPTIONS = (
    Option("id", "CLI_ID", "id", integer(1, 2**32 - 1), "this agency's id, 1..N"),
    Option("server_address", "CLI_SERVER_ADDRESS", "server.address", addresses,
           "HOST:PORT of the server, or HOST:PORT,HOST:PORT,... of the round's servers "
           "(the agency moves to the next when one does not answer)", flag="--server"),
    Option("bets", "CLI_BETS_FILE", "bets.file", text, "the agency's CSV file"),
    Option("batch_max_amount", "CLI_BATCH_MAXAMOUNT", "batch.maxAmount", integer(1, 65535),
           "most bets per batch"),
    Option("max_in_flight", "CLI_BATCH_MAXINFLIGHT", "batch.maxInFlight", integer(1, 1024),
           "batches sent before their acks return"),
    Option("timeout", "CLI_TIMEOUT", "server.timeout", seconds,
           "seconds for connecting and for each reply"),
    Option("winners_attempts", "CLI_WINNERS_ATTEMPTS", "winners.attempts", integer(1, 100),
           "tries of the winners query"),
    Option("winners_base_delay", "CLI_WINNERS_BASEDELAY", "winners.baseDelay", seconds,
           "first back-off of the winners query, seconds"),
    Option("winners_poll", "CLI_WINNERS_POLL", "winners.poll", seconds,
           "seconds one winners query may wait for its answer (keep it above the "
           "server's --timeout-winners)"),
    Option("winners_wait", "CLI_WINNERS_WAIT", "winners.wait", seconds,
           "seconds to wait for the draw in all; then the agency gives up, "
           "naming the agencies still missing"),
    Option("reconnect_attempts", "CLI_RECONNECT_ATTEMPTS", "server.reconnectAttempts",
           integer(1), "tries to reach the server (with a list: rounds through it)"),
    # A command line is visible to every user of the machine: the secret itself
    # comes from the environment or the config file, or --secret-file.
    Option("secret", "CLI_SECRET", "auth.secret", text, "this agency's secret (hex)",
           command_line=False),
    Option("secret_file", "CLI_SECRET_FILE", "auth.secretFile", text,
           "file holding this agency's secret (hex)"),
    Option("tls_ca", "CLI_TLS_CA", "server.tlsCa", text,
           "CA certificate to trust for a TLS server (PEM)"),
    Option("allow_rejected", "CLI_ALLOW_REJECTED", "bets.allowRejected", boolean,
           "say DONE even if rows were rejected, leaving them out of the round"),
    Option("state_dir", "CLI_STATE_DIR", "state.dir", text,
           "where the draw nonce is kept across restarts; unset: beside the bets file"),
    Option("log_level", "CLI_LOG_LEVEL", "log.level", choice(*LEVELS), _LEVELS_HELP),
    Option("log_format", "CLI_LOG_FORMAT", "log.format", choice(*FORMATS), _FORMATS_HELP),
)  # fmt: skip


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def resolve(
    options: tuple[Option, ...],
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    file_values: Mapping[str, Any],
    file_name: str,
) -> dict[str, Any]:
    """Pick each option's value by precedence: flag > environment > file.

    Options found nowhere are left out, so the dataclass default applies.
    """
    values: dict[str, Any] = {}
    for opt in options:
        sources = (
            (opt.flag_name, flags.get(opt.field)),
            (f"environment variable {opt.env}", env.get(opt.env)),
            (f"{file_name} {opt.file_key}", file_values.get(opt.file_key)),
        )
        for where, raw in sources:
            if raw is None or raw == "":
                continue
            try:
                values[opt.field] = opt.parse(raw)
            except ValueError as exc:
                raise ConfigError(f"{where}: {exc}") from None
            break
    return values


#: tp0's names for settings that have another name here.
RENAMED = {
    "SERVER_IP": "SERVER_HOST",
    "CLI_LOOP_AMOUNT": "",  # tp0's sending loop: an agency here sends its file once
    "CLI_LOOP_PERIOD": "",
    "loop.amount": "",
    "loop.period": "",
}
#: Environment prefixes that only this program's settings use, so an unknown
#: name with one of them is a typo rather than some other program's variable.
ENV_PREFIXES = {"server": ("SERVER_",), "agency": ("CLI_",)}


def unknown_names(
    options: tuple[Option, ...],
    env: Mapping[str, str],
    file_values: Mapping[str, Any],
    file_name: str,
    prefixes: tuple[str, ...] = (),
) -> list[str]:
    """One plain sentence per name that looks like a setting but is none.

    Looks at every key of the config file, and at environment variables with
    one of ``prefixes`` (``SERVER_``, ``CLI_``); suggests the closest real
    name (`difflib.get_close_matches`), or tp0's rename from `RENAMED`.
    """
    file_keys = [opt.file_key for opt in options if opt.file_key]
    env_names = [opt.env for opt in options]
    found = [(f"{file_name} key", key, file_keys) for key in file_values if key not in file_keys]
    found += [
        ("environment variable", name, env_names)
        for name in sorted(env)
        if name not in env_names and (name.startswith(prefixes) or name in RENAMED)
    ]
    sentences = []
    for where, name, known in found:
        sentence = f"{where} {name} is not a setting and is ignored"
        if name in RENAMED:
            renamed = RENAMED[name]
            sentence += f"; it is {renamed} here" if renamed else "; tp0 used it, lottery does not"
        else:
            import difflib  # here: only a misspelt name needs it (start-up time)

            # Case-blind: tp0's configparser would have read server_port as SERVER_PORT.
            by_upper = {k.upper(): k for k in known}
            close = difflib.get_close_matches(name.upper(), list(by_upper), n=1)
            if close:
                sentence += f"; did you mean {by_upper[close[0]]}?"
        sentences.append(sentence)
    return sentences


def _read_ini(path: str | None) -> dict[str, str]:
    if not path:
        return {}
    import configparser  # here: only a config.ini needs it (start-up time)

    # No interpolation: a '%' in a value is that character, as the operator wrote it.
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep tp0's upper case
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except (OSError, configparser.Error, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path}: {_one_line(exc)}") from None
    values = dict(parser["DEFAULT"])
    # Settings live in [DEFAULT] (tp0's layout); keys of any other section
    # would be ignored, so they come back under a name no setting has.
    for section in parser.sections():
        for key in parser[section]:
            if key not in values:
                values[f"[{section}] {key}"] = parser[section][key]
    return values


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return " ".join(str(exc).split())


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _read_yaml(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    import yaml  # only agencies with a config file pay for the import

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path}: {_one_line(exc)}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    return _flatten(data)


def load_server_config(
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    config_file: str | None = None,
    warnings: list[str] | None = None,
) -> ServerConfig:
    """The server's settings from flags, environment and ``config.ini``.

    Names that are no setting are appended to ``warnings``, if given.
    """
    file_values = _read_ini(config_file)
    if warnings is not None:
        warnings += unknown_names(
            SERVER_OPTIONS, env, file_values, config_file or "", ENV_PREFIXES["server"]
        )
    values = resolve(SERVER_OPTIONS, flags, env, file_values, config_file or "")
    return ServerConfig(**values)


def load_agency_config(
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    config_file: str | None = None,
    warnings: list[str] | None = None,
) -> AgencyConfig:
    """An agency's settings from flags, environment and ``config.yaml``.

    Names that are no setting are appended to ``warnings``, if given.
    """
    file_values = _read_yaml(config_file)
    if warnings is not None:
        warnings += unknown_names(
            AGENCY_OPTIONS, env, file_values, config_file or "", ENV_PREFIXES["agency"]
        )
    values = resolve(AGENCY_OPTIONS, flags, env, file_values, config_file or "")
    if "id" not in values:
        raise ConfigError("agency id is missing: pass --id or set CLI_ID")
    return AgencyConfig(**values)
