"""The agency's handshake on a fresh connection: HELLO, the CHALLENGE if any, the WELCOME.

`shake_hands` is the exchange itself, one request after another on an open
`Connection`; `Session.handshake` opens the line, calls it, then joins the
draw (lottery/drawsession.py) and keeps what the WELCOME says.
"""

from __future__ import annotations

from .connection import Connection, raise_for
from .errors import AuthenticationRequired, ProtocolError
from .protocol import Auth, Challenge, Error, Hello, Welcome, auth_mac

__all__ = ["shake_hands"]


async def shake_hands(
    conn: Connection, agency_id: int, secret: bytes | None, timeout: float, where: str
) -> Welcome:
    """Say HELLO, answer a CHALLENGE with ``secret``, and return the WELCOME.

    Raises:
        AuthenticationRequired: the server wants a secret and there is none.
        ServerRefused: the server refused this agency (bad id, version, secret...).
        StorageFault: its store could not admit the agency now (a shared store
            that is down): retry-able, like a lost line.
        ProtocolError: it answered with another frame.
    """
    reply = await conn.request(Hello(agency_id), timeout)
    if isinstance(reply, Challenge):  # the server wants proof of who we are
        if secret is None:
            raise AuthenticationRequired(
                f"{where} requires a secret for agency {agency_id} (--secret-file or CLI_SECRET)"
            )
        mac = auth_mac(secret, agency_id, reply.nonce)
        reply = await conn.request(Auth(mac), timeout)
    if isinstance(reply, Error):
        raise_for(reply)
    if not isinstance(reply, Welcome):
        raise ProtocolError(f"expected WELCOME, got {type(reply).__name__}")
    return reply
