"""A shortened chaos round with a random draw: kills everywhere, the draw still verifies."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos import ChaosConfig, run_chaos

from .conftest import UNIT

pytestmark = pytest.mark.timeout(120 * UNIT)


@pytest.mark.e2e
@pytest.mark.slow
def test_short_random_draw_chaos_round_passes_verify(tmp_path: Path) -> None:
    """3 server kills, an agency kill and a kill before the reveals: one draw; verify passes."""
    config = ChaosConfig(
        agencies=3,
        bets=3_000,
        server_kills=3,
        seed=2026,
        keep=tmp_path / "chaos",
        batch_max_amount=100,
        max_in_flight=4,
        deadline=100 * UNIT,
        draw="random",
        echo=lambda line: None,
    )
    result = run_chaos(config)
    # Whether the killed agency still had bets left to send is a race with the
    # machine's load; tests/test_chaos.py judges the resume. Everything else must hold.
    failed = [c.name for c in result.checks if not c.ok and c.name != "agency kill and resume"]
    assert not failed, result.summary
    assert {c.name for c in result.checks if c.ok} >= {
        "kill between barrier and draw",
        "lottery verify",
        "export equals input",
        "one draw",
    }
