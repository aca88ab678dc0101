"""Image bytes in and out of PIL images, for images on the bus and in the store (no torch).

A job's image is encoded once, by the worker that made it, in the job's `output_format`
(`encode_image`); the judge reads the light image whatever its format (`decode_image`)."""

from __future__ import annotations

import io

from PIL import Image

# zlib level 1: PNG stays lossless, and encoding costs far less than the default level 6.
PNG_COMPRESS_LEVEL = 1
# OpenAI's default output_compression: 100, the lossy encoders' best quality.
DEFAULT_COMPRESSION = 100
# The formats PIL writes for a job's output_format (shared/schemas.py: OUTPUT_FORMATS).
_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def encode_image(image: Image.Image, fmt: str = "png", compression: int | None = None) -> bytes:
    """`image` in `fmt` (png, jpeg or webp). `compression` is OpenAI's output_compression, 0-100
    (None: 100): for jpeg and webp the encoder's quality setting, so 100 loses least and 0 makes the
    smallest file; a PNG is lossless and ignores it (its zlib level stays 1: cheap to encode). A JPEG
    has no alpha channel: an RGBA or palette image is flattened to RGB first."""
    if fmt == "png":
        return encode_png(image)
    if fmt not in _PIL_FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; known: {', '.join(_PIL_FORMATS)}")
    level = DEFAULT_COMPRESSION if compression is None else compression
    if not 0 <= level <= 100:
        raise ValueError(f"output_compression must be 0-100, not {level}")
    if fmt == "jpeg" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format=_PIL_FORMATS[fmt], quality=level)
    return buffer.getvalue()


def decode_png(data: bytes) -> Image.Image:
    """Decode PNG bytes fully, refusing any other format."""
    image = Image.open(io.BytesIO(data), formats=["PNG"])
    image.load()
    return image


def decode_image(data: bytes) -> Image.Image:
    """Decode an image in any of the output formats fully (PIL reads which from its bytes), refusing
    every other format: the judge reads a light image stored in its job's format."""
    image = Image.open(io.BytesIO(data), formats=list(_PIL_FORMATS.values()))
    image.load()
    return image
