"""Frames on the cut-over agent's stdin: messages and streams round-trip; hostile or cut input is an
IntegrityError, never a hang, a crash or a huge allocation."""

from __future__ import annotations

import io
import struct

import pytest

from migrator.errors import IntegrityError
from migrator.remote import frames


class Buf:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, b: bytes) -> None:
        self.data += b


def test_messages_and_streams_round_trip():
    out = Buf()
    out.write(frames.encode_json({"cmd": "receive", "volume": "db"}))
    sink = frames.DataWriter(out)
    payload = bytes(range(256)) * 9000  # > 2 data chunks
    sink.write(payload[:1000])
    sink.write(payload[1000:])
    sink.close()
    out.write(frames.encode_json({"cmd": "commit"}))
    reader = frames.FrameReader(io.BytesIO(bytes(out.data)))
    assert reader.message() == {"cmd": "receive", "volume": "db"}
    stream = reader.data()
    got = bytearray()
    while chunk := stream.read(7000):
        got += chunk
    assert bytes(got) == payload and stream.done
    assert reader.message() == {"cmd": "commit"}
    assert reader.message() is None  # clean end between frames


@pytest.mark.parametrize("raw", [
    struct.pack(">cI", b"J", 5) + b"{}",  # cut inside a frame
    struct.pack(">cI", b"X", 0),  # unknown kind
    struct.pack(">cI", b"J", frames.MAX_FRAME + 1),  # oversized: refused before reading
    struct.pack(">cI", b"J", 2) + b"[]",  # not an object
    struct.pack(">cI", b"D", 1) + b"x",  # data where a message belongs
])
def test_bad_messages_are_integrity_errors(raw):
    with pytest.raises(IntegrityError):
        frames.FrameReader(io.BytesIO(raw)).message()


def test_stream_cut_before_its_end_is_an_error_not_a_short_stream():
    raw = frames.encode(frames.DATA, b"abc")
    stream = frames.FrameReader(io.BytesIO(raw)).data()
    assert stream.read() == b"abc"
    with pytest.raises(IntegrityError):
        stream.read()


def test_message_inside_a_stream_is_refused():
    raw = frames.encode(frames.DATA, b"abc") + frames.encode_json({"cmd": "commit"})
    stream = frames.FrameReader(io.BytesIO(raw)).data()
    stream.read()
    with pytest.raises(IntegrityError):
        stream.read()
