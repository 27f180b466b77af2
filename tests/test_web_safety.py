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


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_orientation_is_applied(client, user, no_queue, photo, media_root, fmt):
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    client.force_login(user)
    client.post(reverse("gallery:upload"), {"files": [SimpleUploadedFile("turned", photo(1, fmt=fmt, exif=exif))]})
    image = Image.objects.get()
    assert (image.width, image.height) == (64, 96)
    with PIL.Image.open(io.BytesIO(Path(media_root, image.thumbnail.name).read_bytes())) as thumb:
        assert thumb.height > thumb.width
    html = client.get(reverse("gallery:image", args=[image.pk])).content.decode()
    assert 'width="64" height="96"' in html


def test_admin_adds_a_photo_only_through_ingest(client, staff, photo, no_queue):
    client.force_login(staff)
    response = client.post("/admin/gallery/image/add/", {"hidden": "on"})
    assert response.status_code == 200 and "This field is required" in response.content.decode()
    response = client.post("/admin/gallery/image/add/", {"file": SimpleUploadedFile("t.jpg", b"not a photo")})
    assert "not an image" in response.content.decode()
    assert Image.objects.count() == 0
    response = client.post("/admin/gallery/image/add/", {"file": SimpleUploadedFile("beach.jpg", photo(1)), "hidden": "on"})
    assert response.status_code == 302
    image = Image.objects.get()
    assert image.file and image.thumbnail and len(image.sha256) == 64 and image.hidden and image.original_name == "beach.jpg"
    client.post("/admin/gallery/image/add/", {"file": SimpleUploadedFile("again.jpg", photo(1))})
    assert Image.objects.count() == 1  # deduplicated like any upload
    assert Client().get("/api/images").status_code == 200


def test_an_image_without_a_file_does_not_break_the_api(client, no_queue):
    """Rows like those the old admin form made (no file, no hash); migration 0003 removes them."""
    broken = Image.objects.create(original_name="broken", sha256="")
    assert client.get("/api/images").json()["results"][0]["file_url"] is None
    assert client.get(f"/api/images/{broken.pk}").status_code == 200


def test_files_of_hidden_photos_need_a_curator(client, staff, photo, no_queue):
    image = captioned(photo, 1, "a hidden cat")
    urls = [image.file.url, image.thumbnail.url]
    assert [client.get(url).status_code for url in urls] == [200, 200]
    Image.objects.filter(pk=image.pk).update(hidden=True)
    assert [client.get(url).status_code for url in urls] == [404, 404]  # as for a file never uploaded
    assert client.get("/media/images/00/" + "0" * 64 + ".jpg").status_code == 404
    client.force_login(staff)
    response = client.get(urls[0])
    assert response.status_code == 200 and "private" in response["Cache-Control"]


def test_files_of_a_private_site_need_a_login(client, user, photo, settings, no_queue):
    settings.IMAGESEARCH_PUBLIC = False
    image = captioned(photo, 1, "a private dog")
    assert client.get(image.file.url).status_code == 404
    client.force_login(user)
    assert client.get(image.file.url).status_code == 200


def test_the_front_server_can_send_the_checked_files(client, photo, settings, no_queue):
    image = captioned(photo, 1, "a dog")
    settings.IMAGESEARCH_MEDIA_ACCEL = "x-accel-redirect"
    response = client.get(image.file.url)
    assert response["X-Accel-Redirect"] == f"/protected-media/{image.file.name}" and response.content == b""
    assert response["Content-Type"] == "image/jpeg"
    settings.IMAGESEARCH_MEDIA_ACCEL = "x-sendfile"
    assert client.get(image.thumbnail.url)["X-Sendfile"] == str(settings.MEDIA_ROOT / image.thumbnail.name)


def test_login_attempts_are_rate_limited(client, user, settings):
    settings.IMAGESEARCH_RATE_LIMITS = {"login": "5/min"}
    codes = [client.post("/accounts/login/", {"username": "ada", "password": f"wrong-{i}"}).status_code for i in range(10)]
    assert codes == [200] * 5 + [429] * 5
    response = client.post("/admin/login/", {"username": "ada", "password": "wrong"})
    assert response.status_code == 429 and int(response["Retry-After"]) > 0


def test_pages_are_rate_limited_like_the_api(client, settings):
    settings.IMAGESEARCH_RATE_LIMITS = {"search": "2/min"}
    assert [client.get("/search/", {"q": "dog"}).status_code for _ in range(3)] == [200, 200, 429]
    assert client.get("/api/search", {"q": "dog"}).status_code == 429  # one counter per client and scope
    # Without a proxy in front (IMAGESEARCH_PROXY_COUNT=0), a forged X-Forwarded-For is no new client.
    assert client.get("/api/search", {"q": "dog"}, HTTP_X_FORWARDED_FOR="203.0.113.9").status_code == 429


def test_pages_carry_a_content_security_policy(client):
    policy = client.get("/")["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "'unsafe-inline'" not in policy.split("style-src-attr")[0]
    assert "frame-ancestors 'none'" in policy
