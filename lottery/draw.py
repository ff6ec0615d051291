"""The random draw: commitments, the number, the digests, the draw record, and its check.

Pure functions and plain data, no I/O: the store calls `derive_number` and
`AgencyDigest` at the draw, the agency `agency_commitment` and
`AgencyDigest` for its receipt, ``lottery export --draw-record`` builds a
record with `build_record`, and ``lottery verify`` runs `verify_record`.
docs/DRAW.md states every byte of it, for checkers written elsewhere; the
tests hold one that does not import this package.

Why the number depends on the seed and the reveals only, never on the bets: a
colluding agency can still choose its bets when it sees the others' commits,
so bets feeding the number would let it grind for a result.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .models import agency_digest

__all__ = [
    "MODES",
    "MODE_FIXED",
    "MODE_RANDOM",
    "NONCE_SIZE",
    "RECORD_FORMAT",
    "SEED_SIZE",
    "AgencyDigest",
    "BetsDigest",
    "VerifyError",
    "agency_commitment",
    "build_record",
    "canonical_line",
    "derive_number",
    "seed_commitment",
    "verify_record",
]

MODE_FIXED = "fixed"
MODE_RANDOM = "random"
MODES = (MODE_FIXED, MODE_RANDOM)
SEED_SIZE = 32
NONCE_SIZE = 32
RECORD_FORMAT = "lottery-draw-record/1"
NUMBERS = 10_000
#: Largest multiple of 10,000 that fits in 16 bits: u16 values at or above it
#: are rejected, so every number 0..9999 is hit by exactly 6 of 60,000 values.
_LIMIT = 65_536 - 65_536 % NUMBERS
_MAX_BLOCKS = 1 << 16  # rejecting 16 values in a row 65,536 times: never (p < 2^-900,000)

_NONCE_CONTEXT = b"lottery-nonce-v1"
_DRAW_CONTEXT = b"lottery-draw-v1"
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")


def seed_commitment(seed: bytes) -> bytes:
    """The server's commitment: SHA-256 of its 32-byte seed."""
    return hashlib.sha256(seed).digest()


def agency_commitment(agency: int, nonce: bytes) -> bytes:
    """An agency's commitment: SHA-256 of a context, its id (u32 BE) and its nonce.

    The id is inside so a commitment copied from another agency cannot be
    revealed as one's own.
    """
    return hashlib.sha256(_NONCE_CONTEXT + _U32.pack(agency) + nonce).digest()


def draw_root(seed: bytes, reveals: Mapping[int, bytes], beacon: bytes = b"") -> bytes:
    """SHA-256 of everything the number depends on (docs/DRAW.md, "the root")."""
    parts = [_DRAW_CONTEXT, seed, _U32.pack(len(reveals))]
    for agency in sorted(reveals):
        parts += [_U32.pack(agency), reveals[agency]]
    parts += [_U32.pack(len(beacon)), beacon]
    return hashlib.sha256(b"".join(parts)).digest()


def derive_number(seed: bytes, reveals: Mapping[int, bytes], beacon: bytes = b"") -> int:
    """The winning number, 0..9999, by rejection sampling (no modulo bias).

    Block i is SHA-256(root ‖ u32 BE i); each block is read as sixteen u16 BE
    values in order, and the first one below 60,000 gives ``value % 10000``.
    """
    root = draw_root(seed, reveals, beacon)
    for counter in range(_MAX_BLOCKS):
        block = hashlib.sha256(root + _U32.pack(counter)).digest()
        for (value,) in struct.iter_unpack("!H", block):
            if value < _LIMIT:
                return int(value % NUMBERS)
    raise RuntimeError("no value below the limit in 65,536 blocks")  # pragma: no cover


class AgencyDigest:
    """An agency's receipt: its bet count and its agency digest, fed in sequence order.

    The digest is `lottery.models.agency_digest`, the one definition the
    store's progress, the WELCOME and the receipts share.
    """

    __slots__ = ("_hash", "bets")

    def __init__(self, records: bytes = b"", bets: int = 0) -> None:
        self._hash = agency_digest(records)
        self.bets = bets

    def update(self, records: bytes, count: int) -> None:
        self._hash.update(records)
        self.bets += count

    def digest(self) -> bytes:
        return self._hash.digest()


def canonical_line(first: str, last: str, document: str, birthdate: str, number: int) -> bytes:
    """One bet in the bets digest's canonical form (the number without zero padding)."""
    return f"{first}\x1f{last}\x1f{document}\x1f{birthdate}\x1f{int(number)}\x1e".encode()


@dataclass
class BetsDigest:
    """The digest of every stored bet (docs/DRAW.md, "the bets digest").

    Per agency, SHA-256 of its bets' canonical lines in stored order; then
    SHA-256 over (u32 agency ‖ u64 bets ‖ that digest) for each agency with
    bets, ascending. Bets may be fed in any interleaving of agencies, as long
    as each agency's come in its stored order (a ``bets.csv`` does that).
    """

    _agencies: dict[int, Any] = field(default_factory=dict)
    _counts: dict[int, int] = field(default_factory=dict)
    winners: dict[int, list[str]] = field(default_factory=dict)

    def add(self, agency: int, first: str, last: str, document: str, birthdate: str,
            number: int, winning: int | None = None) -> None:  # fmt: skip
        digest = self._agencies.get(agency)
        if digest is None:
            digest = self._agencies[agency] = hashlib.sha256()
            self._counts[agency] = 0
        digest.update(canonical_line(first, last, document, birthdate, number))
        self._counts[agency] += 1
        if winning is not None and int(number) == winning:
            self.winners.setdefault(agency, []).append(document)

    @property
    def count(self) -> int:
        return sum(self._counts.values())

    def digest(self) -> bytes:
        total = hashlib.sha256()
        for agency in sorted(self._agencies):
            total.update(_U32.pack(agency) + _U64.pack(self._counts[agency]))
            total.update(self._agencies[agency].digest())
        return total.digest()


# -- the record -------------------------------------------------------------------------------


class VerifyError(Exception):
    """The first difference ``lottery verify`` found (or a malformed record)."""


def build_record(
    *,
    mode: str,
    agencies: int,
    number: int,
    bets: Iterable[tuple[int, str, str, str, str, int]],
    seed: bytes | None = None,
    commitments: Mapping[int, bytes] | None = None,
    reveals: Mapping[int, bytes] | None = None,
    beacon: bytes = b"",
    receipts: Mapping[int, tuple[int, bytes]] | None = None,
) -> dict[str, Any]:
    """The draw record (JSON-ready): what ``lottery export --draw-record`` writes."""
    digest = BetsDigest()
    for agency, first, last, document, birthdate, value in bets:
        digest.add(agency, first, last, document, birthdate, value, number)
    commitments = dict(commitments or {})
    reveals = dict(reveals or {})
    record: dict[str, Any] = {
        "format": RECORD_FORMAT,
        "mode": mode,
        "agencies": agencies,
        "number": number,
        "bets": {"count": digest.count, "digest": digest.digest().hex()},
        "winners": {str(a): docs for a, docs in sorted(digest.winners.items())},
    }
    if mode == MODE_RANDOM:
        assert seed is not None
        record.update(
            seed_commitment=seed_commitment(seed).hex(),
            seed=seed.hex(),
            beacon=beacon.hex(),
            commitments={str(a): c.hex() for a, c in sorted(commitments.items())},
            reveals={str(a): n.hex() for a, n in sorted(reveals.items())},
            not_revealed=sorted(a for a in commitments if a not in reveals),
            receipts={
                str(a): {"bets": n, "digest": d.hex()}
                for a, (n, d) in sorted((receipts or {}).items())
            },
        )
    return record


def _hex(value: Any, where: str, size: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise VerifyError(f"record: {where} must be a hex string")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise VerifyError(f"record: {where} is not hex: {value[:40]!r}") from None
    if size is not None and len(raw) != size:
        raise VerifyError(f"record: {where} must be {size} bytes, got {len(raw)}")
    return raw


def _agency_map(record: Mapping[str, Any], key: str) -> dict[int, Any]:
    value = record.get(key, {})
    if not isinstance(value, dict):
        raise VerifyError(f"record: {key} must be an object")
    try:
        return {int(k): v for k, v in value.items()}
    except ValueError:
        raise VerifyError(f"record: {key} keys must be agency numbers") from None


def verify_record(
    record: Mapping[str, Any],
    bets: Iterable[tuple[int, str, str, str, str, int]],
    receipts: Mapping[int, tuple[int, bytes]] | None = None,
) -> list[str]:
    """Check a draw record against the bets; returns what was checked.

    Args:
        receipts: the store's per-agency receipt digests, when checking a data
            directory (a ``bets.csv`` cannot give the wire bytes back).

    Raises:
        VerifyError: the first difference, or a malformed record.
    """
    if not isinstance(record, Mapping) or record.get("format") != RECORD_FORMAT:
        raise VerifyError(f"record: not a {RECORD_FORMAT} document")
    mode, number = record.get("mode"), record.get("number")
    if mode not in MODES or not isinstance(number, int) or not 0 <= number < NUMBERS:
        raise VerifyError("record: mode must be fixed or random and number 0..9999")
    checked: list[str] = []
    if mode == MODE_RANDOM:
        seed = _hex(record.get("seed"), "seed", SEED_SIZE)
        if seed_commitment(seed) != _hex(record.get("seed_commitment"), "seed_commitment", 32):
            raise VerifyError("the seed does not match the server's commitment")
        checked.append("the server's seed matches its commitment")
        commitments = {
            a: _hex(c, f"commitments[{a}]", 32)
            for a, c in _agency_map(record, "commitments").items()
        }
        reveals = {
            a: _hex(n, f"reveals[{a}]", NONCE_SIZE)
            for a, n in _agency_map(record, "reveals").items()
        }
        for agency in sorted(reveals):
            if agency not in commitments:
                raise VerifyError(f"agency {agency} revealed a nonce but made no commitment")
            if agency_commitment(agency, reveals[agency]) != commitments[agency]:
                raise VerifyError(f"agency {agency}'s nonce does not match its commitment")
        missing = sorted(a for a in commitments if a not in reveals)
        if record.get("not_revealed") != missing:
            raise VerifyError(
                f"not_revealed says {record.get('not_revealed')}, "
                f"but agencies {missing} did not reveal"
            )
        checked.append(
            f"{len(reveals)} agency nonces match their commitments; not revealed: "
            + (" ".join(map(str, missing)) or "none")
        )
        beacon = _hex(record.get("beacon", ""), "beacon")
        derived = derive_number(seed, reveals, beacon)
        if derived != number:
            raise VerifyError(f"the number is {number} in the record, but {derived} by derivation")
        checked.append(f"the number {number} follows from the seed and the reveals")
    digest = BetsDigest()
    for agency, first, last, document, birthdate, value in bets:
        digest.add(agency, first, last, document, birthdate, value, number)
    stated = record.get("bets")
    if not isinstance(stated, Mapping):
        raise VerifyError("record: bets must be an object")
    if stated.get("count") != digest.count:
        raise VerifyError(
            f"the record counts {stated.get('count')} bets, the bets are {digest.count}"
        )
    if _hex(stated.get("digest"), "bets.digest", 32) != digest.digest():
        raise VerifyError("the bets digest differs: a bet was added, removed or altered")
    checked.append(f"the digest of {digest.count} bets matches the record")
    stated_winners = _agency_map(record, "winners")
    for agency in sorted(set(stated_winners) | set(digest.winners)):
        have, want = stated_winners.get(agency, []), digest.winners.get(agency, [])
        if have != want:
            raise VerifyError(f"agency {agency}'s winners are {have} in the record, but {want}")
    checked.append(f"each agency's winners of number {number} match the record")
    if receipts is not None and mode == MODE_RANDOM:
        stated_receipts = _agency_map(record, "receipts")
        for agency in sorted(set(stated_receipts) | set(receipts)):
            bets_, raw = receipts.get(agency, (0, b""))
            entry = stated_receipts.get(agency, {})
            if entry.get("bets") != bets_ or entry.get("digest") != raw.hex():
                raise VerifyError(f"agency {agency}'s receipt in the record differs from the store")
        checked.append("every agency's receipt matches the stored bets")
    return checked
