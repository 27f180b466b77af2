"""The first ten minutes of a new user, timed (not a timed test): `python bench/first_run_bench.py [--json]`.

Clones this repository into a scratch directory, links this checkout's `.venv` into it (packages
already installed, as on a second try), and runs `make run` there on a free port with a fresh
`var/`, the README's first command exactly. Then, as a person would:

* ``page_s``: from `make run` to the gallery page answering 200;
* the admin password is read from `make run`'s own output, the person logs in and uploads one
  photo (a demo photograph) the moment the page answers;
* ``first_caption_s``: from the page answering until that photo has its caption (read from the
  local SQLite database, as the image page would show it);
* ``log_lines``: how many lines `make run` printed, the whole log with ``--show-log``.

The scratch clone is removed afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from PIL import Image, ImageOps
from skimage import data

REPO = Path(__file__).resolve().parent.parent
PASSWORD = re.compile(r"Created admin account '(?P<user>[^']+)' with password: (?P<password>\S+)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_page(url: str, server: subprocess.Popen, deadline_s: float) -> None:
    """Until the gallery page answers 200 (or the server dies, or the deadline passes)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if server.poll() is not None:
            raise SystemExit(f"make run exited with {server.returncode} before the page answered")
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise SystemExit(f"the page did not answer within {deadline_s:.0f} s")


def read_password(log_path: Path) -> tuple[str, str]:
    found = PASSWORD.search(log_path.read_text(errors="replace"))
    if found is None:
        raise SystemExit("make run printed no admin password")
    return found["user"], found["password"]


def upload_photo(base: str, user: str, password: str, photo: Path) -> None:
    """Log in and upload through the plain upload form, as a browser without scripts does."""
    session = requests.Session()
    login = base + "/accounts/login/"
    session.get(login, timeout=30)
    answer = session.post(
        login,
        data={"username": user, "password": password, "csrfmiddlewaretoken": session.cookies["csrftoken"]},
        headers={"Referer": login},
        timeout=30,
    )
    answer.raise_for_status()
    upload = base + "/upload/"
    session.get(upload, timeout=30)
    with photo.open("rb") as handle:
        answer = session.post(
            upload,
            data={"csrfmiddlewaretoken": session.cookies["csrftoken"]},
            files={"files": (photo.name, handle, "image/jpeg")},
            headers={"Referer": upload},
            timeout=60,
        )
    answer.raise_for_status()
    if "Uploaded" not in answer.text:
        raise SystemExit("the upload was not accepted")


def caption_of_newest_image(database: Path) -> str | None:
    with sqlite3.connect(database, timeout=30) as connection:
        row = connection.execute(
            "SELECT c.text FROM gallery_image i JOIN gallery_caption c ON c.image_id = i.id "
            "WHERE i.id = (SELECT MAX(id) FROM gallery_image)"
        ).fetchone()
    return row[0] if row else None


def wait_for_caption(database: Path, deadline_s: float) -> str:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        caption = caption_of_newest_image(database)
        if caption:
            return caption
        time.sleep(0.1)
    raise SystemExit(f"no caption within {deadline_s:.0f} s")


def test_photo(scratch: Path) -> Path:
    """A photograph that is not among the demo gallery's (so the upload is new): the demo's
    astronaut, mirrored."""
    photo = scratch / "mirrored-astronaut.jpg"
    ImageOps.mirror(Image.fromarray(data.astronaut())).save(photo, quality=90)
    return photo


def run(keep: bool, show_log: bool) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="first-run-"))
    clone = scratch / "imagesearch"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    (clone / ".venv").symlink_to(REPO / ".venv")
    port = free_port()
    log_path = scratch / "make-run.log"
    environment = {key: value for key, value in os.environ.items() if key not in ("DATABASE_URL", "CELERY_BROKER_URL", "DEBUG")}
    started = time.monotonic()
    with log_path.open("w") as log:
        server = subprocess.Popen(
            ["make", "run", f"PORT={port}"], cwd=clone, stdout=log, stderr=subprocess.STDOUT, env=environment, start_new_session=True
        )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_page(base + "/", server, deadline_s=600)
        page_s = time.monotonic() - started
        answered = time.monotonic()
        upload_photo(base, *read_password(log_path), test_photo(scratch))
        caption = wait_for_caption(clone / "var" / "imagesearch.sqlite3", deadline_s=300)
        first_caption_s = time.monotonic() - answered
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    log_text = log_path.read_text(errors="replace")
    if show_log:
        print(log_text, file=sys.stderr)
    if not keep:
        shutil.rmtree(scratch)
    return {
        "page_s": round(page_s, 1),
        "first_caption_s": round(first_caption_s, 1),
        "caption": caption,
        "log_lines": len(log_text.splitlines()),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="one JSON line instead of a sentence")
    parser.add_argument("--keep", action="store_true", help="keep the scratch clone and its log")
    parser.add_argument("--show-log", action="store_true", help="print make run's log to stderr")
    options = parser.parse_args()
    result = run(options.keep, options.show_log)
    if options.json:
        print(json.dumps(result))
    else:
        print(
            f"page answered {result['page_s']} s after make run; the first upload's caption "
            f"{result['first_caption_s']} s later ({result['caption']!r}); {result['log_lines']} log lines; "
            f"load average {result['load_average_1min']}"
        )


if __name__ == "__main__":
    main()
