"""Framing for one long-lived pipe that carries control messages and byte streams (the agent's stdin).

Several archive streams travel through one SSH channel to one remote process. Input comes from another
machine: lengths are capped and anything malformed is an IntegrityError (exit 6), never a crash or an
unbounded allocation."""

from __future__ import annotations

import json
import struct
from typing import BinaryIO, Protocol

from migrator.errors import IntegrityError

HEADER = struct.Struct(">cI")
JSON, DATA, END = b"J", b"D", b"E"
# One frame's payload at most: data chunks are 1 MiB (SEND_CHUNK); JSON messages are small.
MAX_FRAME = 8 * 1024 * 1024
DATA_CHUNK = 1024 * 1024


class Writable(Protocol):
    def write(self, data: bytes) -> None: ...


def encode(kind: bytes, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


def encode_json(obj: dict) -> bytes:
    return encode(JSON, json.dumps(obj, sort_keys=True).encode())


class DataWriter:
    """A Sink (write(bytes)) that frames what it is given as D frames onto `out`; close() writes the E frame."""

    def __init__(self, out: Writable):
        self.out = out

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        for start in range(0, len(view), DATA_CHUNK):
            piece = view[start:start + DATA_CHUNK]
            self.out.write(HEADER.pack(DATA, len(piece)) + bytes(piece))

    def close(self) -> None:
        self.out.write(encode(END))


class FrameReader:
    """Frames from `stream`: each a 1-byte kind, a 4-byte big-endian length (at most MAX_FRAME) and the
    payload. `J`: one JSON object (a command, or the header of a stream that follows); `D`: a chunk of a
    byte stream; `E`: the end of that stream (empty payload), so each stream reads as a plain file
    (`DataReader`)."""

    def __init__(self, stream: BinaryIO):
        self.stream = stream

    def _exact(self, n: int) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.stream.read(n - len(buf))
            if not chunk:
                if buf:
                    raise IntegrityError(f"the stream ended inside a frame ({len(buf)} of {n} bytes)")
                return None
            buf += chunk
        return bytes(buf)

    def next(self) -> tuple[bytes, bytes] | None:
        """(kind, payload), or None at a clean end of input (between frames)."""
        header = self._exact(HEADER.size)
        if header is None:
            return None
        kind, length = HEADER.unpack(header)
        if kind not in (JSON, DATA, END) or length > MAX_FRAME:
            raise IntegrityError(f"malformed frame (kind {kind!r}, length {length})")
        payload = self._exact(length) if length else b""
        if payload is None:
            raise IntegrityError("the stream ended inside a frame")
        return kind, payload

    def message(self) -> dict | None:
        """The next frame, which must be a JSON object; None at the end of input."""
        frame = self.next()
        if frame is None:
            return None
        kind, payload = frame
        if kind != JSON:
            raise IntegrityError(f"expected a message, got a {kind!r} frame")
        try:
            obj = json.loads(payload)
        except ValueError as exc:
            raise IntegrityError("a message is not JSON") from exc
        if not isinstance(obj, dict):
            raise IntegrityError("a message is not a JSON object")
        return obj

    def data(self) -> DataReader:
        return DataReader(self)


class DataReader:
    """The byte stream of D frames up to the next E frame, read like a file (read(n) -> b"" at its end).
    An input that ends before the E frame is an error, not a short stream."""

    def __init__(self, frames: FrameReader):
        self.frames = frames
        self.buf = b""
        self.done = False

    def read(self, n: int = -1) -> bytes:
        while not self.buf and not self.done:
            frame = self.frames.next()
            if frame is None:
                raise IntegrityError("the sender went away in the middle of a stream")
            kind, payload = frame
            if kind == END:
                self.done = True
            elif kind == DATA:
                self.buf = payload
            else:
                raise IntegrityError("a message arrived in the middle of a stream")
        if n is None or n < 0 or n >= len(self.buf):
            out, self.buf = self.buf, b""
        else:
            out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def drain(self) -> None:
        """Skip to the end of this stream (after a failed extraction, to keep the pipe in step)."""
        while not self.done:
            self.buf = b""
            self.read()
