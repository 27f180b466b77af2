"""The captioning task against the model's own batch speed, in one process: `python bench/worker_task_bench.py`.

Stores `--images` Flickr8k dev photos in a scratch PostgreSQL database (`imagesearch_task_bench`,
dropped afterwards), then, in rounds, describes them three ways in turn with the same loaded
captioner: `caption_sources` (the in-process batch speed that bench/pipeline_bench.py divides by),
`gallery.tasks.caption_images` called on tasks of one model batch (decode, describe, store one
after the other) and on tasks of `--task-size` photos (the model describes a batch on a thread
while the task stores the one before and decodes the next). Each pass describes every photo
under a model version of its own, so the task stores whole descriptions each time, as a
re-captioning does. No broker, import or worker start: what is left is the task's own cost.
Alternating passes (each first in turn) keep the ratios comparable on a shared machine; prints
one JSON line with the images/s of each pass and the median per-round ratios to `caption_sources`.
"""
import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
DATABASE = "imagesearch_task_bench"
os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{DATABASE}"
os.environ["CELERY_BROKER_URL"] = ""  # tasks are called directly

from pipeline_bench import FLICKR, administer  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--task-size", type=int, default=64, help="photos per task of the pipelined pass")
    args = parser.parse_args()

    administer(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)", f"CREATE DATABASE {DATABASE}")
    try:
        result = measure(args)
    finally:
        from django.db import connections

        connections.close_all()
        administer(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    print(json.dumps(result))


def measure(args) -> dict:
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    from captioning import services
    from gallery import tasks
    from gallery.ingest import ingest_bytes

    call_command("migrate", verbosity=0)
    names = (FLICKR / "dev.txt").read_text().split()[: args.images]
    data = [(FLICKR / "images" / name).read_bytes() for name in names]
    ids = [ingest_bytes(photo, name, enqueue=False).image.pk for photo, name in zip(data, names)]
    captioner = services.warm_up_captioner(photos=settings.IMAGESEARCH_CAPTION_BATCH)
    captioner.caption_sources(data[: settings.IMAGESEARCH_CAPTION_BATCH])
    version = captioner.version

    def in_tasks(size):
        return lambda: [tasks.caption_images(ids[start : start + size]) for start in range(0, len(ids), size)]

    passes = {
        "caption_sources": lambda: captioner.caption_sources(data),
        "tasks_of_one_batch": in_tasks(settings.IMAGESEARCH_CAPTION_BATCH),
        f"tasks_of_{args.task_size}": in_tasks(args.task_size),
    }
    speeds = {name: [] for name in passes}
    order = list(passes)
    for round_number in range(args.rounds):
        for name in order[round_number % 3 :] + order[: round_number % 3]:  # each pass first in turn
            captioner.version = f"{version}-bench-{round_number}-{name}"  # every photo described and stored again
            start = time.perf_counter()
            passes[name]()
            speeds[name].append(round(len(ids) / (time.perf_counter() - start), 2))
    return {
        "images_per_s": speeds,
        "median_ratio_to_caption_sources": {
            name: round(statistics.median(s / b for s, b in zip(values, speeds["caption_sources"])), 3)
            for name, values in speeds.items()
        },
        "images": len(ids),
        "batch": settings.IMAGESEARCH_CAPTION_BATCH,
        "image_runtime": f"{captioner.image_network.runtime} {getattr(captioner.image_network, 'precision', '')}".strip(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


if __name__ == "__main__":
    main()
