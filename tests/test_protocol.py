"""The sans-I/O wire protocol: framing, message round trips, frame order, limits, fuzzing."""

from __future__ import annotations

import contextlib
import datetime
import itertools
import random
import re
import struct
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lottery import protocol
from lottery.errors import OutOfOrder, ProtocolError
from lottery.protocol import (
    BATCH_OVERHEAD,
    MAX_FRAME_SIZE,
    PROTOCOL_VERSION,
    Ack,
    Auth,
    Batch,
    Challenge,
    ClientProtocol,
    Done,
    Error,
    ErrorCode,
    FrameType,
    Hello,
    Message,
    NotReady,
    Record,
    RejectedBatch,
    ServerEvent,
    ServerProtocol,
    ServerState,
    SingleBet,
    StatusQuery,
    Welcome,
    Winners,
    WinnersQuery,
    closes_connection,
    encode,
    encode_batch,
    encode_record,
)

pytestmark = pytest.mark.timeout(30)

TODAY = "2024-06-01"
AGENCY = 3
HEADER = struct.Struct("!IB")
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DOCS = Path(__file__).parents[1] / "docs" / "PROTOCOL.md"

SERVER_MESSAGES = (
    Hello, SingleBet, Batch, Done, WinnersQuery, protocol.StatusQuery, protocol.Auth,
    protocol.DrawQuery, protocol.Commit, protocol.Reveal,
)  # fmt: skip
CLIENT_MESSAGES = (
    Welcome, Ack, Error, Winners, NotReady, protocol.Status, protocol.Challenge,
    protocol.DrawInfo, protocol.Receipt, protocol.RevealWanted,
)  # fmt: skip


def rec(
    document: str = "30904465",
    number: str = "2201",
    birthdate: str = "1999-03-17",
    first_name: str = "Santiago Lionel",
    last_name: str = "Lorca",
) -> Record:
    """One bet's five wire fields (valid unless a field is overridden)."""
    return (first_name, last_name, document, birthdate, number)


def raw_record(fields: Sequence[str]) -> bytes:
    """The wire bytes of ``fields`` without any validation."""
    return ("\x1f".join(fields) + "\x1e").encode()


def frame(ftype: int, body: bytes = b"") -> bytes:
    """A frame built by hand, so tests can send what `encode` never would."""
    return HEADER.pack(len(body), ftype) + body


def batch_frame(seq: int, count: int, records: bytes) -> bytes:
    """A BATCH frame with an arbitrary announced count and record bytes."""
    return frame(FrameType.BATCH, struct.pack("!IHQ", seq, count, 0) + records)


def opened() -> ServerProtocol:
    """A server protocol past the handshake: HELLO received, WELCOME sent."""
    proto = ServerProtocol()
    proto.receive_data(encode(Hello(AGENCY)))
    assert proto.next_event(TODAY) == Hello(AGENCY)
    proto.send(Welcome(0, 0))
    return proto


def server_events(proto: ServerProtocol, data: bytes) -> list[ServerEvent]:
    """Feed ``data`` at once and pull every event it completes, answering HELLO with WELCOME."""
    proto.receive_data(data)
    events: list[ServerEvent] = []
    while (event := proto.next_event(TODAY)) is not None:
        events.append(event)
        if isinstance(event, Hello):
            proto.send(Welcome(0, 0))
    return events


def rejected(proto: ServerProtocol) -> RejectedBatch:
    """The next event, which must be a RejectedBatch."""
    event = proto.next_event(TODAY)
    assert isinstance(event, RejectedBatch), event
    return event


def welcomed() -> ClientProtocol:
    """A client protocol past its handshake: replies to requests are in order."""
    proto = ClientProtocol()
    proto.receive_data(encode(Welcome(0, 0)))
    assert proto.next_event() == Welcome(0, 0)
    return proto


def client_events(data: bytes, proto: ClientProtocol | None = None) -> list[Message]:
    """Feed ``data`` to a client protocol past its handshake and pull every message it completes."""
    proto = proto or welcomed()
    proto.receive_data(data)
    return list(proto.events())


def frames_of(data: bytes) -> list[bytes]:
    """Split a stream of well-formed frames into whole frames, by their headers."""
    frames = []
    while data:
        length, _ = HEADER.unpack_from(data)
        frames.append(data[: HEADER.size + length])
        data = data[HEADER.size + length :]
    return frames


def split_at(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """``data`` cut into pieces at the given offsets (taken modulo its length)."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


# -- round trips -------------------------------------------------------------------------

CLIENT_TO_SERVER: list[Message] = [
    SingleBet(1, rec()),
    SingleBet(2**32 - 1, rec(first_name="María José", last_name="O'Hara, Jr.")),
    Batch(2, [rec()]),
    Batch(3, [rec("1", "0", "1900-01-01"), rec("9999999999", "9999", TODAY, "Ñandú", "ü" * 100)]),
    Batch(4, [rec(str(i), str(i)) for i in range(200)]),
    WinnersQuery(),
    Done(),
]

SERVER_TO_CLIENT: list[Message] = [
    Welcome(0, 0),
    Welcome(2**32 - 1, 2**64 - 1),
    Ack(0),
    Ack(2**32 - 1),
    Error(ErrorCode.BAD_SEQUENCE, "batch 9 skips ahead of the last stored"),
    Error(ErrorCode.INVALID_BET, "bet 0: first_name: contains U+0007 — ñ"),
    Error(65535, ""),
    Winners(()),
    Winners(("30904465",)),
    Winners(("1", "0123456789", "42")),
    NotReady(),
]


@pytest.mark.parametrize("message", CLIENT_TO_SERVER, ids=repr)
@pytest.mark.parametrize("byte_by_byte", [False, True], ids=["whole", "bytewise"])
def test_client_messages_round_trip(message: Message, byte_by_byte: bool) -> None:
    """Every client message decodes, after a HELLO and WELCOME, to itself, whole or bytewise."""
    data = encode(Hello(AGENCY)) + encode(message)
    proto = ServerProtocol()
    events: list[ServerEvent] = []
    pieces = [data[i : i + 1] for i in range(len(data))] if byte_by_byte else [data]
    for piece in pieces:
        proto.receive_data(piece)
        while (event := proto.next_event(TODAY)) is not None:
            events.append(event)
            if isinstance(event, Hello):
                proto.send(Welcome(0, 0))
    assert events == [Hello(AGENCY), message]
    proto.receive_eof()


@pytest.mark.parametrize("hello", [Hello(1), Hello(2**32 - 1), Hello(7, version=200)], ids=repr)
def test_hello_round_trips_and_waits_for_the_servers_answer(hello: Hello) -> None:
    """A HELLO decodes to itself (any version: the server judges it) and moves to admitting."""
    proto = ServerProtocol()
    assert proto.state is ServerState.HANDSHAKE
    proto.receive_data(encode(hello))
    assert proto.next_event(TODAY) == hello
    assert proto.state is ServerState.ADMITTING


def test_hello_defaults_to_the_current_version() -> None:
    """A Hello without a version speaks PROTOCOL_VERSION on the wire."""
    assert encode(Hello(5)) == frame(FrameType.HELLO, struct.pack("!BI", PROTOCOL_VERSION, 5))


@pytest.mark.parametrize("message", SERVER_TO_CLIENT, ids=repr)
@pytest.mark.parametrize("byte_by_byte", [False, True], ids=["whole", "bytewise"])
def test_server_messages_round_trip(message: Message, byte_by_byte: bool) -> None:
    """Every server message decodes to itself, whole or fed one byte at a time."""
    data = encode(message)
    proto = ClientProtocol() if isinstance(message, Welcome) else welcomed()
    events: list[Message] = []
    pieces = [data[i : i + 1] for i in range(len(data))] if byte_by_byte else [data]
    for piece in pieces:
        proto.receive_data(piece)
        events.extend(proto.events())
    assert events == [message]
    proto.receive_eof()


def test_many_messages_in_one_read_come_out_in_order() -> None:
    """Several frames arriving in one chunk are all decoded, in order."""
    data = b"".join(encode(m) for m in CLIENT_TO_SERVER)
    assert server_events(opened(), data) == CLIENT_TO_SERVER
    # One WELCOME, first: a second one, or one after the replies, is out of order.
    replies = [m for m in SERVER_TO_CLIENT if not isinstance(m, Winners)][1:]
    assert client_events(b"".join(encode(m) for m in replies), ClientProtocol()) == replies


def test_next_event_returns_none_until_a_frame_is_whole() -> None:
    """Partial frames yield None, and the message appears with its last byte."""
    data = encode(Batch(1, [rec()]))
    proto = opened()
    for i in range(len(data) - 1):
        proto.receive_data(data[i : i + 1])
        assert proto.next_event(TODAY) is None
    proto.receive_data(data[-1:])
    assert proto.next_event(TODAY) == Batch(1, [rec()])
    assert proto.next_event(TODAY) is None


def test_encode_rejects_what_is_not_a_message() -> None:
    """encode() refuses an object that is not a protocol message."""
    with pytest.raises(TypeError, match="not a protocol message"):
        encode("hello")  # type: ignore[arg-type]


_name_char = st.characters(codec="utf-8", exclude_categories=("Cc", "Cf", "Zl", "Zp"))
valid_records = st.tuples(
    st.text(_name_char, min_size=1, max_size=100),
    st.text(_name_char, min_size=1, max_size=100),
    st.text("0123456789", min_size=1, max_size=10),
    st.dates(max_value=datetime.date.fromisoformat(TODAY)).map(datetime.date.isoformat),
    st.text("0123456789", min_size=1, max_size=4),
)


@FUZZ
@given(seq=st.integers(1, 2**32 - 1), records=st.lists(valid_records, min_size=1, max_size=8))
def test_any_valid_batch_round_trips(seq: int, records: list[Record]) -> None:
    """A batch of any valid bets (unicode names included) decodes to the same bets."""
    encoded = [encode_record(r, TODAY) for r in records]
    assert encoded == [raw_record(r) for r in records]
    data = encode_batch(seq, encoded)
    assert data == encode(Batch(seq, records))
    assert server_events(opened(), data) == [Batch(seq, records)]


# -- limits ----------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [ServerProtocol, ClientProtocol])
@pytest.mark.parametrize("length", [MAX_FRAME_SIZE - HEADER.size + 1, 2**20, 2**32 - 1])
def test_oversized_length_is_refused_from_the_header_alone(
    make: Callable[[], ServerProtocol | ClientProtocol], length: int
) -> None:
    """A header announcing a frame over 8 KiB is refused before any body byte arrives."""
    proto = make()
    ftype = FrameType.BATCH if isinstance(proto, ServerProtocol) else FrameType.WINNERS
    proto.receive_data(HEADER.pack(length, ftype))
    with pytest.raises(ProtocolError, match="8192-byte limit"):
        proto.next_event(TODAY) if isinstance(proto, ServerProtocol) else proto.next_event()


def test_a_frame_of_exactly_8_kib_is_waited_for() -> None:
    """A header announcing exactly MAX_FRAME_SIZE bytes is legal: the decoder waits for it."""
    proto = opened()
    proto.receive_data(HEADER.pack(MAX_FRAME_SIZE - HEADER.size, FrameType.BATCH))
    assert proto.next_event(TODAY) is None


def _records_filling(total: int) -> list[bytes]:
    """Valid records whose encoded sizes add up to exactly ``total`` bytes."""
    base = len(encode_record(rec(first_name="A"), TODAY))  # first_name may grow by 99
    count = -(-total // (base + 99))
    sizes = [total // count + (i < total % count) for i in range(count)]
    records = [encode_record(rec(first_name="A" * (1 + size - base)), TODAY) for size in sizes]
    assert sum(map(len, records)) == total
    return records


def test_a_batch_cut_exactly_to_the_limit_fits_and_decodes() -> None:
    """A batch whose records fill a frame to exactly MAX_FRAME_SIZE is legal and decodes."""
    records = _records_filling(MAX_FRAME_SIZE - BATCH_OVERHEAD)
    data = encode_batch(1, records)
    assert len(data) == MAX_FRAME_SIZE
    (batch,) = server_events(opened(), data)
    assert isinstance(batch, Batch)
    assert len(batch.records) == len(records)


def test_encode_batch_refuses_one_byte_too_many() -> None:
    """encode_batch raises instead of writing a frame over MAX_FRAME_SIZE."""
    records = _records_filling(MAX_FRAME_SIZE - BATCH_OVERHEAD + 1)
    with pytest.raises(ValueError, match="exceeds"):
        encode_batch(1, records)


@FUZZ
@given(records=st.lists(valid_records, min_size=1, max_size=120), max_amount=st.integers(1, 500))
def test_batches_cut_at_the_limit_stay_within_it(records: list[Record], max_amount: int) -> None:
    """Cutting records the agency's way (size + next > limit) gives frames within 8 KiB."""
    encoded = [encode_record(r, TODAY) for r in records]
    frames: list[bytes] = []
    batch: list[bytes] = []
    size = BATCH_OVERHEAD
    for record in encoded:
        if batch and (len(batch) >= max_amount or size + len(record) > MAX_FRAME_SIZE):
            frames.append(encode_batch(len(frames) + 1, batch))
            batch, size = [], BATCH_OVERHEAD
        batch.append(record)
        size += len(record)
    frames.append(encode_batch(len(frames) + 1, batch))
    assert all(len(f) <= MAX_FRAME_SIZE for f in frames)
    events = server_events(opened(), b"".join(frames))
    assert [r for b in events if isinstance(b, Batch) for r in b.records] == records


def test_long_error_messages_are_cut_to_fit_one_frame() -> None:
    """An ERROR whose message is too long is truncated to fit, even mid-character."""
    data = encode(Error(ErrorCode.STORAGE, "ñ" * MAX_FRAME_SIZE))
    assert len(data) == MAX_FRAME_SIZE
    (error,) = client_events(data)
    assert isinstance(error, Error)
    assert error.code == ErrorCode.STORAGE
    assert error.message.startswith("ñ" * 100)
    assert error.message.endswith("ñ\ufffd")  # the cut half character, replaced


# -- winners ---------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [0, 1, 743, 744, 745, 1488, 1489, 5000, 20000])
def test_long_winners_lists_span_frames_that_reassemble(count: int) -> None:
    """A winners list too long for one frame is split into ≤ 8 KiB frames; only the last is last."""
    documents = tuple(f"{i:010d}" for i in range(count))
    data = encode(Winners(documents))
    frames = frames_of(data)
    assert all(len(f) <= MAX_FRAME_SIZE for f in frames)
    events = client_events(data)
    assert len(events) == len(frames)
    assert all(isinstance(e, Winners) for e in events)
    assert [e.last for e in events if isinstance(e, Winners)] == [False] * (len(frames) - 1) + [
        True
    ]
    assert tuple(d for e in events if isinstance(e, Winners) for d in e.documents) == documents
    assert len(frames) == max(1, -(-count // 744))  # 744 ten-digit documents fill a frame


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), count=st.integers(700, 4000))
def test_any_winners_list_splits_into_frames_within_the_limit(seed: int, count: int) -> None:
    """Winners lists of mixed document lengths split into ≤ 8 KiB frames, in order."""
    rng = random.Random(seed)
    documents = [str(rng.randrange(10 ** rng.randint(1, 10))) for _ in range(count)]
    data = encode(Winners(tuple(documents)))
    frames = frames_of(data)
    assert max(len(f) for f in frames) <= MAX_FRAME_SIZE
    events = run_client([data])
    assert len(events) == len(frames)
    assert [d for e in events if isinstance(e, Winners) for d in e.documents] == documents


def test_winners_frames_are_filled_to_the_byte() -> None:
    """Documents that fill a frame's body exactly stay in it, and one byte more starts a new one."""
    # 3-byte header + 744 ten-digit documents + 743 separators = 8186 bytes, one under the
    # limit, so neither a 10-digit document nor a 2-digit one fits after them.
    documents = ("1" * 10,) * 744 + ("2" * 10,) * 744 + ("33", "4")
    data = encode(Winners(documents))
    assert [len(f) for f in frames_of(data)] == [MAX_FRAME_SIZE - 1, MAX_FRAME_SIZE - 1, 5 + 3 + 4]
    events = client_events(data)
    assert [len(e.documents) for e in events if isinstance(e, Winners)] == [744, 744, 2]


def test_winners_frames_split_anywhere_still_reassemble() -> None:
    """Frames of a multi-frame winners answer decode the same when fed in odd-sized pieces."""
    documents = tuple(str(i) for i in range(3000))
    data = encode(Winners(documents))
    proto = welcomed()
    got: list[str] = []
    lasts: list[bool] = []
    for piece in split_at(data, range(0, len(data), 997)):
        proto.receive_data(piece)
        for event in proto.events():
            assert isinstance(event, Winners)
            got.extend(event.documents)
            lasts.append(event.last)
    assert tuple(got) == documents
    assert lasts[-1] is True
    assert not any(lasts[:-1])


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\x01", "too short"),
        (b"\x01\x00\x02" + b"12\x1fab", "digits"),
        (b"\x01\x00\x02" + "12\x1f٣".encode(), "ASCII"),
        (b"\x01\x00\x03" + b"12\x1f34", "announces 3"),
        (b"\x01\x00\x01" + b"12\x1f", "digits"),
        (b"\x01\x00\x01" + b"12345678901", "digits"),
        (b"\x01\x00\x01", "announces 1"),
    ],
)
def test_malformed_winners_frames_are_protocol_errors(body: bytes, reason: str) -> None:
    """A WINNERS frame with a short header, non-digits or a wrong count is refused."""
    with pytest.raises(ProtocolError, match=reason):
        client_events(frame(FrameType.WINNERS, body))


# -- frame types and order ---------------------------------------------------------------------


@pytest.mark.parametrize("ftype", [0x00, 0x0B, 0x7F, 0x80, 0x81, 0x84, 0xFF])
def test_server_refuses_unknown_and_server_frame_types(ftype: int) -> None:
    """A frame type the client may not send is a ProtocolError naming the type."""
    proto = opened()
    proto.receive_data(frame(ftype))
    with pytest.raises(ProtocolError, match=f"0x{ftype:02x}"):
        proto.next_event(TODAY)


@pytest.mark.parametrize("ftype", [0x00, 0x01, 0x03, 0x05, 0x7F, 0x80, 0x8B, 0xFF])
def test_client_refuses_unknown_and_client_frame_types(ftype: int) -> None:
    """A frame type the server may not send is a ProtocolError naming the type."""
    with pytest.raises(ProtocolError, match=f"0x{ftype:02x}"):
        client_events(frame(ftype))


def test_unknown_type_is_refused_from_the_header_alone() -> None:
    """An unknown frame type is refused as soon as the header is in, before its body."""
    proto = opened()
    proto.receive_data(HEADER.pack(100, 0x42))
    with pytest.raises(ProtocolError, match="0x42"):
        proto.next_event(TODAY)


@pytest.mark.parametrize(
    ("before", "message", "name", "state"),
    [
        ([], Batch(1, [rec()]), "BATCH", "handshake"),
        ([], SingleBet(1, rec()), "BET", "handshake"),
        ([], Done(), "DONE", "handshake"),
        ([], WinnersQuery(), "WINNERS_QUERY", "handshake"),
        ([Hello(AGENCY)], Hello(AGENCY), "HELLO", "open"),
        ([Hello(AGENCY), Done()], Batch(1, [rec()]), "BATCH", "done"),
        ([Hello(AGENCY), Done()], SingleBet(1, rec()), "BET", "done"),
        ([Hello(AGENCY), Done()], Hello(AGENCY), "HELLO", "done"),
    ],
)
def test_frames_out_of_order_are_refused_by_name(
    before: list[Message], message: Message, name: str, state: str
) -> None:
    """A frame the state does not allow raises a ProtocolError naming frame and state."""
    proto = ServerProtocol()
    assert server_events(proto, b"".join(encode(m) for m in before)) == before
    proto.receive_data(encode(message))
    # The server maps "not allowed" to ErrorCode.OUT_OF_ORDER: keep that wording.
    with pytest.raises(ProtocolError, match=f"^{name} is not allowed in state {state}$"):
        proto.next_event(TODAY)
    assert proto.state.value == state


def test_done_twice_and_winners_queries_after_done_are_fine() -> None:
    """After DONE the agency may repeat DONE and ask for winners as often as it likes."""
    proto = opened()
    messages: list[Message] = [Done(), WinnersQuery(), Done(), WinnersQuery(), WinnersQuery()]
    assert server_events(proto, b"".join(encode(m) for m in messages)) == messages
    assert proto.state is ServerState.DONE


def test_winners_query_before_done_keeps_the_connection_open() -> None:
    """A WINNERS_QUERY while open leaves the agency free to keep sending bets."""
    proto = opened()
    messages: list[Message] = [WinnersQuery(), Batch(1, [rec()]), Done()]
    assert server_events(proto, b"".join(encode(m) for m in messages)) == messages


def test_the_transition_table_covers_every_state() -> None:
    """Each state has a row in the transition table, and only client frames appear in it."""
    table = protocol._SERVER_TRANSITIONS
    assert set(table) == set(ServerState)
    for row in table.values():
        assert all(ftype < 0x80 for ftype in row)


# -- the sending side -----------------------------------------------------------------------------

#: The codes after which, per docs/PROTOCOL.md section 7, the connection stays open.
STAYS_OPEN = {
    ErrorCode.INVALID_BET,
    ErrorCode.STORAGE,
    ErrorCode.BAD_SEQUENCE,
    ErrorCode.BAD_COMMITMENT,
}


def admitting() -> ServerProtocol:
    """A server protocol that has read a HELLO and not answered it yet."""
    proto = ServerProtocol()
    proto.receive_data(encode(Hello(AGENCY)))
    assert proto.next_event(TODAY) == Hello(AGENCY)
    assert proto.state is ServerState.ADMITTING
    return proto


def test_sending_welcome_after_hello_opens_the_connection() -> None:
    """WELCOME, sent in answer to HELLO, opens the connection and is written as encode writes it."""
    proto = admitting()
    assert proto.send(Welcome(4, 100)) == encode(Welcome(4, 100))
    assert proto.state is ServerState.OPEN
    assert not proto.close_expected()
    assert server_events(proto, encode(Batch(5, [rec()]))) == [Batch(5, [rec()])]


def test_challenge_then_auth_then_welcome_opens_the_connection() -> None:
    """CHALLENGE waits for AUTH, AUTH waits for the server's answer, and WELCOME then opens."""
    proto = admitting()
    nonce = bytes(range(32))
    assert proto.send(Challenge(nonce)) == encode(Challenge(nonce))
    assert proto.state is ServerState.CHALLENGED
    proto.receive_data(encode(Auth(bytes(32))))
    assert proto.next_event(TODAY) == Auth(bytes(32))
    assert proto.state is ServerState.ADMITTING
    proto.send(Welcome(0, 0))
    assert proto.state is ServerState.OPEN
    assert not proto.close_expected()


@pytest.mark.parametrize("message", [Welcome(0, 0), Challenge(bytes(32))], ids=repr)
@pytest.mark.parametrize("make", [ServerProtocol, opened], ids=["handshake", "open"])
def test_a_handshake_answer_nobody_asked_for_raises_runtime_error(
    message: Message, make: Callable[[], ServerProtocol]
) -> None:
    """WELCOME or CHALLENGE outside admitting (say, in open) is the server's bug: RuntimeError."""
    proto = make()
    before = proto.state
    with pytest.raises(RuntimeError, match=f"in state {before.value}"):
        proto.send(message)
    assert proto.state is before


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: c.name)
@pytest.mark.parametrize("make", [ServerProtocol, admitting, opened], ids=lambda f: f.__name__)
def test_every_error_closes_the_connection_but_the_three_recoverable_ones(
    code: ErrorCode, make: Callable[[], ServerProtocol]
) -> None:
    """An ERROR closes the connection unless INVALID_BET, STORAGE, BAD_SEQUENCE, BAD_COMMITMENT."""
    proto = make()
    before = proto.state
    assert proto.send(Error(code, "why")) == encode(Error(code, "why"))
    closes = code not in STAYS_OPEN
    assert closes_connection(Error(code, "why")) is closes
    assert proto.close_expected() is closes
    assert proto.state is (ServerState.CLOSED if closes else before)
    proto.receive_data(encode(StatusQuery()))
    assert proto.next_event(TODAY) == (None if closes else StatusQuery())
    if closes:
        with pytest.raises(RuntimeError, match="closed"):
            proto.send(Ack(1))


def test_replies_that_are_not_errors_keep_the_connection_open() -> None:
    """ACK, WINNERS, NOT_READY and STATUS never close the connection, and an unknown code does."""
    proto = opened()
    for reply in (Ack(1), Winners(("1",)), NotReady(), protocol.Status("{}")):
        assert proto.send(reply) == encode(reply)
        assert not proto.close_expected()
    proto.send(Error(65535, "a code from the future"))
    assert proto.close_expected()


@pytest.mark.parametrize(
    ("message", "name"),
    [
        (Hello(AGENCY), "HELLO"),
        (SingleBet(1, rec()), "BET"),
        (Batch(1, [rec()]), "BATCH"),
        (Done(), "DONE"),
        (WinnersQuery(), "WINNERS_QUERY"),
        (Auth(bytes(32)), "AUTH"),
    ],
    ids=lambda m: m if isinstance(m, str) else "",
)
def test_nothing_but_status_query_is_read_while_admitting(message: Message, name: str) -> None:
    """Before the server answers a HELLO, STATUS_QUERY is read and anything else is out of order."""
    proto = admitting()
    assert server_events(proto, encode(StatusQuery())) == [StatusQuery()]
    assert proto.state is ServerState.ADMITTING
    proto.receive_data(encode(message))
    with pytest.raises(OutOfOrder, match=f"^{name} is not allowed in state admitting$"):
        proto.next_event(TODAY)


def test_a_rejected_batch_leaves_the_connection_open() -> None:
    """Answering a RejectedBatch with its INVALID_BET error keeps the connection open for more."""
    proto = opened()
    proto.receive_data(encode(Batch(1, [rec(), rec(document="x")])) + encode(Batch(1, [rec()])))
    event = rejected(proto)
    assert (event.seq, event.count, event.index) == (1, 2, 1)
    assert event.reason.startswith("document: ")
    assert proto.send(event.error()) == encode(
        Error(ErrorCode.INVALID_BET, f"bet 1: {event.reason}")
    )
    assert not proto.close_expected()
    assert proto.state is ServerState.OPEN
    assert proto.next_event(TODAY) == Batch(1, [rec()])


# -- bodies that break the rules -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (frame(FrameType.DONE, b"x"), "DONE takes no body"),
        (frame(FrameType.WINNERS_QUERY, b"\x00"), "WINNERS_QUERY takes no body"),
        (frame(FrameType.BET, b"\x00\x00"), "too short"),
        (frame(FrameType.BATCH, b"\x00\x00\x00\x01\x00\x01\x00"), "too short"),
        (batch_frame(1, 0, b""), "no bets"),
        (batch_frame(0, 1, raw_record(rec())), "sequence 0"),
        (frame(FrameType.BET, struct.pack("!IQ", 0, 0) + raw_record(rec())), "sequence 0"),
        (batch_frame(1, 1, b""), "0x1E"),
        (batch_frame(1, 3, raw_record(rec()) * 2), "announces 3 bets but holds 2"),
        (batch_frame(1, 1, raw_record(rec()) * 2), "announces 1 bets but holds 2"),
        (batch_frame(1, 1, raw_record(rec())[:-1]), "0x1E"),
        (batch_frame(1, 1, b"\xff\xfe" + raw_record(rec())), "not valid UTF-8"),
        (batch_frame(1, 1, raw_record(rec()).replace(b"Lorca", b"Lorc\xe9")), "not valid UTF-8"),
        (
            batch_frame(
                1, 1, raw_record(rec(first_name="\u00e9")).replace(b"\xc3\xa9", b"\xed\xb3\xa9")
            ),
            "not valid UTF-8",
        ),
        (
            frame(FrameType.BET, struct.pack("!IQ", 1, 0) + raw_record(rec()) * 2),
            "exactly one bet, got 2",
        ),
    ],
)
def test_malformed_bodies_are_protocol_errors(data: bytes, reason: str) -> None:
    """Bad bodies (wrong counts, empty batch, sequence 0, non-UTF-8, no separators) are refused."""
    proto = opened()
    proto.receive_data(data)
    with pytest.raises(ProtocolError, match=reason) as info:
        proto.next_event(TODAY)
    assert info.value.code is ErrorCode.BAD_FRAME  # a broken stream, not a refused bet


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (frame(FrameType.HELLO, b"\x01\x00\x00\x00"), "HELLO body must be 5 bytes, got 4"),
        (frame(FrameType.HELLO, b"\x01\x00\x00\x00\x01\x00"), "HELLO body must be 5 bytes"),
    ],
)
def test_a_hello_of_the_wrong_size_is_refused(data: bytes, reason: str) -> None:
    """A HELLO body that is not exactly version + agency is a ProtocolError."""
    proto = ServerProtocol()
    proto.receive_data(data)
    with pytest.raises(ProtocolError, match=reason):
        proto.next_event(TODAY)
    assert proto.state is ServerState.HANDSHAKE


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (frame(FrameType.ACK, b"\x00\x00\x01"), "ACK body must be 4 bytes"),
        (frame(FrameType.WELCOME, b"\x00" * 11), "WELCOME body must be 63 bytes"),
        (frame(FrameType.WELCOME, b"\x00" * 62 + b"\x02r"), "WELCOME body must be 63 bytes"),
        (frame(FrameType.WELCOME, b"\x00" * 63), "WELCOME date .* is not YYYY-MM-DD"),
        (frame(FrameType.NOT_READY, b"\x00"), "NOT_READY body too short"),
        (
            frame(FrameType.NOT_READY, b"\x00\x00\x00\x02\x00\x02\x00\x00\x00\x03"),
            "NOT_READY announces 2",
        ),
        (frame(FrameType.ERROR, b"\x00"), "ERROR body too short"),
    ],
)
def test_malformed_server_frames_are_protocol_errors(data: bytes, reason: str) -> None:
    """Server frames with bodies of the wrong size are refused by the client."""
    with pytest.raises(ProtocolError, match=reason):
        client_events(data)


def test_error_messages_that_are_not_utf8_are_decoded_with_replacement() -> None:
    """An ERROR whose text is not UTF-8 still decodes: the code matters, not the text."""
    (error,) = client_events(frame(FrameType.ERROR, b"\x00\x04disk \xff full"))
    assert error == Error(4, "disk \ufffd full")


# -- invalid bets ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (rec(first_name=""), "first_name"),
        (rec(last_name="x" * 101), "last_name"),
        (rec(document="12a"), "document"),
        (rec(document="12345678901"), "document"),
        (rec(birthdate="1999-02-30"), "birthdate"),
        (rec(birthdate="2999-01-01"), "birthdate"),
        (rec(birthdate="1999/02/03"), "birthdate"),
        (rec(number="10000"), "number"),
        (rec(number="-1"), "number"),
        (("a", "b", "1"), "row"),
        ((*rec(), "extra"), "row"),
    ],
)
def test_a_batch_with_one_invalid_bet_names_index_field_and_count(
    bad: Sequence[str], field: str
) -> None:
    """One bad bet refuses the batch with index, field and announced count; the next frame works."""
    records = raw_record(rec("1")) + raw_record(bad) + raw_record(rec("3"))
    proto = opened()
    proto.receive_data(batch_frame(7, 3, records) + encode(Batch(7, [rec("4")])))
    event = rejected(proto)
    assert (event.seq, event.index, event.count) == (7, 1, 3)
    assert event.reason.startswith(f"{field}: ")
    error = event.error()
    assert error.code == ErrorCode.INVALID_BET
    assert error.message == f"bet 1: {event.reason}"
    assert proto.next_event(TODAY) == Batch(7, [rec("4")])
    assert proto.state is ServerState.OPEN


def test_invalid_batch_count_is_the_announced_one() -> None:
    """The count a RejectedBatch carries is the header's, even if the records disagree."""
    proto = opened()
    proto.receive_data(batch_frame(1, 9, raw_record(rec(document="x"))))
    event = rejected(proto)
    assert (event.index, event.count) == (0, 9)


def test_an_invalid_single_bet_counts_one() -> None:
    """A BET frame holding an invalid bet yields a RejectedBatch with index 0 and count 1."""
    proto = opened()
    body = struct.pack("!IQ", 5, 0) + raw_record(rec(number="12345"))
    proto.receive_data(frame(FrameType.BET, body) + encode(Done()))
    event = rejected(proto)
    assert (event.seq, event.index, event.count) == (5, 0, 1)
    assert event.reason.startswith("number: ")
    assert proto.next_event(TODAY) == Done()


def test_the_first_of_several_bad_birthdates_is_reported() -> None:
    """With several well-formed but impossible birthdates, the lowest index is reported."""
    bets = [rec("0"), rec("1", birthdate="2001-02-29"), rec("2"), rec("3", birthdate="2999-01-01")]
    for order in (bets, [bets[0], bets[3], bets[2], bets[1]]):
        for _ in range(20):  # set iteration order must not matter
            proto = opened()
            proto.receive_data(batch_frame(1, 4, b"".join(map(raw_record, order))))
            event = rejected(proto)
            assert event.index == 1
            assert event.reason.startswith("birthdate: ")


def test_the_first_bad_bet_wins_over_a_later_one_of_another_kind() -> None:
    """A bad document at index 2 and a bad date at index 1 report index 1."""
    order = [rec("0"), rec("1", birthdate="2001-02-29"), rec("x"), rec("3")]
    proto = opened()
    proto.receive_data(batch_frame(1, 4, b"".join(map(raw_record, order))))
    event = rejected(proto)
    assert event.index == 1
    assert event.reason.startswith("birthdate: ")


def test_birthdate_today_is_accepted_and_tomorrow_refused() -> None:
    """A bet born on the server's today is valid; one born tomorrow is refused."""
    tomorrow = (datetime.date.fromisoformat(TODAY) + datetime.timedelta(days=1)).isoformat()
    proto = opened()
    assert server_events(proto, encode(Batch(1, [rec(birthdate=TODAY)]))) == [
        Batch(1, [rec(birthdate=TODAY)])
    ]
    proto.receive_data(encode(Batch(2, [rec(birthdate=tomorrow)])))
    assert "in the future" in rejected(proto).reason


@pytest.mark.parametrize("separator", ["\x1f", "\x1e", "\n", "\x00", "\x85"])
def test_control_characters_in_a_name_cannot_smuggle_framing(separator: str) -> None:
    """A name holding a separator or other control character is refused, never misparsed."""
    name = f"Ana{separator}Maria"
    proto = opened()
    proto.receive_data(batch_frame(1, 1, raw_record(rec(first_name=name))))
    with contextlib.suppress(ProtocolError):  # a broken stream is a refusal too
        assert isinstance(proto.next_event(TODAY), RejectedBatch)


# -- end of stream -----------------------------------------------------------------------------


@pytest.mark.parametrize("cut", [1, 4, 5, 6])
def test_eof_in_the_middle_of_a_frame_is_an_error(cut: int) -> None:
    """The stream ending inside a header or a body raises ProtocolError on EOF."""
    data = encode(Hello(AGENCY)) + encode(Batch(1, [rec()]))
    proto = ServerProtocol()
    events = server_events(proto, data[: len(encode(Hello(AGENCY))) + cut])
    assert events == [Hello(AGENCY)]
    with pytest.raises(ProtocolError, match="middle of a frame"):
        proto.receive_eof()
    client = ClientProtocol()
    client.receive_data(encode(Ack(1))[:cut])
    assert client.next_event() is None
    with pytest.raises(ProtocolError, match="middle of a frame"):
        client.receive_eof()


def test_eof_between_frames_is_clean() -> None:
    """The stream ending right after a whole frame (or before any) is a clean close."""
    ServerProtocol().receive_eof()
    ClientProtocol().receive_eof()
    proto = ServerProtocol()
    server_events(proto, encode(Hello(AGENCY)) + encode(Batch(1, [rec()])) + encode(Done()))
    proto.receive_eof()
    client = welcomed()
    client_events(encode(Ack(1)) + encode(Ack(2)), client)
    client.receive_eof()


# -- fuzzing -----------------------------------------------------------------------------------


def run_server(chunks: Sequence[bytes]) -> list[Message]:
    """Drive a ServerProtocol like the server does; only ProtocolError may escape the decoder."""
    proto = ServerProtocol()
    events: list[Message] = []
    for chunk in chunks:
        proto.receive_data(chunk)
        while True:
            try:
                event = proto.next_event(TODAY)
            except ProtocolError as exc:
                proto.send(Error(exc.code, str(exc)))  # the server answers, then closes
                assert proto.close_expected()
                return events
            if event is None:
                break
            if isinstance(event, RejectedBatch):
                assert event.count >= 1
                assert event.index >= 0
                proto.send(event.error())  # the frame was well formed: the connection carries on
                assert not proto.close_expected()
                continue
            assert isinstance(event, SERVER_MESSAGES)
            events.append(event)
            if isinstance(event, Hello):
                proto.send(Welcome(0, 0))
    with contextlib.suppress(ProtocolError):
        proto.receive_eof()
    return events


def run_client(chunks: Sequence[bytes]) -> list[Message]:
    """Drive a ClientProtocol past its handshake over ``chunks``; only ProtocolError may escape."""
    proto = welcomed()
    events: list[Message] = []
    try:
        for chunk in chunks:
            proto.receive_data(chunk)
            for event in proto.events():
                assert isinstance(event, CLIENT_MESSAGES)
                events.append(event)
        proto.receive_eof()
    except ProtocolError:
        pass
    return events


cuts = st.lists(st.integers(min_value=0), max_size=12)
_record_alphabet = st.sampled_from(
    ["\x1f", "\x1e", "A", "ñ", "0", "9", "-", ",", '"', "\x00", "\udce9", "\U0001f600"]
)
record_like_bodies = st.text(_record_alphabet, max_size=200).map(
    lambda t: t.encode("utf-8", "surrogatepass")
)
any_frame_type = st.one_of(st.sampled_from(list(FrameType)), st.integers(0, 255))
bodies = st.one_of(st.binary(max_size=300), record_like_bodies)


@st.composite
def random_frames(draw: st.DrawFn) -> bytes:
    """Frames with honest headers and random types and bodies."""
    out = []
    for ftype, body in draw(st.lists(st.tuples(any_frame_type, bodies), max_size=6)):
        if ftype in (FrameType.BATCH, FrameType.BET) and draw(st.booleans()):
            count = draw(st.integers(0, 3))
            head = (
                struct.pack("!IHQ", 1, count, 0)
                if ftype == FrameType.BATCH
                else struct.pack("!IQ", 1, 0)
            )
            body = head + body
        out.append(frame(ftype, body))
    return b"".join(out)


valid_client_streams = st.lists(
    st.one_of(
        st.builds(
            Batch, st.integers(0, 2**32 - 1), st.lists(valid_records, min_size=1, max_size=3)
        ),
        st.builds(SingleBet, st.integers(0, 2**32 - 1), valid_records),
        st.just(WinnersQuery()),
        st.just(Done()),
    ),
    max_size=5,
).map(lambda ms: encode(Hello(AGENCY)) + b"".join(encode(m) for m in ms))

valid_server_streams = st.lists(
    st.one_of(
        st.builds(Welcome, st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1)),
        st.builds(Ack, st.integers(0, 2**32 - 1)),
        st.builds(Error, st.integers(0, 2**16 - 1), st.text(max_size=50)),
        st.builds(
            Winners,
            st.lists(st.text("0123456789", min_size=1, max_size=10), max_size=30).map(tuple),
        ),
        st.just(NotReady()),
    ),
    max_size=6,
).map(lambda ms: b"".join(encode(m) for m in ms))


@st.composite
def mutated(draw: st.DrawFn, streams: st.SearchStrategy[bytes]) -> bytes:
    """A valid stream with a few bytes flipped, inserted, deleted, or the tail cut off."""
    data = bytearray(draw(streams))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, len(data)))
        if op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif data and pos < len(data):
            if op == "flip":
                data[pos] = draw(st.integers(0, 255))
            elif op == "delete":
                del data[pos]
            else:
                del data[pos:]
    return bytes(data)


client_bytes = st.one_of(
    st.binary(max_size=500),
    st.binary(max_size=500).map(lambda b: encode(Hello(AGENCY)) + b),
    random_frames(),
    random_frames().map(lambda b: encode(Hello(AGENCY)) + b),
    mutated(valid_client_streams),
)
server_bytes = st.one_of(st.binary(max_size=500), random_frames(), mutated(valid_server_streams))


@FUZZ
@given(data=client_bytes, where=cuts)
def test_server_decoder_only_ever_raises_protocol_errors(data: bytes, where: list[int]) -> None:
    """Any bytes, cut anywhere, yield client messages or ProtocolError, never another exception."""
    run_server(split_at(data, where))


@FUZZ
@given(data=server_bytes, where=cuts)
def test_client_decoder_only_ever_raises_protocol_errors(data: bytes, where: list[int]) -> None:
    """Any bytes, cut anywhere, yield server messages or ProtocolError, never another exception."""
    run_client(split_at(data, where))


@FUZZ
@given(data=valid_client_streams, where=cuts)
def test_valid_client_streams_decode_the_same_however_they_are_cut(
    data: bytes, where: list[int]
) -> None:
    """How a valid stream is split across reads never changes the messages decoded."""
    assert run_server(split_at(data, where)) == run_server([data])


@FUZZ
@given(data=valid_server_streams, where=cuts)
def test_valid_server_streams_decode_the_same_however_they_are_cut(
    data: bytes, where: list[int]
) -> None:
    """How a valid reply stream is split across reads never changes the replies decoded."""
    assert run_client(split_at(data, where)) == run_client([data])


# -- docs/PROTOCOL.md stays exact ------------------------------------------------------------

_EXAMPLE = re.compile(r"`(encode\([^`\n]+\))`, (\d+) bytes:\n\n```text\n([\s\S]*?)```")
_HEX_RUN = re.compile(r"^((?:[0-9a-f]{2} ?)+?)(?:\s{2,}|\s*$)")


def _doc_examples() -> list[tuple[str, int, bytes]]:
    """Each example's expression, stated size and bytes, read back from docs/PROTOCOL.md."""
    text = DOCS.read_text(encoding="utf-8")
    examples = []
    for expression, size, block in _EXAMPLE.findall(text):
        hex_digits = []
        for line in block.splitlines():
            match = _HEX_RUN.match(line)
            assert match, f"not a hex dump line in the {expression} example: {line!r}"
            hex_digits.append(match.group(1).replace(" ", ""))
        examples.append((expression, int(size), bytes.fromhex("".join(hex_digits))))
    return examples


def test_every_hex_example_in_the_protocol_doc_is_what_encode_writes() -> None:
    """Each ``encode(...)`` example in docs/PROTOCOL.md matches the bytes encode() returns."""
    examples = _doc_examples()
    names = {name: getattr(protocol, name) for name in protocol.__all__}
    names.update(bytes=bytes, range=range)  # for byte-string examples (nonces)
    kinds = set()
    for expression, size, expected in examples:
        assert eval(expression, {"__builtins__": {}}, names) == expected, expression
        assert len(expected) == size, expression
        kinds.add(expression.split("(")[1])
    assert kinds == {m.__name__ for m in SERVER_MESSAGES + CLIENT_MESSAGES}


def test_the_protocol_doc_lists_every_error_code_and_transition() -> None:
    """docs/PROTOCOL.md has a row per ErrorCode, per state transition, and the closing rule."""
    text = DOCS.read_text(encoding="utf-8")
    for code in ErrorCode:
        row = re.search(rf"^\| {code.value} \| `{code.name}` \|.*\| ([^|]*) \|$", text, re.M)
        assert row, code
        closes = closes_connection(Error(code, ""))
        assert ("the server closes the connection" in row.group(1)) is closes, code
        assert ("the connection stays open" in row.group(1)) is not closes, code
    for state, moves in protocol._SERVER_TRANSITIONS.items():
        for ftype, after in moves.items():
            line = rf"^\| {state.value} \| receives `{FrameType(ftype).name}` \| {after.value} \|"
            assert re.search(line, text, re.M), line
    for kind, sends in protocol._SEND_TRANSITIONS.items():
        for state, after in sends.items():
            name = FrameType[kind.__name__.upper()].name
            line = rf"^\| {state.value} \| sends `{name}` \| {after.value} \|"
            assert re.search(line, text, re.M), line
    closing = re.search(
        r"^\| any but closed \| sends `ERROR`, except (.*) \| closed \|", text, re.M
    )
    assert closing, "the closing rule's row"
    assert set(re.findall(r"`([A-Z_]+)`", closing.group(1))) == {
        code.name for code in protocol.RECOVERABLE_ERRORS
    }


# -- cutting records into batches ---------------------------------------------------------------


def _records(sizes: Sequence[int]) -> list[bytes]:
    """Records of the given total sizes (each ends with 0x1E), distinguishable by content."""
    return [(f"{i:x}".rjust(size - 1, "a")).encode() + b"\x1e" for i, size in enumerate(sizes)]


def _cut(cutter: protocol.BatchCutter, pieces: Sequence[bytes]) -> list[tuple[bytes, int]]:
    batches = [b for piece in pieces for b in cutter.feed(piece)]
    last = cutter.flush()
    return batches + ([last] if last else [])


def test_batches_are_cut_at_max_amount() -> None:
    """With small records the count limit cuts: full batches, then one short last batch."""
    records = _records([10] * 10)
    batches = _cut(protocol.BatchCutter(3), [b"".join(records)])
    assert [count for _, count in batches] == [3, 3, 3, 1]
    assert b"".join(data for data, _ in batches) == b"".join(records)


def test_batches_are_cut_before_the_frame_limit() -> None:
    """With big records the 8 KiB limit cuts first: no frame ever passes MAX_FRAME_SIZE."""
    records = _records([1000] * 20)
    batches = _cut(protocol.BatchCutter(200), [b"".join(records)])
    assert [count for _, count in batches] == [8, 8, 4]
    for seq, (data, count) in enumerate(batches, 1):
        assert len(protocol.encode_batch_data(seq, data, count)) <= MAX_FRAME_SIZE


@FUZZ
@given(
    sizes=st.lists(st.integers(2, 900), min_size=1, max_size=60),
    max_amount=st.integers(1, 30),
    cuts=st.lists(st.integers(0, 60_000), max_size=6),
)
def test_cutting_is_greedy_and_loses_nothing(
    sizes: list[int], max_amount: int, cuts: list[int]
) -> None:
    """However records arrive, batches keep each record once, in order, each as full as allowed."""
    records = _records(sizes)
    data = b"".join(records)
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    # Feed whole records only, split at record boundaries near the random cuts.
    ends = sorted({data.find(b"\x1e", b) + 1 for b in bounds[1:-1]} - {0} | {len(data)})
    pieces = [data[a:b] for a, b in itertools.pairwise([0, *ends])]
    batches = _cut(protocol.BatchCutter(max_amount, max_frame=2048), pieces)
    assert b"".join(d for d, _ in batches) == data
    assert sum(c for _, c in batches) == len(records)
    taken = 0
    for i, (batch, count) in enumerate(batches):
        assert count <= max_amount
        assert len(batch) + protocol.BATCH_OVERHEAD <= 2048
        taken += count
        if i < len(batches) - 1:  # not the last: the next record did not fit, or it was full
            nxt = len(records[taken])
            assert count == max_amount or len(batch) + nxt + protocol.BATCH_OVERHEAD > 2048


def test_skip_records_drops_whole_records_from_the_start() -> None:
    """skip_records drops at most what is there, and says how many it dropped."""
    data = b"".join(_records([5, 6, 7]))
    assert protocol.skip_records(data, 2) == (data[11:], 2)
    assert protocol.skip_records(data, 0) == (data, 0)
    assert protocol.skip_records(data, 9) == (b"", 3)


# -- the message classes themselves (written by hand, not dataclasses) ------------


def test_messages_are_values_compared_by_their_fields() -> None:
    assert protocol.Ack(3) == protocol.Ack(3)
    assert protocol.Ack(3) != protocol.Ack(4)
    assert protocol.Ack(3) != protocol.SingleBet(3, "r")  # another type, same first field
    assert protocol.Done() == protocol.Done()
    assert protocol.Done() != protocol.WinnersQuery()
    assert len({protocol.Ack(1), protocol.Ack(1), protocol.Ack(2)}) == 2
    assert repr(protocol.Hello(7, 2)) == "Hello(agency=7, version=2)"


def test_a_message_cannot_be_changed_once_built() -> None:
    ack = protocol.Ack(1)
    with pytest.raises(AttributeError, match="read-only"):
        ack.seq = 2  # type: ignore[misc]
    with pytest.raises(AttributeError, match="read-only"):
        del ack.seq
    assert ack.seq == 1


def test_welcome_equality_leaves_out_the_round_id() -> None:
    one = protocol.Welcome(4, 800, 810, "2026-12-01", round_id="a")
    assert one == protocol.Welcome(4, 800, 810, "2026-12-01", round_id="b")
    assert one != protocol.Welcome(5, 800, 810, "2026-12-01", round_id="a")
    assert protocol.Welcome(0, 0).today == datetime.date.today().isoformat()


def test_messages_match_by_position_and_keyword() -> None:
    match protocol.Batch(2, ("r",), 9):
        case protocol.Batch(seq, records, input_rows=rows):
            assert (seq, records, rows) == (2, ("r",), 9)
        case _:
            pytest.fail("a Batch did not match its own pattern")


def test_messages_survive_copy_and_pickle() -> None:
    import copy
    import pickle

    for message in (
        protocol.Ack(3),
        protocol.Done(),
        protocol.Welcome(4, 800, 810, "2026-12-01", round_id="r"),
        protocol.Batch(2, ("r",), 9),
    ):
        for again in (
            copy.copy(message),
            copy.deepcopy(message),
            pickle.loads(pickle.dumps(message)),
        ):
            assert again == message and type(again) is type(message)
            assert repr(again) == repr(message)  # the round id too, which equality leaves out
