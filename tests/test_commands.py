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
from gallery.models import Caption, Fingerprint, Image
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
    """One task per IMAGESEARCH_CAPTION_TASK_SIZE photos, not one per photo (workers caption batches faster)."""
    queued = []
    monkeypatch.setattr("gallery.tasks.enqueue_captioning", lambda ids: queued.append(list(ids)))
    settings.IMAGESEARCH_CAPTION_TASK_SIZE = 2
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


@pytest.fixture
def installed_fake(fake_captioner, monkeypatch):
    """The fake captioner stands for the installed model (its version is the one the upgrade waits for)."""
    monkeypatch.setattr("gallery.management.commands.recaption.model_meta", lambda: {"version": fake_captioner.version})
    return fake_captioner


def test_recaption_redescribes_older_photos_with_fingerprints_and_a_progress_bar_once(installed_fake, capsys):
    old = ingest_bytes(installed_fake.register(make_photo(31), "a dog on a beach", [1.0, 0.0, 0.0]), "old.jpg").image
    person = ingest_bytes(installed_fake.register(make_photo(32), "a cat", [0.0, 1.0, 0.0]), "person.jpg").image
    newer = ingest_bytes(installed_fake.register(make_photo(33), "a bus", [0.0, 0.0, 1.0]), "newer.jpg").image
    add_model_caption(old, "an old caption", model_version="flickr8k-v3")
    add_model_caption(person, "an old caption", model_version="flickr8k-v3")
    set_human_caption(person, "my cat Tom")
    add_model_caption(newer, "a newer caption", model_version="flickr8k-v5")
    assert not Fingerprint.objects.exists()

    out = run("recaption", "--model-older-than", "flickr8k-v4", "--wait")
    assert "Queued 2 image(s)" in out
    assert "2/2" in capsys.readouterr().err  # the tqdm bar
    old.refresh_from_db()
    person.refresh_from_db()
    assert old.active_caption.text == "a dog on a beach" and old.active_caption.model_version == "fake-1"
    assert person.active_caption.text == "my cat Tom"
    assert set(Fingerprint.objects.values_list("image_id", "model_version")) == {(old.pk, "fake-1"), (person.pk, "fake-1")}
    assert [h.doc_id for h in search_index.search("beach").hits] == [old.pk]

    captions = Caption.objects.count()
    assert run("recaption", "--model-older-than", "flickr8k-v4", "--wait").startswith("Queued 0 image(s)")
    assert run("recaption", "--all").startswith("Queued 1 image(s)")  # only the one the installed model has not described
    assert run("recaption", "--all").startswith("Queued 0 image(s)")
    assert Caption.objects.count() == captions + 1


def test_recaption_wait_gives_up_clearly_when_no_worker_makes_progress(installed_fake, monkeypatch):
    image = ingest_bytes(make_photo(34), "stuck.jpg").image
    add_model_caption(image, "an old caption", model_version="flickr8k-v3")
    monkeypatch.setattr("gallery.management.commands.recaption.enqueue_captioning", lambda ids: True)
    with pytest.raises(CommandError, match="No progress for 0.2 s \\(0 of 1 described\\)"):
        run("recaption", "--all", "--wait", "--stall-timeout", "0.2", "--poll", "0.05")
    assert [h.doc_id for h in search_index.search("old caption").hits] == [image.pk]  # searchable while it waits


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
