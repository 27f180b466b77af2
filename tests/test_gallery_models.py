"""The data model: one image per photo (SHA-256), and the active-caption rules."""
import hashlib
import threading
import time
from io import BytesIO, StringIO
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from django.contrib import admin
from django.core.management import call_command
from django.db import IntegrityError, connection, transaction

from gallery import curation
from gallery.captions import add_model_caption, set_human_caption
from gallery.ingest import ingest_bytes
from gallery.models import Caption, Image
from searchindex import index as search_index

from .conftest import captioned

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_queue")]




def test_thumbnails_see_transparent_pixels_as_the_networks_do_on_white(media_root):
    """One decoder for thumbnails and networks: transparency is composited on white, not dropped."""
    pixels = np.zeros((64, 64, 4), np.uint8)  # black, fully transparent...
    pixels[16:48, 16:48] = (200, 30, 30, 255)  # ...around an opaque red square
    out = BytesIO()
    PIL.Image.fromarray(pixels, "RGBA").save(out, format="PNG")
    image = ingest_bytes(out.getvalue(), "logo.png").image
    with PIL.Image.open(Path(media_root) / image.thumbnail.name) as thumb:
        corner, centre = thumb.getpixel((1, 1)), thumb.getpixel((thumb.width // 2, thumb.height // 2))
    assert min(corner) > 240 and centre[0] > 150 > centre[1]


def found(query):
    return [hit.doc_id for hit in search_index.search(query).hits]


def test_upload_is_stored_under_its_hash_not_its_name(photo, media_root):
    data = photo(1)
    image = ingest_bytes(data, "../../etc/passwd.jpg").image
    sha = hashlib.sha256(data).hexdigest()
    assert image.sha256 == sha
    assert image.file.name == f"images/{sha[:2]}/{sha}.jpg"
    assert Path(media_root, image.file.name).read_bytes() == data
    assert image.thumbnail.name == f"thumbs/{sha[:2]}/{sha}.jpg"
    assert image.original_name == "passwd.jpg"
    assert (image.width, image.height, image.format) == (96, 64, "JPEG")
    assert image.status == Image.Status.PENDING


def test_same_photo_twice_is_one_image(photo):
    first = ingest_bytes(photo(2), "a.jpg")
    second = ingest_bytes(photo(2), "b.jpg")
    assert first.created and not second.created
    assert first.image.pk == second.image.pk
    assert Image.objects.count() == 1


def test_database_refuses_a_second_row_with_the_same_hash(photo):
    image = ingest_bytes(photo(3), "a.jpg").image
    with pytest.raises(IntegrityError), transaction.atomic():
        Image.objects.create(file="x.jpg", original_name="x.jpg", sha256=image.sha256, format="JPEG")


def test_model_caption_becomes_active_and_searchable(photo):
    image = ingest_bytes(photo(4), "dog.jpg").image
    caption = add_model_caption(image, "a brown dog runs on grass", model_version="v1", score=-0.5)
    image.refresh_from_db()
    assert image.status == Image.Status.DONE
    assert image.active_caption == caption
    assert found("dog") == [image.pk]


def test_captioning_twice_with_one_model_version_is_idempotent(photo):
    image = ingest_bytes(photo(5), "dog.jpg").image
    first = add_model_caption(image, "a dog", model_version="v1")
    again = add_model_caption(image, "a dog", model_version="v1")
    assert first.pk == again.pk
    assert image.captions.count() == 1


def test_human_caption_wins_over_model_captions(photo):
    image = ingest_bytes(photo(6), "beach.jpg").image
    add_model_caption(image, "a man on a beach", model_version="v1")
    human = set_human_caption(image, "  my   sister surfing at Biarritz ", user=None)
    assert human.text == "my sister surfing at Biarritz"
    add_model_caption(image, "a woman on a surfboard", model_version="v2")
    image.refresh_from_db()
    assert image.active_caption.pk == human.pk
    assert image.captions.filter(is_active=True).count() == 1
    assert image.captions.count() == 3
    assert found("sister") == [image.pk]
    assert found("beach") == [] and found("surfboard") == []


def test_newer_model_caption_replaces_older_model_caption(photo):
    image = ingest_bytes(photo(7), "x.jpg").image
    add_model_caption(image, "a cat on a sofa", model_version="v1")
    newer = add_model_caption(image, "a kitten sleeping on a couch", model_version="v2")
    image.refresh_from_db()
    assert image.active_caption.pk == newer.pk
    assert found("sofa") == [] and found("kitten") == [image.pk]


def test_empty_human_caption_is_refused(photo):
    image = ingest_bytes(photo(8), "x.jpg").image
    with pytest.raises(ValueError, match="cannot be empty"):
        set_human_caption(image, "   ")
    assert image.captions.count() == 0


def test_only_one_active_caption_per_image_in_the_database(photo):
    image = ingest_bytes(photo(9), "x.jpg").image
    Caption.objects.create(image=image, text="one", source="human", is_active=True)
    with pytest.raises(IntegrityError), transaction.atomic():
        Caption.objects.create(image=image, text="two", source="human", is_active=True)


def test_models_are_registered_in_admin():
    assert admin.site.is_registered(Image)
    assert admin.site.is_registered(Caption)


def test_admin_pages_render(admin_client, photo):
    image = ingest_bytes(photo(10), "x.jpg").image
    add_model_caption(image, "a red bicycle", model_version="v1")
    assert admin_client.get("/admin/gallery/image/").status_code == 200
    assert admin_client.get(f"/admin/gallery/image/{image.pk}/change/").status_code == 200
    assert admin_client.get("/admin/gallery/caption/").status_code == 200


def test_migrations_match_the_models():
    out = StringIO()
    call_command("makemigrations", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_an_upload_is_decoded_once_for_its_check_and_thumbnail(photo, decodes, no_queue, fmt):
    image = ingest_bytes(photo(2, size=(2400, 1600), fmt=fmt), "large").image
    assert len(decodes) == 1 and min(decodes[0]) < 1600 // 2, decodes  # once, and reduced
    with PIL.Image.open(image.thumbnail.path) as thumbnail:
        assert thumbnail.size == (320, 213)


def test_a_large_png_upload_is_never_decoded_whole(photo, request):
    """Bounded memory (issue 14): checking a large PNG (integrity, EXIF orientation) allocates no
    image of its full size."""
    from gallery.ingest import inspect_upload

    data = photo(4, size=(3000, 2000), fmt="PNG")
    allocated = request.getfixturevalue("allocations")  # from here on: the photo is made above
    inspection = inspect_upload(data)
    assert (inspection.width, inspection.height) == (3000, 2000) and inspection.picture.size == (500, 334)
    assert (3000, 2000) not in allocated and allocated, allocated


def test_a_large_jpeg_is_checked_and_thumbnailed_at_a_reduced_scale(photo, monkeypatch):
    """Bounded decode memory: an upload's check and thumbnail decode a JPEG at a reduced DCT scale
    (1/8 here: 2400 px -> 300 px wide), never at full size."""
    from gallery import ingest

    decoded = []
    decode = ingest.open_upright_rgb

    def spy(data, **kwargs):
        image = decode(data, **kwargs)
        decoded.append(image.size)
        return image

    monkeypatch.setattr(ingest, "open_upright_rgb", spy)
    image = ingest_bytes(photo(1, size=(4800, 2400)), "wide.jpg").image
    assert (image.width, image.height) == (4800, 2400)  # the true size is recorded
    assert decoded and all(width <= 4800 // 4 for width, _ in decoded), decoded
    with PIL.Image.open(image.thumbnail.path) as thumbnail:
        assert max(thumbnail.size) == 320


def test_delete_removes_the_image_its_captions_its_document_and_its_files(photo, media_root, django_capture_on_commit_callbacks):
    image, kept = captioned(photo, 1, "a dog runs on the beach"), captioned(photo, 2, "a dog sleeps")
    files = [Path(media_root) / image.file.name, Path(media_root) / image.thumbnail.name]
    with django_capture_on_commit_callbacks(execute=True):
        assert curation.delete_images([image]) == 1
    assert not Image.objects.filter(pk=image.pk).exists() and not Caption.objects.filter(image_id=image.pk).exists()
    assert [hit.doc_id for hit in search_index.search("dog").hits] == [kept.pk]
    assert not any(path.exists() for path in files)


@pytest.mark.django_db(transaction=True)
def test_delete_waits_for_a_worker_storing_the_image_and_cannot_deadlock_with_it(photo, media_root):
    """A worker locks its batch's images, then the index (gallery.captions.add_model_captions);
    a deletion of one of them waits for the image first, holding nothing the worker needs."""
    image = captioned(photo, 1, "a dog runs on the beach")
    holding, release, errors, deleted = threading.Event(), threading.Event(), [], []

    def in_thread(work):
        try:
            work()
        except Exception as exc:  # a deadlock would surface here, as OperationalError
            errors.append(exc)
        finally:
            connection.close()

    def worker():
        with transaction.atomic():
            list(Image.objects.select_for_update().filter(pk=image.pk))
            holding.set()
            release.wait(10)
            search_index.index_document(image.pk, "a dog runs fast on the beach")

    storing = threading.Thread(target=in_thread, args=(worker,))
    storing.start()
    assert holding.wait(10)
    deleting = threading.Thread(target=in_thread, args=(lambda: deleted.append(curation.delete_images([image])),))
    deleting.start()
    time.sleep(0.5)
    assert deleting.is_alive()  # waiting for the image's lock
    release.set()
    storing.join(10)
    deleting.join(10)
    assert not errors and deleted == [1]
    assert not Image.objects.filter(pk=image.pk).exists() and search_index.search("dog").hits == []
