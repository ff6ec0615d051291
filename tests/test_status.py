"""STATUS frames, `query_status`, `lottery.status.render`, and ``lottery status`` / ``ping``."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from lottery.cli import main
from lottery.client import query_status
from lottery.protocol import (
    Ack,
    Batch,
    ClientProtocol,
    Done,
    FrameType,
    Status,
    StatusQuery,
    encode,
)
from lottery.status import render, render_text, summary

from .helpers import (
    LOOPBACK,
    REPLY_TIMEOUT,
    make_rows,
    raw_connection,
    running_server,
    split_frames,
)

pytestmark = pytest.mark.timeout(60)


def status_of(
    agencies: int = 2,
    *,
    bets: dict[int, int] | None = None,
    connected: tuple[int, ...] = (),
    done: tuple[int, ...] = (),
    drawn: bool = False,
    draw_seconds: float | None = None,
) -> dict[str, Any]:
    """A STATUS JSON document, decoded, as a server would send it."""
    bets = bets or {}
    return {
        "agencies": agencies,
        "opened": len(done) == agencies,
        "drawn": drawn,
        "draw_seconds": draw_seconds,
        "connections": len(connected),
        "agency": [
            {
                "id": a,
                "committed_bets": bets.get(a, 0),
                "last_seq": 1 if a in bets else 0,
                "connected": a in connected,
                "done": a in done,
            }
            for a in range(1, agencies + 1)
        ],
    }


def closed_port() -> int:
    """A loopback port nothing listens on (one just picked by the OS, then released)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


# -- the STATUS frame -----------------------------------------------------------------------


async def test_status_is_answered_before_and_after_the_handshake(tmp_path: Path) -> None:
    """A STATUS_QUERY gets the round's JSON before HELLO, after it, and after a batch."""
    async with running_server(tmp_path) as server, raw_connection(server.port) as conn:
        await conn.send(StatusQuery())
        reply = await conn.receive()
        assert isinstance(reply, Status) and reply.last
        before = json.loads(reply.text)
        assert before["agencies"] == 2 and before["connections"] == 1
        assert before["drawn"] is False and before["draw_seconds"] is None
        assert [a["connected"] for a in before["agency"]] == [False, False]

        await conn.hello(1)
        await conn.send(Batch(1, make_rows(3)))  # type: ignore[arg-type]
        assert await conn.receive() == Ack(1)
        await conn.send(StatusQuery())
        reply = await conn.receive()
        assert isinstance(reply, Status)
        after = json.loads(reply.text)
        assert after["agency"][0] == {
            "id": 1,
            "committed_bets": 3,
            "last_seq": 1,
            "connected": True,
            "done": False,
        }
        assert after["agency"][1]["connected"] is False


async def test_status_is_answered_after_done(tmp_path: Path) -> None:
    """An agency that said it is done may still ask for the status, and shows as done."""
    async with running_server(tmp_path) as server, raw_connection(server.port, 2) as conn:
        await conn.send(Done())
        assert await conn.receive() == Ack(0)
        await conn.send(StatusQuery())
        reply = await conn.receive()
        assert isinstance(reply, Status)
        status = json.loads(reply.text)
        assert [a["done"] for a in status["agency"]] == [False, True]
        assert summary(status) == "draw: waiting for 1 of 2 agencies (1)"


async def test_a_thousand_agencies_status_spans_frames_and_decodes_whole(tmp_path: Path) -> None:
    """With 1,000 agencies the JSON takes several STATUS frames, only the last flagged as last."""
    async with running_server(tmp_path, agencies=1000) as server:
        async with raw_connection(server.port) as conn:
            conn.writer.write(encode(StatusQuery()))
            data = b""
            frames: list[tuple[int, bytes]] = []
            async with asyncio.timeout(REPLY_TIMEOUT):
                # Read until the frame flagged last (its body's first byte is 1).
                while not frames or frames[-1][1][5] != 1:
                    chunk = await conn.reader.read(65536)
                    assert chunk, "the server closed before the last STATUS frame"
                    data += chunk
                    frames, rest = split_frames(data)
            assert rest == b""
        assert len(frames) >= 2
        assert {ftype for ftype, _ in frames} == {FrameType.STATUS}
        assert [frame[5] for _, frame in frames] == [0] * (len(frames) - 1) + [1]
        protocol = ClientProtocol()
        protocol.receive_data(data)
        messages = list(protocol.events())
        assert len(messages) == 1 and isinstance(messages[0], Status)
        status = json.loads(messages[0].text)
        assert [a["id"] for a in status["agency"]] == list(range(1, 1001))

        queried = await query_status(LOOPBACK, server.port, REPLY_TIMEOUT)
        assert queried["agencies"] == 1000 and len(queried["agency"]) == 1000


async def test_query_status_returns_the_decoded_json(tmp_path: Path) -> None:
    """`query_status` returns the STATUS document as a dict, with no handshake."""
    async with running_server(tmp_path) as server, raw_connection(server.port, 1) as conn:
        await conn.send(Batch(1, make_rows(5)))  # type: ignore[arg-type]
        assert await conn.receive() == Ack(1)
        status = await query_status(LOOPBACK, server.port, REPLY_TIMEOUT)
    assert isinstance(status, dict)
    assert set(status) == {
        "round", "agencies", "opened", "drawn", "draw_seconds", "connections", "agency",
        "draw_mode",
    }  # fmt: skip
    assert status["round"] == server.round.round_id
    assert status["agency"][0]["committed_bets"] == 5
    assert status["agency"][0]["connected"] is True
    assert status["connections"] == 2  # the agency and the query itself


async def test_query_status_against_a_closed_port_raises_oserror() -> None:
    """Nobody listening is an OSError, which ``lottery ping`` reports as exit 1."""
    with pytest.raises(OSError):
        await query_status(LOOPBACK, closed_port(), REPLY_TIMEOUT)


# -- rendering ------------------------------------------------------------------------------


def test_plain_text_shows_every_agency_and_who_the_draw_waits_for() -> None:
    """Without rich: the round's id, each agency one aligned row, and who the draw waits for."""
    status = {**status_of(3, bets={1: 1234, 3: 7}, connected=(1,), done=(1, 3)), "round": "r-1"}
    out = io.StringIO()
    render(status, out, use_rich=False)
    title, blank, *lines = out.getvalue().splitlines()
    assert (title, blank) == ("round r-1: 3 agencies", "")
    assert lines[0].split() == ["agency", "committed", "bets", "connected", "done"]
    assert set(lines[1]) == {"-", " "}
    assert [line.split() for line in lines[2:5]] == [
        ["1", "1,234", "yes", "yes"],
        ["2", "0", "no", "no"],
        ["3", "7", "no", "yes"],
    ]
    assert len({len(line) for line in lines[:5]}) == 1  # right-aligned columns
    assert lines[-1] == "draw: waiting for 1 of 3 agencies (2)"
    assert render_text(status) == out.getvalue()


def test_the_summary_line_follows_the_draw() -> None:
    """The summary says who is missing (the first 20), then drawing, then made and how fast."""
    assert summary(status_of(2)) == "draw: waiting for 2 of 2 agencies (1, 2)"
    many = summary(status_of(25))
    assert many.startswith("draw: waiting for 25 of 25 agencies (1, 2, 3,")
    assert many.endswith(", 20 ...)")
    assert summary(status_of(2, done=(1, 2))) == "draw: every agency is done; drawing"
    made = status_of(2, done=(1, 2), drawn=True, draw_seconds=0.0125)
    assert summary(made) == "draw: made in 12.5 ms"
    assert render_text(made).endswith("draw: made in 12.5 ms\n")
    restarted = status_of(2, done=(1, 2), drawn=True)  # drawn before a restart: no duration
    assert summary(restarted) == "draw: made"


def test_rich_writes_a_table_to_a_text_stream() -> None:
    """With rich, the table (title, headers, a row per agency) and the summary reach the stream."""
    status = status_of(3, bets={2: 50_000}, connected=(2,), done=(2,))
    out = io.StringIO()
    render(status, out, use_rich=True)
    text = out.getvalue()
    assert "\x1b[" not in text  # not a terminal: no colour codes
    assert "lottery round ?: 3 agencies" in text
    assert "committed bets" in text
    rows = [line for line in text.splitlines() if "│" in line and "agency" not in line]
    cells = [[c.strip() for c in row.strip("│ ").split("│")] for row in rows]
    assert ["2", "50,000", "yes", "yes"] in cells
    assert ["1", "0", "no", "no"] in cells and ["3", "0", "no", "no"] in cells
    assert text.rstrip().endswith("draw: waiting for 2 of 3 agencies (1, 3)")


def test_without_rich_render_falls_back_to_plain_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """If rich cannot be imported, the default is plain text and use_rich=True raises."""
    for name in ("rich", "rich.console", "rich.table"):
        monkeypatch.setitem(sys.modules, name, None)  # importing it now raises ImportError
    status = status_of(2)
    out = io.StringIO()
    render(status, out)
    assert out.getvalue() == render_text(status)
    with pytest.raises(ImportError):
        render(status, io.StringIO(), use_rich=True)


# -- the command line -------------------------------------------------------------------------
# main() runs its own event loop (asyncio.run), so it runs in a thread while
# the server runs in the test's loop. The server's log goes to ``log_stream``,
# so stdout holds only what the command printed.


async def test_ping_exits_0_when_a_server_answers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], log_stream: io.StringIO
) -> None:
    """``lottery ping HOST:PORT`` exits 0 against a running server and says how the draw is."""
    async with running_server(tmp_path) as server:
        address = f"{LOOPBACK}:{server.port}"
        code = await asyncio.to_thread(main, ["ping", address, "--timeout", str(REPLY_TIMEOUT)])
    assert code == 0
    assert capsys.readouterr().out == (
        f"lottery ping: {address} answers; draw: waiting for 2 of 2 agencies (1, 2)\n"
    )


async def test_ping_exits_1_when_nothing_listens(capsys: pytest.CaptureFixture[str]) -> None:
    """``lottery ping`` against a closed port exits 1 and says the server did not answer."""
    address = f"{LOOPBACK}:{closed_port()}"
    code = await asyncio.to_thread(main, ["ping", address, "--timeout", str(REPLY_TIMEOUT)])
    assert code == 1
    assert capsys.readouterr().out.startswith(f"lottery ping: {address} did not answer")


async def test_status_json_prints_the_servers_document(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], log_stream: io.StringIO
) -> None:
    """``lottery status --server HOST:PORT --json`` prints valid JSON: the STATUS document."""
    async with running_server(tmp_path, agencies=3) as server:
        argv = ["status", "--server", f"{LOOPBACK}:{server.port}", "--json"]
        code = await asyncio.to_thread(main, argv)
    assert code == 0
    status = json.loads(capsys.readouterr().out)
    assert status["agencies"] == 3
    assert [a["id"] for a in status["agency"]] == [1, 2, 3]
    assert status["drawn"] is False


async def test_status_prints_the_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], log_stream: io.StringIO
) -> None:
    """``lottery status --server HOST:PORT`` prints a row per agency and the summary."""
    async with running_server(tmp_path) as server:
        code = await asyncio.to_thread(main, ["status", "--server", f"{LOOPBACK}:{server.port}"])
    assert code == 0
    out = capsys.readouterr().out
    assert "committed bets" in out
    assert out.rstrip().endswith("draw: waiting for 2 of 2 agencies (1, 2)")


async def test_status_against_a_closed_port_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    """``lottery status`` with nobody listening exits 1 with the error on stderr."""
    argv = ["status", "--server", f"{LOOPBACK}:{closed_port()}", "--timeout", "5"]
    assert await asyncio.to_thread(main, argv) == 1
    assert capsys.readouterr().err.startswith("lottery status: ")


def test_status_with_a_bad_address_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed --server is a usage error: exit 2, naming the flag."""
    assert main(["status", "--server", "nowhere"]) == 2
    assert "--server" in capsys.readouterr().err


def test_a_shared_rounds_table_shows_each_agencys_server() -> None:
    """Several servers over one store: the title names the server asked, a column each agency's."""
    status = {
        **status_of(2, bets={1: 5}, connected=(1, 2)),
        "round": "r-1",
        "server_id": "h1:12345",
    }
    status["agency"][0]["server"] = "h1:12345"
    status["agency"][1]["server"] = "h2:12345"
    title, _, header, _, *rows = render_text(status).splitlines()
    assert title == "round r-1: 2 agencies (asked of server h1:12345)"
    assert header.split()[-1] == "server"
    assert [row.split() for row in rows[:2]] == [
        ["1", "5", "yes", "no", "h1:12345"],
        ["2", "0", "yes", "no", "h2:12345"],
    ]
    out = io.StringIO()
    render(status, out, use_rich=True)
    assert "h2:12345" in out.getvalue() and "server" in out.getvalue()
