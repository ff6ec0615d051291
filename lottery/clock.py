"""The one clock of the round: what day it is.

`today` is the only place the server reads the date. A round records the day
it was created (the store keeps it) and validates every bet against that day
for its whole life, however long it lasts, and the agencies learn it from the
WELCOME: so a bet's validity never changes between two runs of an agency
(docs/PROTOCOL.md section 6, "Restarting mid-file").

``LOTTERY_TODAY`` (an ISO date) overrides the clock. It is a test hook, like
``LOTTERY_FAULT_DRAW_DELAY``: the tests use it to start rounds on other days
without changing the machine's clock or time zone.
"""

from __future__ import annotations

import datetime
import os

from .errors import ConfigError

__all__ = ["TODAY_ENV", "today"]

TODAY_ENV = "LOTTERY_TODAY"


def today() -> str:
    """Today's date, ISO (``YYYY-MM-DD``): the local date, or ``LOTTERY_TODAY``.

    Raises:
        ConfigError: ``LOTTERY_TODAY`` is set but is not an ISO date.
    """
    forced = os.environ.get(TODAY_ENV, "").strip()
    if not forced:
        return datetime.date.today().isoformat()
    try:
        return datetime.date.fromisoformat(forced).isoformat()
    except ValueError:
        raise ConfigError(f"{TODAY_ENV}={forced!r} is not a date YYYY-MM-DD") from None
