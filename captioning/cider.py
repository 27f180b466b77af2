"""CIDEr-D of word lists against per-image references, with document frequencies fixed once.

Two users score many captions against a fixed set of references: self-critical training
(captioning.scst: the reward of a sampled caption against its image's training captions) and
consensus reranking (captioning.consensus: a candidate caption against the captions of visually
similar training photos). Both want pycocoevalcap's figures without its per-call set-up.

Plain Python + NumPy, no Django, no TensorFlow.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .vocabulary import END


class CiderD:
    """CIDEr-D (pycocoevalcap's ``Cider``: clipped counts, Gaussian length penalty sigma 6, x10)
    of word lists against per-image references, with document frequencies fixed once.

    ``references``: per image, its reference captions as word lists. The document frequency of an
    n-gram is the number of images whose references contain it, as in pycocoevalcap, so scoring
    with the references a test split brings reproduces its figures; for training, the document
    frequencies come from the training captions. ``end_token`` appends ``<end>`` to every caption.

    An image's reference vectors are computed the first time it is scored and kept, as flat arrays
    (all 6,090 Flickr8k training photos: ~25 MB). A caption is scored against many images in one
    vectorised pass (:meth:`scores`): consensus reranking scores 5 candidates against 75 captions
    per photo. N-grams are known by their Python hash within a process.
    """

    def __init__(self, references: Sequence[Sequence[Sequence[str]]], *, n: int = 4, sigma: float = 6.0, end_token: bool = False):
        self.n, self.sigma, self.end_token = n, sigma, end_token
        self._references = references
        # Document frequencies as sorted n-gram hashes and counts: a few MB where a dict of n-gram
        # tuples takes ~140 MB for Flickr8k's 30,450 training captions (a serving process keeps it).
        per_image = [np.fromiter({hash(g) for words in refs for g in self._counts(words)}, np.int64) for refs in references]
        self._df_keys, self._df_counts = np.unique(np.concatenate(per_image + [np.zeros(0, np.int64)]), return_counts=True)
        self.log_images = math.log(float(len(references)))
        self._vectors: dict[int, _Grams] = {}

    def _document_frequency(self, hashes: np.ndarray) -> np.ndarray:
        """How many images' references contain each n-gram (given by its hash)."""
        if not len(self._df_keys):
            return np.zeros(len(hashes))
        at = np.minimum(np.searchsorted(self._df_keys, hashes), len(self._df_keys) - 1)
        return np.where(self._df_keys[at] == hashes, self._df_counts[at], 0)

    def _counts(self, words: Sequence[str]) -> Counter:
        words = list(words) + [END] if self.end_token else list(words)
        return Counter(tuple(words[i : i + k]) for k in range(1, self.n + 1) for i in range(len(words) - k + 1))

    def _arrays(self, captions: Sequence[Sequence[str]]) -> _Grams:
        """The tf-idf n-gram vectors of word lists, as flat arrays (pycocoevalcap's counts2vec)."""
        hashes, caption, order, tf = [], [], [], []
        for i, words in enumerate(captions):
            for gram, count in self._counts(words).items():
                hashes.append(hash(gram))
                caption.append(i)
                order.append(len(gram) - 1)
                tf.append(count)
        hashes = np.array(hashes, dtype=np.int64)
        caption, order, tf = np.array(caption, dtype=np.int64), np.array(order, dtype=np.int64), np.array(tf, dtype=np.float64)
        value = tf * (self.log_images - np.log(np.maximum(1.0, self._document_frequency(hashes))))
        cells = len(captions) * self.n
        norms = np.sqrt(np.bincount(caption * self.n + order, weights=value * value, minlength=cells)).reshape(len(captions), self.n)
        # pycocoevalcap counts the bigrams as the length; kept for equal figures
        lengths = np.bincount(caption, weights=np.where(order == 1, tf, 0.0), minlength=len(captions))
        sorting = np.argsort(hashes, kind="stable")
        return _Grams(hashes[sorting], caption[sorting], order[sorting], value[sorting], norms, lengths)

    def references(self, image: int) -> _Grams:
        """The reference vectors of image ``image`` (its index in ``references``), kept once computed."""
        found = self._vectors.get(image)
        if found is None:
            found = self._vectors[image] = self._arrays(self._references[image])
        return found

    def score(self, image: int, words: Sequence[str]) -> float:
        """CIDEr-D of one caption (word list) of image ``image`` (its index in ``references``)."""
        return float(self.scores([image], [words])[0, 0])

    def scores(self, images: Sequence[int], captions: Sequence[Sequence[str]]) -> np.ndarray:
        """(len(captions), len(images)): CIDEr-D of each caption (word list) against each image's references."""
        hyp = self._arrays(captions)
        parts = [self.references(i) for i in images]
        per_image = np.array([len(part.norms) for part in parts], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(per_image)[:-1]])
        ref = _Grams.concatenate(parts, offsets)
        # Every (hypothesis n-gram, reference n-gram) pair with the same n-gram.
        lo, hi = np.searchsorted(ref.hashes, hyp.hashes, "left"), np.searchsorted(ref.hashes, hyp.hashes, "right")
        matches = hi - lo
        h = np.repeat(np.arange(len(hyp.hashes)), matches)
        r = np.repeat(lo - np.cumsum(matches) + matches, matches) + np.arange(matches.sum())
        r = ref.sorting[r]
        hv, rv = hyp.values[h], ref.values[r]
        norm = hyp.norms[hyp.captions[h], hyp.orders[h]] * ref.norms[ref.captions[r], ref.orders[r]]
        dot = np.divide(np.minimum(hv, rv) * rv, norm, out=np.zeros_like(norm), where=norm > 0)
        totals = np.zeros((len(hyp.norms), len(ref.norms)))
        np.add.at(totals, (hyp.captions[h], ref.captions[r]), dot)
        totals *= np.exp(-((hyp.lengths[:, None] - ref.lengths[None, :]) ** 2) / (2 * self.sigma**2))
        image_of = np.repeat(np.arange(len(parts)), per_image)
        summed = np.zeros((len(hyp.norms), len(parts)))
        np.add.at(summed, (slice(None), image_of), totals)
        return 10.0 * summed / (self.n * per_image[None, :])


@dataclass
class _Grams:
    """The n-grams of some captions sorted by hash: hash, caption, order (n - 1) and tf-idf value of each;
    per caption the norm of each order's vector and the length."""

    hashes: np.ndarray
    captions: np.ndarray
    orders: np.ndarray
    values: np.ndarray
    norms: np.ndarray  # (captions, n)
    lengths: np.ndarray  # (captions,)
    sorting: np.ndarray | None = None  # set on concatenations: sorted position -> row

    def __post_init__(self):
        if self.sorting is None:
            self.sorting = np.arange(len(self.hashes))

    @classmethod
    def concatenate(cls, parts: Sequence["_Grams"], caption_offsets: np.ndarray) -> "_Grams":
        """One set of the captions of all parts (caption indices shifted by ``caption_offsets``), sorted by hash."""
        hashes = np.concatenate([p.hashes for p in parts])
        sorting = np.argsort(hashes, kind="stable")
        return cls(
            hashes[sorting],
            np.concatenate([p.captions + o for p, o in zip(parts, caption_offsets)]),
            np.concatenate([p.orders for p in parts]),
            np.concatenate([p.values for p in parts]),
            np.concatenate([p.norms for p in parts]),
            np.concatenate([p.lengths for p in parts]),
            sorting,
        )
