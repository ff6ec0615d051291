"""What a command imports at start: `lottery agency --help` pays for argparse and the settings only.

The start-up *time* is measured by scripts/bench_agency.py (docs/PERFORMANCE.md);
these tests check the import structure that keeps it short.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import lottery
from lottery import config
from lottery.store import SYNC_MODES

pytestmark = pytest.mark.timeout(60)


def imported_by(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_agency_help_imports_no_asyncio_structlog_rich_server_or_store() -> None:
    """Parsing ``agency --help`` loads neither the event loop, the log library nor the server."""
    code = (
        "import contextlib, io\n"
        "from lottery.cli import build_parser\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    build_parser().parse_args(['agency', '--help'])"
    )
    modules = imported_by(code)
    for heavy in ("asyncio", "structlog", "rich", "yaml", "lottery.server", "lottery.store"):
        assert heavy not in modules


def test_agency_help_imports_no_openssl_configparser_or_difflib() -> None:
    """What only some runs need (a digest, a config.ini, a misspelt name) loads when they do."""
    code = (
        "import contextlib, io\n"
        "from lottery.cli import build_parser\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    build_parser('agency').parse_args(['agency', '--help'])"
    )
    modules = imported_by(code)
    for needless in ("_hashlib", "configparser", "difflib"):
        assert needless not in modules


def test_the_lottery_package_exports_lazily() -> None:
    """``import lottery`` loads no submodule; each exported name still resolves to its class."""
    assert "lottery.server" not in imported_by("import lottery")
    for name in lottery.__all__:
        assert getattr(lottery, name) is not None
    from lottery.server import Server

    assert lottery.Server is Server
    with pytest.raises(AttributeError):
        _ = lottery.NoSuchThing  # type: ignore[attr-defined]


def test_logging_imports_structlog_without_rich_and_leaves_rich_importable() -> None:
    """structlog is loaded on the first log call, without rich, and rich can still be imported."""
    code = (
        "from lottery.log import get_logger\n"
        "import sys\n"
        "assert 'structlog' not in sys.modules\n"
        "get_logger().info('x', result='success')\n"
        "assert 'structlog' in sys.modules and 'rich' not in sys.modules\n"
        "import rich.console"
    )
    assert "rich.console" in imported_by(code)


def test_an_agency_logs_without_importing_structlog() -> None:
    """The agency's console lines are written by lottery.log itself (structlog is start-up time)."""
    code = (
        "import io, sys\n"
        "from lottery.log import configure, get_logger\n"
        "configure('INFO', 'console', io.StringIO(), light=True)\n"
        "get_logger(agencia=1).info('x', result='success')\n"
        "assert 'structlog' not in sys.modules"
    )
    assert "structlog" not in imported_by(code)


def test_the_sync_modes_the_settings_offer_are_the_stores() -> None:
    """config's copy of the store's sync modes (kept to spare the import) is the store's own."""
    assert config.SYNC_MODES == SYNC_MODES


@pytest.mark.parametrize(
    "argv",
    [
        ["agency", "--id", "3", "--server", "h:1", "--bets", "f.csv", "--quiet"],
        ["server", "--agencies", "5", "--port", "0", "--new-round"],
        ["status", "--server", "h:1", "--json"],
    ],
)
def test_a_parser_built_for_one_command_parses_it_as_the_whole_parser_does(
    argv: list[str],
) -> None:
    """Leaving the other commands' settings out changes nothing for the command given."""
    from lottery.cli import build_parser

    assert build_parser(argv[0]).parse_args(argv) == build_parser().parse_args(argv)
