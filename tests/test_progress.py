"""lottery.progress: when the bar is shown, what it shows, its task's lifetime, log lines."""

from __future__ import annotations

import asyncio
import io
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from rich.console import Console

from lottery import progress
from lottery.log import configure, get_logger
from lottery.progress import (
    agency_progress,
    console_for,
    count_lines,
    log_stream,
    progress_wanted,
)

pytestmark = pytest.mark.timeout(30)

#: How long a test waits for a redraw that should come within milliseconds.
WAIT = 5.0
_CSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
LONG_LINE = (
    "2026-11-29 10:00:00 INFO     action: apuesta_rechazada | result: fail | "
    "archivo: agency-3.csv | linea: 42 | motivo: [red]no[/red] :x: numero 'abc' is not a "
    "number | agencia: 3"
)


class FakeAgency:
    """The counters `agency_progress` reads, set by the test."""

    def __init__(self) -> None:
        self.agency_id = 3
        self.bets_read = 0
        self.bets_sent = 0
        self.bets_acknowledged = 0
        self.reconnects = 0
        self.waiting_for: str | None = None


class FakeStream(io.StringIO):
    """A text stream that says whether it is a terminal."""

    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


class Screen(io.StringIO):
    """What a terminal received; `wrote` is set on every write (the test's hook)."""

    def __init__(self) -> None:
        super().__init__()
        self.wrote = asyncio.Event()

    def write(self, text: str) -> int:
        self.wrote.set()
        return super().write(text)


def terminal(screen: io.StringIO) -> Console:
    """A rich console that treats ``screen`` as a 100-column terminal."""
    return Console(file=screen, force_terminal=True, width=100, markup=False, highlight=False)


def screen_lines(raw: str) -> list[str]:
    """The non-empty lines of ``raw`` without control sequences (redraws start at ``\\r``)."""
    return [line for part in raw.splitlines() if (line := _CSI.sub("", part))]


async def until_shown(screen: Screen, text: str) -> None:
    """Wait, without polling the clock, until ``text`` has been written to ``screen``."""
    async with asyncio.timeout(WAIT):
        while text not in screen.getvalue():
            screen.wrote.clear()
            await screen.wrote.wait()


def only_this_task() -> bool:
    """Whether the running test's task is the only task left on the loop."""
    return asyncio.all_tasks() == {asyncio.current_task()}


# -- progress_wanted ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tty", "quiet", "log_format", "wanted"),
    [
        (True, False, "console", True),
        (True, True, "console", False),
        (True, False, "json", False),
        (True, True, "json", False),
        (False, False, "console", False),
        (False, True, "console", False),
        (False, False, "json", False),
        (False, True, "json", False),
    ],
)
def test_progress_wanted_truth_table(tty: bool, quiet: bool, log_format: str, wanted: bool) -> None:
    """The bar is wanted only on a terminal, without --quiet, with console logs."""
    stream = FakeStream(tty)
    assert progress_wanted(stream, quiet=quiet, log_format=log_format) is wanted


def test_progress_unwanted_without_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without rich installed there is no bar, even on a terminal."""
    for name in ("rich", "rich.console", "rich.progress"):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import name` raise ImportError
    assert not progress_wanted(FakeStream(True), quiet=False, log_format="console")


def test_progress_unwanted_on_closed_or_bare_stream() -> None:
    """A closed stream, or an object with no isatty, is not a terminal."""
    closed = io.StringIO()
    closed.close()
    assert not progress_wanted(closed, quiet=False, log_format="console")
    assert not progress_wanted(object(), quiet=False, log_format="console")  # type: ignore[arg-type]


# -- agency_progress ------------------------------------------------------------------------


async def test_final_render_shows_the_counters() -> None:
    """After the block, the last frame shows read, sent and acknowledged, and a full bar."""
    screen, agency = Screen(), FakeAgency()
    async with agency_progress(agency, screen, total=1500, console=terminal(screen)):
        agency.bets_read, agency.bets_sent, agency.bets_acknowledged = 1234, 1200, 1100
    bar, counts = screen_lines(screen.getvalue())[-2:]
    assert bar.startswith("agency 3 ")
    assert "100%" in bar
    assert counts.startswith("read 1,234 · sent 1,200 · acked 1,100 · ")
    assert counts.endswith(" bets/s")
    assert "reconnects" not in counts
    assert screen.getvalue().endswith("\x1b[?25h")  # the cursor is shown again


async def test_live_frames_follow_the_counters() -> None:
    """While the block runs, the bar is redrawn from the counters every interval."""
    screen, agency = Screen(), FakeAgency()
    async with agency_progress(agency, screen, total=200, console=terminal(screen), interval=0.001):
        assert len(asyncio.all_tasks()) == 2  # this test's, and the refresher
        await until_shown(screen, "read 0 · sent 0 · acked 0 · ")
        agency.bets_read, agency.bets_sent, agency.bets_acknowledged = 200, 150, 100
        agency.reconnects = 2
        await until_shown(screen, "read 200 · sent 150 · acked 100 · ")
        live = screen.getvalue()
    assert " 50% " in screen_lines(live)[-2]
    assert "reconnects 2" in screen_lines(live)[-1]
    assert "\x1b[1A" in live  # redrawn in place: the cursor went back up
    assert only_this_task()


async def test_empty_round_ends_with_a_full_bar() -> None:
    """With nothing to send (an empty file, or all stored before), the final bar is 100%."""
    screen = Screen()
    async with agency_progress(FakeAgency(), screen, total=0, console=terminal(screen)):
        pass
    bar, counts = screen_lines(screen.getvalue())[-2:]
    assert "100%" in bar
    assert counts.startswith("read 0 · sent 0 · acked 0 · ")


async def test_indeterminate_bar_has_no_percentage() -> None:
    """With no total the bar has no percentage, and is drawn full once the block is done."""
    screen, agency = Screen(), FakeAgency()
    async with agency_progress(agency, screen, console=terminal(screen)):
        agency.bets_read = agency.bets_sent = agency.bets_acknowledged = 7
    bar, counts = screen_lines(screen.getvalue())[-2:]
    assert "%" not in screen.getvalue()
    assert counts.startswith("read 7 · sent 7 · acked 7 · ")
    assert "━" in bar


async def test_short_estimate_never_shows_over_100_percent() -> None:
    """When more bets are read than the total said, the total grows to match."""
    screen, agency = Screen(), FakeAgency()
    async with agency_progress(agency, screen, total=10, console=terminal(screen), interval=0.001):
        agency.bets_read, agency.bets_acknowledged = 40, 20
        await until_shown(screen, "acked 20")
        frame = screen_lines(screen.getvalue())[-2]
    assert " 50% " in frame


async def test_refresher_is_gone_when_the_block_raises() -> None:
    """An error in the block propagates, and the refresh task has ended by then."""
    screen, agency = Screen(), FakeAgency()
    with pytest.raises(RuntimeError, match="round failed"):
        async with agency_progress(agency, screen, total=10, console=terminal(screen)):
            agency.bets_read, agency.bets_acknowledged = 10, 4
            raise RuntimeError("round failed")
    assert only_this_task()
    bar, counts = screen_lines(screen.getvalue())[-2:]
    assert " 40% " in bar  # where it stopped, not a full bar
    assert "acked 4" in counts
    assert screen.getvalue().endswith("\x1b[?25h")


async def test_refresher_is_gone_when_the_block_is_cancelled() -> None:
    """Cancelling the block's task cancels it (not swallowed) and ends the refresh task."""
    screen, agency = Screen(), FakeAgency()
    entered = asyncio.Event()

    async def round_() -> None:
        async with agency_progress(agency, screen, console=terminal(screen), interval=0.001):
            agency.bets_read = 5
            entered.set()
            await asyncio.Event().wait()  # until cancelled

    task = asyncio.create_task(round_())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    assert only_this_task()
    assert screen_lines(screen.getvalue())[-1].startswith("read 5 · ")
    assert screen.getvalue().endswith("\x1b[?25h")


class BrokenAgency(FakeAgency):
    """An agency whose counters fail to read once ``broken`` is set (a display error)."""

    broken = False

    @property  # type: ignore[override]
    def bets_read(self) -> int:
        if self.broken:
            raise LookupError("display broke")
        return 0

    @bets_read.setter
    def bets_read(self, value: int) -> None:
        pass


async def test_display_error_does_not_hide_the_blocks_error() -> None:
    """When both the block and the display fail, the block's error is the one raised."""
    screen, agency = Screen(), BrokenAgency()
    with pytest.raises(RuntimeError, match="round failed"):
        async with agency_progress(agency, screen, console=terminal(screen)):
            agency.broken = True
            raise RuntimeError("round failed")
    assert only_this_task()
    assert screen.getvalue().endswith("\x1b[?25h")


async def test_display_error_after_a_good_block_is_raised() -> None:
    """A display that fails while the block succeeds is not silently ignored."""
    screen, agency = Screen(), BrokenAgency()
    with pytest.raises(LookupError, match="display broke"):
        async with agency_progress(agency, screen, console=terminal(screen)):
            agency.broken = True
    assert only_this_task()


async def test_refresher_crash_mid_block_is_raised_on_exit() -> None:
    """A redraw that failed while the block ran is raised when the block ends well."""
    screen, agency = Screen(), BrokenAgency()
    async with asyncio.timeout(WAIT):
        with pytest.raises(LookupError, match="display broke"):
            async with agency_progress(agency, screen, console=terminal(screen), interval=0.001):
                (refresher,) = asyncio.all_tasks() - {asyncio.current_task()}
                agency.broken = True
                await asyncio.wait([refresher])  # it reads the counters, and fails
                agency.broken = False  # the final frame itself draws fine
    assert screen_lines(screen.getvalue())[-1].startswith("read 0 · ")
    assert only_this_task()


async def test_interval_must_be_positive() -> None:
    """A zero interval would redraw in a busy loop: it is refused before anything starts."""
    with pytest.raises(ValueError, match="interval"):
        async with agency_progress(FakeAgency(), Screen(), interval=0):
            pass  # pragma: no cover
    assert only_this_task()


# -- log lines while the bar is live ---------------------------------------------------------


@pytest.fixture
def reset_structlog() -> Iterator[None]:
    """Put structlog back to its defaults after the test configured it."""
    yield
    structlog.reset_defaults()


@pytest.mark.usefixtures("reset_structlog")
async def test_log_lines_print_whole_above_the_live_bar() -> None:
    """A log line written during the live display comes out whole, on its own line."""
    screen, agency = Screen(), FakeAgency()
    console = terminal(screen)
    configure("INFO", "console", stream=log_stream(console))
    logs = log_stream(console)
    async with agency_progress(agency, screen, total=10, console=console, interval=0.001):
        await until_shown(screen, "acked 0")
        logs.write(LONG_LINE[:50])  # a line in two writes is still one line
        await asyncio.sleep(0)
        logs.write(LONG_LINE[50:] + "\n")
        get_logger(agencia=3).info("reconectar", result="in_progress", error="[bold]x|y")
        agency.bets_read = agency.bets_acknowledged = 10
        await until_shown(screen, "acked 10")
    raw = screen.getvalue()
    assert len(LONG_LINE) > 100  # longer than the terminal: must not be wrapped or cut
    assert LONG_LINE + "\n" in raw  # unbroken, no styling inside
    lines = screen_lines(raw)
    assert LONG_LINE in lines
    structlog_line = next(line for line in lines if "action: reconectar" in line)
    assert structlog_line.endswith(
        "INFO     action: reconectar | result: in_progress | error: [bold]x/y | agencia: 3"
    )
    # The bar was redrawn below the log lines, and the last frame is the bar.
    assert lines.index(LONG_LINE) < lines.index(structlog_line) < len(lines) - 2
    assert lines[-2].startswith("agency 3 ")


def test_log_stream_passes_through_off_a_terminal() -> None:
    """Given a console that is not a terminal, log_stream writes exactly what it is given."""
    out = io.StringIO()
    logs = log_stream(console_for(out))
    logs.write(LONG_LINE[:10])
    logs.write(LONG_LINE[10:] + "\n")
    logs.flush()
    assert out.getvalue() == LONG_LINE + "\n"


def test_log_stream_close_prints_an_unfinished_line() -> None:
    """A last line with no newline is printed when the stream is closed, not lost."""
    out = io.StringIO()
    logs = log_stream(terminal(out))
    logs.write("action: fin | result: success")
    assert out.getvalue() == ""
    logs.close()
    assert out.getvalue() == "action: fin | result: success\n"


# -- count_lines ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "lines"),
    [
        (b"", 0),
        (b"a,b,1,2000-01-01,7\n", 1),
        (b"a,b,1,2000-01-01,7", 1),
        (b"x\ny\nz\n", 3),
        (b"x\ny\nz", 3),
        (b"x\r\ny\r\nz\r\n", 3),
        (b"x\r\ny\r\nz", 3),
        (b"x\n\ny\n", 3),  # a blank line is counted: the total is an estimate
    ],
)
@pytest.mark.parametrize("chunk", [1, 2, 1 << 20])
def test_count_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes, lines: int, chunk: int
) -> None:
    """LF and CRLF lines are counted once each, with or without a final newline."""
    monkeypatch.setattr(progress, "_CHUNK", chunk)  # line ends across chunk borders
    path = tmp_path / "agency-1.csv"
    path.write_bytes(content)
    assert count_lines(path) == lines
    assert count_lines(str(path)) == lines


def test_count_lines_is_none_when_unreadable(tmp_path: Path) -> None:
    """A missing file, a directory or a bad path gives None, not an error."""
    assert count_lines(tmp_path / "missing.csv") is None
    assert count_lines(tmp_path) is None
    assert count_lines("bad\0path") is None


# -- a real terminal ------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
@pytest.mark.usefixtures("reset_structlog")
async def test_on_a_pseudo_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a real (pseudo-)terminal the bar is wanted, drawn in place, and log lines stay whole."""
    for name in ("TTY_COMPATIBLE", "TTY_INTERACTIVE", "NO_COLOR", "FORCE_COLOR", "COLUMNS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    master, slave = os.openpty()
    loop = asyncio.get_running_loop()
    received = bytearray()
    arrived = asyncio.Event()

    def read_master() -> None:
        # Drained as it comes so the terminal's buffer never fills up.
        try:
            received.extend(os.read(master, 65536))
        except OSError:  # EIO once the terminal side is closed
            loop.remove_reader(master)
        arrived.set()

    async def until_received(text: bytes) -> None:
        async with asyncio.timeout(WAIT):
            while text not in received:
                arrived.clear()
                await arrived.wait()

    loop.add_reader(master, read_master)
    try:
        with os.fdopen(slave, "w", encoding="utf-8") as tty:
            assert progress_wanted(tty, quiet=False, log_format="console")
            console = console_for(tty)
            configure("INFO", "console", stream=log_stream(console))
            agency = FakeAgency()
            async with agency_progress(agency, tty, total=4, console=console, interval=0.001):
                await until_received(b"acked 0")
                get_logger(agencia=3).info("apuesta_enviada", result="success", dni="30904465")
                agency.bets_read = agency.bets_sent = agency.bets_acknowledged = 4
            await until_received(b"\x1b[?25h")
    finally:
        loop.remove_reader(master)
        os.close(master)
    raw = received.decode()
    lines = screen_lines(raw)
    log_line = next(line for line in lines if "action: apuesta_enviada" in line)
    assert log_line.endswith(
        "action: apuesta_enviada | result: success | dni: 30904465 | agencia: 3"
    )
    assert "\x1b[1A" in raw  # redrawn in place
    assert "100%" in lines[-2]
    assert lines[-1].startswith("read 4 · sent 4 · acked 4 · ")


async def test_the_bar_says_whom_the_draw_waits_for() -> None:
    """While the agency waits for the draw, the bar names the agencies still missing."""
    screen, agency = Screen(), FakeAgency()
    async with agency_progress(agency, screen, total=10, console=terminal(screen), interval=0.001):
        agency.bets_read = agency.bets_sent = agency.bets_acknowledged = 10
        agency.waiting_for = "agencies 3, 5 missing"
        await until_shown(screen, "waiting for the draw: agencies 3, 5 missing")
