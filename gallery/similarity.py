"""Search by photo, second pass: re-saved copies first, then the text ranking nudged by visual likeness.

The text search (the query photo's whole description against the index) finds photos that are
described alike; among its best RERANK_DEPTH candidates, the visual fingerprints
(captioning.fingerprints) tell which one is the same photo. A candidate whose fingerprint cosine
with the query reaches ``duplicate_above`` is a copy and goes first (most alike first); the others
are ordered by ``(text score + w x cosine) / (1 + w)``, w = ``SearchWeights.fingerprint``. A
candidate without a fingerprint of the same projection (captioned by an older model) keeps its
text score and counts a cosine of 0, what unrelated photos average. Both numbers are tuned on the
dev split (``evaluate_search --tune``) and recorded with the model.

Plain functions over hits and vectors: the gallery's search and the search-quality harness share them.
"""

from dataclasses import replace

import numpy as np

from captioning.fingerprints import cosines
from searchindex.index import Hit

from .descriptions import SearchWeights

RERANK_DEPTH = 200  # text hits looked at again with the fingerprints


def uses_fingerprints(weights: SearchWeights) -> bool:
    return weights.fingerprint > 0 or weights.duplicate_above <= 1


def rerank(hits: list[Hit], query: np.ndarray | None, stored: dict[int, np.ndarray], weights: SearchWeights) -> list[Hit]:
    """The hits in their new order, each with its combined score; unchanged without a query fingerprint."""
    if query is None or not uses_fingerprints(weights):
        return list(hits)
    known = [hit.doc_id for hit in hits if hit.doc_id in stored]
    alike = dict(zip(known, cosines(query, np.stack([stored[i] for i in known])).tolist())) if known else {}
    w = weights.fingerprint

    def combined(hit: Hit) -> float:
        return (hit.score + w * alike.get(hit.doc_id, 0.0)) / (1 + w)

    copies = [hit for hit in hits if alike.get(hit.doc_id, -1.0) >= weights.duplicate_above]
    copies.sort(key=lambda hit: (-alike[hit.doc_id], hit.doc_id))
    taken = {hit.doc_id for hit in copies}
    others = sorted((hit for hit in hits if hit.doc_id not in taken), key=lambda hit: (-combined(hit), hit.doc_id))
    return [replace(hit, score=combined(hit)) for hit in copies + others]
