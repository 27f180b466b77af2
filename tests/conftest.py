"""Shared fixtures: photos made in code, and the media directory of each test."""
import io

import numpy as np
import PIL.Image
import pytest


def make_photo(seed: int = 0, size=(96, 64), fmt: str = "JPEG", **save_args) -> bytes:
    """A small, distinct, valid image; different seeds give different bytes (and hashes)."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, size[0], dtype=np.float32)
    y = np.linspace(0, 255, size[1], dtype=np.float32)[:, None]
    pixels = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=-1)
    pixels = (pixels + rng.integers(0, 60, size=pixels.shape)).clip(0, 255).astype(np.uint8)
    out = io.BytesIO()
    PIL.Image.fromarray(pixels).save(out, format=fmt, **save_args)
    return out.getvalue()


@pytest.fixture
def photo():
    return make_photo


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    """Each test writes uploads into its own folder."""
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT
