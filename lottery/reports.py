"""What the agency's calls report: `SendReport` for `send_bets`, `RoundResult` for `run`.

Plain data, kept apart from the code that fills it in (lottery/sender.py and
lottery/client.py); both are re-exported by `lottery.client` and `lottery`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .csvfiles import RejectedRow

__all__ = ["RoundResult", "SendReport"]


@dataclass
class SendReport:
    """What `AsyncAgency.send_bets` did."""

    acknowledged: int = 0  # bets the server confirmed as stored
    skipped: int = 0  # bets already stored before this run (resume), not resent
    rejected: list[RejectedRow] = field(default_factory=list)  # invalid rows, not stored
    #: The input position after the last bet stored: a rerun resumes after it.
    input_rows: int = 0

    def done_refusal(self, allow_rejected: bool = False) -> str | None:
        """Why this agency must not say DONE yet (how to fix it), or None if it may.

        Rejected rows keep an agency from being done, unless ``allow_rejected``;
        a file that is not UTF-8 never counts as done.
        """
        if not self.rejected:
            return None
        first = self.rejected[0]
        count = len(self.rejected)
        head = f"{count} row{'s' * (count > 1)} rejected (first: {first}); "
        if any(row.undecodable for row in self.rejected):
            return head + (
                "the file is not UTF-8: convert it (e.g. iconv -f LATIN1 -t UTF-8) and run the "
                "agency again; it resumes after the bets already stored"
            )
        if allow_rejected:
            return None
        stored = self.input_rows
        if all(row.line > stored for row in self.rejected):
            fix = "fix them in place and run the agency again"
        else:
            fix = (
                f"fix them and run the agency again; for a row within the first {stored} rows "
                "(already stored), empty its line and add the corrected row at the end of the file"
            )
        return head + (
            f"the valid bets are stored and the agency did not say DONE: {fix}; it resumes "
            "after the bets already stored. Or pass --allow-rejected (CLI_ALLOW_REJECTED) to "
            "finish the round without them"
        )


@dataclass
class RoundResult:
    """What `AsyncAgency.run` did: the send report and this agency's winners."""

    report: SendReport
    winners: list[str]
