#!/usr/bin/env python3
"""Generate deterministic agency files in tp0's layout.

    python scripts/gen_dataset.py --out demo --agencies 5 --bets 1000 --winners 1,2,3,0,1

writes ``demo/agency-1.csv`` .. ``agency-5.csv``: ``first_name,last_name,
document,birthdate,number`` rows, UTF-8 with CRLF line ends like the course's
real files. Some names carry accents, commas and quotes (RFC 4180 quoted), so
the files exercise the parser the way real ones can. Exactly the asked number
of bets per agency hold the winning number; the same seed gives the same bytes.

``--winner-rows "0 99|50|"`` places winners at given 0-based rows instead
(agencies separated by ``|``).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import random
from pathlib import Path

from lottery.models import DEFAULT_WINNING_NUMBER

FIRST = [
    "Santiago", "Valentina", "Mateo", "Martina", "Lautaro", "Sofía", "Tiago", "Catalina",
    "Benjamín", "Ana Julia", "Nicolás", "María José", "Ciro", "Agustina", "Joaquín", "Emilia",
]  # fmt: skip
LAST = [
    "González", "Rodríguez", "Fernández", "López", "Martínez", "Pérez", "Gómez", "Díaz",
    "Sánchez", "Romero", "Álvarez", "Forner", "Saldaña", "Mejía", "O'Hara", "Soto",
]  # fmt: skip
# One row in 97 gets a name that needs quoting in CSV.
ODD_LAST = ["Pérez, Jr.", 'Gómez "el Tano"', "D'Angelo, Sr."]


def _winner_rows(bets: int, winners: int, rng: random.Random) -> set[int]:
    if winners > bets:
        raise SystemExit(f"cannot place {winners} winners in {bets} bets")
    return set(rng.sample(range(bets), winners))


def generate_agency_file(
    path: Path,
    bets: int,
    winner_rows: set[int],
    seed: int,
    winning_number: int = DEFAULT_WINNING_NUMBER,
) -> None:
    rng = random.Random(seed)
    base = datetime.date(1950, 1, 1).toordinal()
    span = datetime.date(2005, 12, 31).toordinal() - base
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\r\n")
        for row in range(bets):
            number = winning_number
            if row not in winner_rows:
                number = rng.randrange(9999)
                if number >= winning_number:
                    number += 1  # every number but the winning one, uniformly
            last = rng.choice(ODD_LAST) if row % 97 == 13 else rng.choice(LAST)
            writer.writerow(
                [
                    rng.choice(FIRST),
                    last,
                    str(rng.randrange(10_000_000, 45_000_000)),
                    datetime.date.fromordinal(base + rng.randrange(span)).isoformat(),
                    str(number),
                ]
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--agencies", type=int, default=5)
    parser.add_argument("--bets", type=int, default=1000, help="bets per agency")
    parser.add_argument("--winners", default="", help="winners per agency, e.g. 1,2,3,0,1")
    parser.add_argument("--winner-rows", default=None, help='rows per agency, e.g. "0 99|50|"')
    parser.add_argument("--seed", type=int, default=7574)
    parser.add_argument("--winning-number", type=int, default=DEFAULT_WINNING_NUMBER)
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    counts = [int(c) for c in args.winners.split(",") if c.strip()] if args.winners else []
    explicit = args.winner_rows.split("|") if args.winner_rows is not None else None
    for agency in range(1, args.agencies + 1):
        if explicit is not None:
            text = explicit[agency - 1] if agency <= len(explicit) else ""
            rows = {int(r) for r in text.split()}
        else:
            wanted = counts[agency - 1] if agency <= len(counts) else 1
            rows = _winner_rows(args.bets, wanted, rng)
        generate_agency_file(
            args.out / f"agency-{agency}.csv",
            args.bets,
            rows,
            seed=args.seed * 1000 + agency,
            winning_number=args.winning_number,
        )
    print(f"wrote {args.agencies} agency files of {args.bets} bets to {args.out}")


if __name__ == "__main__":
    main()
