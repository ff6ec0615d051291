"""The round's web page in a real browser: headless Chromium, driven by Playwright.

A real server process (scripts/roundrunner.py) with ``--http-port 0`` and real
agency processes; the page is loaded once and must follow the round by itself.
Chromium is Debian's (/usr/bin/chromium, which .ci/run installs with apt-get):
Playwright never downloads a browser here. Under CI=true these tests run or
fail, never skip.

``LOTTERY_SCREENSHOT=docs/img/round-page.png`` (what ``make screenshot`` sets)
also saves the finished round's page there, for the README.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, async_playwright, expect

from lottery.auth import load_operator_token, make_secrets
from lottery.web import serve_http
from roundrunner import (
    AgencyProcess,
    ServerProcess,
    log_value,
    start_agency,
    start_server,
    stop_server,
    wait_agencies,
)

from .conftest import IN_CI, UNIT
from .helpers import make_rows, running_server, write_agency_file

CHROMIUM = os.environ.get("LOTTERY_CHROMIUM", "/usr/bin/chromium")
if not IN_CI and not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
    pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium", allow_module_level=True)

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(120 * UNIT)]

#: Milliseconds the page has to show a change (it polls once a second).
SHOWN = 15_000 * UNIT
WINNING_NUMBER = 7574
#: Bets per agency, and which rows (by index) bet on the winning number.
AGENCY_BETS = {1: 30_000, 2: 20_000, 3: 25_000}
AGENCY_WINNERS = {1: [5, 17], 2: [], 3: [0, 100, 2_000]}


@contextmanager
def round_server(tmp_path: Path, agencies: int, *extra: str) -> Iterator[tuple[ServerProcess, int]]:
    """A real server with its HTTP listener on a free port; yields it and that port."""
    server = start_server(
        tmp_path / "data",
        agencies,
        extra_args=["--http-port", "0", "--winning-number", str(WINNING_NUMBER), *extra],
    )
    try:
        port = int(log_value(server.lines, "http", "port") or 0)
        assert port > 0, server.log()
        yield server, port
    finally:
        assert stop_server(server) == 0, server.log()


@asynccontextmanager
async def browser_page(width: int = 1280, height: int = 900) -> AsyncIterator[Page]:
    """A page of headless system Chromium, closed after."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            context = await browser.new_context(
                viewport={"width": width, "height": height}, device_scale_factor=1
            )
            yield await context.new_page()
        finally:
            await browser.close()


def agency_file(tmp_path: Path, agency: int) -> Path:
    rows = make_rows(AGENCY_BETS[agency], start=agency * 1_000_000, winners=AGENCY_WINNERS[agency])
    return write_agency_file(tmp_path / f"agency-{agency}.csv", rows)


async def run_agency(
    page: Page, tmp_path: Path, server: ServerProcess, agency: int, started: list[AgencyProcess]
) -> None:
    """Start one agency (into ``started``); the page must show its bets stored and it done."""
    bets = await asyncio.to_thread(agency_file, tmp_path, agency)
    started.append(start_agency(agency, server.port, bets))
    done = len(started)
    row = page.locator(f'#agencies tr[data-agency="{agency}"]')
    await expect(row.locator("td.bets")).to_have_text(f"{AGENCY_BETS[agency]:,}", timeout=SHOWN)
    await expect(page.locator("#barrier-text")).to_have_text(
        f"{done} of {len(AGENCY_BETS)} done", timeout=SHOWN
    )


async def test_the_page_follows_a_whole_round_without_a_reload(tmp_path: Path) -> None:
    """Agencies fill up one by one, the barrier opens and the winners show, on one page load."""
    agencies: list[AgencyProcess] = []
    with round_server(tmp_path, len(AGENCY_BETS)) as (server, port):
        async with browser_page() as page:
            loads: list[str] = []
            page.on("load", lambda _: loads.append("load"))
            await page.goto(f"http://127.0.0.1:{port}/")
            # A mark that a reload would wipe out.
            await page.evaluate("window.loadedOnce = true")
            await expect(page.locator("#barrier-text")).to_have_text("0 of 3 done", timeout=SHOWN)
            await expect(page.locator("#agencies tbody tr")).to_have_count(3)
            await expect(page.locator("#draw")).to_be_hidden()

            try:
                await run_agency(page, tmp_path, server, 1, agencies)
                one = page.locator('#agencies tr[data-agency="1"] td')
                # Done and still connected: it waits at the barrier for the others.
                await expect(one.nth(1)).to_have_text("yes")
                await expect(one.nth(3)).to_have_text("done")
                await expect(page.locator("#state")).to_contain_text("waiting for 2 of 3")
                await expect(page.locator("#draw")).to_be_hidden()
                await run_agency(page, tmp_path, server, 2, agencies)
                await run_agency(page, tmp_path, server, 3, agencies)
            finally:
                await asyncio.to_thread(wait_agencies, agencies, 60 * UNIT)
                for agency in agencies:
                    print(f"agency {agency.agency} ({agency.returncode}):\n{agency.output}")
            assert [a.returncode for a in agencies] == [0, 0, 0], [a.output for a in agencies]

            await expect(page.locator("#draw")).to_be_visible(timeout=SHOWN)
            await expect(page.locator("#number")).to_have_text(str(WINNING_NUMBER))
            await expect(page.locator("#winners-total")).to_have_text("5")
            winners = page.locator("#agencies tbody td.winners")
            await expect(winners).to_have_text(["2", "0", "3"])
            await expect(page.locator("#state")).to_contain_text("the draw is made")
            await expect(page.locator("#barrier")).to_have_class("panel open")
            # The sparkline drew the bets arriving: some point above the baseline.
            points = await page.locator("#spark-line").get_attribute("points") or ""
            heights = [float(p.split(",")[1]) for p in points.split()]
            assert len(heights) >= 3 and min(heights) < 29, points
            assert await page.evaluate("window.loadedOnce") is True
            assert loads == ["load"]
            await expect(page.locator("#round-id")).to_be_attached()

            # Nothing arrives any more: the next polls bring bets/s back down to 0.
            await expect(page.locator("#rate")).to_have_text(re.compile(r"^0 peak "), timeout=SHOWN)
            target = os.environ.get("LOTTERY_SCREENSHOT") or None  # make screenshot
            shot = await page.screenshot(full_page=True, animations="disabled", path=target)
            assert shot.startswith(b"\x89PNG")
    assert {a.agency: a.winners for a in agencies}[2] == []


async def test_with_secrets_the_page_shows_nothing_until_the_operator_token(
    tmp_path: Path,
) -> None:
    """With --secrets the page asks for the token, shows no round without it, and on a phone too."""
    secrets = tmp_path / "secrets.txt"
    make_secrets(2, secrets)
    token = load_operator_token(secrets)
    assert token is not None
    with round_server(tmp_path, 2, "--secrets", str(secrets)) as (_, port):
        async with browser_page(width=390, height=844) as page:
            await page.goto(f"http://127.0.0.1:{port}/")
            await expect(page.locator("#login")).to_be_visible(timeout=SHOWN)
            await expect(page.locator("#round")).to_be_hidden()
            await expect(page.locator("#agencies tbody tr")).to_have_count(0)

            await page.fill("#token", "00" * 32)
            await page.click("#login button")
            await expect(page.locator("#login-error")).to_contain_text("wrong", timeout=SHOWN)
            await expect(page.locator("#round")).to_be_hidden()

            await page.fill("#token", token.hex())
            await page.click("#login button")
            await expect(page.locator("#barrier-text")).to_have_text("0 of 2 done", timeout=SHOWN)
            await expect(page.locator("#login")).to_be_hidden()
            # Readable on a phone: nothing wider than the screen but the table's own scroller.
            overflow = await page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0


async def test_the_page_shows_the_round_id_and_a_random_draws_data_when_status_has_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """round_id, revealed flags, commitment and reveal show once present; 500 rows at most."""
    async with running_server(tmp_path, agencies=600) as server:
        plain = server.round.status

        def status() -> dict[str, Any]:
            # The shape a verifiable draw adds (other branches): the page renders what it finds.
            document = plain()
            document.update(round_id="r-2026-12-01-7f3a", drawn=True, opened=True)
            document.update(winning_number=4321, commitment="c0ffee" * 4, reveal="5eed" * 4)
            for agency in document["agency"]:
                agency.update(done=True, revealed=agency["id"] == 1, winners=agency["id"])
            return document

        monkeypatch.setattr(server.round, "status", status)
        http = await serve_http(server, "127.0.0.1", 0)
        try:
            async with browser_page() as page:
                await page.goto(f"http://127.0.0.1:{http.port}/")
                await expect(page.locator("#round-id")).to_have_text(
                    "r-2026-12-01-7f3a", timeout=SHOWN
                )
                await expect(page.locator("#title")).to_have_text("Round r-2026-12-01-7f3a")
                await expect(page.locator("#agencies-head th")).to_have_text(
                    ["agency", "connected", "bets stored", "done", "revealed", "winners"]
                )
                cells = page.locator('#agencies tr[data-agency="1"] td')
                await expect(cells.nth(4)).to_have_text("yes")
                await expect(page.locator('#agencies tr[data-agency="2"] td').nth(4)).to_have_text(
                    "no"
                )
                await expect(page.locator("#number")).to_have_text("4321")
                await expect(page.locator("#commitment")).to_have_text("c0ffee" * 4)
                await expect(page.locator("#reveal")).to_have_text("5eed" * 4)
                await expect(page.locator("#winners-total")).to_have_text(f"{600 * 601 // 2:,}")
                await expect(page.locator("#agencies tbody tr")).to_have_count(501)
                await expect(page.locator("#more-agencies")).to_contain_text("and 100 more")
        finally:
            await http.aclose()
