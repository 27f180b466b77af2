"""Management commands of the gallery, in the embedded default (tasks run in-process).

Captions come from the bundled model, loaded once for the session.
"""
import csv
import io
import json
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from gallery.captions import add_model_caption, set_human_caption
from gallery.ingest import ingest_bytes
from gallery.models import Image
from searchindex import index as search_index

from .conftest import make_photo

pytestmark = pytest.mark.django_db


def run(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=out)
    return out.getvalue()


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "one.jpg").write_bytes(make_photo(1))
    (tmp_path / "two.png").write_bytes(make_photo(2, fmt="PNG"))
    (tmp_path / "notes.jpg").write_text("not a photo at all")
    nested = tmp_path / "nested"
    nested.mkdir()
    (nested / "again.jpg").write_bytes(make_photo(1))
    (nested / "three.jpg").write_bytes(make_photo(3))
    return tmp_path


@pytest.mark.django_db(transaction=True)
def test_import_images_reports_imported_duplicates_and_rejections(folder):
    """Committed for real, as in production: each import enqueues its captioning on commit."""
    out = run("import_images", str(folder), "--recursive", "--wait", "--timeout", "300")
    assert "Imported 3, duplicates 1, rejected 1." in out
    assert "notes.jpg: The file is not an image" in out
    assert "Captioned 3, failed 0." in out
    assert set(Image.objects.values_list("status", flat=True)) == {"done"}
    for image in Image.objects.all():
        assert image.active_caption.source == "model"


def test_import_images_queues_captioning_in_batches(folder, settings, monkeypatch):
    """One task per IMAGESEARCH_CAPTION_BATCH photos, not one per photo (workers caption batches faster)."""
    queued = []
    monkeypatch.setattr("gallery.tasks.enqueue_captioning", lambda ids: queued.append(list(ids)))
    settings.IMAGESEARCH_CAPTION_BATCH = 2
    run("import_images", str(folder), "--recursive")
    ids = sorted(Image.objects.values_list("pk", flat=True))
    assert len(ids) == 3
    assert sorted(queued[0] + queued[1]) == ids and [len(q) for q in queued] == [2, 1]


def test_import_images_without_recursion_skips_subfolders(folder):
    out = run("import_images", str(folder))
    assert "Imported 2, duplicates 0, rejected 1." in out


def test_import_images_refuses_a_missing_path(tmp_path):
    with pytest.raises(CommandError, match="No such file or folder"):
        run("import_images", str(tmp_path / "nowhere"))


def test_caption_pending_requeues_only_old_stuck_images(django_capture_on_commit_callbacks):
    old = ingest_bytes(make_photo(4), "old.jpg").image
    fresh = ingest_bytes(make_photo(5), "fresh.jpg").image
    Image.objects.filter(pk=old.pk).update(status="processing", status_changed_at=timezone.now() - timedelta(hours=1))
    out = run("caption_pending", "--older-than", "30")
    assert "Re-enqueued 1 image(s)" in out
    old.refresh_from_db()
    fresh.refresh_from_db()
    assert old.status == "done" and old.captions.count() == 1
    assert fresh.status == "pending"


def test_recaption_keeps_human_captions_and_switches_model_captions():
    by_model = ingest_bytes(make_photo(6), "model.jpg").image
    by_person = ingest_bytes(make_photo(7), "person.jpg").image
    add_model_caption(by_model, "an old caption about zebras", model_version="flickr8k-v0")
    add_model_caption(by_person, "an old caption about giraffes", model_version="flickr8k-v0")
    set_human_caption(by_person, "grandmother's garden in june")
    out = run("recaption", "--model-older-than", "flickr8k-v1")
    assert "Queued 2 image(s)" in out
    by_model.refresh_from_db()
    by_person.refresh_from_db()
    assert by_model.active_caption.model_version != "flickr8k-v0"
    assert by_person.active_caption.text == "grandmother's garden in june"
    assert [h.doc_id for h in search_index.search("zebras").hits] == []
    assert [h.doc_id for h in search_index.search("garden").hits] == [by_person.pk]
    assert run("recaption", "--model-older-than", "flickr8k-v0").startswith("Queued 0 image(s)")


def test_export_captions_csv_and_json(tmp_path):
    image = ingest_bytes(make_photo(8), 'a "quoted", name.jpg').image
    add_model_caption(image, "a dog runs", model_version="v1", score=-0.25)
    ingest_bytes(make_photo(9), "uncaptioned.jpg")
    rows = list(csv.DictReader(io.StringIO(run("export_captions"))))
    assert rows[0] == {
        "original_name": 'a "quoted", name.jpg',
        "sha256": image.sha256,
        "caption": "a dog runs",
        "source": "model",
        "model_version": "v1",
        "score": "-0.25",
    }
    assert rows[1]["caption"] == ""
    target = tmp_path / "captions.json"
    run("export_captions", "--format", "json", "--output", str(target))
    exported = json.loads(target.read_text())
    assert [row["original_name"] for row in exported] == ['a "quoted", name.jpg', "uncaptioned.jpg"]


def test_seed_demo_fills_an_empty_gallery_once(monkeypatch):
    monkeypatch.setattr("gallery.tasks.enqueue_captioning", lambda ids: True)
    assert "Added 8 demo photos" in run("seed_demo")
    assert Image.objects.count() == 8
    assert "not empty" in run("seed_demo")
    assert Image.objects.count() == 8


def test_create_local_admin_prints_its_password_once():
    out = run("create_local_admin")
    password = out.split("password: ")[1].split()[0]
    assert get_user_model().objects.get(username="admin").check_password(password)
    assert "exists already" in run("create_local_admin")
