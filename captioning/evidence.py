"""Visual evidence for a caption: rerank the beam's captions and say how far to trust the chosen one.

The captioner's language model likes stock phrases ("a man in a blue shirt"), so the beam's best
caption often names objects that are not in the photo. The concept head (captioning.concepts)
looks at the same features from another angle: it gives each word a calibrated probability that
people would use it for this photo. Two uses:

* **Reranking** (:class:`EvidenceReranker`): every candidate of the n-best list is scored
  ``log-prob score + weight * sum over its object groups of min(0, log(p / floor))
  + coverage * sum over the distinct head words it uses of p``: an object the head gives less
  than ``floor`` costs the caption in proportion to how unlikely it is (a well-supported one costs
  nothing), and words people are likely to use for the photo earn it a little (CIDEr rewards
  what most people say). Weight, floor and coverage are tuned on dev (meta.json ``reranking``).
* **Bias in the beam** (:class:`ObjectWordBias`): reranking can only choose among the captions
  the beam kept, and the beam's best five often all name the same stock object ("... in a blue
  shirt"). So, per photo, every vocabulary word that names an object group gets
  ``weight * min(0, log(p_group / floor))`` added to its log-probability at every step of the
  search (meta.json ``decoding.evidence_bias``): the beam keeps alternatives without the
  unsupported object, and the reranking then chooses among better candidates.
* **Confidence** (:class:`CaptionConfidence`): a logistic model on the caption's score, its
  weakest object's evidence and its coverage of likely words, fitted on dev against whether the caption was good (meta.json
  ``confidence``), so that 0.8 means about 8 in 10 such captions are good.

Object groups come from captioning.chair (the CHAIR word list); a group's probability is the
highest probability the head gives any of its words ("person" from "man", "woman", "boy", ...).
Groups the head has no word for give no evidence either way.

Plain Python + NumPy, no Django, no TensorFlow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence

import numpy as np

from .concepts import ConceptHead
from .chair import ObjectVocabulary, load_object_vocabulary, plural
from .vocabulary import normalize_words

class Candidate(Protocol):
    """A caption of the n-best list (captioning.inference.Candidate)."""

    score: float
    words: list[str]


# Probabilities are clipped here before taking logs (the head's calibrated floor is about 1e-3).
MIN_PROBABILITY = 1e-4


class VisualEvidence:
    """Per caption, the concept head's probability of each object group it names."""

    def __init__(self, head: ConceptHead, objects: ObjectVocabulary | None = None):
        self.objects = objects or load_object_vocabulary()
        columns: dict[str, list[int]] = {}
        for i, word in enumerate(head.words):
            group = self.objects.phrases.get(tuple(normalize_words(word)))
            if group is not None:
                columns.setdefault(group, []).append(i)
        self.columns = columns  # group -> concept columns of the head
        self.word_columns = {}  # written word -> its concept column (the head's word or its regular plural)
        for i, word in enumerate(head.words):
            self.word_columns.setdefault(plural(word), i)
        for i, word in enumerate(head.words):
            self.word_columns[word] = i

    def object_probabilities(self, words: Sequence[str], probabilities: np.ndarray) -> list[tuple[str, float]]:
        """(group, probability) of each object group the caption names that the head knows."""
        return [
            (group, float(max(probabilities[i] for i in self.columns[group])))
            for group in self.objects.groups_named(words)
            if group in self.columns
        ]

    def coverage(self, words: Sequence[str], probabilities: np.ndarray) -> float:
        """Sum of the head's probabilities of the distinct concept words the caption uses."""
        columns = {self.word_columns.get(w) for w in words} - {None}
        return float(sum(probabilities[i] for i in columns))

    def weakest_log_probability(self, words: Sequence[str], probabilities: np.ndarray) -> float:
        """log of the least supported object's probability; 0.0 for a caption naming no known object."""
        found = self.object_probabilities(words, probabilities)
        return min((math.log(max(p, MIN_PROBABILITY)) for _, p in found), default=0.0)

    def shortfall(self, words: Sequence[str], probabilities: np.ndarray, floor: float) -> float:
        """sum over named objects of min(0, log(p / floor)): 0 when all are at least ``floor`` likely."""
        return sum(min(0.0, math.log(max(p, MIN_PROBABILITY) / floor)) for _, p in self.object_probabilities(words, probabilities))


@dataclass
class EvidenceReranker:
    """Reorder an n-best list by log-prob score, ``weight`` x the objects' evidence shortfall and
    ``coverage`` x the likely words it uses."""

    evidence: VisualEvidence
    weight: float
    floor: float
    coverage: float = 0.0

    @classmethod
    def from_meta(cls, record: Mapping, evidence: VisualEvidence) -> "EvidenceReranker":
        """From meta.json ``reranking``: ``{"weight": ..., "floor": ..., "coverage": ...}``."""
        return cls(evidence, float(record["weight"]), float(record["floor"]), float(record.get("coverage", 0.0)))

    def adjusted(self, candidate: Candidate, probabilities: np.ndarray) -> float:
        words = candidate.words
        bonus = self.coverage * self.evidence.coverage(words, probabilities) if self.coverage else 0.0
        return candidate.score + self.weight * self.evidence.shortfall(words, probabilities, self.floor) + bonus

    def rank(self, candidates: Sequence[Candidate], probabilities: np.ndarray) -> list[Candidate]:
        """Best first; ties keep the search's order (a stable sort)."""
        return sorted(candidates, key=lambda c: -self.adjusted(c, probabilities))


class ObjectWordBias:
    """Per photo, a (vocabulary,) log-probability bias: ``weight * min(0, log(p_group / floor))``
    on each word that names an object group the head knows (its own name or its regular plural),
    0 on every other word. A group's probability is as in :class:`VisualEvidence`."""

    def __init__(self, evidence: VisualEvidence, index_word: Sequence[str], weight: float, floor: float):
        if weight < 0 or not 0 < floor <= 1:
            raise ValueError(f"evidence bias needs weight >= 0 and 0 < floor <= 1, got {weight} and {floor}")
        self.evidence, self.weight, self.floor, self.vocab_size = evidence, float(weight), float(floor), len(index_word)
        groups = sorted(evidence.columns)
        position = {g: k for k, g in enumerate(groups)}
        named = [(i, evidence.objects.phrases.get((word,))) for i, word in enumerate(index_word)]
        named = [(i, position[g]) for i, g in named if g in position]
        self.token_ids = np.array([i for i, _ in named], dtype=np.int64)  # vocabulary ids of object words
        self.token_groups = np.array([k for _, k in named], dtype=np.int64)  # their group's position in ``groups``
        self.group_columns = [evidence.columns[g] for g in groups]

    @classmethod
    def from_meta(cls, record: Mapping, evidence: VisualEvidence, index_word: Sequence[str]) -> "ObjectWordBias":
        """From meta.json ``decoding.evidence_bias``: ``{"weight": ..., "floor": ...}``."""
        return cls(evidence, index_word, float(record["weight"]), float(record["floor"]))

    def to_meta(self) -> dict:
        return {"weight": self.weight, "floor": self.floor}

    def of(self, probabilities: np.ndarray) -> np.ndarray:
        """(n, concepts) head probabilities -> (n, vocabulary) float32 bias (0 or negative)."""
        probabilities = np.asarray(probabilities, dtype=np.float64)
        group_p = np.stack([probabilities[:, cols].max(axis=1) for cols in self.group_columns], axis=1)
        shortfall = np.minimum(0.0, np.log(np.maximum(group_p, MIN_PROBABILITY) / self.floor))
        bias = np.zeros((len(probabilities), self.vocab_size), dtype=np.float32)
        bias[:, self.token_ids] = self.weight * shortfall[:, self.token_groups]
        return bias


@dataclass
class CaptionConfidence:
    """P(the caption is good | its score, its weakest object's evidence, its coverage): a fitted logistic model."""

    evidence: VisualEvidence
    coefficients: tuple[float, float, float]  # (score, weakest log-probability, coverage)
    intercept: float

    @classmethod
    def from_meta(cls, record: Mapping, evidence: VisualEvidence) -> "CaptionConfidence":
        """From meta.json ``confidence``: ``{"coefficients": [a, b, c], "intercept": d, ...}``."""
        a, b, c = record["coefficients"]
        return cls(evidence, (float(a), float(b), float(c)), float(record["intercept"]))

    def features(self, caption: Candidate, probabilities: np.ndarray) -> tuple[float, float, float]:
        words = caption.words
        return (
            caption.score,
            self.evidence.weakest_log_probability(words, probabilities),
            self.evidence.coverage(words, probabilities),
        )

    def of(self, caption: Candidate, probabilities: np.ndarray) -> float:
        x = self.features(caption, probabilities)
        z = self.intercept + sum(c * v for c, v in zip(self.coefficients, x))
        return float(0.5 * (1.0 + math.tanh(0.5 * z)))
