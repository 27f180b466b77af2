"""Hostile-load probe of a local instance (issue 14, items 4 and 5); figures in docs/benchmarks.md.

Starts its own server on 127.0.0.1 only (gunicorn, one process with threads, tasks in-process:
the embedded mode of `make run`, on a fresh SQLite data directory), then, with bounded loops:

1. memory: CONCURRENT anonymous searches by image at once, each a 49-megapixel JPEG (or PNG,
   `--format`; just under the pixel limit), while the server's resident memory is sampled;
2. flood: 20 anonymous searches by image at once with a small photo;
3. login: 10 wrong passwords in a row.

It prints one JSON line per phase (status counts, seconds) and the server's peak RSS, then stops
the server. `--root` serves another checkout (e.g. the main branch) for a before/after figure.

    flock /tmp/cpu-heavy.lock nice -n 5 .venv/bin/python bench/abuse_probe.py
"""
import argparse
import io
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import requests
from PIL import Image

HOST = "127.0.0.1"  # never anything else: this script sends hostile traffic
ROOT = Path(__file__).resolve().parent.parent


def big_photo(side: int = 7000, fmt: str = "JPEG") -> bytes:
    """A side x side photo (49 MP for 7000): a smooth picture that compresses to about a megabyte."""
    x = np.linspace(0, 255, side, dtype=np.float32)
    pixels = np.stack([x[None, :] + 0 * x[:, None], x[:, None] + 0 * x[None, :], np.full((side, side), 96, np.float32)], axis=-1)
    out = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(out, format=fmt, **({"quality": 70} if fmt == "JPEG" else {"optimize": True}))
    return out.getvalue()


def small_jpeg() -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(out, format="JPEG")
    return out.getvalue()


class RssSampler(threading.Thread):
    """Peak resident memory of the server (its master and worker processes together)."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.process, self.peak, self.stopped = psutil.Process(pid), 0, threading.Event()

    def current(self) -> int:
        total = 0
        for proc in [self.process, *self.process.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def run(self):
        while not self.stopped.wait(0.05):
            self.peak = max(self.peak, self.current())


def start_server(root: Path, port: int, data_dir: str, extra_env: dict) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "CELERY_", "IMAGESEARCH_", "CACHE_URL"))}
    env.update(
        DEBUG="false", SECRET_KEY=secrets.token_urlsafe(40), ALLOWED_HOSTS=HOST, IMAGESEARCH_DATA_DIR=data_dir,
        IMAGESEARCH_FEATURE_DIR=str(ROOT / "var" / "models"), LOG_LEVEL="WARNING", DJANGO_SETTINGS_MODULE="imagesearch.settings",
        **extra_env,
    )
    python = str(ROOT / ".venv" / "bin" / "python")
    subprocess.run([python, "manage.py", "migrate", "-v", "0"], cwd=root, env=env, check=True, capture_output=True)
    server = subprocess.Popen(
        [python, "-m", "gunicorn", "imagesearch.wsgi", "--bind", f"{HOST}:{port}", "--workers", "1",
         "--worker-class", "gthread", "--threads", "24", "--timeout", "600"],
        cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=open(Path(data_dir) / "server.log", "wb"),
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            requests.get(f"http://{HOST}:{port}/", timeout=60)
            return server
        except requests.RequestException:
            if server.poll() is not None:
                raise SystemExit("the server did not start:\n" + (Path(data_dir) / "server.log").read_text()[-3000:])
            time.sleep(0.5)
    server.kill()
    raise SystemExit("the server did not answer within 5 minutes")


def at_once(count: int, send) -> tuple[Counter, float]:
    started = time.perf_counter()
    with ThreadPoolExecutor(count) as pool:
        codes = Counter(pool.map(lambda _: send(), range(count)))
    return codes, time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout to serve (default: this one)")
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    parser.add_argument("--concurrent", type=int, default=6, help="49 MP query photos sent at once")
    parser.add_argument("--format", default="JPEG", choices=["JPEG", "PNG"], help="of the 49 MP photos")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="extra server setting")
    args = parser.parse_args()
    if not args.port:
        with socket.socket() as probe:
            probe.bind((HOST, 0))
            args.port = probe.getsockname()[1]
    base = f"http://{HOST}:{args.port}"
    extra = dict(item.split("=", 1) for item in args.env)
    photo, small = big_photo(fmt=args.format), small_jpeg()

    def search_by_image(data):
        def send():
            try:
                return requests.post(f"{base}/api/search/by-image", files={"file": ("q.jpg", data)}, timeout=300).status_code
            except requests.RequestException as exc:
                return type(exc).__name__
        return send

    with tempfile.TemporaryDirectory(prefix="abuse-probe-") as data_dir:
        server = start_server(args.root, args.port, data_dir, extra)
        try:
            sampler = RssSampler(server.pid)
            # Warm up: the first captioning loads TensorFlow and the model.
            warm = search_by_image(small)()
            idle = sampler.current()
            sampler.start()
            print(json.dumps({"root": str(args.root), "env": extra, "warm_up_status": warm, "rss_after_warm_up_mb": round(idle / 2**20)}))
            codes, seconds = at_once(args.concurrent, search_by_image(photo))
            print(json.dumps({"phase": "memory", "format": args.format, "photo_kb": len(photo) // 1024, "concurrent": args.concurrent,
                              "statuses": dict(codes), "seconds": round(seconds, 1), "peak_rss_mb": round(sampler.peak / 2**20)}))
            codes, seconds = at_once(20, search_by_image(small))
            print(json.dumps({"phase": "flood", "concurrent": 20, "statuses": dict(codes), "seconds": round(seconds, 1)}))
            session = requests.Session()
            login = f"{base}/accounts/login/"
            form = session.get(login, timeout=30).text
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form)
            logins = Counter(
                session.post(login, data={"username": "nobody", "password": f"guess-{i}", "csrfmiddlewaretoken": token.group(1) if token else ""},
                             headers={"Referer": login}, timeout=30).status_code
                for i in range(10)
            )
            sampler.stopped.set()
            print(json.dumps({"phase": "login", "attempts": 10, "statuses": dict(logins)}))
            print(json.dumps({"peak_rss_mb": round(sampler.peak / 2**20)}))
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()


if __name__ == "__main__":
    sys.exit(main())
