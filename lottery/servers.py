"""The servers an agency may talk to, and which one it talks to now.

An agency may be given several servers of one round (they share one store,
docs/SCALING.md). `ServerList` holds them, in the order given, and the one
in use. `Session` (lottery/session.py) asks it to `move_on` after a try
that got no reply: the next server, round robin, with one log line
(``action: cambio_servidor | result: in_progress | desde: A | hacia: B``).
With one server nothing moves and nothing is logged, as before lists.

`first_status` is the same list for ``lottery status`` and ``lottery ping``:
the STATUS of the first server that answers.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import Any

from .connection import HostNotFound, query_status, retryable
from .errors import LotteryError

__all__ = ["ServerList", "address_text", "first_status"]


def address_text(server: tuple[str, int]) -> str:
    """``HOST:PORT``, with an IPv6 host in brackets."""
    host, port = server
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ServerList:
    """The round's servers, ``(host, port)`` each, and the index of the one in use."""

    def __init__(self, servers: Sequence[tuple[str, int]], log: Any) -> None:
        if not servers:
            raise ValueError("an agency needs at least one server")
        self.servers = [(str(host), int(port)) for host, port in servers]
        self.current = 0
        self._log = log

    def __len__(self) -> int:
        return len(self.servers)

    def __repr__(self) -> str:
        return f"<ServerList {self.where} ({self.current + 1}/{len(self)})>"

    @property
    def address(self) -> tuple[str, int]:
        """The server in use, ``(host, port)``."""
        return self.servers[self.current]

    @property
    def host(self) -> str:
        return self.servers[self.current][0]

    @property
    def port(self) -> int:
        return self.servers[self.current][1]

    @property
    def where(self) -> str:
        """The server in use, ``HOST:PORT``."""
        return address_text(self.servers[self.current])

    def describe(self) -> str:
        """The server in use, or every server, for an error message."""
        if len(self) == 1:
            return self.where
        return "every server (" + ", ".join(map(address_text, self.servers)) + ")"

    def retryable(self, exc: BaseException) -> bool:
        """Whether a try that ended in ``exc`` is worth another, here or on the next server."""
        # A name that does not resolve stays so; but in a list it may be a
        # machine that is down (Docker drops a stopped container's name), and
        # the others may answer.
        return retryable(exc) or (isinstance(exc, HostNotFound) and len(self) > 1)

    def move_on(self, exc: BaseException) -> None:
        """After a try with no reply: the next server of the list, if there are several."""
        if len(self) == 1:
            return
        before = self.where
        self.current = (self.current + 1) % len(self)
        self._log.info(
            "cambio_servidor", result="in_progress", desde=before, hacia=self.where,
            error=str(exc) or repr(exc),
        )  # fmt: skip


async def first_status(
    servers: Sequence[tuple[str, int]],
    timeout: float,
    tls: ssl.SSLContext | None = None,
    operator_token: bytes | None = None,
) -> tuple[str, dict[str, Any]]:
    """The ``HOST:PORT`` and STATUS (`query_status`) of the first of ``servers`` that answers.

    Raises:
        What `query_status` raised for the last server, when none answered.
    """
    for n, server in enumerate(servers, 1):
        try:
            return address_text(server), await query_status(*server, timeout, tls, operator_token)
        except (OSError, LotteryError):
            if n == len(servers):
                raise
    raise ValueError("no server to ask")
