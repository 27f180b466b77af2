"""What the search index holds for a photo: its description as weighted fields.

A photo is described by several sources, each with a confidence: the caption people read (a
person's caption when there is one), the other distinct captions of the model's beam search, and
tag words of two kinds (the captioner's visual concept words, the ImageNet classifier's object
labels) with their probabilities. Each source enters the index as fields with its own weight; a tag's weight is
its probability (for concept words raised to ``concept_power``) times the weight of its kind. The weights are tuned on the dev split with
``manage.py evaluate_search`` and recorded with the model (meta.json ``search``), so the same
numbers describe stored photos, query photos and the harness's photos.
"""

from dataclasses import asdict, dataclass, fields

from searchindex.index import Field


@dataclass(frozen=True)
class SearchWeights:
    caption: float = 1.0  # weight of each word of the active caption
    alternatives: float = 0.0  # weight of each word of each other beam caption (model captions only)
    max_alternatives: int = 3
    concepts: float = 0.0  # a concept word's weight = this x its probability ** concept_power
    concept_power: float = 1.0  # below 1 flattens the probabilities: the many likely-but-unsure words count more
    concept_min_probability: float = 0.05  # concept words below this are not indexed
    concept_top_k: int = 30  # at most this many concept words per photo
    tag_min_probability: float = 0.5  # concept words shown as tags on the pages
    objects: float = 0.0  # an object label's weight = this x its probability
    object_min_probability: float = 0.2  # object labels below this are not indexed
    object_top_k: int = 10  # at most this many object labels per photo
    object_tag_min_probability: float = 0.3  # object labels shown as tags on the pages
    weak_match_below: float = 0.0  # results scoring below this are listed after "weaker matches"
    # Search by photo: a candidate's score = (text score + fingerprint x fingerprint cosine) / (1 + fingerprint),
    # and a candidate whose fingerprint cosine reaches duplicate_above is a copy and goes first (above 1: never).
    fingerprint: float = 0.0
    duplicate_above: float = 2.0

    @classmethod
    def from_meta(cls, meta: dict) -> "SearchWeights":
        """The tuned weights recorded in a model's meta.json (``search``); defaults where absent."""
        recorded = (meta or {}).get("search") or {}
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in recorded.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)


def document_fields(
    caption: str,
    *,
    alternatives=(),
    concepts=(),
    objects=(),
    weights: SearchWeights,
) -> list[Field]:
    """The weighted fields of a photo's description.

    caption: the text people read; alternatives: [(text, score), ...] of the model's beam, best
    first; concepts and objects: [(word, probability), ...], most probable first.
    """
    out = [Field(caption, weights.caption)] if caption else []
    if weights.alternatives > 0:
        out += [Field(text, weights.alternatives) for text, _ in list(alternatives)[: weights.max_alternatives]]
    if weights.concepts > 0:
        kept = [(w, p) for w, p in concepts if p >= weights.concept_min_probability][: weights.concept_top_k]
        out += [Field(word, weights.concepts * probability**weights.concept_power) for word, probability in kept]
    if weights.objects > 0:
        kept = [(w, p) for w, p in objects if p >= weights.object_min_probability][: weights.object_top_k]
        out += [Field(word, weights.objects * probability) for word, probability in kept]
    return out
