"""The server's collector thresholds (lottery/gcpolicy.py)."""

from __future__ import annotations

import gc

from lottery.gcpolicy import SERVER_THRESHOLDS, tune


def test_tune_sets_the_server_thresholds_and_returns_the_old_ones() -> None:
    """Young collections stay on (cycles are still found), full ones come rarely."""
    before = gc.get_threshold()
    try:
        assert tune() == before
        assert gc.get_threshold() == SERVER_THRESHOLDS
        assert gc.isenabled()
        assert SERVER_THRESHOLDS[0] > before[0] and SERVER_THRESHOLDS[2] > before[2]
    finally:
        gc.set_threshold(*before)
