"""The search-quality harness: how often search finds the right photos, on a split of Flickr8k.

The photos of a split are described by the captioner (from the feature cache, and the object
labels from the cache of the ImageNet classifier's outputs when there is one), indexed in a
scratch in-memory index (searchindex.index.MemoryIndex: the product's own ranking, no database),
and searched with:

* sentence queries: each photo's first human caption; the target is that photo (R@1/5/10, MRR);
* word queries: the most frequent content words of the human captions; a photo is relevant when
  at least 2 of its 5 captions use the word (mAP over the top 100, P@10);
* re-saved copies: each photo resized to half, cropped by 10 % and saved as JPEG quality 70,
  described like an upload and searched with its whole description, the best candidates then
  reordered by visual fingerprint as search by photo does (gallery.similarity); the target is the
  original (R@1, R@5, with and without the fingerprints).

The same queries run against an index of one human caption per photo (the second, so that no
sentence query is its own document): the reference a perfect captioner would reach.

Plain functions over plain data; the ``evaluate_search`` command is the glue.
"""

import io
import math
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from captioning import features as feature_store
from captioning.images import to_rgb
from searchindex.index import Field, MemoryIndex, tokens

from .descriptions import SearchWeights, document_fields
from .similarity import RERANK_DEPTH, rerank

DEPTH = 100  # ranks looked at per query
WORD_QUERIES = 100
MIN_CAPTIONS_FOR_RELEVANT = 2


@dataclass
class PhotoDescription:
    """The harness's copy of what the captioner says of one photo."""

    caption: str
    alternatives: list
    concepts: list
    objects: list
    fingerprint: np.ndarray | None = None


def describe_cached(captioner, names, cache_dir, *, class_dir=None, progress=None) -> dict[str, PhotoDescription]:
    """Describe photos from their cached InceptionV3 features (and cached class probabilities, if ``class_dir``)."""
    out = {}
    step = captioner.batch_size * 4
    for start in range(0, len(names), step):
        chunk = names[start : start + step]
        feats = feature_store.load_features(cache_dir, chunk).astype(np.float32)
        classes = feature_store.load_class_probabilities(class_dir, chunk) if class_dir else None
        for name, d in zip(chunk, captioner.describe_features(feats, class_probabilities=classes)):
            out[name] = PhotoDescription(d.caption.text, d.caption.alternatives, d.concepts, d.objects, d.fingerprint)
        if progress:
            progress(len(chunk))
    return out


def resaved_copy(path) -> bytes:
    """The photo as someone's re-saved copy: half size, 10 % cropped off (5 % each side), JPEG quality 70."""
    with PILImage.open(path) as im:
        im.load()
        rgb = to_rgb(im)
    w, h = rgb.size
    rgb = rgb.crop((round(w * 0.05), round(h * 0.05), round(w * 0.95), round(h * 0.95)))
    rgb = rgb.resize((max(1, rgb.width // 2), max(1, rgb.height // 2)), PILImage.Resampling.BILINEAR)
    buffer = io.BytesIO()
    rgb.save(buffer, "JPEG", quality=70)
    return buffer.getvalue()


def cache_resaved_features(names, images_dir, cache_dir, *, feature_dir, class_dir=None, precision="fp32", progress=True) -> None:
    """Featurise the re-saved copies once (they take an InceptionV3 pass each, in ``precision``; and a classifier pass with ``class_dir``)."""
    missing = [n for n in names if not feature_store.cache_path(cache_dir, n).is_file()
               or (class_dir and not feature_store.cache_path(class_dir, n).is_file())]
    copies = [(n, resaved_copy(Path(images_dir) / n)) for n in missing]
    feature_store.cache_features(copies, cache_dir, feature_dir=feature_dir, precision=precision, progress=progress)
    if class_dir:
        feature_store.cache_class_probabilities(copies, class_dir, feature_dir=feature_dir, progress=progress)


def word_queries(references: dict[str, list[str]], count: int = WORD_QUERIES) -> list[tuple[str, set[str]]]:
    """The most frequent content words of the captions, each with the photos at least 2 captions use it for."""
    per_photo: dict[str, Counter] = {}
    frequency, forms = Counter(), {}
    for name, captions in references.items():
        used = Counter()
        for caption in captions:
            terms = set()
            for surface, term, _, _ in tokens(caption):
                if term:
                    terms.add(term)
                    frequency[term] += 1
                    forms.setdefault(term, Counter())[surface.lower()] += 1
            used.update(terms)
        per_photo[name] = used
    out = []
    for term, _ in frequency.most_common():
        relevant = {n for n, used in per_photo.items() if used[term] >= MIN_CAPTIONS_FOR_RELEVANT}
        if relevant:
            out.append((forms[term].most_common(1)[0][0], relevant))
        if len(out) == count:
            break
    return out


def _ranked(index: MemoryIndex, query, ids: dict[int, str]) -> list[tuple[str, float]]:
    hits = index.search(query, per_page=DEPTH).hits
    return [(ids[h.doc_id], h.score) for h in hits]


def target_metrics(index, queries: list, targets: list[str], ids, *, reorder=None) -> dict:
    """R@1/5/10 and MRR (rank beyond DEPTH counts 0) of queries that each have one target.

    ``reorder(k, hits)``: the hits of query k reordered (given the best RERANK_DEPTH), as search by photo does.
    """
    ranks = []
    for k, (query, target) in enumerate(zip(queries, targets)):
        if reorder is None:
            found = [n for n, _ in _ranked(index, query, ids)]
        else:
            hits = reorder(k, index.search(query, per_page=max(DEPTH, RERANK_DEPTH)).hits)
            found = [ids[h.doc_id] for h in hits[:DEPTH]]
        ranks.append(found.index(target) + 1 if target in found else math.inf)
    ranks = np.array(ranks)
    return {
        "R@1": round(100 * float(np.mean(ranks <= 1)), 2),
        "R@5": round(100 * float(np.mean(ranks <= 5)), 2),
        "R@10": round(100 * float(np.mean(ranks <= 10)), 2),
        "MRR": round(100 * float(np.mean(1.0 / ranks)), 2),
        "queries": len(queries),
    }


def word_metrics(index, queries, ids, *, scores_out: list | None = None) -> dict:
    """mAP over the top DEPTH and P@10 of word queries; ``scores_out`` collects (score, relevant) of every hit."""
    aps, p10 = [], []
    for word, relevant in queries:
        ranked = _ranked(index, word, ids)
        hits, total = 0, 0.0
        for rank, (name, score) in enumerate(ranked, start=1):
            good = name in relevant
            if scores_out is not None:
                scores_out.append((score, good))
            if good:
                hits += 1
                total += hits / rank
        aps.append(total / min(len(relevant), DEPTH))
        p10.append(sum(name in relevant for name, _ in ranked[:10]) / 10)
    return {"mAP": round(100 * float(np.mean(aps)), 2), "P@10": round(100 * float(np.mean(p10)), 2), "queries": len(queries)}


def weak_match_threshold(scored: list[tuple[float, bool]]) -> float:
    """The score that best separates relevant from irrelevant hits of word queries (highest F1 of 'strong')."""
    if not scored:
        return 0.0
    scores = np.array([s for s, _ in scored])
    good = np.array([g for _, g in scored])
    order = np.argsort(-scores)
    tp = np.cumsum(good[order])
    precision = tp / np.arange(1, len(order) + 1)
    recall = tp / max(1, good.sum())
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0)
    return round(float(scores[order][int(np.argmax(f1))]), 4)


def evaluate_design(
    descriptions: dict[str, PhotoDescription],
    references: dict[str, list[str]],
    weights: SearchWeights,
    *,
    words: list,
    resaved: dict[str, PhotoDescription] | None = None,
) -> dict:
    """Every figure of the harness for one weighting of the sources."""
    names = list(descriptions)
    index, ids = description_index(descriptions, weights)
    scored: list = []
    report = {
        "sentence": target_metrics(index, [references[n][0] for n in names], names, ids),
        "word": word_metrics(index, words, ids, scores_out=scored),
        "weak_match_below": weak_match_threshold(scored),
    }
    if resaved:
        report["resaved"] = copy_metrics(index, ids, descriptions, resaved, weights, fingerprints=True)
        report["resaved_text_only"] = copy_metrics(index, ids, descriptions, resaved, weights, fingerprints=False)
    return report


def description_index(descriptions: dict[str, PhotoDescription], weights: SearchWeights) -> tuple[MemoryIndex, dict[int, str]]:
    """A scratch index of the photos' descriptions, and the photo name of each document id."""
    ids = dict(enumerate(descriptions, start=1))
    index = MemoryIndex(
        (i, document_fields(descriptions[n].caption, alternatives=descriptions[n].alternatives,
                            concepts=descriptions[n].concepts, objects=descriptions[n].objects, weights=weights))
        for i, n in ids.items()
    )
    return index, ids


def copy_metrics(index, ids, descriptions, resaved, weights: SearchWeights, *, fingerprints: bool) -> dict:
    """R@1/R@5 of the re-saved copies finding their originals, with or without the fingerprint reranking."""
    names = [ids[i] for i in sorted(ids)]
    queries = [
        document_fields(resaved[n].caption, alternatives=resaved[n].alternatives, concepts=resaved[n].concepts,
                        objects=resaved[n].objects, weights=weights)
        for n in names
    ]
    reorder = None
    if fingerprints:
        stored = {i: descriptions[n].fingerprint for i, n in ids.items() if descriptions[n].fingerprint is not None}

        def reorder(k, hits):
            return rerank(hits, resaved[names[k]].fingerprint, stored, weights)

    copies = target_metrics(index, queries, names, ids, reorder=reorder)
    return {k: copies[k] for k in ("R@1", "R@5", "queries")}


def duplicate_threshold(descriptions: dict[str, PhotoDescription], resaved: dict[str, PhotoDescription]) -> dict:
    """The fingerprint cosine above which a candidate is taken for a copy of the query photo.

    Calibrated on the copies: the lowest cosine at which no copy is more alike to another photo
    of the split than the threshold (no false "copy"), with the share of copies it recognises.
    """
    names = [n for n in descriptions if descriptions[n].fingerprint is not None and resaved[n].fingerprint is not None]
    if not names:
        return {"duplicate_above": 2.0, "copies_recognised": 0.0}
    stored = np.stack([descriptions[n].fingerprint for n in names]).astype(np.float32)
    queries = np.stack([resaved[n].fingerprint for n in names]).astype(np.float32)
    alike = queries @ stored.T
    own = np.diag(alike).copy()
    np.fill_diagonal(alike, -np.inf)
    threshold = round(float(alike.max()) + 0.005, 3)
    return {
        "duplicate_above": threshold,
        "copies_recognised": round(100 * float(np.mean(own >= threshold)), 2),
        "own_cosine_median": round(float(np.median(own)), 4),
        "others_cosine_max": round(float(alike.max()), 4),
    }


def tune_fingerprint(descriptions, resaved, weights: SearchWeights, *, values) -> list[tuple[SearchWeights, dict]]:
    """Each fingerprint weight in ``values`` (with the calibrated copy threshold), best copy R@1 (then R@5) first."""
    index, ids = description_index(descriptions, weights)
    threshold = duplicate_threshold(descriptions, resaved)["duplicate_above"]
    tried = []
    for value in values:
        candidate = replace(weights, fingerprint=float(value), duplicate_above=threshold)
        tried.append((candidate, copy_metrics(index, ids, descriptions, resaved, candidate, fingerprints=True)))
    tried.sort(key=lambda t: (-t[1]["R@1"], -t[1]["R@5"], t[0].fingerprint))
    return tried


def evaluate_reference(references: dict[str, list[str]], *, words: list) -> dict:
    """The same queries against one human caption per photo (the second)."""
    names = list(references)
    ids = dict(enumerate(names, start=1))
    index = MemoryIndex((i, [Field(references[n][1])]) for i, n in ids.items())
    return {
        "sentence": target_metrics(index, [references[n][0] for n in names], names, ids),
        "word": word_metrics(index, words, ids),
    }


def tune(descriptions, references, *, words, resaved=None, base: SearchWeights, grid: dict) -> list[tuple[SearchWeights, dict]]:
    """Every combination of ``grid`` (field name -> values) on top of ``base``, best first.

    Best = the highest sum of sentence R@10 and word mAP (the two targets), re-saved R@1 breaking ties.
    """
    keys = list(grid)
    combos = [dict(zip(keys, values)) for values in np.array(np.meshgrid(*grid.values(), indexing="ij"), dtype=object).reshape(len(keys), -1).T]
    tried = []
    for combo in combos:
        weights = replace(base, **{k: type(getattr(base, k))(v) for k, v in combo.items()})
        tried.append((weights, evaluate_design(descriptions, references, weights, words=words, resaved=resaved)))
    tried.sort(key=lambda t: -(t[1]["sentence"]["R@10"] + t[1]["word"]["mAP"] + 0.01 * t[1].get("resaved", {}).get("R@1", 0)))
    return tried
