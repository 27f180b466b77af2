"""Captioning speed and memory benchmark (not a timed test): `python bench/caption_bench.py [--json]`.

Measures, in one process, the paths of InceptionV3 (ONNX Runtime fp32 first, then ONNX Runtime
int8 when ``prepare_models`` built it, then the TensorFlow reference) against the tutorial-style
eager ``evaluate()`` loop (one image,
features extracted eagerly, then a per-step Python loop calling the decoder eagerly, greedy):

* ``single_ms``: one 640x480 JPEG captioned from its file (decode + InceptionV3 + beam search),
  median after warm-up; ``baseline_single_ms``: the same file through the eager loop;
* ``bulk_images_per_s``: Flickr8k photos captioned from their files in batches (after one warm-up
  batch, as in a long-running worker), plus where the
  time goes (image decoding, InceptionV3, search) so a miss of the target can be explained;
* ``peak_rss_mb``: the process's peak resident memory (psutil sampling and ``ru_maxrss``), after
  the ONNX Runtime fp32 path, labels included (before the other paths' networks are loaded too;
  bench/worker_memory_bench.py measures each precision in a process of its own);
* same-run ratios per path: ``single_vs_eager`` (time of one photo / the eager loop's) and
  ``bulk_vs_eager`` (bulk images/s x the eager loop's seconds per photo); ``int8_vs_fp32_bulk`` and
  ``int8_vs_fp32_inception`` (bulk images/s, and InceptionV3's own time per photo, int8 over fp32);
* ``sources`` per path: the same bulk captioning as the caption alone and with the other sources
  of a photo's description, alternated twice in this process (A B A B): images/s, CPU-s/image,
  the throughput lost to the sources, one photo with them and the peak RSS with all of them
  loaded. ``--sources`` names which are switched on in the B rounds (default all: ``concepts``
  (the concept head), ``objects`` (the EfficientNet-Lite0 object labels, on the same runtime as
  InceptionV3), ``fingerprint`` (the visual fingerprint)); ``--sources objects`` is issue 13's
  labels-only figure; ``--sources none`` skips the comparison;
* with ``--compare-model-dir``: ``compare_bulk_ratio``, bulk images/s of this model over that
  model's, both captioning the same photos from their files in alternating rounds of this process
  (how a new model version's decoding changes throughput, robust to the noisy shared CPU).

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
from captioning.runtime import DEFAULT_MMAP_THRESHOLD, map_large_allocations  # noqa: E402
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
    """The bundled model if installed, else a random one of the real size, InceptionV3 on ONNX Runtime; says which."""
    log = lambda message: print(message, file=sys.stderr)  # noqa: E731
    # As captioning.services does in the app, so that peak_rss_mb is the serving process's.
    map_large_allocations(int(os.environ.get("IMAGESEARCH_MALLOC_MMAP_THRESHOLD", DEFAULT_MMAP_THRESHOLD)))
    feature_store.ensure_feature_weights(args.feature_dir, log=log)
    feature_store.ensure_classifier_weights(args.feature_dir, log=log)
    for network in feature_store.ONNX_EXPORTS:
        feature_store.ensure_onnx_model(args.feature_dir, network, log=log)
        feature_store.ensure_int8_model(args.feature_dir, network, log=log)
    model_dir = Path(args.model_dir)
    if model_dir.exists() and not args.random_model:
        captioner = ImageCaptioner.from_dirs(
            model_dir, args.feature_dir, beam_width=args.beam, batch_size=args.batch, image_runtime="onnx",
            image_memory_arena=os.environ.get("IMAGESEARCH_IMAGE_MEMORY_ARENA", "true").lower() == "true",
        )
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
        model,
        tokenizer,
        feature_store.load_extractor(args.feature_dir, image_runtime="onnx"),
        beam_width=args.beam or 3,
        batch_size=args.batch,
    )
    return captioner, f"randomly initialised model of the real size (vocabulary {tokenizer.size})"


def tutorial_evaluate(captioner: ImageCaptioner, keras_inception, path) -> list[int]:
    """The TensorFlow tutorial's ``evaluate()``: eager features, eager per-step decoder, greedy."""
    import tensorflow as tf

    model = captioner.captioner
    image = preprocess_image(path)[None]
    features = keras_inception(image)  # eager call, as the tutorial does
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
        feats = np.concatenate([extract_features(captioner.image_network, arrays[j : j + FEATURE_BATCH]) for j in range(0, len(arrays), FEATURE_BATCH)])
        spent["inception"] += time.perf_counter() - start
        start = time.perf_counter()
        captioner.caption_features(feats)
        spent["search"] += time.perf_counter() - start
    return {k: round(v / len(paths), 4) for k, v in spent.items()}


SOURCES = ("concepts", "objects", "fingerprint")


def compare_sources(captioner: ImageCaptioner, classifier, jpeg: Path, paths, repeats: int, sources, rss: PeakRss) -> dict:
    """Bulk captioning of ``paths`` as the caption alone (A) and with ``sources`` (B), alternated
    twice (A B A B), and one photo with them. ``classifier``: the object-label network (an
    ImageNetwork on this path's runtime). The beam's alternatives come from the same search as the
    caption, so both rounds have them."""
    loaded = {"concepts": captioner.concepts, "fingerprint": captioner.fingerprint, "objects": classifier}
    # The reranking and the confidence read the concept head's probabilities: with them the head
    # runs for the caption itself, and only its words are a separate source.
    caption_needs_concepts = captioner.reranker is not None or captioner.confidence is not None

    def switch(on: bool) -> None:
        keep_concepts = caption_needs_concepts or (on and "concepts" in sources)
        captioner.concepts = loaded["concepts"] if keep_concepts else None
        captioner.fingerprint = loaded["fingerprint"] if on and "fingerprint" in sources else None
        captioner.object_classifier = loaded["objects"] if on and "objects" in sources else None
        captioner.object_words = default_words() if captioner.object_classifier is not None else None

    switch(True)
    captioner.describe_sources(paths[: captioner.batch_size])  # trace the sources' graphs
    single_ms, _ = timed(lambda: captioner.describe_sources([jpeg]), repeats)
    spent = {False: [0.0, 0.0], True: [0.0, 0.0]}
    described = dict.fromkeys(sources, 0)
    for with_sources in (False, True, False, True):
        switch(with_sources)
        cpu_start, start = time.process_time(), time.perf_counter()
        results = captioner.describe_sources(paths)
        spent[with_sources][0] += time.perf_counter() - start
        spent[with_sources][1] += time.process_time() - cpu_start
        if with_sources:
            for source in sources:
                described[source] += sum(bool(d.concepts) if source == "concepts" else bool(d.objects) if source == "objects"
                                         else d.fingerprint is not None for d in results)
    peak_mb = rss.peak_mb()
    switch(False)
    captioner.concepts, captioner.fingerprint = loaded["concepts"], loaded["fingerprint"]  # as loaded
    count = 2 * len(paths)
    without, with_ = count / spent[False][0], count / spent[True][0]
    return {
        "switched_on": list(sources),
        "concept_head_in_caption_only": caption_needs_concepts,
        "caption_only_images_per_s": round(without, 2),
        "with_sources_images_per_s": round(with_, 2),
        "throughput_lost_pct": round(100 * (1 - with_ / without), 1),
        "caption_only_cpu_s_per_image": round(spent[False][1] / count, 4),
        "with_sources_cpu_s_per_image": round(spent[True][1] / count, 4),
        "cpu_added_pct": round(100 * (spent[True][1] / spent[False][1] - 1), 1),
        # Share of the B rounds' photos that got each source (a source that silently gave nothing would show 0).
        "photos_described_pct": {source: round(100 * n / count, 1) for source, n in described.items()},
        "single_with_sources_ms": round(single_ms, 1),
        "peak_rss_mb_with_sources": round(peak_mb, 1),
    }


def compare_models(captioner: ImageCaptioner, args, paths) -> dict:
    """Bulk images/s of ``captioner`` and of the model in ``--compare-model-dir``, alternating rounds."""
    other = ImageCaptioner.from_dirs(args.compare_model_dir, args.feature_dir, beam_width=None, batch_size=args.batch)
    other.caption_sources(paths[: args.batch])  # warm up its graphs
    seconds = {"this": [], "other": []}
    for _ in range(max(1, args.compare_rounds)):
        for key, model in (("this", captioner), ("other", other)):
            start = time.perf_counter()
            model.caption_sources(paths)
            seconds[key].append(time.perf_counter() - start)
    this_s, other_s = statistics.median(seconds["this"]), statistics.median(seconds["other"])
    return {
        "compare_model": f"{other.version} (beam {other.beam_width})",
        "compare_this_images_per_s": round(len(paths) / this_s, 2),
        "compare_other_images_per_s": round(len(paths) / other_s, 2),
        "compare_bulk_ratio": round(other_s / this_s, 3),
    }


def make_test_jpeg(path: Path) -> Path:
    """A 640x480 JPEG (a Flickr8k dev photo resized), as a typical upload."""
    from PIL import Image

    name = (FLICKR / "dev.txt").read_text().split()[0]
    with Image.open(FLICKR / "images" / name) as image:
        image.convert("RGB").resize((640, 480), Image.Resampling.BICUBIC).save(path, quality=90)
    return path


def measure_path(captioner: ImageCaptioner, image_network, classifier, jpeg: Path, warm_up: list[Path], bulk_paths: list[Path], args,
                 rss: PeakRss) -> dict:
    """Single-photo and bulk figures of the captioner with InceptionV3 as ``image_network`` (caption
    only), and with and without the ``--sources`` (``classifier``: the object labels' network on
    the same runtime)."""
    captioner.image_network, captioner.object_classifier = image_network, None
    concepts, fingerprint = captioner.concepts, captioner.fingerprint
    captioner.fingerprint = None  # the caption alone (the concept head stays when the reranking reads it)
    if captioner.reranker is None and captioner.confidence is None:
        captioner.concepts = None
    # Warm-up: trace the compiled graphs and touch every kernel once.
    captioner.caption_sources([jpeg])
    captioner.caption_sources([jpeg], beam_width=1)
    single_ms, single_cpu_ms = timed(lambda: captioner.caption_sources([jpeg]), args.repeats)
    greedy_ms, _ = timed(lambda: captioner.caption_sources([jpeg], beam_width=1), args.repeats)
    captioner.caption_sources(warm_up)  # full batches
    cpu_start, start = time.process_time(), time.perf_counter()
    results = captioner.caption_sources(bulk_paths)
    bulk_s, bulk_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    figures = {
        "single_ms": round(single_ms, 1),
        "greedy_single_ms": round(greedy_ms, 1),
        "bulk_images_per_s": round(len(bulk_paths) / bulk_s, 2),
        # CPU time used by this process: robust to other processes sharing the two cores.
        "single_cpu_ms": round(single_cpu_ms, 1),
        "bulk_cpu_s_per_image": round(bulk_cpu_s / len(bulk_paths), 4),
        "bulk_s_per_image_breakdown": bulk_breakdown(captioner, bulk_paths, args.batch),
        "mean_caption_words": round(float(np.mean([len(r.words) for r in results])), 1),
    }
    captioner.concepts, captioner.fingerprint = concepts, fingerprint
    if args.switched:
        figures["sources"] = compare_sources(captioner, classifier, jpeg, bulk_paths, args.repeats, args.switched, rss)
    return figures


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--feature-dir", default=os.environ.get("IMAGESEARCH_FEATURE_DIR", str(REPO / "var" / "models")))
    parser.add_argument("--beam", type=int, default=None, help="beam width (default: the model's tuned one, else 3)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--images", type=int, default=96, help="photos for the bulk measurement")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--model-dir", default=str(BUNDLED), help="model directory (default: the bundled model)")
    parser.add_argument("--random-model", action="store_true", help="a random model of the real size instead")
    parser.add_argument(
        "--sources", default=",".join(SOURCES),
        help=f"sources switched on against the caption alone, comma-separated from {','.join(SOURCES)}; 'none' skips the comparison",
    )
    parser.add_argument("--compare-model-dir", default=None, help="also time this model directory, same photos, same process")
    parser.add_argument("--compare-rounds", type=int, default=2, help="alternating bulk rounds per model for the comparison")
    args = parser.parse_args(argv)
    args.switched = [] if args.sources == "none" else [s.strip() for s in args.sources.split(",") if s.strip()]
    if unknown := set(args.switched) - set(SOURCES):
        parser.error(f"--sources: unknown {', '.join(sorted(unknown))}; choose from {', '.join(SOURCES)} or 'none'")

    rss = PeakRss()
    captioner, model_note = load_captioner(args)
    paths: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        jpeg = make_test_jpeg(Path(tmp) / "photo-640x480.jpg")
        names = (FLICKR / "dev.txt").read_text().split()[: args.images + args.batch]
        warm_up = [FLICKR / "images" / n for n in names[: args.batch]]
        bulk_paths = [FLICKR / "images" / n for n in names[args.batch :]]
        for image_runtime, precision in (("onnx", "fp32"), ("onnx", "int8"), ("tensorflow", "fp32")):
            # The captioner was loaded with InceptionV3 on ONNX Runtime, fp32 (load_captioner).
            network = (captioner.image_network if (image_runtime, precision) == ("onnx", "fp32")
                       else feature_store.load_extractor(args.feature_dir, image_runtime=image_runtime, precision=precision))
            if network.precision != precision:
                print(f"no int8 graph of InceptionV3 in {args.feature_dir}: the int8 path is not measured", file=sys.stderr)
                continue
            classifier = None if "objects" not in args.switched else feature_store.load_classifier_network(
                args.feature_dir, image_runtime=image_runtime, precision=precision)
            label = network.runtime if precision == "fp32" else f"{network.runtime}_{precision}"
            paths[label] = measure_path(captioner, network, classifier, jpeg, warm_up, bulk_paths, args, rss)
            if label == "onnxruntime":
                onnx_peak_mb = rss.peak_mb()
        reference = captioner.image_network  # TensorFlow's, measured last

        comparison = compare_models(captioner, args, bulk_paths) if args.compare_model_dir else {}

        # The baseline last, so that the captioning figures above are of a captioning-only process.
        tutorial_evaluate(captioner, reference.model, jpeg)
        baseline_ms, baseline_cpu_ms = timed(lambda: tutorial_evaluate(captioner, reference.model, jpeg), args.repeats)

    for figures in paths.values():
        figures["single_vs_eager"] = round(figures["single_ms"] / baseline_ms, 3)
        figures["bulk_vs_eager"] = round(figures["bulk_images_per_s"] * baseline_ms / 1000, 2)
    breakdown = {label: figures["bulk_s_per_image_breakdown"]["inception"] for label, figures in paths.items()}
    report = {
        **paths,
        "baseline_single_ms": round(baseline_ms, 1),
        "baseline_single_cpu_ms": round(baseline_cpu_ms, 1),
        "onnx_vs_tensorflow_bulk": round(paths["onnxruntime"]["bulk_images_per_s"] / paths["tensorflow"]["bulk_images_per_s"], 2),
        "onnx_vs_tensorflow_inception": round(breakdown["tensorflow"] / breakdown["onnxruntime"], 2),
        **({"int8_vs_fp32_bulk": round(paths["onnxruntime_int8"]["bulk_images_per_s"] / paths["onnxruntime"]["bulk_images_per_s"], 2),
            "int8_vs_fp32_inception": round(breakdown["onnxruntime"] / breakdown["onnxruntime_int8"], 2)}
           if "onnxruntime_int8" in paths else {}),
        "peak_rss_mb": round(onnx_peak_mb, 1),
        "peak_rss_with_tensorflow_and_baseline_mb": round(rss.stop(), 1),
        "model": model_note,
        "beam_width": captioner.beam_width,
        "batch_size": args.batch,
        "bulk_images": len(bulk_paths),
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        **comparison,
    }
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:42s} {value}")
    return report


if __name__ == "__main__":
    main()
