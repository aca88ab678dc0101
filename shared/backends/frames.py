"""The frames a worker and its model process exchange on their pipes (model_process.py): a 4-byte
length, an orjson header (a pydantic model), then raw bytes the header announces: an image's RGB
pixels, or a preview's encoded image. Split from model_process.py (the processes and their
lifetimes) to keep each module under the house limit of 500 lines."""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from typing import BinaryIO, Literal

import orjson
from PIL import Image
from pydantic import BaseModel, ConfigDict

from shared.backends.previews import Preview, PreviewSink
from shared.policies.previews import MAX_PREVIEW_BYTES

HEADER_LENGTH = struct.Struct(">I")
PREVIEW_PREFIX = b'{"preview":true'  # how a PreviewFrame's header begins (orjson keeps the field order)
MAX_HEADER_BYTES = 16 * 1024 * 1024


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageFrame(Message):
    mode: str
    width: int
    height: int
    size: int  # bytes of raw pixels that follow the header


class PreviewFrame(Message):
    """A preview of one job, written before its batch's reply (any number of them, none for a
    batch without previews); `size` bytes of the encoded image follow (at most MAX_PREVIEW_BYTES)."""

    preview: Literal[True] = True
    job_id: str
    index: int
    step: int
    steps: int
    format: str
    size: int


# Framing: both ends --------------------------------------------------------------------------

# The read end of a pipe: os.fdopen(fd, "rb") is buffered, with buffering=0 raw; both have readinto.
ReadStream = io.BufferedIOBase | io.RawIOBase


def write_frame(stream: BinaryIO, header: Message, blobs: Sequence[bytes] = ()) -> None:
    data = orjson.dumps(header.model_dump(mode="json"))
    stream.write(HEADER_LENGTH.pack(len(data)))
    stream.write(data)
    for blob in blobs:
        stream.write(blob)
    stream.flush()


def read_exactly(stream: ReadStream, size: int) -> bytes:
    """`size` bytes; an unbuffered pipe returns at most what is there, so read until complete."""
    data = bytearray(size)
    view, got = memoryview(data), 0
    while got < size:
        count = stream.readinto(view[got:])
        if not count:
            raise EOFError("the pipe closed mid-frame" if got else "the pipe closed")
        got += count
    return bytes(data)


def read_header(stream: ReadStream) -> bytes:
    (length,) = HEADER_LENGTH.unpack(read_exactly(stream, HEADER_LENGTH.size))
    if length > MAX_HEADER_BYTES:
        raise ValueError(f"frame header of {length} bytes exceeds {MAX_HEADER_BYTES}")
    return read_exactly(stream, length)


def image_frames(images: list[Image.Image]) -> tuple[list[ImageFrame], list[bytes]]:
    rgb = [image.convert("RGB") if image.mode != "RGB" else image for image in images]
    pixels = [image.tobytes() for image in rgb]
    frames = [ImageFrame(mode="RGB", width=image.width, height=image.height, size=len(data))
              for image, data in zip(rgb, pixels, strict=True)]
    return frames, pixels


def take_preview(header: bytes, replies: ReadStream, on_preview: PreviewSink | None) -> None:
    """Read a preview frame's image and hand it on (dropped when nobody asked: a stale batch's)."""
    frame = PreviewFrame.model_validate_json(header)
    if not 0 < frame.size <= MAX_PREVIEW_BYTES:
        raise ValueError(f"a preview of {frame.size} bytes: at most {MAX_PREVIEW_BYTES}")
    data = read_exactly(replies, frame.size)
    if on_preview is not None:
        on_preview(Preview(frame.job_id, frame.index, frame.step, frame.steps, data, frame.format))
