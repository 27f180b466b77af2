"""Captioner start-up benchmark (not a timed test): `python bench/startup_bench.py [--json]`.

How long a fresh process takes until it can caption (what the web process's background preload
and a worker's first task wait for), for each image runtime, and where that time goes. Each
runtime is measured in its own fresh Python process, ``--runs`` times, alternating:

* ``imports_s``: TensorFlow, Keras (and ONNX Runtime) imported;
* ``captioner_model_s``: the captioner's model directory (decoder weights, vocabulary, concepts);
* ``inceptionv3_s`` / ``classifier_s``: the image networks loaded on that runtime (weights file
  checksum, graph built or ONNX session created);
* ``first_caption_s``: the first caption of a blank photo (graph tracing, kernel set-up), as
  ``captioning.services`` does right after loading;
* ``ready_s``: from the interpreter's start to the end of that first caption.

Uses the bundled model and ``var/models`` (run ``prepare_models`` first), object labels on.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUNDLED = REPO / "captioning" / "models" / "current"
STAGES = ("imports_s", "captioner_model_s", "inceptionv3_s", "classifier_s", "first_caption_s", "ready_s")


def child(image_runtime: str, model_dir: str, feature_dir: str, started: float) -> dict:
    """One fresh process: load the captioner as the app does, timing each part."""
    spent: dict[str, float] = {}
    start = time.time()
    import keras  # noqa: F401
    import tensorflow  # noqa: F401

    if image_runtime != "tensorflow":
        import onnxruntime  # noqa: F401
    sys.path.insert(0, str(REPO))
    from PIL import Image

    from captioning import features as feature_store
    from captioning import storage
    from captioning.inception import preprocess_image
    from captioning.inference import ImageCaptioner

    spent["imports_s"] = time.time() - start

    def timed(module, name, key):
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            t0 = time.time()
            try:
                return original(*args, **kwargs)
            finally:
                spent[key] = spent.get(key, 0.0) + time.time() - t0

        setattr(module, name, wrapper)

    timed(storage, "load_model_dir", "captioner_model_s")
    timed(feature_store, "load_extractor", "inceptionv3_s")
    timed(feature_store, "load_classifier_network", "classifier_s")
    captioner = ImageCaptioner.from_dirs(model_dir, feature_dir, object_labels=True, image_runtime=image_runtime)
    t0 = time.time()
    captioner.describe_arrays([preprocess_image(Image.new("RGB", (299, 299), "gray"))])
    spent["first_caption_s"] = time.time() - t0
    spent["ready_s"] = time.time() - started
    spent["runtimes"] = [captioner.image_network.runtime, captioner.object_classifier.runtime]
    return spent


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per runtime")
    parser.add_argument("--model-dir", default=str(BUNDLED))
    parser.add_argument("--feature-dir", default=os.environ.get("IMAGESEARCH_FEATURE_DIR", str(REPO / "var" / "models")))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--started", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.model_dir, args.feature_dir, args.started)))
        return {}

    runs: dict[str, list[dict]] = {"onnx": [], "tensorflow": []}
    for _ in range(args.runs):
        for image_runtime in runs:
            started = time.time()
            out = subprocess.run(
                [sys.executable, __file__, "--child", image_runtime, "--started", repr(started),
                 "--model-dir", args.model_dir, "--feature-dir", args.feature_dir],
                check=True, capture_output=True, text=True,
            ).stdout
            runs[image_runtime].append(json.loads(out.strip().splitlines()[-1]))
    report = {
        image_runtime: {
            **{stage: round(statistics.median(r[stage] for r in results), 2) for stage in STAGES},
            "ready_s_each": [round(r["ready_s"], 2) for r in results],
            "runtimes": results[0]["runtimes"],
        }
        for image_runtime, results in runs.items()
    }
    report["cpu_count"] = os.cpu_count()
    report["load_average_1min"] = round(os.getloadavg()[0], 2)
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:12s} {value}")
    return report


if __name__ == "__main__":
    main()
