"""Captioning speed and memory benchmark (not a timed test): `python bench/caption_bench.py [--json]`.

Measures, in one process, against the tutorial-style eager ``evaluate()`` loop (one image, features
extracted eagerly, then a per-step Python loop calling the decoder eagerly, greedy):

* ``single_ms``: one 640x480 JPEG captioned from its file (decode + InceptionV3 + beam search),
  median after warm-up; ``baseline_single_ms``: the same file through the eager loop;
* ``bulk_images_per_s``: Flickr8k photos captioned from their files in batches (after one warm-up
  batch, as in a long-running worker), plus where the
  time goes (image decoding, InceptionV3, search) so a miss of the target can be explained;
* ``peak_rss_mb``: the process's peak resident memory (psutil sampling and ``ru_maxrss``);
* ``sources``: the same bulk captioning as the caption alone and with the other sources of a
  photo's description, alternated twice in this process (A B A B): images/s, CPU-s/image, the
  throughput lost to the sources and the peak RSS with all of them loaded. ``--sources`` names
  which are switched on in the B rounds (default all: ``concepts`` (the concept head),
  ``objects`` (the EfficientNet-Lite0 object labels), ``fingerprint`` (the visual fingerprint));
  the A rounds run the captioner with none of them. The beam's alternative captions are not a
  switch: they are read from the lanes of the same beam search that makes the caption, so both
  rounds have them. ``--sources none`` skips the comparison.

Uses the bundled model (``captioning/models/current``) when present, else a randomly initialised
model of the real size (vocabulary built from the Flickr8k training captions); a random model
never learned to stop, so its captions run to the maximum length: the search then does MORE work
than with the trained model.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from captioning import features as feature_store  # noqa: E402
from captioning.inception import extract_features, preprocess_image  # noqa: E402
from captioning.inference import FEATURE_BATCH, ImageCaptioner  # noqa: E402
from captioning.objects import default_words  # noqa: E402
from captioning.vocabulary import END_ID, START_ID  # noqa: E402

FLICKR = REPO.parent / "shared" / "datasets" / "flickr8k"
BUNDLED = REPO / "captioning" / "models" / "current"


class PeakRss:
    """Samples the process RSS in a background thread (psutil) and keeps the maximum."""

    def __init__(self, interval: float = 0.02):
        self.process, self.interval, self.peak = psutil.Process(), interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self._stop.wait(self.interval)

    def peak_mb(self) -> float:
        kernel_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        return max(self.peak, self.process.memory_info().rss, kernel_peak) / 2**20

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_mb()


def load_captioner(args) -> tuple[ImageCaptioner, str]:
    """The bundled model if installed, else a random one of the real size; says which."""
    feature_store.ensure_feature_weights(args.feature_dir, log=lambda message: print(message, file=sys.stderr))
    model_dir = Path(args.model_dir)
    if model_dir.exists() and not args.random_model:
        captioner = ImageCaptioner.from_dirs(model_dir, args.feature_dir, beam_width=args.beam, batch_size=args.batch)
        return captioner, f"trained model {captioner.version} ({model_dir})"
    from captioning.model import ModelConfig, build_captioner
    from captioning.vocabulary import Tokenizer

    train = set((FLICKR / "train.txt").read_text().split())
    lines = (FLICKR / "captions.txt").read_text(encoding="utf-8").splitlines()
    tokenizer = Tokenizer.build(
        [line.split("\t", 1)[1] for line in lines if line.split("#", 1)[0] in train], min_count=5
    )
    model = build_captioner(ModelConfig(vocab_size=tokenizer.size), seed=0)
    captioner = ImageCaptioner(
        model, tokenizer, feature_store.load_extractor(args.feature_dir), beam_width=args.beam, batch_size=args.batch
    )
    return captioner, f"randomly initialised model of the real size (vocabulary {tokenizer.size})"


def tutorial_evaluate(captioner: ImageCaptioner, path) -> list[int]:
    """The TensorFlow tutorial's ``evaluate()``: eager features, eager per-step decoder, greedy."""
    import tensorflow as tf

    model = captioner.captioner
    image = preprocess_image(path)[None]
    features = captioner.feature_model(image)  # eager call, as the tutorial does
    features = tf.reshape(features, (1, -1, features.shape[-1]))
    enc, keys = model.encode(features)
    state = model.initial_state(enc)
    token = tf.constant([START_ID])
    result = []
    for _ in range(model.config.max_length - 1):
        logits, state, _alpha = model.decode_step(token, state, enc, keys)
        predicted = int(tf.argmax(logits[0]))
        if predicted == END_ID:
            break
        result.append(predicted)
        token = tf.constant([predicted])
    return result


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall-clock and median process CPU milliseconds of ``fn()``."""
    wall, cpu = [], []
    for _ in range(repeats):
        cpu_start, start = time.process_time(), time.perf_counter()
        fn()
        wall.append((time.perf_counter() - start) * 1000)
        cpu.append((time.process_time() - cpu_start) * 1000)
    return statistics.median(wall), statistics.median(cpu)


def bulk_breakdown(captioner: ImageCaptioner, paths, batch: int) -> dict:
    """Seconds per image spent decoding the files, in InceptionV3 and in the search."""
    spent = {"image_decode": 0.0, "inception": 0.0, "search": 0.0}
    for i in range(0, len(paths), batch):
        start = time.perf_counter()
        arrays = np.stack([preprocess_image(p) for p in paths[i : i + batch]])
        spent["image_decode"] += time.perf_counter() - start
        start = time.perf_counter()
        feats = np.concatenate([extract_features(captioner.feature_model, arrays[j : j + FEATURE_BATCH]) for j in range(0, len(arrays), FEATURE_BATCH)])
        spent["inception"] += time.perf_counter() - start
        start = time.perf_counter()
        captioner.caption_features(feats)
        spent["search"] += time.perf_counter() - start
    return {k: round(v / len(paths), 4) for k, v in spent.items()}


SOURCES = ("concepts", "objects", "fingerprint")


def compare_sources(captioner: ImageCaptioner, paths, feature_dir, sources, rss: PeakRss) -> dict:
    """Bulk captioning of ``paths`` as the caption alone (A) and with ``sources`` (B), alternated twice (A B A B)."""
    loaded = {
        "concepts": captioner.concepts,
        "fingerprint": captioner.fingerprint,
        "objects": feature_store.load_classifier(feature_dir) if "objects" in sources else None,
    }

    def switch(on: bool) -> None:
        captioner.concepts = loaded["concepts"] if on and "concepts" in sources else None
        captioner.fingerprint = loaded["fingerprint"] if on and "fingerprint" in sources else None
        captioner.object_classifier = loaded["objects"] if on and "objects" in sources else None
        captioner.object_words = default_words() if captioner.object_classifier is not None else None

    switch(True)
    captioner.describe_sources(paths[: captioner.batch_size])  # trace the classifier's graph
    spent = {False: [0.0, 0.0], True: [0.0, 0.0]}
    described = dict.fromkeys(sources, 0)
    for with_sources in (False, True, False, True):
        switch(with_sources)
        cpu_start, start = time.process_time(), time.perf_counter()
        results = captioner.describe_sources(paths)
        spent[with_sources][0] += time.perf_counter() - start
        spent[with_sources][1] += time.process_time() - cpu_start
        for source in sources:
            described[source] += sum(bool(d.concepts) if source == "concepts" else bool(d.objects) if source == "objects"
                                     else d.fingerprint is not None for d in results)
    switch(False)
    captioner.concepts, captioner.fingerprint = loaded["concepts"], loaded["fingerprint"]  # as loaded
    count = 2 * len(paths)
    without, with_ = count / spent[False][0], count / spent[True][0]
    return {
        "switched_on": list(sources),
        "caption_only_images_per_s": round(without, 2),
        "with_sources_images_per_s": round(with_, 2),
        "throughput_lost_pct": round(100 * (1 - with_ / without), 1),
        "caption_only_cpu_s_per_image": round(spent[False][1] / count, 4),
        "with_sources_cpu_s_per_image": round(spent[True][1] / count, 4),
        "cpu_added_pct": round(100 * (spent[True][1] / spent[False][1] - 1), 1),
        # Share of the B rounds' photos that got each source (a source that silently gave nothing would show 0).
        "photos_described_pct": {source: round(100 * n / count, 1) for source, n in described.items()},
        "peak_rss_mb_with_sources": round(rss.peak_mb(), 1),
    }


def make_test_jpeg(path: Path) -> Path:
    """A 640x480 JPEG (a Flickr8k dev photo resized), as a typical upload."""
    from PIL import Image

    name = (FLICKR / "dev.txt").read_text().split()[0]
    with Image.open(FLICKR / "images" / name) as image:
        image.convert("RGB").resize((640, 480), Image.Resampling.BICUBIC).save(path, quality=90)
    return path


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--feature-dir", default=os.environ.get("IMAGESEARCH_FEATURE_DIR", str(REPO / "var" / "models")))
    parser.add_argument("--beam", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--images", type=int, default=96, help="photos for the bulk measurement")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--model-dir", default=str(BUNDLED), help="model directory (default: the bundled model)")
    parser.add_argument("--random-model", action="store_true", help="a random model of the real size instead")
    parser.add_argument(
        "--sources", default=",".join(SOURCES),
        help=f"sources switched on against the caption alone, comma-separated from {','.join(SOURCES)}; 'none' skips the comparison",
    )
    args = parser.parse_args(argv)
    switched = [] if args.sources == "none" else [s.strip() for s in args.sources.split(",") if s.strip()]
    if unknown := set(switched) - set(SOURCES):
        parser.error(f"--sources: unknown {', '.join(sorted(unknown))}; choose from {', '.join(SOURCES)} or 'none'")

    rss = PeakRss()
    captioner, model_note = load_captioner(args)
    with tempfile.TemporaryDirectory() as tmp:
        jpeg = make_test_jpeg(Path(tmp) / "photo-640x480.jpg")
        # Warm-up: trace the compiled graphs and touch every kernel once.
        captioner.caption_sources([jpeg])
        captioner.caption_sources([jpeg], beam_width=1)
        single_ms, single_cpu_ms = timed(lambda: captioner.caption_sources([jpeg]), args.repeats)
        greedy_ms, _ = timed(lambda: captioner.caption_sources([jpeg], beam_width=1), args.repeats)

        names = (FLICKR / "dev.txt").read_text().split()[: args.images + args.batch]
        paths = [FLICKR / "images" / n for n in names[args.batch :]]
        captioner.caption_sources([FLICKR / "images" / n for n in names[: args.batch]])  # warm up full batches
        cpu_start, start = time.process_time(), time.perf_counter()
        results = captioner.caption_sources(paths)
        bulk_s, bulk_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
        breakdown = bulk_breakdown(captioner, paths, args.batch)
        captioning_peak_mb = rss.peak_mb()
        sources = None if not switched else compare_sources(captioner, paths, args.feature_dir, switched, rss)

        # The baseline last, so that the captioning figures above are of a captioning-only process.
        tutorial_evaluate(captioner, jpeg)
        baseline_ms, baseline_cpu_ms = timed(lambda: tutorial_evaluate(captioner, jpeg), args.repeats)

    report = {
        "single_ms": round(single_ms, 1),
        "bulk_images_per_s": round(len(paths) / bulk_s, 2),
        "baseline_single_ms": round(baseline_ms, 1),
        "peak_rss_mb": round(captioning_peak_mb, 1),
        "peak_rss_with_baseline_mb": round(rss.stop(), 1),
        "speedup_single": round(baseline_ms / single_ms, 2),
        "greedy_single_ms": round(greedy_ms, 1),
        # CPU time used by this process: robust to other processes sharing the two cores.
        "single_cpu_ms": round(single_cpu_ms, 1),
        "baseline_single_cpu_ms": round(baseline_cpu_ms, 1),
        "bulk_cpu_s_per_image": round(bulk_cpu_s / len(paths), 4),
        "bulk_s_per_image_breakdown": breakdown,
        "mean_caption_words": round(float(np.mean([len(r.words) for r in results])), 1),
        "model": model_note,
        "beam_width": args.beam,
        "batch_size": args.batch,
        "bulk_images": len(paths),
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    if sources:
        report["sources"] = sources
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:28s} {value}")
    return report


if __name__ == "__main__":
    main()
