"""The random draw (docs/DRAW.md): derivation, record, verify, reveals, restarts, receipts."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import structlog

from lottery.cli import main
from lottery.client import AsyncAgency
from lottery.config import ServerConfig
from lottery.draw import (
    AgencyDigest,
    BetsDigest,
    agency_commitment,
    derive_number,
    draw_root,
    seed_commitment,
)
from lottery.errors import ConfigError
from lottery.participant import DrawParticipant
from lottery.protocol import (
    Ack,
    Batch,
    Commit,
    Done,
    DrawInfo,
    DrawQuery,
    Error,
    ErrorCode,
    NotReady,
    Receipt,
    Reveal,
    RevealWanted,
    Winners,
    WinnersQuery,
)
from lottery.status import render_text
from lottery.store import PendingBatch, SQLiteStore
from lottery.store.base import Outcome

from . import draw_checker
from .conftest import UNIT
from .helpers import (
    data_dir_of,
    log_events,
    make_rows,
    raw_connection,
    running_server,
    write_agency_file,
)

pytestmark = pytest.mark.timeout(60 * UNIT)

DOC = Path(__file__).parents[1] / "docs" / "DRAW.md"
SEED = bytes(range(32))
N1 = bytes(range(32, 64))
N2 = bytes(range(64, 96))


@pytest.fixture(autouse=True)
def _reset_logging() -> Any:
    """`lottery.cli.main` configures logging to this test's stdout: undo it after."""
    yield
    structlog.reset_defaults()


# -- the derivation, against docs/DRAW.md and the independent checker ---------------------------


def _doc_vectors() -> dict[str, str]:
    block = DOC.read_text(encoding="utf-8").split("## 7. Test vectors")[1]
    text = block.split("```text\n")[1].split("```")[0]
    return {k.strip(): v.strip() for k, v in (line.rsplit("=", 1) for line in text.splitlines())}


def test_the_doc_test_vectors_hold_for_the_code_and_the_independent_checker() -> None:
    """Every vector in docs/DRAW.md section 7 is what lottery.draw and the checker compute."""
    vectors = _doc_vectors()
    both = {1: N1, 2: N2}
    beacon = bytes.fromhex("deadbeef")
    rejecting = bytes.fromhex("01ba4719c80b6fe911b091a7c05124b64eeece964e09c058ef8f9805daca546b")
    computed = {
        "seed_commitment(seed)": (seed_commitment(SEED).hex(), draw_checker.sha(SEED).hex()),
        "agency_commitment(1, n1)": (
            agency_commitment(1, N1).hex(),
            draw_checker.agency_commitment(1, N1).hex(),
        ),
        "agency_commitment(2, n2)": (
            agency_commitment(2, N2).hex(),
            draw_checker.agency_commitment(2, N2).hex(),
        ),
        'root(seed, {}, "")': (draw_root(SEED, {}).hex(), draw_checker.root(SEED, {}, b"").hex()),
        'number(seed, {}, "")': (
            str(derive_number(SEED, {})),
            str(draw_checker.number(SEED, {}, b"")),
        ),
        'root(seed, {1: n1, 2: n2}, "")': (
            draw_root(SEED, both).hex(),
            draw_checker.root(SEED, both, b"").hex(),
        ),
        'number(seed, {1: n1, 2: n2}, "")': (
            str(derive_number(SEED, both)),
            str(draw_checker.number(SEED, both, b"")),
        ),
        "root(seed, {1: n1, 2: n2}, deadbeef)": (
            draw_root(SEED, both, beacon).hex(),
            draw_checker.root(SEED, both, beacon).hex(),
        ),
        "number(seed, {1: n1, 2: n2}, deadbeef)": (
            str(derive_number(SEED, both, beacon)),
            str(draw_checker.number(SEED, both, beacon)),
        ),
        'number(seed, {2: n2}, "")': (
            str(derive_number(SEED, {2: N2})),
            str(draw_checker.number(SEED, {2: N2}, b"")),
        ),
        f'number({rejecting.hex()}, {{}}, "")': (
            str(derive_number(rejecting, {})),
            str(draw_checker.number(rejecting, {}, b"")),
        ),
    }
    assert set(vectors) == set(computed)
    for name, (code, checker) in computed.items():
        assert code == checker == vectors[name], name


def test_the_doc_digest_vectors_hold() -> None:
    """The agency and bets digests of docs/DRAW.md section 7 are what the code computes."""
    text = DOC.read_text(encoding="utf-8")
    digest = AgencyDigest()
    record = "Ana\x1fPérez\x1f30904465\x1f1999-03-17\x1f7574\x1e".encode()
    digest.update(record, 1)
    assert digest.digest().hex() in text
    assert draw_checker.agency_digest([record]) == digest.digest()
    bets = BetsDigest()
    rows = [
        ["1", "Ana", "Pérez", "30904465", "1999-03-17", "7574"],
        ["2", "Luis", "Gómez", "12345678", "1980-01-02", "0042"],
        ["1", "Eva", "Ruiz", "22222222", "2000-12-31", "1"],
    ]
    for row in rows:
        bets.add(int(row[0]), *row[1:5], int(row[5]), 7574)
    assert bets.digest().hex() in text
    count, checked, winners = draw_checker.bets_digest_and_winners(rows, 7574)
    assert (count, checked, winners) == (3, bets.digest(), {"1": ["30904465"]})


def test_every_number_is_reached_equally_often_by_the_mapping() -> None:
    """Rejection sampling over u16 values below 60,000 hits each of 0..9999 exactly 6 times."""
    counts = [0] * 10_000
    for value in range(60_000):
        counts[value % 10_000] += 1
    assert set(counts) == {6}


# -- a random round, in process ----------------------------------------------------------------


async def _agency_round(
    port: int, agency: int, rows: Sequence[tuple[str, ...]], state: Path
) -> tuple[list[str], AsyncAgency]:
    participant = DrawParticipant(agency, state / f"agency-{agency}.json")
    async with AsyncAgency(agency, "127.0.0.1", port, draw=participant, batch_max_amount=50) as ag:
        await ag.send_bets(rows)
        await ag.notify()
        return await ag.winners(), ag


def _rows(agency: int, count: int = 400) -> list[tuple[str, ...]]:
    # Every number 0..399 once per agency: whatever the draw, a few may win.
    return [
        ("Ana", f"Ag{agency}", str(agency * 100_000 + i), "1990-05-17", str(i % 10_000))
        for i in range(count)
    ]


async def _random_round(tmp_path: Path, agencies: int = 3, **config: Any) -> dict[str, Any]:
    """A whole random round of ``agencies`` agencies; returns the server's final status."""
    config.setdefault("reveal_deadline", 10 * UNIT)
    async with running_server(tmp_path, agencies=agencies, draw="random", **config) as server:
        results = await asyncio.gather(
            *(_agency_round(server.port, a, _rows(a), tmp_path) for a in range(1, agencies + 1))
        )
        for _, agency in results:
            assert agency.receipt is not None and agency.receipt.ok
        return server.status()


def _export(tmp_path: Path) -> tuple[Path, Path]:
    csv_path, record = tmp_path / "bets.csv", tmp_path / "draw.json"
    data = str(data_dir_of(tmp_path))
    assert (
        main(["export", "--data-dir", data, "--csv", str(csv_path), "--draw-record", str(record)])
        == 0
    )
    return csv_path, record


def _verify(csv_path: Path, record: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    status = main(["verify", "--csv", str(csv_path), "--record", str(record)])
    captured = capsys.readouterr()
    return status, captured.out + captured.err


def _csv_rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return [row for row in csv.reader(f) if row]


def _checker(csv_path: Path, record: Path) -> str | None:
    rows = _csv_rows(csv_path)
    result: str | None = draw_checker.check(json.loads(record.read_text("utf-8")), rows)
    return result


async def test_a_random_round_passes_verify_and_the_independent_checker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], log_stream: io.StringIO
) -> None:
    """A random round's export passes `lottery verify` and the checker written from DRAW.md."""
    status = await _random_round(tmp_path)
    assert status["draw_mode"] == "random" and status["not_revealed"] == []
    shown = render_text(status)  # what `lottery status` prints
    assert status["commitment"] in shown and status["seed"] in shown
    assert all(a["committed"] and a["revealed"] for a in status["agency"])
    csv_path, record_path = _export(tmp_path)
    record = json.loads(record_path.read_text("utf-8"))
    assert record["number"] == status["number"] and record["seed"] == status["seed"]
    code, out = _verify(csv_path, record_path, capsys)
    assert code == 0 and "PASS" in out, out
    assert _checker(csv_path, record_path) is None
    data = str(data_dir_of(tmp_path))
    assert main(["verify", "--data-dir", data, "--record", str(record_path)]) == 0
    started = log_events(log_stream, "compromiso_sorteo", compromiso=record["seed_commitment"])
    assert started, "the server's commitment is logged at start"
    drawn = log_events(log_stream, "sorteo", result="success")
    assert len(drawn) == 1 and drawn[0]["semilla"] == record["seed"]
    assert drawn[0]["no_revelaron"] == "-"
    assert len(log_events(log_stream, "recibo", result="success")) == 3


def _tamper_csv(csv_path: Path, how: str) -> None:
    rows = _csv_rows(csv_path)
    if how == "added":
        rows.append(["1", "Eve", "Added", "99999999", "1990-01-01", "1"])
    elif how == "removed":
        del rows[len(rows) // 2]
    elif how == "altered":
        rows[3][1] = "Mallory"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\r\n").writerows(rows)


def _tamper_record(record_path: Path, how: str) -> None:
    record = json.loads(record_path.read_text("utf-8"))
    if how == "wrong winner":
        record["winners"]["1"] = [*record["winners"].get("1", []), "100001"]
    elif how == "swapped nonce":
        record["reveals"]["1"], record["reveals"]["2"] = (
            record["reveals"]["2"],
            record["reveals"]["1"],
        )
    elif how == "wrong number":
        record["number"] = (record["number"] + 1) % 10_000
    elif how == "hidden withholding":
        record["commitments"]["3"] = record["commitments"]["3"]
        del record["reveals"]["3"]
    record_path.write_text(json.dumps(record), "utf-8")


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("added", "bets"),
        ("removed", "bets"),
        ("altered", "bets digest differs"),
        ("wrong winner", "winners"),
        ("swapped nonce", "does not match its commitment"),
        ("wrong number", "number"),
        ("hidden withholding", "not_revealed"),
    ],
)
async def test_each_kind_of_tampering_is_caught(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str, message: str
) -> None:
    """A bet added, removed or altered, a wrong winner or number, a swapped nonce: verify fails."""
    await _random_round(tmp_path)
    csv_path, record_path = _export(tmp_path)
    if how in ("added", "removed", "altered"):
        _tamper_csv(csv_path, how)
    else:
        _tamper_record(record_path, how)
    code, out = _verify(csv_path, record_path, capsys)
    assert code == 1 and "FAIL" in out and message in out, out
    assert _checker(csv_path, record_path) is not None


async def test_malformed_verify_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A record that is not JSON, a bad seed, or a CSV that is not bets.csv: one line, exit 2."""
    await _random_round(tmp_path, agencies=2)
    csv_path, record_path = _export(tmp_path)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json", "utf-8")
    code, out = _verify(csv_path, bad_json, capsys)
    assert code == 2 and len(out.strip().splitlines()) == 1, out
    record = json.loads(record_path.read_text("utf-8"))
    record["seed"] = "zz"
    bad_seed = tmp_path / "bad-seed.json"
    bad_seed.write_text(json.dumps(record), "utf-8")
    code, out = _verify(csv_path, bad_seed, capsys)
    assert code == 2 and "seed" in out and len(out.strip().splitlines()) == 1, out
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("a,b\r\n", "utf-8")
    code, out = _verify(bad_csv, record_path, capsys)
    assert code == 2 and "line 1" in out and len(out.strip().splitlines()) == 1, out


# -- the protocol rules of the draw --------------------------------------------------------------


async def _commit(conn: Any, agency: int, nonce: bytes) -> DrawInfo:
    await conn.send(DrawQuery())
    info = await conn.receive()
    assert isinstance(info, DrawInfo) and info.mode == "random"
    await conn.send(Commit(agency_commitment(agency, nonce)))
    assert await conn.receive() == Ack(0)
    return info


async def test_an_old_agency_is_refused_clearly_at_its_first_batch(tmp_path: Path) -> None:
    """An agency that never asks how the round is drawn gets BAD_VERSION at its first bet."""
    async with (
        running_server(tmp_path, draw="random") as server,
        raw_connection(server.port, 1) as conn,
    ):
        await conn.send(Batch(1, make_rows(2)))  # type: ignore[arg-type]
        reply = await conn.receive()
        assert isinstance(reply, Error) and reply.code == ErrorCode.BAD_VERSION
        assert "upgrade the agency" in reply.message
        await conn.expect_eof()


async def test_a_reveal_before_betting_closes_is_a_protocol_error(tmp_path: Path) -> None:
    """REVEAL while agencies are still betting: OUT_OF_ORDER, and the connection closes."""
    async with (
        running_server(tmp_path, draw="random") as server,
        raw_connection(server.port, 1) as conn,
    ):
        await _commit(conn, 1, N1)
        await conn.send(Reveal(N1))
        reply = await conn.receive()
        assert isinstance(reply, Error) and reply.code == ErrorCode.OUT_OF_ORDER
        await conn.expect_eof()


async def test_the_first_commitment_is_kept_and_a_different_one_refused(
    tmp_path: Path, log_stream: io.StringIO
) -> None:
    """A second, different COMMIT is refused and logged; the connection goes on; the first stays."""
    async with running_server(tmp_path, draw="random") as server:
        async with raw_connection(server.port, 1) as conn:
            await _commit(conn, 1, N1)
        async with raw_connection(server.port, 1) as conn:
            await conn.send(DrawQuery(), Commit(agency_commitment(1, N2)))
            assert isinstance(await conn.receive(), DrawInfo)
            reply = await conn.receive()
            assert isinstance(reply, Error) and reply.code == ErrorCode.BAD_COMMITMENT
            await conn.send(Batch(1, make_rows(1)))  # type: ignore[arg-type]
            assert await conn.receive() == Ack(1)  # its bets still count
    assert log_events(log_stream, "compromiso_agencia", result="fail", agencia=1)
    store = SQLiteStore(data_dir_of(tmp_path))
    assert store.draw_state().commitments == {1: agency_commitment(1, N1)}
    store.close()


async def test_a_missing_reveal_is_left_out_and_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], log_stream: io.StringIO
) -> None:
    """An agency that commits and never reveals is left out at the deadline, and named."""
    async with running_server(tmp_path, draw="random", reveal_deadline=0.5 * UNIT) as server:
        async with raw_connection(server.port, 2) as silent:
            await _commit(silent, 2, N2)
            await silent.send(Batch(1, make_rows(3, start=500)), Done())  # type: ignore[arg-type]
            assert await silent.receive() == Ack(1) and await silent.receive() == Ack(0)
            _winners, agency = await _agency_round(server.port, 1, _rows(1), tmp_path)
        status = server.status()
    assert status["not_revealed"] == [2] and status["reveals"].keys() == {"1"}
    assert log_events(log_stream, "revelacion", result="fail", no_revelaron="2")
    assert log_events(log_stream, "sorteo", result="success", no_revelaron="2")
    csv_path, record_path = _export(tmp_path)
    record = json.loads(record_path.read_text("utf-8"))
    assert record["not_revealed"] == [2]
    assert record["number"] == derive_number(
        bytes.fromhex(record["seed"]), {1: agency._session.draw.nonce}
    )  # type: ignore[union-attr,arg-type]
    code, out = _verify(csv_path, record_path, capsys)
    assert code == 0 and "not revealed: 2" in out, out


async def test_a_wrong_nonce_is_refused_and_counts_as_not_revealing(tmp_path: Path) -> None:
    """A REVEAL not matching the commitment gets BAD_COMMITMENT; the draw goes on without it."""
    async with running_server(tmp_path, agencies=1, draw="random") as server:
        async with raw_connection(server.port, 1) as conn:
            await _commit(conn, 1, N1)
            await conn.send(Done(), WinnersQuery())
            assert await conn.receive() == Ack(0)
            assert isinstance(await conn.receive(), RevealWanted)
            await conn.send(Reveal(N2))
            reply = await conn.receive()
            assert isinstance(reply, Error) and reply.code == ErrorCode.BAD_COMMITMENT
            await conn.send(Reveal(N1))  # too late: the wrong one counted
            reply = await conn.receive()
            assert isinstance(reply, Error) and reply.code == ErrorCode.BAD_COMMITMENT
            await conn.send(WinnersQuery())
            receipt = await conn.receive()
            assert receipt == Receipt(0, AgencyDigest().digest())
            assert await conn.receive() == Winners(())
        assert server.status()["not_revealed"] == [1]


# -- restarts ------------------------------------------------------------------------------------


async def test_a_server_restarted_between_betting_and_draw_draws_once_with_the_same_seed(
    tmp_path: Path, log_stream: io.StringIO
) -> None:
    """Killed after betting closed, before the reveals: the same commitments, one draw, revealed."""
    async with running_server(tmp_path, draw="random", reveal_deadline=60 * UNIT) as server:
        for agency, nonce in ((1, N1), (2, N2)):
            async with raw_connection(server.port, agency) as conn:
                await _commit(conn, agency, nonce)
                await conn.send(Batch(1, make_rows(5, start=agency * 10)), Done())  # type: ignore[arg-type]
                assert await conn.receive() == Ack(1) and await conn.receive() == Ack(0)
        before = server.status()
        assert before["opened"] and not before["drawn"]
        async with raw_connection(server.port, 1) as conn:  # agency 1 reveals; 2 never gets to
            await conn.send(WinnersQuery())
            assert isinstance(await conn.receive(), RevealWanted)
            await conn.send(Reveal(N1))
            assert await conn.receive() == Ack(0)
    async with running_server(tmp_path, draw="random", reveal_deadline=60 * UNIT) as server:
        after = server.status()
        assert after["commitment"] == before["commitment"] and not after["drawn"]
        assert [a["revealed"] for a in after["agency"]] == [True, False]
        async with raw_connection(server.port, 2) as conn:
            await _commit(conn, 2, N2)  # the same commitment again, as a reconnect sends
            await conn.send(WinnersQuery())
            assert isinstance(await conn.receive(), RevealWanted)
            await conn.send(Reveal(N2), WinnersQuery())
            assert await conn.receive() == Ack(0)
            assert isinstance(await conn.receive(), Receipt)
            assert isinstance(await conn.receive(), Winners)
        drawn = server.status()
    seed = bytes.fromhex(drawn["seed"])
    assert seed_commitment(seed).hex() == before["commitment"]
    assert drawn["number"] == derive_number(seed, {1: N1, 2: N2})
    # Killed after the draw: it comes back with the same draw, and says so.
    async with running_server(tmp_path, draw="random") as server:
        again = server.status()
        assert (again["seed"], again["number"]) == (drawn["seed"], drawn["number"])
        assert not await server.store.draw()
    assert len(log_events(log_stream, "sorteo", result="success")) == 1
    assert log_events(log_stream, "sorteo_publicado", semilla=drawn["seed"])


def test_a_data_dir_keeps_its_draw_mode(tmp_path: Path) -> None:
    """A round created random cannot reopen fixed, nor an old fixed one random."""
    SQLiteStore(tmp_path / "r", 2, draw_mode="random").close()
    with pytest.raises(ConfigError, match="random draw"):
        SQLiteStore(tmp_path / "r", 2, draw_mode="fixed")
    old = SQLiteStore(tmp_path / "f", 2, draw_mode=None)  # as before draw modes
    old.commit([PendingBatch(1, 1, make_rows(1))])
    old.close()
    with pytest.raises(ConfigError, match="fixed draw"):
        SQLiteStore(tmp_path / "f", 2, draw_mode="random")
    reopened = SQLiteStore(tmp_path / "f", 2, draw_mode="fixed")
    assert reopened.draw_state().seed is None
    reopened.close()


def test_an_agency_keeps_its_nonce_across_restarts_and_never_makes_a_second(tmp_path: Path) -> None:
    """A restarted agency process reads back the nonce of this round; a new round gets a new one."""
    path = tmp_path / "state.json"
    first = DrawParticipant(3, path).nonce_for(b"\x01" * 32)
    assert DrawParticipant(3, path).nonce_for(b"\x01" * 32) == first
    other_round = DrawParticipant(3, path).nonce_for(b"\x02" * 32)
    assert other_round != first
    assert DrawParticipant(3, path).nonce_for(b"\x01" * 32) == first


async def test_a_restarted_agency_reveals_the_nonce_it_committed_to(tmp_path: Path) -> None:
    """An agency process that dies after committing reveals the same nonce from its state file."""
    async with running_server(tmp_path, agencies=1, draw="random") as server:
        state = tmp_path / "agency-1.json"
        async with AsyncAgency(1, "127.0.0.1", server.port, draw=DrawParticipant(1, state)) as ag:
            await ag.send_bets(_rows(1, 10))
        _winners, agency = await _agency_round(server.port, 1, _rows(1, 20), tmp_path)
        assert agency.receipt is not None and agency.receipt.ok
        status = server.status()
    assert status["not_revealed"] == [] and status["agency"][0]["revealed"]


# -- receipts ------------------------------------------------------------------------------------


class DroppingStore(SQLiteStore):
    """A store that loses one bet: the last of agency 1's first batch (a lying central)."""

    def commit(self, batches: Sequence[PendingBatch]) -> list[Outcome]:
        kept = [
            PendingBatch(b.agency, b.seq, list(b.records)[:-1])
            if (b.agency, b.seq) == (1, 1)
            else b
            for b in batches
        ]
        return super().commit(kept)


async def test_a_receipt_mismatch_shows_at_the_agency(
    tmp_path: Path, log_stream: io.StringIO
) -> None:
    """A central that dropped one bet sends a receipt that fails the agency's check, logged."""

    def open_store(config: ServerConfig) -> SQLiteStore:
        return DroppingStore(
            config.data_dir, config.agencies, synchronous="OFF", draw_mode="random"
        )

    async with running_server(tmp_path, open_store, agencies=1, draw="random") as server:
        _winners, agency = await _agency_round(server.port, 1, _rows(1, 120), tmp_path)
    receipt = agency.receipt
    assert receipt is not None and not receipt.ok
    assert (receipt.server_bets, receipt.own_bets) == (119, 120)
    failed = log_events(log_stream, "recibo", result="fail")
    assert failed and failed[0]["digesto_servidor"] == receipt.server_digest.hex()
    assert failed[0]["digesto_agencia"] == receipt.own_digest.hex()


async def test_fixed_mode_answers_the_draw_query_and_takes_no_commitments(tmp_path: Path) -> None:
    """A fixed-draw server says so in DRAW_INFO, refuses COMMIT, draws 7574, and gives a receipt."""
    async with (
        running_server(tmp_path, agencies=1) as server,
        raw_connection(server.port, 1) as conn,
    ):
        await conn.send(DrawQuery())
        assert await conn.receive() == DrawInfo("fixed", bytes(32))
        await conn.send(Commit(bytes(32)))
        reply = await conn.receive()
        assert isinstance(reply, Error) and reply.code == ErrorCode.BAD_COMMITMENT
        await conn.send(Batch(1, make_rows(3, winners=[1])), Done(), WinnersQuery())  # type: ignore[arg-type]
        assert await conn.receive() == Ack(1) and await conn.receive() == Ack(0)
        receipt = await conn.receive()  # a fixed round gives receipts too
        assert isinstance(receipt, Receipt) and receipt.bets == 3
        assert await conn.receive() == Winners(("30000001",))
        assert server.status()["number"] == 7574
    assert re.search("draw_mode", json.dumps(server.status()))


async def test_the_winners_long_poll_before_betting_closes_is_not_ready(tmp_path: Path) -> None:
    """In a random round, a winners query while others bet waits, then answers NOT_READY."""
    config = {"draw": "random", "timeout_winners": 0.2 * UNIT}
    async with running_server(tmp_path, **config) as server, raw_connection(server.port, 1) as conn:
        await _commit(conn, 1, N1)
        await conn.send(Done(), WinnersQuery())
        assert await conn.receive() == Ack(0)
        assert await conn.receive() == NotReady(1, (2,))  # agency 2 still bets


def test_a_beacon_given_before_the_draw_is_mixed_in_and_verified(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`lottery draw --beacon` stores a beacon; the draw mixes it in; verify checks it."""
    data = tmp_path / "data"
    store = SQLiteStore(data, 1, synchronous="OFF", draw_mode="random")
    store.commit([PendingBatch(1, 1, make_rows(5))])
    store.close()
    assert main(["draw", "--data-dir", str(data), "--beacon", "deadbeef"]) == 0
    assert main(["draw", "--data-dir", str(data), "--beacon", "not hex"]) == 2
    store = SQLiteStore(data)
    assert store.draw()
    state = store.draw_state()
    assert state.seed is not None and state.beacon == bytes.fromhex("deadbeef")
    assert state.number == derive_number(state.seed, {}, state.beacon)
    store.close()
    assert main(["draw", "--data-dir", str(data), "--beacon", "00"]) == 1  # too late
    csv_path, record_path = _export(tmp_path)
    assert json.loads(record_path.read_text("utf-8"))["beacon"] == "deadbeef"
    code, out = _verify(csv_path, record_path, capsys)
    assert code == 0, out
    assert _checker(csv_path, record_path) is None


async def test_an_agency_that_lost_its_nonce_counts_as_not_revealing_and_gets_its_winners(
    tmp_path: Path, log_stream: io.StringIO
) -> None:
    """A restarted agency without its nonce is refused, never asked to reveal, and still served."""
    rows = _rows(1, 10)
    config = {"agencies": 1, "draw": "random", "reveal_deadline": 0.5 * UNIT}
    async with running_server(tmp_path, **config) as server:
        async with raw_connection(server.port, 1) as first:  # the process that died
            await _commit(first, 1, N1)
            await first.send(Batch(1, rows[:5], 5))  # type: ignore[arg-type]
            assert await first.receive() == Ack(1)
        lost = DrawParticipant(1, None)  # its state file is gone: a new nonce
        async with AsyncAgency(1, "127.0.0.1", server.port, draw=lost) as agency:
            await agency.send_bets(rows)
            await agency.notify()
            await agency.winners()
        assert lost.refused and not lost.revealed
        assert agency.receipt is not None and agency.receipt.ok
        assert server.status()["not_revealed"] == [1]
    assert log_events(log_stream, "compromiso_sorteo", result="fail", agencia=1)


@pytest.mark.parametrize("number", [7, 42, 516, 7574, 0])
def test_the_draw_scan_finds_every_spelling_of_the_number_in_stored_order(number: int) -> None:
    """Padded or not, the number field matches; other fields and longer numbers never do."""
    from lottery.store.drawscan import documents_with_number

    spellings = {str(number).zfill(width) for width in range(len(str(number)), 5)}
    rows, expected = [], []
    for i, value in enumerate([*sorted(spellings), f"1{number}"[-4:], "9999", "0", "70"]):
        document = str(10_000 + i)
        rows.append(f"A\x1f{number}\x1f{document}\x1f1990-05-17\x1f{value}\x1e")
        if int(value) == number:
            expected.append(document)
    data = "".join(rows).encode()
    assert documents_with_number(data, number) == expected
    assert len(expected) >= len(spellings)


def test_a_fixed_draw_has_a_record_that_verifies_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fixed round's record (number 7574, bets digest, winners) passes verify; a change fails."""
    data = data_dir_of(tmp_path)
    store = SQLiteStore(data, 2, synchronous="OFF")
    store.commit(
        [
            PendingBatch(1, 1, make_rows(20, winners=[3, 7])),
            PendingBatch(2, 1, make_rows(5, start=50)),
        ]
    )
    assert store.draw()
    store.close()
    csv_path, record_path = _export(tmp_path)
    record = json.loads(record_path.read_text("utf-8"))
    assert record["mode"] == "fixed" and record["number"] == 7574
    assert record["winners"] == {"1": ["30000003", "30000007"]}
    assert _verify(csv_path, record_path, capsys)[0] == 0
    assert _checker(csv_path, record_path) is None
    assert main(["verify", "--data-dir", str(data), "--record", str(record_path)]) == 0
    _tamper_csv(csv_path, "removed")
    assert _verify(csv_path, record_path, capsys)[0] == 1


async def test_lottery_agency_exits_1_on_a_receipt_mismatch(tmp_path: Path) -> None:
    """The `lottery agency` round ends with exit status 1 when the receipt does not match."""
    from lottery.cli import _agency_round
    from lottery.config import AgencyConfig

    def open_store(config: ServerConfig) -> SQLiteStore:
        return DroppingStore(
            config.data_dir, config.agencies, synchronous="OFF", draw_mode="random"
        )

    bets = write_agency_file(tmp_path / "agency-1.csv", _rows(1, 50))
    async with running_server(tmp_path, open_store, agencies=1, draw="random") as server:
        config = AgencyConfig(id=1, server_address=f"127.0.0.1:{server.port}", bets=str(bets))
        assert await _agency_round(config) == 1
    assert (tmp_path / "lottery-draw-agency-1.json").exists()  # the nonce, beside the bets


async def test_a_wrong_reveal_stays_refused_across_a_server_restart(tmp_path: Path) -> None:
    """After a wrong nonce, the right one is refused even by a restarted server."""
    config = {"draw": "random", "reveal_deadline": 60 * UNIT}
    async with running_server(tmp_path, **config) as server:
        for agency, nonce in ((1, N1), (2, N2)):
            async with raw_connection(server.port, agency) as conn:
                await _commit(conn, agency, nonce)
                await conn.send(Done())
                assert await conn.receive() == Ack(0)
        async with raw_connection(server.port, 1) as conn:
            await conn.send(Reveal(N2))
            reply = await conn.receive()
            assert isinstance(reply, Error) and reply.code == ErrorCode.BAD_COMMITMENT
    async with running_server(tmp_path, **config) as server:
        async with raw_connection(server.port, 1) as conn:
            await conn.send(Reveal(N1))
            reply = await conn.receive()
            assert isinstance(reply, Error) and reply.code == ErrorCode.BAD_COMMITMENT
            assert "did not match" in reply.message
        assert not server.status()["agency"][0]["revealed"]


class _ScriptedConnection:
    """Answers each request with the next reply of a script (join_draw's side only)."""

    def __init__(self, *replies: Any) -> None:
        self.replies = list(replies)
        self.sent: list[Any] = []

    async def request(self, message: Any, timeout: float) -> Any:
        self.sent.append(message)
        return self.replies.pop(0)


@pytest.mark.parametrize("failing", ["query", "commit"])
async def test_a_storage_refusal_while_joining_the_draw_is_retried(failing: str) -> None:
    """STORAGE to DRAW_QUERY or COMMIT (a shared store restarting) is a fault to retry,
    as after a lost line, not a refusal that ends the agency."""
    from lottery.connection import StorageFault, retryable
    from lottery.drawsession import join_draw
    from lottery.protocol import DrawInfo

    storage = Error(ErrorCode.STORAGE, "cannot record agency 1's commitment")
    replies = [storage] if failing == "query" else [DrawInfo("random", bytes(32)), storage]
    conn = _ScriptedConnection(*replies)
    with pytest.raises(StorageFault) as raised:
        await join_draw(conn, DrawParticipant(1), 1.0, structlog.get_logger())  # type: ignore[arg-type]
    assert retryable(raised.value)
