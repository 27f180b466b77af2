"""Score a captioner on a data split with the COCO caption metrics, and draw attention plots.

Metrics come from ``pycocoevalcap`` (the reference implementation used by papers): BLEU-1..4,
ROUGE-L, CIDEr, and METEOR when Java is installed. Captions are tokenised with its PTB tokenizer
(Java) like the papers do; if that fails, with the app's own in-Python tokenisation
(``vocabulary.normalize_words``), and the report says which. The report also gives the share of
degenerate captions (a repeated trigram, or a caption that ran to the maximum length), which the
inference guard should keep at 0.

Features of images already in the training feature cache (``features.cache_features``) are read
from it, so scoring the 1,000 dev images does not need 1,000 InceptionV3 passes.

:func:`run_evaluation` is what ``manage.py evaluate_captioner`` runs (the command only parses its
arguments): score a split, or with ``tune`` try the reranking settings and calibrate the confidence.

Plain Python, no Django.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import os
import shutil
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm import tqdm

from . import features as feature_store
from .chair import chair
from .concepts import reliability
from .consensus import ConsensusReranker, NeighbourCaptions
from .datasets import read_flickr8k, read_split
from .evidence import CaptionConfidence, EvidenceReranker, ObjectWordBias, VisualEvidence
from .images import open_upright_rgb
from .inception import preprocess_image
from .inference import CaptionResult, ImageCaptioner, has_repeated_trigram
from .storage import load_model_neighbours, read_meta, update_meta
from .vocabulary import normalize_words

METRIC_NAMES = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "CIDEr-D", "CHAIR-i", "CHAIR-s")
METEOR_TIMEOUT_S = 300


def load_split(data_dir: str | os.PathLike, split: str) -> tuple[list[str], dict[str, list[str]]]:
    """Image names of ``<data_dir>/<split>.txt`` and their human captions (Flickr8k layout)."""
    data_dir = Path(data_dir)
    names = read_split(data_dir / f"{split}.txt")
    captions = read_flickr8k(data_dir / "captions.txt")
    missing = [n for n in names if n not in captions]
    if missing:
        raise ValueError(f"{len(missing)} images of the {split} split have no captions, e.g. {missing[0]}")
    return names, {n: captions[n] for n in names}


NBest = dict[str, tuple[list[CaptionResult], "np.ndarray | None"]]


def n_best(
    captioner: ImageCaptioner,
    names: Sequence[str],
    images_dir: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    beam_width: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> NBest:
    """Per image name: the search's n-best captions and the concept head's probabilities.

    Features come from the cache when present, else from the image files.
    """
    in_cache = {n for n in names if cache_dir and feature_store.cache_path(cache_dir, n).is_file()}
    cached = [n for n in names if n in in_cache]
    uncached = [n for n in names if n not in in_cache]
    # Cached features in larger chunks (a file read each), the rest through the image networks.
    step = captioner.batch_size * 4
    chunks = [(cached[i : i + step], True) for i in range(0, len(cached), step)]
    chunks += [(uncached[i : i + captioner.batch_size], False) for i in range(0, len(uncached), captioner.batch_size)]
    results: NBest = {}
    for chunk, from_cache in chunks:
        if from_cache:
            feats = feature_store.load_features(cache_dir, chunk).astype(np.float32)
        else:
            feats = captioner.features_of_arrays([preprocess_image(Path(images_dir) / n) for n in chunk])
        results.update(zip(chunk, captioner.n_best_features(feats, beam_width=beam_width)))
        if progress:
            progress(len(chunk))
    return {n: results[n] for n in names}


def caption_dataset_images(
    captioner: ImageCaptioner,
    names: Sequence[str],
    images_dir: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    beam_width: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, CaptionResult]:
    """Caption images by name as the product does (reranked, with confidence where the model has them)."""
    found = n_best(captioner, names, images_dir, cache_dir=cache_dir, beam_width=beam_width, progress=progress)
    return {n: captioner.choose(candidates, p) for n, (candidates, p) in found.items()}


def is_degenerate(result: CaptionResult) -> bool:
    """A looping caption: a repeated trigram, or one that ran to the maximum length."""
    return has_repeated_trigram(result.words) or result.reached_max_length


def _tokenize(references: dict[str, list[str]], hypotheses: dict[str, str]) -> tuple[dict, dict, str]:
    """PTB-tokenised references and hypotheses (Java), else the in-Python tokenisation."""
    try:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        if shutil.which("java") is None:
            raise OSError("java is not installed")
        ptb = PTBTokenizer()
        refs = ptb.tokenize({n: [{"caption": c} for c in caps] for n, caps in references.items()})
        hyps = ptb.tokenize({n: [{"caption": h}] for n, h in hypotheses.items()})
        return refs, hyps, "ptb (pycocoevalcap, Java)"
    except Exception as exc:  # the Java call can fail in many ways; say so in the report
        simple = lambda text: " ".join(normalize_words(text))  # noqa: E731
        refs = {n: [simple(c) for c in caps] for n, caps in references.items()}
        hyps = {n: [simple(h)] for n, h in hypotheses.items()}
        return refs, hyps, f"simple in-Python tokenisation (PTB tokenizer failed: {exc})"


def _meteor(refs: dict, hyps: dict) -> tuple[float | None, str]:
    """METEOR 1.5 via Java, bounded in time; (None, reason) when Java is missing or it fails."""
    if shutil.which("java") is None:
        return None, "java not installed"
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        score, _ = pool.submit(scorer.compute_score, refs, hyps).result(timeout=METEOR_TIMEOUT_S)
        return float(score), "ok"
    except Exception as exc:  # timeout, a dead JVM, unparsable output
        scorer.meteor_p.kill()
        return None, f"failed: {exc!r}"
    finally:
        pool.shutdown(wait=False)


def cider(refs: dict[str, list[str]], hyps: dict[str, list[str]]) -> tuple[float, float, dict[str, float]]:
    """(CIDEr, CIDEr-D, per-image CIDEr-D) of tokenised captions; document frequencies from ``refs``.

    pycocoevalcap's ``Cider`` is CIDEr-D (Vedantam et al. 2015, sec. 5: counts clipped to the
    reference's, a Gaussian penalty on the length difference, times 10): the figure earlier model
    cards and the targets call "CIDEr". CIDEr as first defined is the mean cosine of the tf-idf
    n-gram vectors (n = 1..4) with each reference, computed here on pycocoevalcap's own counts and
    idf and scaled by 10 like CIDEr-D, so the two read on one scale. Stock phrases repeated to
    game the metric raise CIDEr more than CIDEr-D.
    """
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.cider.cider_scorer import CiderScorer

    keys = list(hyps)
    cider_d, per_image = Cider().compute_score({k: refs[k] for k in keys}, {k: hyps[k] for k in keys})
    scorer = CiderScorer(n=4)
    for key in keys:
        scorer.cook_append(hyps[key][0], refs[key])
    scorer.compute_doc_freq()
    log_images = np.log(float(len(scorer.crefs)))

    def tf_idf(counts):
        vectors = [{} for _ in range(scorer.n)]
        for ngram, tf in counts.items():
            vectors[len(ngram) - 1][ngram] = tf * (log_images - np.log(max(1.0, scorer.document_frequency[ngram])))
        return vectors, [math.sqrt(sum(v * v for v in vec.values())) for vec in vectors]

    plain = []
    for test, references in zip(scorer.ctest, scorer.crefs):
        hyp_vec, hyp_norm = tf_idf(test)
        total = 0.0
        for reference in references:
            ref_vec, ref_norm = tf_idf(reference)
            for n in range(scorer.n):
                if hyp_norm[n] and ref_norm[n]:
                    dot = sum(v * ref_vec[n].get(g, 0.0) for g, v in hyp_vec[n].items())
                    total += dot / (hyp_norm[n] * ref_norm[n])
        plain.append(10.0 * total / (scorer.n * len(references)))
    return float(np.mean(plain)), float(cider_d), {k: float(v) for k, v in zip(keys, per_image)}


def score_captions(
    references: dict[str, list[str]], hypotheses: dict[str, str], *, meteor: bool = True
) -> dict:
    """COCO caption metrics and CHAIR (percent, like the papers) of one hypothesis per image.

    ``per_image`` holds each image's CIDEr-D and invented object groups (for calibration).
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.rouge.rouge import Rouge

    if set(references) != set(hypotheses):
        raise ValueError("references and hypotheses must cover the same images")
    refs, hyps, tokenizer = _tokenize(references, hypotheses)
    bleu, _ = Bleu(4).compute_score(refs, hyps, verbose=0)
    scores = {f"BLEU-{i + 1}": 100 * float(b) for i, b in enumerate(bleu)}
    length_ratio = closest_reference_length_ratio(refs, hyps)
    scores["ROUGE-L"] = 100 * float(Rouge().compute_score(refs, hyps)[0])
    plain_cider, cider_d, cider_d_per_image = cider(refs, hyps)
    scores["CIDEr"], scores["CIDEr-D"] = 100 * plain_cider, 100 * cider_d
    hallucination = chair(hypotheses, references)
    scores["CHAIR-i"], scores["CHAIR-s"] = hallucination["CHAIR-i"], hallucination["CHAIR-s"]
    meteor_score, meteor_note = _meteor(refs, hyps) if meteor else (None, "not requested")
    if meteor_score is not None:
        scores["METEOR"] = 100 * meteor_score
    return {
        "scores": {k: round(scores[k], 2) for k in METRIC_NAMES if k in scores},
        "length_ratio": round(length_ratio, 4),
        "brevity_penalty": round(min(1.0, math.exp(1.0 - 1.0 / length_ratio)) if length_ratio else 0.0, 4),
        "objects_named": hallucination["objects_named"],
        "most_invented": hallucination["most_invented"],
        "tokenizer": tokenizer,
        "meteor": meteor_note,
        "per_image": {
            name: {"CIDEr-D": round(cider_d_per_image[name], 4), "invented": hallucination["per_image"][name]}
            for name in hypotheses
        },
    }


def human_reference(references: dict[str, list[str]]) -> dict:
    """What a person reaches: each image's first human caption scored against its other four."""
    hypotheses = {n: caps[0] for n, caps in references.items()}
    scored = score_captions({n: caps[1:] for n, caps in references.items()}, hypotheses, meteor=False)
    scored.pop("per_image")
    return scored


def closest_reference_length_ratio(refs: dict[str, list[str]], hyps: dict[str, list[str]]) -> float:
    """Words written / words of the closest-length reference, summed as BLEU's brevity penalty does.

    Below 1 the BLEU scores are scaled down by ``exp(1 - 1/ratio)``: it tells a precision problem
    from a too-short-captions problem.
    """
    written = reference = 0
    for key, (hypothesis,) in hyps.items():
        n = len(hypothesis.split())
        written += n
        reference += min((len(r.split()) for r in refs[key]), key=lambda m: (abs(m - n), m))
    return written / reference if reference else 0.0


def evaluate(
    captioner: ImageCaptioner,
    names: Sequence[str],
    references: dict[str, list[str]],
    images_dir: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    beam_width: int | None = None,
    meteor: bool = True,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict, dict[str, CaptionResult]]:
    """Caption ``names`` and score them against ``references``; returns (report, results).

    ``reference`` in the report: the same metrics for a person (human_reference).
    """
    start = time.perf_counter()
    results = caption_dataset_images(captioner, names, images_dir, cache_dir=cache_dir, beam_width=beam_width, progress=progress)
    caption_s = time.perf_counter() - start
    scored = score_captions({n: references[n] for n in names}, {n: r.text for n, r in results.items()}, meteor=meteor)
    confidences = [r.confidence for r in results.values() if r.confidence is not None]
    degenerate = [n for n, r in results.items() if is_degenerate(r)]
    lengths = [len(r.words) for r in results.values()]
    report = {
        **scored,
        "images": len(names),
        "degenerate": len(degenerate),
        "degenerate_share": round(len(degenerate) / max(1, len(names)), 4),
        "degenerate_examples": {n: results[n].text for n in degenerate[:5]},
        "mean_words": round(float(np.mean(lengths)), 2) if lengths else 0.0,
        "vocabulary_used": len({w for r in results.values() for w in r.words}),
        "mean_score": round(float(np.mean([r.score for r in results.values()])), 4) if results else 0.0,
        "model_version": captioner.version,
        "beam_width": captioner.beam_width if beam_width is None else int(beam_width),
        "length_alpha": captioner.length_alpha,
        "caption_seconds": round(caption_s, 1),
        "mean_confidence": round(float(np.mean(confidences)), 4) if confidences else None,
        "reference": human_reference({n: references[n] for n in names if len(references[n]) > 1}),
        "samples": {n: {"caption": results[n].text, "references": references[n]} for n in names[:10]},
    }
    return report, results


# ------------------------------------------------------------------------------------ tuning
RERANK_WEIGHTS = (0.0, 1.0, 2.0)
# Floors 0.1 / 0.2 and coverage 1.0 were added for the share-of-captions concept head, whose probabilities are lower.
RERANK_FLOORS = (0.1, 0.2, 0.3, 0.5)
RERANK_COVERAGES = (0.0, 0.25, 0.5, 1.0)
# A caption is "good" when it names no invented object and its CIDEr-D reaches this (see calibrate_confidence).
GOOD_CIDER_D = 0.5
CONFIDENT_FROM = 0.5
# Consensus reranking (captioning.consensus), tried jointly with the grid above when the model has neighbours.npz.
CONSENSUS_WEIGHTS = (0.0, 5.0, 10.0, 20.0)
CONSENSUS_NEIGHBOURS = (10, 15)


def rerank_tries(
    found: NBest,
    references: dict[str, list[str]],
    evidence: VisualEvidence,
    *,
    weights: Sequence[float] = RERANK_WEIGHTS,
    floors: Sequence[float] = RERANK_FLOORS,
    coverages: Sequence[float] = RERANK_COVERAGES,
    neighbours: NeighbourCaptions | None = None,
    consensus_weights: Sequence[float] = CONSENSUS_WEIGHTS,
    consensus_neighbours: Sequence[int] = CONSENSUS_NEIGHBOURS,
) -> list[dict]:
    """Score the caption each reranking setting picks from the same n-best lists (all 0: the search's own).

    With ``neighbours``, every evidence setting is also tried with each consensus weight and number
    of neighbours (rows then carry ``consensus`` and ``neighbours``).
    """
    consensus_settings = [(0.0, 0)]
    agreement = {}
    if neighbours is not None:
        consensus_settings = [(w, k) for w in consensus_weights for k in (consensus_neighbours if w else consensus_neighbours[:1])]
        most = max(consensus_neighbours)  # the nearest k are the first k of the nearest ``most``
        agreement = {n: neighbours.agreement([c.words for c in candidates], p, most) for n, (candidates, p) in found.items()}
    rows = []
    for weight in weights:
        for floor in floors if weight else floors[:1]:
            for coverage in coverages:
                reranker = EvidenceReranker(evidence, weight, floor, coverage)
                adjusted = {n: np.array([reranker.adjusted(c, p) for c in candidates]) for n, (candidates, p) in found.items()}
                for consensus_weight, k in consensus_settings:
                    chosen = {
                        n: found[n][0][int(np.argmax(a + consensus_weight * agreement[n][:, :k].mean(axis=1) if consensus_weight else a))]
                        for n, a in adjusted.items()
                    }
                    scored = score_captions({n: references[n] for n in found}, {n: c.text for n, c in chosen.items()}, meteor=False)
                    rows.append({
                        "weight": weight, "floor": floor, "coverage": coverage,
                        **({"consensus": consensus_weight, "neighbours": k} if neighbours is not None else {}), **scored["scores"],
                        "degenerate": sum(is_degenerate(c) for c in chosen.values()),
                        "mean_words": round(float(np.mean([len(c.words) for c in chosen.values()])), 2),
                    })
    return rows


def best_try(rows: Sequence[dict], *, max_chair_i: float | None = None, min_bleu_4: float | None = None) -> dict:
    """The setting with the highest CIDEr-D minus CHAIR-i among those without degenerate captions.

    Both are percentages: one invented object per 100 named costs as much as one CIDEr-D point.
    With targets (CHAIR-i at most ``max_chair_i``, BLEU-4 at least ``min_bleu_4``) that some clean
    settings meet: the highest CIDEr-D among those (fewer invented objects than the target asks
    are not worth CIDEr-D; trading them one for one drives CHAIR-i far below it at CIDEr-D's cost).
    """
    clean = [r for r in rows if not r["degenerate"]] or list(rows)
    if max_chair_i is not None or min_bleu_4 is not None:
        meeting = [
            r for r in clean
            if (max_chair_i is None or r["CHAIR-i"] <= max_chair_i) and (min_bleu_4 is None or r["BLEU-4"] >= min_bleu_4)
        ]
        if meeting:
            return max(meeting, key=lambda r: (r["CIDEr-D"], -r["CHAIR-i"]))
    return max(clean, key=lambda r: (r["CIDEr-D"] - r["CHAIR-i"], r["CIDEr-D"]))


def calibrate_confidence(
    chosen: dict[str, CaptionResult],
    probabilities: dict[str, np.ndarray],
    per_image: dict[str, dict],
    evidence: VisualEvidence,
    *,
    good_cider_d: float = GOOD_CIDER_D,
    folds: int = 5,
    seed: int = 1234,
) -> dict:
    """Fit P(good | score, weakest object's log-probability, coverage) by logistic regression; the record for meta.json.

    Good = the caption names no object that the photo's human captions do not, and its CIDEr-D is
    at least ``good_cider_d``. The reliability table and Brier score are of ``folds``-fold held-out
    predictions, so they say how the confidence behaves on photos it was not fitted on.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import brier_score_loss, roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    names = list(chosen)
    features = CaptionConfidence(evidence, (0.0, 0.0, 0.0), 0.0).features
    x = np.array([features(chosen[n], probabilities[n]) for n in names])
    y = np.array([not per_image[n]["invented"] and per_image[n]["CIDEr-D"] >= good_cider_d for n in names], dtype=int)
    if len(set(y)) < 2 or min(np.bincount(y)) < folds:
        raise ValueError(f"cannot calibrate a confidence on {len(y)} captions of which {int(y.sum())} are good: too few of one kind")
    folds = StratifiedKFold(folds, shuffle=True, random_state=seed)
    held = cross_val_predict(LogisticRegression(), x, y, cv=folds, method="predict_proba")[:, 1]
    model = LogisticRegression().fit(x, y)
    confident = held >= CONFIDENT_FROM
    return {
        "features": [
            "length-normalised log-probability", "log-probability of the least supported object (0 if none)",
            "sum of the concept probabilities of the words used",
        ],
        "coefficients": [round(float(c), 5) for c in model.coef_[0]],
        "intercept": round(float(model.intercept_[0]), 5),
        "good": f"names no object absent from all human captions and CIDEr-D >= {good_cider_d}",
        "confident_from": CONFIDENT_FROM,
        "images": len(names),
        "good_share": round(float(y.mean()), 4),
        "held_out": {
            "folds": folds.n_splits,
            "brier": round(float(brier_score_loss(y, held)), 4),
            "brier_constant": round(float(y.mean() * (1 - y.mean())), 4),
            "auc": round(float(roc_auc_score(y, held)), 4),
            "confident_share": round(float(confident.mean()), 4),
            "good_share_confident": round(float(y[confident].mean()), 4) if confident.any() else None,
            "good_share_unsure": round(float(y[~confident].mean()), 4) if (~confident).any() else None,
            "reliability": reliability(held, y),
        },
    }


TRIES_COLUMNS = ("bias_weight", "bias_floor", "weight", "floor", "coverage", "consensus", "neighbours", "CIDEr-D", "CIDEr", "CHAIR-i", "CHAIR-s", "BLEU-4", "degenerate", "mean_words")


def format_tries(tuned: dict) -> str:
    """The reranking tries, the chosen setting and the confidence's held-out figures, as text."""
    lines = [" | ".join(TRIES_COLUMNS)]
    lines += [" | ".join(str(row.get(c, "-")) for c in TRIES_COLUMNS) for row in tuned["tries"]]
    confidence = tuned["confidence"]
    lines.append(f"best: {json.dumps({k: v for k, v in tuned['reranking'].items() if k != 'tries'})}, evidence bias {json.dumps(tuned['evidence_bias'])}")
    lines.append(f"confidence: {json.dumps({k: v for k, v in confidence.items() if k != 'held_out'})}")
    lines.append(f"held out: {json.dumps(confidence['held_out'])}")
    return "\n".join(lines)


def save_tuning(model_dir: str | os.PathLike, tuned: dict, *, version: str, chosen_on: str) -> Path:
    """Record the chosen reranking (with every try), the evidence bias of the search (``decoding``;
    removed when the best is none) and the confidence in meta.json; the reliability diagram
    beside it (``confidence_reliability.png``). Returns the diagram's path."""
    reranking = {**tuned["reranking"], "chosen_on": chosen_on, "tries": tuned["tries"]}
    confidence = {**tuned["confidence"], "fitted_on": chosen_on}
    plot = plot_reliability(
        confidence["held_out"]["reliability"], Path(model_dir) / "confidence_reliability.png",
        title=f"{version}: caption confidence on {chosen_on} (5-fold held out)",
    )
    decoding = {k: v for k, v in (read_meta(model_dir).get("decoding") or {}).items() if k != "evidence_bias"}
    if tuned["evidence_bias"]:
        decoding["evidence_bias"] = {**tuned["evidence_bias"], "chosen_on": chosen_on}
    update_meta(model_dir, reranking=reranking, confidence=confidence, decoding=decoding)
    return plot


def plot_reliability(rows: Sequence[dict], out_path: str | os.PathLike, *, title: str) -> Path:
    """Reliability diagram: observed share of good captions against the confidence given, per bin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    top.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfectly calibrated")
    top.plot([r["predicted"] for r in rows], [r["observed"] for r in rows], marker="o", label="held-out dev photos")
    top.set_ylabel("share of good captions")
    top.set_title(textwrap.fill(title, 60), fontsize=9)
    top.legend(loc="upper left")
    bottom.bar([(r["from"] + r["to"]) / 2 for r in rows], [r["count"] for r in rows], width=0.09)
    bottom.set_xlabel("confidence")
    bottom.set_ylabel("captions")
    bottom.set_xlim(0, 1)
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=80)
    plt.close(fig)
    return out_path


def tune(
    captioner: ImageCaptioner,
    searches: Sequence[tuple[dict | None, NBest]],
    references: dict[str, list[str]],
    *,
    weights: Sequence[float] = RERANK_WEIGHTS,
    floors: Sequence[float] = RERANK_FLOORS,
    coverages: Sequence[float] = RERANK_COVERAGES,
    good_cider_d: float = GOOD_CIDER_D,
    max_chair_i: float | None = None,
    min_bleu_4: float | None = None,
    neighbours: NeighbourCaptions | None = None,
    consensus_weights: Sequence[float] = CONSENSUS_WEIGHTS,
    consensus_neighbours: Sequence[int] = CONSENSUS_NEIGHBOURS,
) -> dict:
    """Reranking tries on the n-best lists of each search (``(evidence bias record or None, n-best)``),
    the best setting of the two together (:func:`best_try`), and the confidence calibrated on its captions.

    Returns ``{"tries": [...], "reranking": {"weight", "floor", "coverage", "consensus"}, "evidence_bias": {...} or None,
    "confidence": {...}}`` (the last three as meta.json records; ``consensus`` is None unless ``neighbours``
    and a weight above 0 won).
    """
    if captioner.concepts is None:
        raise ValueError(f"model {captioner.version} has no concept head: nothing to rerank or calibrate with")
    evidence = VisualEvidence(captioner.concepts)
    rows, searched = [], {}
    for k, (bias, found) in enumerate(searches):
        searched[k] = (bias, found)
        tries = rerank_tries(found, references, evidence, weights=weights, floors=floors, coverages=coverages,
                             neighbours=neighbours, consensus_weights=consensus_weights, consensus_neighbours=consensus_neighbours)
        for row in tries:
            rows.append({"bias_weight": bias["weight"] if bias else 0.0, "bias_floor": bias["floor"] if bias else None, **row, "search": k})
    best = best_try(rows, max_chair_i=max_chair_i, min_bleu_4=min_bleu_4)
    bias, found = searched[best["search"]]
    for row in rows:
        del row["search"]
    reranker = EvidenceReranker(evidence, best["weight"], best["floor"], best["coverage"])
    consensus = {"weight": best["consensus"], "neighbours": best["neighbours"]} if best.get("consensus") else None
    if consensus:
        reranker = ConsensusReranker.from_meta(consensus, reranker, neighbours)
    chosen = {n: reranker.rank(candidates, p)[0] for n, (candidates, p) in found.items()}
    scored = score_captions({n: references[n] for n in found}, {n: c.text for n, c in chosen.items()}, meteor=False)
    probabilities = {n: p for n, (_, p) in found.items()}
    confidence = calibrate_confidence(chosen, probabilities, scored["per_image"], evidence, good_cider_d=good_cider_d)
    # consensus None is written too, so that saving replaces an earlier consensus setting (update_meta merges).
    reranking = {"weight": best["weight"], "floor": best["floor"], "coverage": best["coverage"], "consensus": consensus}
    return {"tries": rows, "reranking": reranking, "evidence_bias": bias, "confidence": confidence}


def format_table(report: dict) -> str:
    """The metrics as a small text table (for the terminal and the model card), a person's beside them."""
    person = (report.get("reference") or {}).get("scores", {})
    rows = [(k, f"{v:.2f}", f"{person[k]:.2f}" if k in person else "") for k, v in report["scores"].items()]
    rows.append(("degenerate", f"{report['degenerate']} / {report['images']} ({100 * report['degenerate_share']:.1f}%)", ""))
    rows.append(("mean words", f"{report['mean_words']:.2f}", ""))
    rows.append(("length ratio", f"{report['length_ratio']:.3f}", ""))
    if report.get("mean_confidence") is not None:
        rows.append(("mean confidence", f"{report['mean_confidence']:.3f}", ""))
    width = max(len(k) for k, _, _ in rows)
    lines = [f"model {report['model_version']}, beam {report['beam_width']}, {report['images']} images"]
    lines.append(f"  {'':<{width}}  {'model':>8}  {'person':>8}")
    lines += [f"  {k:<{width}}  {v:>8}  {p:>8}".rstrip() for k, v, p in rows]
    lines.append("  person = each photo's first human caption against its other four (CHAIR, CIDEr with 4 references)")
    lines.append(f"  tokenizer: {report['tokenizer']}; METEOR: {report['meteor']}")
    return "\n".join(lines)


def plot_attention(image_path: str | os.PathLike, result: CaptionResult, out_path: str | os.PathLike, *, title: str = "") -> Path:
    """The tutorial-style grid: the photo once per word, overlaid with that word's 8x8 attention."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    photo = np.asarray(open_upright_rgb(image_path))
    side = int(round(np.sqrt(result.attention.shape[1]))) if result.words else 8
    columns = 4
    rows = max(1, -(-len(result.words) // columns))
    fig = plt.figure(figsize=(3.2 * columns, 2.9 * rows + 0.6))
    extent = (0, photo.shape[1], photo.shape[0], 0)
    for k, word in enumerate(result.words):
        ax = fig.add_subplot(rows, columns, k + 1)
        ax.imshow(photo, extent=extent)
        ax.imshow(result.attention[k].reshape(side, side), cmap="gray", alpha=0.6, extent=extent, interpolation="bilinear")
        ax.set_title(word, fontsize=12)
        ax.axis("off")
    fig.suptitle(textwrap.fill(title or f"{result.text}  (score {result.score:.3f})", 110), fontsize=11)
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=80)
    plt.close(fig)
    return out_path


# ------------------------------------------------------------------------------------ a whole run
class EvaluationError(ValueError):
    """A run that cannot be done as asked: a bad option, a missing split, a model that does not load."""


@dataclass
class EvaluationRun:
    """One ``evaluate_captioner`` run: a split of a Flickr8k-layout data directory scored with a model."""

    data_dir: Path  # captions.txt, <split>.txt, images/
    split: str
    model_dir: Path
    feature_dir: Path  # the converted InceptionV3 weights
    cache_dir: Path  # the feature cache that train_captioner fills
    report_dir: Path  # where the JSON report goes unless ``output`` names it
    output: Path | None = None
    limit: int | None = None
    beam_width: int | None = None  # None: the model's tuned width
    length_alpha: float | None = None  # None: the model's tuned one
    batch_size: int = 32
    image_precision: str = "fp32"  # InceptionV3's graph for photos not in the cache (runtime.PRECISIONS)
    plots: int = 3
    meteor: bool = True
    save_decoding: bool = False  # record this beam width and length alpha in meta.json
    tune: bool = False  # try the reranking settings and calibrate the confidence instead of scoring
    save_tuning: bool = False  # with tune: record them in meta.json
    # with tune: evidence-bias settings of the search to try (each a search of the split; weight 0: no
    # bias); none given: only the model's own setting
    bias_weights: tuple[float, ...] = ()
    bias_floors: tuple[float, ...] = (0.1, 0.3)
    max_chair_i: float | None = None  # with tune: targets to meet first (see best_try)
    min_bleu_4: float | None = None
    consensus_weights: Sequence[float] = CONSENSUS_WEIGHTS  # with tune, for a model with neighbours.npz
    consensus_neighbours: Sequence[int] = CONSENSUS_NEIGHBOURS

    def __post_init__(self):
        if self.beam_width is not None and self.beam_width < 1:
            raise EvaluationError("--beam must be at least 1")
        if not self.consensus_weights or not self.consensus_neighbours or min(self.consensus_weights) < 0 or min(self.consensus_neighbours) < 1:
            raise EvaluationError("--consensus-weights must be at least 0 and --consensus-neighbours at least 1")
        if self.save_tuning and not self.tune:
            raise EvaluationError("--save-tuning needs --tune")
        if (self.bias_weights or self.max_chair_i is not None or self.min_bleu_4 is not None) and not self.tune:
            raise EvaluationError("--bias-weights, --max-chair-i and --min-bleu-4 need --tune")
        if any(w < 0 for w in self.bias_weights) or any(not 0 < f <= 1 for f in self.bias_floors):
            raise EvaluationError("evidence-bias weights must be >= 0 and floors in (0, 1]")


def run_evaluation(run: EvaluationRun, log: Callable[[str], None] = print) -> dict:
    """Score (or with ``run.tune``, tune) the model on the split; ``log`` gets the tables and paths.

    Returns the report (scoring) or the tuning record (tuning). Raises :class:`EvaluationError`.
    """
    try:
        names, references = load_split(run.data_dir, run.split)
    except (OSError, ValueError) as exc:
        raise EvaluationError(str(exc)) from exc
    names = names[: run.limit] if run.limit else names
    try:
        captioner = ImageCaptioner.from_dirs(
            run.model_dir, run.feature_dir, beam_width=run.beam_width, length_alpha=run.length_alpha, batch_size=run.batch_size,
            image_precision=run.image_precision,
        )
    except (OSError, ValueError) as exc:
        raise EvaluationError(f"cannot load the captioner: {exc}") from exc
    cached = sum(feature_store.cache_path(run.cache_dir, n).is_file() for n in names)
    log(f"{len(names)} {run.split} images, {cached} with cached features in {run.cache_dir}")
    images_dir = run.data_dir / "images"
    if run.tune:
        return _tune_run(run, captioner, names, references, log)
    with tqdm(total=len(names), desc="captioning", unit="img", file=sys.stderr) as bar:
        report, results = evaluate(
            captioner, names, references, images_dir, cache_dir=run.cache_dir, meteor=run.meteor, progress=bar.update
        )
    report.update(split=run.split, data_dir=str(run.data_dir), model_dir=str(run.model_dir))
    output = run.output or run.report_dir / f"{captioner.version}-{run.split}-beam{captioner.beam_width}.json"
    report["attention_plots"] = [
        str(plot_attention(images_dir / name, results[name], output.with_name(f"{output.stem}-attention-{Path(name).stem}.png")))
        for name in names[: max(0, run.plots)]
    ]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    log(format_table(report))
    log(f"report: {output}")
    if run.save_decoding:
        decoding = {
            "beam_width": captioner.beam_width,
            "length_alpha": captioner.length_alpha,
            "chosen_on": f"{run.data_dir.name}/{run.split} ({len(names)} images)",
            "scores": report["scores"],
        }
        update_meta(run.model_dir, decoding=decoding)
        log(f"decoding defaults saved in {run.model_dir}/meta.json: beam {captioner.beam_width}, length alpha {captioner.length_alpha}")
    for plot in report["attention_plots"]:
        log(f"attention plot: {plot}")
    return report


def bias_settings(captioner: ImageCaptioner, weights: Sequence[float], floors: Sequence[float]) -> list[ObjectWordBias | None]:
    """The evidence biases to search with: none for weight 0, one per floor for the others; without
    weights, the model's own (or none)."""
    if not weights:
        return [captioner.word_bias]
    if captioner.concepts is None:
        raise ValueError(f"model {captioner.version} has no concept head: no evidence bias to try")
    evidence = VisualEvidence(captioner.concepts)
    index_word = captioner.tokenizer.index_word
    return [None if not w else ObjectWordBias(evidence, index_word, w, f) for w in sorted(set(weights)) for f in (floors if w else floors[:1])]


def _tune_run(run: EvaluationRun, captioner: ImageCaptioner, names, references, log) -> dict:
    searches = []
    try:
        biases = bias_settings(captioner, run.bias_weights, run.bias_floors)
    except ValueError as exc:
        raise EvaluationError(str(exc)) from exc
    for bias in biases:
        captioner.word_bias = bias
        with tqdm(total=len(names), desc=f"n-best, bias {bias.to_meta() if bias else 'none'}", unit="img", file=sys.stderr) as bar:
            found = n_best(captioner, names, run.data_dir / "images", cache_dir=run.cache_dir, progress=bar.update)
        searches.append((bias.to_meta() if bias else None, found))
    try:
        neighbours = load_model_neighbours(run.model_dir)
        if neighbours is None and captioner.concepts is not None:
            log(f"no neighbour captions in {run.model_dir}: consensus reranking not tried (manage.py build_neighbours)")
        tuned = tune(captioner, searches, references, max_chair_i=run.max_chair_i, min_bleu_4=run.min_bleu_4, neighbours=neighbours,
                     consensus_weights=run.consensus_weights, consensus_neighbours=run.consensus_neighbours)
    except ValueError as exc:
        raise EvaluationError(str(exc)) from exc
    log(format_tries(tuned))
    if run.save_tuning:
        chosen_on = f"{run.data_dir.name}/{run.split} ({len(names)} images), beam {captioner.beam_width}"
        plot = save_tuning(run.model_dir, tuned, version=captioner.version, chosen_on=chosen_on)
        log(f"reranking and confidence saved in {run.model_dir}/meta.json; reliability diagram {plot}")
    return tuned
