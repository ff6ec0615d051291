"""The wait for the draw says whom it waits for, and is bounded in all."""

from __future__ import annotations

from pathlib import Path

import pytest

from lottery.client import AsyncAgency
from lottery.errors import WinnersUnavailable
from lottery.protocol import NotReady
from lottery.winners import missing_text

from .conftest import UNIT
from .helpers import LOOPBACK, running_server

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("reply", "text"),
    [
        (NotReady(1, (2,)), "agency 2 missing"),
        (NotReady(2, (3, 5)), "agencies 3, 5 missing"),
        (NotReady(30, tuple(range(1, 31))), "agencies 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12"),
        (NotReady(500, tuple(range(1, 101))), " … missing"),
        (NotReady(3, ()), "3 agencies missing"),
    ],
)
def test_the_missing_agencies_read_plainly(reply: NotReady, text: str) -> None:
    """NOT_READY's agencies become one short phrase, naming at most 20."""
    assert text in missing_text(reply)
    assert missing_text(reply).count(",") <= 19


async def test_the_total_wait_for_the_draw_is_bounded_and_names_the_missing(
    tmp_path: Path,
) -> None:
    """With winners_wait spent, winners() gives up naming the agencies the draw waits for."""
    async with running_server(tmp_path, agencies=2, timeout_winners=0.05 * UNIT) as server:
        agency = AsyncAgency(
            1, LOOPBACK, server.port, winners_attempts=100, winners_wait=0.5 * UNIT
        )
        async with agency:
            await agency.notify()
            with pytest.raises(WinnersUnavailable, match=r"after 0\.5 s: .*agency 2 missing"):
                await agency.winners()
            assert agency.waiting_for == "agency 2 missing"
