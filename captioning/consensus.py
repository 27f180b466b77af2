"""Consensus reranking: prefer the candidate caption that people wrote for visually similar photos.

Devlin et al. 2015 ("Exploring nearest neighbor approaches for image captioning") caption a photo
with the training caption that agrees most with the captions of its nearest training photos. Here
the agreement reranks the beam's own candidates instead: each candidate of the n-best list earns

    consensus = mean over the k nearest training photos of CIDEr-D(candidate, that photo's captions)

with document frequencies of all training captions, and the caption shown is the one with the
highest ``evidence-reranked score + weight * consensus`` (:class:`ConsensusReranker`; weight and k
are tuned on dev, meta.json ``reranking.consensus``). CIDEr-D rewards what most people say about
a photo; the neighbours' captions are an estimate of that, so candidates in their words win.

Nearness is the cosine of the photos' concept vectors: the square roots of the concept head's
word probabilities (captioning.concepts), unit length, projected on their first principal
directions (fitted on the training photos, no centring, so dot products stay cosines). The
captioner computes those probabilities for every photo anyway, so a query costs one small
matrix product.

``neighbours.npz`` in the model directory (its SHA-256 in meta.json ``neighbours``, checked at
load) holds the training photos' projected vectors (float16), the projection, and their captions
as word ids (flat array + offsets): no pickles. It carries the Flickr8k training captions, so the
model directory falls under Flickr8k's research-use terms (M. Hodosh et al. 2013).

Plain Python + NumPy, no Django, no TensorFlow.
"""

from __future__ import annotations

import functools
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .cider import CiderD
from .files import ModelFileError, checked_model_file, write_atomic

NEIGHBOURS_NAME = "neighbours.npz"
# 256 directions keep dev CIDEr-D with consensus within 0.2 of the full 1,108-word vectors (see build_neighbours).
DEFAULT_DIMENSIONS = 256
STORED_DTYPE = np.dtype("<f2")


def concept_vectors(probabilities: np.ndarray) -> np.ndarray:
    """Unit (n, K) vectors of the square roots of (n, K) concept probabilities (a 1-D row gives (1, K))."""
    roots = np.sqrt(np.maximum(np.atleast_2d(np.asarray(probabilities, dtype=np.float32)), 0.0))
    return roots / np.maximum(np.linalg.norm(roots, axis=1, keepdims=True), 1e-12)


@dataclass
class NeighbourCaptions:
    """The training photos a photo is compared with: their concept vectors and their captions."""

    keys: np.ndarray  # (photos, d) projected concept vectors, float16
    projection: np.ndarray  # (K, d): concept vector -> key space
    words: list[str]  # the distinct caption words; tokens index them
    tokens: np.ndarray  # (T,) word ids of all captions, one after the other
    caption_starts: np.ndarray  # (captions + 1,) where each caption starts in tokens
    photo_starts: np.ndarray  # (photos + 1,) where each photo's captions start in the captions
    key: str = ""  # SHA-256 of the file it was loaded from

    def __post_init__(self):
        photos, captions = len(self.photo_starts) - 1, len(self.caption_starts) - 1
        if self.keys.ndim != 2 or self.projection.ndim != 2 or self.keys.shape != (photos, self.projection.shape[1]):
            raise ValueError("neighbour captions: keys, projection and photos disagree in size")
        if photos < 1 or self.photo_starts[0] != 0 or self.photo_starts[-1] != captions or np.any(np.diff(self.photo_starts) < 1):
            raise ValueError("neighbour captions: every photo needs at least one caption")
        if self.caption_starts[0] != 0 or self.caption_starts[-1] != len(self.tokens) or np.any(np.diff(self.caption_starts) < 1):
            raise ValueError("neighbour captions: caption offsets do not cover the tokens")
        if len(self.tokens) and (self.tokens.min() < 0 or self.tokens.max() >= len(self.words)):
            raise ValueError("neighbour captions: a token is not a word of the list")

    @property
    def photos(self) -> int:
        return len(self.keys)

    @property
    def concept_size(self) -> int:
        """How many concept words the query probabilities must have."""
        return int(self.projection.shape[0])

    def captions(self, photo: int) -> list[list[str]]:
        """The captions (word lists) of training photo ``photo``."""
        starts = self.caption_starts[self.photo_starts[photo] : self.photo_starts[photo + 1] + 1]
        return [[self.words[t] for t in self.tokens[a:b]] for a, b in zip(starts[:-1], starts[1:])]

    @functools.cached_property
    def _keys(self) -> np.ndarray:
        return self.keys.astype(np.float32)

    @functools.cached_property
    def cider(self) -> CiderD:
        """CIDEr-D against the training photos' captions, with their document frequencies (built on first use, ~1 s)."""
        return CiderD([self.captions(i) for i in range(self.photos)])

    def nearest(self, probabilities: np.ndarray, k: int) -> np.ndarray:
        """The ``k`` training photos nearest to a photo of concept ``probabilities`` (K,), nearest first."""
        similarity = self._keys @ (concept_vectors(probabilities)[0] @ self.projection)
        k = min(int(k), self.photos)
        top = np.argpartition(-similarity, k - 1)[:k]
        return top[np.argsort(-similarity[top], kind="stable")]

    def agreement(self, captions: Sequence[Sequence[str]], probabilities: np.ndarray, k: int) -> np.ndarray:
        """(len(captions), k): CIDEr-D of each caption (word list) against each of the k nearest photos' captions."""
        return self.cider.scores([int(i) for i in self.nearest(probabilities, k)], captions)

    def consensus(self, captions: Sequence[Sequence[str]], probabilities: np.ndarray, k: int) -> np.ndarray:
        """Per caption, its mean CIDEr-D against the captions of the k nearest training photos."""
        return self.agreement(captions, probabilities, k).mean(axis=1)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer, keys=self.keys.astype(STORED_DTYPE), projection=self.projection.astype(np.float32),
            words=np.array(self.words), tokens=self.tokens.astype(np.int32), caption_starts=self.caption_starts.astype(np.int32),
            photo_starts=self.photo_starts.astype(np.int32),
        )
        write_atomic(path, lambda fh: fh.write(buffer.getvalue()))
        return path


def build_neighbours(probabilities: np.ndarray, captions: Sequence[Sequence[Sequence[str]]], *,
                     dimensions: int | None = DEFAULT_DIMENSIONS) -> NeighbourCaptions:
    """Neighbour captions from training photos' (n, K) concept probabilities and their captions (word lists).

    ``dimensions``: principal directions kept (None or >= K: the full vectors, an identity projection).
    """
    vectors = concept_vectors(probabilities).astype(np.float64)
    if len(vectors) != len(captions):
        raise ValueError(f"{len(vectors)} photos of probabilities but {len(captions)} of captions")
    size = vectors.shape[1]
    if dimensions is None or dimensions >= size:
        projection = np.eye(size)
    else:
        _, _, vt = np.linalg.svd(vectors, full_matrices=False)  # uncentred: dot products stay cosines
        projection = vt[:dimensions].T
    words: dict[str, int] = {}
    tokens, caption_starts, photo_starts = [], [0], [0]
    for photo in captions:
        for caption in photo:
            if not caption:
                continue
            tokens += [words.setdefault(w, len(words)) for w in caption]
            caption_starts.append(len(tokens))
        photo_starts.append(len(caption_starts) - 1)
    return NeighbourCaptions(
        keys=(vectors @ projection).astype(STORED_DTYPE), projection=projection.astype(np.float32), words=list(words),
        tokens=np.array(tokens, dtype=np.int32), caption_starts=np.array(caption_starts, dtype=np.int32),
        photo_starts=np.array(photo_starts, dtype=np.int32),
    )


def load_neighbours(path: str | os.PathLike, *, expected_sha256: str | None = None) -> NeighbourCaptions:
    """Read ``neighbours.npz``; raises ModelFileError naming the file for a missing, altered or unreadable one."""
    path = Path(path)
    key = checked_model_file(path, "neighbour captions", expected_sha256=expected_sha256,
                             missing_hint="reinstall the model directory or run `python manage.py build_neighbours`")
    try:
        with np.load(path, allow_pickle=False) as data:
            return NeighbourCaptions(
                keys=data["keys"], projection=data["projection"], words=[str(w) for w in data["words"]],
                tokens=data["tokens"], caption_starts=data["caption_starts"], photo_starts=data["photo_starts"], key=key,
            )
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise ModelFileError(f"neighbour captions file {path} cannot be read: {exc}") from exc


@dataclass
class ConsensusReranker:
    """Rerank an n-best list by another reranker's adjusted score + ``weight`` x consensus with ``k`` neighbours.

    ``reranker``: the visual-evidence reranker (captioning.evidence.EvidenceReranker), or anything
    with ``adjusted(candidate, probabilities)``.
    """

    reranker: object
    neighbours: NeighbourCaptions
    weight: float
    k: int

    @classmethod
    def from_meta(cls, record: Mapping, reranker, neighbours: NeighbourCaptions | None) -> "ConsensusReranker":
        """From meta.json ``reranking.consensus``: ``{"weight": ..., "neighbours": k}``."""
        if neighbours is None:
            raise ModelFileError(f"meta.json asks for consensus reranking but the model directory has no {NEIGHBOURS_NAME}; "
                                 "run `python manage.py build_neighbours`")
        return cls(reranker, neighbours, float(record["weight"]), int(record["neighbours"]))

    def scores(self, candidates: Sequence, probabilities: np.ndarray) -> list[float]:
        base = [self.reranker.adjusted(c, probabilities) for c in candidates]
        if not self.weight:
            return base
        agreement = self.neighbours.consensus([c.words for c in candidates], probabilities, self.k)
        return [b + self.weight * float(a) for b, a in zip(base, agreement)]

    def rank(self, candidates: Sequence, probabilities: np.ndarray) -> list:
        """Best first; ties keep the search's order (a stable sort)."""
        scores = self.scores(candidates, probabilities)
        order = sorted(range(len(candidates)), key=lambda i: -scores[i])
        return [candidates[i] for i in order]
