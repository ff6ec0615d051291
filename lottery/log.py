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
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

__all__ = ["CONTEXT_FIELDS", "FORMATS", "LEVELS", "Tp0Renderer", "configure", "get_logger"]

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


def configure(level: str = "INFO", fmt: str = "console", stream: TextIO | None = None) -> None:
    """Set up structlog for the whole process (entry points only)."""
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
        logger_factory=structlog.WriteLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=True,
    )


#: What a logger renders with when no entry point configured structlog.
_DEFAULT_PROCESSORS = (structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S"), Tp0Renderer())


def get_logger(**context: Any) -> Any:
    """A structlog logger, bound to ``context``.

    In a program that never called `configure` (a script using `AsyncAgency`
    as a library) structlog's own default would print its key=value lines;
    the lines are tp0's there too, whatever their level.
    """
    if structlog.is_configured():
        return structlog.get_logger().bind(**context)
    return structlog.get_logger(processors=list(_DEFAULT_PROCESSORS)).bind(**context)
