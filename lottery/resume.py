"""Where a restarted agency picks up: by position in its input, checked by digest.

The WELCOME of an agency's first connection says how far its earlier runs
got: ``input_rows``, its input position just after its last stored bet (rows
of its input read, rejected ones included), and the agency digest of the bets
stored (`lottery.models.agency_digest`). `ResumeCheck` skips the records at
those first positions, whatever their number, hashes the ones it skips, and
once the stored prefix is behind it checks that they are exactly the bets
stored: else the input is not the one the stored bets came from, and it
raises `ResumeMismatch` before anything is sent.

Validity does not depend on the agency's clock: every bet is validated as of
the round's date, which the WELCOME also carries, so a row skipped by one run
is valid or invalid in the next one alike.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

from .errors import ResumeMismatch
from .models import EMPTY_DIGEST, agency_digest
from .protocol import Welcome, skip_records

__all__ = ["ResumeCheck"]


class ResumeCheck:
    """Skips and checks the stored prefix of one agency's input (see the module docstring)."""

    def __init__(
        self, agency: int, input_rows: int = 0, bets: int = 0, digest: bytes = EMPTY_DIGEST
    ) -> None:
        self.agency = agency
        self.input_rows = input_rows
        self.bets = bets
        self.digest = digest
        self.skipped = 0
        self.checked = False
        self._running = agency_digest()

    @classmethod
    def from_welcome(cls, agency: int, welcome: Welcome, log: Any) -> ResumeCheck:
        """The check a process's first WELCOME asks for; logs where this run picks up."""
        check = cls(agency, welcome.input_rows, welcome.committed_bets, welcome.digest)
        if welcome.input_rows:  # an earlier run stored bets: say where this one picks up
            log.info(
                "reanudar", result="in_progress", filas=welcome.input_rows,
                apuestas=welcome.committed_bets, fecha=welcome.today,
            )  # fmt: skip
        return check

    def __repr__(self) -> str:
        return (
            f"<ResumeCheck agency={self.agency} input_rows={self.input_rows} bets={self.bets} "
            f"skipped={self.skipped} checked={self.checked}>"
        )

    def take(
        self, data: bytes, lines: Sequence[int], base: int = 0
    ) -> tuple[bytes, Sequence[int], int]:
        """Drop the records of ``data`` at stored positions; check once past them.

        Args:
            data: encoded records, each ended by 0x1E.
            lines: each record's input row in its source, ascending.
            base: input rows of earlier sources, added to ``lines``.

        Returns:
            The records left, their lines, and how many were dropped.

        Raises:
            ResumeMismatch: the prefix is complete and does not match.
        """
        if self.checked:
            return data, lines, 0
        stored = bisect.bisect_right(lines, self.input_rows - base)
        if stored:
            rest, _ = skip_records(data, stored)
            self._running.update(data[: len(data) - len(rest)])
            self.skipped += stored
            data, lines = rest, lines[stored:]
        if lines:  # a record past the stored prefix: all of the prefix has been seen
            self.check()
        return data, lines, stored

    def check(self) -> None:
        """Check the prefix seen so far against the stored bets (once).

        Raises:
            ResumeMismatch: naming the agency, the rows and what to do.
        """
        if self.checked:
            return
        self.checked = True
        if self.skipped == self.bets and self._running.digest() == self.digest:
            return
        if self.skipped == self.bets:
            what = f"other bets than the {self.bets} stored"
        elif self.skipped < self.bets:
            what = f"only {self.skipped} valid bets, not the {self.bets} stored"
        else:
            what = (
                f"{self.skipped} valid bets, more than the {self.bets} stored (a row fixed there?)"
            )
        raise ResumeMismatch(
            f"agency {self.agency}: the input differs from the {self.bets} bets already stored "
            f"for agency {self.agency}: its first {self.input_rows} rows hold {what}; restore "
            "the file they came from (to fix a rejected row among them, empty its line and add "
            "the corrected row at the end), or start a new round"
        )
