"""CIDEr-D of word lists against per-image references, with document frequencies fixed once.

Two users score many captions against a fixed set of references: self-critical training
(captioning.scst: the reward of a sampled caption against its image's training captions) and
consensus reranking (captioning.consensus: a candidate caption against the captions of visually
similar training photos). Both want pycocoevalcap's figures without its per-call set-up.

Plain Python, no Django, no TensorFlow.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

from .vocabulary import END


class CiderD:
    """CIDEr-D (pycocoevalcap's ``Cider``: clipped counts, Gaussian length penalty sigma 6, x10)
    of word lists against per-image references, with document frequencies fixed once.

    ``references``: per image, its reference captions as word lists. The document frequency of an
    n-gram is the number of images whose references contain it, as in pycocoevalcap, so scoring
    with the references a test split brings reproduces its figures; for training, the document
    frequencies come from the training captions. ``end_token`` appends ``<end>`` to every caption.

    An image's reference vectors are computed the first time it is scored and kept (consensus
    reranking touches a few hundred of the training images per photo, not all of them).
    """

    def __init__(self, references: Sequence[Sequence[Sequence[str]]], *, n: int = 4, sigma: float = 6.0, end_token: bool = False):
        self.n, self.sigma, self.end_token = n, sigma, end_token
        self._counted = [[self._counts(words) for words in refs] for refs in references]
        self.document_frequency: Counter = Counter()
        for refs in self._counted:
            self.document_frequency.update({g for counts in refs for g in counts})
        self.log_images = math.log(float(len(references)))
        self._vectors: dict[int, list] = {}

    def _counts(self, words: Sequence[str]) -> Counter:
        words = list(words) + [END] if self.end_token else list(words)
        return Counter(tuple(words[i : i + k]) for k in range(1, self.n + 1) for i in range(len(words) - k + 1))

    def _vector(self, counts: Counter):
        """(per-n dict n-gram -> tf-idf, per-n norms, length) as pycocoevalcap's counts2vec."""
        vec = [{} for _ in range(self.n)]
        norm = [0.0] * self.n
        length = 0
        for gram, tf_ in counts.items():
            k = len(gram) - 1
            value = float(tf_) * (self.log_images - math.log(max(1.0, self.document_frequency.get(gram, 0.0))))
            vec[k][gram] = value
            norm[k] += value * value
            if k == 1:  # pycocoevalcap counts the bigrams as the length; kept for equal figures
                length += tf_
        return vec, [math.sqrt(x) for x in norm], length

    def references(self, image: int) -> list:
        """The reference vectors of image ``image`` (its index in ``references``), computed once."""
        found = self._vectors.get(image)
        if found is None:
            found = self._vectors[image] = [self._vector(counts) for counts in self._counted[image]]
        return found

    def score(self, image: int, words: Sequence[str]) -> float:
        """CIDEr-D of one caption (word list) of image ``image`` (its index in ``references``)."""
        return self.scores([image], words)[0]

    def scores(self, images: Sequence[int], words: Sequence[str]) -> list[float]:
        """CIDEr-D of one caption against each of ``images``' references (its n-grams counted once)."""
        hyp_vec, hyp_norm, hyp_len = self._vector(self._counts(words))
        out = []
        for image in images:
            refs = self.references(image)
            total = 0.0
            for ref_vec, ref_norm, ref_len in refs:
                penalty = math.exp(-((hyp_len - ref_len) ** 2) / (2 * self.sigma**2))
                for k in range(self.n):
                    if hyp_norm[k] and ref_norm[k]:
                        ref_k = ref_vec[k]
                        dot = sum(min(v, ref_k[g]) * ref_k[g] for g, v in hyp_vec[k].items() if g in ref_k)
                        total += penalty * dot / (hyp_norm[k] * ref_norm[k])
            out.append(10.0 * total / (self.n * len(refs)))
        return out
