"""Decoding photos reduced (captioning/images.py, captioning/reduced_png.py): a large PNG is decoded
strip by strip, never whole, and gives the same pixels as reducing the whole decoded image."""

import io
import struct
import zlib

import numpy as np
import PIL.Image
import pytest

from captioning import reduced_png
from captioning.images import InvalidImageError, exif_orientation, open_upright_rgb, to_rgb

from .conftest import make_photo

SIZE = (1203, 905)  # width, height: neither a multiple of the factor nor of a strip


def _png(image: PIL.Image.Image, **save_args) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG", **save_args)
    return out.getvalue()


def _pixels(seed=0) -> np.ndarray:
    return np.asarray(PIL.Image.open(io.BytesIO(make_photo(seed, size=SIZE, fmt="PNG"))))


def _in_mode(mode: str) -> tuple[PIL.Image.Image, dict]:
    rgb = _pixels()
    if mode == "RGBA":
        return PIL.Image.fromarray(np.dstack([rgb, rgb[..., 1]])), {}
    if mode == "LA":
        return PIL.Image.fromarray(np.dstack([rgb[..., 0], rgb[..., 2]]), "LA"), {}
    if mode == "I;16":
        return PIL.Image.fromarray(rgb[..., 0].astype(np.uint16) * 257), {}
    if mode == "P":  # with a transparent palette entry: composited on white strip by strip
        return PIL.Image.fromarray(rgb).quantize(200), {"transparency": 3}
    if mode == "P;4":  # 4 bits a pixel: several pixels in a byte
        return PIL.Image.fromarray(rgb).quantize(16), {}
    if mode == "1":
        return PIL.Image.fromarray(rgb[..., 0] > 128), {}
    return PIL.Image.fromarray(rgb).convert(mode), {"optimize": True}


@pytest.fixture
def small_strips(monkeypatch):
    """Strips of a few rows, so that a test photo spans many (and ends with a partial one)."""
    monkeypatch.setattr(reduced_png, "STRIP_BYTES", 20_000)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "P;4", "1", "I;16"])
def test_a_large_png_decodes_reduced_to_the_same_pixels_as_reducing_the_whole_image(mode, small_strips):
    image, save_args = _in_mode(mode)
    data = _png(image, **save_args)
    whole = PIL.Image.open(io.BytesIO(data))
    whole.load()
    reduced = open_upright_rgb(data, min_size=300)  # 905 // 300: a factor of 3
    assert reduced.mode == "RGB" and reduced.size == (401, 302)
    np.testing.assert_array_equal(np.asarray(reduced), np.asarray(to_rgb(whole).reduce(3)))


def test_a_large_png_is_never_held_whole(request, small_strips):
    """Bounded memory: besides the reduced output, no image of more rows than a strip is allocated."""
    data = _png(_in_mode("RGB")[0])
    allocated = request.getfixturevalue("allocations")
    reduced = open_upright_rgb(data, min_size=300)
    assert reduced.size == (401, 302) and allocated
    strip_rows = reduced_png.STRIP_BYTES // (SIZE[0] * 3 + 1) + 1
    assert all(size == reduced.size or size[1] <= strip_rows for size in allocated), allocated


def _written_png(rgb: np.ndarray, depth: int = 8, interlaced: bool = False) -> bytes:
    """An RGB PNG written here, as Pillow writes neither 16-bit colour nor interlaced PNGs (the
    interlaced one only declares it: enough for what reads the header)."""
    rows = b"".join(b"\0" + (row.astype(">u2") * 257 if depth == 16 else row).tobytes() for row in rgb)
    header = struct.pack(">IIBBBBB", rgb.shape[1], rgb.shape[0], depth, 2, 0, 0, int(interlaced))
    return (reduced_png.SIGNATURE + reduced_png._chunk(b"IHDR", header)
            + reduced_png._chunk(b"IDAT", zlib.compress(rows)) + reduced_png._chunk(b"IEND", b""))


def test_pngs_without_a_strip_decode_are_decoded_whole():
    """Interlaced and 16-bit colour PNGs have no strip decode; open_upright_rgb decodes them whole."""
    rgb = _pixels()
    for data in (_written_png(rgb, interlaced=True), _written_png(rgb, depth=16)):
        assert reduced_png.decode_reduced(PIL.Image.open(io.BytesIO(data)), data, 3, to_rgb) is None
    whole = open_upright_rgb(_written_png(rgb, depth=16), min_size=300)
    np.testing.assert_array_equal(np.asarray(whole), rgb)


def test_the_orientation_of_a_large_png_is_read_without_decoding_it(request):
    """Pillow's own getexif decodes a PNG whole to look for EXIF after the image data."""
    exif = PIL.Image.Exif()
    exif[0x0112] = 8
    data, plain = _png(_in_mode("RGB")[0], exif=exif.tobytes()), _png(PIL.Image.new("RGB", (2, 2)))
    allocated = request.getfixturevalue("allocations")
    assert exif_orientation(data) == 8 and exif_orientation(plain) == 1
    assert allocated == [], allocated


@pytest.mark.parametrize("cut", [100, 0.3, 0.9])
def test_a_truncated_large_png_is_refused(cut, small_strips):
    data = _png(_in_mode("RGB")[0])
    with pytest.raises(InvalidImageError, match="truncated"):
        open_upright_rgb(data[: cut if isinstance(cut, int) else int(len(data) * cut)], min_size=300)


def test_a_large_png_is_turned_upright_by_its_exif_orientation(small_strips):
    rgb = np.zeros((900, 1800, 3), np.uint8)
    rgb[:, :900] = (255, 0, 0)  # left half red
    rgb[:, 900:] = (0, 0, 255)  # right half blue
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise: the left half ends up on top
    upright = np.asarray(open_upright_rgb(_png(PIL.Image.fromarray(rgb), exif=exif.tobytes()), min_size=300))
    assert upright.shape == (600, 300, 3)  # reduced by 3, then turned
    assert (upright[:290, :, 0] == 255).all() and (upright[310:, :, 2] == 255).all()
