"""The search and rebuild_index management commands over gallery images."""
import json
from io import StringIO

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.urls import reverse

from gallery.descriptions import SearchWeights
from gallery.ingest import ingest_bytes
from gallery.models import Caption, Fingerprint, Image
from gallery.tasks import caption_images
from searchindex import index as search_index

pytestmark = pytest.mark.django_db


def add_image(n: int, caption: str | None, hidden: bool = False) -> Image:
    image = Image.objects.create(
        file=f"images/{n}.jpg", original_name=f"photo-{n}.jpg", sha256=f"{n:064d}", format="JPEG", hidden=hidden
    )
    if caption is not None:
        Caption.objects.create(image=image, text=f"old {caption}", source="model", model_version="v0")
        Caption.objects.create(image=image, text=caption, source="model", model_version="v1", is_active=True)
    return image


@pytest.fixture
def gallery():
    images = {
        "dog": add_image(1, "a dog runs on the beach"),
        "two_dogs": add_image(2, "two dogs play in the snow"),
        "hidden": add_image(3, "a dog hides under a table", hidden=True),
        "pending": add_image(4, None),
        "cat": add_image(5, "a cat sleeps on a sofa"),
    }
    search_index.index_document(images["hidden"].pk, "a dog hides under a table")  # stale entry
    call_command("rebuild_index", stdout=StringIO(), stderr=StringIO())
    return images


def run(*args) -> str:
    out = StringIO()
    call_command("search", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_rebuild_index_indexes_visible_active_captions_only(gallery, capsys):
    assert search_index.index_stats()["documents"] == 3
    found = {hit.doc_id for hit in search_index.search("dog").hits}
    assert found == {gallery["dog"].pk, gallery["two_dogs"].pk}
    assert not search_index.search("old").hits  # inactive captions are not indexed


def test_rebuild_index_reports_progress(gallery, capsys):
    call_command("rebuild_index")
    captured = capsys.readouterr()
    assert "Indexed 3 caption(s)." in captured.out
    assert "3/3" in captured.err  # the tqdm bar


def test_search_json_gives_file_score_and_active_caption(gallery):
    out = json.loads(run("snow dogs", "--json", "--limit", "1"))
    assert out["query"] == "snow dogs"
    assert out["results"] == [
        {"id": gallery["two_dogs"].pk, "file": "photo-2.jpg", "score": pytest.approx(out["results"][0]["score"]),
         "caption": "two dogs play in the snow"}
    ]
    assert 0 < out["results"][0]["score"] <= 1


def test_search_plain_text(gallery):
    lines = run("cat").splitlines()
    assert len(lines) == 1 and "photo-5.jpg" in lines[0] and "a cat sleeps on a sofa" in lines[0]
    assert run("zebra").strip() == "No matches."


def test_queries_file_gives_one_json_line_per_query(gallery, tmp_path):
    queries = tmp_path / "queries.txt"
    queries.write_bytes('dog\n\n"dogs play" -snow\nthe\ncat sofa\n\xff\xfe\x00dog\n'.encode("latin-1"))
    lines = [json.loads(line) for line in run("--queries", str(queries)).splitlines()]
    assert [line["query"] for line in lines][:4] == ["dog", '"dogs play" -snow', "the", "cat sofa"]
    assert len(lines) == 5
    assert len(lines[0]["results"]) == 2
    assert lines[1]["results"] == [] and lines[2]["results"] == [] and "common words" in lines[2]["message"]
    assert [r["file"] for r in lines[3]["results"]] == ["photo-5.jpg"]
    assert lines[4]["results"] == [] and "binary" in lines[4]["message"]  # undecodable bytes


def test_search_needs_a_query_or_a_file(gallery, tmp_path):
    with pytest.raises(CommandError):
        run()
    with pytest.raises(CommandError):
        run("--queries", str(tmp_path / "missing.txt"))


def test_search_by_image_prints_one_json_line_per_photo(gallery, fake_captioner, photo, tmp_path):
    snow = tmp_path / "snow.jpg"
    snow.write_bytes(fake_captioner.register(photo(11), "two dogs play in the snow"))
    sofa = tmp_path / "sofa.png"
    sofa.write_bytes(fake_captioner.register(photo(12, fmt="PNG"), "a cat sleeps on a sofa"))
    broken = tmp_path / "broken.jpg"
    broken.write_text("not a photo at all")
    missing = tmp_path / "missing.jpg"
    lines = [json.loads(line) for line in run("--image", str(snow), str(sofa), str(broken), str(missing), "--limit", "1").splitlines()]
    assert [line["file"] for line in lines] == [str(snow), str(sofa), str(broken), str(missing)]
    assert lines[0]["caption"] == "two dogs play in the snow" and lines[0]["model_version"] == "fake-1"
    assert [row["file"] for row in lines[0]["results"]] == ["photo-2.jpg"]
    assert [row["file"] for row in lines[1]["results"]] == ["photo-5.jpg"]
    assert "results" not in lines[2] and lines[2]["error"]
    assert "results" not in lines[3] and lines[3]["error"].startswith(f"Cannot read {missing}")
    assert Image.objects.count() == 5  # query photos are described, never stored


def described(fake_captioner, data: bytes, name: str, text: str, fingerprint=None, **sources) -> Image:
    """A gallery photo described by the (fake) captioning worker, with the fingerprint and other sources given, or none."""
    image = ingest_bytes(fake_captioner.register(data, text, fingerprint, **sources), name).image
    caption_images([image.pk])
    return image


@pytest.mark.parametrize(
    "weights",
    [SearchWeights(fingerprint=1.0, duplicate_above=0.9), SearchWeights(fingerprint=1.0)],
    ids=["copy-above-the-duplicate-threshold", "combined-score"],
)
def test_a_resaved_copy_outranks_photos_with_the_same_caption(fake_captioner, no_queue, photo, tmp_path, monkeypatch, weights):
    text = "a dog runs on the grass"
    looks = np.random.default_rng(5).normal(size=(3, 32))
    older = described(fake_captioner, photo(21), "older-model.jpg", text)  # captioned before fingerprints
    described(fake_captioner, photo(22), "same-caption.jpg", text, looks[1])
    original = described(fake_captioner, photo(23), "original.jpg", text, looks[0])
    assert not Fingerprint.objects.filter(image=older).exists()
    assert Fingerprint.objects.get(image=original).projection == "fake-projection"
    copy = tmp_path / "copy.jpg"
    copy.write_bytes(fake_captioner.register(photo(24), text, looks[0] + 0.1 * looks[2]))

    def found(search_weights):
        monkeypatch.setattr("gallery.querying.search_weights", lambda: search_weights)
        return [row["file"] for row in json.loads(run("--image", str(copy)))["results"]]

    assert found(SearchWeights())[0] == "older-model.jpg"  # equal text scores: the text ranking cannot tell
    ranked = found(weights)
    assert ranked[0] == "original.jpg"
    assert sorted(ranked) == ["older-model.jpg", "original.jpg", "same-caption.jpg"]  # no fingerprint: still found


def test_search_by_photo_searches_with_the_query_photos_whole_description(fake_captioner, no_queue, photo, tmp_path, monkeypatch, client):
    """The query photo's alternatives, concept words and object labels count, weighted as a stored photo's."""
    weights = SearchWeights(alternatives=0.5, concepts=2.0, concept_min_probability=0.1, objects=2.0, object_min_probability=0.2)
    for module in ("gallery.captions", "gallery.querying"):
        monkeypatch.setattr(f"{module}.search_weights", lambda: weights)
    snowy = described(fake_captioner, photo(31), "snowy.jpg", "a man on a mountain", concepts=[("snow", 0.9), ("ski", 0.8)])
    indoor = described(fake_captioner, photo(32), "indoor.jpg", "a man in a room with a lamp")
    query = fake_captioner.register(photo(33), "a man in a room", alternatives=[("a skier in the snow", -1.1)],
                                    concepts=[("snow", 0.9), ("ski", 0.05)], objects=[("ski", 0.7)])
    (tmp_path / "query.jpg").write_bytes(query)
    assert search_index.search("a man in a room").hits[0].doc_id == indoor.pk  # what the caption alone finds

    assert [row["file"] for row in json.loads(run("--image", str(tmp_path / "query.jpg")))["results"]] == ["snowy.jpg", "indoor.jpg"]
    page = client.post(reverse("gallery:search-by-image"), {"file": SimpleUploadedFile("q.jpg", query)}).content.decode()
    assert page.index(f"/images/{snowy.pk}/") < page.index(f"/images/{indoor.pk}/")
    body = client.post("/api/search/by-image", {"file": SimpleUploadedFile("q.jpg", query)}).json()
    assert [r["image"]["id"] for r in body["results"]] == [snowy.pk, indoor.pk]
