"""`ClientProtocol`'s states: what the agency may send and what the server may answer, when."""

from __future__ import annotations

import pytest

from lottery.errors import OutOfOrder, ProtocolError
from lottery.protocol import (
    Ack,
    Auth,
    Batch,
    Challenge,
    ClientProtocol,
    ClientState,
    ClientStateError,
    Done,
    Error,
    ErrorCode,
    Hello,
    Message,
    NotReady,
    SingleBet,
    Status,
    StatusQuery,
    Welcome,
    Winners,
    WinnersQuery,
    encode,
    encode_batch_data,
)

pytestmark = pytest.mark.timeout(30)

RECORD = ("Santiago Lionel", "Lorca", "30904465", "1999-03-17", "2201")
NONCE = b"n" * 32


def feed(proto: ClientProtocol, *replies: Message) -> list[Message]:
    """Feed the server's ``replies`` to ``proto`` and pull every message out."""
    proto.receive_data(b"".join(encode(reply) for reply in replies))
    return list(proto.events())


def opened() -> ClientProtocol:
    """A protocol that sent HELLO and got its WELCOME."""
    proto = ClientProtocol()
    proto.send(Hello(1))
    assert feed(proto, Welcome(0, 0)) == [Welcome(0, 0)]
    return proto


def test_send_returns_the_encoded_message() -> None:
    """send() gives exactly the bytes encode() would, and HELLO moves to HANDSHAKE."""
    proto = ClientProtocol()
    assert proto.state is ClientState.IDLE
    assert proto.send(Hello(7)) == encode(Hello(7))
    assert proto.state is ClientState.HANDSHAKE


def test_a_whole_round_walks_the_states() -> None:
    """HELLO, WELCOME, bets, DONE and the winners query move through the states in order."""
    proto = opened()
    assert proto.state is ClientState.OPEN
    proto.send(SingleBet(1, RECORD))
    proto.send(Batch(2, [RECORD]))
    assert proto.send_batch(3, b"x\x1e", 1) == encode_batch_data(3, b"x\x1e", 1)
    assert feed(proto, Ack(1), Ack(3)) == [Ack(1), Ack(3)]
    proto.send(Done())
    assert proto.state is ClientState.DONE
    proto.send(WinnersQuery())
    assert feed(proto, Ack(0), NotReady(), Winners(("1",))) == [Ack(0), NotReady(), Winners(("1",))]
    assert proto.state is ClientState.DONE


def test_the_challenge_is_answered_with_auth() -> None:
    """CHALLENGE after HELLO allows one AUTH, and the WELCOME after it opens the connection."""
    proto = ClientProtocol()
    proto.send(Hello(1))
    assert feed(proto, Challenge(NONCE)) == [Challenge(NONCE)]
    assert proto.state is ClientState.CHALLENGED
    proto.send(Auth(b"m" * 32))
    assert proto.state is ClientState.AUTHENTICATING
    with pytest.raises(ClientStateError, match="AUTH"):
        proto.send(Auth(b"m" * 32))
    feed(proto, Welcome(3, 30))
    assert proto.state is ClientState.OPEN


@pytest.mark.parametrize(
    ("message", "state"),
    [
        (SingleBet(1, RECORD), "idle"),
        (Batch(1, [RECORD]), "idle"),
        (Done(), "idle"),
        (WinnersQuery(), "idle"),
        (Auth(b"m" * 32), "idle"),
    ],
    ids=repr,
)
def test_requests_before_the_handshake_are_refused(message: Message, state: str) -> None:
    """Bets, DONE, the winners query or AUTH before any handshake are our own bug."""
    proto = ClientProtocol()
    with pytest.raises(ClientStateError, match=f"in state {state}"):
        proto.send(message)
    assert proto.state is ClientState.IDLE


def test_requests_before_welcome_are_refused() -> None:
    """After HELLO, nothing but a status query may go until the WELCOME comes."""
    proto = ClientProtocol()
    proto.send(Hello(1))
    for message in (Hello(1), SingleBet(1, RECORD), Done(), WinnersQuery()):
        with pytest.raises(ClientStateError):
            proto.send(message)
    with pytest.raises(ClientStateError):
        proto.send_batch(1, b"x\x1e", 1)
    proto.send(StatusQuery())
    assert proto.state is ClientState.HANDSHAKE


def test_no_bets_after_done() -> None:
    """Once DONE is sent, bets are refused but DONE and the winners query may repeat."""
    proto = opened()
    proto.send(Done())
    with pytest.raises(ClientStateError, match="BET in state done"):
        proto.send(SingleBet(1, RECORD))
    with pytest.raises(ClientStateError, match="BATCH"):
        proto.send_batch(1, b"x\x1e", 1)
    proto.send(Done())
    proto.send(WinnersQuery())


def test_server_messages_cannot_be_sent() -> None:
    """A server message handed to send() is a TypeError, not a frame."""
    with pytest.raises(TypeError, match="not a client message"):
        ClientProtocol().send(Ack(1))


@pytest.mark.parametrize("reply", [Ack(1), Winners(("1",)), NotReady()], ids=repr)
@pytest.mark.parametrize("hello", [False, True], ids=["decoder", "hello-sent"])
def test_replies_before_welcome_are_out_of_order(reply: Message, hello: bool) -> None:
    """ACK, WINNERS or NOT_READY before the WELCOME is a ProtocolError (OutOfOrder)."""
    proto = ClientProtocol()
    if hello:
        proto.send(Hello(1))
    with pytest.raises(OutOfOrder, match="not allowed in state"):
        feed(proto, reply)


@pytest.mark.parametrize("reply", [Welcome(1, 1), Challenge(NONCE)], ids=repr)
def test_handshake_replies_after_the_handshake_are_out_of_order(reply: Message) -> None:
    """A second WELCOME, or a CHALLENGE once open, is a ProtocolError."""
    proto = opened()
    with pytest.raises(ProtocolError, match="in state open"):
        feed(proto, reply)


def test_a_challenge_in_answer_to_auth_is_out_of_order() -> None:
    """Only WELCOME (or an error) may answer AUTH."""
    proto = ClientProtocol()
    proto.send(Hello(1))
    feed(proto, Challenge(NONCE))
    proto.send(Auth(b"m" * 32))
    with pytest.raises(OutOfOrder):
        feed(proto, Challenge(NONCE))


def in_state(state: ClientState) -> ClientProtocol:
    """A protocol walked, by legal moves, into ``state``."""
    proto = ClientProtocol()
    if state is ClientState.IDLE:
        return proto
    proto.send(Hello(1))
    if state in (ClientState.CHALLENGED, ClientState.AUTHENTICATING):
        feed(proto, Challenge(NONCE))
        if state is ClientState.AUTHENTICATING:
            proto.send(Auth(b"m" * 32))
    elif state in (ClientState.OPEN, ClientState.DONE):
        feed(proto, Welcome(0, 0))
        if state is ClientState.DONE:
            proto.send(Done())
    return proto


@pytest.mark.parametrize("state", list(ClientState), ids=lambda s: s.value)
def test_status_and_errors_are_allowed_in_every_state(state: ClientState) -> None:
    """STATUS_QUERY may go and STATUS or ERROR may come in every state, changing none."""
    proto = in_state(state)
    assert proto.state is state
    proto.send(StatusQuery())
    error = Error(ErrorCode.SHUTTING_DOWN, "bye")
    assert feed(proto, Status("{}"), error) == [Status("{}"), error]
    assert proto.state is state


def test_a_decoder_accepts_the_handshake_replies_unprompted() -> None:
    """A protocol used only to decode (its owner wrote HELLO itself) takes WELCOME, then acks."""
    proto = ClientProtocol()
    assert feed(proto, Welcome(4, 40), Ack(5)) == [Welcome(4, 40), Ack(5)]
    assert proto.state is ClientState.OPEN


def test_malformed_frames_are_reported_as_such_in_any_state() -> None:
    """A bad body is named for what it is, even where the frame would also be out of order."""
    proto = ClientProtocol()
    proto.receive_data(b"\x00\x00\x00\x01\x85\x00")  # NOT_READY with a body, before WELCOME
    with pytest.raises(ProtocolError, match="NOT_READY body too short"):
        proto.next_event()


def test_repr_shows_the_state() -> None:
    """The repr names the state, for logs and debugging."""
    assert repr(opened()) == "<ClientProtocol open>"
