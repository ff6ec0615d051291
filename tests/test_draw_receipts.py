"""The random draw's receipts and the store's running agency digests are one thing."""

from __future__ import annotations

from pathlib import Path

import pytest

from lottery.draw import AgencyDigest
from lottery.models import EMPTY_DIGEST, agency_digest
from lottery.store import PendingBatch, SQLiteStore

from .helpers import make_rows


@pytest.mark.timeout(30)
def test_the_draws_receipts_equal_the_stores_running_digests(tmp_path: Path) -> None:
    """Each agency's receipt recomputed at a random draw equals its `Progress` count and digest."""
    data = tmp_path / "data"
    store = SQLiteStore(data, 3, synchronous="OFF", draw_mode="random")
    store.commit(
        [
            PendingBatch(1, 1, make_rows(20, winners=[3]), 20),
            PendingBatch(2, 1, make_rows(5, start=50), 5),
            PendingBatch(1, 2, make_rows(7, start=100), 27),
        ]
    )
    store.close()
    store = SQLiteStore(data)  # reopened: the running digests rebuilt from the batches
    try:
        assert store.draw()
        receipts = store.draw_state().receipts
        for agency in (1, 2):
            progress = store.progress(agency)
            assert receipts[agency] == (progress.committed_bets, progress.digest)
        assert 3 not in receipts and store.progress(3).digest == EMPTY_DIGEST
    finally:
        store.close()


@pytest.mark.timeout(10)
def test_the_receipt_digest_is_the_agency_digest() -> None:
    """`AgencyDigest` (receipts, the agency's side) hashes exactly as `agency_digest` does."""
    records = b"a\x1fb\x1f1\x1f1990-01-01\x1f7\x1e" * 3
    receipt = AgencyDigest()
    receipt.update(records[:19], 1)
    receipt.update(records[19:], 2)
    assert (receipt.bets, receipt.digest()) == (3, agency_digest(records).digest())
    assert AgencyDigest().digest() == EMPTY_DIGEST


@pytest.mark.timeout(10)
def test_the_status_summary_before_auth_shows_a_random_draws_public_values() -> None:
    """The summary view keeps a random draw's commitment and reveals, never per-agency progress."""
    from lottery.ratelimit import round_summary

    status = {
        "agencies": 1, "opened": True, "drawn": True, "draw_seconds": 0.1,
        "agency": [{"id": 1, "done": True, "committed_bets": 5, "revealed": True}],
        "draw_mode": "random", "commitment": "ab", "number": 7, "seed": "cd",
        "reveals": {"1": "ef"}, "not_revealed": [],
    }  # fmt: skip
    summary = round_summary(status)
    assert summary["commitment"] == "ab" and summary["seed"] == "cd" and summary["number"] == 7
    assert "agency" not in summary
    assert "commitment" not in round_summary({**status, "draw_mode": "fixed"})
