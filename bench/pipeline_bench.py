"""Pipeline benchmark: upload-to-searchable latency and bulk import throughput with real workers.

Runs gunicorn, Celery prefork workers and a private Redis against a scratch PostgreSQL database
(`imagesearch_bench`, dropped afterwards), with the bundled model and Flickr8k photos from
../shared. Baselines are measured in the same run: the single-image task path (one image per
task) for bulk import, and the model's own batch speed in this process.

    python bench/pipeline_bench.py [--uploads 50] [--bulk 1000] [--single 200] [--json]

`bulk_vs_model_batch_speed` is the bulk import's throughput through the workers over the model's
own batch speed in one process (the target is >= 0.9). Worker settings to compare go in as
environment variables of the bulk workers (`--worker-env IMAGESEARCH_IMAGE_THREADS=1`, repeatable);
`--uploads 0` / `--single 0` skip those measurements.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg2
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

from tests.stack import ROOT, RedisServer, Stack, wait_until  # noqa: E402

FLICKR = ROOT.parent / "shared" / "datasets" / "flickr8k"
DATABASE = "imagesearch_bench"
PASSWORD = "bench-password-not-secret"


def administer(*statements):
    """Run statements outside a transaction (CREATE/DROP DATABASE refuse to run inside one)."""
    conn = psycopg2.connect(host="127.0.0.1", user="postgres", dbname="postgres")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
    finally:
        conn.close()


def recreate_database():
    administer(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)", f"CREATE DATABASE {DATABASE}")


def drop_database():
    administer(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")


def manage(stack: Stack, *args, **env):
    subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env={**stack.env, **env}, check=True,
                   stdout=subprocess.DEVNULL)


def photos(count: int, offset: int = 0) -> list[Path]:
    names = (FLICKR / "train.txt").read_text().split() + (FLICKR / "dev.txt").read_text().split()
    return [FLICKR / "images" / name for name in names[offset: offset + count]]


def login(stack: Stack) -> requests.Session:
    session = requests.Session()
    session.get(f"{stack.base_url}/accounts/login/")
    session.post(f"{stack.base_url}/accounts/login/",
                 data={"username": "bench", "password": PASSWORD, "csrfmiddlewaretoken": session.cookies["csrftoken"]},
                 headers={"Referer": stack.base_url})
    session.headers.update({"X-CSRFToken": session.cookies["csrftoken"], "Referer": stack.base_url})
    return session


def upload_latencies(stack: Stack, paths: list[Path]) -> list[float]:
    """Seconds from the start of each upload until the image is captioned and indexed."""
    session = login(stack)
    latencies = []
    for path in paths:
        start = time.perf_counter()
        response = session.post(f"{stack.base_url}/api/images", files={"file": (path.name, path.read_bytes())})
        response.raise_for_status()
        image_id = response.json()["image"]["id"]
        # Status "done" is committed in the same transaction as the index update.
        wait_until(lambda: session.get(f"{stack.base_url}/api/images/{image_id}").json()["status"] == "done",
                   120, f"image {image_id}", interval=0.02)
        latencies.append(time.perf_counter() - start)
    return latencies


def wait_worker_warm(stack: Stack):
    """Return once a worker process has run a task: a pool process loads and warms up the model
    after the worker says it is ready (worker_process_init), which a running deployment has done
    long before an import, and the in-process baseline before it is timed."""
    manage(stack, "shell", "-c", "from gallery.tasks import caption_images; caption_images.delay([]).get(timeout=600)")


def count_done() -> int:
    with psycopg2.connect(host="127.0.0.1", user="postgres", dbname=DATABASE) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM gallery_image WHERE status IN ('done', 'failed')")
        return cur.fetchone()[0]


def import_throughput(stack: Stack, paths: list[Path], task_size: int | None, workdir: Path) -> float:
    """Images per second for an import of `paths` in tasks of `task_size` photos (None: the app's
    default), from the first enqueue to the last caption."""
    folder = workdir / f"import-{task_size}-{len(paths)}"
    folder.mkdir()
    for path in paths:
        (folder / path.name).symlink_to(path)
    before = count_done()
    start = time.perf_counter()
    manage(stack, "import_images", str(folder), **({} if task_size is None else {"IMAGESEARCH_CAPTION_TASK_SIZE": str(task_size)}))
    wait_until(lambda: count_done() - before >= len(paths), 3600, "the import", interval=0.25)
    return len(paths) / (time.perf_counter() - start)


def model_batch_speed(paths: list[Path]) -> tuple[float, str]:
    """The captioner's own batch throughput (images/s) on decoded files in this process, and its InceptionV3 runtime."""
    import django

    django.setup()
    from captioning.services import get_captioner

    captioner = get_captioner()
    data = [path.read_bytes() for path in paths]
    captioner.caption_sources(data[:16])
    start = time.perf_counter()
    captioner.caption_sources(data)
    return len(paths) / (time.perf_counter() - start), captioner.image_network.runtime


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uploads", type=int, default=50)
    parser.add_argument("--bulk", type=int, default=1000)
    parser.add_argument("--single", type=int, default=200, help="photos imported one per task (baseline)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: the app's setting)")
    parser.add_argument("--task-size", type=int, default=None,
                        help="photos per captioning task in the bulk import (default: the app's IMAGESEARCH_CAPTION_TASK_SIZE)")
    parser.add_argument("--worker-env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment of the bulk import's workers (repeatable)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
    recreate_database()
    redis_server = RedisServer(workdir).start()
    stack = Stack(DATABASE, workdir / "media", redis_server, workdir)
    try:
        manage(stack, "migrate", "--no-input")
        manage(stack, "shell", "-c",
               f"from django.contrib.auth.models import User; User.objects.create_user('bench', password='{PASSWORD}')")
        latencies = []
        if args.uploads:
            stack.start_web()
            stack.start_worker(concurrency=1)
            stack.wait_worker_ready()
            latencies = upload_latencies(stack, photos(args.uploads))
            stack.stop_all()

        stack.env.update(item.split("=", 1) for item in args.worker_env)
        stack.start_web()
        stack.start_worker(concurrency=args.workers)
        stack.wait_worker_ready()
        wait_worker_warm(stack)
        offset = args.uploads
        single = import_throughput(stack, photos(args.single, offset), 1, workdir) if args.single else None
        bulk = import_throughput(stack, photos(args.bulk, offset + args.single), args.task_size, workdir)
        stack.stop_all()
        model_speed, image_runtime = model_batch_speed(photos(64, offset + args.single + args.bulk))
    finally:
        stack.stop_all()
        redis_server.stop()
        drop_database()

    result = {
        "bulk_images_per_s": round(bulk, 2),
        "workers": args.workers or "default",
        "bulk_task_size": args.task_size or "default",
        "worker_env": args.worker_env,
        "image_runtime": image_runtime,
        "model_batch_images_per_s": round(model_speed, 2),
        "bulk_vs_model_batch_speed": round(bulk / model_speed, 3),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    if latencies:
        result["upload_to_searchable_p50_ms"] = round(statistics.median(latencies) * 1000, 1)
        result["p95_ms"] = round(statistics.quantiles(latencies, n=20)[18] * 1000, 1)
    if single:
        result["single_image_path_images_per_s"] = round(single, 2)
        result["bulk_vs_single_image_path"] = round(bulk / single, 3)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:34} {value}")


if __name__ == "__main__":
    main()
