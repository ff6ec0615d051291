"""The wire protocol, sans-I/O: bytes in, messages out, and back.

Nothing here touches a socket or an event loop, so the whole protocol can be
tested and fuzzed with plain bytes. The entry points are:

- `encode(message)` turns any message into the bytes of one or more frames.
- `ServerProtocol` is what the central runs per connection: feed it bytes with
  `receive_data`, pull requests with `next_event` until it returns None, and
  turn each reply into bytes with `send`, which also moves the state and says
  (`close_expected`) when the connection must close. It enforces the order of
  frames (handshake first, no bets after done) in one transition table.
- `ClientProtocol` is the agency's side: it decodes the server's replies.
- `closes_connection(message)` is the closing rule both sides and the fuzzer
  share: every ERROR closes the connection but the few in `RECOVERABLE_ERRORS`.
- `encode_record` (from `models`) turns a bet's five fields into a record.

Frame layout (docs/PROTOCOL.md has every frame byte by byte)::

    +----------------+------+------------------+
    | length: u32 BE | type | body (length B)  |
    +----------------+------+------------------+

A whole frame is at most `MAX_FRAME_SIZE` (8 KiB, as tp0 asks of a batch). The
length is checked as soon as the 5-byte header is in, so a peer announcing a
huge frame is refused before a single byte of its body is buffered.

Bets travel as records: the five agency-file fields, UTF-8, separated by
0x1F (unit separator) and each record ended by 0x1E (record separator). Those
are control characters, which no valid field may contain, so framing can never
be confused by a name such as ``"O'Hara, Jr."``.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import struct
from collections.abc import Iterator, Sequence
from typing import Any

from . import clock
from .bulkmatch import check_records
from .errors import ErrorCode, InvalidBatch, OutOfOrder, ProtocolError
from .models import (
    DIGEST_SIZE,
    EMPTY_DIGEST,
    FS,
    RS,
    Record,
    Records,
    encode_record,
    validate_records,
)

__all__ = [
    "BATCH_OVERHEAD",
    "FS",
    "MAX_FRAME_SIZE",
    "PROTOCOL_VERSION",
    "RECOVERABLE_ERRORS",
    "RS",
    "Ack",
    "Auth",
    "Batch",
    "BatchCutter",
    "Challenge",
    "ClientProtocol",
    "ClientState",
    "ClientStateError",
    "Commit",
    "Done",
    "DrawInfo",
    "DrawQuery",
    "Error",
    "ErrorCode",
    "FrameDecoder",
    "FrameType",
    "Hello",
    "Message",
    "NotReady",
    "Receipt",
    "Record",
    "RejectedBatch",
    "Reveal",
    "RevealWanted",
    "ServerEvent",
    "ServerProtocol",
    "ServerState",
    "SingleBet",
    "Status",
    "StatusQuery",
    "Welcome",
    "Winners",
    "WinnersQuery",
    "auth_mac",
    "closes_connection",
    "encode",
    "encode_batch",
    "encode_batch_data",
    "encode_record",
    "operator_proof",
    "skip_records",
    "validate_records",
]

#: 2: WELCOME says the round's date, the agency's input position and digest;
#: BATCH and BET carry the input position (docs/PROTOCOL.md section 6); and the
#: draw frames DRAW_QUERY, COMMIT, REVEAL, DRAW_INFO, RECEIPT, REVEAL_WANTED with
#: error BAD_COMMITMENT (docs/DRAW.md). Both came in the same version.
PROTOCOL_VERSION = 2
MAX_FRAME_SIZE = 8192

HEADER = struct.Struct("!IB")  # body length, frame type
MAX_BODY_SIZE = MAX_FRAME_SIZE - HEADER.size
_HELLO = struct.Struct("!BI")  # version, agency
_AGENCY = struct.Struct("!I")
NONCE_SIZE = 32
MAC_SIZE = 32  # HMAC-SHA256
OPERATOR_TOKEN_SIZE = 32  # SHA-256, see operator_proof
_OPERATOR_CONTEXT = b"lottery-operator-v1"
_AUTH_CONTEXT = b"lottery-auth-v1"
# last committed sequence, committed bets, input rows, the round's date, agency digest
_WELCOME = struct.Struct(f"!IQQ10s{DIGEST_SIZE}s")  # then the round id: u8 length, ASCII
#: The longest round id a WELCOME carries.
MAX_ROUND_ID = 64
_ROUND_ID_RE = re.compile(rb"[\x21-\x7e]*")
_SEQ = struct.Struct("!I")  # sequence (ack)
_BET = struct.Struct("!IQ")  # sequence, input rows
_BATCH = struct.Struct("!IHQ")  # sequence, bet count, input rows
_DATE_RE = re.compile(rb"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_ERROR = struct.Struct("!H")  # error code, then a UTF-8 message
_WINNERS = struct.Struct("!BH")  # last-frame flag, document count
_NOT_READY = struct.Struct("!IH")  # agencies missing, agencies listed (then each, u32)
#: NOT_READY lists at most this many of the missing agencies (the count is exact).
MAX_LISTED_MISSING = 100
_DRAW_INFO = struct.Struct("!B32s")  # draw mode, server commitment
_RECEIPT = struct.Struct("!Q32s")  # stored bets, their digest
#: DRAW_INFO's mode byte.
DRAW_MODES = ("fixed", "random")
#: Bytes a batch frame spends besides its records.
BATCH_OVERHEAD = HEADER.size + _BATCH.size
MAX_SEQ = 2**32 - 1
MAX_AGENCY = 2**32 - 1
MAX_INPUT_ROWS = 2**64 - 1


_DOCUMENTS_RE = re.compile(f"(?:[0-9]{{1,10}}(?:{FS}[0-9]{{1,10}})*)?")


class FrameType(enum.IntEnum):
    """The type byte of each frame. Client frames are below 0x80."""

    HELLO = 0x01
    BET = 0x02
    BATCH = 0x03
    DONE = 0x04
    WINNERS_QUERY = 0x05
    STATUS_QUERY = 0x06
    AUTH = 0x07
    DRAW_QUERY = 0x08
    COMMIT = 0x09
    REVEAL = 0x0A
    WELCOME = 0x81
    ACK = 0x82
    ERROR = 0x83
    WINNERS = 0x84
    NOT_READY = 0x85
    STATUS = 0x86
    CHALLENGE = 0x87
    DRAW_INFO = 0x88
    RECEIPT = 0x89
    REVEAL_WANTED = 0x8A


# -- messages -----------------------------------------------------------------

#: Sets a field of a message, which refuses ``obj.field = value`` once built.
_set = object.__setattr__


class _Message:
    """What every message has: fields set once, then compared, hashed and shown by name.

    The messages are written out by hand, not as frozen dataclasses: building
    21 of those cost every process about 6 ms at import (each class compiles
    its generated methods on the spot), a tenth of an agency's start-up. A
    message names its fields in ``__slots__`` (and in ``__match_args__``, for
    ``case Ack(seq):``) and sets them in ``__init__`` with `_set`.
    """

    __slots__: tuple[str, ...] = ()
    #: The fields equality and the hash look at; all of them unless a message says.
    _compared: tuple[str, ...] = ()

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self._compared or self.__slots__)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, _Message)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash((type(self), self._values()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only: cannot set {name}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only: cannot delete {name}")

    def __reduce__(self) -> tuple[type[_Message], tuple[object, ...]]:
        # copy and pickle rebuild a message through __init__ (never setattr):
        # every message's __init__ takes its fields in __slots__ order.
        return type(self), tuple(getattr(self, name) for name in self.__slots__)


class Hello(_Message):
    """Client → server, first frame: who is speaking, in which protocol version."""

    __slots__ = __match_args__ = ("agency", "version")
    agency: int
    version: int

    def __init__(self, agency: int, version: int = PROTOCOL_VERSION) -> None:
        _set(self, "agency", agency)
        _set(self, "version", version)


class Welcome(_Message):
    """Server → client, the handshake's answer: how far this agency already got.

    A batch whose sequence is at most ``last_seq`` is already stored. An
    agency restarted mid-file skips the first ``input_rows`` rows of its input
    and checks that the valid ones among them have the agency digest
    ``digest`` (`lottery.models.agency_digest`). Every bet is valid or not as
    of ``today``, the round's date (the default, for tests and fake servers,
    is the local date).
    """

    __slots__ = __match_args__ = (
        "last_seq", "committed_bets", "input_rows", "today", "digest", "round_id",
    )  # fmt: skip
    #: Not ``round_id``: it says which round, not how far the agency got.
    _compared = __slots__[:-1]
    last_seq: int
    committed_bets: int
    input_rows: int
    today: str
    digest: bytes
    #: The round's id, for the agency's log: a rerun against a leftover round shows it.
    round_id: str

    def __init__(
        self,
        last_seq: int,
        committed_bets: int,
        input_rows: int = 0,
        today: str | None = None,
        digest: bytes = EMPTY_DIGEST,
        round_id: str = "",
    ) -> None:
        _set(self, "last_seq", last_seq)
        _set(self, "committed_bets", committed_bets)
        _set(self, "input_rows", input_rows)
        _set(self, "today", clock.today() if today is None else today)
        _set(self, "digest", digest)
        _set(self, "round_id", round_id)


class SingleBet(_Message):
    """Client → server: one bet (tp0 ej5), acknowledged like a batch of one.

    ``input_rows`` is the agency's input position just after this bet.
    """

    __slots__ = __match_args__ = ("seq", "record", "input_rows")
    seq: int
    record: Record
    input_rows: int

    def __init__(self, seq: int, record: Record, input_rows: int = 0) -> None:
        _set(self, "seq", seq)
        _set(self, "record", record)
        _set(self, "input_rows", input_rows)


class Batch(_Message):
    """Client → server: a numbered batch of bets; ``seq`` counts up per agency.

    ``input_rows`` is the agency's input position just after the batch's last
    bet: the rows of its input read so far, rejected ones included.
    """

    __slots__ = __match_args__ = ("seq", "records", "input_rows")
    seq: int
    records: Sequence[Record]
    input_rows: int

    def __init__(self, seq: int, records: Sequence[Record], input_rows: int = 0) -> None:
        _set(self, "seq", seq)
        _set(self, "records", records)
        _set(self, "input_rows", input_rows)


class Done(_Message):
    """Client → server: this agency has sent all its bets."""

    __slots__ = ()


class WinnersQuery(_Message):
    """Client → server: which of my bets won?"""

    __slots__ = ()


class Ack(_Message):
    """Server → client: the batch ``seq`` is durably stored (0 acknowledges DONE)."""

    __slots__ = __match_args__ = ("seq",)
    seq: int

    def __init__(self, seq: int) -> None:
        _set(self, "seq", seq)


class Error(_Message):
    """Server → client: a request was refused, with a code and a plain message."""

    __slots__ = __match_args__ = ("code", "message")
    code: int
    message: str

    def __init__(self, code: int, message: str) -> None:
        _set(self, "code", code)
        _set(self, "message", message)


class Winners(_Message):
    """Server → client: winning documents; long lists span frames until ``last``."""

    __slots__ = __match_args__ = ("documents", "last")
    documents: tuple[str, ...]
    last: bool

    def __init__(self, documents: tuple[str, ...], last: bool = True) -> None:
        _set(self, "documents", documents)
        _set(self, "last", last)


class NotReady(_Message):
    """Server → client: the draw has not happened yet; ask again later.

    It says how many agencies the draw still waits for, and which (the first
    `MAX_LISTED_MISSING` of them), so the agency can tell its operator.
    """

    __slots__ = __match_args__ = ("missing", "agencies")
    missing: int
    agencies: tuple[int, ...]

    def __init__(self, missing: int = 0, agencies: tuple[int, ...] = ()) -> None:
        _set(self, "missing", missing)
        _set(self, "agencies", agencies)


class Challenge(_Message):
    """Server → agency, after HELLO when the server has secrets: prove you know yours."""

    __slots__ = __match_args__ = ("nonce",)
    nonce: bytes  # NONCE_SIZE random bytes, new for every connection

    def __init__(self, nonce: bytes) -> None:
        _set(self, "nonce", nonce)


class Auth(_Message):
    """Agency → server: `auth_mac` of the agency's secret over the challenge."""

    __slots__ = __match_args__ = ("mac",)
    mac: bytes  # MAC_SIZE bytes

    def __init__(self, mac: bytes) -> None:
        _set(self, "mac", mac)


class StatusQuery(_Message):
    """Any peer → server, even before HELLO: how is the round going? (also a ping)

    ``token``: empty, or the operator token (`OPERATOR_TOKEN_SIZE` bytes) that
    lets a peer that is no agency see every agency's progress on a server
    with secrets.
    """

    __slots__ = __match_args__ = ("token",)
    token: bytes

    def __init__(self, token: bytes = b"") -> None:
        _set(self, "token", token)


class Status(_Message):
    """Server → peer: the round's state as JSON text; long texts span frames until ``last``."""

    __slots__ = __match_args__ = ("text", "last")
    text: str
    last: bool

    def __init__(self, text: str, last: bool = True) -> None:
        _set(self, "text", text)
        _set(self, "last", last)


class DrawQuery(_Message):
    """Agency → server, after WELCOME: how is this round drawn? (docs/DRAW.md)"""

    __slots__ = ()


class DrawInfo(_Message):
    """Server → agency: the draw mode and, in random mode, the server's commitment."""

    __slots__ = __match_args__ = ("mode", "commitment")
    mode: str  # "fixed" or "random"
    commitment: bytes  # SHA-256 of the seed; zeros when fixed

    def __init__(self, mode: str, commitment: bytes = bytes(DIGEST_SIZE)) -> None:
        _set(self, "mode", mode)
        _set(self, "commitment", commitment)


class Commit(_Message):
    """Agency → server, before its bets: its commitment to a secret nonce."""

    __slots__ = __match_args__ = ("commitment",)
    commitment: bytes  # DIGEST_SIZE bytes

    def __init__(self, commitment: bytes) -> None:
        _set(self, "commitment", commitment)


class Reveal(_Message):
    """Agency → server, once betting has closed: the nonce it committed to."""

    __slots__ = __match_args__ = ("nonce",)
    nonce: bytes  # NONCE_SIZE bytes

    def __init__(self, nonce: bytes) -> None:
        _set(self, "nonce", nonce)


class RevealWanted(_Message):
    """Server → agency, answering a winners query: betting closed, reveal your nonce."""

    __slots__ = ()


class Receipt(_Message):
    """Server → agency, before its winners: what the server holds of its bets."""

    __slots__ = __match_args__ = ("bets", "digest")
    bets: int
    digest: bytes  # DIGEST_SIZE bytes: SHA-256 of the bets' records, in sequence order

    def __init__(self, bets: int, digest: bytes) -> None:
        _set(self, "bets", bets)
        _set(self, "digest", digest)


class RejectedBatch(_Message):
    """An event, never a frame: a well-formed BATCH or BET held an invalid bet.

    Nothing of it may be stored. The server answers ERROR ``INVALID_BET`` and
    the connection goes on, so the agency can fix the row and send the rest.
    """

    __slots__ = __match_args__ = ("seq", "count", "index", "reason")
    seq: int
    count: int  # the bets the frame announced (1 for a BET)
    index: int  # the first invalid bet's position in the batch
    reason: str  # which field, and what is wrong with it

    def __init__(self, seq: int, count: int, index: int, reason: str) -> None:
        _set(self, "seq", seq)
        _set(self, "count", count)
        _set(self, "index", index)
        _set(self, "reason", reason)

    def error(self) -> Error:
        """The ERROR frame that answers it."""
        return Error(ErrorCode.INVALID_BET, f"bet {self.index}: {self.reason}")


Message = (
    Hello
    | Challenge
    | Auth
    | Welcome
    | SingleBet
    | Batch
    | Done
    | WinnersQuery
    | StatusQuery
    | Ack
    | Error
    | Winners
    | NotReady
    | Status
    | DrawQuery
    | DrawInfo
    | Commit
    | Reveal
    | RevealWanted
    | Receipt
)


# -- encoding -------------------------------------------------------------------


def auth_mac(secret: bytes, agency: int, nonce: bytes) -> bytes:
    """The proof an agency sends in AUTH: HMAC-SHA256 keyed by its secret.

    It covers the agency id and the server's fresh nonce, so it cannot be
    replayed on another connection nor used for another agency, and the
    secret itself never crosses the wire.
    """
    return hmac.new(secret, _AUTH_CONTEXT + _AGENCY.pack(agency) + nonce, hashlib.sha256).digest()


def operator_proof(token: bytes) -> bytes:
    """What STATUS_QUERY carries for the operator: SHA-256 of a context and the token.

    Always 32 bytes whatever the token's length; it is a bearer credential
    (whoever reads it off the wire may replay it), so send it over TLS.
    """
    return hashlib.sha256(_OPERATOR_CONTEXT + token).digest()


def _frame(ftype: FrameType, body: bytes = b"") -> bytes:
    if len(body) > MAX_BODY_SIZE:
        raise ValueError(f"{ftype.name} body of {len(body)} bytes exceeds {MAX_BODY_SIZE}")
    return HEADER.pack(len(body), ftype) + body


def encode_batch(seq: int, records: Sequence[bytes], input_rows: int = 0) -> bytes:
    """The BATCH frame for already-encoded records (see `encode_record`)."""
    return encode_batch_data(seq, b"".join(records), len(records), input_rows)


def encode_batch_data(seq: int, data: bytes, count: int, input_rows: int = 0) -> bytes:
    """The BATCH frame for ``count`` encoded records already joined in ``data``."""
    return _frame(FrameType.BATCH, _BATCH.pack(seq, count, input_rows) + data)


_RS_BYTE = RS.encode()


class BatchCutter:
    """Cuts a stream of encoded records into batches, greedily.

    Feed it runs of whole records (each ended by 0x1E) with `feed`; it returns
    each batch as soon as it is full: at ``max_amount`` bets, or when the next
    record would push the BATCH frame over `MAX_FRAME_SIZE`, whichever comes
    first. So with small bets only the last batch, from `flush`, is short.
    Batches may span fed runs. The cutting works on bytes with ``rfind`` and
    ``count``, in C, not record by record.
    """

    def __init__(self, max_amount: int, max_frame: int = MAX_FRAME_SIZE) -> None:
        if max_amount < 1:
            raise ValueError("max_amount must be at least 1")
        self.max_amount = max_amount
        self.max_bytes = max_frame - BATCH_OVERHEAD  # room for records in one frame
        self._parts: list[bytes] = []
        self._size = 0
        self._count = 0

    def feed(self, data: bytes) -> list[tuple[bytes, int]]:
        """Add records; returns the batches they filled, as (records, count)."""
        batches: list[tuple[bytes, int]] = []
        pos, end = 0, len(data)
        while pos < end:
            # The longest run of whole records from pos that still fits.
            stop = data.rfind(_RS_BYTE, pos, pos + self.max_bytes - self._size) + 1
            if stop <= pos:  # not even one more record fits: this batch is full
                if not self._count:
                    raise ValueError("a record is larger than a whole frame")
                batches.append(self._take())
                continue
            count = data.count(_RS_BYTE, pos, stop)
            wanted = self.max_amount - self._count
            if count > wanted:  # the count limit comes first
                stop = pos
                for _ in range(wanted):
                    stop = data.index(_RS_BYTE, stop) + 1
                count = wanted
            self._parts.append(data[pos:stop])
            self._size += stop - pos
            self._count += count
            pos = stop
            if self._count == self.max_amount:
                batches.append(self._take())
        return batches

    def flush(self) -> tuple[bytes, int] | None:
        """The last, possibly short, batch (None if nothing is left)."""
        return self._take() if self._count else None

    def _take(self) -> tuple[bytes, int]:
        batch = (b"".join(self._parts), self._count)
        self._parts, self._size, self._count = [], 0, 0
        return batch


def skip_records(data: bytes, count: int) -> tuple[bytes, int]:
    """Drop up to ``count`` whole records from the start of ``data``.

    Returns:
        What is left, and how many records were dropped.
    """
    pos = skipped = 0
    while skipped < count and pos < len(data):
        pos = data.index(_RS_BYTE, pos) + 1
        skipped += 1
    return data[pos:], skipped


def _encode_winners(documents: Sequence[str]) -> bytes:
    # A winners list may outgrow one frame; split it so every frame fits.
    frames: list[bytes] = []
    chunk: list[str] = []
    size = _WINNERS.size
    for doc in documents:
        if size + len(doc) + 1 > MAX_BODY_SIZE:
            frames.append(_winners_frame(chunk, last=False))
            chunk, size = [], _WINNERS.size
        chunk.append(doc)
        size += len(doc) + 1
    frames.append(_winners_frame(chunk, last=True))
    return b"".join(frames)


def _encode_status(text: str) -> bytes:
    # Split the UTF-8 bytes, not the text: a frame may end mid-character, the
    # client joins the bytes before decoding.
    data = text.encode()
    room = MAX_BODY_SIZE - 1
    chunks = [data[i : i + room] for i in range(0, len(data), room)] or [b""]
    return b"".join(
        _frame(FrameType.STATUS, bytes([i == len(chunks) - 1]) + chunk)
        for i, chunk in enumerate(chunks)
    )


def _winners_frame(documents: Sequence[str], last: bool) -> bytes:
    body = _WINNERS.pack(int(last), len(documents)) + FS.join(documents).encode()
    return _frame(FrameType.WINNERS, body)


def encode(message: Message) -> bytes:
    """The bytes of ``message`` on the wire (Winners may take several frames)."""
    match message:
        case Hello(agency, version):
            return _frame(FrameType.HELLO, _HELLO.pack(version, agency))
        case Welcome(last_seq, committed, input_rows, today, digest, round_id):
            if not _DATE_RE.fullmatch(today.encode()) or len(digest) != DIGEST_SIZE:
                raise ValueError(f"WELCOME needs an ISO date and a {DIGEST_SIZE}-byte digest")
            name = round_id.encode("ascii")[:MAX_ROUND_ID]
            body = _WELCOME.pack(last_seq, committed, input_rows, today.encode(), digest)
            return _frame(FrameType.WELCOME, body + bytes([len(name)]) + name)
        case SingleBet(seq, record, input_rows):
            body = _BET.pack(seq, input_rows) + (FS.join(record) + RS).encode()
            return _frame(FrameType.BET, body)
        case Batch(seq, records, input_rows):
            records = Records.of(records)
            return encode_batch_data(seq, records.text.encode(), len(records), input_rows)
        case Done():
            return _frame(FrameType.DONE)
        case WinnersQuery():
            return _frame(FrameType.WINNERS_QUERY)
        case Ack(seq):
            return _frame(FrameType.ACK, _SEQ.pack(seq))
        case Error(code, text):
            raw = text.encode()[: MAX_BODY_SIZE - _ERROR.size]
            return _frame(FrameType.ERROR, _ERROR.pack(code) + raw)
        case Winners(documents):
            return _encode_winners(documents)
        case Challenge(nonce):
            return _frame(FrameType.CHALLENGE, nonce)
        case Auth(mac):
            return _frame(FrameType.AUTH, mac)
        case StatusQuery(token):
            return _frame(FrameType.STATUS_QUERY, token)
        case Status(text):
            return _encode_status(text)
        case NotReady(missing, agencies):
            listed = agencies[:MAX_LISTED_MISSING]
            body = _NOT_READY.pack(missing, len(listed))
            return _frame(FrameType.NOT_READY, body + b"".join(_AGENCY.pack(a) for a in listed))
        case DrawQuery():
            return _frame(FrameType.DRAW_QUERY)
        case DrawInfo(mode, commitment):
            return _frame(FrameType.DRAW_INFO, _DRAW_INFO.pack(DRAW_MODES.index(mode), commitment))
        case Commit(commitment):
            return _frame(FrameType.COMMIT, commitment)
        case Reveal(nonce):
            return _frame(FrameType.REVEAL, nonce)
        case RevealWanted():
            return _frame(FrameType.REVEAL_WANTED)
        case Receipt(bets, digest):
            return _frame(FrameType.RECEIPT, _RECEIPT.pack(bets, digest))
    raise TypeError(f"not a protocol message: {message!r}")


# -- decoding -------------------------------------------------------------------


class FrameDecoder:
    """Splits a byte stream into (type, body) frames.

    Call `receive_data` with whatever arrived, then `next_frame` until it
    returns None (it needs more bytes). `receive_eof` says the stream ended.
    """

    def __init__(self, accepted: frozenset[int]) -> None:
        self._accepted = accepted
        self._buffer = bytearray()
        self._pos = 0  # bytes of _buffer already consumed; compacted lazily

    def receive_data(self, data: bytes) -> None:
        if self._pos:
            del self._buffer[: self._pos]
            self._pos = 0
        self._buffer += data

    def receive_eof(self) -> None:
        """Raises ProtocolError if the stream stopped in the middle of a frame."""
        pending = len(self._buffer) - self._pos
        if pending:
            raise ProtocolError(f"connection closed in the middle of a frame ({pending} bytes)")

    def next_frame(self) -> tuple[int, bytes] | None:
        """The next whole frame's type and body, or None if more bytes are needed.

        Raises:
            ProtocolError: oversized length or a frame type not accepted here.
                The stream cannot be resynchronised afterwards.
        """
        buf, pos = self._buffer, self._pos
        if len(buf) - pos < HEADER.size:
            return None
        length, ftype = HEADER.unpack_from(buf, pos)
        if length > MAX_BODY_SIZE:
            raise ProtocolError(
                f"frame announces {length + HEADER.size} bytes, "
                f"over the {MAX_FRAME_SIZE}-byte limit"
            )
        if ftype not in self._accepted:
            raise ProtocolError(f"unexpected frame type 0x{ftype:02x}")
        end = pos + HEADER.size + length
        if len(buf) < end:
            return None
        body = bytes(buf[pos + HEADER.size : end])
        self._pos = end
        if end == len(buf):
            buf.clear()
            self._pos = 0
        return ftype, body


def _decode_records(data: bytes, today: str) -> Records:
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        raise ProtocolError(
            f"records are not valid UTF-8 ({exc.reason} at byte {exc.start})"
        ) from None
    return Records(text, check_records(text, data, today), data)


def _unpack(layout: struct.Struct, body: bytes, name: str) -> tuple[Any, ...]:
    if len(body) != layout.size:
        raise ProtocolError(f"{name} body must be {layout.size} bytes, got {len(body)}")
    return layout.unpack(body)


def _decode_hello(body: bytes) -> Hello:
    version, agency = _unpack(_HELLO, body, "HELLO")
    return Hello(agency, version)


def _check_seq(seq: int) -> None:
    # Sequences start at 1: a 0 would look "already stored" and be acked unstored.
    if seq == 0:
        raise ProtocolError("sequence 0 is not valid; an agency's sequences start at 1")


def _decode_welcome(body: bytes) -> Welcome:
    fixed, name = body[: _WELCOME.size + 1], body[_WELCOME.size + 1 :]
    if len(fixed) != _WELCOME.size + 1 or fixed[-1] != len(name):
        raise ProtocolError(
            f"WELCOME body must be {_WELCOME.size + 1} bytes and the round id it announces, "
            f"got {len(body)}"
        )
    last_seq, committed, input_rows, today, digest = _WELCOME.unpack(fixed[:-1])
    if not _DATE_RE.fullmatch(today):
        raise ProtocolError(f"WELCOME date {today!r} is not YYYY-MM-DD")
    if not _ROUND_ID_RE.fullmatch(name):
        raise ProtocolError(f"WELCOME round id {name!r} is not printable ASCII")
    return Welcome(last_seq, committed, input_rows, today.decode(), digest, name.decode())


def _decode_bet(body: bytes, today: str) -> SingleBet | RejectedBatch:
    if len(body) < _BET.size:
        raise ProtocolError("BET body too short for its sequence and input position")
    seq, input_rows = _BET.unpack_from(body)
    _check_seq(seq)
    bets = body.count(_RS_BYTE, _BET.size)
    if bets != 1:  # checked before validating: a BET of two bets is no bet at all
        raise ProtocolError(f"BET must hold exactly one bet, got {bets}")
    try:
        records = _decode_records(body[_BET.size :], today)
    except InvalidBatch as exc:
        return RejectedBatch(seq, 1, exc.index, str(exc.bet_error))
    if len(records) != 1:
        raise ProtocolError(f"BET must hold exactly one bet, got {len(records)}")
    return SingleBet(seq, records[0], input_rows)


def _decode_batch(body: bytes, today: str) -> Batch | RejectedBatch:
    if len(body) < _BATCH.size:
        raise ProtocolError("BATCH body too short for its header")
    seq, count, input_rows = _BATCH.unpack_from(body)
    _check_seq(seq)
    if count == 0:
        raise ProtocolError("BATCH holds no bets")
    try:
        records = _decode_records(body[_BATCH.size :], today)
    except InvalidBatch as exc:
        return RejectedBatch(seq, count, exc.index, str(exc.bet_error))
    if len(records) != count:
        raise ProtocolError(f"BATCH announces {count} bets but holds {len(records)}")
    return Batch(seq, records, input_rows)


def _decode_not_ready(body: bytes) -> NotReady:
    if len(body) < _NOT_READY.size:
        raise ProtocolError("NOT_READY body too short for its header")
    missing, listed = _NOT_READY.unpack_from(body)
    if len(body) != _NOT_READY.size + listed * _AGENCY.size:
        raise ProtocolError(f"NOT_READY announces {listed} agencies but holds another size")
    agencies = tuple(a for (a,) in _AGENCY.iter_unpack(body[_NOT_READY.size :]))
    return NotReady(missing, agencies)


def _decode_empty(body: bytes, name: str) -> None:
    if body:
        raise ProtocolError(f"{name} takes no body, got {len(body)} bytes")


def _decode_winners(body: bytes) -> Winners:
    if len(body) < _WINNERS.size:
        raise ProtocolError("WINNERS body too short for its header")
    last, count = _WINNERS.unpack_from(body)
    try:
        text = body[_WINNERS.size :].decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("WINNERS documents must be ASCII digits") from None
    if not _DOCUMENTS_RE.fullmatch(text):
        raise ProtocolError("WINNERS documents must be digits separated by 0x1F")
    documents = tuple(text.split(FS)) if text else ()
    if len(documents) != count:
        raise ProtocolError(f"WINNERS announces {count} documents but holds {len(documents)}")
    return Winners(documents, bool(last))


class ServerState(enum.Enum):
    """Where a connection is, seen from the server."""

    HANDSHAKE = "handshake"  # waiting for HELLO
    ADMITTING = "admitting"  # HELLO (or AUTH) read; the server's answer is not sent yet
    CHALLENGED = "challenged"  # CHALLENGE sent; waiting for AUTH
    OPEN = "open"  # WELCOME sent: bets, DONE and queries
    DONE = "done"  # the agency said DONE: queries only
    CLOSED = "closed"  # a closing ERROR was sent: nothing more is read or sent


# Every legal move on receiving, in one table: state -> frame -> next state.
# A frame missing from its state's row is refused as out of order. The moves
# out of ADMITTING are made by what the server *sends* (`_SEND_TRANSITIONS`).
_SERVER_TRANSITIONS: dict[ServerState, dict[int, ServerState]] = {
    ServerState.HANDSHAKE: {
        FrameType.HELLO: ServerState.ADMITTING,
        FrameType.STATUS_QUERY: ServerState.HANDSHAKE,
    },
    ServerState.ADMITTING: {
        FrameType.STATUS_QUERY: ServerState.ADMITTING,
    },
    ServerState.CHALLENGED: {
        FrameType.AUTH: ServerState.ADMITTING,
        FrameType.STATUS_QUERY: ServerState.CHALLENGED,
    },
    ServerState.OPEN: {
        FrameType.BET: ServerState.OPEN,
        FrameType.BATCH: ServerState.OPEN,
        FrameType.DONE: ServerState.DONE,
        FrameType.WINNERS_QUERY: ServerState.OPEN,
        FrameType.STATUS_QUERY: ServerState.OPEN,
        FrameType.DRAW_QUERY: ServerState.OPEN,
        FrameType.COMMIT: ServerState.OPEN,
        FrameType.REVEAL: ServerState.OPEN,
    },
    ServerState.DONE: {
        FrameType.DONE: ServerState.DONE,
        FrameType.WINNERS_QUERY: ServerState.DONE,
        FrameType.STATUS_QUERY: ServerState.DONE,
        FrameType.DRAW_QUERY: ServerState.DONE,
        FrameType.COMMIT: ServerState.DONE,
        FrameType.REVEAL: ServerState.DONE,
    },
    ServerState.CLOSED: {},
}
# Sending these moves the state: a handshake answer (state -> next state).
_SEND_TRANSITIONS: dict[type, dict[ServerState, ServerState]] = {
    Challenge: {ServerState.ADMITTING: ServerState.CHALLENGED},
    Welcome: {ServerState.ADMITTING: ServerState.OPEN},
}
_CLIENT_FRAMES = frozenset(t for t in FrameType if t < 0x80)
_SERVER_FRAMES = frozenset(t for t in FrameType if t >= 0x80)

#: The ERROR codes after which the connection goes on: the request was
#: refused, but the stream is intact and the peer may fix it and go on.
#: Every other ERROR ends the connection once it is sent.
RECOVERABLE_ERRORS = frozenset(
    {ErrorCode.INVALID_BET, ErrorCode.STORAGE, ErrorCode.BAD_SEQUENCE, ErrorCode.BAD_COMMITMENT}
)


def closes_connection(message: Message) -> bool:
    """Whether sending ``message`` ends the connection (the rule both sides rely on)."""
    return isinstance(message, Error) and message.code not in RECOVERABLE_ERRORS


#: What `ServerProtocol.next_event` returns.
ServerEvent = (
    Hello
    | Auth
    | SingleBet
    | Batch
    | RejectedBatch
    | Done
    | WinnersQuery
    | StatusQuery
    | DrawQuery
    | Commit
    | Reveal
)


class ServerProtocol:
    """The central's view of one connection, both ways, with no I/O.

    Receiving: feed bytes with `receive_data` (and `receive_eof` at the end),
    then call `next_event` until it returns None. A `ProtocolError` means the
    stream is broken: `send` the error it names (``exc.code``), then close.

    Sending: `send` turns each reply into bytes and moves the state. After a
    HELLO (or AUTH) the server must answer with WELCOME, CHALLENGE or an ERROR
    before it reads anything but STATUS_QUERY; an ERROR whose code is not in
    `RECOVERABLE_ERRORS` closes the connection, and then `close_expected` is
    True: write what `send` returned, and close.
    """

    def __init__(self) -> None:
        self.state = ServerState.HANDSHAKE
        self._decoder = FrameDecoder(_CLIENT_FRAMES)

    def receive_data(self, data: bytes) -> None:
        if self.state is not ServerState.CLOSED:  # after a closing ERROR, nothing is read
            self._decoder.receive_data(data)

    def receive_eof(self) -> None:
        """The peer closed its side. Raises ProtocolError if it stopped mid-frame."""
        if self.state is not ServerState.CLOSED:
            self._decoder.receive_eof()

    def next_event(self, today: str) -> ServerEvent | None:
        """The next request from the agency, or None when more bytes are needed.

        Args:
            today: the ISO date that counts as today for the birthdate rule
                (the server's, passed in so the protocol reads no clock).

        Raises:
            ProtocolError: the bytes break the protocol or arrive out of order.
        """
        if self.state is ServerState.CLOSED:
            return None
        frame = self._decoder.next_frame()
        if frame is None:
            return None
        ftype, body = frame
        next_state = _SERVER_TRANSITIONS[self.state].get(ftype)
        if next_state is None:
            raise OutOfOrder(f"{FrameType(ftype).name} is not allowed in state {self.state.value}")
        message = self._decode(ftype, body, today)
        self.state = next_state
        return message

    def send(self, message: Message) -> bytes:
        """The bytes of the reply ``message``; moves the state as it says.

        Raises:
            RuntimeError: the server's own code broke the protocol (a reply
                after the connection closed, a WELCOME nobody asked for).
        """
        if self.state is ServerState.CLOSED:
            raise RuntimeError(f"cannot send {type(message).__name__}: the connection is closed")
        moves = _SEND_TRANSITIONS.get(type(message))
        if moves is not None:
            if self.state not in moves:
                raise RuntimeError(
                    f"cannot send {type(message).__name__} in state {self.state.value}"
                )
            self.state = moves[self.state]
        elif closes_connection(message):
            self.state = ServerState.CLOSED
        return encode(message)

    def close_expected(self) -> bool:
        """Whether the connection must close once what `send` returned is written."""
        return self.state is ServerState.CLOSED

    @staticmethod
    def _decode(ftype: int, body: bytes, today: str) -> ServerEvent:
        if ftype == FrameType.BATCH:
            return _decode_batch(body, today)
        if ftype == FrameType.BET:
            return _decode_bet(body, today)
        if ftype == FrameType.HELLO:
            return _decode_hello(body)
        if ftype == FrameType.DONE:
            _decode_empty(body, "DONE")
            return Done()
        if ftype == FrameType.STATUS_QUERY:
            if len(body) not in (0, OPERATOR_TOKEN_SIZE):
                raise ProtocolError(
                    f"STATUS_QUERY body must be empty or {OPERATOR_TOKEN_SIZE} bytes,"
                    f" got {len(body)}"
                )
            return StatusQuery(bytes(body))
        if ftype == FrameType.AUTH:
            if len(body) != MAC_SIZE:
                raise ProtocolError(f"AUTH body must be {MAC_SIZE} bytes, got {len(body)}")
            return Auth(body)
        if ftype == FrameType.DRAW_QUERY:
            _decode_empty(body, "DRAW_QUERY")
            return DrawQuery()
        if ftype == FrameType.COMMIT:
            if len(body) != DIGEST_SIZE:
                raise ProtocolError(f"COMMIT body must be {DIGEST_SIZE} bytes, got {len(body)}")
            return Commit(body)
        if ftype == FrameType.REVEAL:
            if len(body) != NONCE_SIZE:
                raise ProtocolError(f"REVEAL body must be {NONCE_SIZE} bytes, got {len(body)}")
            return Reveal(body)
        _decode_empty(body, "WINNERS_QUERY")
        return WinnersQuery()


class ClientState(enum.Enum):
    """Where a connection is, seen from the agency."""

    IDLE = "idle"  # nothing sent yet
    HANDSHAKE = "handshake"  # HELLO sent; WELCOME or CHALLENGE comes next
    CHALLENGED = "challenged"  # a CHALLENGE came; AUTH goes next
    AUTHENTICATING = "authenticating"  # AUTH sent; WELCOME comes next
    OPEN = "open"  # WELCOME came: bets, DONE and winners queries may go
    DONE = "done"  # DONE sent: no more bets


class ClientStateError(RuntimeError):
    """Our own code tried to send a message the connection's state forbids.

    A bug on this side, unlike `ProtocolError` (the server broke the rules).
    """


# Every legal move of the agency's side, in one table: state -> frame -> next
# state. Both directions share it: client frame types are below 0x80 and the
# server's above, so they never clash. WELCOME and CHALLENGE are legal in IDLE
# for a protocol used only to decode, whose owner wrote the HELLO itself.
_CLIENT_MOVES: dict[ClientState, dict[int, ClientState]] = {
    ClientState.IDLE: {
        FrameType.HELLO: ClientState.HANDSHAKE,
        FrameType.WELCOME: ClientState.OPEN,
        FrameType.CHALLENGE: ClientState.CHALLENGED,
    },
    ClientState.HANDSHAKE: {
        FrameType.WELCOME: ClientState.OPEN,
        FrameType.CHALLENGE: ClientState.CHALLENGED,
    },
    ClientState.CHALLENGED: {
        FrameType.AUTH: ClientState.AUTHENTICATING,
        FrameType.WELCOME: ClientState.OPEN,
    },
    ClientState.AUTHENTICATING: {FrameType.WELCOME: ClientState.OPEN},
    ClientState.OPEN: {
        FrameType.BET: ClientState.OPEN,
        FrameType.BATCH: ClientState.OPEN,
        FrameType.DONE: ClientState.DONE,
        FrameType.WINNERS_QUERY: ClientState.OPEN,
        FrameType.ACK: ClientState.OPEN,
        FrameType.WINNERS: ClientState.OPEN,
        FrameType.NOT_READY: ClientState.OPEN,
        FrameType.DRAW_QUERY: ClientState.OPEN,
        FrameType.DRAW_INFO: ClientState.OPEN,
        FrameType.COMMIT: ClientState.OPEN,
        FrameType.REVEAL: ClientState.OPEN,
        FrameType.REVEAL_WANTED: ClientState.OPEN,
        FrameType.RECEIPT: ClientState.OPEN,
    },
    ClientState.DONE: {
        FrameType.DONE: ClientState.DONE,
        FrameType.WINNERS_QUERY: ClientState.DONE,
        FrameType.ACK: ClientState.DONE,  # batches still in flight, and DONE's own
        FrameType.WINNERS: ClientState.DONE,
        FrameType.NOT_READY: ClientState.DONE,
        FrameType.DRAW_QUERY: ClientState.DONE,
        FrameType.DRAW_INFO: ClientState.DONE,
        FrameType.COMMIT: ClientState.DONE,
        FrameType.REVEAL: ClientState.DONE,
        FrameType.REVEAL_WANTED: ClientState.DONE,
        FrameType.RECEIPT: ClientState.DONE,
    },
}
# A status query (and its answer) is allowed before HELLO, and an ERROR may
# come at any time (a full server refuses before the handshake): no state change.
_CLIENT_TRANSITIONS: dict[ClientState, dict[int, ClientState]] = {
    state: {
        **moves,
        **dict.fromkeys((FrameType.STATUS_QUERY, FrameType.STATUS, FrameType.ERROR), state),
    }
    for state, moves in _CLIENT_MOVES.items()
}
_CLIENT_FRAME_TYPES: dict[type, FrameType] = {
    Hello: FrameType.HELLO,
    Auth: FrameType.AUTH,
    SingleBet: FrameType.BET,
    Batch: FrameType.BATCH,
    Done: FrameType.DONE,
    WinnersQuery: FrameType.WINNERS_QUERY,
    StatusQuery: FrameType.STATUS_QUERY,
    DrawQuery: FrameType.DRAW_QUERY,
    Commit: FrameType.COMMIT,
    Reveal: FrameType.REVEAL,
}


class ClientProtocol:
    """The agency's view of one connection, h11-style.

    `send` turns each outgoing message into bytes for the caller to write, and
    refuses one the state forbids (`ClientStateError`: a bug of ours). Feed the
    server's bytes with `receive_data` (and `receive_eof` at the end), then
    call `next_event` until it returns None; a reply the state forbids (WINNERS
    before WELCOME...) is a `ProtocolError`, as is any malformed frame.
    """

    def __init__(self) -> None:
        self.state = ClientState.IDLE
        self._decoder = FrameDecoder(_SERVER_FRAMES)
        self._status = bytearray()  # STATUS fragments until the last one

    def __repr__(self) -> str:
        return f"<ClientProtocol {self.state.value}>"

    def send(self, message: Message) -> bytes:
        """The bytes of ``message``, once the state allows it; advances the state.

        Raises:
            ClientStateError: the message is not allowed in this state.
            TypeError: ``message`` is not one a client sends.
        """
        ftype = _CLIENT_FRAME_TYPES.get(type(message))
        if ftype is None:
            raise TypeError(f"not a client message: {message!r}")
        self._advance(ftype)
        return encode(message)

    def send_batch(self, seq: int, data: bytes, count: int, input_rows: int = 0) -> bytes:
        """Like ``send(Batch(...))`` for ``count`` records already encoded in ``data``.

        The sender cuts bytes (see `BatchCutter`), so this spares it turning
        them back into records only for `encode` to join them again.

        Raises:
            ClientStateError: a batch is not allowed in this state.
        """
        self._advance(FrameType.BATCH)
        return encode_batch_data(seq, data, count, input_rows)

    def _advance(self, ftype: FrameType) -> None:
        next_state = _CLIENT_TRANSITIONS[self.state].get(ftype)
        if next_state is None:
            raise ClientStateError(f"cannot send {ftype.name} in state {self.state.value}")
        self.state = next_state

    def receive_data(self, data: bytes) -> None:
        self._decoder.receive_data(data)

    def receive_eof(self) -> None:
        self._decoder.receive_eof()

    def next_event(self) -> Message | None:
        """The next reply from the server, or None when more bytes are needed.

        Raises:
            ProtocolError: the server's bytes break the protocol, or the reply
                is not allowed in this state (`OutOfOrder`).
        """
        while (frame := self._decoder.next_frame()) is not None:
            ftype, body = frame
            # Decode first: a malformed frame is reported as such in any state.
            message = self._decode(ftype, body)
            next_state = _CLIENT_TRANSITIONS[self.state].get(ftype)
            if next_state is None:
                raise OutOfOrder(
                    f"{FrameType(ftype).name} is not allowed in state {self.state.value}"
                )
            self.state = next_state
            if message is not None:  # None: a STATUS fragment, the text goes on
                return message
        return None

    def _decode(self, ftype: int, body: bytes) -> Message | None:
        if ftype == FrameType.ACK:
            return Ack(*_unpack(_SEQ, body, "ACK"))
        if ftype == FrameType.WELCOME:
            return _decode_welcome(body)
        if ftype == FrameType.WINNERS:
            return _decode_winners(body)
        if ftype == FrameType.NOT_READY:
            return _decode_not_ready(body)
        if ftype == FrameType.STATUS:
            return self._decode_status(body)
        if ftype == FrameType.DRAW_INFO:
            mode, commitment = _unpack(_DRAW_INFO, body, "DRAW_INFO")
            if mode >= len(DRAW_MODES):
                raise ProtocolError(f"DRAW_INFO mode {mode} unknown")
            return DrawInfo(DRAW_MODES[mode], commitment)
        if ftype == FrameType.RECEIPT:
            bets, digest = _unpack(_RECEIPT, body, "RECEIPT")
            return Receipt(bets, digest)
        if ftype == FrameType.REVEAL_WANTED:
            _decode_empty(body, "REVEAL_WANTED")
            return RevealWanted()
        if ftype == FrameType.CHALLENGE:
            if len(body) != NONCE_SIZE:
                raise ProtocolError(f"CHALLENGE body must be {NONCE_SIZE} bytes, got {len(body)}")
            return Challenge(body)
        if len(body) < _ERROR.size:
            raise ProtocolError("ERROR body too short for its code")
        (code,) = _ERROR.unpack_from(body)
        return Error(code, body[_ERROR.size :].decode(errors="replace"))

    def _decode_status(self, body: bytes) -> Status | None:
        if not body:
            raise ProtocolError("STATUS body too short for its flag")
        self._status += body[1:]
        if not body[0]:
            return None
        data, self._status = bytes(self._status), bytearray()
        try:
            return Status(data.decode())
        except UnicodeDecodeError:
            raise ProtocolError("STATUS text is not valid UTF-8") from None

    def events(self) -> Iterator[Message]:
        """Every whole message buffered so far."""
        while (event := self.next_event()) is not None:
            yield event
