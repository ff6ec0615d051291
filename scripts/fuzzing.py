"""The fuzzer's library: hostile frame generators, the oracle, and the connection runner.

    maker = ScriptMaker(agencies=3, seed=7)
    stats = await fuzz("127.0.0.1", port, maker, concurrency=20, timeout=2,
                       keep_going=lambda s: s.frames < 400)
    assert stats.mismatch_count == 0

``scripts/fuzz_server.py`` drives it against a real round from the command
line, and tests/test_fuzz.py against an in-process server. What it holds:

- generators: valid and invalid bets, frames, `mutate` (bit flips, truncation,
  wrong and huge length headers, unknown and swapped types, broken bodies with
  the length fixed up, splices), and `ScriptMaker`, which draws one
  connection's *script* as a function of the seed and the connection's number;
- the oracle: `predict` runs a script through the same sans-I/O
  `ServerProtocol` the server uses, with the server's handshake and sequence
  rules on top, and says which replies the server owes and whether the script
  could change the round (a script that could is drawn again); `judge`
  compares them with what came back; `closes_connection` is the one place that
  says which replies end a connection;
- the runner: `run_connection` (one script on one connection, bounded by a
  timeout) and `fuzz` (workers, a connection at a time each).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import random
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from lottery.errors import OutOfOrder, ProtocolError
from lottery.models import DEFAULT_WINNING_NUMBER
from lottery.protocol import (
    BATCH_OVERHEAD,
    MAX_FRAME_SIZE,
    NONCE_SIZE,
    PROTOCOL_VERSION,
    Ack,
    Auth,
    Batch,
    Challenge,
    Commit,
    Done,
    DrawQuery,
    Error,
    ErrorCode,
    FrameType,
    Hello,
    Message,
    RejectedBatch,
    Reveal,
    ServerProtocol,
    SingleBet,
    StatusQuery,
    Welcome,
    Winners,
    WinnersQuery,
)
from lottery.protocol import closes_connection as protocol_closes
from roundrunner import ReplyReader

__all__ = [
    "GAP_SEQ",
    "ConnResult",
    "Expect",
    "FuzzStats",
    "Prediction",
    "Script",
    "ScriptMaker",
    "agency_locks",
    "closes_connection",
    "exact_batch",
    "fuzz",
    "judge",
    "mutate",
    "predict",
    "reply_kind",
    "run_connection",
]

HEADER = struct.Struct("!IB")
MAX_BODY = MAX_FRAME_SIZE - HEADER.size
FS, RS = "\x1f", "\x1e"
WINNING_NUMBER = DEFAULT_WINNING_NUMBER
#: Sequences from here on skip far ahead of any real agency's: always BAD_SEQUENCE.
GAP_SEQ = 1 << 30
CLIENT_TYPES = sorted(t for t in FrameType if t < 0x80)
SERVER_TYPES = sorted(t for t in FrameType if t >= 0x80)
NON_CLIENT_TYPES = [t for t in range(256) if t not in CLIENT_TYPES]


def closes_connection(reply: str) -> bool:
    """Whether the server closes the connection after ``reply`` (a `reply_kind` name).

    Not the fuzzer's own statement: it asks the protocol's closing rule
    (`lottery.protocol.closes_connection`), the one the server obeys.
    """
    code = ErrorCode.__members__.get(reply)
    return code is not None and protocol_closes(Error(code, reply))


Row = tuple[str, ...]

# -- bets --------------------------------------------------------------------------------------

NAMES = [
    "Ana", "Juan", "Ñandú", "José María", "O'Hara, Jr.", 'Ana "La Tana"', "D'Angelo, Sr.",
    "Zoë", "李小龍", "Mañana 😀", "A" * 100, "x", " ", "Ω≈ç√∫", "Łódź", "Ålborg",
]  # fmt: skip
# Code point ranges for random names: none holds a control character.
NAME_RANGES = [(0x20, 0x7E), (0xA0, 0x24F), (0x4E00, 0x4FFF), (0x1F600, 0x1F64F)]


def random_name(rng: random.Random) -> str:
    size = rng.choice([1, 2, rng.randint(1, 30), rng.randint(1, 100), 100])
    chars = []
    for _ in range(size):
        low, high = rng.choice(NAME_RANGES)
        chars.append(chr(rng.randint(low, high)))
    return "".join(chars)


def valid_date(rng: random.Random) -> str:
    special = ["2000-02-29", "1904-02-29", "0001-01-01", "1999-12-31", "2004-02-29"]
    if rng.random() < 0.1:
        return rng.choice(special)
    day = datetime.date(1900, 1, 1) + datetime.timedelta(days=rng.randrange(40_000))
    return day.isoformat()


def valid_row(rng: random.Random, *, document: str | None = None) -> Row:
    """A bet every rule accepts, never on the winning number."""
    first = rng.choice(NAMES) if rng.random() < 0.7 else random_name(rng)
    last = rng.choice(NAMES) if rng.random() < 0.7 else random_name(rng)
    if document is None:
        document = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 10)))
    number = rng.randrange(10_000)
    if number == WINNING_NUMBER:
        number += 1
    text = f"{number:04d}" if rng.random() < 0.1 else str(number)
    return (first, last, document, valid_date(rng), text)


# Each replaces one field (index) with a value that breaks its rule.
BAD_FIELDS: list[tuple[int, str]] = [
    (0, ""), (0, "A" * 101), (0, "Ana\x07"), (0, "\x85x"), (0, "del\x7f"), (1, ""),
    (1, "B" * 150), (1, "tab\there"), (2, ""), (2, "12345678901"), (2, "12a45"), (2, "-1"),
    (2, "١٢٣"), (2, " 123"), (3, "2999-01-01"), (3, "1990-02-30"), (3, "1990/01/01"),
    (3, "90-01-01"), (3, "0000-01-01"), (3, "1900-02-29"), (3, "１９９０-01-01"), (3, ""),
    (4, "10000"), (4, "-1"), (4, ""), (4, "1.5"), (4, "٣"), (4, "7574 "),
]  # fmt: skip


def invalid_row(rng: random.Random) -> Row:
    """A well-formed record (no separator inside a field) that breaks a field rule."""
    row = list(valid_row(rng))
    if rng.random() < 0.1:  # the wrong number of fields is an invalid bet too
        return tuple(row[:4]) if rng.random() < 0.5 else (*row, "extra")
    index, value = rng.choice(BAD_FIELDS)
    row[index] = value
    return tuple(row)


def records(rows: Iterable[Row]) -> bytes:
    return "".join(FS.join(row) + RS for row in rows).encode()


# -- frames ------------------------------------------------------------------------------------


def frame(ftype: int, body: bytes = b"", length: int | None = None) -> bytes:
    """A frame with any type and, if given, a length header that may lie."""
    return HEADER.pack(len(body) if length is None else length, ftype) + body


def hello(agency: int, version: int = PROTOCOL_VERSION) -> bytes:
    return frame(FrameType.HELLO, struct.pack("!BI", version, agency))


def batch(seq: int, rows: Sequence[Row], count: int | None = None) -> bytes:
    body = struct.pack("!IHQ", seq, len(rows) if count is None else count, 0) + records(rows)
    return frame(FrameType.BATCH, body[:MAX_BODY])


def bet(seq: int, row: Row) -> bytes:
    return frame(FrameType.BET, (struct.pack("!IQ", seq, 0) + records([row]))[:MAX_BODY])


def empty(ftype: int) -> bytes:
    return frame(ftype)


def fitting_rows(rng: random.Random, make: Callable[[], Row], most: int) -> list[Row]:
    """Up to ``most`` rows from ``make`` that still fit one BATCH frame."""
    rows: list[Row] = []
    size = BATCH_OVERHEAD
    for _ in range(most):
        row = make()
        size += len(records([row]))
        if size > MAX_FRAME_SIZE:
            break
        rows.append(row)
    return rows or [("A", "B", "1", "1990-01-01", "1")]


def exact_batch(seq: int, size: int) -> bytes:
    """A valid BATCH frame of exactly ``size`` bytes (50 ≤ size ≤ 8192)."""
    room = size - BATCH_OVERHEAD
    count = -(-room // 200)
    sizes = [room // count + (i < room % count) for i in range(count)]
    rows = []
    for i, length in enumerate(sizes):  # a record is len(first) + len(last) + 17 bytes
        names = length - 17
        first, last = "F" * (names // 2), "L" * (names - names // 2)
        rows.append((first, last, "1", "1990-01-01", str(i % 10)))
    data = batch(seq, rows)
    assert len(data) == size, (len(data), size)
    return data


# -- mutations ---------------------------------------------------------------------------------


def _fix_length(data: bytes) -> bytes:
    """Rewrite the header so the length says what the body holds (trimmed to the limit)."""
    if len(data) < HEADER.size:
        return data
    body = data[HEADER.size : HEADER.size + MAX_BODY]
    return HEADER.pack(len(body), data[4]) + body


def _with_header(data: bytes, length: int | None = None, ftype: int | None = None) -> bytes:
    if len(data) < HEADER.size:
        data = data + bytes(HEADER.size - len(data))
    old_length, old_type = HEADER.unpack_from(data)
    new = HEADER.pack(
        old_length if length is None else length % 2**32, old_type if ftype is None else ftype
    )
    return new + data[HEADER.size :]


def mutate(rng: random.Random, data: bytes, other: bytes) -> tuple[str, bytes]:
    """One random mutation of the frame ``data`` (``other``: a frame to splice in)."""
    if len(data) < HEADER.size:  # an earlier mutation cut it short: pad it back
        data = data + bytes(HEADER.size - len(data))
    choice = rng.randrange(13)
    if choice == 0:
        out = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(out))
            out[i] ^= 1 << rng.randrange(8)
        return "bit_flip", bytes(out)
    if choice == 1:
        out = bytearray(data)
        out[rng.randrange(len(out))] = rng.choice([0, 0xFF, 0x1E, 0x1F, 0x80, 0x7F, 0x30])
        return "byte_set", bytes(out)
    if choice == 2:
        return "truncate", data[: rng.randrange(1, len(data))] if len(data) > 1 else b""
    if choice == 3:
        return "extend", data + rng.randbytes(rng.randint(1, 20))
    if choice == 4:
        length = HEADER.unpack_from(data)[0] + rng.choice([-3, -2, -1, 1, 2, 3, 50])
        return "length_off", _with_header(data, length=max(0, length))
    if choice == 5:
        huge = rng.choice([MAX_BODY + 1, MAX_FRAME_SIZE, 65_536, 2**31, 2**32 - 1])
        return "length_huge", _with_header(data, length=huge)
    if choice == 6:
        return "length_random", _with_header(data, length=rng.randrange(2**32))
    if choice == 7:
        return "type_unknown", _with_header(data, ftype=rng.choice(NON_CLIENT_TYPES))
    if choice == 8:
        return "type_swap", _with_header(data, ftype=rng.choice(CLIENT_TYPES))
    body = bytearray(data[HEADER.size :])
    if choice == 9 and body:  # cut a slice out of the body, then fix the length
        i = rng.randrange(len(body))
        del body[i : i + rng.randint(1, 16)]
        return "body_cut", _fix_length(data[: HEADER.size] + bytes(body))
    if choice == 10 and body:  # repeat a slice of the body, then fix the length
        i = rng.randrange(len(body))
        body[i:i] = body[i : i + rng.randint(1, 40)]
        return "body_repeat", _fix_length(data[: HEADER.size] + bytes(body))
    if choice == 11:  # a separator, a stray byte or bad UTF-8 inside, length fixed
        poison = rng.choice([b"\x1e", b"\x1f", b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\x85"])
        i = rng.randint(0, len(body))
        body[i:i] = poison
        return "body_inject", _fix_length(data[: HEADER.size] + bytes(body))
    cut = rng.randrange(1, len(data)) if len(data) > 1 else 1
    return "splice", data[:cut] + other[rng.randrange(len(other)) :]


# -- what the server owes: the oracle ----------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    """One reply the server owes: any of ``kinds``; ``wait``: it may take until the draw."""

    kinds: frozenset[str]
    wait: bool = False


@dataclass
class Prediction:
    expects: list[Expect]
    #: Why this stream could change the round (a bet or a DONE as a real agency), or None.
    unsafe: str | None = None
    #: Real agencies the stream's HELLO would be admitted as (a newer handshake as an
    #: agency stops that agency's older connections: the real agency's, or another's).
    admitted: frozenset[int] = frozenset()


def reply_kind(message: Message) -> str:
    """A reply as the oracle names it: ``WELCOME``, ``ACK:3``, ``BAD_FRAME``..."""
    if isinstance(message, Error):
        try:
            return ErrorCode(message.code).name
        except ValueError:
            return f"ERROR_{message.code}"
    if isinstance(message, Ack):
        return f"ACK:{message.seq}"
    return type(message).__name__.upper().replace("NOTREADY", "NOT_READY")


def predict(
    data: bytes,
    agencies: int,
    *,
    drawn: bool,
    eof: bool,
    dup_limit: int = 0,
    auth: bool = False,
    today: str | None = None,
) -> Prediction:
    """The replies the server owes for ``data`` on one connection, and whether it is safe.

    ``drawn``: the draw was made before the connection opened (every agency is
    done, so a bet gets DRAW_MADE). ``eof``: the client half-closes after
    ``data``. ``dup_limit``: the ``last_seq`` the WELCOME gave, if known.
    ``auth``: the server has secrets; HELLO gets a CHALLENGE, and any AUTH from
    us (we know no secret) gets AUTH_FAILED.
    """
    today = today or datetime.date.today().isoformat()
    proto = ServerProtocol()
    proto.receive_data(data)
    expects: list[Expect] = []
    unsafe: str | None = None
    admitted: set[int] = set()

    def owe(*kinds: str, wait: bool = False) -> bool:
        """Owe one of ``kinds``; True if that reply surely ends the connection."""
        expects.append(Expect(frozenset(kinds), wait))
        return all(closes_connection(kind) for kind in kinds)

    def done() -> Prediction:
        return Prediction(expects, unsafe, frozenset(admitted))

    agency = 0
    while True:
        try:
            message = proto.next_event(today)
        except OutOfOrder:
            owe("OUT_OF_ORDER")
            return done()  # the server reads no further (closes_connection agrees)
        except ProtocolError:
            owe("BAD_FRAME")
            return done()  # a broken stream cannot be read on
        if message is None:
            break
        if isinstance(message, RejectedBatch):
            owe("INVALID_BET")
            continue
        if isinstance(message, Hello):
            if message.version != PROTOCOL_VERSION:
                if owe("BAD_VERSION"):
                    return done()
                continue
            if not 1 <= message.agency <= agencies:
                if owe("UNKNOWN_AGENCY"):
                    return done()
                continue
            if auth:
                proto.send(Challenge(bytes(NONCE_SIZE)))
                owe("CHALLENGE")
                continue
            proto.send(Welcome(dup_limit, 0, 0, today))
            agency = message.agency
            admitted.add(agency)
            owe("WELCOME")
        elif isinstance(message, Auth):
            if owe("AUTH_FAILED"):
                return done()
        elif isinstance(message, StatusQuery):
            owe("STATUS")
        elif isinstance(message, DrawQuery):
            owe("DRAWINFO")  # the server under test draws fixed: mode 0, zero commitment
        elif isinstance(message, Commit):
            owe("BAD_COMMITMENT")  # a fixed round takes no commitments
        elif isinstance(message, Reveal):
            # Before betting closes a REVEAL is a protocol error; after, a fixed
            # round refuses it (no commitment on record).
            if drawn:
                owe("BAD_COMMITMENT")
            elif owe("OUT_OF_ORDER", "BAD_COMMITMENT"):
                return done()
        elif isinstance(message, WinnersQuery):
            if drawn:
                owe("WINNERS")
            else:
                owe("WINNERS", "NOT_READY", wait=True)
        elif isinstance(message, Done):
            if not drawn:
                unsafe = unsafe or f"DONE as agency {agency} before the draw"
            owe("ACK:0")
        elif isinstance(message, Batch | SingleBet):
            name = type(message).__name__
            if drawn:
                owe("DRAW_MADE")
                return done()  # DRAW_MADE closes the connection
            # Before the draw: refused as a gap, or acked as a duplicate; or, if
            # this agency said DONE before our handshake, OUT_OF_ORDER; or, if
            # the draw came meanwhile, DRAW_MADE.
            if message.seq >= GAP_SEQ:
                owe("BAD_SEQUENCE", "OUT_OF_ORDER", "DRAW_MADE")
            elif message.seq <= dup_limit:
                owe(f"ACK:{message.seq}", "OUT_OF_ORDER", "DRAW_MADE")
            else:
                unsafe = unsafe or f"{name} {message.seq} as agency {agency} could be stored"
                owe(f"ACK:{message.seq}", "BAD_SEQUENCE", "OUT_OF_ORDER", "DRAW_MADE")
    if eof:
        try:
            proto.receive_eof()
        except ProtocolError:
            owe("BAD_FRAME")
    return done()


# -- scripts -----------------------------------------------------------------------------------


@dataclass
class Script:
    """What one connection sends, and how."""

    index: int
    kind: str
    frames: list[bytes]  # each counts as one frame sent (random blobs too)
    ending: str = "eof"  # eof: half-close and read to EOF; linger: read the replies; abort
    write: str = "one"  # one write, random chunks, or a drip (one byte at a time)
    drawn: bool = False  # made after the draw was seen: every agency is done
    #: Admitted as a real agency while the real one runs: it may stop this connection.
    kickable: bool = False
    admitted: frozenset[int] = frozenset()
    seed: int = 0  # for the chunk split points and drip delays
    #: Interactive scripts: more frames once the first reply (WELCOME...) is in.
    followup: Callable[[Message | None], list[bytes]] | None = None
    mutations: list[str] = field(default_factory=list)

    @property
    def data(self) -> bytes:
        return b"".join(self.frames)


class ScriptMaker:
    """Draws connection scripts; script ``i`` depends only on the seed and ``i``."""

    PRE_DRAW: ClassVar[list[tuple[str, int]]] = [
        ("random", 10), ("mutated", 30), ("invalid_bets", 12), ("out_of_order", 8),
        ("handshake", 8), ("sequence", 8), ("limits", 7), ("partial", 8), ("drip", 2),
        ("status", 3), ("duplicates", 4),
    ]  # fmt: skip
    POST_DRAW: ClassVar[list[tuple[str, int]]] = [*PRE_DRAW, ("after_draw", 25), ("next_seq", 8)]
    AUTH: ClassVar[list[tuple[str, int]]] = [("auth", 20)]  # only against a server with secrets

    def __init__(self, agencies: int, seed: int, *, auth: bool = False, drip: bool = True) -> None:
        self.agencies = agencies
        self.seed = seed
        self.auth = auth
        self.drip = drip
        self.unsafe_drawn_again = 0  # scripts redrawn because they could change the round
        self.impostors = 0  # scripts admitted as a real agency while it was running
        self.today = datetime.date.today().isoformat()

    def make(
        self,
        index: int,
        drawn: bool,
        *,
        running: bool = False,
        may_admit: Callable[[frozenset[int]], bool] = lambda ids: True,
    ) -> Script:
        """Script ``index``. ``drawn``: every agency is done. ``running``: the real
        agencies are connected, so a script admitted as one of them stops that
        agency's connection; ``may_admit`` says whether that is allowed now."""
        rng = random.Random(f"{self.seed}:{index}")
        table = self.POST_DRAW if drawn else self.PRE_DRAW
        if self.auth:
            table = [*table, *self.AUTH]
        if not self.drip:
            table = [(k, w) for k, w in table if k != "drip"]
        kinds, weights = zip(*table, strict=True)
        for _ in range(50):
            kind = rng.choices(kinds, weights)[0]
            script = Script(index, kind, [], drawn=drawn, seed=rng.randrange(2**32))
            getattr(self, f"_{kind}")(rng, script)
            script.ending = rng.choices(["eof", "linger", "abort"], [60, 28, 12])[0]
            if script.write == "one" and rng.random() < 0.35:
                script.write = "chunks"
            prediction = predict(
                script.data, self.agencies, drawn=drawn, eof=True, auth=self.auth,
                today=self.today,
            )  # fmt: skip
            script.admitted = prediction.admitted
            if prediction.unsafe is not None:  # followups check their own part
                self.unsafe_drawn_again += 1
                continue
            if running and script.admitted:
                if not may_admit(script.admitted):
                    continue
                script.kickable = True
                self.impostors += 1
            return script
        return Script(index, "random", [rng.randbytes(7)], drawn=drawn)

    # -- helpers --

    def _real(self, rng: random.Random) -> int:
        return rng.randint(1, self.agencies)

    def _outsider(self, rng: random.Random) -> int:
        n = self.agencies
        return rng.choice([0, n + 1, n + rng.randint(2, 1000), 2**31, 2**32 - 1])

    def _gap(self, rng: random.Random) -> int:
        return rng.choice([GAP_SEQ, GAP_SEQ + rng.randrange(2**20), 2**32 - 1])

    def _harmless(self, rng: random.Random, drawn: bool) -> bytes:
        """A request that cannot store anything as a real agency before the draw."""
        pick = rng.randrange(10)
        if pick < 3:
            return batch(self._gap(rng), fitting_rows(rng, lambda: valid_row(rng), 20))
        if pick < 6:
            return self._invalid(rng)
        if pick < 8:
            return empty(FrameType.STATUS_QUERY)
        if pick < 9:
            return bet(self._gap(rng), valid_row(rng))
        if drawn or rng.random() < 0.1:  # before the draw it waits for it: rarely
            return empty(FrameType.WINNERS_QUERY)
        return empty(FrameType.STATUS_QUERY)

    def _invalid(self, rng: random.Random) -> bytes:
        """A BATCH (or BET) with at least one invalid bet: INVALID_BET, whatever its seq."""
        seq = rng.choice([1, 2, rng.randint(1, 100), self._gap(rng)])
        if rng.random() < 0.25:
            return bet(seq, invalid_row(rng))
        count = rng.randint(1, 40)
        bad = {rng.randrange(count) for _ in range(rng.randint(1, 3))}
        rows = [invalid_row(rng) if i in bad else valid_row(rng) for i in range(count)]
        while len(rows) > 1 and len(batch(seq, rows)) > MAX_FRAME_SIZE - 10:
            rows.pop(0)
        if not any(i in bad for i in range(len(rows))):
            rows[-1] = invalid_row(rng)
        return batch(seq, rows)

    def _any_frame(self, rng: random.Random, agency: int) -> bytes:
        """Some client frame, valid or nearly, to mutate."""
        pick = rng.randrange(9)
        if pick == 0:
            return hello(agency)
        if pick == 1:
            return batch(self._gap(rng), fitting_rows(rng, lambda: valid_row(rng), 12))
        if pick == 2:
            return bet(self._gap(rng), valid_row(rng))
        if pick == 3:
            return self._invalid(rng)
        if pick == 4:
            return empty(FrameType.DONE)
        if pick == 5:
            return empty(FrameType.WINNERS_QUERY)
        if pick == 6:
            return empty(FrameType.STATUS_QUERY)
        if pick == 7:
            return frame(FrameType.AUTH, rng.randbytes(32))
        return batch(rng.randint(1, 50), fitting_rows(rng, lambda: valid_row(rng), 5))

    # -- kinds --

    def _random(self, rng: random.Random, script: Script) -> None:
        for _ in range(rng.randint(1, 3)):
            size = rng.choice([rng.randint(1, 5), rng.randint(5, 64), rng.randint(64, 600),
                               rng.randint(8000, 9000)])  # fmt: skip
            blob = rng.randbytes(size)
            if rng.random() < 0.3:  # a plausible header, then noise
                blob = HEADER.pack(rng.randrange(300), rng.choice(CLIENT_TYPES)) + blob
            script.frames.append(blob)

    def _mutated(self, rng: random.Random, script: Script) -> None:
        agency = self._real(rng) if rng.random() < 0.75 else self._outsider(rng)
        if rng.random() < 0.8:
            script.frames.append(hello(agency))
        script.frames += [self._harmless(rng, script.drawn) for _ in range(rng.randint(0, 3))]
        target = self._any_frame(rng, agency)
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            name, target = mutate(rng, target or b"\x00", self._any_frame(rng, agency))
            script.mutations.append(name)
        script.frames.append(target)
        script.frames += [self._harmless(rng, script.drawn) for _ in range(rng.randint(0, 2))]

    def _invalid_bets(self, rng: random.Random, script: Script) -> None:
        script.frames.append(hello(self._real(rng)))
        for _ in range(rng.randint(1, 30)):
            if rng.random() < 0.8:
                script.frames.append(self._invalid(rng))
            else:
                script.frames.append(self._harmless(rng, script.drawn))

    def _out_of_order(self, rng: random.Random, script: Script) -> None:
        agency = self._real(rng)
        early = [
            batch(1, [valid_row(rng)]), bet(1, valid_row(rng)), empty(FrameType.DONE),
            empty(FrameType.WINNERS_QUERY), frame(FrameType.AUTH, rng.randbytes(32)),
        ]  # fmt: skip
        server_frames = [
            frame(t, rng.randbytes(rng.choice([0, 4, 12]))) for t in SERVER_TYPES
        ]  # a client sending the server's own frames
        pick = rng.randrange(5)
        if pick == 0:
            script.frames.append(rng.choice(early))
        elif pick == 1:
            script.frames += [hello(agency), hello(rng.choice([agency, self._outsider(rng)]))]
        elif pick == 2:
            script.frames += [hello(agency), frame(FrameType.AUTH, rng.randbytes(32))]
        elif pick == 3:
            script.frames.append(rng.choice(server_frames))
        else:
            script.frames += [hello(agency), self._harmless(rng, script.drawn)]
            script.frames.append(rng.choice(server_frames))
        script.frames += [self._any_frame(rng, agency) for _ in range(rng.randint(0, 2))]

    def _handshake(self, rng: random.Random, script: Script) -> None:
        if rng.random() < 0.3:
            script.frames.append(empty(FrameType.STATUS_QUERY))
        pick = rng.randrange(4)
        if pick == 0:
            script.frames.append(hello(self._outsider(rng)))
        elif pick == 1:
            version = rng.choice([0, 1, 3, 0x7F, 0xFF])
            script.frames.append(hello(rng.choice([self._real(rng), self._outsider(rng)]), version))
        elif pick == 2:
            script.frames.append(hello(self._real(rng)))
        else:
            body = rng.randbytes(rng.choice([0, 1, 4, 6, 9]))
            script.frames.append(frame(FrameType.HELLO, body))
        script.frames += [self._harmless(rng, script.drawn) for _ in range(rng.randint(0, 3))]

    def _sequence(self, rng: random.Random, script: Script) -> None:
        script.frames.append(hello(self._real(rng)))
        for _ in range(rng.randint(1, 8)):
            pick = rng.randrange(4)
            rows = fitting_rows(rng, lambda: valid_row(rng), rng.randint(1, 30))
            if pick == 0:  # sequence 0 is never a batch's: BAD_FRAME
                script.frames.append(rng.choice([batch(0, rows), bet(0, rows[0])]))
            elif pick == 1:
                script.frames.append(batch(self._gap(rng), rows))
            elif pick == 2:
                script.frames.append(bet(self._gap(rng), rows[0]))
            else:
                script.frames.append(self._harmless(rng, script.drawn))

    def _limits(self, rng: random.Random, script: Script) -> None:
        script.frames.append(hello(self._real(rng)))
        gap = self._gap(rng)
        row = records([valid_row(rng)])
        edge = [
            exact_batch(gap, MAX_FRAME_SIZE),  # exactly 8 KiB: a well-formed frame
            exact_batch(gap, rng.randint(60, MAX_FRAME_SIZE)),
            frame(FrameType.BATCH, length=MAX_BODY + 1),  # 8193 bytes announced
            frame(FrameType.BATCH, struct.pack("!IHQ", gap, 0, 0)),  # a count of 0
            frame(FrameType.BATCH, struct.pack("!IHQ", gap, 2, 0) + row),  # count ≠ records
            frame(FrameType.BATCH, struct.pack("!IHQ", gap, 1, 0) + row[:-1]),  # no final 0x1E
            frame(FrameType.BATCH, struct.pack("!IHQ", gap, 1, 0) + b"\xff" + row),  # not UTF-8
            frame(FrameType.BATCH, struct.pack("!IH", gap, 1)),  # too short for its header
            frame(FrameType.BET, struct.pack("!IQ", gap, 0) + row + row),  # BET with two bets
            frame(FrameType.BET, struct.pack("!IQ", gap, 0)),  # BET with none
            frame(FrameType.DONE, b"\x00"),
            frame(FrameType.WINNERS_QUERY, b"x"),
            frame(FrameType.STATUS_QUERY, b"status?"),
            frame(FrameType.HELLO, b"\x01\x00\x00\x00\x01\x00"),
            frame(FrameType.AUTH, rng.randbytes(rng.choice([0, 31, 33]))),
        ]
        script.frames += [self._harmless(rng, script.drawn) for _ in range(rng.randint(0, 2))]
        script.frames.append(rng.choice(edge))
        script.frames += [self._harmless(rng, script.drawn) for _ in range(rng.randint(0, 2))]

    def _partial(self, rng: random.Random, script: Script) -> None:
        agency = self._real(rng) if rng.random() < 0.8 else self._outsider(rng)
        if rng.random() < 0.7:
            script.frames.append(hello(agency))
        script.frames += [self._harmless(rng, script.drawn) for _ in range(rng.randint(0, 3))]
        whole = self._any_frame(rng, agency)
        script.frames.append(whole[: rng.randrange(1, len(whole))])

    def _drip(self, rng: random.Random, script: Script) -> None:
        script.write = "drip"
        agency = self._real(rng) if rng.random() < 0.7 else self._outsider(rng)
        frames = [hello(agency), empty(FrameType.STATUS_QUERY)]
        if rng.random() < 0.5:
            frames.append(self._invalid(rng)[:40])  # and end inside a frame
        script.frames += frames[: rng.randint(1, len(frames))]

    def _status(self, rng: random.Random, script: Script) -> None:
        script.frames += [empty(FrameType.STATUS_QUERY)] * rng.randint(1, 3)
        if rng.random() < 0.6:
            script.frames.append(hello(self._real(rng)))
            script.frames += [empty(FrameType.STATUS_QUERY)] * rng.randint(1, 3)

    def _auth(self, rng: random.Random, script: Script) -> None:
        """HELLO as a real agency, then proofs we cannot have: AUTH_FAILED, or out of order."""
        script.frames.append(hello(self._real(rng)))
        if rng.random() < 0.3:
            script.frames.append(empty(FrameType.STATUS_QUERY))  # allowed while challenged
        pick = rng.randrange(6)
        if pick < 3:
            script.frames.append(frame(FrameType.AUTH, rng.randbytes(32)))
        elif pick == 3:
            script.frames.append(frame(FrameType.AUTH, rng.randbytes(rng.choice([0, 16, 64]))))
        elif pick == 4:  # anything but AUTH while challenged
            script.frames.append(rng.choice([hello(self._real(rng)), self._harmless(rng, False)]))
        else:
            name, mutated = mutate(rng, frame(FrameType.AUTH, bytes(32)), hello(1))
            script.mutations.append(name)
            script.frames.append(mutated)
        script.frames += [self._harmless(rng, script.drawn) for _ in range(rng.randint(0, 2))]

    def _duplicates(self, rng: random.Random, script: Script) -> None:
        """Shake hands, then resend batches numbered up to the WELCOME's last_seq."""
        script.frames.append(hello(self._real(rng)))
        seed = rng.randrange(2**32)

        def followup(reply: Message | None) -> list[bytes]:
            inner = random.Random(seed)
            last = reply.last_seq if isinstance(reply, Welcome) else 0
            frames = []
            for _ in range(inner.randint(1, 6)):
                rows = fitting_rows(inner, lambda: valid_row(inner), inner.randint(1, 20))
                if last:
                    seq = inner.randint(1, last)
                    frames.append(batch(seq, rows) if inner.random() < 0.8 else bet(seq, rows[0]))
                else:
                    frames.append(batch(self._gap(inner), rows))
            return frames

        script.followup = followup

    def _after_draw(self, rng: random.Random, script: Script) -> None:
        """After the draw: anything, valid bets and DONE as real agencies included."""
        agency = self._real(rng)
        script.frames.append(hello(agency))
        for _ in range(rng.randint(1, 6)):
            pick = rng.randrange(6)
            rows = fitting_rows(rng, lambda: valid_row(rng), rng.randint(1, 30))
            if pick == 0:
                script.frames.append(batch(rng.randint(1, 40), rows))
            elif pick == 1:
                script.frames.append(bet(rng.randint(1, 40), rows[0]))
            elif pick == 2:
                script.frames.append(empty(FrameType.DONE))
            elif pick == 3:
                script.frames.append(empty(FrameType.WINNERS_QUERY))
            else:
                script.frames.append(self._harmless(rng, True))

    def _next_seq(self, rng: random.Random, script: Script) -> None:
        """After the draw: the very batch that would be stored next (last_seq + 1)."""
        script.frames.append(hello(self._real(rng)))
        seed = rng.randrange(2**32)

        def followup(reply: Message | None) -> list[bytes]:
            inner = random.Random(seed)
            seq = (reply.last_seq if isinstance(reply, Welcome) else 0) + 1
            rows = fitting_rows(inner, lambda: valid_row(inner), inner.randint(1, 50))
            return [batch(seq, rows) if inner.random() < 0.7 else bet(seq, rows[0])]

        script.followup = followup


# -- one connection ----------------------------------------------------------------------------


@dataclass
class ConnResult:
    script: Script
    replies: list[str] = field(default_factory=list)
    #: eof, closed (by us, all owed replies in), kicked, reset, timeout, aborted, garbage, refused
    end: str = "eof"
    frames_sent: int = 0
    expects: list[Expect] = field(default_factory=list)
    mismatch: str | None = None
    detail: str = ""
    first: Message | None = None  # the first reply itself (a followup reads WELCOME's fields)


async def _reader_task(
    reader: asyncio.StreamReader, result: ConnResult, arrived: asyncio.Event
) -> None:
    replies = ReplyReader(reader)
    winners_open = False  # a WINNERS answer spans frames until last
    try:
        while (message := await replies.next()) is not None:
            if isinstance(message, Winners):
                if winners_open:
                    if message.last:
                        winners_open = False
                    continue
                winners_open = not message.last
            if result.first is None:
                result.first = message
            result.replies.append(reply_kind(message))
            arrived.set()
        result.end = "eof"
    except ProtocolError as exc:
        result.end = "garbage"
        result.detail = f"undecodable reply: {exc}"
    except OSError as exc:
        result.end = "reset"
        result.detail = repr(exc)
    finally:
        arrived.set()


async def _write(writer: asyncio.StreamWriter, data: bytes, script: Script) -> None:
    if script.write == "one":
        writer.write(data)
        await writer.drain()
        return
    rng = random.Random(script.seed)
    if script.write == "drip":  # at most ~1.5 s in all
        delay = min(0.05, 1.5 / max(len(data), 1))
        for i in range(len(data)):
            if writer.transport.is_closing():
                raise ConnectionResetError("closed while dripping")
            writer.write(data[i : i + 1])
            await writer.drain()
            await asyncio.sleep(delay * rng.uniform(0.5, 1.0))
        return
    points = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 6))))
    for start, end in zip([0, *points], [*points, len(data)], strict=True):
        if writer.transport.is_closing():
            raise ConnectionResetError("closed between pieces")
        writer.write(data[start:end])
        await writer.drain()
        await asyncio.sleep(0)


async def run_connection(
    host: str, port: int, script: Script, agencies: int, timeout: float, *, auth: bool = False
) -> ConnResult:
    """Run one script on a new connection, bounded by ``timeout``, and judge the replies."""
    result = ConnResult(script)
    arrived = asyncio.Event()
    writer: asyncio.StreamWriter | None = None
    reading: asyncio.Task[None] | None = None
    dup_limit = 0
    # Owed for the whole script until the writes are over (a timeout during a
    # drip must not leave the replies that did come judged against nothing).
    result.expects = predict(
        script.data, agencies, drawn=script.drawn, eof=script.ending == "eof", auth=auth
    ).expects
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            reading = asyncio.create_task(_reader_task(reader, result, arrived))
            try:
                await _write(writer, script.data, script)
                result.frames_sent = len(script.frames)
                if script.followup is not None:
                    while not result.replies and not reading.done():
                        arrived.clear()
                        await arrived.wait()
                    first = result.first
                    if isinstance(first, Welcome):
                        dup_limit = first.last_seq
                    more = script.followup(first) if first is not None else []
                    if more and not script.drawn:  # a followup must be as safe as the rest
                        check = predict(
                            script.data + b"".join(more), agencies, drawn=False, eof=True,
                            dup_limit=dup_limit, auth=auth,
                        )  # fmt: skip
                        if check.unsafe is not None:
                            raise AssertionError(f"unsafe followup: {check.unsafe}")
                    if more:
                        script.frames += more
                        await _write(writer, b"".join(more), script)
                        result.frames_sent = len(script.frames)
            except OSError as exc:
                result.detail = f"write failed: {exc!r}"
            eof = script.ending == "eof"
            result.expects = predict(
                script.data, agencies, drawn=script.drawn, eof=eof, dup_limit=dup_limit, auth=auth
            ).expects
            if script.ending == "abort":
                writer.transport.abort()
                result.end = "aborted"
            elif script.ending == "eof":
                with contextlib.suppress(OSError):
                    if not writer.transport.is_closing():
                        writer.write_eof()
                await reading
            else:  # linger: wait for what is owed, then close
                while not reading.done() and not _complete(result):
                    arrived.clear()
                    await arrived.wait()
                if not reading.done():
                    result.end = "closed"
    except TimeoutError:
        result.end = "timeout" if writer is not None else "connect_timeout"
    except OSError as exc:
        result.end = "refused"
        result.detail = repr(exc)
    finally:
        if reading is not None and not reading.done():
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
        if writer is not None:
            if script.ending == "abort":
                writer.transport.abort()
            else:
                writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    result.mismatch = judge(result)
    if result.mismatch is None and result.end == "eof" and script.kickable:
        owed = len(result.expects) - len(result.replies)
        if owed > 0 and not (result.replies and closes_connection(result.replies[-1])):
            result.end = "kicked"  # the real agency's newer handshake stopped it
    return result


def _complete(result: ConnResult) -> bool:
    replies = result.replies
    if replies and closes_connection(replies[-1]):
        return True
    return len(replies) >= len(result.expects)


def judge(result: ConnResult) -> str | None:
    """Why the replies break the oracle, or None if they fit."""
    expects, replies, end = result.expects, result.replies, result.end
    if end == "garbage":
        return result.detail
    for i, reply in enumerate(replies):
        if i >= len(expects):
            return f"reply {i} is {reply}, none was owed"
        if reply not in expects[i].kinds:
            return f"reply {i} is {reply}, owed one of {sorted(expects[i].kinds)}"
        if closes_connection(reply) and i != len(replies) - 1:
            return f"reply {i + 1} came after {reply}, which closes the connection"
    owed = len(expects) - len(replies)
    closed_by_error = bool(replies) and closes_connection(replies[-1])
    waiting = owed > 0 and expects[len(replies)].wait
    # A winners query waiting for the draw stops when the peer half-closes
    # (the server's `_answer_winners` watches for it): EOF there is allowed.
    gone_while_waiting = waiting and result.script.ending == "eof"
    if (
        end == "eof"
        and owed > 0
        and not closed_by_error
        and not result.script.kickable
        and not gone_while_waiting
    ):
        return f"EOF after {len(replies)} of {len(expects)} owed replies"
    if end == "timeout" and owed > 0 and not waiting and result.script.ending != "abort":
        return f"no reply {len(replies)} (owed {sorted(expects[len(replies)].kinds)}) in time"
    return None


# -- many connections --------------------------------------------------------------------------


@dataclass
class FuzzStats:
    frames: int = 0
    connections: int = 0
    frames_by_phase: collections.Counter[str] = field(default_factory=collections.Counter)
    kinds: collections.Counter[str] = field(default_factory=collections.Counter)
    replies: collections.Counter[str] = field(default_factory=collections.Counter)
    ends: collections.Counter[str] = field(default_factory=collections.Counter)
    mutations: collections.Counter[str] = field(default_factory=collections.Counter)
    mismatches: list[ConnResult] = field(default_factory=list)
    mismatch_count: int = 0
    #: Connections reset by the server before it delivered every reply it owed.
    lost_to_reset: list[ConnResult] = field(default_factory=list)
    _waiters: list[tuple[int, asyncio.Event]] = field(default_factory=list)

    async def reached(self, frames: int) -> None:
        """Wait until at least ``frames`` frames were sent."""
        if self.frames < frames:
            event = asyncio.Event()
            self._waiters.append((frames, event))
            await event.wait()

    def add(self, result: ConnResult, phase: str) -> None:
        self.connections += 1
        self.frames += result.frames_sent
        self.frames_by_phase[phase] += result.frames_sent
        self.kinds[result.script.kind] += 1
        self.ends[result.end] += 1
        self.mutations.update(result.script.mutations)
        for reply in result.replies:
            self.replies["ACK" if reply.startswith("ACK:") else reply] += 1
        owed = len(result.expects) - len(result.replies)
        if result.end == "reset" and owed > 0 and not result.expects[len(result.replies)].wait:
            self.lost_to_reset.append(result)
        if result.mismatch is not None:
            self.mismatch_count += 1
            if len(self.mismatches) < 10:
                self.mismatches.append(result)
        for frames, event in self._waiters:
            if self.frames >= frames:
                event.set()


async def fuzz(
    host: str,
    port: int,
    maker: ScriptMaker,
    *,
    concurrency: int,
    timeout: float,
    keep_going: Callable[[FuzzStats], bool],
    drawn: Callable[[], bool] = lambda: False,
    running: Callable[[], bool] = lambda: False,
    may_admit: Callable[[frozenset[int]], bool] = lambda ids: True,
    phase: Callable[[], str] = lambda: "fuzz",
    locks: dict[int, asyncio.Lock] | None = None,
    stats: FuzzStats | None = None,
) -> FuzzStats:
    """Run workers, each a connection at a time, while ``keep_going(stats)`` holds.

    A script admitted as agency X holds ``locks[X]`` while it runs: a newer
    handshake as X stops X's older connections, so two of ours never overlap
    (and the oracle stays exact). ``running``/``may_admit``: see `ScriptMaker.make`.
    """
    stats = stats or FuzzStats()
    counter = iter(range(10**12))
    locks = locks if locks is not None else agency_locks(maker.agencies)

    async def worker() -> None:
        while keep_going(stats):
            index = next(counter)
            script = maker.make(index, drawn(), running=running(), may_admit=may_admit)
            async with contextlib.AsyncExitStack() as held:
                for agency in sorted(script.admitted):
                    await held.enter_async_context(locks[agency])
                now = phase()
                result = await run_connection(
                    host, port, script, maker.agencies, timeout, auth=maker.auth
                )
            stats.add(result, now)

    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())
    return stats


def agency_locks(agencies: int) -> dict[int, asyncio.Lock]:
    """One lock per real agency, for `fuzz` (and whoever must wait for it to let go)."""
    return {agency: asyncio.Lock() for agency in range(1, agencies + 1)}
