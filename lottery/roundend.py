"""The agency's round after its bets: DONE, the wait for the draw, the winners.

`RoundEnd` is the part of `AsyncAgency` (lottery/client.py) that follows
`send_bets`: `notify` says this agency is done, `winners` waits for the draw
(the polling loop is lottery/winners.py) and keeps whom it waits for in
``waiting_for`` for a progress display, `receipt` is the random draw's
checked receipt, and `run` is the whole round in one call. It works over the
same `Session` as the rest of the agency.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import RowsRejected
from .participant import ReceiptCheck
from .protocol import Ack, Done, NotReady
from .readers import Source
from .reports import RoundResult, SendReport
from .session import Session
from .winners import missing_text, poll_winners

__all__ = ["RoundEnd"]


class RoundEnd:
    """`AsyncAgency`'s calls after the bets; mixed into it (see the module docstring)."""

    # Set by AsyncAgency.__init__.
    agency_id: int
    winners_attempts: int
    winners_base_delay: float
    winners_timeout: float
    winners_wait: float
    #: While the agency waits for the draw: whom it waits for ("agencies 3, 5 missing").
    waiting_for: str | None
    _session: Session
    _log: Any

    if TYPE_CHECKING:

        async def send_bets(self, source: Source) -> SendReport: ...

    async def notify(self) -> None:
        """Tell the server this agency has sent all its bets; waits until stored.

        Raises:
            ConnectionLost: ``reconnect_attempts`` tries in a row got no reply.
        """
        await self._session.round_trip(Done(), lambda reply: reply == Ack(0))
        self._log.debug("notificar", result="success")

    async def winners(self) -> list[str]:
        """This agency's winning documents, once the draw is made.

        Each try waits up to ``winners_timeout``. A "not ready" answer is
        retried after a back-off from ``winners_base_delay``, up to
        ``winners_attempts`` answers; a try with no answer (a lost line, a
        time-out) counts against ``reconnect_attempts``, as in every loop.

        In a random draw it first reveals this agency's nonce when the server
        asks, and then checks the server's receipt: see `receipt`.

        Raises:
            WinnersUnavailable: ``winners_attempts`` answers were "not ready".
            ConnectionLost: ``reconnect_attempts`` tries in a row got no answer.
        """
        return await poll_winners(
            self._session,
            attempts=self.winners_attempts,
            base_delay=self.winners_base_delay,
            timeout=self.winners_timeout,
            wait=self.winners_wait,
            on_not_ready=self._not_ready,
        )

    @property
    def receipt(self) -> ReceiptCheck | None:
        """After `winners` in a random draw: the server's receipt, checked against ours."""
        draw = self._session.draw
        return draw.receipt if draw is not None else None

    def _not_ready(self, reply: NotReady) -> None:
        self.waiting_for = missing_text(reply)

    async def run(self, source: Source, *, allow_rejected: bool = False) -> RoundResult:
        """Send all bets, say done, and get the winners: the whole round.

        Args:
            allow_rejected: say done even if rows were rejected (they are left
                out of the round). A source that is not UTF-8 is never done.

        Raises:
            RowsRejected: rows were rejected; the valid bets are stored, DONE
                was not sent, and the message says how to fix and rerun.
        """
        report = await self.send_bets(source)
        refusal = report.done_refusal(allow_rejected)
        if refusal is not None:
            raise RowsRejected(f"agency {self.agency_id}: {refusal}")
        await self.notify()
        return RoundResult(report, await self.winners())
