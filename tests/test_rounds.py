"""A round's identity, and starting a new one: the old round is archived, never deleted."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest

from lottery.client import AsyncAgency
from lottery.store import SQLiteStore
from lottery.store.archive import archive_round
from roundrunner import log_events as process_log_events
from roundrunner import lottery_command, start_server, stop_server

from .conftest import UNIT
from .helpers import LOOPBACK, data_dir_of, log_events, running_server

pytestmark = pytest.mark.timeout(60)


def finished_round(data_dir: Path) -> str:
    """Make a data directory holding a drawn round; its id."""
    store = SQLiteStore(data_dir, 2)
    try:
        store.mark_done(1)
        store.mark_done(2)
        store.draw()
        return store.round_id
    finally:
        store.close()


def test_a_round_keeps_the_id_it_was_created_with(tmp_path: Path) -> None:
    """The store makes the round's id once, and every later open reads the same one."""
    store = SQLiteStore(tmp_path, 2)
    first = store.round_id
    store.close()
    again = SQLiteStore(tmp_path)
    try:
        assert again.round_id == first
    finally:
        again.close()


def test_a_new_round_archives_the_old_one_and_gets_a_new_id(tmp_path: Path) -> None:
    """archive_round moves the old round into archive/<id>/, readable there, and frees the dir."""
    old = finished_round(tmp_path)
    folder = archive_round(tmp_path, only_if_finished=False)
    assert folder == tmp_path / "archive" / old
    archived = SQLiteStore(folder)
    try:
        assert archived.round_id == old and archived.drawn()
    finally:
        archived.close()
    fresh = SQLiteStore(tmp_path, 2)
    try:
        assert fresh.round_id != old and not fresh.drawn()
    finally:
        fresh.close()


def test_only_a_finished_round_is_archived_if_asked_so(tmp_path: Path) -> None:
    """With only_if_finished, a round whose draw is not made stays, to be resumed."""
    SQLiteStore(tmp_path, 2).close()
    assert archive_round(tmp_path, only_if_finished=True) is None
    assert (tmp_path / "lottery.db").exists()
    assert archive_round(tmp_path / "empty", only_if_finished=False) is None


async def test_a_server_on_a_finished_round_says_so_loudly(
    tmp_path: Path, log_stream: io.StringIO
) -> None:
    """The start line names the round; a drawn one gets a warning saying how to start anew."""
    round_id = finished_round(data_dir_of(tmp_path))
    async with running_server(tmp_path) as server:
        assert server.status()["round"] == round_id
    assert log_events(log_stream, "config", ronda=round_id)
    [warning] = log_events(log_stream, "ronda_terminada", ronda=round_id)
    assert "--new-round" in warning["detalle"]


@pytest.mark.e2e
def test_lottery_server_new_round_archives_the_finished_round(tmp_path: Path) -> None:
    """`lottery server --new-round-if-finished` starts a new round beside the archived old one."""
    old = finished_round(tmp_path)
    server = start_server(tmp_path, 2, extra_args=["--new-round-if-finished"])
    try:
        [config] = process_log_events(server.lines, "config")
    finally:
        stop_server(server)
    assert config["ronda"] != old
    assert process_log_events(server.lines, "ronda_archivada")
    assert not process_log_events(server.lines, "ronda_terminada")
    exported = subprocess.run(
        [*lottery_command(), "export", "--data-dir", str(tmp_path / "archive" / old), "--csv", "-"],
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
    )
    assert exported.returncode == 0, exported.stderr


async def test_every_agency_logs_the_round_it_joined(
    tmp_path: Path, log_stream: io.StringIO
) -> None:
    """WELCOME carries the round's id and the agency logs it, so a leftover round shows."""
    async with running_server(tmp_path) as server:
        async with AsyncAgency(1, LOOPBACK, server.port) as agency:
            await agency.connect()
        round_id = server.round.round_id
    assert log_events(log_stream, "ronda", result="in_progress", ronda=round_id, agencia="1")
