"""Score a captioner on a data split with the COCO caption metrics, and draw attention plots.

Metrics come from ``pycocoevalcap`` (the reference implementation used by papers): BLEU-1..4,
ROUGE-L, CIDEr, and METEOR when Java is installed. Captions are tokenised with its PTB tokenizer
(Java) like the papers do; if that fails, with the app's own in-Python tokenisation
(``vocabulary.normalize_words``), and the report says which. The report also gives the share of
degenerate captions (a repeated trigram, or a caption that ran to the maximum length), which the
inference guard should keep at 0.

Features of images already in the training feature cache (``features.cache_features``) are read
from it, so scoring the 1,000 dev images does not need 1,000 InceptionV3 passes.

Plain Python, no Django (the ``evaluate_captioner`` command is the glue).
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import shutil
import textwrap
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import features as feature_store
from .datasets import read_flickr8k, read_split
from .inference import CaptionResult, ImageCaptioner, has_repeated_trigram
from .vocabulary import normalize_words

METRIC_NAMES = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
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


def caption_dataset_images(
    captioner: ImageCaptioner,
    names: Sequence[str],
    images_dir: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    beam_width: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, CaptionResult]:
    """Caption images by name: from cached features when present, else from the image files."""
    in_cache = {n for n in names if cache_dir and feature_store.cache_path(cache_dir, n).is_file()}
    cached = [n for n in names if n in in_cache]
    uncached = [n for n in names if n not in in_cache]
    results: dict[str, CaptionResult] = {}
    step = captioner.batch_size * 4
    for start in range(0, len(cached), step):
        chunk = cached[start : start + step]
        feats = feature_store.load_features(cache_dir, chunk).astype(np.float32)
        results.update(zip(chunk, captioner.caption_features(feats, beam_width=beam_width)))
        if progress:
            progress(len(chunk))
    for start in range(0, len(uncached), captioner.batch_size):
        chunk = uncached[start : start + captioner.batch_size]
        paths = [Path(images_dir) / n for n in chunk]
        results.update(zip(chunk, captioner.caption_sources(paths, beam_width=beam_width)))
        if progress:
            progress(len(chunk))
    return {n: results[n] for n in names}


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


def score_captions(
    references: dict[str, list[str]], hypotheses: dict[str, str], *, meteor: bool = True
) -> dict:
    """COCO caption metrics (percent, like the papers) of one hypothesis per image."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if set(references) != set(hypotheses):
        raise ValueError("references and hypotheses must cover the same images")
    refs, hyps, tokenizer = _tokenize(references, hypotheses)
    bleu, _ = Bleu(4).compute_score(refs, hyps, verbose=0)
    scores = {f"BLEU-{i + 1}": 100 * float(b) for i, b in enumerate(bleu)}
    length_ratio = closest_reference_length_ratio(refs, hyps)
    scores["ROUGE-L"] = 100 * float(Rouge().compute_score(refs, hyps)[0])
    scores["CIDEr"] = 100 * float(Cider().compute_score(refs, hyps)[0])
    meteor_score, meteor_note = _meteor(refs, hyps) if meteor else (None, "not requested")
    if meteor_score is not None:
        scores["METEOR"] = 100 * meteor_score
    return {
        "scores": {k: round(scores[k], 2) for k in METRIC_NAMES if k in scores},
        "length_ratio": round(length_ratio, 4),
        "brevity_penalty": round(min(1.0, math.exp(1.0 - 1.0 / length_ratio)) if length_ratio else 0.0, 4),
        "tokenizer": tokenizer,
        "meteor": meteor_note,
    }


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
    """Caption ``names`` and score them against ``references``; returns (report, results)."""
    start = time.perf_counter()
    results = caption_dataset_images(captioner, names, images_dir, cache_dir=cache_dir, beam_width=beam_width, progress=progress)
    caption_s = time.perf_counter() - start
    scored = score_captions({n: references[n] for n in names}, {n: r.text for n, r in results.items()}, meteor=meteor)
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
        "samples": {n: {"caption": results[n].text, "references": references[n]} for n in names[:10]},
    }
    return report, results


def format_table(report: dict) -> str:
    """The metrics as a small text table (for the terminal and the model card)."""
    rows = [(k, f"{v:.2f}") for k, v in report["scores"].items()]
    rows.append(("degenerate", f"{report['degenerate']} / {report['images']} ({100 * report['degenerate_share']:.1f}%)"))
    rows.append(("mean words", f"{report['mean_words']:.2f}"))
    rows.append(("length ratio", f"{report['length_ratio']:.3f}"))
    width = max(len(k) for k, _ in rows)
    lines = [f"model {report['model_version']}, beam {report['beam_width']}, {report['images']} images"]
    lines += [f"  {k:<{width}}  {v:>8}" for k, v in rows]
    lines.append(f"  tokenizer: {report['tokenizer']}; METEOR: {report['meteor']}")
    return "\n".join(lines)


def plot_attention(image_path: str | os.PathLike, result: CaptionResult, out_path: str | os.PathLike, *, title: str = "") -> Path:
    """The tutorial-style grid: the photo once per word, overlaid with that word's 8x8 attention."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image, ImageOps

    with Image.open(image_path) as image:
        photo = np.asarray((ImageOps.exif_transpose(image) or image).convert("RGB"))
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
