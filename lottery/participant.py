"""The agency's part in a random draw (docs/DRAW.md): its nonce, its digest, its receipt.

Entry point: `DrawParticipant`, handed to `AsyncAgency(draw=...)`. The
`Session` asks the server how the round is drawn after each WELCOME and, in
a random round, commits to this participant's nonce; the winners loop
reveals it when the server asks, and checks the server's receipt against
`digest`, the running digest of every bet the server acknowledged.

Why the nonce is written to disk before its commitment is sent: a restarted
agency must reveal the nonce it committed to, or none. Never a second one:
the server keeps an agency's first commitment only, so a process that lost
its nonce counts as not revealing, which the draw record shows.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from .draw import NONCE_SIZE, AgencyDigest, agency_commitment

__all__ = ["DrawParticipant", "ReceiptCheck", "nonce_file"]


def nonce_file(state_dir: str | os.PathLike[str], agency: int) -> Path:
    """Where agency ``agency`` keeps its nonces, in ``state_dir``."""
    return Path(state_dir) / f"lottery-draw-agency-{agency}.json"


@dataclass(frozen=True)
class ReceiptCheck:
    """The server's receipt for this agency's bets, and whether it matches ours."""

    server_bets: int
    server_digest: bytes
    own_bets: int
    own_digest: bytes

    @property
    def ok(self) -> bool:
        return (self.server_bets, self.server_digest) == (self.own_bets, self.own_digest)


class DrawParticipant:
    """One agency process's draw state.

    Args:
        agency: the agency's id.
        path: the file that keeps its nonces across restarts, one per server
            commitment (so a new round never reuses an old nonce); None keeps
            them in memory only (a restarted process then cannot reveal).
    """

    def __init__(self, agency: int, path: str | os.PathLike[str] | None = None) -> None:
        self.agency = agency
        self.path = Path(path) if path is not None else None
        self.digest = AgencyDigest()
        self.mode: str | None = None  # as DRAW_INFO said
        self.server_commitment: bytes | None = None
        self.nonce: bytes | None = None
        self.refused = False  # the server holds another commitment, or refused the reveal
        self.revealed = False
        self.receipt: ReceiptCheck | None = None

    def __repr__(self) -> str:
        return (
            f"<DrawParticipant agency={self.agency} mode={self.mode} "
            f"revealed={self.revealed} refused={self.refused}>"
        )

    @property
    def can_reveal(self) -> bool:
        return self.nonce is not None and not self.refused and not self.revealed

    def commitment(self) -> bytes:
        assert self.nonce is not None
        return agency_commitment(self.agency, self.nonce)

    def nonce_for(self, server_commitment: bytes) -> bytes:
        """This round's nonce: the one kept for ``server_commitment``, or a new one, kept.

        Blocking file I/O: call it in a thread.
        """
        if self.server_commitment == server_commitment and self.nonce is not None:
            return self.nonce
        kept = self._load()
        nonce_hex = kept.get(server_commitment.hex())
        if nonce_hex is None:
            nonce = secrets.token_bytes(NONCE_SIZE)
            kept[server_commitment.hex()] = nonce.hex()
            self._save(kept)  # before the commitment leaves: see the module docstring
        else:
            nonce = bytes.fromhex(nonce_hex)
        self.server_commitment, self.nonce = server_commitment, nonce
        return nonce

    def _load(self) -> dict[str, str]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}  # unreadable: a new nonce, which the server refuses if one is on record
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def _save(self, kept: dict[str, str]) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(kept, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)

    def check(self, server_bets: int, server_digest: bytes) -> ReceiptCheck:
        """Compare the server's receipt with what it acknowledged to us."""
        self.receipt = ReceiptCheck(
            server_bets, server_digest, self.digest.bets, self.digest.digest()
        )
        return self.receipt
