"""Image networks behind one call, ``run(batch) -> array``, on TensorFlow or on ONNX Runtime.

The image networks (InceptionV3 today, an ImageNet classifier next) take most of the captioning
time. TensorFlow runs them at a fraction of what a small CPU can do; ONNX Runtime's CPU kernels
run the same graph faster (see docs/benchmarks.md). So each network is built and converted in
Keras as before (Keras stays the reference and the fallback) and :func:`export_onnx` translates
the Keras graph, layer by layer, into an ONNX file that ONNX Runtime loads.

* :class:`KerasNetwork`: a Keras model through one traced ``tf.function`` (any batch size, no
  retracing, no ``predict()`` overhead).
* :class:`OnnxNetwork`: an ONNX file on ONNX Runtime's CPU provider.
* :func:`quantize_onnx`: an exported float graph as an int8 graph (static quantisation with
  activation ranges calibrated on photos), which the VNNI/AMX kernels of ONNX Runtime run faster.

Both take a float32 batch in the Keras model's layout (n, height, width, channels) and return its
output as a NumPy array, so callers never know which runtime they got.

``onnxruntime`` and ``onnx`` are imported only where needed: without them the app runs on TensorFlow.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence, runtime_checkable

import numpy as np


__all__ = [
    "PRECISIONS",
    "RUNTIMES",
    "ImageNetwork",
    "KerasNetwork",
    "OnnxNetwork",
    "as_image_network",
    "export_onnx",
    "onnxruntime_available",
    "quantize_onnx",
]

# The values of the IMAGESEARCH_IMAGE_RUNTIME setting: "auto" takes ONNX Runtime when it and the
# network's ONNX file are installed and sound, else TensorFlow.
RUNTIMES = ("auto", "onnx", "tensorflow")
# The values of the IMAGESEARCH_IMAGE_PRECISION setting: "int8" runs a network's quantised ONNX
# graph where it is built and sound (else the float one), "fp32" the float graph.
PRECISIONS = ("fp32", "int8")
# ONNX opset of the exported graphs (onnxruntime 1.31 runs up to 23).
ONNX_OPSET = 17
# ONNX file format version: the onnx package writes its newest, which older runtimes refuse.
ONNX_IR_VERSION = 9


@runtime_checkable
class ImageNetwork(Protocol):
    """A loaded image network: ``run`` maps a float32 (n, h, w, c) batch to its output array."""

    runtime: str  # "tensorflow" or "onnxruntime", for logs and benchmark reports
    input_shape: tuple  # (None, h, w, c)

    def run(self, batch: np.ndarray) -> np.ndarray: ...


class KerasNetwork:
    """A Keras model run through one traced ``tf.function`` (the reference path)."""

    runtime = "tensorflow"
    precision = "fp32"

    def __init__(self, model: Any):
        import tensorflow as tf

        self.model = model
        self.input_shape = tuple(model.input_shape)
        spec = tf.TensorSpec((None, *self.input_shape[1:]), tf.float32)
        self._function = tf.function(lambda images: model(images, training=False), input_signature=[spec])

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._function(np.asarray(batch, dtype=np.float32)).numpy()


class OnnxNetwork:
    """An ONNX file on ONNX Runtime's CPU provider.

    ``threads``: intra-op threads (0 = one per core, ONNX Runtime's default). Operators run one
    after another (one inter-op thread): a batch keeps the cores busy within each operator. Idle
    threads sleep instead of spinning (ONNX Runtime's default), because TensorFlow's caption
    search and other workers need the same cores right after each call.

    ``memory_arena``: keep activation memory between calls (ONNX Runtime's CPU arena and its
    memory-pattern planning, both on by default there). The app passes
    ``IMAGESEARCH_IMAGE_MEMORY_ARENA`` (on by default, for speed): the arena keeps the largest
    batch's activations for the life of the process (about 290 MB for InceptionV3 and
    EfficientNet-Lite0 at 8 photos); without it the activations are allocated per call, about 8 %
    more CPU (docs/benchmarks.md).
    ``precision``: "fp32", or "int8" for a graph made by :func:`quantize_onnx` (for logs and reports).
    Raises ``onnxruntime``'s exceptions for a file it cannot load.
    """

    runtime = "onnxruntime"

    def __init__(self, path: str | os.PathLike, *, threads: int = 0, memory_arena: bool = False, precision: str = "fp32"):
        import onnxruntime

        self.path = Path(path)
        self.precision = precision
        self.session = onnxruntime.InferenceSession(str(path), session_options(threads, memory_arena), providers=["CPUExecutionProvider"])
        # Loading parsed the whole file (about 140 MB for InceptionV3) into memory that is free now.
        release_free_memory()
        (spec,) = self.session.get_inputs()
        self.input_name = spec.name
        self.input_shape = tuple(d if isinstance(d, int) else None for d in spec.shape)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]


def session_options(threads: int = 0, memory_arena: bool = False):
    """ONNX Runtime's options for an image network's session (see :class:`OnnxNetwork`)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(0, int(threads))
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_cpu_mem_arena = bool(memory_arena)
    options.enable_mem_pattern = bool(memory_arena)
    return options


@functools.cache
def _glibc() -> Any:
    """The C library if it is glibc (``malloc_trim``, ``mallopt``), else None."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    return libc if libc is not None and hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


def release_free_memory() -> None:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``; elsewhere nothing).

    glibc keeps freed memory in its heap for reuse, so a large temporary allocation (a model file
    parsed once) would stay in the process's resident memory for good.
    """
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


# The size from which a captioning process's allocations get their own mapping (IMAGESEARCH_MALLOC_MMAP_THRESHOLD).
DEFAULT_MMAP_THRESHOLD = 0  # glibc's adaptive default: the 4 MiB that fits 1.2 GB costs ~35 % more CPU per photo
# mallopt's parameter number for the size from which allocations get their own mapping (malloc.h).
_M_MMAP_THRESHOLD = -3


def map_large_allocations(threshold: int) -> bool:
    """Have glibc map every allocation of ``threshold`` bytes or more on its own (0: glibc's default).

    Without an arena, ONNX Runtime allocates a batch's activations (up to 22 MB each) afresh per
    call. glibc's default threshold rises to the largest block freed (up to 32 MB), after which
    these blocks come from the heap, which fragments and keeps a few hundred MB more resident
    than the batch needs; a fixed threshold returns them to the system as they are freed
    (docs/benchmarks.md, "memory of a captioning process"). Process-wide; returns whether it was applied.
    """
    libc = _glibc()
    if libc is None or threshold <= 0:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))


def as_image_network(network: Any) -> ImageNetwork:
    """``network`` itself if it is an :class:`ImageNetwork`, else a Keras model wrapped in :class:`KerasNetwork`."""
    return network if isinstance(network, ImageNetwork) else KerasNetwork(network)


def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


# --------------------------------------------------------------------------------------
# Keras -> ONNX
# --------------------------------------------------------------------------------------

# Keras layers are NHWC, ONNX convolutions NCHW: the graph transposes once at its input and once
# at its output, and every layer in between works in NCHW.
_TO_NCHW, _TO_NHWC = [0, 3, 1, 2], [0, 2, 3, 1]
# Names of the ONNX graph's input and output (NHWC), apart from every Keras layer name.
GRAPH_INPUT, GRAPH_OUTPUT = "nhwc_input", "nhwc_output"


def _pads(layer: Any) -> dict:
    """ONNX padding attributes for a Keras ``padding`` (``same`` pads like TensorFlow: extra at the end)."""
    return {"auto_pad": "SAME_UPPER"} if layer.padding == "same" else {"pads": [0, 0, 0, 0]}


def _conv(layer, name, inputs, add, helper):
    kernel = layer.get_weights()[0].transpose(3, 2, 0, 1)  # HWIO -> OIHW
    names = [inputs[0], add(f"{name}.kernel", kernel)]
    if layer.use_bias:
        names.append(add(f"{name}.bias", layer.get_weights()[1]))
    if layer.dilation_rate != (1, 1) or layer.groups != 1:
        raise ValueError(f"{layer.name}: dilated or grouped convolutions are not exported")
    activation = layer.activation.__name__
    conv_output = name if activation == "linear" else f"{name}.linear"
    nodes = [helper.make_node("Conv", names, [conv_output], name=conv_output, kernel_shape=list(layer.kernel_size),
                              strides=list(layer.strides), **_pads(layer))]
    if activation != "linear":
        nodes += _activation(activation, conv_output, name, helper)
    return nodes


def _batch_norm(layer, name, inputs, add, helper):
    if layer.axis not in (-1, 3, [3], [-1]):
        raise ValueError(f"{layer.name}: only batch norm over the channels is exported")
    mean, variance = np.asarray(layer.moving_mean), np.asarray(layer.moving_variance)
    gamma = np.asarray(layer.gamma) if layer.scale else np.ones_like(mean)
    beta = np.asarray(layer.beta) if layer.center else np.zeros_like(mean)
    names = [inputs[0]] + [add(f"{name}.{part}", value) for part, value in
                           (("gamma", gamma), ("beta", beta), ("mean", mean), ("variance", variance))]
    return [helper.make_node("BatchNormalization", names, [name], name=name, epsilon=float(layer.epsilon))]


def _activation(kind: str, source: str, name: str, helper) -> list:
    ops = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh"}
    if kind not in ops:
        raise ValueError(f"{name}: activation {kind!r} is not exported")
    return [helper.make_node(ops[kind], [source], [name], name=name)]


def _activation_layer(layer, name, inputs, add, helper):
    return _activation(layer.activation.__name__, inputs[0], name, helper)


def _pool(op: str, **extra):
    def export(layer, name, inputs, add, helper):
        return [helper.make_node(op, inputs, [name], name=name, kernel_shape=list(layer.pool_size),
                                 strides=list(layer.strides), **_pads(layer), **extra)]

    return export


def _concatenate(layer, name, inputs, add, helper):
    if layer.axis not in (-1, 3):
        raise ValueError(f"{layer.name}: only concatenation over the channels is exported")
    return [helper.make_node("Concat", inputs, [name], name=name, axis=1)]


def _depthwise_conv(layer, name, inputs, add, helper):
    kernel = layer.get_weights()[0]  # (kh, kw, channels, multiplier) -> (channels * multiplier, 1, kh, kw)
    kh, kw, channels, multiplier = kernel.shape
    names = [inputs[0], add(f"{name}.kernel", kernel.transpose(2, 3, 0, 1).reshape(channels * multiplier, 1, kh, kw))]
    if layer.use_bias:
        names.append(add(f"{name}.bias", layer.get_weights()[1]))
    if tuple(layer.dilation_rate) != (1, 1):
        raise ValueError(f"{layer.name}: dilated convolutions are not exported")
    activation = layer.activation.__name__
    conv_output = name if activation == "linear" else f"{name}.linear"
    nodes = [helper.make_node("Conv", names, [conv_output], name=conv_output, kernel_shape=[kh, kw], group=channels,
                              strides=list(layer.strides), **_pads(layer))]
    if activation != "linear":
        nodes += _activation(activation, conv_output, name, helper)
    return nodes


def _relu(layer, name, inputs, add, helper):
    """Keras ``ReLU`` (ReLU6 when ``max_value`` is 6): Relu, or Clip for a capped one."""
    if float(layer.negative_slope) != 0 or float(layer.threshold) != 0:
        raise ValueError(f"{layer.name}: leaky or thresholded ReLU is not exported")
    if layer.max_value is None:
        return [helper.make_node("Relu", inputs, [name], name=name)]
    low, high = add(f"{name}.min", np.float32(0)), add(f"{name}.max", np.float32(layer.max_value))
    return [helper.make_node("Clip", [inputs[0], low, high], [name], name=name)]


def _add(layer, name, inputs, add, helper):
    return [helper.make_node("Sum", inputs, [name], name=name)]


def _global_average_pool(layer, name, inputs, add, helper):
    if layer.keepdims:
        raise ValueError(f"{layer.name}: only pooling to (batch, channels) is exported")
    return [helper.make_node("GlobalAveragePool", inputs, [f"{name}.nc11"], name=f"{name}.nc11"),
            helper.make_node("Flatten", [f"{name}.nc11"], [name], name=name, axis=1)]


def _dense(layer, name, inputs, add, helper):
    """Dense on (batch, features) only: on an image tensor Keras works on the channels (NHWC), not NCHW's last axis."""
    if len(layer.input.shape) != 2:
        raise ValueError(f"{layer.name}: only Dense layers on (batch, features) are exported")
    weights = layer.get_weights()
    bias = weights[1] if layer.use_bias else np.zeros(weights[0].shape[1], np.float32)
    activation = layer.activation.__name__
    output = name if activation == "linear" else f"{name}.linear"
    nodes = [helper.make_node("Gemm", [inputs[0], add(f"{name}.kernel", weights[0]), add(f"{name}.bias", bias)], [output], name=output)]
    if activation != "linear":
        nodes += _activation(activation, output, name, helper)
    return nodes


def _softmax(layer, name, inputs, add, helper):
    if len(layer.input.shape) != 2 or layer.axis not in (-1, 1):
        raise ValueError(f"{layer.name}: only a softmax over the features of (batch, features) is exported")
    return [helper.make_node("Softmax", inputs, [name], name=name, axis=-1)]


def _rescaling(layer, name, inputs, add, helper):
    scale, offset = np.asarray(layer.scale, np.float32), np.asarray(layer.offset, np.float32)
    if scale.size != 1 or offset.size != 1:
        raise ValueError(f"{layer.name}: only scalar scale and offset are exported")
    return [helper.make_node("Mul", [inputs[0], add(f"{name}.scale", scale.reshape(()))], [f"{name}.scaled"], name=f"{name}.scaled"),
            helper.make_node("Add", [f"{name}.scaled", add(f"{name}.offset", offset.reshape(()))], [name], name=name)]


def resize_matrix(size_in: int, size_out: int, interpolation: str, antialias: bool) -> np.ndarray:
    """The (size_out, size_in) matrix of Keras's resize along one axis: ``resized = matrix @ column``.

    Computed by resizing the identity with the backend itself, so the ONNX graph resizes exactly
    as TensorFlow does (``antialias`` included, which ONNX Runtime's own Resize does differently).
    Valid for the separable linear interpolations (bilinear, bicubic...).
    """
    from keras import ops

    identity = np.eye(size_in, dtype=np.float32)[None, :, None, :]  # (1, height = size_in, 1, channels = size_in)
    resized = ops.image.resize(identity, (size_out, 1), interpolation=interpolation, antialias=antialias)
    return np.asarray(ops.convert_to_numpy(resized))[0, :, 0, :]


def _resizing(layer, name, inputs, add, helper):
    """Keras ``Resizing`` (whole image, separable linear interpolation) as two matrix products in NCHW."""
    if layer.crop_to_aspect_ratio or layer.pad_to_aspect_ratio or layer.interpolation not in ("bilinear", "bicubic"):
        raise ValueError(f"{layer.name}: only plain bilinear or bicubic resizing is exported")
    _, height, width, _ = layer.input.shape
    rows = resize_matrix(height, layer.height, layer.interpolation, layer.antialias)
    columns = resize_matrix(width, layer.width, layer.interpolation, layer.antialias)
    return [helper.make_node("MatMul", [inputs[0], add(f"{name}.columns", columns.T)], [f"{name}.width"], name=f"{name}.width"),
            helper.make_node("MatMul", [add(f"{name}.rows", rows), f"{name}.width"], [name], name=name)]


# Keras layer class -> exporter(layer, output name, input names, add_initializer, onnx.helper) -> nodes.
# Add a layer kind here when a network needs it; anything else is refused with its name.
_EXPORTERS: dict[str, Callable] = {
    "Conv2D": _conv,
    "BatchNormalization": _batch_norm,
    "Activation": _activation_layer,
    "MaxPooling2D": _pool("MaxPool"),
    # TensorFlow's "same" average pooling divides by the pixels inside the image only.
    "AveragePooling2D": _pool("AveragePool", count_include_pad=0),
    "Concatenate": _concatenate,
    "DepthwiseConv2D": _depthwise_conv,
    "ReLU": _relu,
    "Add": _add,
    "GlobalAveragePooling2D": _global_average_pool,
    "Dense": _dense,
    "Softmax": _softmax,
    "Rescaling": _rescaling,
    "Resizing": _resizing,
}


def _export_functional(model, input_names: list[str], prefix: str, add, helper) -> tuple[list, list[str]]:
    """ONNX nodes of a Keras functional ``model`` whose inputs are the ONNX tensors ``input_names``.

    A nested functional model (a network called on a preprocessing layer's output) is exported in
    place, its layer names prefixed with its own name.
    """
    names = {id(tensor): name for tensor, name in zip(model.inputs, input_names)}
    nodes: list = []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "InputLayer":
            continue
        # The call of this layer inside this graph (a nested model may be called from other graphs too).
        calls = [n for n in layer._inbound_nodes if all(id(t) in names for t in n.input_tensors)]
        if len(calls) != 1:
            raise ValueError(f"{model.name}: layer {layer.name} is called {len(calls)} times; only plain graphs are exported")
        (call,) = calls
        inputs = [names[id(t)] for t in call.input_tensors]
        name = prefix + layer.name
        if kind == "Functional":
            layer_nodes, outputs = _export_functional(layer, inputs, f"{name}/", add, helper)
        elif kind in _EXPORTERS:
            layer_nodes, outputs = _EXPORTERS[kind](layer, name, inputs, add, helper), [name]
        else:
            raise ValueError(f"{model.name}: layer {layer.name} ({kind}) cannot be exported to ONNX")
        nodes += layer_nodes
        names.update((id(t), output) for t, output in zip(call.output_tensors, outputs))
    return nodes, [names[id(t)] for t in model.outputs]


def export_onnx(model: Any, path: str | os.PathLike, *, doc: str = "") -> None:
    """Write the Keras functional ``model`` (one NHWC image input, one output) as an ONNX graph at ``path``.

    The ONNX graph takes and returns the same float32 tensors as the Keras model (NHWC images;
    an image output is transposed back to NHWC, a (batch, features) output is returned as is),
    with a free batch dimension. Layers of a kind not in ``_EXPORTERS`` raise ValueError. ONNX
    Runtime fuses the batch norms and activations into the convolutions when it loads the graph.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    (model_input,), (model_output,) = model.inputs, model.outputs
    if len(model_input.shape) != 4:
        raise ValueError(f"{model.name}: only image networks (one NHWC input) are exported")
    initializers: list = []

    def add(name: str, value: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(np.ascontiguousarray(value, dtype=np.float32), name))
        return name

    nodes = [helper.make_node("Transpose", [GRAPH_INPUT], ["nchw_input"], name="to_nchw", perm=_TO_NCHW)]
    graph_nodes, (output,) = _export_functional(model, ["nchw_input"], "", add, helper)
    nodes += graph_nodes
    if len(model_output.shape) == 4:
        nodes.append(helper.make_node("Transpose", [output], [GRAPH_OUTPUT], name="to_nhwc", perm=_TO_NHWC))
    else:
        nodes.append(helper.make_node("Identity", [output], [GRAPH_OUTPUT], name="output"))

    shape_in = ["batch", *model_input.shape[1:]]
    shape_out = ["batch", *model_output.shape[1:]]
    graph = helper.make_graph(
        nodes,
        model.name,
        [helper.make_tensor_value_info(GRAPH_INPUT, TensorProto.FLOAT, shape_in)],
        [helper.make_tensor_value_info(GRAPH_OUTPUT, TensorProto.FLOAT, shape_out)],
        initializer=initializers,
    )
    onnx_model = helper.make_model(graph, producer_name="imagesearch", opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    onnx_model.ir_version = ONNX_IR_VERSION
    onnx_model.doc_string = doc
    onnx.checker.check_model(onnx_model)
    onnx.save_model(onnx_model, str(path))  # the caller writes atomically (features.ensure_onnx_model)


# --------------------------------------------------------------------------------------
# float ONNX -> int8 ONNX
# --------------------------------------------------------------------------------------

# ONNX Runtime's calibration methods by the name the ranges file records.
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


class _BatchReader:
    """ONNX Runtime's calibration data reader over float32 batches of the graph's one input.

    Read ``_CALIBRATION_STRIDE`` batches at a time (``set_range``): the histogram calibrators hold
    every activation of what they read at once (about 100 MB per photo for InceptionV3).
    """

    def __init__(self, input_name: str, batches: Iterable[np.ndarray]):
        self._input_name, self._batches = input_name, list(batches)
        self.set_range(0, len(self._batches))

    def __len__(self) -> int:
        return len(self._batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._feeds = iter(self._batches[start_index:end_index])

    def get_next(self) -> dict | None:
        batch = next(self._feeds, None)
        return None if batch is None else {self._input_name: np.ascontiguousarray(batch, dtype=np.float32)}


# Calibration batches read at a time (see _BatchReader); the batch count must be a multiple of it.
_CALIBRATION_STRIDE = 1


def quantize_onnx(source: str | os.PathLike, dest: str | os.PathLike, *, ranges_path: str | os.PathLike,
                  calibration: Iterable[np.ndarray] | None = None, method: str = "percentile", keep_float: Sequence[str] = ()) -> None:
    """Write the float ONNX graph ``source`` as an int8 graph at ``dest`` (static quantisation).

    The batch norms are folded into the convolutions first (ONNX Runtime's basic optimisations),
    then every convolution, pooling and concatenation gets QuantizeLinear/DequantizeLinear pairs
    (QDQ), which ONNX Runtime fuses into its integer kernels when it loads the graph: activations
    uint8 with the calibrated ranges, weights int8 per output channel (U8S8, the layout MLAS runs
    on VNNI and AMX). ``keep_float``: blocks kept in float32, by the name of their Keras layer
    (the nodes named so or ``<name>.``..., e.g. ``mixed_10`` for InceptionV3's last block).

    The activation ranges are read from ``ranges_path`` (ONNX Runtime's calibration file, JSON)
    when it exists, so the same file always gives the same graph; otherwise they are calibrated
    on ``calibration`` (float32 input batches, held in memory) with ``method`` (one of CALIBRATION_METHODS; the
    file records it) and written there. Raises ValueError without either.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    if method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose one of {', '.join(CALIBRATION_METHODS)}")
    method_names = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}
    ranges_path = Path(ranges_path)
    if ranges_path.is_file():  # quantize_static insists on the method the file was calibrated with
        import json

        recorded = str((json.loads(ranges_path.read_text(encoding="utf-8")).get("calibration_method") or {}).get("value"))
        method = next((name for name, title in method_names.items() if recorded == f"CalibrationMethod.{title}"), method)
    elif calibration is None:
        raise ValueError(f"no activation ranges at {ranges_path} and no calibration photos to compute them")
    with tempfile.TemporaryDirectory(prefix="imagesearch-quantize-") as work:
        folded = Path(work) / "folded.onnx"
        quant_pre_process(str(source), str(folded), skip_symbolic_shape=True)
        graph = onnx.load(str(folded), load_external_data=False).graph
        (graph_input,) = graph.input
        excluded = [node.name for node in graph.node if any(node.name == block or node.name.startswith(f"{block}.") for block in keep_float)]
        quantize_static(
            str(folded),
            str(dest),
            _BatchReader(graph_input.name, calibration) if calibration is not None else None,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            calibrate_method=getattr(CalibrationMethod, method_names[method]),
            calibration_cache_path=str(ranges_path),
            extra_options={"CalibStridedMinMax": _CALIBRATION_STRIDE},  # despite its name, any calibration method
        )
