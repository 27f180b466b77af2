"""Image networks behind one call, ``run(batch) -> array``, on TensorFlow or on ONNX Runtime.

The image networks (InceptionV3 today, an ImageNet classifier next) take most of the captioning
time. TensorFlow runs them at a fraction of what a small CPU can do; ONNX Runtime's CPU kernels
run the same graph faster (see docs/benchmarks.md). So each network is built and converted in
Keras as before (Keras stays the reference and the fallback) and :func:`export_onnx` translates
the Keras graph, layer by layer, into an ONNX file that ONNX Runtime loads.

* :class:`KerasNetwork`: a Keras model through one traced ``tf.function`` (any batch size, no
  retracing, no ``predict()`` overhead).
* :class:`OnnxNetwork`: an ONNX file on ONNX Runtime's CPU provider.

Both take a float32 batch in the Keras model's layout (n, height, width, channels) and return its
output as a NumPy array, so callers never know which runtime they got.

``onnxruntime`` and ``onnx`` are imported only where needed: without them the app runs on TensorFlow.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from .files import atomic_path

__all__ = [
    "RUNTIMES",
    "ImageNetwork",
    "KerasNetwork",
    "OnnxNetwork",
    "as_image_network",
    "export_onnx",
    "onnxruntime_available",
]

# The values of the IMAGESEARCH_IMAGE_RUNTIME setting: "auto" takes ONNX Runtime when it and the
# network's ONNX file are installed and sound, else TensorFlow.
RUNTIMES = ("auto", "onnx", "tensorflow")
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
    Raises ``onnxruntime``'s exceptions for a file it cannot load.
    """

    runtime = "onnxruntime"

    def __init__(self, path: str | os.PathLike, *, threads: int = 0):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = max(0, int(threads))
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = Path(path)
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        (spec,) = self.session.get_inputs()
        self.input_name = spec.name
        self.input_shape = tuple(d if isinstance(d, int) else None for d in spec.shape)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]


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
}


def export_onnx(model: Any, path: str | os.PathLike, *, doc: str = "") -> None:
    """Write the Keras functional ``model`` (one 4-D input, one output) as an ONNX graph at ``path``.

    The ONNX graph takes and returns the same NHWC float32 tensors as the Keras model, with a
    free batch dimension. Layers of a kind not in ``_EXPORTERS`` raise ValueError. ONNX Runtime
    fuses the batch norms and activations into the convolutions when it loads the graph.
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

    def tensor_name(keras_tensor) -> str:
        return keras_tensor._keras_history.operation.name

    input_name = tensor_name(model_input)
    nodes = [helper.make_node("Transpose", [GRAPH_INPUT], [input_name], name="to_nchw", perm=_TO_NCHW)]
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "InputLayer":
            continue
        if kind not in _EXPORTERS:
            raise ValueError(f"{model.name}: layer {layer.name} ({kind}) cannot be exported to ONNX")
        (node,) = layer._inbound_nodes
        inputs = [tensor_name(t) for t in node.input_tensors]
        nodes += _EXPORTERS[kind](layer, layer.name, inputs, add, helper)
    nodes.append(helper.make_node("Transpose", [tensor_name(model_output)], [GRAPH_OUTPUT], name="to_nhwc", perm=_TO_NHWC))

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
    with atomic_path(Path(path), suffix=".onnx") as tmp:
        onnx.save_model(onnx_model, str(tmp))
