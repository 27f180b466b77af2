"""The JSON API: shapes, status codes and JSON error bodies (docs/api.md)."""
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from captioning.services import NETWORK_DECODE_SIZE
from gallery.models import Image
from gallery.querying import CaptioningBusy

from .conftest import FakeCaptioner, captioned, png_declaring

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("openapi_validated")]


def error_of(response, status):
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"] and body["error"]
    return body["error"]


@pytest.fixture
def csrf_client(user):
    """A browser-like client: logged in with a session, CSRF enforced, holding its CSRF token."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    client.get("/upload/")
    return client, client.cookies["csrftoken"].value


def upload(client, token, name, data, **extra):
    return client.post("/api/images", {"file": SimpleUploadedFile(name, data)}, HTTP_X_CSRFTOKEN=token, **extra)


def test_list_images_newest_first_with_pages(client, photo, no_queue):
    images = [captioned(photo, seed, f"a kite number {seed}") for seed in range(3)]
    body = client.get("/api/images", {"per_page": 2}).json()
    assert (body["page"], body["per_page"], body["num_pages"], body["total"]) == (1, 2, 2, 3)
    assert [item["id"] for item in body["results"]] == [images[2].pk, images[1].pk]
    item = body["results"][0]
    assert item["caption"]["text"] == "a kite number 2" and item["caption"]["source"] == "model"
    assert item["thumbnail_url"].startswith("http://testserver/media/thumbs/")
    assert item["page_url"] == f"http://testserver/images/{images[2].pk}/"
    assert item["status"] == "done" and "attention" not in item
    assert [i["id"] for i in client.get("/api/images", {"page": 2, "per_page": 2}).json()["results"]] == [images[0].pk]


def test_list_images_rejects_bad_pages(client):
    assert "positive integer" in error_of(client.get("/api/images", {"page": "zero"}), 400)
    assert "positive integer" in error_of(client.get("/api/images", {"page": "0"}), 400)
    assert "positive integer" in error_of(client.get("/api/images", {"page": "²"}), 400)
    assert "no page 3" in error_of(client.get("/api/images", {"page": 3}), 404)


def test_image_detail_has_every_caption_and_the_attention(client, photo, no_queue):
    image = captioned(photo, 1, "a cat on a mat")
    body = client.get(f"/api/images/{image.pk}").json()
    assert body["id"] == image.pk and body["width"] == 96 and body["format"] == "JPEG"
    assert [c["text"] for c in body["captions"]] == ["a cat on a mat"]
    assert body["attention"][0][0] == "a" and len(body["attention"][0][1]) == 64
    assert body["caption"]["model_version"] == "v1" and body["caption"]["score"] == -0.5


def test_missing_and_hidden_images_are_404_in_json(client, photo, staff, no_queue):
    hidden = captioned(photo, 1, "a hidden cat")
    Image.objects.filter(pk=hidden.pk).update(hidden=True)
    error_of(client.get("/api/images/987654"), 404)
    error_of(client.get(f"/api/images/{hidden.pk}"), 404)
    client.force_login(staff)
    assert client.get(f"/api/images/{hidden.pk}").status_code == 200


def test_search_returns_ranked_hits_with_interpretation(client, photo, no_queue):
    best = captioned(photo, 1, "a dog and another dog")
    other = captioned(photo, 2, "a dog on grass")
    captioned(photo, 3, "a dog with a cat")
    body = client.get("/api/search", {"q": 'dog -cat "on grass"'}).json()
    assert body["query"] == 'dog -cat "on grass"'
    assert [r["image"]["id"] for r in body["results"]] == [other.pk]
    assert body["interpretation"]["phrases"] == ["on grass"] and body["interpretation"]["excluded"] == ["cat"]
    body = client.get("/api/search", {"q": "dogs"}).json()
    assert body["total"] == 3 and body["results"][0]["image"]["id"] == best.pk
    assert body["results"][0]["matched_terms"] == ["dog"]
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)


def test_search_errors(client, photo, no_queue):
    captioned(photo, 1, "a dog")
    assert "Type a word" in error_of(client.get("/api/search"), 400)
    assert "too long" in error_of(client.get("/api/search", {"q": "dog " * 200}), 400)
    assert "positive integer" in error_of(client.get("/api/search", {"q": "dog", "page": "-1"}), 400)
    assert "no page 2" in error_of(client.get("/api/search", {"q": "dog", "page": 2}), 404)
    error_of(client.post("/api/search", {"q": "dog"}), 405)


def test_upload_needs_a_login(client, photo):
    response = client.post("/api/images", {"file": SimpleUploadedFile("a.jpg", photo(1))})
    assert "log in" in error_of(response, 401).lower()
    assert response["WWW-Authenticate"]
    assert Image.objects.count() == 0


def test_upload_with_a_session_needs_the_csrf_token(csrf_client, photo):
    client, _ = csrf_client
    response = client.post("/api/images", {"file": SimpleUploadedFile("a.jpg", photo(1))})
    assert "CSRF" in error_of(response, 403)
    assert Image.objects.count() == 0


def test_upload_creates_then_finds_the_same_photo(csrf_client, photo, no_queue):
    client, token = csrf_client
    response = upload(client, token, "holiday.jpg", photo(1))
    assert response.status_code == 201
    body = response.json()
    assert body["created"] is True and body["image"]["original_name"] == "holiday.jpg"
    assert body["image"]["status"] == "pending" and body["image"]["caption"] is None
    assert response["Location"] == f"/api/images/{body['image']['id']}"
    again = upload(client, token, "copy.jpg", photo(1))
    assert again.status_code == 200 and again.json()["created"] is False
    assert again.json()["image"]["id"] == body["image"]["id"]


def test_upload_is_captioned_in_process(csrf_client, photo, fake_captioner, django_capture_on_commit_callbacks):
    client, token = csrf_client
    data = fake_captioner.register(photo(1), "a lighthouse on a cliff")
    with django_capture_on_commit_callbacks(execute=True):
        image_id = upload(client, token, "l.jpg", data).json()["image"]["id"]
    body = client.get(f"/api/images/{image_id}").json()
    assert body["status"] == "done" and body["caption"]["text"] == "a lighthouse on a cliff"
    assert body["caption"]["model_version"] == "fake-1"
    assert [r["image"]["id"] for r in client.get("/api/search", {"q": "lighthouse"}).json()["results"]] == [image_id]


@pytest.mark.parametrize(
    "name, make, status, words",
    [
        ("photo.jpg", lambda photo: b"I am a text file, honest.", 415, "not an image"),
        ("scan.jpg", lambda photo: photo(1, fmt="BMP"), 415, "BMP files are not accepted"),
        ("bomb.png", lambda photo: png_declaring(30000, 30000), 413, "too many pixels"),
        ("big.png", lambda photo: png_declaring(8000, 8000), 413, "the limit is"),
        ("cut.jpg", lambda photo: photo(1)[:400], 400, "damaged or truncated"),
        ("empty.jpg", lambda photo: b"", 400, "empty"),
    ],
)
def test_upload_rejections_have_their_status(csrf_client, photo, name, make, status, words):
    client, token = csrf_client
    assert words in error_of(upload(client, token, name, make(photo)), status)
    assert Image.objects.count() == 0


def test_upload_larger_than_the_limit_is_413(csrf_client, photo, settings):
    settings.IMAGESEARCH_MAX_UPLOAD_BYTES = 1000
    client, token = csrf_client
    assert "larger than" in error_of(upload(client, token, "big.jpg", photo(1, size=(400, 400))), 413)


def test_upload_takes_exactly_one_file(csrf_client, photo):
    client, token = csrf_client
    assert "exactly one file" in error_of(client.post("/api/images", {}, HTTP_X_CSRFTOKEN=token), 400)
    two = [SimpleUploadedFile("a.jpg", photo(1)), SimpleUploadedFile("b.jpg", photo(2))]
    assert "exactly one file" in error_of(client.post("/api/images", {"file": two}, HTTP_X_CSRFTOKEN=token), 400)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_query_photo_is_decoded_once_in_process(client, photo, decodes, monkeypatch, fmt):
    """The upload check's decode is the network input too (memory: issue 14), reduced but at
    least as large as the networks need."""
    monkeypatch.setattr("captioning.services.get_captioner", FakeCaptioner)
    response = client.post("/api/search/by-image", {"file": SimpleUploadedFile("q", photo(3, size=(2400, 1800), fmt=fmt))})
    assert response.status_code == 200, response.content
    assert len(decodes) == 1 and NETWORK_DECODE_SIZE <= min(decodes[0]) <= 1800 // 2, decodes


def test_search_by_image_returns_the_caption_and_results(client, photo, fake_captioner, no_queue):
    harbour = captioned(photo, 1, "boats in a small harbour")
    query = fake_captioner.register(photo(60), "two boats on the water")
    response = client.post("/api/search/by-image", {"file": SimpleUploadedFile("q.jpg", query)})
    body = response.json()
    assert response.status_code == 200
    assert (body["caption"], body["model_version"], body["score"]) == ("two boats on the water", "fake-1", -0.42)
    assert [r["image"]["id"] for r in body["results"]] == [harbour.pk]
    assert Image.objects.count() == 1


def test_search_by_image_returns_the_query_photos_tags_and_objects(client, photo, fake_captioner, no_queue):
    """As docs/api.md says and the search-by-photo page shows: the words confident enough to show."""
    query = fake_captioner.register(
        photo(61), "a boat on the water", concepts=[("boat", 0.9), ("water", 0.6), ("sky", 0.2)], objects=[("canoe", 0.7), ("paddle", 0.1)]
    )
    body = client.post("/api/search/by-image", {"file": SimpleUploadedFile("q.jpg", query)}).json()
    assert (body["tags"], body["objects"]) == (["boat", "water"], ["canoe"])


def test_search_by_image_errors(client, photo, monkeypatch):
    response = client.post("/api/search/by-image", {"file": SimpleUploadedFile("q.jpg", photo(1)[:400])})
    assert "damaged" in error_of(response, 400)
    error_of(client.post("/api/search/by-image", {"file": SimpleUploadedFile("q.txt", b"hello")}), 415)
    error_of(client.post("/api/search/by-image", {}), 400)
    error_of(client.get("/api/search/by-image"), 405)

    def busy(data):
        raise CaptioningBusy("The captioning service is busy; please try again in a moment.")

    monkeypatch.setattr("gallery.api.describe_query_photo", busy)
    response = client.post("/api/search/by-image", {"file": SimpleUploadedFile("q.jpg", photo(1))})
    assert "busy" in error_of(response, 503)
    assert int(response["Retry-After"]) > 0


def test_private_site_api_needs_a_login(client, settings, user, photo, no_queue):
    settings.IMAGESEARCH_PUBLIC = False
    image = captioned(photo, 1, "a private dog")
    for url in ("/api/images", f"/api/images/{image.pk}", "/api/search?q=dog"):
        error_of(client.get(url), 401)
    error_of(client.post("/api/search/by-image", {"file": SimpleUploadedFile("q.jpg", photo(2))}), 401)
    client.force_login(user)
    assert client.get("/api/search", {"q": "dog"}).json()["total"] == 1


def test_the_schema_is_generated_and_served(client):
    response = client.get("/api/schema", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.1")
    assert set(schema["paths"]) == {"/api/images", "/api/images/{id}", "/api/search", "/api/search/by-image"}


def test_an_image_shows_its_tags_and_caption_alternatives(client, photo, no_queue):
    image = captioned(
        photo, 1, "a dog on the beach", alternatives=[["a dog on sand", -0.7]], concepts=[["dog", 0.93], ["sand", 0.01]]
    )
    item = client.get("/api/images").json()["results"][0]
    assert item["tags"] == [{"kind": "concept", "word": "dog", "probability": 0.93}]  # below the floor: not shown
    assert item["caption"]["alternatives"] == [{"text": "a dog on sand", "score": -0.7}]
    assert client.get(f"/api/images/{image.pk}").json()["tags"][0]["word"] == "dog"


def test_unknown_api_paths_and_refused_bodies_answer_json(client, photo, csrf_client, settings):
    assert "no API endpoint" in error_of(client.get("/api/nothing/here"), 404)
    error_of(client.post("/api/images/5/captions", {}), 404)
    session, token = csrf_client
    files = [SimpleUploadedFile(f"{i}.jpg", b"x") for i in range(settings.DATA_UPLOAD_MAX_NUMBER_FILES + 1)]
    assert "refused" in error_of(session.post("/api/images", {"file": files}, HTTP_X_CSRFTOKEN=token), 400)
    assert Image.objects.count() == 0


def test_a_duplicate_of_a_hidden_photo_reveals_nothing(csrf_client, photo, no_queue):
    hidden = captioned(photo, 1, "a secret garden party")
    Image.objects.filter(pk=hidden.pk).update(hidden=True, original_name="secret-party.jpg")
    client, token = csrf_client
    response = upload(client, token, "mine.jpg", photo(1))
    message = error_of(response, 409)
    assert "secret" not in response.content.decode() and str(hidden.sha256[:12]) not in response.content.decode()
    assert "not shown" in message and not response.has_header("Location")
    assert Image.objects.count() == 1


@pytest.fixture
def api_token(client, user):
    """A token made on the token page, as a person would (shown once, in that answer)."""
    client.force_login(user)
    response = client.post("/account/tokens/")
    assert response.status_code == 201
    client.logout()
    return response.context["created"]


def test_tokens_authenticate_scripts_without_csrf(photo, user, api_token, no_queue):
    from knox.models import AuthToken

    script = Client(enforce_csrf_checks=True)
    response = script.post("/api/images", {"file": SimpleUploadedFile("a.jpg", photo(1))}, HTTP_AUTHORIZATION=f"Bearer {api_token}")
    assert response.status_code == 201 and Image.objects.get().uploader == user
    stored = AuthToken.objects.get()
    assert api_token.startswith("imgs_") and api_token not in (stored.digest, stored.token_key)  # kept hashed
    wrong = script.post("/api/images", {"file": SimpleUploadedFile("b.jpg", photo(2))}, HTTP_AUTHORIZATION="Bearer imgs_nope")
    assert error_of(wrong, 401) and wrong["WWW-Authenticate"] == "Bearer"


def test_tokens_are_listed_and_revoked_by_their_owner_only(client, photo, user, staff, api_token):
    from knox.models import AuthToken

    key = AuthToken.objects.get().token_key
    client.force_login(staff)
    page = client.get("/account/tokens/")
    assert key not in page.content.decode()
    client.post(f"/account/tokens/{key}/revoke")
    assert AuthToken.objects.count() == 1  # not the staff member's token
    client.force_login(user)
    page = client.get("/account/tokens/").content.decode()
    assert key in page and api_token not in page  # listed by its start; the token itself is never shown again
    client.post(f"/account/tokens/{key}/revoke")
    assert AuthToken.objects.count() == 0
    response = Client().get("/api/images", HTTP_AUTHORIZATION=f"Bearer {api_token}")
    error_of(response, 401)


def test_search_by_image_is_rate_limited_per_client(client, photo, settings, fake_captioner, no_queue):
    settings.IMAGESEARCH_RATE_LIMITS = {"search_by_image": "2/min"}
    query = {"file": SimpleUploadedFile("q.jpg", photo(1))}
    for _ in range(2):
        query["file"].seek(0)
        assert client.post("/api/search/by-image", query).status_code == 200
    query["file"].seek(0)
    response = client.post("/api/search/by-image", query)
    assert "throttled" in error_of(response, 429)
    assert int(response["Retry-After"]) > 0
    other = Client(REMOTE_ADDR="192.0.2.7")  # another client has its own allowance
    assert other.post("/api/search/by-image", {"file": SimpleUploadedFile("q.jpg", photo(1))}).status_code == 200


def test_tokens_and_sessions_share_the_user_s_upload_limit(csrf_client, photo, user, api_token, settings, no_queue):
    settings.IMAGESEARCH_RATE_LIMITS = {"upload": "2/min"}
    session, csrf = csrf_client
    assert upload(session, csrf, "a.jpg", photo(1)).status_code == 201
    script = Client()
    by_token = script.post("/api/images", {"file": SimpleUploadedFile("b.jpg", photo(2))}, HTTP_AUTHORIZATION=f"Bearer {api_token}")
    assert by_token.status_code == 201
    error_of(upload(session, csrf, "c.jpg", photo(3)), 429)
    assert Image.objects.count() == 2


def test_search_by_image_waits_for_a_captioning_slot_in_process(client, photo, settings, fake_captioner, no_queue):
    from gallery.tasks import captioning_slots

    settings.IMAGESEARCH_QUERY_CAPTION_TIMEOUT = 0.05
    slots = captioning_slots()
    taken = [slots.acquire(blocking=False) for _ in range(settings.IMAGESEARCH_EMBEDDED_CAPTIONING)]
    try:
        response = client.post("/api/search/by-image", {"file": SimpleUploadedFile("q.jpg", photo(1))})
        assert "busy" in error_of(response, 503)
    finally:
        for _ in filter(None, taken):
            slots.release()
    assert client.post("/api/search/by-image", {"file": SimpleUploadedFile("q.jpg", photo(1))}).status_code == 200
