#!/usr/bin/env python3
"""Attack a live round the way a hostile client would; print PASS/FAIL per attack.

    .venv/bin/python scripts/attack.py                 # every attack, about 40 s
    .venv/bin/python scripts/attack.py slot deadline   # some of them
    .venv/bin/python scripts/attack.py --flood-bench   # the STATUS flood figure (bench)

Each attack starts its own ``lottery server`` process on 127.0.0.1 (with
``--secrets`` unless the attack needs open mode), attacks it from 127.0.0.2
(another host, as far as the server can tell) and runs real agencies from
127.0.0.1 beside the attack:

- **slot**: 1,100 connections that stay silent or drip a byte a second, each
  reopened as soon as it is closed, while a 5-agency round runs with secrets.
  PASS: the round completes, and the attacker was refused at once past its
  per-address cap;
- **sibling** (open mode): 50 times HELLO, 64 WINNERS_QUERY, close. PASS: the
  server holds none of those slots a moment later (not for ``timeout_winners``);
- **status** (open mode, so every answer is the full 84 KB view): 20 connections
  asking STATUS in a loop and 100 that ask and never read, at N=1,000
  agencies, while one agency sends its bets (the flood in its own process). PASS: the
  agency's bets/s stay within 20% of the same round without the attack, and
  the server's RSS grows by less than 100 MB;
- **deadline**: 5 connections that pipeline STATUS and never read. PASS: each is
  closed at the handshake deadline, ±1 s.

Bounds: at most 2,000 connections at once, at most 60 s per attack, 127.0.0.1
and 127.0.0.2 only. Exit status 0 when every attack passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lottery.auth import load_operator_token, load_secrets, make_secrets
from lottery.client import AsyncAgency, query_status
from lottery.fdlimit import raise_nofile_limit
from lottery.log import configure
from lottery.protocol import Hello, StatusQuery, WinnersQuery, encode
from roundrunner import ServerProcess, start_server, stop_server

LOOPBACK = "127.0.0.1"
STRANGER = "127.0.0.2"
MAX_CONNECTIONS = 2000
ATTACK_SECONDS = 60.0
WINNING_NUMBER = 7574


@dataclass
class Result:
    attack: str
    limit: str
    measured: str
    passed: bool

    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return f"{verdict}  {self.attack:<9} {self.measured}  [{self.limit}]"


# -- helpers ---------------------------------------------------------------------------------


async def connect_from(address: str, port: int, rcvbuf: int = 0) -> tuple[Any, Any]:
    """A stream connection to 127.0.0.1:``port`` whose source is ``address``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    try:
        sock.bind((address, 0))
        async with asyncio.timeout(5.0):
            await asyncio.get_running_loop().sock_connect(sock, (LOOPBACK, port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


def rows(agency: int, count: int) -> list[tuple[str, str, str, str, str]]:
    """``count`` valid bets; the first one wins."""
    return [
        (
            "Ana",
            "Paz",
            str(10_000_000 + agency * 1_000_000 + i),
            "1990-05-17",
            str(WINNING_NUMBER if i == 0 else i % 7000 + 1),
        )
        for i in range(count)
    ]


def rss_mib(pid: int) -> float:
    """A process's resident memory (Linux /proc), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Server:
    """A ``lottery server`` process for one attack, stopped on exit."""

    def __init__(self, agencies: int, *, secrets: bool = True, args: Sequence[str] = ()) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="lottery-attack-")
        root = Path(self.tmp.name)
        self.secrets_file = root / "secrets"
        extra = ["--sync", "OFF", *args]
        if secrets:
            make_secrets(agencies, self.secrets_file)
            extra += ["--secrets", str(self.secrets_file)]
        self.keys = load_secrets(self.secrets_file, agencies) if secrets else {}
        self.process: ServerProcess = start_server(root / "data", agencies, extra_args=extra)
        self.port = self.process.port

    def agency(self, agency: int, **options: Any) -> AsyncAgency:
        return AsyncAgency(agency, LOOPBACK, self.port, secret=self.keys.get(agency), **options)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        stop_server(self.process)
        self.tmp.cleanup()


# -- the attacks -------------------------------------------------------------------------------


async def slot_attack() -> Result:
    crowd_size = 1100
    stop = asyncio.Event()
    refused = 0

    async def one(i: int) -> None:
        nonlocal refused
        while not stop.is_set():
            try:
                reader, writer = await connect_from(STRANGER, server.port)
            except (OSError, TimeoutError):
                await asyncio.sleep(0.05)
                continue
            try:
                while not stop.is_set():
                    if i % 2:
                        writer.write(b"\x00")  # a drip: a HELLO, one byte a second
                    data = await asyncio.wait_for(reader.read(4096), 1.0)
                    if not data:
                        break
                    refused += 1
            except (OSError, TimeoutError):
                pass
            finally:
                writer.transport.abort()

    # A deep listen backlog: the crowd connects at once and fills its pool.
    with Server(5, args=["--timeout-handshake", "3", "--listen-backlog", "4096"]) as server:
        tasks = [asyncio.create_task(one(i)) for i in range(crowd_size)]
        try:
            filling = time.monotonic() + 10.0  # until the crowd fills its pool, 10 s at most
            while time.monotonic() < filling:
                if int((await _status(server))["connections"]) > 1000:
                    break
                await asyncio.sleep(0.1)

            async def agency(n: int) -> list[str]:
                async with server.agency(n, timeout=20.0) as client:
                    return (await client.run(rows(n, 50))).winners

            started = time.monotonic()
            try:
                winners = await asyncio.gather(*(agency(n) for n in range(1, 6)))
                ok = all(len(w) == 1 for w in winners)
            except Exception as exc:  # the attack won: say how
                print(f"  slot: the round failed: {exc!r}", file=sys.stderr)
                ok = False
            seconds = time.monotonic() - started
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return Result(
        "slot",
        "1,100 silent/dripping conns from one address; 5 agencies with --secrets",
        f"round {'completed' if ok else 'FAILED'} in {seconds:.1f} s; "
        f"{refused} attacker connections refused at once",
        ok and refused > 0,
    )


async def sibling_attack() -> Result:
    with Server(5, secrets=False) as server:
        for _ in range(50):
            _, writer = await connect_from(STRANGER, server.port)
            writer.write(encode(Hello(1)) + encode(WinnersQuery()) * 64)
            await writer.drain()
            await asyncio.sleep(0.01)
            writer.transport.abort()
        started = time.monotonic()
        held = -1
        while time.monotonic() - started < 10.0:
            status = await _status(server)
            held = int(status["connections"]) - 1  # less the one asking
            if held <= 0:
                break
            await asyncio.sleep(0.1)
        freed_after = time.monotonic() - started
    return Result(
        "sibling",
        "50 x (HELLO, 64 WINNERS_QUERY, close), open mode",
        f"slots held after the attack: {max(held, 0)}, freed within {freed_after:.1f} s",
        held <= 0 and freed_after < 5.0,
    )


async def _status(server: Server) -> dict[str, Any]:
    """The full STATUS (with the operator token when the server has secrets)."""
    token = load_operator_token(server.secrets_file) if server.keys else None
    return await query_status(LOOPBACK, server.port, 5.0, operator_token=token)


async def flood(port: int, readers: int, silent: int, stop: asyncio.Event) -> None:
    """``readers`` connections asking STATUS in a loop; ``silent`` asking and never reading."""
    query = encode(StatusQuery())

    async def reading() -> None:
        while not stop.is_set():
            try:
                reader, writer = await connect_from(STRANGER, port)
                while not stop.is_set():
                    writer.write(query * 8)
                    await asyncio.wait_for(reader.read(1 << 20), 5.0)
            except (OSError, TimeoutError):
                await asyncio.sleep(0.05)

    async def not_reading() -> None:
        while not stop.is_set():
            try:
                _, writer = await connect_from(STRANGER, port, rcvbuf=4096)
                writer.write(query * 64)
                # Never read; a query a second, until the server closes it
                # (then the write fails, and a new connection takes its place).
                while not stop.is_set() and not writer.transport.is_closing():
                    await asyncio.sleep(1.0)
                    writer.write(query)
            except (OSError, TimeoutError):
                await asyncio.sleep(0.05)

    tasks = [asyncio.create_task(reading()) for _ in range(readers)]
    tasks += [asyncio.create_task(not_reading()) for _ in range(silent)]
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def agency_rate(
    agencies: int, bets: int, readers: int, silent: int
) -> tuple[float, float, float]:
    """Agency 1's bets/s on a fresh server under that flood; the server's RSS before, after."""
    # Open mode: a stranger's STATUS is the full view (84 KB at N=1,000), the worst case.
    with Server(agencies, secrets=False) as server:
        before = rss_mib(server.process.proc.pid)
        # The flood runs in its own process: it must not share the agency's CPU.
        flooder = None
        if readers or silent:
            flooder = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--flood", str(server.port), str(readers), str(silent)
            )
            await asyncio.sleep(1.5)  # the flood is under way
        try:
            data = rows(1, bets)
            async with server.agency(1, timeout=30.0) as client:
                started = time.monotonic()
                report = await client.send_bets(data)
                seconds = time.monotonic() - started
            after = rss_mib(server.process.proc.pid)
        finally:
            if flooder is not None:
                flooder.terminate()
                await asyncio.wait_for(flooder.wait(), 10)
    return report.acknowledged / seconds, before, after


async def flood_for(port: int, readers: int, silent: int, seconds: float = ATTACK_SECONDS) -> None:
    """`flood` for at most ``seconds`` (the child process of `agency_rate`)."""
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(seconds, stop.set)
    await flood(port, readers, silent, stop)


async def status_flood_ratio(
    agencies: int = 1000, bets: int = 200_000, repeat: int = 2
) -> tuple[float, float, float, float]:
    """Best bets/s of agency 1 without and with the flood (best of ``repeat`` each), RSS."""
    plain = flooded = 0.0
    before = after = 0.0
    for _ in range(repeat):
        plain = max(plain, (await agency_rate(agencies, bets, 0, 0))[0])
        rate, before, after = await agency_rate(agencies, bets, 20, 100)
        flooded = max(flooded, rate)
    return plain, flooded, before, after


async def status_attack(agencies: int = 1000) -> Result:
    plain, flooded, before, after = await status_flood_ratio(agencies)
    ratio = flooded / plain
    return Result(
        "status",
        f"20 STATUS flooders + 100 never reading, N={agencies:,}; target ratio >= 0.80",
        f"agency {plain:,.0f} -> {flooded:,.0f} bets/s (ratio {ratio:.2f}); "
        f"server RSS {before:.0f} -> {after:.0f} MiB",
        ratio >= 0.8 and after - before < 100,
    )


async def deadline_attack(deadline: float = 3.0) -> Result:
    with Server(1000, args=["--timeout-handshake", str(deadline)]) as server:
        writers = []
        opened = time.monotonic()
        for _ in range(5):
            _, writer = await connect_from(STRANGER, server.port, rcvbuf=4096)
            writer.write(encode(StatusQuery()) * 5000)  # 25 KB of queries, ~84 KB answers
            writers.append(writer)
        await asyncio.sleep(deadline - 0.5)
        before = int((await _status(server))["connections"]) - 1  # less the one asking
        await asyncio.sleep(opened + deadline + 1.0 - time.monotonic())
        after = int((await _status(server))["connections"]) - 1
        for writer in writers:
            writer.transport.abort()
    return Result(
        "deadline",
        f"5 conns pipelining STATUS, never reading; handshake deadline {deadline:g} s",
        f"open {deadline - 0.5:g} s after connecting: {before}; at the deadline + 1 s: {after}",
        before > 0 and after == 0,  # before: STATUS may be a moment stale under load
    )


ATTACKS: dict[str, Callable[[], Awaitable[Result]]] = {
    "slot": slot_attack,
    "sibling": sibling_attack,
    "status": status_attack,
    "deadline": deadline_attack,
}


async def run(names: Sequence[str]) -> list[Result]:
    results = []
    for name in names:
        try:
            async with asyncio.timeout(ATTACK_SECONDS):
                result = await ATTACKS[name]()
        except TimeoutError:
            result = Result(name, "", f"did not finish in {ATTACK_SECONDS:g} s", False)
        print(result.line(), flush=True)
        results.append(result)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("attacks", nargs="*", help=f"some of: {' '.join(ATTACKS)} (default: all)")
    parser.add_argument(
        "--flood", nargs=3, type=int, metavar=("PORT", "READERS", "SILENT"), help=argparse.SUPPRESS
    )  # the flooding child process
    args = parser.parse_args(argv)
    if args.flood:
        raise_nofile_limit()
        asyncio.run(flood_for(*args.flood))
        return 0
    unknown = set(args.attacks) - set(ATTACKS)
    if unknown:
        parser.error(f"unknown attacks: {' '.join(sorted(unknown))}")
    raise_nofile_limit()  # 1,100 connections need their descriptors
    configure("WARNING", "console", io.StringIO())  # the in-process agencies' logs: quiet
    results = asyncio.run(run(args.attacks or list(ATTACKS)))
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
