"""PNG bytes in and out of PIL images, for images on the bus and in the store (no torch)."""

from __future__ import annotations

import io

from PIL import Image

# zlib level 1: PNG stays lossless, and encoding costs far less than the default level 6.
PNG_COMPRESS_LEVEL = 1


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def decode_png(data: bytes) -> Image.Image:
    """Decode PNG bytes fully, refusing any other format."""
    image = Image.open(io.BytesIO(data), formats=["PNG"])
    image.load()
    return image
