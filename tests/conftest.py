"""Shared fixtures: the time unit, and real servers on loopback port 0."""

from __future__ import annotations

import os

#: One time unit, in seconds. Slow machines can scale every test timeout with
#: LOTTERY_TEST_TIME_UNIT=2 (websockets' MS idea).
UNIT = float(os.environ.get("LOTTERY_TEST_TIME_UNIT", "1"))
