"""Connection slots: who may hold one, and who is refused or made room for.

Entry point: `Admission` (one per server); `Admission.enter(address)` at
accept time gives a `Ticket` or the reason for a TOO_MANY_CONNECTIONS refusal.

Two pools share the server's connection limit:

- the **agency pool**: connections that said who they are (authenticated with
  ``--secrets``; in open mode, answered HELLO with WELCOME). A newer
  connection of an agency stops the older one, so this pool holds about one
  connection per agency and needs no cap of its own;
- the **unauthenticated pool**: every connection until then (TLS handshake,
  HELLO, CHALLENGE/AUTH, and peers that only ask STATUS). It is smaller
  (``limit_unauthenticated``), and each lives at most ``timeout_handshake``.

Why a per-address cap that only bites when the pool is full: agencies on one
host (tests, the bench, a NAT) may connect a thousand at once, and that must
keep working. A stranger who fills the pool from one address must not keep
agencies out, though. So when the pool is full, a newcomer from an address
already holding ``limit_per_address`` unauthenticated connections is refused
at once; a newcomer from an address under that cap takes the place of the
oldest unauthenticated connection of the address holding the most (which
must be over the cap). A ticket moves to the agency pool with `Ticket.admit`,
which frees its unauthenticated slot: an agency that authenticates never
needs a second slot. What is left: many addresses each under the cap can
still fill the pool, for ``timeout_handshake`` at a time.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

__all__ = ["Admission", "Ticket"]


class Ticket:
    """One connection's slot; `release` it when the connection closes (safe twice)."""

    def __init__(self, admission: Admission, address: str) -> None:
        self.address = address
        self.admitted = False
        self.released = False
        #: Called when the slot is taken back for a newcomer (closes the connection).
        self.on_evict: Callable[[], None] | None = None
        self._admission = admission

    def admit(self) -> None:
        """The connection said who it is: move it to the agency pool."""
        if not self.admitted and not self.released:
            self._admission._leave_unauthenticated(self)
            self.admitted = True

    def release(self) -> None:
        """The connection is closed: free its slot."""
        if self.released:
            return
        if not self.admitted:
            self._admission._leave_unauthenticated(self)
        self.released = True
        self._admission.open -= 1


class Admission:
    """The server's connection slots; see the module docstring.

    Args:
        total: most connections open at once, of both pools.
        unauthenticated: most connections not yet admitted as an agency.
        per_address: most unauthenticated connections of one address once
            the unauthenticated pool is full.
    """

    def __init__(self, total: int, unauthenticated: int, per_address: int) -> None:
        self.total = total
        self.unauthenticated = min(unauthenticated, total)
        self.per_address = min(per_address, self.unauthenticated)
        self.open = 0
        #: address -> its unauthenticated tickets, oldest first.
        self._waiting: dict[str, dict[Ticket, None]] = collections.defaultdict(dict)
        self._waiting_count = 0
        self.evicted = 0

    @property
    def waiting(self) -> int:
        """Unauthenticated connections open now."""
        return self._waiting_count

    def enter(self, address: str) -> Ticket | str:
        """A slot for a new connection from ``address``, or why there is none."""
        total_full = self.open >= self.total
        if total_full or self._waiting_count >= self.unauthenticated:
            mine = len(self._waiting.get(address, ()))
            if mine >= self.per_address:
                return (
                    f"{address} is at its limit of {self.per_address} connections "
                    "not yet authenticated"
                )
            if not self._evict_one():
                if total_full:
                    return f"the server is at its limit of {self.total} connections"
                return (
                    f"the server is at its limit of {self.unauthenticated} connections "
                    "not yet authenticated"
                )
        ticket = Ticket(self, address)
        self._waiting[address][ticket] = None
        self._waiting_count += 1
        self.open += 1
        return ticket

    def _evict_one(self) -> bool:
        """Close the oldest unauthenticated connection of the greediest address."""
        greedy = max(self._waiting, key=lambda a: len(self._waiting[a]), default=None)
        if greedy is None or len(self._waiting[greedy]) <= self.per_address:
            return False
        victim = next(iter(self._waiting[greedy]))
        self._leave_unauthenticated(victim)
        victim.admitted = True  # out of the pool now; its release() frees only the total
        self.open -= 1  # and its slot in the total goes to the newcomer at once
        victim.released = True
        self.evicted += 1
        if victim.on_evict is not None:
            victim.on_evict()
        return True

    def _leave_unauthenticated(self, ticket: Ticket) -> None:
        tickets = self._waiting.get(ticket.address)
        if tickets is None or ticket not in tickets:
            return
        del tickets[ticket]
        self._waiting_count -= 1
        if not tickets:
            del self._waiting[ticket.address]
