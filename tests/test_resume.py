"""Protocol version 2 and resuming by input position (issues 9 items 4-5, 10 items 2-3).

The frames' new layouts, the store's progress (input position and agency
digest), the resume check, and an agency against an in-process server when
the server refuses a bet the agency thought valid.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from lottery import AsyncAgency
from lottery.config import load_agency_config
from lottery.errors import ErrorCode, ResumeMismatch, RowsRejected
from lottery.models import EMPTY_DIGEST, FS, RS, agency_digest
from lottery.protocol import (
    PROTOCOL_VERSION,
    Batch,
    ClientProtocol,
    Error,
    Hello,
    ServerProtocol,
    SingleBet,
    Welcome,
    encode,
)
from lottery.resume import ResumeCheck
from lottery.store import PendingBatch, Progress, SQLiteStore

from .conftest import UNIT
from .helpers import (
    LOOPBACK,
    make_rows,
    raw_connection,
    running_server,
    stored_bets,
    write_agency_file,
)

pytestmark = pytest.mark.timeout(60 * UNIT)

DAY = "2030-01-10"
NEXT_DAY = "2030-01-11"


def _text(rows: list[tuple[str, ...]]) -> bytes:
    return "".join(FS.join(r) + RS for r in rows).encode()


# -- frames --------------------------------------------------------------------------------


def test_welcome_carries_position_date_and_digest() -> None:
    """A version-2 WELCOME round-trips position, count, date, digest and the round id."""
    welcome = Welcome(7, 300, 312, DAY, hashlib.sha256(b"x").digest(), "20261201-000000-abcdef")
    data = encode(welcome)
    assert len(data) == 5 + 4 + 8 + 8 + 10 + 32 + 1 + 22
    client = ClientProtocol()
    client.receive_data(data)
    assert client.next_event() == welcome


def test_batch_and_bet_carry_their_input_position() -> None:
    """BATCH and BET decode with the input position the agency put in them."""
    rows = make_rows(2)
    server = ServerProtocol()
    server.receive_data(encode(Hello(1)))
    assert server.next_event(DAY) == Hello(1)
    server.send(Welcome(0, 0, 0, DAY))
    server.receive_data(encode(Batch(1, rows, input_rows=9)) + encode(SingleBet(2, rows[0], 11)))
    batch = server.next_event(DAY)
    assert isinstance(batch, Batch) and batch.input_rows == 9 and list(batch.records) == rows
    assert server.next_event(DAY) == SingleBet(2, rows[0], 11)


def test_protocol_version_is_2() -> None:
    """HELLO speaks version 2 by default."""
    assert PROTOCOL_VERSION == 2
    assert encode(Hello(3))[5] == 2


async def test_a_version_1_agency_is_told_to_upgrade(tmp_path: Path) -> None:
    """A HELLO in version 1 gets BAD_VERSION with a plain message naming the fix."""
    async with running_server(tmp_path) as server, raw_connection(server.port) as conn:
        await conn.send(Hello(1, version=1))
        reply = await conn.receive()
    assert reply == Error(
        ErrorCode.BAD_VERSION, "protocol version 1 is not spoken here; upgrade the agency"
    )


# -- the store's progress ----------------------------------------------------------------------


def test_progress_holds_the_input_position_and_the_agency_digest(tmp_path: Path) -> None:
    """Each stored batch moves input_rows and extends the digest over its records, in order."""
    first, second = make_rows(3), make_rows(2, start=10)
    store = SQLiteStore(tmp_path, 2, today=DAY)
    try:
        assert store.progress(1) == Progress(0, 0, 0, EMPTY_DIGEST)
        store.commit([PendingBatch(1, 1, first, 4), PendingBatch(2, 1, second, 2)])
        store.commit([PendingBatch(1, 2, second, 9), PendingBatch(1, 2, second, 9)])
        expected = hashlib.sha256(_text(first) + _text(second)).digest()
        assert store.progress(1) == Progress(2, 5, 9, expected)
        assert store.progress(2).digest == agency_digest(_text(second)).digest()
    finally:
        store.close()
    reopened = SQLiteStore(tmp_path, today=NEXT_DAY)  # rebuilt from the batches on open
    try:
        assert reopened.progress(1) == Progress(2, 5, 9, expected)
        assert reopened.round_date() == DAY  # the round keeps the day it began
    finally:
        reopened.close()


def test_a_data_directory_from_protocol_1_gets_the_new_columns(tmp_path: Path) -> None:
    """An old agencies table gains input_rows (= its bet count) and a digest from its bets."""
    rows = make_rows(3)
    db = sqlite3.connect(tmp_path / "lottery.db")
    db.executescript(
        "CREATE TABLE batches (agency INTEGER NOT NULL, seq INTEGER NOT NULL, "
        "bets INTEGER NOT NULL, records TEXT NOT NULL, PRIMARY KEY (agency, seq));"
        "CREATE TABLE agencies (agency INTEGER PRIMARY KEY, last_seq INTEGER NOT NULL DEFAULT 0,"
        " committed_bets INTEGER NOT NULL DEFAULT 0, done INTEGER NOT NULL DEFAULT 0);"
    )
    db.execute("INSERT INTO batches VALUES (1, 1, 3, ?)", (_text(rows).decode(),))
    db.execute("INSERT INTO agencies VALUES (1, 1, 3, 0)")
    db.commit()
    db.close()
    store = SQLiteStore(tmp_path)
    try:
        assert store.progress(1) == Progress(1, 3, 3, hashlib.sha256(_text(rows)).digest())
    finally:
        store.close()


# -- the resume check --------------------------------------------------------------------------


def test_resume_skips_by_position_whatever_the_rows_hold() -> None:
    """Records at stored positions are skipped (rejected rows count); the digest is checked."""
    rows = make_rows(4)
    stored = [rows[0], rows[2]]  # rows at lines 1 and 3; line 2 was rejected
    check = ResumeCheck(1, 3, 2, hashlib.sha256(_text(stored)).digest())
    rest, lines, skipped = check.take(_text([rows[0], rows[2], rows[3]]), [1, 3, 4])
    assert (rest, list(lines), skipped) == (_text([rows[3]]), [4], 2)
    assert check.checked


@pytest.mark.parametrize(
    ("present", "what"),
    [
        ([0, 2], "other bets than the 2 stored"),
        ([0], "only 1 valid bets, not the 2 stored"),
        ([0, 1, 2], "3 valid bets, more than the 2 stored"),
    ],
)
def test_a_different_prefix_is_a_one_line_mismatch(present: list[int], what: str) -> None:
    """A prefix whose bets differ from the stored ones raises ResumeMismatch saying what to do."""
    rows = make_rows(5)
    check = ResumeCheck(4, 3, 2, hashlib.sha256(_text([rows[0], rows[1]])).digest())
    chosen = [rows[i] for i in present] + [rows[4]]
    lines = [i + 1 for i in present] + [5]
    with pytest.raises(ResumeMismatch) as caught:
        check.take(_text(chosen), lines)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("agency 4: the input differs from the 2 bets already stored")
    assert what in message and "start a new round" in message


# -- the agency against a server ----------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 5])
async def test_a_bet_the_server_refuses_is_reported_with_its_line_and_left_out(
    tmp_path: Path, batch_size: int
) -> None:
    """An agency whose today runs ahead of the server's: the refused row is named and skipped."""
    rows = make_rows(30)
    rows[12] = ("Ana", "Futura", "99", NEXT_DAY, "5")  # born on the agency's day, not the round's
    path = write_agency_file(tmp_path / "agency-1.csv", rows)
    async with running_server(tmp_path, agencies=1) as server:
        # The round's date, as if it began on DAY.
        server_round = server._round
        assert server_round is not None
        server_round.today = DAY
        agency = AsyncAgency(1, LOOPBACK, server.port, batch_max_amount=batch_size, max_in_flight=4)
        async with agency:
            # An agency that trusts its own clock (a day ahead) over the WELCOME's date.
            agency._session.today = NEXT_DAY
            report = await agency.send_bets(path)
            refusal = report.done_refusal()
            assert refusal is not None and "agency-1.csv:13: refused by the server" in refusal
            assert report.done_refusal(allow_rejected=True) is None
            await agency.notify()
            assert await agency.winners() == []
    assert [r.line for r in report.rejected] == [13]
    assert report.acknowledged == 29
    documents = [bet[3] for bet in stored_bets(tmp_path / "data")]
    assert documents == [r[2] for i, r in enumerate(rows) if i != 12]


async def test_run_keeps_done_back_when_rows_are_rejected(tmp_path: Path) -> None:
    """AsyncAgency.run stores the valid bets and raises RowsRejected; allow_rejected says done."""
    rows = [*make_rows(4), ("Sin", "Fecha", "5", "1990-02-30", "1")]
    path = write_agency_file(tmp_path / "agency-1.csv", rows)
    async with running_server(tmp_path, agencies=1) as server:
        async with AsyncAgency(1, LOOPBACK, server.port) as agency:
            with pytest.raises(RowsRejected, match=r"^agency 1: 1 row rejected \(first: .*:5:"):
                await agency.run(path)
            assert not server_done(server)
        async with AsyncAgency(1, LOOPBACK, server.port) as agency:
            result = await agency.run(path, allow_rejected=True)
            assert result.report.skipped == 4 and result.winners == []
            assert server_done(server)


def server_done(server: object) -> bool:
    """Whether agency 1 of an in-process server is recorded done."""
    return 1 in server._round.barrier.done  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("env", "yaml"),
    [({"CLI_ALLOW_REJECTED": "1"}, ""), ({}, "bets:\n  allowRejected: true\n")],
)
def test_allow_rejected_comes_from_the_environment_or_the_yaml(
    tmp_path: Path, env: dict[str, str], yaml: str
) -> None:
    """allow_rejected is an Option: CLI_ALLOW_REJECTED or bets.allowRejected turn it on."""
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml or "id: 1\n", encoding="utf-8")
    config = load_agency_config({"id": "1"}, env, str(config_file))
    assert config.allow_rejected is True
    assert load_agency_config({"id": "1"}, {}, None).allow_rejected is False
