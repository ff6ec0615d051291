"""structlog set-up, and tp0's log line format.

tp0's black-box tests read log lines of the form::

    2026-11-29 10:00:00 INFO     action: apuesta_recibida | result: success | cantidad: 150

so that line is an interface. Code logs an event name (the action), a
``result`` and key-value fields; `Tp0Renderer` turns them into that line,
replacing any ``|`` inside a value so the line splits unambiguously. The
fields a logger is bound with (`CONTEXT_FIELDS`: who is speaking) close the
line, so an event's own fields follow ``result`` exactly as tp0 wrote them
(``result: success | dni: D | numero: N``). With ``fmt="json"`` the same event
is one JSON object per line.

Only entry points call `configure`; library modules just call `get_logger`.

structlog is imported on first use, not with this module: `lottery agency
--help` never needs it. And it is imported without rich: structlog.dev would
import rich's traceback machinery (about 25 ms of every process's start) for
a console renderer we never use (our renderers are our own); greenlet likewise.

An agency does not import structlog at all: its console lines are few (a
dozen per run) and `configure(..., light=True)` gives `get_logger` a
`LineLogger` that renders them with the same `Tp0Renderer`, saving the
15–20 ms structlog's import adds to every agency's start. `reset` undoes it.

One line is written thousands of times a second: the server's per-batch
``apuesta_recibida``. Through structlog it costs about 15 µs (a dict, five
processors, a lock, a write and a flush). `hot_line` gives hot code a writer
for such a line that renders the same text from a prefix and suffix made
once, stamps it with a per-second cached timestamp, and hands it to the
`SafeStream` to be written with the other lines of the same event-loop turn
in one write (`SafeStream.write_soon`). Any other line written meanwhile
first writes the pending ones, so the order of the lines is kept.

A log line must never take the program down with it: `lottery server ...
2>&1 | head -1` closes the pipe after one line, and every later write fails.
`configure` therefore wraps the stream in a `SafeStream`, which never raises:
a line it cannot write is dropped and counted; a stream that is gone for good
(a closed pipe) is given up, and the lines go to the fallback stream if there
is a usable one, starting with a line that says what happened; and when a
stream that failed for a moment takes lines again, the first says how many
were lost.
"""

from __future__ import annotations

import atexit
import errno
import os
import sys
import threading
import time
from collections.abc import Callable, MutableMapping
from types import ModuleType
from typing import Any, TextIO

__all__ = [
    "CONTEXT_FIELDS",
    "FORMATS",
    "LEVELS",
    "LineLogger",
    "SafeStream",
    "Tp0Renderer",
    "configure",
    "get_logger",
    "hot_line",
    "line_logger",
    "preload",
    "reset",
]

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMATS = ("console", "json")


#: Context fields, moved to the end of a console line.
CONTEXT_FIELDS = ("ip", "agencia")


def _clean(value: object) -> str:
    return str(value).replace("|", "/").replace("\n", " ").replace("\r", " ")


class Tp0Renderer:
    """Renders an event dict as tp0's ``action: X | result: Y | key: value`` line."""

    def __call__(self, _logger: Any, method: str, event: MutableMapping[str, Any]) -> str:
        timestamp = event.pop("timestamp", "")
        parts = [f"action: {_clean(event.pop('event'))}"]
        result = event.pop("result", None)
        if result is not None:
            parts.append(f"result: {_clean(result)}")
        context = [(key, event.pop(key)) for key in CONTEXT_FIELDS if key in event]
        parts.extend(f"{key}: {_clean(value)}" for key, value in (*event.items(), *context))
        return f"{timestamp} {method.upper():<8} {' | '.join(parts)}"


def _rename_event_to_action(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
    event["action"] = event.pop("event")
    return event


#: Errors after which a stream never takes a line again (the reader is gone).
_GONE = {errno.EPIPE, errno.EBADF, errno.ECONNRESET, errno.ENXIO}


class SafeStream:
    """A text stream for log lines whose `write` never raises (see the module docstring).

    Args:
        stream: where the lines go.
        fallback: where they go once ``stream`` is gone for good, if it is a
            different, working stream (the process's stderr by default).
    """

    def __init__(self, stream: TextIO, fallback: TextIO | None = None) -> None:
        self._stream = stream
        self._fallback_stream = fallback
        self._fallback: SafeStream | None = None  # once ``stream`` is gone
        self._lock = threading.Lock()
        self.dropped = 0  # lines lost since the last one that got through
        self.gone = ""  # why ``stream`` was given up, once it is
        self._soon: list[str] = []  # lines from write_soon, not written yet

    def write_soon(self, text: str) -> None:
        """Write ``text`` at the end of this event-loop turn, with the others queued so.

        Outside an event loop it is written now. A `write` meanwhile writes
        the queued lines first, so lines keep the order they were logged in.
        """
        with self._lock:
            self._soon.append(text)
            if len(self._soon) > 1:
                return  # the flush is scheduled already
        try:
            import asyncio  # imported already by any caller with a loop

            asyncio.get_running_loop().call_soon(self.write, "")
        except RuntimeError:  # no running loop
            self.write("")

    def write(self, text: str) -> int:
        with self._lock:
            if self._soon:
                text = "".join(self._soon) + text
                self._soon.clear()
            if not text:
                return 0
            if self.gone:
                self._to_fallback(text)
                return len(text)
            try:
                notice = _notice(f"{self.dropped} log lines were lost") if self.dropped else ""
                self._stream.write(notice + text)
                self._stream.flush()
                self.dropped = 0
            except (OSError, ValueError) as exc:  # ValueError: the stream was closed
                self.dropped += 1
                if not isinstance(exc, BlockingIOError) and (
                    isinstance(exc, ValueError) or exc.errno in _GONE
                ):
                    self._give_up(exc)
            return len(text)

    def flush(self) -> None:
        """`write` flushes each line itself."""

    def _give_up(self, exc: BaseException) -> None:
        self.gone = f"{type(exc).__name__}: {exc}"
        _silence(self._stream)
        fallback = self._fallback_stream
        if fallback is not None and not _same_file(fallback, self._stream):
            self._fallback = SafeStream(fallback)
            lost = f"{self.dropped} lines lost"
            self._fallback.write(
                _notice(f"the log stream failed ({self.gone}); {lost}; logging here from now on")
            )

    def _to_fallback(self, text: str) -> None:
        if self._fallback is None:
            self.dropped += text.count("\n") or 1
        else:
            self._fallback.write(text)


def _notice(detail: str) -> str:
    """A tp0 line of our own about the log itself."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    return f"{stamp} {'WARNING':<8} action: log | result: fail | detalle: {_clean(detail)}\n"


def _same_file(a: TextIO, b: TextIO) -> bool:
    try:
        return os.path.sameopenfile(a.fileno(), b.fileno())
    except (OSError, ValueError, AttributeError):
        return a is b


def _silence(stream: TextIO) -> None:
    """Point a dead stream's descriptor at /dev/null.

    Python flushes stdout and stderr at exit; into a closed pipe that prints
    "Exception ignored ... BrokenPipeError" and turns the exit status into
    120 (the recipe of the `signal` module's notes on SIGPIPE).
    """
    try:
        fd = stream.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError, AttributeError):
        return
    try:
        os.dup2(devnull, fd)
    except OSError:
        pass
    finally:
        os.close(devnull)


# What structlog imports if it can, for features we do not use: rich and
# better_exceptions for its console renderer's tracebacks, greenlet for its
# deprecated thread-local context.
_OPTIONAL = ("rich", "better_exceptions", "greenlet")


def _structlog() -> ModuleType:
    """structlog, imported on first use, without rich (see the module docstring)."""
    module = sys.modules.get("structlog")
    if module is not None:
        return module
    # None in sys.modules makes ``import rich`` fail, which structlog expects
    # when rich is not installed; a rich imported already (the progress bar's)
    # is left alone, and the block is lifted at once.
    blocked = [name for name in _OPTIONAL if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        import structlog
    finally:
        for name in blocked:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]
    return structlog


def preload() -> None:
    """Import structlog now rather than at the first log line (for start-up work done up front)."""
    _structlog()


#: (second, its text): one tuple, so a thread never sees one without the other.
_stamp: tuple[int, str] = (-1, "")


def _timestamp() -> str:
    """The time as every line shows it (UTC, to the second), formatted once a second."""
    global _stamp  # a cache
    now = int(time.time())
    second, text = _stamp
    if now != second:
        text = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now))
        _stamp = (now, text)
    return text


def _add_timestamp(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
    """structlog's TimeStamper(fmt="%Y-%m-%d %H:%M:%S"), at a fraction of its cost."""
    event["timestamp"] = _timestamp()
    return event


def configure(
    level: str = "INFO", fmt: str = "console", stream: TextIO | None = None, *, light: bool = False
) -> None:
    """Set up structlog for the whole process (entry points only).

    Lines go to ``stream`` (stderr by default) through a `SafeStream`, so a
    failing log never raises into the code that logs. With ``light`` (an
    agency), console lines are written by `LineLogger`, without structlog,
    until `reset` or the next `configure`.
    """
    global _hot, _light  # the process's one log configuration
    safe = SafeStream(stream or sys.stderr, fallback=sys.__stderr__)
    _light = _hot = None
    if light and fmt == "console":
        _light = (LEVELS.index(level.upper()), safe)
        return
    import logging  # for its level names, and only here

    structlog = _structlog()
    processors: list[Any] = [_add_timestamp]
    factory = structlog.WriteLoggerFactory(file=safe)
    if fmt == "console" and logging.getLevelName(level.upper()) <= logging.INFO:
        _hot = (factory, safe, LEVELS.index(level.upper()))
    if fmt == "json":
        processors += [
            structlog.processors.add_log_level,
            _rename_event_to_action,
            structlog.processors.JSONRenderer(),
        ]
    else:
        processors.append(Tp0Renderer())
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )


def reset() -> None:
    """Undo a light `configure`: loggers made after this are structlog's again."""
    global _light  # the process's one log configuration
    _light = None


#: Set by a light `configure`: the lowest level written (an index of
#: `LEVELS`) and the stream the lines go to.
_light: tuple[int, SafeStream] | None = None
_RENDER = Tp0Renderer()


#: Set by `configure` when INFO lines are written in the console format: the
#: logger factory it installed (to tell whether it is still the one in use)
#: and the stream it writes to.
_hot: tuple[object, SafeStream, int] | None = None


@atexit.register
def _write_queued_lines() -> None:
    """Lines queued by `hot_line` whose loop stopped before writing them: now."""
    if _hot is not None:
        _hot[1].write("")


def hot_line(action: str, result: str, key: str, **context: object) -> Callable[[int], None] | None:
    """A cheap writer for the INFO line ``action: A | result: R | key: N | context…``.

    The returned function takes the one value that changes (an int: nothing
    to clean) and writes the line exactly as ``get_logger(**context).info(
    action, result=result, key=N)`` would, at the end of the event-loop turn
    (see the module docstring). None when that would not write a console
    line (the JSON format, a level above INFO, structlog not configured
    here): then log as usual.
    """
    hot = _hot
    if hot is None or _structlog().get_config()["logger_factory"] is not hot[0]:
        return None
    stream = hot[1]
    # Tp0Renderer's order: result, the other bound fields, the event's own, the context.
    others = "".join(f"{k}: {_clean(v)} | " for k, v in context.items() if k not in CONTEXT_FIELDS)
    head = f" {'INFO':<8} action: {_clean(action)} | result: {_clean(result)} | {others}{key}: "
    tail = "".join(f" | {k}: {_clean(context[k])}" for k in CONTEXT_FIELDS if k in context) + "\n"

    def write(value: int) -> None:
        stream.write_soon(f"{_timestamp()}{head}{value}{tail}")

    return write


class LineLogger:
    """tp0's console lines without structlog: its bound-logger API, its text.

    The same line `get_logger(**context)` would write (`Tp0Renderer` over the
    event dict structlog would build, with the per-second timestamp),
    rendered directly and handed to the `SafeStream`. Two users:

    - an agency (`configure(light=True)`): importing and running structlog
      was a tenth of a short agency's CPU; its lines are written at once;
    - the server's per-connection lines (`line_logger`): with 10,000 agencies
      each connection writes five or six (accept, handshake, batch, done,
      winners, close), and through structlog's processors, a lock, a write
      and a flush each they were a quarter of a connection's CPU. With
      ``soon``, INFO lines go in the event-loop turn's one write
      (`SafeStream.write_soon`, as `hot_line`'s), the others at once.
    """

    __slots__ = ("_context", "_level", "_soon", "_stream")

    def __init__(
        self, stream: SafeStream, context: dict[str, Any], level: int, *, soon: bool = False
    ) -> None:
        self._stream, self._context, self._level, self._soon = stream, context, level, soon

    def bind(self, **context: Any) -> LineLogger:
        return LineLogger(self._stream, {**self._context, **context}, self._level, soon=self._soon)

    def _log(self, level: int, method: str, event: str, fields: dict[str, Any]) -> None:
        if level < self._level:
            return
        entry = {**self._context, **fields, "event": event, "timestamp": _timestamp()}
        text = _RENDER(None, method, entry) + "\n"
        if self._soon and method == "info":
            self._stream.write_soon(text)
        else:
            self._stream.write(text)

    def debug(self, event: str, **fields: Any) -> None:
        self._log(0, "debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(1, "info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(2, "warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(3, "error", event, fields)

    def critical(self, event: str, **fields: Any) -> None:
        self._log(4, "critical", event, fields)


def line_logger(**context: Any) -> Any:
    """A `LineLogger` bound to ``context`` where the log allows one, else `get_logger`'s.

    Where it allows one: as for `hot_line` (console lines at INFO or below,
    configured here and still in use).
    """
    hot = _hot
    if hot is None or _structlog().get_config()["logger_factory"] is not hot[0]:
        return get_logger(**context)
    return LineLogger(hot[1], context, hot[2], soon=True)


#: What a logger renders with when no entry point configured structlog.
_DEFAULT_PROCESSORS = (_add_timestamp, Tp0Renderer())


def get_logger(**context: Any) -> Any:
    """A structlog logger, bound to ``context``.

    In a program that never called `configure` (a script using `AsyncAgency`
    as a library) structlog's own default would print its key=value lines;
    the lines are tp0's there too, whatever their level.
    """
    light = _light
    if light is not None:
        level, stream = light
        return LineLogger(stream, context, level)
    structlog = _structlog()
    if structlog.is_configured():
        return structlog.get_logger().bind(**context)
    return structlog.get_logger(processors=list(_DEFAULT_PROCESSORS)).bind(**context)
