#!/usr/bin/env python3
"""``make run``: one whole round with a real server and real agencies.

Generates the demo data if it is absent, starts ``lottery server``, runs N
``lottery agency`` processes, prints each agency's winners and the round's
bets per second, then stops the server. Exits 0 only if every agency
finished its round and the server shut down cleanly.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from roundrunner import start_agency, start_server, stop_server, wait_agencies

HERE = Path(__file__).parent


def ensure_demo_data(out: Path, agencies: int, bets: int, winners: str) -> list[Path]:
    files = [out / f"agency-{i}.csv" for i in range(1, agencies + 1)]
    if not all(f.exists() for f in files):
        subprocess.run(
            [
                sys.executable, str(HERE / "gen_dataset.py"), "--out", str(out),
                "--agencies", str(agencies), "--bets", str(bets), "--winners", winners,
            ],
            check=True,
        )  # fmt: skip
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agencies", type=int, default=5)
    parser.add_argument("--bets", type=int, default=20_000, help="bets per agency")
    parser.add_argument("--winners", default="1,2,3,0,2", help="winners per agency")
    parser.add_argument("--data", type=Path, default=Path("demo"), help="demo data folder")
    args = parser.parse_args()

    files = ensure_demo_data(args.data, args.agencies, args.bets, args.winners)
    total = sum(1 for f in files for line in f.open(encoding="utf-8") if line.strip())
    with tempfile.TemporaryDirectory(prefix="lottery-demo-") as data_dir:
        server = start_server(data_dir, args.agencies)
        print(f"server listening on 127.0.0.1:{server.port}, {args.agencies} agencies")
        started = time.perf_counter()
        agencies = [start_agency(i, server.port, f) for i, f in enumerate(files, 1)]
        wait_agencies(agencies, timeout=300)
        elapsed = time.perf_counter() - started
        server_status = stop_server(server)

    ok = server_status == 0
    for agency in agencies:
        winners = agency.winners
        if agency.returncode != 0 or winners is None:
            ok = False
            print(f"agency {agency.agency}: FAILED (exit {agency.returncode})")
            print(agency.output[-2000:])
            continue
        shown = ", ".join(winners) if winners else "none"
        print(f"agency {agency.agency}: {len(winners)} winners: {shown}")
    print(f"round: {total:,} bets in {elapsed:.2f} s = {total / elapsed:,.0f} bets/s")
    if server_status != 0:
        print(f"server exited with status {server_status}:\n" + server.log()[-2000:])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
