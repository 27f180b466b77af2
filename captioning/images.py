"""Decoding photos the one way every part of the product sees them.

Thumbnails, the upload check and every image network start from :func:`open_upright_rgb`: the first
frame, turned upright by its EXIF orientation, as RGB with transparent pixels on white. Each
network then resizes and scales that image by its own convention (``inception.preprocess_image``).
"""

from __future__ import annotations

import io
import os
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from . import reduced_png

class InvalidImageError(ValueError):
    """The input is not a decodable image (unknown format, truncated or corrupt data)."""


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB for any Pillow mode; transparent pixels are composited onto white.

    Dropping alpha would expose whatever colour hides under transparent pixels (often
    black), and 16/32-bit grayscale would clip to white with a plain ``convert("RGB")``.
    """
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        array = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array, "L").convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


ORIENTATION = 0x0112  # the EXIF tag


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation (1 to 8; 1 upright) of encoded image data, read without decoding pixels.

    Raises :class:`InvalidImageError` if the data is not an image.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format == "PNG":  # Pillow's getexif would decode a PNG whole to look for it
                exif = Image.Exif()
                exif.load(reduced_png.exif_bytes(image, data) or b"")
            else:
                exif = image.getexif()
            return exif.get(ORIENTATION, 1)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InvalidImageError(f"not a readable image ({exc})") from exc


def open_upright_rgb(source: str | os.PathLike | bytes | bytearray | memoryview | Image.Image, min_size: int | None = None) -> Image.Image:
    """One image (path, encoded bytes or PIL image) decoded, upright and RGB.

    With ``min_size``, a large photo is decoded reduced while it stays at least that large on
    each side: a JPEG at a reduced DCT scale (1/2, 1/4 or 1/8), a PNG strip by strip, each strip
    box-filtered by a whole factor (:mod:`reduced_png`). That bounds the memory of a decode (a
    49-megapixel PNG otherwise takes 196 MB) and makes large photos several times faster to
    decode. Other formats (and the PNGs ``reduced_png`` does not cover) are decoded whole.
    Raises :class:`InvalidImageError` if the data is not a decodable image; a missing path
    raises FileNotFoundError.
    """
    try:
        if isinstance(source, Image.Image):
            return to_rgb(ImageOps.exif_transpose(source))  # a copy: the caller's image is left as it was
        # Decoded from bytes in memory, so the image returned holds no open file.
        encoded = bytes(source) if isinstance(source, (bytes, bytearray, memoryview)) else Path(source).read_bytes()
        image = Image.open(io.BytesIO(encoded))
        image.seek(0)
        factor = min(image.size) // min_size if min_size else 0
        if image.format == "JPEG" and factor >= 2:
            image.draft(None, (min_size, min_size))
        elif image.format == "PNG" and factor >= 2:
            image = reduced_png.decode_reduced(image, encoded, factor, to_rgb) or image
        image.load()
        ImageOps.exif_transpose(image, in_place=True)  # in place: no second copy of a large photo
        return to_rgb(image)
    except FileNotFoundError:
        raise
    except UnidentifiedImageError as exc:
        raise InvalidImageError(f"not a recognised image format ({exc})") from exc
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error, Image.DecompressionBombError) as exc:
        raise InvalidImageError(f"image data is truncated or corrupt ({exc})") from exc
