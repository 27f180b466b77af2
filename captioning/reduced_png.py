"""Decoding a large PNG at a reduced size, a strip of rows at a time (bounded memory).

Pillow decodes a PNG only whole: a 49-megapixel photo takes 196 MB (RGB is held as 4 bytes a
pixel), although thumbnails and the networks need a few hundred pixels a side. JPEG has reduced
decoding (``draft``); PNG has none, so this module inflates the image data itself and hands
Pillow one strip of rows at a time (a few MB), each reduced by a box filter (``Image.reduce``)
into the output. The result equals ``Image.reduce`` of the whole decoded image, pixel for pixel.

PNG rows are filtered against the row above (and the pixel to the left), so a strip cannot be
decoded on its own, and Pillow's decoder cannot be resumed. Each strip is therefore wrapped as a
small stand-in PNG whose first row is the previous strip's last row, unfiltered: the stand-in
is an 8-bit PNG with the same bytes per pixel (which is all a PNG filter looks at), so Pillow
undoes the filters and gives back the raw rows, which are then unpacked in the photo's own mode.

Not covered (:func:`decode_reduced` answers None; the caller decodes the whole image): interlaced
images, 16-bit colour (8 bytes a pixel has no 8-bit stand-in) and animated PNGs.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator

from PIL import Image

SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Filtered bytes held at once (the strip height follows from the row length).
STRIP_BYTES = 4 * 1024 * 1024
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
# Bytes per pixel as the filters count them -> the 8-bit colour type with as many bytes per pixel.
STAND_IN_COLOUR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}


def _chunks(data: bytes | memoryview) -> Iterator[tuple[bytes, memoryview]]:
    """(type, payload) of each chunk; a cut-off chunk yields what there is (the decode then finds rows missing)."""
    view, position = memoryview(data), len(SIGNATURE)
    while position + 8 <= len(view):
        length, kind = struct.unpack(">I4s", view[position : position + 8])
        yield kind, view[position + 8 : position + 8 + length]
        position += 12 + length


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _filtered_strips(data: bytes | memoryview, strip_length: int) -> Iterator[bytes]:
    """The inflated image data (filter byte + row, for each row) in pieces of ``strip_length`` bytes.

    The inflation is bounded by ``max_length``: a highly compressible IDAT never expands whole.
    """
    inflater, pending = zlib.decompressobj(), bytearray()
    for kind, payload in _chunks(data):
        if kind != b"IDAT":
            continue
        tail = payload
        while tail:
            pending += inflater.decompress(tail, strip_length - len(pending))
            tail = inflater.unconsumed_tail
            if len(pending) == strip_length:
                yield bytes(pending)
                pending.clear()
    pending += inflater.flush()
    for start in range(0, len(pending), strip_length):
        yield bytes(pending[start : start + strip_length])


def _unfilter(filtered: bytes, previous: bytes, row_bytes: int, pixel_bytes: int) -> bytes:
    """The raw rows of ``filtered`` (each a filter byte + ``row_bytes``), given the raw row above them."""
    rows = len(filtered) // (row_bytes + 1)
    filtered = filtered[: rows * (row_bytes + 1)]  # a truncated stream can end mid-row
    header = struct.pack(">IIBBBBB", row_bytes // pixel_bytes, rows + 1, 8, STAND_IN_COLOUR_TYPE[pixel_bytes], 0, 0, 0)
    stand_in = SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\0" + previous + filtered, 0)) + _chunk(b"IEND", b"")
    with Image.open(io.BytesIO(stand_in)) as image:
        return image.tobytes()[row_bytes:]


def decode_reduced(opened: Image.Image, data: bytes | memoryview, factor: int, to_rgb) -> Image.Image | None:
    """``to_rgb(image).reduce(factor)`` of an opened (not loaded) PNG, from its encoded ``data``.

    ``to_rgb`` converts each strip (a per-pixel conversion, so strips do not change the result).
    The output keeps the photo's EXIF (for its orientation). Answers None for the PNGs this
    module does not cover; raises OSError or zlib.error for damaged or truncated data.
    """
    kind, header = next(_chunks(data), (None, b""))
    if kind != b"IHDR" or len(header) != 13:
        raise OSError("the PNG has no valid header")
    width, height, depth, colour_type, _, _, interlaced = struct.unpack(">IIBBBBB", header)
    pixel_bytes = max(1, CHANNELS.get(colour_type, 0) * depth // 8)
    if interlaced or pixel_bytes not in STAND_IN_COLOUR_TYPE or getattr(opened, "n_frames", 1) > 1:
        return None
    row_bytes = (width * CHANNELS[colour_type] * depth + 7) // 8
    rawmode = opened.tile[0].args
    strip_rows = factor * max(1, STRIP_BYTES // ((row_bytes + 1) * factor))
    reduced = Image.new("RGB", (-(-width // factor), -(-height // factor)))
    previous, y = bytes(row_bytes), 0
    for filtered in _filtered_strips(data, strip_rows * (row_bytes + 1)):
        raw = _unfilter(filtered, previous, row_bytes, pixel_bytes)
        rows = min(len(raw) // row_bytes, height - y)
        if rows <= 0:
            break
        strip = Image.frombytes(opened.mode, (width, rows), raw, "raw", rawmode)
        if opened.mode == "P":
            strip.putpalette(opened.palette.palette, opened.palette.rawmode or opened.palette.mode)
        if "transparency" in opened.info:
            strip.info["transparency"] = opened.info["transparency"]
        reduced.paste(to_rgb(strip).reduce(factor), (0, y // factor))
        previous, y = raw[-row_bytes:], y + rows
    if y < height:
        raise OSError(f"image file is truncated ({height - y} of {height} rows missing)")
    exif = exif_bytes(opened, data)
    if exif:
        reduced.info["exif"] = exif
    return reduced


def exif_bytes(opened: Image.Image, data: bytes | memoryview) -> bytes | None:
    """An opened PNG's EXIF, found without decoding it: its eXIf chunk, which may follow the image
    data (where Pillow's ``getexif`` looks only by decoding the whole image first), or the text
    chunk ImageMagick writes (as Pillow reads it)."""
    for kind, payload in _chunks(data):
        if kind == b"eXIf":
            return b"Exif\x00\x00" + bytes(payload)
    text = opened.info.get("Raw profile type exif")
    return bytes.fromhex("".join(text.split("\n")[3:])) if text else None
