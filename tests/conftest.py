"""Shared fixtures: the time unit, and real servers on loopback port 0."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator

import pytest
import structlog

from lottery.log import configure

#: One time unit, in seconds. Slow machines can scale every test timeout with
#: LOTTERY_TEST_TIME_UNIT=2 (websockets' MS idea).
UNIT = float(os.environ.get("LOTTERY_TEST_TIME_UNIT", "1"))


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """Route structlog's tp0 lines (INFO and up) to a StringIO for the test to read."""
    stream = io.StringIO()
    configure("INFO", "console", stream)
    yield stream
    structlog.reset_defaults()
