"""Peak memory and speed of one captioning process as the app builds it: `python bench/worker_memory_bench.py`.

Loads the captioner through ``captioning.services.get_captioner`` (so every setting of the
environment applies: IMAGESEARCH_IMAGE_RUNTIME, IMAGESEARCH_IMAGE_PRECISION, IMAGESEARCH_IMAGE_MEMORY_ARENA,
IMAGESEARCH_MALLOC_MMAP_THRESHOLD, IMAGESEARCH_CAPTION_BATCH, object labels...), describes one warm-up
batch and then ``--images`` Flickr8k dev photos from their files, and prints one JSON line: images/s,
CPU-s per image (robust to other processes on the cores), the peak resident memory (the kernel's
high-water mark, VmHWM) after the warm-up and at the end. Run it under ``--root`` checkouts in
alternation to compare two versions on the same photos (docs/benchmarks.md, "memory of a captioning
process"); one process per figure, as the high-water mark never goes down. Needs a secret key
like any process of the app (`manage.py setup_local`, or `SECRET_KEY=bench` in the environment).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FLICKR = REPO.parent / "shared" / "datasets" / "flickr8k"


def high_water_mb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(REPO), help="the checkout whose code runs (default: this one)")
    parser.add_argument("--images", type=int, default=96, help="photos after the warm-up batch")
    args = parser.parse_args(argv)
    sys.path.insert(0, args.root)
    os.chdir(args.root)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "imagesearch.settings")
    import django

    django.setup()
    from django.conf import settings

    from captioning.services import get_captioner

    captioner = get_captioner()
    batch = settings.IMAGESEARCH_CAPTION_BATCH
    names = (FLICKR / "dev.txt").read_text().split()[: batch + args.images]
    paths = [FLICKR / "images" / name for name in names]
    captioner.describe_sources(paths[:batch])
    warm_mb = high_water_mb()
    cpu, start = time.process_time(), time.perf_counter()
    captioner.describe_sources(paths[batch:])
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    report = {
        "root": args.root,
        "images_per_s": round(args.images / seconds, 2),
        "cpu_s_per_image": round(cpu / args.images, 3),
        "peak_rss_mb": high_water_mb(),
        "peak_rss_after_warm_up_mb": warm_mb,
        "runtimes": [captioner.image_network.runtime, getattr(captioner.object_classifier, "runtime", None)],
        "precisions": [captioner.image_network.precision, getattr(captioner.object_classifier, "precision", None)],
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
