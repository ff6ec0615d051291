#!/usr/bin/env python3
"""The design this project replaces: tp0's threaded server and its client, plainly.

Kept only as the benchmark's baseline (scripts/bench.py); nothing imports it.

    python benchmarks/threaded_baseline.py server --port 0 --agencies 5 --data-dir D
    python benchmarks/threaded_baseline.py agency --id 1 --server 127.0.0.1:PORT \\
        --bets agency-1.csv --batch-max-amount 200

Server: one listening socket, one `threading.Thread` per connection, a
`threading.Lock` around tp0's `store_bets` (open ``bets.csv`` in append mode,
``csv.writer(...).writerow`` per bet, close; no fsync, exactly as tp0 did,
unless ``--fsync`` asks for acks that mean "on disk", as ours do), and
a `threading.Barrier(N)` that each connection thread waits on after its agency's
DONE. The barrier's action is the draw (tp0's `load_bets` + `has_won` over
``bets.csv``, once); then each thread answers its agency's winners query.

Client: reads its CSV with the csv module, sends batches of at most K bets
within 8 kB stop-and-wait on one connection (send, wait for the ack, send the
next), then DONE, then asks for its winners (5 tries on "not ready", like the
seed's Go client).

Wire format: ``u32 body length | u8 type | body``, the body UTF-8 text. A bet
is ``agency|first_name|last_name|document|birthdate|number`` and a batch is
bets joined by newlines; a whole batch message is at most 8 kB.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import logging
import os
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType

HEADER = struct.Struct("!IB")  # body length, message type
MAX_MESSAGE = 8192  # bytes, header included (tp0: batches of at most 8 kB)
BATCH, DONE, WINNERS_QUERY, ACK, WINNERS, NOT_READY = range(1, 7)
LOTTERY_WINNER_NUMBER = 7574
WINNERS_ATTEMPTS = 5


# -- tp0's utils.py ---------------------------------------------------------------------


class Bet:
    """A lottery bet registry (tp0's class)."""

    def __init__(
        self, agency: str, first_name: str, last_name: str, document: str, birthdate: str,
        number: str,
    ) -> None:  # fmt: skip
        self.agency: int = int(agency)
        self.first_name = first_name
        self.last_name = last_name
        self.document = document
        self.birthdate: datetime.date = datetime.date.fromisoformat(birthdate)
        self.number: int = int(number)


def has_won(bet: Bet) -> bool:
    return bet.number == LOTTERY_WINNER_NUMBER


def store_bets(bets: list[Bet], path: str, fsync: bool = False) -> None:
    """Persist the bets. Not thread-safe: callers hold the server's lock.

    With ``fsync`` the bets are on disk before the call returns, so the ack
    that follows means what ours means; tp0 itself did not do this.
    """
    with open(path, "a+", encoding="utf-8") as file:
        writer = csv.writer(file, quoting=csv.QUOTE_MINIMAL)
        for bet in bets:
            writer.writerow(
                [bet.agency, bet.first_name, bet.last_name, bet.document, bet.birthdate, bet.number]
            )
        if fsync:
            file.flush()
            os.fsync(file.fileno())


def load_bets(path: str) -> Iterator[Bet]:
    """Every stored bet. Not thread-safe."""
    with open(path, encoding="utf-8") as file:
        reader = csv.reader(file, quoting=csv.QUOTE_MINIMAL)
        for row in reader:
            yield Bet(row[0], row[1], row[2], row[3], row[4], row[5])


# -- framing ----------------------------------------------------------------------------


def send_message(sock: socket.socket, kind: int, body: str = "") -> None:
    data = body.encode("utf-8")
    sock.sendall(HEADER.pack(len(data), kind) + data)  # sendall: no short writes


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:  # recv may return fewer bytes: no short reads either
        chunk = sock.recv(size - len(data))
        if not chunk:
            if data:
                raise ConnectionError("connection closed in the middle of a message")
            return None
        data += chunk
    return data


def recv_message(sock: socket.socket) -> tuple[int, str] | None:
    """The next message, or None if the peer closed the connection."""
    header = _recv_exact(sock, HEADER.size)
    if header is None:
        return None
    length, kind = HEADER.unpack(header)
    if kind == BATCH and length + HEADER.size > MAX_MESSAGE:
        raise ValueError(f"batch of {length + HEADER.size} bytes is over {MAX_MESSAGE}")
    body = _recv_exact(sock, length) if length else b""
    if body is None:
        raise ConnectionError("connection closed in the middle of a message")
    return kind, body.decode("utf-8")


# -- server -----------------------------------------------------------------------------


class Server:
    def __init__(
        self, host: str, port: int, agencies: int, data_dir: str, fsync: bool = False
    ) -> None:
        self.fsync = fsync
        os.makedirs(data_dir, exist_ok=True)
        self.path = os.path.join(data_dir, "bets.csv")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(128)
        self.lock = threading.Lock()  # bets.csv is written by every connection thread
        self.barrier = threading.Barrier(agencies, action=self.draw)
        self.winners: dict[int, list[str]] | None = None

    def run(self) -> None:
        logging.info(f"action: config | result: success | port: {self.sock.getsockname()[1]}")
        while True:
            conn, addr = self.sock.accept()
            threading.Thread(target=self.handle, args=(conn, addr[0]), daemon=True).start()

    def draw(self) -> None:
        """The barrier's action: run by one thread, once, while the others wait."""
        winners: dict[int, list[str]] = {}
        with self.lock:
            for bet in load_bets(self.path):
                if has_won(bet):
                    winners.setdefault(bet.agency, []).append(bet.document)
        self.winners = winners
        logging.info("action: sorteo | result: success")

    def handle(self, conn: socket.socket, ip: str) -> None:
        with conn:
            try:
                while (message := recv_message(conn)) is not None:
                    self.answer(conn, ip, *message)
            except (OSError, ValueError, threading.BrokenBarrierError) as exc:
                logging.error(f"action: conexion | result: fail | ip: {ip} | error: {exc}")

    def answer(self, conn: socket.socket, ip: str, kind: int, body: str) -> None:
        if kind == BATCH:
            bets = [Bet(*line.split("|")) for line in body.split("\n")]
            with self.lock:
                store_bets(bets, self.path, self.fsync)
            logging.info(
                f"action: apuesta_recibida | result: success | ip: {ip} | cantidad: {len(bets)}"
            )
            send_message(conn, ACK, str(len(bets)))
        elif kind == DONE:
            send_message(conn, ACK, "0")
            self.barrier.wait()  # until every agency is done and the draw is made
        elif kind == WINNERS_QUERY:
            if self.winners is None:
                send_message(conn, NOT_READY)
                return
            documents = self.winners.get(int(body), [])
            logging.info(
                f"action: consulta_ganadores | result: success | agencia: {body} "
                f"| cant_ganadores: {len(documents)}"
            )
            send_message(conn, WINNERS, "|".join(documents))
        else:
            raise ValueError(f"unknown message type {kind}")


def run_server(args: argparse.Namespace) -> int:
    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)  # interrupts accept() in the main thread

    signal.signal(signal.SIGTERM, on_sigterm)
    server = Server(args.host, args.port, args.agencies, args.data_dir, args.fsync)
    try:
        server.run()
    except (SystemExit, KeyboardInterrupt):
        pass
    finally:
        server.sock.close()  # connection threads are daemons: they end with the process
        logging.info("action: shutdown | result: success")
    return 0


# -- agency -----------------------------------------------------------------------------


def read_bets(path: str, agency: int) -> Iterator[str]:
    with open(path, newline="", encoding="utf-8-sig") as file:
        for line, row in enumerate(csv.reader(file), 1):
            if any("|" in field or "\n" in field for field in row) or len(row) not in (0, 5):
                raise ValueError(f"{path}:{line}: not a bet this wire format can carry")
            if row:
                yield "|".join([str(agency), *row])


def make_batches(bets: Iterator[str], max_amount: int) -> Iterator[list[str]]:
    batch: list[str] = []
    size = HEADER.size
    for bet in bets:
        bet_size = len(bet.encode("utf-8")) + 1  # and its newline
        if batch and (len(batch) >= max_amount or size + bet_size > MAX_MESSAGE):
            yield batch
            batch, size = [], HEADER.size
        batch.append(bet)
        size += bet_size
    if batch:
        yield batch


def expect(sock: socket.socket, kinds: tuple[int, ...]) -> str:
    message = recv_message(sock)
    if message is None or message[0] not in kinds:
        raise ConnectionError(f"unexpected reply from the server: {message!r}")
    return message[1]


def run_agency(args: argparse.Namespace) -> int:
    host, _, port = args.server.rpartition(":")
    sent = 0
    with socket.create_connection((host, int(port)), timeout=args.timeout) as sock:
        for batch in make_batches(read_bets(args.bets, args.id), args.batch_max_amount):
            send_message(sock, BATCH, "\n".join(batch))
            expect(sock, (ACK,))  # stop-and-wait
            sent += len(batch)
        logging.info(f"action: apuestas_enviadas | result: success | cantidad: {sent}")
        send_message(sock, DONE, str(args.id))
        expect(sock, (ACK,))
        for attempt in range(1, WINNERS_ATTEMPTS + 1):
            send_message(sock, WINNERS_QUERY, str(args.id))
            sock.settimeout(args.winners_timeout)  # answered once every agency is done
            reply = recv_message(sock)
            if reply is not None and reply[0] == WINNERS:
                documents = reply[1].split("|") if reply[1] else []
                logging.info(
                    "action: consulta_ganadores | result: success "
                    f"| cant_ganadores: {len(documents)}"
                )
                return 0
            logging.info(f"action: consulta_ganadores | result: in_progress | intento: {attempt}")
            time.sleep(1)
    logging.error("action: consulta_ganadores | result: fail")
    return 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    server = commands.add_parser("server")
    server.add_argument("--host", default="127.0.0.1")
    server.add_argument("--port", type=int, default=12345)
    server.add_argument("--agencies", type=int, default=5)
    server.add_argument("--data-dir", default="data")
    server.add_argument(
        "--fsync", action="store_true", help="fsync bets.csv before each ack (durable acks)"
    )
    agency = commands.add_parser("agency")
    agency.add_argument("--id", type=int, required=True)
    agency.add_argument("--server", default="127.0.0.1:12345")
    agency.add_argument("--bets", required=True)
    agency.add_argument("--batch-max-amount", type=int, default=200)
    agency.add_argument("--timeout", type=float, default=30.0)
    agency.add_argument("--winners-timeout", type=float, default=600.0)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)-8s %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
    )
    return run_server(args) if args.command == "server" else run_agency(args)


if __name__ == "__main__":
    sys.exit(main())
