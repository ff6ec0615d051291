"""Hostile input, in-process: mutated frames over real sockets, and a state machine on the decoder.

Two layers, checked two ways:

- over loopback, a few hundred frames from the fuzzer's generator (scripts/fuzzing.py)
  hit a real `Server`; every reply must be what that script's oracle says the
  server owes, and a clean round afterwards stores exactly its own bets;
- a Hypothesis state machine feeds the sans-I/O `ServerProtocol` valid frames,
  mutated frames, random bytes and EOF, split anywhere, sends the server's
  answers (WELCOME, CHALLENGE, replies and ERRORs), and compares each step
  with an independent model written from docs/PROTOCOL.md (framing, the state
  table, the closing rule, and the body rules through `validate_fields`, not
  the decoder's regular expression).
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import logging
import random
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import fuzzing as fz
from lottery.client import AsyncAgency
from lottery.errors import InvalidBet, OutOfOrder, ProtocolError
from lottery.models import validate_fields
from lottery.protocol import (
    MAX_FRAME_SIZE,
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
    NotReady,
    RejectedBatch,
    Reveal,
    ServerEvent,
    ServerProtocol,
    SingleBet,
    Status,
    StatusQuery,
    Welcome,
    Winners,
    WinnersQuery,
    encode,
)

from .conftest import UNIT
from .helpers import LOOPBACK, data_dir_of, make_rows, running_server, stored_bets

# Both tests take seconds: hundreds of connections, and a long Hypothesis run.
pytestmark = [pytest.mark.timeout(120 * UNIT), pytest.mark.slow]

TODAY = datetime.date.today().isoformat()
FS, RS = "\x1f", "\x1e"
HEADER = struct.Struct("!IB")
MAX_BODY = MAX_FRAME_SIZE - HEADER.size
CLIENT_TYPES = frozenset(t for t in FrameType if t < 0x80)


# -- over real sockets -------------------------------------------------------------------------


async def test_fuzzed_connections_then_a_clean_round_stores_exactly_its_bets(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Hostile frames get exactly the replies owed; a clean round then stores just its own bets."""
    agencies, bets = 3, 300
    caplog.set_level(logging.ERROR, logger="asyncio")
    async with running_server(tmp_path, agencies=agencies) as server:
        maker = fz.ScriptMaker(agencies, seed=7)
        stats = await fz.fuzz(
            LOOPBACK, server.port, maker, concurrency=20, timeout=2 * UNIT,
            keep_going=lambda s: s.frames < 400,
        )  # fmt: skip
        rows = [make_rows(bets, start=i * bets, winners=[i]) for i in range(agencies)]

        async def clean(agency: int) -> list[str]:
            async with AsyncAgency(agency, LOOPBACK, server.port, timeout=10 * UNIT) as client:
                return (await client.run(rows[agency - 1])).winners

        winners = await asyncio.gather(*(clean(a) for a in range(1, agencies + 1)))
    mismatches = [
        f"conn {r.script.index} {r.script.kind}: {r.mismatch}; {fz._hex(r.script.data, 60)}"
        for r in stats.mismatches
    ]
    assert stats.mismatch_count == 0, mismatches
    assert stats.frames >= 400
    assert {"WELCOME", "INVALID_BET", "BAD_FRAME", "OUT_OF_ORDER"} <= set(stats.replies), stats
    assert winners == [[rows[i][i][2]] for i in range(agencies)]
    expected = [(a + 1, *row[:4], int(row[4])) for a in range(agencies) for row in rows[a]]
    assert sorted(stored_bets(data_dir_of(tmp_path))) == sorted(expected)
    assert not [r.getMessage() for r in caplog.records if r.name == "asyncio"]


# -- the decoder against a model -----------------------------------------------------------------

# docs/PROTOCOL.md §9: what receiving a frame does. Sending moves out of "admitting"
# (`model_send`), and nothing is read in "closed".
TRANSITIONS: dict[str, dict[int, str]] = {
    "handshake": {FrameType.HELLO: "admitting", FrameType.STATUS_QUERY: "handshake"},
    "admitting": {FrameType.STATUS_QUERY: "admitting"},
    "challenged": {FrameType.AUTH: "admitting", FrameType.STATUS_QUERY: "challenged"},
    "open": {
        FrameType.BET: "open",
        FrameType.BATCH: "open",
        FrameType.DONE: "done",
        FrameType.WINNERS_QUERY: "open",
        FrameType.STATUS_QUERY: "open",
        FrameType.DRAW_QUERY: "open",
        FrameType.COMMIT: "open",
        FrameType.REVEAL: "open",
    },
    "done": {
        FrameType.DONE: "done",
        FrameType.WINNERS_QUERY: "done",
        FrameType.STATUS_QUERY: "done",
        FrameType.DRAW_QUERY: "done",
        FrameType.COMMIT: "done",
        FrameType.REVEAL: "done",
    },
    "closed": {},
}
#: docs/PROTOCOL.md §7 and §9: the only ERROR codes after which the connection stays open.
RECOVERABLE = {
    ErrorCode.INVALID_BET,
    ErrorCode.STORAGE,
    ErrorCode.BAD_SEQUENCE,
    ErrorCode.BAD_COMMITMENT,
}


def model_send(state: str, message: Message) -> str:
    """The state after the server sends ``message`` in ``state`` (docs/PROTOCOL.md §9)."""
    if isinstance(message, Welcome):
        return "open"
    if isinstance(message, Challenge):
        return "challenged"
    if isinstance(message, Error) and message.code not in RECOVERABLE:
        return "closed"
    return state


@dataclass(frozen=True)
class Outcome:
    """What the model says the next ``next_event`` does."""

    kind: str  # "need" (None), "event", "error" (ProtocolError), "order" (OutOfOrder), "invalid"
    size: int = 0  # bytes of the frame it consumes
    message: object = None  # the event's fields, for "event"; (seq, count, reason) for "invalid"
    index: int = -1  # the first bad bet, for "invalid"
    ftype: int = 0  # the frame's type, for "event" (it moves the state)


def _records(data: bytes) -> tuple[list[tuple[str, ...]] | None, int, str]:
    """The records of a body, per the documented rules: (records, -1, ""), (None, bad index,
    reason) or (None, -2, "") when the bytes are not records at all."""
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return None, -2, ""
    if not text.endswith(RS):
        return None, -2, ""
    rows = [tuple(raw.split(FS)) for raw in text[:-1].split(RS)]
    for index, row in enumerate(rows):
        try:
            validate_fields(row, TODAY)
        except InvalidBet as exc:
            return None, index, str(exc)
    return rows, -1, ""


def _decode_body(ftype: int, body: bytes) -> Outcome:
    size = HEADER.size + len(body)
    if ftype == FrameType.HELLO:
        if len(body) != 5:
            return Outcome("error", size)
        version, agency = struct.unpack("!BI", body)
        return Outcome("event", size, ("hello", agency, version))
    if ftype == FrameType.AUTH:
        return Outcome("event", size, ("auth", body)) if len(body) == 32 else Outcome("error", size)
    if ftype == FrameType.STATUS_QUERY:  # empty, or an operator's 32-byte proof (§ STATUS_QUERY)
        ok = len(body) in (0, 32)
        return Outcome("event", size, ("STATUS_QUERY",)) if ok else Outcome("error", size)
    if ftype in (FrameType.COMMIT, FrameType.REVEAL):  # docs/PROTOCOL.md §11: 32 bytes
        name = FrameType(ftype).name
        return Outcome("event", size, (name, body)) if len(body) == 32 else Outcome("error", size)
    if ftype in (FrameType.DONE, FrameType.WINNERS_QUERY, FrameType.DRAW_QUERY):
        return (
            Outcome("event", size, (FrameType(ftype).name,)) if not body else Outcome("error", size)
        )
    # docs/PROTOCOL.md §4: BATCH is seq u32, count u16, input_rows u64; BET seq u32, input_rows u64.
    head = 14 if ftype == FrameType.BATCH else 12
    if len(body) < head:
        return Outcome("error", size)
    seq = struct.unpack_from("!I", body)[0]
    if seq == 0:
        return Outcome("error", size)
    count = struct.unpack_from("!H", body, 4)[0] if ftype == FrameType.BATCH else 1
    input_rows = struct.unpack_from("!Q", body, head - 8)[0]
    if count == 0:
        return Outcome("error", size)
    if ftype == FrameType.BET and body.count(RS.encode(), head) != 1:
        return Outcome("error", size)  # a BET of two bets (or none) is no bet at all
    rows, bad, reason = _records(body[head:])
    if rows is None:
        if bad < 0:
            return Outcome("error", size)
        return Outcome("invalid", size, (seq, count, reason), index=bad)
    if len(rows) != count:
        return Outcome("error", size)
    return Outcome("event", size, (FrameType(ftype).name, seq, rows, input_rows))


def model_next(pending: bytes, state: str) -> Outcome:
    """What ``ServerProtocol.next_event`` must do with ``pending`` in ``state``."""
    if state == "closed" or len(pending) < HEADER.size:  # nothing is read after closing
        return Outcome("need")
    length, ftype = HEADER.unpack_from(pending)
    if length > MAX_BODY or ftype not in CLIENT_TYPES:
        return Outcome("error")  # refused at the header, before the body is in
    if len(pending) < HEADER.size + length:
        return Outcome("need")
    if ftype not in TRANSITIONS[state]:
        return Outcome("order", HEADER.size + length)
    outcome = _decode_body(ftype, pending[HEADER.size : HEADER.size + length])
    return Outcome(outcome.kind, outcome.size, outcome.message, outcome.index, ftype)


def _fields(message: Message) -> object:
    """A decoded message in the model's terms."""
    if isinstance(message, Hello):
        return ("hello", message.agency, message.version)
    if isinstance(message, Auth):
        return ("auth", message.mac)
    if isinstance(message, Batch):
        return ("BATCH", message.seq, [tuple(r) for r in message.records], message.input_rows)
    if isinstance(message, SingleBet):
        return ("BET", message.seq, [tuple(message.record)], message.input_rows)
    if isinstance(message, Commit):
        return ("COMMIT", message.commitment)
    if isinstance(message, Reveal):
        return ("REVEAL", message.nonce)
    names = {
        Done: "DONE",
        WinnersQuery: "WINNERS_QUERY",
        StatusQuery: "STATUS_QUERY",
        DrawQuery: "DRAW_QUERY",
    }
    return (names[type(message)],)


# -- strategies --

names = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Cf", "Zl", "Zp")),
    min_size=1,
    max_size=100,
)
valid_rows = st.tuples(
    names,
    names,
    st.from_regex(r"[0-9]{1,10}", fullmatch=True),
    st.dates(max_value=datetime.date.fromisoformat(TODAY)).map(datetime.date.isoformat),
    st.from_regex(r"[0-9]{1,4}", fullmatch=True),
)
sequences = st.integers(1, 2**32 - 1)
#: Sequence 0 (never a batch's: a protocol error) and the extremes among the others.
any_sequences = st.one_of(st.sampled_from([0, 0, 1, 2**32 - 1]), sequences)


_digits = "0123456789"
BAD_VALUES = {  # per field: values that break its rule (docs/PROTOCOL.md §3)
    0: st.one_of(
        st.sampled_from(["", "N" * 101, "Ana\x1d", "\x9f"]),  # one past each edge first
        st.text(min_size=101, max_size=120).filter(lambda t: FS not in t and RS not in t),
        st.builds(lambda a, c: a + c, names, st.sampled_from(["\x00", "\x07", "\x7f", "\x85"])),
    ),
    2: st.one_of(
        st.sampled_from(["", "1" * 11, "12345678901", "0x1", "１"]),
        st.text(_digits, min_size=11, max_size=14),
        st.builds(lambda d, c: d + c, st.text(_digits, max_size=5), st.sampled_from("a-١ .")),
    ),
    3: st.one_of(
        st.dates(min_value=datetime.date.fromisoformat(TODAY) + datetime.timedelta(days=1)).map(
            datetime.date.isoformat
        ),
        st.from_regex(
            r"[0-9]{4}-(02-3[01]|(04|06|09|11)-31|1[3-9]-[0-2][0-9]|00-1[0-9])", fullmatch=True
        ),
        st.from_regex(r"[0-9]{2,4}[/.][0-9]{1,2}[/.][0-9]{1,2}", fullmatch=True),
        st.sampled_from(["0000-01-01", "1900-02-29", "2001-02-29", "1990-1-01", "1990-01-1 "]),
    ),
    4: st.one_of(
        st.sampled_from(["", "10000", "99999", "00000", "-1", "1e3"]),
        st.text(_digits, min_size=5, max_size=8),
        st.builds(lambda d, c: d + c, st.text(_digits, max_size=3), st.sampled_from("-.x٣ ")),
    ),
}


@st.composite
def invalid_rows(draw: st.DrawFn) -> tuple[str, ...]:
    """A row with one field that breaks its rule (or the wrong number of fields)."""
    row = list(draw(valid_rows))
    field = draw(st.sampled_from([0, 1, 2, 3, 4, 5]))
    if field == 5:  # the wrong number of fields is an invalid bet too
        return tuple(row[: draw(st.sampled_from([1, 4]))]) if draw(st.booleans()) else (*row, "")
    row[field] = draw(BAD_VALUES[0 if field < 2 else field])
    return tuple(row)


def frame(ftype: int, body: bytes) -> bytes:
    return HEADER.pack(len(body), ftype) + body


def batch_frame(seq: int, rows: list[tuple[str, ...]], count: int | None = None) -> bytes:
    text = "".join(FS.join(r) + RS for r in rows).encode()
    announced = len(rows) if count is None else count
    return frame(FrameType.BATCH, struct.pack("!IHQ", seq, announced, seq * 7) + text)


def bet_frame(seq: int, row: tuple[str, ...]) -> bytes:
    return frame(FrameType.BET, struct.pack("!IQ", seq, seq * 7) + (FS.join(row) + RS).encode())


client_frames = st.one_of(
    st.builds(
        lambda agency, version: frame(FrameType.HELLO, struct.pack("!BI", version, agency)),
        st.integers(0, 2**32 - 1),
        st.one_of(st.just(1), st.integers(0, 255)),
    ),
    st.builds(batch_frame, any_sequences, st.lists(valid_rows, min_size=1, max_size=8)),
    st.builds(bet_frame, any_sequences, valid_rows),
    st.sampled_from(
        [frame(t, b"") for t in (FrameType.DONE, FrameType.WINNERS_QUERY, FrameType.STATUS_QUERY)]
    ),
    st.binary(min_size=32, max_size=32).map(lambda mac: frame(FrameType.AUTH, mac)),
    st.just(frame(FrameType.DRAW_QUERY, b"")),
    st.builds(
        frame,
        st.sampled_from([FrameType.COMMIT, FrameType.REVEAL]),
        st.binary(min_size=31, max_size=33),
    ),
)


#: Replies the server may send once the handshake is answered, and ERRORs of any code.
replies = st.one_of(
    st.builds(Ack, st.integers(0, 2**32 - 1)),
    st.just(NotReady()),
    st.builds(
        Winners, st.lists(st.text("0123456789", min_size=1, max_size=10), max_size=3).map(tuple)
    ),
    st.builds(Status, st.text(max_size=20)),
    st.builds(Error, st.sampled_from(list(ErrorCode)), st.text(max_size=20)),
    st.builds(Error, st.integers(0, 2**16 - 1), st.text(max_size=20)),
)


class ServerProtocolMachine(RuleBasedStateMachine):
    """One connection's `ServerProtocol`, shadowed by `model_next`; EOF starts a new one."""

    def __init__(self) -> None:
        super().__init__()
        self.auth_server = False  # answer HELLO with CHALLENGE, as a server with secrets does
        self.answer_at_once = True  # answer HELLO and AUTH as soon as they are read
        self.events: list[ServerEvent] = []
        self.new_connection()

    def new_connection(self) -> None:
        self.protocol = ServerProtocol()
        self.state = "handshake"
        self.pending = b""

    @initialize(auth_server=st.booleans(), answer_at_once=st.booleans())
    def server_kind(self, auth_server: bool, answer_at_once: bool) -> None:
        self.auth_server = auth_server
        self.answer_at_once = answer_at_once
        self.new_connection()

    def send(self, message: Message) -> None:
        """Send ``message`` as the server, checking its bytes and the state it moves to."""
        assert self.protocol.send(message) == encode(message)
        self.state = model_send(self.state, message)
        assert self.protocol.close_expected() is (self.state == "closed")

    def admit(self) -> None:
        """Answer the HELLO or AUTH just read as a server would."""
        last = self.events[-1]
        if isinstance(last, Hello) and last.version != PROTOCOL_VERSION:
            self.send(Error(ErrorCode.BAD_VERSION, f"version {last.version}"))
        elif isinstance(last, Hello) and self.auth_server:
            self.send(Challenge(bytes(32)))
        else:
            self.send(Welcome(0, 0))

    def feed(self, data: bytes, cuts: list[int]) -> None:
        """Feed ``data`` in pieces, pulling every event after each piece."""
        points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
        for start, end in itertools.pairwise(points):
            self.protocol.receive_data(data[start:end])
            self.pending += data[start:end]
            if not self.drain():
                return  # the stream broke: the server would close; the rest is not sent

    def drain(self) -> bool:
        """Pull events until more bytes are needed; False if the connection had to close."""
        while True:
            expected = model_next(self.pending, self.state)
            try:
                event = self.protocol.next_event(TODAY)
            except ProtocolError as exc:
                wanted = "order" if isinstance(exc, OutOfOrder) else "error"
                assert expected.kind == wanted and type(exc) in (ProtocolError, OutOfOrder), (
                    expected,
                    exc,
                )
                code = ErrorCode.OUT_OF_ORDER if wanted == "order" else ErrorCode.BAD_FRAME
                assert exc.code is code, (exc, exc.code)
                self.send(Error(code, str(exc)))  # a broken stream: ERROR, which closes
                assert self.state == "closed"
                self.new_connection()
                return False
            # Anything else escaping next_event fails the test by itself.
            if event is None:
                assert expected.kind == "need", expected
                return True
            if isinstance(event, RejectedBatch):
                assert expected.kind == "invalid", (expected, event)
                assert (event.seq, event.count, event.reason) == expected.message, (expected, event)
                assert event.index == expected.index, (expected, event)
                self.pending = self.pending[expected.size :]
                self.send(event.error())  # INVALID_BET: the connection carries on
                assert self.state != "closed"
                continue
            assert expected.kind == "event", (expected, event)
            assert _fields(event) == expected.message
            self.events.append(event)
            self.state = TRANSITIONS[self.state][expected.ftype]
            self.pending = self.pending[expected.size :]
            if self.state == "admitting" and self.answer_at_once:
                self.admit()

    @precondition(lambda self: self.state == "handshake" and not self.pending)
    @rule(agency=st.integers(1, 2**32 - 1), mac=st.binary(min_size=32, max_size=32))
    def open_a_connection(self, agency: int, mac: bytes) -> None:
        """HELLO, then CHALLENGE and AUTH if the server has secrets, then WELCOME: open."""
        self.feed(frame(FrameType.HELLO, struct.pack("!BI", PROTOCOL_VERSION, agency)), [])
        if self.state == "admitting":
            self.admit()
        if self.state == "challenged":
            self.feed(frame(FrameType.AUTH, mac), [])
            if self.state == "admitting":
                self.admit()
        assert self.state == "open"

    @precondition(lambda self: self.state == "admitting")
    @rule()
    def answer_the_handshake(self) -> None:
        """The server answers a HELLO or AUTH it read a while ago."""
        self.admit()

    @precondition(lambda self: self.state == "admitting")
    @rule(code=st.sampled_from([ErrorCode.UNKNOWN_AGENCY, ErrorCode.AUTH_FAILED]))
    def refuse_the_handshake(self, code: ErrorCode) -> None:
        """A refused handshake closes the connection: nothing more is read."""
        self.send(Error(code, "no"))
        assert self.protocol.close_expected()
        self.protocol.receive_data(frame(FrameType.STATUS_QUERY, b""))
        self.pending += frame(FrameType.STATUS_QUERY, b"")
        assert self.protocol.next_event(TODAY) is None

    @precondition(lambda self: self.state in ("open", "done"))
    @rule(reply=replies, then=client_frames)
    def send_a_reply(self, reply: Message, then: bytes) -> None:
        """Any reply: an ERROR but INVALID_BET, STORAGE, BAD_SEQUENCE closes; the others do not."""
        closes = isinstance(reply, Error) and reply.code not in RECOVERABLE
        self.send(reply)
        assert self.protocol.close_expected() is closes
        if closes:
            self.protocol.receive_data(then)  # whatever comes next is never read
            self.pending += then
            assert self.protocol.next_event(TODAY) is None
            with pytest.raises(RuntimeError):
                self.protocol.send(Ack(1))

    @precondition(lambda self: self.state != "closed")
    @rule(code=st.sampled_from(list(ErrorCode)))
    def send_an_error(self, code: ErrorCode) -> None:
        """An ERROR in any state closes the connection unless its code is a recoverable one."""
        self.send(Error(code, code.name))
        assert self.protocol.close_expected() is (code not in RECOVERABLE)

    @precondition(lambda self: self.state != "admitting")
    @rule(message=st.sampled_from([Welcome(0, 0), Challenge(bytes(32))]))
    def answer_nobody_asked_for(self, message: Message) -> None:
        """WELCOME or CHALLENGE outside admitting (or after closing) is refused, state unchanged."""
        with pytest.raises(RuntimeError):
            self.protocol.send(message)

    @precondition(lambda self: self.state in ("handshake", "challenged") and not self.pending)
    @rule(
        agency=st.integers(0, 2**32 - 1),
        version=st.sampled_from([1, 1, 1, 0, 2]),
        mac=st.binary(min_size=32, max_size=32),
        cuts=st.lists(st.integers(0, 64), max_size=3),
    )
    def shake_hands(self, agency: int, version: int, mac: bytes, cuts: list[int]) -> None:
        if self.state == "challenged":
            self.feed(frame(FrameType.AUTH, mac), cuts)
        else:
            self.feed(frame(FrameType.HELLO, struct.pack("!BI", version, agency)), cuts)

    @precondition(lambda self: not self.pending)  # well-formed frames start at a boundary
    @rule(data=client_frames, cuts=st.lists(st.integers(0, 2**13), max_size=4))
    def valid_frame(self, data: bytes, cuts: list[int]) -> None:
        self.feed(data, cuts)

    @precondition(lambda self: not self.pending)
    @rule(ftype=st.sampled_from([FrameType.DONE, FrameType.WINNERS_QUERY, FrameType.STATUS_QUERY]))
    def request(self, ftype: int) -> None:
        self.feed(frame(ftype, b""), [])

    @precondition(lambda self: self.state == "open" and not self.pending)
    @rule(
        seq=any_sequences,
        rows=st.lists(valid_rows, min_size=0, max_size=5),
        count=st.integers(0, 2**16 - 1),
    )
    def batch_with_any_count(self, seq: int, rows: list[tuple[str, ...]], count: int) -> None:
        self.feed(batch_frame(seq, rows, count), [])

    @precondition(lambda self: self.state == "open" and not self.pending)
    @rule(
        seq=sequences,
        size=st.sampled_from([MAX_FRAME_SIZE, MAX_FRAME_SIZE - 1, 4096, 60]),
        announce=st.sampled_from([None, MAX_BODY, MAX_BODY + 1, 2**32 - 1]),
        cut=st.integers(0, 40),
    )
    def frame_at_the_limit(self, seq: int, size: int, announce: int | None, cut: int) -> None:
        """A valid batch of exactly ``size`` bytes, or a header announcing ``announce`` bytes."""
        data = fz.exact_batch(seq, size)
        if announce is not None:
            data = HEADER.pack(announce, FrameType.BATCH) + data[HEADER.size : len(data) - cut]
        self.feed(data, [])

    @precondition(lambda self: self.state == "open" and not self.pending)
    @rule(
        seq=sequences,
        rows=st.lists(valid_rows, min_size=1, max_size=8),
        cuts=st.lists(st.integers(0, 2**13), max_size=3),
    )
    def valid_batch_decodes_to_its_records(
        self, seq: int, rows: list[tuple[str, ...]], cuts: list[int]
    ) -> None:
        self.feed(batch_frame(seq, rows), cuts)
        # A whole, valid batch where batches are allowed: exactly these records.
        assert _fields(self.events[-1]) == ("BATCH", seq, [tuple(r) for r in rows], seq * 7)
        assert self.state == "open" and not self.pending

    @precondition(lambda self: self.state == "open" and not self.pending)
    @rule(
        seq=sequences,
        rows=st.lists(valid_rows, min_size=0, max_size=6),
        bad=st.lists(invalid_rows(), min_size=1, max_size=2),
        position=st.integers(0, 6),
        single=st.booleans(),
    )
    def batch_with_invalid_bets(
        self,
        seq: int,
        rows: list[tuple[str, ...]],
        bad: list[tuple[str, ...]],
        position: int,
        single: bool,
    ) -> None:
        if single:
            self.feed(bet_frame(seq, bad[0]), [])
            return
        mixed = rows[:position] + bad + rows[position:]
        self.feed(batch_frame(seq, mixed), [])

    @precondition(lambda self: self.state == "open" and not self.pending)
    @rule(seq=sequences, row=invalid_rows())
    def bet_with_an_invalid_field(self, seq: int, row: tuple[str, ...]) -> None:
        self.feed(bet_frame(seq, row), [])

    @rule(
        data=client_frames,
        other=client_frames,
        rng=st.randoms(use_true_random=False),
        times=st.integers(0, 3),
        noise=st.binary(max_size=64),
        cuts=st.lists(st.integers(0, 2**13), max_size=3),
        close=st.booleans(),
    )
    def garbage(
        self,
        data: bytes,
        other: bytes,
        rng: random.Random,
        times: int,
        noise: bytes,
        cuts: list[int],
        close: bool,
    ) -> None:
        """A frame mutated ``times`` times (0: random bytes instead), perhaps then EOF."""
        for _ in range(times):
            _, data = fz.mutate(rng, data, other)
        self.feed(data if times else noise, cuts)
        if close:
            self.eof()

    @rule()
    def eof(self) -> None:
        if self.state == "closed":  # the server closed first: it never reads an EOF
            self.new_connection()
            return
        try:
            self.protocol.receive_eof()
        except ProtocolError:
            assert self.pending, "EOF between frames is a normal end"
        else:
            assert not self.pending, "EOF inside a frame must be a protocol error"
        self.new_connection()

    @invariant()
    def state_is_the_models(self) -> None:
        assert self.protocol.state.value == self.state
        assert self.protocol.close_expected() is (self.state == "closed")


def test_server_protocol_follows_the_model_for_any_bytes_in_any_split() -> None:
    """Valid, mutated and random bytes in any split make ServerProtocol do what the model says."""
    run_state_machine_as_test(
        ServerProtocolMachine,
        settings=settings(
            max_examples=100,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        ),
    )
