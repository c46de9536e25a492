"""PNG bytes straight from pixels: the chunks, one filter and zlib, without Pillow's encoder.

On a CPU every cycle the writer thread spends is taken from torch. Pillow's PNG path costs
Python work per image (PngInfo, an encoder object, adaptive filtering per row) that is most of
the writer's time on the small images of a CPU run. This writes the same format directly: the
signature, ``IHDR``, the text chunks (``tEXt``, or ``iTXt`` for text that is not Latin-1, as
Pillow's ``add_text``/``add_itxt`` do), one ``IDAT`` of the rows with the Up filter (each row
minus the one above: vectorised in numpy, and on generated pictures as small as adaptive
filtering) compressed by zlib at ``LEVEL``, and ``IEND``. Same pixels and metadata give the same
bytes. Readers (Pillow, browsers, datasets) read it as any PNG; tests check the round trip.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping
from typing import Any

SIGNATURE = b"\x89PNG\r\n\x1a\n"
LEVEL = 2  # zlib level: on generated images 2 is within a few percent of 6's size at a third of the time
_COLOR_TYPE = {1: 0, 3: 2, 4: 6}  # channels -> PNG colour type: gray, RGB, RGBA
_UP = 2


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _text_chunk(key: str, value: str) -> bytes:
    name = key.encode("latin-1")
    try:
        return _chunk(b"tEXt", name + b"\0" + value.encode("latin-1"))
    except UnicodeEncodeError:
        # iTXt: keyword, no compression, no language tag, no translated keyword, UTF-8 text.
        return _chunk(b"iTXt", name + b"\0\0\0\0\0" + value.encode("utf-8"))


def encode_pixels(pixels: Any, text: Mapping[str, str], level: int = LEVEL) -> bytes:
    """PNG bytes of an 8-bit ``(height, width)`` or ``(height, width, channels)`` array."""
    import numpy as np

    array = np.ascontiguousarray(pixels, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    height, width, channels = array.shape
    if channels not in _COLOR_TYPE:
        raise ValueError(f"cannot write a PNG of {channels} channels")
    rows = array.reshape(height, width * channels)
    filtered = np.empty((height, width * channels + 1), dtype=np.uint8)
    filtered[:, 0] = _UP
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # uint8 arithmetic wraps, as PNG's does
    header = struct.pack(">IIBBBBB", width, height, 8, _COLOR_TYPE[channels], 0, 0, 0)
    parts = [SIGNATURE, _chunk(b"IHDR", header)]
    parts.extend(_text_chunk(k, v) for k, v in text.items())
    parts.append(_chunk(b"IDAT", zlib.compress(filtered.tobytes(), level)))
    parts.append(_chunk(b"IEND", b""))
    return b"".join(parts)
