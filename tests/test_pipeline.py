"""End to end with real processes: gunicorn, Celery prefork workers, a Redis broker, PostgreSQL.

Uploads go through the web API; workers caption with the bundled model; the photo is found by
searching. Failure cases: a worker killed mid-task, Redis down during an upload, the same photo
uploaded twice at once, a corrupt file.
"""
import subprocess
import threading
from pathlib import Path

import pytest
import requests
from django.contrib.auth import get_user_model
from django.db import connection

from gallery.models import Caption, Image
from searchindex.analysis import analyze

from .stack import ROOT, RedisServer, Stack, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

FLICKR = ROOT.parent / "shared" / "datasets" / "flickr8k"
CAPTION_TIMEOUT = 300


def dev_images(count: int) -> list[Path]:
    names = (FLICKR / "dev.txt").read_text().split()
    return [FLICKR / "images" / name for name in names[:count]]


@pytest.fixture(scope="module")
def stack(django_db_setup, django_db_blocker, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("stack")
    redis_server = RedisServer(workdir).start()
    with django_db_blocker.unblock():
        database = connection.settings_dict["NAME"]
    stack = Stack(database, workdir / "media", redis_server, workdir)
    stack.start_web()
    stack.start_worker()
    stack.wait_worker_ready()
    yield stack
    stack.stop_all()
    redis_server.stop()


@pytest.fixture
def session(stack):
    """An HTTP session logged in through the login page, with its CSRF token ready."""
    get_user_model().objects.create_user("uploader", password="a-long-test-password")
    client = requests.Session()
    client.get(f"{stack.base_url}/accounts/login/")
    response = client.post(
        f"{stack.base_url}/accounts/login/",
        data={"username": "uploader", "password": "a-long-test-password",
              "csrfmiddlewaretoken": client.cookies["csrftoken"]},
        headers={"Referer": f"{stack.base_url}/accounts/login/"},
    )
    assert response.ok and "sessionid" in client.cookies
    client.headers.update({"X-CSRFToken": client.cookies["csrftoken"], "Referer": stack.base_url})
    return client


def upload(stack, session, path: Path, data: bytes | None = None):
    files = {"file": (path.name, data if data is not None else path.read_bytes(), "image/jpeg")}
    return session.post(f"{stack.base_url}/api/images", files=files, timeout=60)


def manage(stack, *args) -> str:
    proc = subprocess.run(
        [str(Path(__import__("sys").executable)), "manage.py", *args],
        cwd=ROOT, env=stack.env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def wait_status(image_ids, statuses=("done", "failed"), timeout=CAPTION_TIMEOUT):
    def finished():
        return Image.objects.filter(pk__in=image_ids, status__in=statuses).count() == len(image_ids)

    wait_until(finished, timeout, f"images {image_ids} to reach {statuses}", interval=0.5)


def test_upload_is_captioned_by_a_worker_and_found_by_search(stack, session):
    response = upload(stack, session, dev_images(1)[0])
    assert response.status_code == 201, response.text
    image_id = response.json()["image"]["id"]
    wait_status([image_id])
    image = Image.objects.get(pk=image_id)
    assert image.status == "done", image.error
    caption = image.active_caption
    assert caption.source == "model" and caption.model_version and caption.score is not None
    word = max((w for w in caption.text.split() if analyze(w)), key=len)
    results = session.get(f"{stack.base_url}/api/search", params={"q": word}).json()
    assert image_id in [hit["image"]["id"] for hit in results["results"]]


def test_worker_killed_mid_task_is_recovered_exactly_once(stack):
    paths = dev_images(17)[1:]
    stack.env["IMAGESEARCH_CAPTION_TASK_SIZE"] = "16"  # one task for the 16 photos
    folder = Path(stack.logdir) / "batch"
    folder.mkdir()
    for path in paths:
        (folder / path.name).symlink_to(path)
    manage(stack, "import_images", str(folder))
    ids = list(Image.objects.filter(original_name__in=[p.name for p in paths]).values_list("pk", flat=True))
    assert len(ids) == len(paths)
    wait_until(lambda: Image.objects.filter(pk__in=ids, status="processing").exists(), 120, "the task to start")
    stack.kill(stack.processes[-1])  # SIGKILL the worker and its pool in the middle of the batch
    assert Image.objects.filter(pk__in=ids, status="done").count() < len(ids)

    stack.start_worker("worker2")
    stack.wait_worker_ready("worker2")
    manage(stack, "caption_pending", "--older-than", "0")
    wait_status(ids, statuses=("done",))
    for image_id in ids:
        assert Caption.objects.filter(image_id=image_id).count() == 1


def test_upload_while_redis_is_down_is_kept_and_captioned_later(stack, session):
    path = dev_images(20)[19]
    stack.redis.stop()
    try:
        response = upload(stack, session, path)
    finally:
        stack.redis.start()
    assert response.status_code == 201, response.text
    image_id = response.json()["image"]["id"]
    assert Image.objects.get(pk=image_id).status == "pending"
    manage(stack, "caption_pending", "--older-than", "0")
    wait_status([image_id], statuses=("done",))
    assert Caption.objects.filter(image_id=image_id).count() == 1


def test_same_photo_uploaded_twice_at_once_is_one_image(stack, session):
    path = dev_images(22)[21]
    responses = []
    threads = [threading.Thread(target=lambda: responses.append(upload(stack, session, path))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.status_code for r in responses) in ([200, 201], [201, 201])
    ids = {r.json()["image"]["id"] for r in responses}
    assert len(ids) == 1
    assert Image.objects.filter(original_name=path.name).count() == 1


def test_corrupt_file_fails_with_a_message_and_the_worker_keeps_serving(stack, session):
    good = dev_images(24)[23]
    data = good.read_bytes()
    # A file damaged on disk after upload: the worker must fail it clearly, not crash.
    broken = Image.objects.create(
        file="images/00/corrupt.jpg", original_name="corrupt.jpg", sha256="0" * 64, format="JPEG"
    )
    target = Path(stack.env["MEDIA_ROOT"]) / "images" / "00" / "corrupt.jpg"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data[: len(data) // 3])
    manage(stack, "caption_pending", "--older-than", "0")
    wait_status([broken.pk])
    broken.refresh_from_db()
    assert broken.status == "failed"
    assert "could not be read" in broken.error

    response = upload(stack, session, good)
    image_id = response.json()["image"]["id"]
    wait_status([image_id], statuses=("done",))
