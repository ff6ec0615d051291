"""A shortened chaos round (scripts/chaos.py): SIGKILLed server and agency, nothing lost.

Slow (a few seconds: five server lives and a restarted agency, all real
processes), so marked ``slow`` and ``e2e``, but in ``make test`` and CI: it is
the one test that kills the server with SIGKILL mid-round, between the barrier
and the draw included.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos import ChaosConfig, agency_kill_spread, run_chaos

from .conftest import UNIT

pytestmark = pytest.mark.timeout(120 * UNIT)


def _short(tmp_path: Path, seed: int) -> ChaosConfig:
    return ChaosConfig(
        agencies=3,
        bets=3_000,
        server_kills=3,
        seed=seed,
        keep=tmp_path / "chaos",
        batch_max_amount=100,
        max_in_flight=4,
        deadline=100 * UNIT,
        echo=lambda line: None,
    )


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("seed", [7574, 2026])
def test_short_chaos_round_passes(tmp_path: Path, seed: int) -> None:
    """3 agencies × 3,000 bets through 3 server kills, an agency kill and a kill before the draw."""
    result = run_chaos(_short(tmp_path, seed))
    assert result.passed, result.summary
    assert result.server_kills == 3
    assert result.agency_kills == 1
    assert {c.name for c in result.checks if c.ok} >= {
        "kill between barrier and draw",
        "agency kill and resume",
        "export equals input",
        "one draw",
    }


def test_agency_kill_leaves_bets_to_resend() -> None:
    """The agency dies early enough that its batches in flight cannot hold the rest of its file."""
    low, high = agency_kill_spread(ChaosConfig(bets=3_000, batch_max_amount=100, max_in_flight=4))
    assert 0 < low < high <= 1 - 2 * 400 / 3_000
    with pytest.raises(ValueError, match="too few"):
        agency_kill_spread(ChaosConfig(bets=1_000, batch_max_amount=200, max_in_flight=8))
