"""The pages people see: gallery, image page, search, search by photo, upload, login, errors.

Captioning is replaced by a deterministic fake here (these tests are about the web layer); the
real model and workers are exercised by the pipeline tests.
"""
import base64
import io
import re
import threading

import pytest
from PIL import Image as PILImage
from celery._state import _set_task_join_will_block
from django.core.files.uploadedfile import SimpleUploadedFile
from django.template.loader import render_to_string
from django.urls import reverse

from gallery.captions import set_human_caption
from gallery.ingest import ingest_bytes
from gallery.models import Image
from gallery.querying import CaptioningBusy
from gallery.tasks import caption_query_image

from .conftest import FakeCaptioner, captioned

pytestmark = pytest.mark.django_db


def test_gallery_shows_thumbnails_newest_first_with_pages(client, photo, settings, no_queue):
    settings.IMAGESEARCH_PAGE_SIZE = 2
    first, second, third = (captioned(photo, seed, f"photo number {seed}") for seed in (1, 2, 3))
    page1 = client.get(reverse("gallery:index")).content.decode()
    assert page1.index(f"/images/{third.pk}/") < page1.index(f"/images/{second.pk}/")
    assert f"/images/{first.pk}/" not in page1
    assert third.thumbnail.url in page1 and 'alt="photo number 3"' in page1
    assert "Page 1 of 2" in page1 and "?page=2" in page1
    page2 = client.get(reverse("gallery:index"), {"page": 2}).content.decode()
    assert f"/images/{first.pk}/" in page2 and f"/images/{third.pk}/" not in page2


def test_gallery_badges_images_not_captioned_yet(client, photo, no_queue):
    pending = ingest_bytes(photo(1), "waiting.jpg").image
    failed = ingest_bytes(photo(2), "broken.jpg").image
    Image.objects.filter(pk=failed.pk).update(status=Image.Status.FAILED, error="unreadable")
    html = client.get(reverse("gallery:index")).content.decode()
    assert 'class="badge badge-pending"' in html and "Waiting for a caption" in html
    assert 'class="badge badge-failed"' in html and "Captioning failed" in html
    assert pending.original_name in html


def test_hidden_images_are_only_shown_to_staff(client, photo, staff, no_queue):
    shown = captioned(photo, 1, "a visible cat")
    hidden = captioned(photo, 2, "a secret cat")
    Image.objects.filter(pk=hidden.pk).update(hidden=True)
    html = client.get(reverse("gallery:index")).content.decode()
    assert f"/images/{shown.pk}/" in html and f"/images/{hidden.pk}/" not in html
    assert client.get(reverse("gallery:image", args=[hidden.pk])).status_code == 404
    client.force_login(staff)
    html = client.get(reverse("gallery:index")).content.decode()
    assert f"/images/{hidden.pk}/" in html and "badge-hidden" in html
    assert client.get(reverse("gallery:image", args=[hidden.pk])).status_code == 200


def test_image_page_shows_captions_attention_and_more_like_this(client, photo, user, no_queue):
    image = captioned(photo, 1, "a dog runs on the beach", confidence=0.3)
    neighbour = captioned(photo, 2, "a dog sleeps on a sofa")
    unrelated = captioned(photo, 3, "a red car in the street")
    set_human_caption(image, "our dog Rex on the beach", user=user)
    response = client.get(reverse("gallery:image", args=[image.pk]))
    html = response.content.decode()
    assert response.status_code == 200
    assert '<h1 class="detail-caption">our dog Rex on the beach</h1>' in html
    assert "Caption written by a person" in html
    # The older model caption, its version and confidence in words; its raw log-probability only in admin.
    assert "a dog runs on the beach" in html and "model v1" in html and "unsure" in html and "-0.500" not in html
    assert image.file.url in html
    # More like this: searched with the active caption, the image itself excluded.
    similar = html.split('id="similar-heading"')[1]
    assert f"/images/{neighbour.pk}/" in similar
    assert f"/images/{image.pk}/" not in similar and f"/images/{unrelated.pk}/" not in similar


def test_image_page_embeds_the_attention_of_a_model_caption(client, photo, no_queue):
    image = captioned(photo, 1, "two birds on a wire", confidence=0.8)
    html = client.get(reverse("gallery:image", args=[image.pk])).content.decode()
    assert "Caption by model <code>v1</code>" in html and ">confident</span>" in html and "-0.500" not in html
    data = re.search(r'<script id="attention-data" type="application/json">(.*?)</script>', html, re.S).group(1)
    # Maps of the content words only: "on" and "a" have none.
    assert '["two", [' in data and '["wire", [' in data and data.count("[") == 1 + 2 * 3
    assert '["on", [' not in data and '["a", [' not in data
    assert "gallery/attention.js" in html


def test_unknown_pages_get_the_friendly_404(client):
    response = client.get("/images/999999/")
    assert response.status_code == 404
    assert "Page not found" in response.content.decode()
    assert 'name="q"' in response.content.decode()  # the search box is on every page


def test_search_page_highlights_matches_and_shows_score_and_pages(client, photo, settings, no_queue):
    settings.IMAGESEARCH_PAGE_SIZE = 1
    dog = captioned(photo, 1, "a brown dog running in a field")
    other = captioned(photo, 2, "dogs and a cat playing on grass")
    captioned(photo, 3, "a bowl of fruit")
    response = client.get(reverse("gallery:search"), {"q": "dog -cat"})
    html = response.content.decode()
    assert response.status_code == 200
    assert "<mark>dog</mark>" in html and f"/images/{dog.pk}/" in html
    assert f"/images/{other.pk}/" not in html
    assert re.search(r"score -?\d+\.\d{3}", html)
    assert 'chip-excluded">−cat' in html
    assert 'value="dog -cat"' in html
    page_two = client.get(reverse("gallery:search"), {"q": "dog"}).content.decode()
    assert "Page 1 of 2" in page_two and "q=dog&amp;page=2" in page_two


def test_search_page_without_words_asks_for_some(client):
    html = client.get(reverse("gallery:search")).content.decode()
    assert "Type some words" in html


def test_search_page_rejects_a_bad_page_number(client):
    assert client.get(reverse("gallery:search"), {"q": "dog", "page": "x"}).status_code == 400


def test_private_site_sends_visitors_to_the_login_page(client, settings, user, photo, no_queue):
    settings.IMAGESEARCH_PUBLIC = False
    image = captioned(photo, 1, "a private dog")
    for url in (
        reverse("gallery:index"),
        reverse("gallery:image", args=[image.pk]),
        reverse("gallery:search") + "?q=dog",
        reverse("gallery:search-by-image"),
    ):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/?next=")
    client.force_login(user)
    assert client.get(reverse("gallery:index")).status_code == 200


def test_login_page_logs_in_and_returns_to_upload(client, user):
    response = client.get(reverse("gallery:upload"))
    assert response.status_code == 302 and response["Location"] == "/accounts/login/?next=/upload/"
    html = client.get(response["Location"]).content.decode()
    assert 'name="csrfmiddlewaretoken"' in html and '<label for="id_username">' in html
    response = client.post("/accounts/login/", {"username": "ada", "password": "pw-ada-123", "next": "/upload/"})
    assert response.status_code == 302 and response["Location"] == "/upload/"
    html = client.get("/upload/").content.decode()
    assert 'type="file"' in html and "multiple" in html and "Drop photos here" in html


def test_plain_form_uploads_several_files_each_with_its_own_result(
    client, user, photo, fake_captioner, django_capture_on_commit_callbacks
):
    client.force_login(user)
    good = fake_captioner.register(photo(1), "a cat on a windowsill")
    also_good = fake_captioner.register(photo(2, fmt="PNG"), "a bicycle against a wall")
    files = [
        ("one.jpg", good),
        ("two.png", also_good),
        ("notes.jpg", b"just some text, not a photo"),
    ]
    # Captioning is queued once the upload commits; here it runs in-process right then.
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("gallery:upload"), {"files": [SimpleUploadedFile(name, data) for name, data in files]}
        )
    html = response.content.decode()
    assert response.status_code == 200
    assert html.count('class="upload-item is-done"') == 2
    assert html.count('class="upload-item is-error"') == 1
    assert "notes.jpg" in html and "The file is not an image" in html
    assert Image.objects.count() == 2
    # In-process captioning ran at once: the images are searchable by their captions.
    cat = Image.objects.get(original_name="one.jpg")
    assert cat.status == Image.Status.DONE and cat.active_caption.text == "a cat on a windowsill"
    assert cat.uploader == user
    assert f"/images/{cat.pk}/" in client.get(reverse("gallery:search"), {"q": "windowsill"}).content.decode()


def test_plain_upload_form_needs_a_file(client, user):
    client.force_login(user)
    response = client.post(reverse("gallery:upload"), {})
    assert "Choose at least one photo." in response.content.decode()


def test_search_by_image_shows_the_caption_and_its_results(client, photo, fake_captioner, no_queue):
    beach = captioned(photo, 1, "people walking on a sandy beach")
    query = fake_captioner.register(photo(50), "a sandy beach with waves")
    response = client.post(reverse("gallery:search-by-image"), {"file": SimpleUploadedFile("q.jpg", query)})
    html = response.content.decode()
    assert response.status_code == 200
    assert "a sandy beach with waves" in html and "fake-1" in html
    assert f"/images/{beach.pk}/" in html and "<mark>sandy</mark>" in html
    assert Image.objects.count() == 1  # the query photo is not stored


def test_the_search_by_image_page_decodes_the_photo_once_for_its_caption_and_preview(client, photo, decodes, monkeypatch):
    monkeypatch.setattr("captioning.services.get_captioner", FakeCaptioner)
    query = photo(51, size=(1600, 1200), fmt="PNG")
    response = client.post(reverse("gallery:search-by-image"), {"file": SimpleUploadedFile("q.png", query)})
    assert response.status_code == 200
    preview = re.search(r'id="query-photo" src="data:image/jpeg;base64,([^"]+)"', response.content.decode())
    with PILImage.open(io.BytesIO(base64.b64decode(preview.group(1)))) as shown:
        assert shown.size == (320, 240)
    assert len(decodes) == 1, decodes


def test_search_by_image_when_no_worker_answers(client, photo, monkeypatch):
    def busy(data):
        raise CaptioningBusy("The captioning service is busy; please try again in a moment.")

    monkeypatch.setattr("gallery.views.describe_query_photo", busy)
    response = client.post(reverse("gallery:search-by-image"), {"file": SimpleUploadedFile("q.jpg", photo(1))})
    assert response.status_code == 503 and response["Retry-After"].isdigit()
    assert "busy" in response.content.decode()


def test_search_by_image_rejects_a_file_that_is_not_a_photo(client):
    response = client.post(reverse("gallery:search-by-image"), {"file": SimpleUploadedFile("q.jpg", b"%PDF-1.4 nope")})
    assert response.status_code == 400
    assert "The file is not an image" in response.content.decode()


def test_pages_load_their_own_static_files_only(client):
    html = client.get(reverse("gallery:index")).content.decode()
    assert "/static/gallery/site.css" in html
    assert not re.search(r'(src|href)="(https?:)?//', html)


def test_search_by_photo_after_overlapping_captioning(client, photo, fake_captioner):
    """Two in-process tasks in two threads, the first ending before the second: that leaves Celery's
    process-wide "never join a result inside a task" flag set, which once made every later search
    by photo fail with a 500 under a threaded server (parallel uploads)."""
    first_inside, release_first, release_second = threading.Event(), threading.Event(), threading.Event()
    gates = {"first": (first_inside, release_first), "second": (threading.Event(), release_second)}
    describe_arrays = fake_captioner.describe_arrays

    def gated(arrays):
        inside, release = gates[threading.current_thread().name]
        inside.set()
        release.wait(10)
        return describe_arrays(arrays)

    fake_captioner.describe_arrays = gated
    threads = [
        threading.Thread(target=caption_query_image.apply_async, args=(("eA==",),), name=name)
        for name in ("first", "second")
    ]
    threads[0].start()
    first_inside.wait(10)
    threads[1].start()
    gates["second"][0].wait(10)
    release_first.set()
    threads[0].join(10)
    release_second.set()
    threads[1].join(10)
    fake_captioner.describe_arrays = describe_arrays
    try:
        response = client.post(reverse("gallery:search-by-image"), {"file": SimpleUploadedFile("q.jpg", photo(1))})
        assert response.status_code == 200
    finally:
        _set_task_join_will_block(False)  # the flag stays set in this process otherwise


def test_the_server_error_page_stands_alone():
    html = render_to_string("500.html")  # rendered by Django with no request context at all
    assert "Something went wrong" in html and "/static/gallery/site.css" in html


def test_index_admin_shows_terms_frequencies_and_size_read_only(client, photo, staff, no_queue):
    captioned(photo, 1, "a dog on a beach")
    captioned(photo, 2, "a dog in a park")
    client.force_login(staff)
    response = client.get("/admin/searchindex/term/")
    html = response.content.decode()
    assert response.status_code == 200
    assert "Most frequent terms" in html and "Index size" in html
    assert re.search(r"<td>dog</td><td>2</td>", html)  # most frequent first
    assert re.search(r"Documents \(captioned, visible images\)</th><td>2</td>", html)
    assert "Add term" not in html
    assert client.get("/admin/searchindex/term/add/").status_code == 403
    assert client.get("/admin/searchindex/term/?q=beach").status_code == 200
