"""Images in messages: file paths, raw bytes or base64 strings; local data only, never URLs."""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any

from chatcli.core.errors import RequestError

# Leading bytes of the formats llama.cpp's image loader (stb_image) reads.
MAGIC = {b"\x89PNG\r\n\x1a\n": "png", b"\xff\xd8\xff": "jpeg", b"GIF87a": "gif",
         b"GIF89a": "gif", b"BM": "bmp"}
MAX_BYTES = 64 * 1024 * 1024
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp")


def image_kind(data: bytes) -> str | None:
    for magic, kind in MAGIC.items():
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def decode_base64_image(text: str) -> bytes:
    """An image sent over the network: base64 (or a data: URL) only, never a file path."""
    try:
        data = base64.b64decode(text.split(",", 1)[-1] if text.startswith("data:") else text,
                                validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("an image must be base64-encoded data") from None
    return _checked(data)


def load_image(value: Any) -> bytes:
    """The image's bytes, from a path, bytes, or a base64 string (as Ollama's Python client
    accepts them). For local callers only: HTTP requests use decode_base64_image."""
    if isinstance(value, (bytes, bytearray)):
        data = bytes(value)
    elif isinstance(value, (str, Path)):
        text = str(value)
        if text.startswith(("http://", "https://", "ftp://", "file://")):
            raise RequestError("images must be local data (a path, bytes or base64); "
                               "chatcli never fetches URLs")
        path = Path(text).expanduser()
        if len(text) < 4096 and path.is_file():
            data = path.read_bytes()
        else:
            try:
                data = base64.b64decode(text.split(",", 1)[-1] if text.startswith("data:")
                                        else text, validate=True)
            except (binascii.Error, ValueError):
                raise RequestError(f"image {text[:60]!r} is neither a file nor base64 data") \
                    from None
    else:
        raise RequestError(f"an image must be a path, bytes or a base64 string, "
                           f"not {type(value).__name__}")
    return _checked(data)


def _checked(data: bytes) -> bytes:
    if len(data) > MAX_BYTES:
        raise RequestError(f"image is {len(data)} bytes; the limit is {MAX_BYTES}")
    if image_kind(data) is None:
        raise RequestError("image data is not a PNG, JPEG, GIF, BMP or WebP image")
    return data
