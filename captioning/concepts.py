"""Visual concept words: which words people would use for a photo, with calibrated probabilities.

A caption is one guess; the words that many people would use for a photo ("dog", "snow", "run",
"beach") can be predicted directly, each with its own probability, and make a far better search
description (a photo found by "snow" whether or not the caption says it). The head is a small
"wide and deep" network over the mean-pooled InceptionV3 features the captioner already computes:
one logit per concept word = a ReLU hidden layer's output plus a linear path straight from the
features (2048 -> hidden ReLU -> K, plus 2048 -> K). It is trained with binary cross-entropy on the
training captions against the share of a photo's captions that use the word (0.4 when 2 of 5
do), then temperature-scaled on a held-out slice of the training photos so that its probabilities
are calibrated (a word given 0.4 is used by about 40 % of the captions of such photos).

Why these choices (measured on the dev split with the search harness): the share is what search needs
(a photo is relevant to a word when at least 2 of its 5 captions use it; "any caption" targets
make a word used once in five look as certain as one used five times), and the linear path keeps
the rare words that the hidden layer alone underfits. Concept words alone, 100 per photo: sentence
R@10 45.6 -> 46.4, word mAP 23.4 -> 25.0 against the hidden-layer head trained on "any caption";
the whole description with the weighting these probabilities call for (200 words, p ** 0.6):
R@10 52.6, mAP 26.1 against 47.4 and 24.2.

Words are grouped by a key (the search index's term: "dogs" and "dog" are one concept), which the
caller supplies as a function, so this module knows nothing of the search index. Each concept is
shown as its most frequent written form.

File: ``concepts.npz`` in the model directory (arrays plus the words), its SHA-256 recorded in
meta.json and checked at load. Inference is plain NumPy (a few matrix products per batch).

Plain Python, no Django.
"""

from __future__ import annotations

import io
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from . import features as feature_store
from .files import ModelFileError, checked_model_file, write_atomic

CONCEPTS_NAME = "concepts.npz"
# A function returning (written word, key or None) for each word of a caption; None: not a concept (a stop word).
WordKeys = Callable[[str], Iterable[tuple[str, str | None]]]


@dataclass
class ConceptHead:
    words: list[str]  # display form of each concept
    keys: list[str]  # grouping key of each concept (the index term)
    w1: np.ndarray  # (2048, hidden)
    b1: np.ndarray
    w2: np.ndarray  # (hidden, K)
    b2: np.ndarray
    temperature: float = 1.0
    linear: np.ndarray | None = None  # (2048, K): the wide path from the features; None in heads without one

    def __post_init__(self):
        if not (len(self.words) == len(self.keys) == self.w2.shape[1] == len(self.b2)):
            raise ValueError("concept head: words, keys and output layer disagree in size")
        if self.w1.shape[1] != self.w2.shape[0] or len(self.b1) != self.w1.shape[1]:
            raise ValueError("concept head: hidden layer shapes disagree")
        if self.linear is not None and self.linear.shape != (self.w1.shape[0], self.w2.shape[1]):
            raise ValueError("concept head: the linear path's shape disagrees with the layers")

    @property
    def size(self) -> int:
        return len(self.words)

    def logits(self, features: np.ndarray) -> np.ndarray:
        """Uncalibrated logits for (n, 64, 2048) attention features or (n, 2048) pooled ones."""
        pooled = pool(features)
        hidden = np.maximum(pooled @ self.w1 + self.b1, 0.0)
        logits = hidden @ self.w2 + self.b2
        return logits if self.linear is None else logits + pooled @ self.linear

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (n, K) that people would use each word for each photo."""
        return _sigmoid(self.logits(features) / self.temperature)

    def ranked(self, probabilities: np.ndarray, *, min_probability: float, top_k: int) -> list[list[tuple[str, float]]]:
        """Per photo, the (word, probability) pairs above ``min_probability``, most probable first, at most ``top_k``."""
        out = []
        for row in np.atleast_2d(probabilities):
            order = np.argsort(-row, kind="stable")[:top_k]
            out.append([(self.words[i], round(float(row[i]), 4)) for i in order if row[i] >= min_probability])
        return out

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        buffer = io.BytesIO()
        arrays = dict(
            w1=self.w1.astype(np.float32), b1=self.b1.astype(np.float32), w2=self.w2.astype(np.float32),
            b2=self.b2.astype(np.float32), temperature=np.float32(self.temperature),
            words=np.array(self.words), keys=np.array(self.keys),
        )
        if self.linear is not None:
            arrays["linear"] = self.linear.astype(np.float32)
        np.savez(buffer, **arrays)
        write_atomic(path, lambda fh: fh.write(buffer.getvalue()))
        return path


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic


def pool(features: np.ndarray) -> np.ndarray:
    """Mean over the 64 locations of (n, 64, 2048) features; (n, 2048) passes through."""
    features = np.asarray(features, dtype=np.float32)
    return features.mean(axis=1) if features.ndim == 3 else features


def load_concept_head(path: str | os.PathLike, *, expected_sha256: str | None = None) -> ConceptHead:
    """Read ``concepts.npz``; raises ModelFileError naming the file for a missing, altered or unreadable one."""
    path = Path(path)
    checked_model_file(path, "concept head", expected_sha256=expected_sha256)
    try:
        with np.load(path, allow_pickle=False) as data:
            return ConceptHead(
                words=[str(w) for w in data["words"]], keys=[str(k) for k in data["keys"]],
                w1=data["w1"], b1=data["b1"], w2=data["w2"], b2=data["b2"], temperature=float(data["temperature"]),
                linear=data["linear"] if "linear" in data.files else None,
            )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelFileError(f"concept head file {path} cannot be read: {exc}") from exc


# ------------------------------------------------------------------------------------ training
@dataclass
class ConceptTargets:
    words: list[str]
    keys: list[str]
    labels: np.ndarray  # (n images, K) float32 in [0, 1]


def concept_targets(
    captions: Sequence[Sequence[str]],
    word_keys: WordKeys,
    *,
    min_images: int = 10,
    vocabulary: Sequence[str] | None = None,
    share: bool = True,
) -> ConceptTargets:
    """Multi-label targets: for concept k and an image, the share of the image's captions that use it.

    ``share=False``: 1 when any caption uses it (the first heads' targets; kept to compare). The
    concepts are the keys used for at least ``min_images`` images (or the given ``vocabulary`` of
    keys, e.g. to build dev targets for a trained head), each shown as its most frequent form.
    """
    per_image: list[tuple[Counter, int]] = []
    forms: dict[str, Counter] = {}
    for image_captions in captions:
        uses = Counter()  # key -> captions of this image using it
        for caption in image_captions:
            keys = set()
            for written, key in word_keys(caption):
                if key:
                    keys.add(key)
                    forms.setdefault(key, Counter())[written.lower()] += 1
            uses.update(keys)
        per_image.append((uses, max(1, len(image_captions))))
    if vocabulary is None:
        counts = Counter(key for uses, _ in per_image for key in uses)
        vocabulary = sorted((k for k, c in counts.items() if c >= min_images), key=lambda k: (-counts[k], k))
    index = {key: i for i, key in enumerate(vocabulary)}
    labels = np.zeros((len(per_image), len(vocabulary)), dtype=np.float32)
    for row, (uses, total) in enumerate(per_image):
        for key, used in uses.items():
            if key in index:
                labels[row, index[key]] = used / total if share else 1.0
    words = [forms[k].most_common(1)[0][0] if k in forms else k for k in vocabulary]
    return ConceptTargets(words, list(vocabulary), labels)


def binary_cross_entropy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy of probabilities against labels in [0, 1] (probabilities clipped away from 0 and 1)."""
    p = np.clip(probabilities, 1e-7, 1 - 1e-7)
    return float(-(labels * np.log(p) + (1 - labels) * np.log(1 - p)).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T minimising the binary cross-entropy of sigmoid(logits / T) (a 1-D search)."""
    def loss(t):
        return binary_cross_entropy(_sigmoid(logits / t), labels)

    grid = np.exp(np.linspace(math.log(0.25), math.log(4.0), 49))
    best = min(grid, key=loss)
    fine = best * np.exp(np.linspace(-0.06, 0.06, 25))
    return float(min(fine, key=loss))


def train_concept_head(
    pooled: np.ndarray,
    targets: ConceptTargets,
    *,
    hidden: int = 512,
    dropout: float = 0.5,
    epochs: int = 40,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    calibration_share: float = 0.1,
    patience: int = 4,
    seed: int = 1234,
    linear: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[ConceptHead, dict]:
    """Train the head on pooled features (n, 2048) with early stopping and temperature scaling.

    A ``calibration_share`` of the images (chosen at random with ``seed``) is held out: it picks
    the best epoch and the temperature. ``linear``: add the wide path (features -> logits) beside
    the hidden layer. Returns the head and a report (losses, temperature).
    """
    import keras

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pooled))
    n_held = max(1, int(len(pooled) * calibration_share))
    held, train = order[:n_held], order[n_held:]
    x, y = pooled.astype(np.float32), targets.labels
    inputs = keras.Input((x.shape[1],))
    h = keras.layers.Dense(hidden, activation="relu", name="hidden")(keras.layers.Dropout(0.2)(inputs))
    out = keras.layers.Dense(y.shape[1], name="logits")(keras.layers.Dropout(dropout)(h))
    if linear:
        wide = keras.layers.Dense(y.shape[1], use_bias=False, name="linear")(keras.layers.Dropout(0.2)(inputs))
        out = keras.layers.Add()([out, wide])
    model = keras.Model(inputs, out)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=keras.losses.BinaryCrossentropy(from_logits=True))
    stop = keras.callbacks.EarlyStopping(patience=patience, restore_best_weights=True, monitor="val_loss")
    history = model.fit(
        x[train], y[train], validation_data=(x[held], y[held]), epochs=epochs, batch_size=batch_size,
        callbacks=[stop], verbose=0, shuffle=True,
    )
    losses = history.history["val_loss"]
    best_epoch = int(np.argmin(losses)) + 1
    log(f"concept head: {y.shape[1]} words, best epoch {best_epoch} of {len(losses)}, held-out BCE {min(losses):.4f}")
    w1, b1 = model.get_layer("hidden").get_weights()
    w2, b2 = model.get_layer("logits").get_weights()
    head = ConceptHead(targets.words, targets.keys, w1, b1, w2, b2, linear=model.get_layer("linear").get_weights()[0] if linear else None)
    held_logits = head.logits(x[held])
    head.temperature = fit_temperature(held_logits, y[held])
    log(f"concept head: temperature {head.temperature:.3f}")
    report = {
        "words": head.size, "hidden": hidden, "linear_path": linear, "dropout": dropout, "epochs_run": len(losses), "best_epoch": best_epoch,
        "held_out_images": int(n_held), "held_out_bce": round(float(min(losses)), 5),
        "temperature": round(head.temperature, 4), "seed": seed,
    }
    return head, report


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = 10) -> list[dict]:
    """Per probability bin: mean predicted probability, observed share of positives, count."""
    p, y = probabilities.ravel(), labels.ravel()
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges) - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        mask = which == b
        if mask.any():
            rows.append({"from": round(float(edges[b]), 2), "to": round(float(edges[b + 1]), 2),
                         "predicted": round(float(p[mask].mean()), 4), "observed": round(float(y[mask].mean()), 4),
                         "count": int(mask.sum())})
    return rows


def pooled_from_cache(cache_dir: str | os.PathLike, names: Sequence[str]) -> np.ndarray:
    """Mean-pooled (n, 2048) features of cached images (captioning.features' cache)."""
    return np.stack([pool(feature_store.load_feature(cache_dir, n)[None])[0] for n in names])
