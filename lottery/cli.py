"""The ``lottery`` command: server, agency, status, ping, make-secrets, export, verify and draw.

Exit status: 0 when the command did all it was asked; 1 when it ran but did
not (the round failed, rows were rejected, the store failed); 2 for a bad
command line or configuration value; 130 or 143 for an agency stopped by
SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

# Each command imports what it runs, inside its function: `lottery agency
# --help` must start in 60 ms, and an agency has no use for the server, its
# store, the draw's verification or rich (docs/PERFORMANCE.md).
from . import __version__
from .config import (
    AGENCY_OPTIONS,
    DEFAULT_BATCH_MAX_AMOUNT,
    SERVER_OPTIONS,
    AgencyConfig,
    Option,
    ServerConfig,
    boolean,
    load_agency_config,
    load_server_config,
    parse_addresses,
    store_location,
)
from .errors import AgencyError, ConfigError, InvalidBet, LotteryError, StoreError

if TYPE_CHECKING:
    import asyncio
    import ssl

    from .client import AsyncAgency
    from .server import Server
    from .store import SQLiteStore
    from .store.blocking import BlockingPostgres
    from .web import HttpServer

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# What --help says; plain text, as a terminal shows it (the docstring is reST).
DESCRIPTION = "A lottery service: a central server, and the agencies that send it their bets."
EPILOG = (
    "Each command has its own --help. Exit status: 0 done; 1 ran but failed "
    "(round, rows, store); 2 bad command line or configuration; "
    "130/143 an agency stopped by SIGINT/SIGTERM."
)
#: The subcommands, as `build_parser` adds them.
COMMANDS = ("server", "agency", "status", "ping", "make-secrets", "export", "verify", "draw")
# tp0 ej5: an agency with no bets file sends the one bet these variables hold.
TP0_SINGLE_BET_ENV = ("NOMBRE", "APELLIDO", "DOCUMENTO", "NACIMIENTO", "NUMERO")


def loop_factory(name: str = "auto") -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's loop when installed (or asked for), else asyncio's own."""
    import asyncio

    if name in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if name == "uvloop":
                raise ConfigError("--loop uvloop: uvloop is not installed") from None
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="config file (server: config.ini, agency: config.yaml)")
    parser.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop (default auto: uvloop when installed)",
    )


def _add_options(
    parser: argparse.ArgumentParser, options: Sequence[Option], defaults: object, file_name: str
) -> None:
    """One flag per setting of ``options`` that belongs on the command line."""
    for opt in options:
        if not opt.command_line:
            continue
        default = getattr(defaults, opt.field)
        # A zero or empty default means "unset", which the option's help explains.
        shown = f"default {default:g}; " if isinstance(default, float) else f"default {default}; "
        where = (shown if default else "") + f"env {opt.env}"
        if opt.file_key:
            where += f", {file_name} {opt.file_key}"
        # Values stay strings: lottery.config checks them, so that a bad one
        # is the same one-line error (exit 2) as one from the environment or a file.
        # A yes/no setting is a flag that takes no value.
        extra: dict[str, Any] = (
            {"action": "store_const", "const": "true"} if opt.parse is boolean else {}
        )
        parser.add_argument(
            opt.flag_name, dest=opt.field, help=f"{opt.help} ({where})".replace("%", "%%"), **extra
        )


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``lottery`` command line; given ``command``, the other commands are left out.

    The server's and the agency's settings are most of the parser: a process
    that runs one of them need not build the others (start-up time).
    """
    parser = argparse.ArgumentParser(prog="lottery", description=DESCRIPTION, epilog=EPILOG)
    # A known command needs its own subparser only (each costs start-up time);
    # anything else (``--help``, a typo) gets them all, to list them.
    only = command if command in COMMANDS else None

    def wanted(name: str) -> bool:
        return only in (None, name)

    parser.add_argument("--version", action="version", version=f"lottery {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    if wanted("server"):
        server = commands.add_parser("server", help="run the central server")
        if command in (None, "server"):
            _add_options(server, SERVER_OPTIONS, ServerConfig(), "config.ini")
        fresh = server.add_mutually_exclusive_group()
        fresh.add_argument(
            "--new-round",
            action="store_true",
            help="start a new round: the data directory's round moves to DATA_DIR/archive/<id>/",
        )
        fresh.add_argument(
            "--new-round-if-finished",
            action="store_true",
            help="the same, but only if that round's draw is made (else it resumes)",
        )
        _common(server)

    if wanted("agency"):
        agency = commands.add_parser("agency", help="run one agency: send bets, get winners")
        if command in (None, "agency"):
            _add_options(agency, AGENCY_OPTIONS, AgencyConfig(), "config.yaml")
        agency.add_argument(
            "--stats-file", help="write the round's figures (ack latencies) as JSON"
        )
        agency.add_argument(
            "--quiet",
            action="store_true",
            help="no progress bar on a terminal (log lines unchanged)",
        )
        _common(agency)

    if wanted("status"):
        status = commands.add_parser("status", help="show the round: agencies, bets, the draw")
        status.add_argument(
            "--server",
            required=True,
            help="HOST:PORT of the server (a list: the first that answers)",
        )
        status.add_argument("--json", action="store_true", help="print the raw JSON")
        status.add_argument("--timeout", type=float, default=5.0)
        status.add_argument("--tls-ca", help="CA certificate to trust for a TLS server (PEM)")
        status.add_argument(
            "--token-file",
            "--secrets",
            dest="token_file",
            help="a secrets file with an operator: line; with it a server with secrets shows every "
            "agency, without it only the round's summary",
        )

    if wanted("ping"):
        ping = commands.add_parser("ping", help="exit 0 if a server answers (health checks)")
        ping.add_argument("server", help="HOST:PORT of the server (a list: the first that answers)")
        ping.add_argument("--timeout", type=float, default=5.0)
        ping.add_argument("--tls-ca", help="CA certificate to trust for a TLS server (PEM)")

    if wanted("make-secrets"):
        make_secrets = commands.add_parser(
            "make-secrets", help="write a secrets file for N agencies"
        )
        make_secrets.add_argument("agencies", type=int, help="N: agencies 1..N get a secret")
        make_secrets.add_argument("file", help="the file to create (mode 0600; never overwritten)")
        make_secrets.add_argument(
            "--per-agency-dir",
            metavar="DIR",
            help="also write DIR/agency-<id>.secret, one per agency, for its --secret-file",
        )

    if wanted("export"):
        export = commands.add_parser("export", help="write the stored bets as tp0's bets.csv")
        _store_options(export)
        export.add_argument("--csv", help="output file; - for standard output")
        export.add_argument(
            "--excel-safe",
            action="store_true",
            help="prefix with ' every name a spreadsheet would run as a formula (= + - @)",
        )
        export.add_argument(
            "--draw-record", help="write the draw record (JSON; docs/DRAW.md) to this file"
        )

    if wanted("verify"):
        verify = commands.add_parser("verify", help="check a draw record against the bets")
        verify.add_argument("--record", required=True, help="the draw record (JSON)")
        bets = verify.add_mutually_exclusive_group(required=True)
        bets.add_argument("--csv", help="the bets, as `lottery export --csv` wrote them")
        _store_options(verify, bets)

    if wanted("draw"):
        draw = commands.add_parser("draw", help="give the random draw an outside beacon")
        _store_options(draw)
        draw.add_argument("--beacon", required=True, help="the beacon value, hex (after betting)")
    return parser


def _store_options(
    parser: argparse.ArgumentParser, group: argparse._MutuallyExclusiveGroup | None = None
) -> None:
    """--data-dir (SQLite) or --store (PostgreSQL): where a reading command finds the round."""
    where = group or parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--data-dir", help="the server's data directory (SQLite)")
    where.add_argument(
        "--store", type=_store_flag, help="postgresql://USER@HOST:PORT/DB: the server's --store"
    )


def _store_flag(raw: str) -> str:
    try:
        return store_location(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if v is not None}


# -- server ---------------------------------------------------------------------------------


async def _serve(config: ServerConfig) -> None:
    import asyncio
    import signal

    from .server import Server

    server = Server(config)
    http = None
    if config.http_address is not None:  # first, so a taken port fails before the store opens
        http = await _serve_http(server, config)
    try:
        await server.start()
    except BaseException:
        if http is not None:
            await http.aclose()
        raise
    if http is not None:
        http.server_started()
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    signals = 0

    def on_signal() -> None:
        # First signal: graceful shutdown. Second: stop waiting for it.
        nonlocal signals
        signals += 1
        if signals == 1:
            server.close()
        elif main_task is not None:
            main_task.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        await server.serve_forever()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if http is not None:
            await http.aclose()


async def _serve_http(server: Server, config: ServerConfig) -> HttpServer:
    """The HTTP listener of --http-port (or --metrics-port): page, status, metrics."""
    from .auth import load_operator_token
    from .log import get_logger
    from .metrics import MISSING_DEPENDENCY, make_metrics
    from .web import Access, serve_http  # h11 only when asked for

    assert config.http_address is not None
    host, port = config.http_address
    log = get_logger()
    try:
        metrics = make_metrics(server)
    except ConfigError:
        if config.http_port is None:  # --metrics-port asked for metrics above all
            raise
        metrics = None
        log.warning("http", result="in_progress", detalle="no /metrics: " + MISSING_DEPENDENCY)
    access = Access()
    if config.secrets_file:
        access = Access(True, load_operator_token(config.secrets_file))
        if access.token is None:
            log.warning(
                "http",
                result="in_progress",
                detalle=f"{config.secrets_file} has no operator line: /status.json refuses all",
            )
    return await serve_http(server, host, port, metrics=metrics, access=access, started=False)


def run_server(args: argparse.Namespace) -> int:
    import asyncio

    from .advice import log_advice
    from .fdlimit import raise_nofile_limit
    from .gcpolicy import tune as tune_gc
    from .log import configure, get_logger
    from .store.archive import archive_round

    warnings: list[str] = []
    config = load_server_config(_flags(args), os.environ, args.config, warnings)
    configure(config.log_level, config.log_format)
    log_advice(warnings)
    raise_nofile_limit()  # the server logs the limit it got and sizes its connections to it
    tune_gc()  # no full garbage collection pausing a round (lottery/gcpolicy.py)
    if (args.new_round or args.new_round_if_finished) and config.store:
        raise ConfigError("--new-round archives a --data-dir round; for --store, use a new DB")
    if args.new_round or args.new_round_if_finished:
        archived = archive_round(config.data_dir, only_if_finished=args.new_round_if_finished)
        if archived is not None:
            get_logger().info("ronda_archivada", result="success", carpeta=str(archived))
    with asyncio.Runner(loop_factory=loop_factory(args.loop)) as runner:
        try:
            runner.run(_serve(config))
        except OSError as exc:  # e.g. the port is taken
            get_logger().error("server", result="fail", error=str(exc))
            return EXIT_FAILED
        except asyncio.CancelledError:  # a second signal: stop without waiting
            get_logger().warning("shutdown", result="fail", motivo="forced by a second signal")
            return EXIT_FAILED
    return EXIT_OK


# -- agency ---------------------------------------------------------------------------------


def _single_bet_from_env() -> tuple[str, ...] | None:
    values = tuple(os.environ.get(name, "") for name in TP0_SINGLE_BET_ENV)
    return values if all(values) else None


def _agency_secret(config: AgencyConfig) -> bytes | None:
    from pathlib import Path

    from .auth import parse_secret

    if config.secret_file:
        try:
            text = Path(config.secret_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--secret-file {config.secret_file}: {exc.strerror}") from None
        return parse_secret(text, f"--secret-file {config.secret_file}")
    if config.secret:
        return parse_secret(config.secret, "CLI_SECRET")
    return None


def _client_tls(ca_file: str | None) -> ssl.SSLContext | None:
    import ssl

    from .connection import tls_context

    if not ca_file:
        return None
    try:
        return tls_context(ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"--tls-ca {ca_file}: {exc}") from None


def _write_stats(path: str, agency: AsyncAgency, acknowledged: int) -> None:
    import json
    from pathlib import Path

    figures = {
        "agency": agency.agency_id,
        "acknowledged": acknowledged,
        "batches_sent": agency.batches_sent,
        "reconnects": agency.reconnects,
        "ack_latencies_ms": [round(s * 1000, 3) for s in agency.ack_latencies],
    }
    Path(path).write_text(json.dumps(figures), encoding="utf-8")


class Interrupt:
    """The signal that stopped an agency, and the agency, to say what it had stored."""

    def __init__(self, agency_id: int) -> None:
        self.agency_id = agency_id
        self.signum = 0
        self.agency: AsyncAgency | None = None

    @property
    def exit_status(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM

    def log(self) -> None:
        """One line: which signal, what is stored, how to resume."""
        import signal

        from .log import get_logger

        stored = self.agency.bets_acknowledged if self.agency is not None else 0
        get_logger(agencia=self.agency_id).warning(
            "interrumpida", result="fail", senal=signal.Signals(self.signum).name,
            almacenadas=stored,
            detalle="every acknowledged bet is on the server; run the same command again "
            "to resume: stored bets are skipped, not sent twice",
        )  # fmt: skip


async def _until_signal(round_: Coroutine[Any, Any, int], interrupt: Interrupt) -> int:
    """Run an agency's round; SIGINT or SIGTERM cancels it, so its cleanup runs."""
    import asyncio
    import signal

    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None

    def on_signal(signum: int) -> None:
        if not interrupt.signum:  # the first one counts; cleanup is already under way
            interrupt.signum = signum
            task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        return await round_
    except asyncio.CancelledError:
        if not interrupt.signum:
            raise
        interrupt.log()
        return interrupt.exit_status
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _agency_round(
    config: AgencyConfig,
    stats_file: str | None = None,
    console: Any = None,
    interrupt: Interrupt | None = None,
) -> int:
    import asyncio
    from pathlib import Path

    from .client import AsyncAgency
    from .log import get_logger
    from .participant import DrawParticipant, nonce_file
    from .progress import agency_progress, count_lines

    log = get_logger(agencia=config.id)
    single = None if config.bets else _single_bet_from_env()
    if not config.bets and single is None:
        raise ConfigError(
            "no bets: pass --bets FILE (or CLI_BETS_FILE), or set " + " ".join(TP0_SINGLE_BET_ENV)
        )
    state_dir = config.state_dir or (str(Path(config.bets).parent) if config.bets else "")
    draw = DrawParticipant(config.id, nonce_file(state_dir, config.id) if state_dir else None)
    agency = AsyncAgency(
        config.id,
        servers=config.servers,
        batch_max_amount=config.batch_max_amount,
        max_in_flight=config.max_in_flight,
        timeout=config.timeout,
        winners_attempts=config.winners_attempts,
        winners_base_delay=config.winners_base_delay,
        winners_timeout=config.winners_poll,
        winners_wait=config.winners_wait,
        reconnect_attempts=config.reconnect_attempts,
        secret=_agency_secret(config),
        tls=_client_tls(config.tls_ca),
        draw=draw,
    )
    if interrupt is not None:
        interrupt.agency = agency
    refusal = None
    acknowledged = rejected = 0
    async with agency:
        if single is not None:
            await agency.send_bet(single)
            await agency.notify()
            winners = await agency.winners()
        else:
            if console is not None:  # a person is watching: show the bar while sending
                total = await asyncio.to_thread(count_lines, config.bets)
                async with agency_progress(agency, sys.stderr, total=total, console=console):
                    report = await agency.send_bets(config.bets)
            else:
                report = await agency.send_bets(config.bets)
            acknowledged = report.acknowledged
            log.info(
                "apuestas_enviadas", result="success", cantidad=report.acknowledged,
                omitidas=report.skipped,
            )  # fmt: skip
            refusal = report.done_refusal(config.allow_rejected)
            if refusal is None:
                await agency.notify()
                winners = await agency.winners()
            rejected = len(report.rejected)
            if rejected:
                log.error("apuestas_rechazadas", result="fail", cantidad=rejected)
    if refusal is not None:
        # Rows were rejected: the valid bets are stored, and the round waits
        # for this agency's rerun with the rows fixed.
        log.error("ronda", result="fail", error=refusal)
    else:
        log.info("ganadores", result="success", dnis=" ".join(winners) or "-")
    if stats_file:
        await asyncio.to_thread(_write_stats, stats_file, agency, acknowledged)
    if agency.receipt is not None and not agency.receipt.ok:  # logged as action: recibo
        return EXIT_FAILED
    # Rejected rows fail the run even when allowed: the round goes on without them.
    return EXIT_FAILED if refusal is not None or rejected else EXIT_OK


def _import_agency() -> None:
    """Import what an agency runs, with the collector off, then freeze it all.

    Start-up makes tens of thousands of objects (modules, classes, functions)
    that live as long as the process and no garbage: collecting during the
    imports finds nothing, and later collections would walk them all again.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        import asyncio  # noqa: F401
        import ssl  # noqa: F401

        from . import advice, client, participant, progress  # noqa: F401
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def run_agency(args: argparse.Namespace) -> int:
    _import_agency()

    from .advice import batch_cap_advice
    from .log import configure, reset
    from .progress import console_for, log_stream, progress_wanted

    warnings: list[str] = []
    config = load_agency_config(_flags(args), os.environ, args.config, warnings)
    # tp0's default of 200 is near what a frame holds: only a chosen size is worth a word.
    if config.bets and config.batch_max_amount != DEFAULT_BATCH_MAX_AMOUNT:
        warnings += batch_cap_advice(config.bets, config.batch_max_amount)
    # On a terminal, a progress bar; then log lines must print above it, through
    # the same console. Off a terminal: the log lines only, as tp0 reads them.
    console = None
    if config.bets and progress_wanted(sys.stderr, quiet=args.quiet, log_format=config.log_format):
        console = console_for(sys.stderr)
    # Light: an agency's few console lines need no structlog (its import is start-up time).
    configure(
        config.log_level, config.log_format, log_stream(console) if console else None, light=True
    )
    try:
        return _run_agency(args, config, console, warnings)
    finally:
        reset()


def _run_agency(
    args: argparse.Namespace, config: AgencyConfig, console: Any, warnings: list[str]
) -> int:
    import asyncio

    from .advice import log_advice
    from .log import get_logger

    log_advice(warnings, agencia=config.id)
    with asyncio.Runner(loop_factory=loop_factory(args.loop)) as runner:
        interrupt = Interrupt(config.id)
        try:
            return runner.run(
                _until_signal(_agency_round(config, args.stats_file, console, interrupt), interrupt)
            )
        except InvalidBet as exc:
            get_logger().error("apuesta_enviada", result="fail", error=str(exc))
            return EXIT_FAILED
        except AgencyError as exc:
            get_logger(agencia=config.id).error("ronda", result="fail", error=str(exc))
            return EXIT_FAILED


# -- status and ping ------------------------------------------------------------------------


def _server_addresses(raw: str, flag: str) -> list[tuple[str, int]]:
    try:
        return parse_addresses(raw)
    except ValueError as exc:
        raise ConfigError(f"{flag}: {exc}") from None


def run_status(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from .auth import load_operator_token
    from .servers import first_status
    from .status import render as render_status

    servers = _server_addresses(args.server, "--server")
    token = None
    if args.token_file:
        token = load_operator_token(args.token_file)
        if token is None:
            raise ConfigError(f"--token-file {args.token_file}: no operator: line")
    tls = _client_tls(args.tls_ca)
    _, status = asyncio.run(first_status(servers, args.timeout, tls, token))
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        render_status(status, sys.stdout)
    return EXIT_OK


def run_ping(args: argparse.Namespace) -> int:
    import asyncio

    from .servers import first_status
    from .status import summary

    servers = _server_addresses(args.server, "server")
    tls = _client_tls(args.tls_ca)
    try:
        where, status = asyncio.run(first_status(servers, args.timeout, tls))
    except (OSError, LotteryError) as exc:
        print(f"lottery ping: {args.server} did not answer: {str(exc) or type(exc).__name__}")
        return EXIT_FAILED
    print(f"lottery ping: {where} answers; {summary(status)}")
    return EXIT_OK


def run_make_secrets(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .auth import make_secrets

    if not 1 <= args.agencies <= 100_000:
        raise ConfigError(f"agencies: {args.agencies} must be from 1 to 100000")
    make_secrets(args.agencies, args.file, per_agency_dir=args.per_agency_dir)
    print(f"wrote secrets for agencies 1..{args.agencies} to {args.file} (mode 0600)")
    if args.per_agency_dir:
        directory = Path(args.per_agency_dir)
        print(f"wrote {directory / 'agency-<id>.secret'} for each agency (mode 0600)")
        print(f"give agency 1 only its own file: --secret-file {directory / 'agency-1.secret'}")
    else:
        print(
            "give each agency its own line's secret (CLI_SECRET or --secret-file), never the file"
        )
    return EXIT_OK


# -- export ---------------------------------------------------------------------------------


def _open_data_dir(data_dir: str) -> SQLiteStore:
    from pathlib import Path

    from .store import DB_FILENAME, SQLiteStore

    if not (Path(data_dir) / DB_FILENAME).exists():
        raise ConfigError(f"--data-dir {data_dir}: no {DB_FILENAME} there")
    return SQLiteStore(data_dir)


def _open_reader(args: argparse.Namespace) -> SQLiteStore | BlockingPostgres:
    """The round a reading command was pointed at: --store (PostgreSQL) or --data-dir."""
    if args.store:
        from .store.blocking import BlockingPostgres

        return BlockingPostgres(args.store)
    return _open_data_dir(args.data_dir)


def run_export(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from .csvfiles import write_bets_csv
    from .log import configure, get_logger

    configure()
    if not (args.csv or args.draw_record):
        raise ConfigError("export: pass --csv FILE, --draw-record FILE, or both")
    store = _open_reader(args)
    try:
        if args.csv == "-":  # the log line goes to stderr, so stdout is the CSV alone
            sys.stdout.reconfigure(newline="", encoding="utf-8")  # type: ignore[union-attr]  # keep the CRLFs
            count = write_bets_csv(store.bets(), sys.stdout, excel_safe_cells=args.excel_safe)
            sys.stdout.flush()
        elif args.csv:
            with open(args.csv, "w", newline="", encoding="utf-8") as out:
                count = write_bets_csv(store.bets(), out, excel_safe_cells=args.excel_safe)
        if args.csv:
            get_logger().info("export", result="success", cantidad=count, archivo=args.csv)
        if args.draw_record:
            record = draw_record(store)
            Path(args.draw_record).write_text(json.dumps(record, indent=1) + "\n", "utf-8")
            get_logger().info("export", result="success", archivo=args.draw_record,
                              numero=record["number"])  # fmt: skip
    finally:
        store.close()
    return EXIT_OK


def draw_record(store: SQLiteStore | BlockingPostgres) -> dict[str, Any]:
    """The draw record of a drawn store (`ConfigError` if it is not drawn)."""
    from .draw import build_record

    state = store.draw_state()
    if not state.drawn or state.number is None:
        raise ConfigError("export --draw-record: the draw is not made yet")
    return build_record(
        mode=state.mode,
        agencies=store.round_agencies(),
        number=state.number,
        bets=store.bets(),
        seed=state.seed,
        commitments=state.commitments,
        reveals=state.reveals,
        beacon=state.beacon,
        receipts=state.receipts,
    )


def _csv_bets(path: str) -> Iterator[tuple[int, str, str, str, str, int]]:
    """The bets of a ``bets.csv``, checked row by row (`VerifyError` names the line)."""
    import csv

    from .csvfiles import read_bets_csv
    from .draw import VerifyError

    try:
        for line, row in enumerate(read_bets_csv(path), 1):
            if len(row) != 6 or not row[0].isdigit() or not row[5].isdigit():
                raise VerifyError(f"{path} line {line}: not a bets.csv row: {row!r}"[:200])
            yield int(row[0]), row[1], row[2], row[3], row[4], int(row[5])
    except (UnicodeDecodeError, csv.Error) as exc:
        raise VerifyError(f"{path}: not a bets.csv file: {exc}") from None


def run_verify(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from .draw import VerifyError, verify_record

    try:
        record = json.loads(Path(args.record).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"--record {args.record}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"--record {args.record}: not JSON: {exc}") from None
    store = _open_reader(args) if args.data_dir or args.store else None
    try:
        if args.csv is not None and not Path(args.csv).is_file():
            raise ConfigError(f"--csv {args.csv}: no such file")
        bets = store.bets() if store is not None else _csv_bets(args.csv)
        receipts = store.draw_state().receipts if store is not None else None
        try:
            checked = verify_record(record, bets, receipts)
        except VerifyError as exc:
            malformed = str(exc).startswith(("record:", args.csv or "\0"))
            if malformed:
                raise ConfigError(str(exc)) from None
            print(f"lottery verify: FAIL: {exc}")
            return EXIT_FAILED
    finally:
        if store is not None:
            store.close()
    for line in checked:
        print(f"ok: {line}")
    print(f"lottery verify: PASS ({record['mode']} draw, number {record['number']})")
    return EXIT_OK


def run_draw(args: argparse.Namespace) -> int:
    from .draw import MODE_RANDOM

    try:
        beacon = bytes.fromhex(args.beacon)
    except ValueError:
        raise ConfigError(f"--beacon: not hex: {args.beacon[:40]!r}") from None
    if not 1 <= len(beacon) <= 1024:
        raise ConfigError("--beacon: must be 1 to 1024 bytes")
    store = _open_reader(args)
    try:
        if store.draw_mode != MODE_RANDOM:
            from .store.postgres import safe_dsn

            where = safe_dsn(args.store) if args.store else args.data_dir
            raise ConfigError(f"{where}: this round's draw is not random")
        store.set_beacon(beacon)
    finally:
        store.close()
    print(f"lottery draw: beacon {beacon.hex()} recorded; the draw will mix it in")
    return EXIT_OK


def run() -> NoReturn:
    """The ``lottery`` command (and ``python -m lottery``): `main`, then exit at once.

    A process that is done has nothing left to free: tearing down its modules
    and objects one by one took the server and each agency 20 to 40 ms of CPU
    at exit (a tenth of an agency's start-up). So, as mypy's ``hard_exit``
    does, it leaves with `os._exit` once its output is out: by then `main`
    has closed every file and joined every thread it started (the store's,
    the executor's); the ``atexit`` functions still run (the log's queued
    lines, coverage's data), and the standard streams are flushed. Output
    that cannot be written (a full disk) is said on stderr and fails the
    command with 120, as the interpreter's own exit does; a reader that
    went away (a broken pipe) is no failure of the command.
    """
    code = main()
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):  # the reader left, or the stream was closed
            pass
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.write(2, f"lottery: the output was not written: {exc}\n".encode())
            code = code or 120
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else list(argv)
    # The command is the first argument (the top level has no option taking a value).
    args = build_parser(given[0] if given else None).parse_args(given)
    commands = {
        "server": run_server,
        "agency": run_agency,
        "export": run_export,
        "verify": run_verify,
        "draw": run_draw,
        "status": run_status,
        "ping": run_ping,
        "make-secrets": run_make_secrets,
    }
    try:
        return commands[args.command](args)
    except ConfigError as exc:
        print(f"lottery {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (StoreError, LotteryError, OSError) as exc:
        # Never an empty message: some errors (a bare TimeoutError) carry no text.
        print(f"lottery {args.command}: {exc or type(exc).__name__}", file=sys.stderr)
        return EXIT_FAILED
