"""An independent checker of a draw record, written from docs/DRAW.md alone.

It must not import `lottery`: it stands for what an auditor would write in
another language. ``python tests/draw_checker.py draw.json bets.csv`` prints
``PASS`` or the first problem (exit 0 or 1).
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from typing import Any


def u32(x: int) -> bytes:
    return x.to_bytes(4, "big")


def u64(x: int) -> bytes:
    return x.to_bytes(8, "big")


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def seed_commitment(seed: bytes) -> bytes:
    return sha(seed)


def agency_commitment(agency: int, nonce: bytes) -> bytes:
    return sha(b"lottery-nonce-v1" + u32(agency) + nonce)


def root(seed: bytes, reveals: dict[int, bytes], beacon: bytes) -> bytes:
    data = b"lottery-draw-v1" + seed + u32(len(reveals))
    for agency in sorted(reveals):
        data += u32(agency) + reveals[agency]
    return sha(data + u32(len(beacon)) + beacon)


def number(seed: bytes, reveals: dict[int, bytes], beacon: bytes) -> int:
    r = root(seed, reveals, beacon)
    i = 0
    while True:
        block = sha(r + u32(i))
        for k in range(0, 32, 2):
            v = block[k] * 256 + block[k + 1]
            if v < 60000:
                return v % 10000
        i += 1


def agency_digest(records: list[bytes]) -> bytes:
    return sha(b"".join(records))


def bets_digest_and_winners(
    rows: list[list[str]], drawn: int
) -> tuple[int, bytes, dict[str, list[str]]]:
    """rows: bets.csv rows (agency, first, last, document, birthdate, number)."""
    lines: dict[int, list[bytes]] = {}
    winners: dict[str, list[str]] = {}
    for agency, first, last, document, birthdate, num in rows:
        a = int(agency)
        line = "\x1f".join([first, last, document, birthdate, str(int(num))]) + "\x1e"
        lines.setdefault(a, []).append(line.encode("utf-8"))
        if int(num) == drawn:
            winners.setdefault(str(a), []).append(document)
    data = b""
    for a in sorted(lines):
        data += u32(a) + u64(len(lines[a])) + sha(b"".join(lines[a]))
    return sum(len(v) for v in lines.values()), sha(data), winners


def check(record: dict[str, Any], rows: list[list[str]]) -> str | None:
    """None if the record holds for these bets, else the first problem."""
    drawn = record["number"]
    if record["mode"] == "random":
        seed = bytes.fromhex(record["seed"])
        if seed_commitment(seed).hex() != record["seed_commitment"]:
            return "seed vs commitment"
        reveals = {int(a): bytes.fromhex(n) for a, n in record["reveals"].items()}
        commitments = record["commitments"]
        for a, nonce in reveals.items():
            if agency_commitment(a, nonce).hex() != commitments.get(str(a)):
                return f"agency {a} nonce vs commitment"
        missing = sorted(int(a) for a in commitments if int(a) not in reveals)
        if missing != record["not_revealed"]:
            return "not_revealed"
        if number(seed, reveals, bytes.fromhex(record["beacon"])) != drawn:
            return "number"
    count, digest, winners = bets_digest_and_winners(rows, drawn)
    if count != record["bets"]["count"] or digest.hex() != record["bets"]["digest"]:
        return "bets digest"
    if winners != record["winners"]:
        return "winners"
    return None


def main(argv: list[str]) -> int:
    with open(argv[1], encoding="utf-8") as f:
        record = json.load(f)
    with open(argv[2], newline="", encoding="utf-8") as f:
        rows = [row for row in csv.reader(f) if row]
    problem = check(record, rows)
    print("PASS" if problem is None else f"FAIL: {problem}")
    return 0 if problem is None else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
