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

import errno
import os
import sys
import threading
import time
from collections.abc import MutableMapping
from types import ModuleType
from typing import Any, TextIO

__all__ = [
    "CONTEXT_FIELDS",
    "FORMATS",
    "LEVELS",
    "SafeStream",
    "Tp0Renderer",
    "configure",
    "get_logger",
    "preload",
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

    def write(self, text: str) -> int:
        with self._lock:
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


def configure(level: str = "INFO", fmt: str = "console", stream: TextIO | None = None) -> None:
    """Set up structlog for the whole process (entry points only).

    Lines go to ``stream`` (stderr by default) through a `SafeStream`, so a
    failing log never raises into the code that logs.
    """
    import logging  # for its level names, and only here

    structlog = _structlog()
    processors: list[Any] = [structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S")]
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
        logger_factory=structlog.WriteLoggerFactory(
            file=SafeStream(stream or sys.stderr, fallback=sys.__stderr__)
        ),
        cache_logger_on_first_use=True,
    )


def get_logger(**context: Any) -> Any:
    """A structlog logger, bound to ``context``.

    In a program that never called `configure` (a script using `AsyncAgency`
    as a library) structlog's own default would print its key=value lines;
    the lines are tp0's there too, whatever their level.
    """
    structlog = _structlog()
    if structlog.is_configured():
        return structlog.get_logger().bind(**context)
    # What a logger renders with when no entry point configured structlog.
    processors = [structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S"), Tp0Renderer()]
    return structlog.get_logger(processors=processors).bind(**context)
