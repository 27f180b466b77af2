"""Safety of the web layer: escaping of captions, queries and file names, CSRF, upload limits."""
import io
import re
from pathlib import Path

import PIL.Image
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from gallery.captions import add_model_caption, set_human_caption
from gallery.ingest import ingest_bytes
from gallery.models import Image

from .conftest import captioned, png_declaring

pytestmark = pytest.mark.django_db

SCRIPT = '<script>alert("x")</script>'
# Without a slash, so it survives the base-name cleaning and reaches the pages as typed.
NAME = '"><img src=x onerror=alert(1)>.jpg'


def assert_no_raw_markup(html: str):
    assert "<script>alert" not in html and "<img src=x" not in html


def test_a_script_in_a_caption_is_shown_as_text_everywhere(client, photo, staff, no_queue):
    image = captioned(photo, 1, "a harmless alert cat")
    set_human_caption(image, f"alert {SCRIPT} cat", user=None)
    escaped = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"
    pages = [
        reverse("gallery:index"),
        reverse("gallery:image", args=[image.pk]),
        reverse("gallery:search") + "?q=alert",
    ]
    for url in pages:
        html = client.get(url).content.decode()
        assert_no_raw_markup(html)
        assert escaped in html, url
    assert "<mark>alert</mark>" in client.get(pages[2]).content.decode()
    client.force_login(staff)
    for url in ("/admin/gallery/image/", f"/admin/gallery/image/{image.pk}/change/"):
        html = client.get(url).content.decode()
        assert_no_raw_markup(html)


def test_a_script_in_an_attention_word_cannot_end_the_json_block(client, photo, no_queue):
    image = ingest_bytes(photo(1), "a.jpg").image
    word = "</script><script>alert(1)</script>"
    add_model_caption(image, "a cat", model_version="v1", attention=[[word, [1 / 64] * 64]])
    html = client.get(reverse("gallery:image", args=[image.pk])).content.decode()
    block = re.search(r'<script id="attention-data" type="application/json">(.*?)</script>', html, re.S).group(1)
    assert "<" not in block and "\\u003C/script\\u003E" in block


def test_a_script_in_a_query_is_shown_as_text(client):
    response = client.get(reverse("gallery:search"), {"q": f"cat {SCRIPT}"})
    html = response.content.decode()
    assert_no_raw_markup(html)
    assert "&lt;script&gt;" in html  # in the title, the heading and the search box


def test_a_script_in_a_file_name_is_shown_as_text(client, user, photo, no_queue, media_root):
    client.force_login(user)
    response = client.post(reverse("gallery:upload"), {"files": [SimpleUploadedFile(NAME, photo(1))]})
    html = response.content.decode()
    assert_no_raw_markup(html)
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;.jpg" in html
    image = Image.objects.get()
    assert image.original_name == NAME
    assert_no_raw_markup(client.get(reverse("gallery:image", args=[image.pk])).content.decode())
    # The name is only displayed: the file lives under its hash.
    assert image.file.name == f"images/{image.sha256[:2]}/{image.sha256}.jpg"
    assert sorted(p.name for p in Path(media_root).rglob("*") if p.is_file()) == sorted(
        [f"{image.sha256}.jpg", f"{image.sha256}.jpg"]
    )


def test_a_path_in_a_file_name_never_reaches_the_disk(client, user, photo, no_queue, media_root, tmp_path):
    client.force_login(user)
    client.post(reverse("gallery:upload"), {"files": [SimpleUploadedFile("../../../escape.jpg", photo(1))]})
    assert Image.objects.get().original_name == "escape.jpg"
    assert not list(tmp_path.rglob("escape*"))


def test_json_api_responses_are_not_sniffed_as_html(client, photo, no_queue):
    image = captioned(photo, 1, "a cat")
    set_human_caption(image, f"cat {SCRIPT}")
    response = client.get(f"/api/images/{image.pk}")
    assert response["Content-Type"] == "application/json"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response.json()["caption"]["text"] == f"cat {SCRIPT}"


def test_every_form_carries_a_csrf_token(client, user):
    assert 'name="csrfmiddlewaretoken"' in client.get("/accounts/login/").content.decode()
    assert 'name="csrfmiddlewaretoken"' in client.get(reverse("gallery:search-by-image")).content.decode()
    client.force_login(user)
    upload_page = client.get(reverse("gallery:upload")).content.decode()
    # The upload form and the logout form in the header.
    assert upload_page.count('name="csrfmiddlewaretoken"') == 2


def test_posts_without_the_csrf_token_are_refused(user, photo):
    client = Client(enforce_csrf_checks=True)
    assert client.post("/accounts/login/", {"username": "ada", "password": "pw-ada-123"}).status_code == 403
    assert client.post(reverse("gallery:search-by-image"), {"file": SimpleUploadedFile("q.jpg", photo(1))}).status_code == 403
    client.force_login(user)
    response = client.post(reverse("gallery:upload"), {"files": [SimpleUploadedFile("a.jpg", photo(1))]})
    assert response.status_code == 403
    assert Image.objects.count() == 0


def test_pages_cannot_be_framed(client):
    assert client.get(reverse("gallery:index"))["X-Frame-Options"] == "DENY"


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("bomb.png", png_declaring(30000, 30000), "too many pixels to be processed safely"),
        ("huge.png", png_declaring(8000, 8000), "The image is 8000x8000 pixels"),
        ("photo.jpg", b"This is a text file with a photo's name.", "The file is not an image"),
    ],
)
def test_the_upload_page_explains_each_rejected_file(client, user, photo, name, data, message, no_queue):
    client.force_login(user)
    response = client.post(reverse("gallery:upload"), {"files": [SimpleUploadedFile(name, data)]})
    html = response.content.decode()
    assert response.status_code == 200
    assert message in html and 'class="upload-item is-error"' in html
    assert Image.objects.count() == 0


def test_formats_are_judged_by_content_not_by_name(client, user, photo, no_queue):
    client.force_login(user)
    files = [
        SimpleUploadedFile("really-a-png.txt", photo(1, fmt="PNG")),
        SimpleUploadedFile("w.jpg", photo(2, fmt="WEBP")),
        SimpleUploadedFile("g.jpeg", photo(3, fmt="GIF")),
    ]
    html = client.post(reverse("gallery:upload"), {"files": files}).content.decode()
    assert html.count('class="upload-item is-done"') == 3
    assert sorted(Image.objects.values_list("format", flat=True)) == ["GIF", "PNG", "WEBP"]
    assert Image.objects.get(format="PNG").file.name.endswith(".png")


def test_exif_orientation_is_applied(client, user, no_queue, photo, media_root):
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    client.force_login(user)
    client.post(reverse("gallery:upload"), {"files": [SimpleUploadedFile("turned.jpg", photo(1, exif=exif))]})
    image = Image.objects.get()
    assert (image.width, image.height) == (64, 96)
    with PIL.Image.open(io.BytesIO(Path(media_root, image.thumbnail.name).read_bytes())) as thumb:
        assert thumb.height > thumb.width
    html = client.get(reverse("gallery:image", args=[image.pk])).content.decode()
    assert 'width="64" height="96"' in html
