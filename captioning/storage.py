"""One self-contained model directory per trained captioner.

Layout of ``captioning/models/<version>/``::

    captioner.weights.h5   ALL weights (encoder, attention, decoder), float32, Keras format
    vocabulary.json        the tokenizer (see captioning.vocabulary)
    meta.json              format, version, model config (sizes, max length, vocabulary size),
                           feature extractor id + SHA-256 of its source weights, SHA-256 and
                           byte size of the weights file, training data/params, metrics
    MODEL_CARD.md          human documentation (optional for loading)
    concepts.npz           optional: the visual concept-word head (captioning.concepts), its
                           SHA-256 in meta.json ``concepts``; ``search`` in meta.json holds the
                           weights of each description source in the index, tuned on dev
    fingerprint.npz        optional: the projection of visual fingerprints (captioning.fingerprints),
                           its SHA-256 in meta.json ``fingerprint``
    neighbours.npz         optional: training photos' concept vectors and captions for consensus
                           reranking (captioning.consensus), its SHA-256 in meta.json ``neighbours``

:func:`load_model_dir` checks every file and raises :class:`ModelFileError` (the same class as
``captioning.files.ModelFileError``) with a message naming the file and the problem.

Plain Python + Keras, no Django.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .concepts import CONCEPTS_NAME, ConceptHead, load_concept_head
from .consensus import NEIGHBOURS_NAME, NeighbourCaptions, load_neighbours
from .files import ModelFileError, atomic_directory, sha256_file, write_atomic
from .fingerprints import FINGERPRINT_NAME, FingerprintProjection, load_projection
from .vocabulary import Tokenizer, VocabularyError

if TYPE_CHECKING:  # the model module imports TensorFlow: only load_model_dir needs it at run time
    from .model import Captioner, ModelConfig

WEIGHTS_NAME = "captioner.weights.h5"
VOCAB_NAME = "vocabulary.json"
META_NAME = "meta.json"
CARD_NAME = "MODEL_CARD.md"
FORMAT = "imagesearch-captioner"
FORMAT_VERSION = 1
REQUIRED_META = ("format", "format_version", "version", "config", "vocab_size", "max_length", "feature_extractor", "weights")

__all__ = ["ModelFileError", "LoadedModel", "save_model_dir", "load_model_dir", "read_meta", "resolve_model_dir"]


@dataclass
class LoadedModel:
    model: Captioner
    tokenizer: Tokenizer
    meta: dict
    path: Path
    concepts: ConceptHead | None = None
    fingerprint: FingerprintProjection | None = None
    neighbours: NeighbourCaptions | None = None

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def version(self) -> str:
        return self.meta["version"]

    @property
    def max_length(self) -> int:
        return int(self.meta["max_length"])


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """Follow a ``current`` symlink, or a small pointer FILE holding a directory name."""
    path = Path(path)
    if path.is_file() and path.stat().st_size < 1024:
        target = path.read_text(encoding="utf-8").strip()
        path = (path.parent / target) if not os.path.isabs(target) else Path(target)
    return path.resolve()


def _expected_layout(model: Captioner) -> dict[str, list[tuple[int, ...]]]:
    layout: dict[str, list[tuple[int, ...]]] = {}
    for w in model.weights:
        layer = w.path.rsplit("/", 1)[0]
        layout.setdefault(layer, []).append(tuple(int(d) for d in w.shape))
    return layout


def _file_layout(path: Path) -> dict[str, list[tuple[int, ...]]]:
    import h5py

    found: dict[str, dict[int, tuple[int, ...]]] = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and "/vars/" in name:
            layer, idx = name.rsplit("/vars/", 1)
            found.setdefault(layer, {})[int(idx)] = tuple(int(d) for d in obj.shape)

    with h5py.File(path, "r") as h5:
        h5.visititems(visit)
    return {layer: [shapes[i] for i in sorted(shapes)] for layer, shapes in found.items()}


def save_model_dir(
    path: str | os.PathLike,
    model: Captioner,
    tokenizer: Tokenizer,
    *,
    version: str,
    feature_extractor: dict,
    training: dict | None = None,
    metrics: dict | None = None,
    extra: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write weights + vocabulary + meta into ``path`` (built in a temporary sibling, then renamed).

    ``feature_extractor``: at least ``{"id": ..., "source_sha256": ...}``.
    """
    path = Path(path)
    if tokenizer.size != model.config.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.size} tokens but the model outputs {model.config.vocab_size}")
    if any(v.dtype != "float32" for v in model.weights):
        raise ValueError("save float32 weights (the bundled model must load on any CPU)")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists (pass overwrite=True to replace it)")
    with atomic_directory(path) as tmp:
        weights = tmp / WEIGHTS_NAME
        model.save_weights(str(weights))
        tokenizer.save(tmp / VOCAB_NAME)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "version": version,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "config": model.config.to_dict(),
            "vocab_size": tokenizer.size,
            "max_length": model.config.max_length,
            "parameters": int(sum(int(np.prod(w.shape)) for w in model.weights)),
            "feature_extractor": dict(feature_extractor),
            "weights": {"file": WEIGHTS_NAME, "sha256": sha256_file(weights), "bytes": weights.stat().st_size, "dtype": "float32"},
            "vocabulary": {"file": VOCAB_NAME, "sha256": sha256_file(tmp / VOCAB_NAME)},
            "training": training or {},
            "metrics": metrics or {},
        }
        if extra:
            meta.update(extra)
        (tmp / META_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return path


def update_meta(path: str | os.PathLike, **fields) -> dict:
    """Merge top-level fields (e.g. ``metrics``) into meta.json (dicts are merged one level deep)."""
    path = resolve_model_dir(path)
    meta = read_meta(path)
    for key, value in fields.items():
        if isinstance(value, dict) and isinstance(meta.get(key), dict):
            meta[key] = {**meta[key], **value}
        else:
            meta[key] = value
    write_atomic(path / META_NAME, lambda fh: fh.write(json.dumps(meta, indent=2) + "\n"), mode="w")
    return meta


def read_meta(path: str | os.PathLike) -> dict:
    """meta.json of a model directory, validated; raises ModelFileError."""
    path = resolve_model_dir(path)
    if not path.is_dir():
        raise ModelFileError(f"model directory {path} does not exist")
    meta_path = path / META_NAME
    if not meta_path.is_file():
        raise ModelFileError(f"model directory {path} has no {META_NAME}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{meta_path} is unreadable or not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise ModelFileError(f"{meta_path}: expected a JSON object")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ModelFileError(f"{meta_path} lacks required fields: {', '.join(missing)}")
    if meta["format"] != FORMAT:
        raise ModelFileError(f"{meta_path}: format {meta['format']!r} is not {FORMAT!r}")
    if meta["format_version"] != FORMAT_VERSION:
        raise ModelFileError(f"{meta_path}: unsupported format_version {meta['format_version']!r} (this code reads {FORMAT_VERSION})")
    return meta


def load_model_dir(
    path: str | os.PathLike, *, expected_feature_extractor: str | None = None, verify_checksum: bool = True
) -> LoadedModel:
    """Rebuild the captioner from a model directory (or a ``current`` link/pointer to one).

    Checks: the directory and its three files exist; meta.json is complete and of this format;
    the vocabulary parses and its size equals the model's; the weights file's SHA-256 and size
    match meta.json (catches truncation and swapped files); every layer's weight shapes in the
    file equal the model built from meta's config; optionally the feature extractor id.
    Raises :class:`ModelFileError` on any problem.
    """
    from .model import Captioner, ModelConfig  # TensorFlow, only when a model is loaded

    path = resolve_model_dir(path)
    meta = read_meta(path)
    weights = path / meta["weights"].get("file", WEIGHTS_NAME)
    vocab_path = path / VOCAB_NAME
    for f in (weights, vocab_path):
        if not f.is_file():
            raise ModelFileError(f"model directory {path} is missing {f.name}")
    try:
        config = ModelConfig.from_dict(meta["config"])
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"{path / META_NAME}: bad model config ({exc})") from exc
    if config.vocab_size != meta["vocab_size"] or config.max_length != meta["max_length"]:
        raise ModelFileError(f"{path / META_NAME}: vocab_size/max_length disagree with the model config")
    fx = meta["feature_extractor"]
    if not isinstance(fx, dict) or "id" not in fx:
        raise ModelFileError(f"{path / META_NAME}: feature_extractor must name an 'id'")
    if expected_feature_extractor is not None and fx["id"] != expected_feature_extractor:
        raise ModelFileError(
            f"model {path} was trained on features of {fx['id']!r}, but this app extracts {expected_feature_extractor!r}"
        )
    try:
        tokenizer = Tokenizer.load(vocab_path)
    except VocabularyError as exc:
        raise ModelFileError(f"model directory {path}: {exc}") from exc
    if tokenizer.size != config.vocab_size:
        raise ModelFileError(
            f"{vocab_path} holds {tokenizer.size} tokens but the model (meta.json) expects {config.vocab_size}"
        )
    size = weights.stat().st_size
    want_size = meta["weights"].get("bytes")
    if want_size is not None and size != want_size:
        raise ModelFileError(f"{weights} has {size} bytes, meta.json says {want_size}: truncated or replaced")
    if verify_checksum and meta["weights"].get("sha256") and sha256_file(weights) != meta["weights"]["sha256"]:
        raise ModelFileError(f"{weights} does not match the SHA-256 in meta.json: corrupt or replaced")

    model = Captioner(config)
    try:
        found = _file_layout(weights)
    except Exception as exc:  # h5py: OSError on truncated / non-HDF5 files
        raise ModelFileError(f"{weights} is truncated or not an HDF5 weights file ({exc})") from exc
    expected = _expected_layout(model)
    if found != expected:
        problems = []
        for layer in sorted(set(expected) | set(found)):
            if expected.get(layer) != found.get(layer):
                problems.append(f"{layer}: file {found.get(layer)} vs model {expected.get(layer)}")
        raise ModelFileError(f"{weights} does not fit the model in meta.json: " + "; ".join(problems[:4]))
    try:
        model.load_weights(str(weights))
    except Exception as exc:
        raise ModelFileError(f"{weights} could not be loaded ({exc})") from exc
    return LoadedModel(
        model=model, tokenizer=tokenizer, meta=meta, path=path,
        concepts=_load_optional(path, meta, "concepts", CONCEPTS_NAME, load_concept_head),
        fingerprint=_load_optional(path, meta, "fingerprint", FINGERPRINT_NAME, load_projection),
        neighbours=load_model_neighbours(path, meta),
    )


def load_model_neighbours(path: str | os.PathLike, meta: dict | None = None) -> NeighbourCaptions | None:
    """The model directory's neighbour captions (captioning.consensus), None when meta.json records none.

    They are keyed by the concept head's probabilities, so the head they were built with must be the
    model's (meta.json ``neighbours.concepts_sha256``).
    """
    path = resolve_model_dir(path)
    meta = read_meta(path) if meta is None else meta
    neighbours = _load_optional(path, meta, "neighbours", NEIGHBOURS_NAME, load_neighbours)
    if neighbours is None:
        return None
    built_with = meta["neighbours"].get("concepts_sha256")
    if built_with != (meta.get("concepts") or {}).get("sha256"):
        raise ModelFileError(
            f"{path / NEIGHBOURS_NAME} was built with another concept head than the model's; run `python manage.py build_neighbours`"
        )
    return neighbours


def _load_optional(path: Path, meta: dict, key: str, default_name: str, load):
    """The optional file that meta.json names under ``key`` (read by ``load``, checksum checked), None when absent."""
    record = meta.get(key)
    if not record:
        return None
    if not isinstance(record, dict) or not record.get("sha256"):
        raise ModelFileError(f"{path / META_NAME}: '{key}' must name a file and its sha256")
    return load(path / record.get("file", default_name), expected_sha256=record["sha256"])
