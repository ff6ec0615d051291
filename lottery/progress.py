"""A live progress bar for ``lottery agency`` on a terminal.

While an agency sends its bets, `agency_progress` redraws two lines at the
bottom of the terminal from the agency's counters (``bets_read``,
``bets_sent``, ``bets_acknowledged``, ``reconnects``)::

    agency 3 ━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━╸━━━━━━━━━━━━━━━━━━━  61% 0:00:04
    read 6,400 · sent 6,200 · acked 6,100 · 1,523 bets/s · reconnects 1

a bar of the acknowledged bets (with a percentage when the total is known),
the elapsed time, the counts, the ack rate over the last few seconds (rich's
own speed estimate), and the reconnects if there were any.

The bar is only for people. tp0's black-box tests parse the agency's log lines
(``action: X | result: Y | ...``) from its output, so `progress_wanted` says
yes only when the stream is a terminal, logs are the console format, the user
did not ask for ``--quiet`` and `rich` (the ``ui`` extra) is installed.
Otherwise the CLI never calls into this module: off a terminal the output is
the log lines and nothing else, byte for byte as before.

While the bar is live, anything else written to the terminal would be drawn
over by the next redraw, or would cut the bar in two. So log lines go through
the same rich `Console` as the bar: `log_stream` gives structlog rich's own
file proxy, which prints each complete line *above* the live bar::

    console = console_for(sys.stderr)
    configure(level, "console", stream=log_stream(console))
    async with agency_progress(agency, sys.stderr, total=lines, console=console):
        await agency.send_bets(path)

`rich` is imported lazily, inside the functions, so this module can be
imported (and `progress_wanted` called) without the ``ui`` extra.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TextIO, cast

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, Task, TaskID

    from .client import AsyncAgency

__all__ = [
    "agency_progress",
    "console_for",
    "count_lines",
    "log_stream",
    "progress_wanted",
]

#: Seconds of history behind the live rate: long enough to smooth the bursts
#: of a window of acks, short enough to show a stall within a few seconds.
RATE_WINDOW = 5.0
_CHUNK = 1 << 20


def _rich_available() -> bool:
    try:
        import rich.progress  # noqa: F401  (imports rich.console too)
    except ImportError:
        return False
    return True


def progress_wanted(stream: TextIO, *, quiet: bool, log_format: str) -> bool:
    """Whether to show the progress bar on ``stream``.

    Only for a person at a terminal: not with ``--quiet``, not with JSON logs
    (those are for machines), not when ``stream`` is a pipe or a file (tp0's
    tests read that output), and not without `rich`.
    """
    if quiet or log_format != "console":
        return False
    try:
        is_tty = bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False
    return is_tty and _rich_available()


def console_for(stream: TextIO) -> Console:
    """A rich `Console` writing to ``stream``, for the bar and the log lines both.

    Markup, emoji codes and highlighting are off: log values are data, and a
    ``[red]`` or ``:x:`` inside a name must be printed as it is.
    """
    from rich.console import Console

    return Console(file=stream, markup=False, emoji=False, highlight=False)


def log_stream(console: Console) -> TextIO:
    """A file for ``lottery.log.configure(stream=...)`` whose lines print above the bar.

    On a terminal that is rich's `FileProxy`: it holds a partial line until
    its newline comes (printed alone it would leave the bar redrawn in the
    middle of the line) and prints each whole line through ``console``, so a
    live display is moved below it instead of being overwritten. Off a
    terminal it is ``console.file`` itself: the lines go out exactly as written.

    Configure structlog with it *before* the first log call and keep it for the
    whole run: loggers cache their file on first use, and it is correct with
    and without a live display.
    """
    if not console.is_terminal:
        return cast(TextIO, console.file)
    from rich.file_proxy import FileProxy

    # FileProxy prints with the console's default wrapping; a log line must not
    # be cut or broken at the terminal's width (the terminal wraps it visually).
    console.soft_wrap = True
    return cast(TextIO, FileProxy(console, console.file))


def count_lines(path: str | os.PathLike[str]) -> int | None:
    """How many lines ``path`` has (LF or CRLF; a last line without its newline counts).

    An estimate of the bets in an agency file, for the bar's total: blank and
    invalid lines are counted too. Reads binary chunks, so it is cheap, but it
    is still blocking I/O: call it with `asyncio.to_thread`. None if the file
    cannot be read.
    """
    lines = 0
    last = b"\n"
    try:
        with open(path, "rb") as file:
            while chunk := file.read(_CHUNK):
                lines += chunk.count(b"\n")
                last = chunk[-1:]
    except (OSError, ValueError):  # ValueError: e.g. a NUL byte in the path
        return None
    return lines if last == b"\n" else lines + 1


def _make_progress(console: Console, total: int | None) -> Progress:
    """The display: bar, percentage and elapsed time; the counts on a second line.

    The counts go on their own line so that an 80-column terminal still has
    room for a bar: on one line they would squeeze it to nothing.
    """
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
    from rich.text import Text

    class AgencyProgress(Progress):
        def get_renderables(self) -> Any:  # rich's documented hook for a custom layout
            yield self.make_tasks_table(self.tasks)
            for task in self.tasks:
                yield Text(task.fields["counts"], no_wrap=True, overflow="ellipsis")

    columns: list[Any] = [
        TextColumn("{task.description}", markup=False),
        BarColumn(bar_width=None, finished_style="green"),
    ]
    if total is not None:  # a percentage of an unknown total says nothing
        columns.append(TaskProgressColumn())
    columns.append(TimeElapsedColumn())
    return AgencyProgress(
        *columns,
        console=console,
        transient=False,
        expand=True,  # the bar takes the width the other columns leave
        # Redrawn by our asyncio task, not by rich's thread: no thread to
        # race the event loop, and the last frame is the one drawn on exit.
        auto_refresh=False,
        # rich swaps sys.stdout/sys.stderr for a proxy printing to this
        # console: right for the stream the bar is on, wrong for the other
        # (output meant for stdout would land on stderr).
        redirect_stdout=console.file is sys.stdout,
        redirect_stderr=console.file is sys.stderr,
        speed_estimate_period=RATE_WINDOW,
    )


def _task(progress: Progress, task_id: TaskID) -> Task:
    return next(task for task in progress.tasks if task.id == task_id)


def _update(
    progress: Progress, task_id: TaskID, agency: AsyncAgency, total: int | None, *, finished: bool
) -> None:
    read, sent, acked = agency.bets_read, agency.bets_sent, agency.bets_acknowledged
    # rich samples the acks as they move and estimates the speed from them.
    progress.update(task_id, completed=acked)
    task = _task(progress, task_id)
    # Read now: a change of total below resets rich's samples, so the rate is
    # "–" for a frame after the estimate of the total grows.
    rate = task.finished_speed or task.speed
    done = acked
    if finished:
        # The block ended normally, so every bet is in: a full bar, even when
        # the estimate counted blank, invalid or already stored lines. (rich
        # shows a total of 0 as 0%: an empty file is done too, so 1 of 1.)
        total = done = max(acked, 1)
    elif total is not None and read > total:
        total = read  # the estimate was short; never show more than 100%
    counts = [
        f"read {read:,}",
        f"sent {sent:,}",
        f"acked {acked:,}",
        "– bets/s" if rate is None else f"{rate:,.0f} bets/s",
    ]
    if agency.reconnects > 0:
        counts.append(f"reconnects {agency.reconnects:,}")
    if agency.waiting_for is not None and not finished:
        counts.append(f"waiting for the draw: {agency.waiting_for}")
    progress.update(task_id, total=total, completed=done, counts=" · ".join(counts))


async def _refresh_every(
    interval: float, progress: Progress, task: TaskID, agency: AsyncAgency, total: int | None
) -> None:
    while True:
        _update(progress, task, agency, total, finished=False)
        progress.refresh()
        await asyncio.sleep(interval)


@asynccontextmanager
async def agency_progress(
    agency: AsyncAgency,
    stream: TextIO,
    *,
    total: int | None = None,
    interval: float = 0.1,
    console: Console | None = None,
) -> AsyncIterator[None]:
    """Show ``agency``'s progress on ``stream`` while the block runs.

    A task of this context manager redraws the bar every ``interval`` seconds
    from the agency's counters; it is cancelled and awaited when the block
    ends, however it ends. Then the final state is drawn once and left on the
    terminal. When the block ends normally the bar is shown full.

    Args:
        agency: the agency whose counters to show (`AsyncAgency` or anything
            with ``bets_read``, ``bets_sent``, ``bets_acknowledged``,
            ``reconnects``; ``agency_id`` names the bar).
        stream: where to draw; ignored when ``console`` is given.
        total: the bets expected (`count_lines`), or None for a bar with no end.
        interval: seconds between redraws.
        console: the `Console` to draw on; pass the one given to `log_stream`
            so that log lines print above the bar.

    Raises:
        ValueError: ``interval`` is not positive.
    """
    if interval <= 0:
        raise ValueError(f"interval must be > 0, not {interval!r}")
    console = console or console_for(stream)
    progress = _make_progress(console, total)
    agency_id = getattr(agency, "agency_id", None)
    task = progress.add_task("bets" if agency_id is None else f"agency {agency_id}", total=total)
    _update(progress, task, agency, total, finished=False)
    progress.start()
    refresher = asyncio.create_task(_refresh_every(interval, progress, task, agency, total))
    finished = False
    try:
        yield
        finished = True
    finally:
        refresher.cancel()
        # wait(), unlike await, does not raise the task's CancelledError,
        # which would look like a cancellation of this task.
        await asyncio.wait([refresher])
        failed = None if refresher.cancelled() else refresher.exception()
        # When the block failed, its error is the one to report, not the
        # display's; when it succeeded, a broken display is not hidden.
        with contextlib.suppress(Exception) if not finished else contextlib.nullcontext():
            try:
                _update(progress, task, agency, total, finished=finished)
            finally:
                progress.stop()  # draws the final frame, shows the cursor again
            if failed is not None:
                raise failed
