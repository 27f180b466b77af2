"""A photo's description: n-best captions, the concept head, tags in the index and in the pages."""
import json

import numpy as np
import pytest
from django.urls import reverse

from captioning import concepts, fingerprints
from captioning.files import ModelFileError, sha256_file
from captioning.inference import ImageCaptioner, decode_features
from captioning.storage import load_model_dir, update_meta
from gallery.captions import add_model_caption, remove_tag, sync_index
from gallery.descriptions import SearchWeights, document_fields
from gallery.ingest import ingest_bytes
from gallery.models import Tag
from gallery.similarity import rerank
from searchindex.index import Hit
from searchindex import index as search_index



def tiny_head(words=("dog", "beach", "snow"), depth=2048, hidden=4, seed=0) -> concepts.ConceptHead:
    rng = np.random.default_rng(seed)
    return concepts.ConceptHead(
        list(words), list(words), rng.normal(size=(depth, hidden)).astype(np.float32), np.zeros(hidden, np.float32),
        rng.normal(size=(hidden, len(words))).astype(np.float32), np.zeros(len(words), np.float32), temperature=1.5,
    )


def test_beam_alternatives_are_distinct_finished_captions_best_first(tiny_model, tokenizer, features):
    for result in decode_features(tiny_model, tokenizer, features, beam_width=4):
        texts = [text for text, _ in result.alternatives]
        assert result.text not in texts and len(texts) == len(set(texts)) and len(texts) <= 4
        scores = [score for _, score in result.alternatives]
        assert scores == sorted(scores, reverse=True) and all(s <= result.score + 1e-4 for s in scores)


def test_concept_probabilities_are_calibrated_by_temperature():
    head = tiny_head()
    feats = np.random.default_rng(1).normal(size=(5, 64, 2048)).astype(np.float32)
    logits = head.logits(feats)
    np.testing.assert_allclose(head.probabilities(feats), 1 / (1 + np.exp(-logits / 1.5)), rtol=1e-5)
    ranked = head.ranked(head.probabilities(feats), min_probability=0.0, top_k=2)
    assert all(len(row) == 2 and row[0][1] >= row[1][1] for row in ranked)


def test_temperature_fit_recovers_the_scale_of_overconfident_logits():
    rng = np.random.default_rng(2)
    true_logits = rng.normal(scale=2.0, size=(4000, 3))
    labels = (rng.random(true_logits.shape) < 1 / (1 + np.exp(-true_logits))).astype(np.float32)
    assert concepts.fit_temperature(3.0 * true_logits, labels) == pytest.approx(3.0, rel=0.1)


def simple_keys(caption):
    return [(w, w.lower().rstrip("s")) for w in caption.split() if w != "a"]


def test_concept_targets_group_words_by_key_and_name_them_by_their_commonest_form():
    captions = [["Dogs run", "a dog runs"], ["a dog sleeps"], ["snow"]]
    targets = concepts.concept_targets(captions, simple_keys, min_images=2, share=False)
    assert targets.keys == ["dog"] and targets.words == ["dog"]
    assert targets.labels[:, 0].tolist() == [1.0, 1.0, 0.0]


def test_concept_targets_are_the_share_of_captions_using_the_word():
    captions = [["a dog runs", "Dogs and a dog", "a cat", "a cat sleeps", "snow"], ["a dog"], ["a cat"]]
    targets = concepts.concept_targets(captions, simple_keys, min_images=2)
    assert targets.keys == ["cat", "dog"]
    # a word used twice in one caption counts once; 2 of 5 captions -> 0.4
    np.testing.assert_allclose(targets.labels, [[0.4, 0.4], [0.0, 1.0], [1.0, 0.0]])


def test_the_linear_path_adds_to_the_hidden_layer_and_survives_saving(tmp_path):
    head = tiny_head()
    feats = np.random.default_rng(3).normal(size=(4, 64, 2048)).astype(np.float32)
    without = head.logits(feats)
    head.linear = np.random.default_rng(4).normal(scale=0.01, size=(2048, 3)).astype(np.float32)
    np.testing.assert_allclose(head.logits(feats), without + feats.mean(axis=1) @ head.linear, rtol=1e-4, atol=1e-4)
    loaded = concepts.load_concept_head(head.save(tmp_path / concepts.CONCEPTS_NAME))
    np.testing.assert_allclose(loaded.logits(feats), head.logits(feats), rtol=1e-5, atol=1e-5)
    assert concepts.load_concept_head(tiny_head().save(tmp_path / "old.npz")).linear is None  # heads without one still load


def test_a_linear_path_of_the_wrong_shape_is_refused(tmp_path):
    head = tiny_head()
    head.linear = np.zeros((2048, 2), np.float32)
    path = head.save(tmp_path / concepts.CONCEPTS_NAME)
    with pytest.raises(ModelFileError, match="cannot be read: concept head: the linear path"):
        concepts.load_concept_head(path)


def test_training_fits_share_targets_with_the_linear_path():
    rng = np.random.default_rng(5)
    used = rng.random((300, 1)) < 0.5
    x = (rng.random((300, 2048)) + used * np.r_[np.ones(256), np.zeros(1792)]).astype(np.float32)  # visible in 256 features
    share = used.astype(np.float32) * 0.8  # word 0 used by 4 of 5 captions of those photos
    targets = concepts.ConceptTargets(["dog", "snow"], ["dog", "snow"], np.hstack([share, np.zeros_like(share)]))
    head, report = concepts.train_concept_head(x, targets, hidden=8, epochs=30, patience=30, log=lambda _: None)
    assert report["linear_path"] and head.linear is not None and head.linear.shape == (2048, 2)
    p = head.probabilities(x)
    assert p[share[:, 0] > 0, 0].mean() > p[share[:, 0] == 0, 0].mean() + 0.3


def install_head(model_dir, head):
    path = head.save(model_dir / concepts.CONCEPTS_NAME)
    update_meta(model_dir, concepts={"file": concepts.CONCEPTS_NAME, "sha256": sha256_file(path)})
    return path


def test_a_model_directory_loads_its_concept_head(model_and_feature_dirs):
    model_dir, _ = model_and_feature_dirs
    install_head(model_dir, tiny_head())
    assert load_model_dir(model_dir).concepts.words == ["dog", "beach", "snow"]


def assert_damaged_file_refused(model_dir, path, record: str, described: str):
    """A model directory's file (meta.json ``record``) truncated, missing, or replaced by one that is
    not a NumPy archive (its checksum updated to match): each refused with a message naming it."""
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ModelFileError, match=f"{path.name} does not match the checksum"):
        load_model_dir(model_dir)
    path.unlink()
    with pytest.raises(ModelFileError, match=f"{described} file .* is missing"):
        load_model_dir(model_dir)
    path.write_bytes(b"not a NumPy archive")  # replaced, and meta.json's checksum updated to match
    update_meta(model_dir, **{record: {"file": path.name, "sha256": sha256_file(path)}})
    with pytest.raises(ModelFileError, match=f"{described} file .* cannot be read"):
        load_model_dir(model_dir)


def test_a_missing_or_corrupt_concept_head_is_refused_clearly(model_and_feature_dirs):
    model_dir, _ = model_and_feature_dirs
    path = install_head(model_dir, tiny_head())
    assert_damaged_file_refused(model_dir, path, "concepts", "concept head")
    update_meta(model_dir, concepts=concepts.CONCEPTS_NAME)  # no checksum recorded
    with pytest.raises(ModelFileError, match="'concepts' must name a file and its sha256"):
        load_model_dir(model_dir)


def test_fingerprints_tell_a_copy_from_other_photos():
    rng = np.random.default_rng(3)
    train = np.abs(rng.normal(size=(300, 2048))).astype(np.float32)
    projection = fingerprints.fit_projection(train, 32)
    photos = np.abs(rng.normal(size=(20, 64, 2048))).astype(np.float32)
    copies = photos * rng.uniform(0.9, 1.1, size=photos.shape).astype(np.float32)  # re-encoding noise
    stored, queries = projection.fingerprints(photos), projection.fingerprints(copies)
    assert stored.dtype == np.float16 and stored.shape == (20, 32)
    np.testing.assert_allclose(np.linalg.norm(stored.astype(np.float32), axis=1), 1, atol=1e-3)
    alike = np.stack([fingerprints.cosines(q, stored) for q in queries])
    assert (alike.argmax(axis=1) == np.arange(20)).all()
    assert np.array_equal(fingerprints.from_bytes(fingerprints.to_bytes(stored[0])), stored[0])
    assert len(fingerprints.to_bytes(stored[0])) == 64


def install_projection(model_dir, projection):
    path = projection.save(model_dir / fingerprints.FINGERPRINT_NAME)
    update_meta(model_dir, fingerprint={"file": fingerprints.FINGERPRINT_NAME, "sha256": sha256_file(path)})
    return path


def test_the_captioner_fingerprints_each_photo_with_the_model_directorys_projection(model_and_feature_dirs, features):
    model_dir, feature_dir = model_and_feature_dirs
    projection = fingerprints.fit_projection(np.random.default_rng(4).normal(size=(40, 2048)), 8)
    path = install_projection(model_dir, projection)
    captioner = ImageCaptioner.from_dirs(model_dir, feature_dir)
    assert captioner.fingerprint.key == sha256_file(path)
    described = captioner.describe_features(features[:3])
    np.testing.assert_array_equal(np.stack([d.fingerprint for d in described]), projection.fingerprints(features[:3]))
    assert_damaged_file_refused(model_dir, path, "fingerprint", "fingerprint projection")


def test_rerank_puts_copies_first_then_combines_text_and_fingerprint():
    hits = [Hit(1, 0.9, []), Hit(2, 0.8, []), Hit(3, 0.5, []), Hit(4, 0.4, [])]
    stored = {2: np.array([0.6, 0.8]), 3: np.array([0.0, 1.0]), 4: np.array([1.0, 0.0])}
    query = np.array([1.0, 0.0])
    weights = SearchWeights(fingerprint=1.0, duplicate_above=0.95)
    ranked = rerank(hits, query, stored, weights)
    # 4 is a copy (cosine 1); then (0.9 + 0) / 2 for 1 (no fingerprint), (0.8 + 0.6) / 2 for 2, (0.5 + 0) / 2 for 3
    assert [h.doc_id for h in ranked] == [4, 2, 1, 3]
    assert [round(h.score, 4) for h in ranked] == [0.7, 0.7, 0.45, 0.25]
    assert rerank(hits, None, stored, weights) == hits
    assert rerank(hits, query, stored, SearchWeights()) == hits


def test_document_fields_weigh_each_source():
    weights = SearchWeights(caption=1.0, alternatives=0.5, max_alternatives=1, concepts=2.0, concept_min_probability=0.2, concept_top_k=2)
    fields = document_fields("a dog", alternatives=[["a cat", -1.0], ["a cow", -2.0]],
                             concepts=[("dog", 0.9), ("grass", 0.5), ("sky", 0.3), ("sand", 0.1)], weights=weights)
    assert [(f.text, f.weight) for f in fields] == [("a dog", 1.0), ("a cat", 0.5), ("dog", 1.8), ("grass", 1.0)]


def test_concept_power_flattens_the_probabilities():
    weights = SearchWeights(caption=0.0, concepts=2.0, concept_power=0.5, concept_min_probability=0.01, concept_top_k=5)
    fields = document_fields("", concepts=[("dog", 0.81), ("grass", 0.04), ("sand", 0.005)], weights=weights)
    assert [(f.text, round(f.weight, 6)) for f in fields] == [("dog", 1.8), ("grass", 0.4)]


@pytest.fixture
def weighted(monkeypatch):
    weights = SearchWeights(alternatives=0.5, concepts=2.0, concept_min_probability=0.1, tag_min_probability=0.5,
                            objects=2.0, object_min_probability=0.2, object_tag_min_probability=0.3)
    monkeypatch.setattr("gallery.captions.search_weights", lambda: weights)
    monkeypatch.setattr("gallery.views.search_weights", lambda: weights)
    monkeypatch.setattr("gallery.tasks.enqueue_captioning", lambda ids: True)
    return weights


@pytest.mark.django_db
def test_tags_and_alternatives_make_a_photo_findable_and_a_removed_tag_is_not(photo, weighted, client):
    image = ingest_bytes(photo(1), "p.jpg").image
    add_model_caption(image, "a man stands outside", model_version="m1", alternatives=[("a man on a beach", -1.2)],
                      concepts=[("snow", 0.8), ("mountain", 0.3), ("dog", 0.05)])
    assert [h.doc_id for h in search_index.search("snow").hits] == [image.pk]
    assert [h.doc_id for h in search_index.search("beach").hits] == [image.pk]
    assert search_index.search("dog").hits == []  # below the indexing floor
    page = client.get(reverse("gallery:image", args=[image.pk])).content.decode()
    assert ">snow</a>" in page and ">mountain</a>" not in page  # shown only above tag_min_probability
    remove_tag(Tag.objects.get(image=image, word="snow"))
    assert search_index.search("snow").hits == []
    assert ">snow</a>" not in client.get(reverse("gallery:image", args=[image.pk])).content.decode()
    add_model_caption(image, "a man in the snow", model_version="m2", concepts=[("snow", 0.9), ("ski", 0.7)])
    assert not Tag.objects.filter(image=image, word="snow", removed=False).exists()  # a curator's removal sticks
    assert set(Tag.objects.filter(image=image, removed=False).values_list("word", flat=True)) == {"ski"}


@pytest.mark.django_db
def test_a_human_caption_keeps_the_tags_but_drops_the_models_alternatives(photo, weighted):
    from gallery.captions import set_human_caption

    image = ingest_bytes(photo(2), "p.jpg").image
    add_model_caption(image, "a dog", model_version="m1", alternatives=[("a cat on a sofa", -1.0)], concepts=[("grass", 0.6)])
    set_human_caption(image, "my dog Rex")
    assert search_index.search("sofa").hits == []
    assert [h.doc_id for h in search_index.search("grass").hits] == [image.pk]
    assert [h.doc_id for h in search_index.search("rex").hits] == [image.pk]
    sync_index(image)
    assert json.dumps(image.captions.get(source="model").alternatives) == '[["a cat on a sofa", -1.0]]'


@pytest.mark.django_db
def test_a_batch_is_stored_and_indexed_as_the_same_descriptions_one_by_one(photo, weighted):
    """add_model_captions (the worker's one transaction per batch) keeps every rule of add_model_caption."""
    from gallery.captions import ModelDescription, add_model_captions, set_human_caption
    from gallery.models import Caption, Fingerprint, Image

    one, by_person, curated, gone = (ingest_bytes(photo(20 + i), f"{i}.jpg").image for i in range(4))
    set_human_caption(by_person, "my cat Tom")
    add_model_caption(curated, "a man on skis", model_version="m1", concepts=[("snow", 0.8), ("ski", 0.6)])
    remove_tag(Tag.objects.get(image=curated, word="snow"))
    gone_id = gone.pk
    gone.delete()
    stored = add_model_captions(
        [
            ModelDescription(one.pk, "a dog on a beach", score=-0.4, alternatives=[("a dog in the sand", -0.9)],
                             concepts=[("dog", 0.9), ("sand", 0.5), ("dog", 0.2)], objects=[("retriever", 0.7)],
                             fingerprint=np.ones(32, np.float16) / np.sqrt(32)),
            ModelDescription(by_person.pk, "a cat on a sofa", concepts=[("sofa", 0.7)]),
            ModelDescription(curated.pk, "a man in the snow", concepts=[("snow", 0.9), ("mountain", 0.6)]),
            ModelDescription(gone_id, "a lost photo"),
        ],
        model_version="m2", fingerprint_projection="p1",
    )
    assert set(stored) == {one.pk, by_person.pk, curated.pk}  # a deleted image is skipped
    assert Image.objects.get(pk=one.pk).active_caption.text == "a dog on a beach"
    assert Image.objects.get(pk=by_person.pk).active_caption.text == "my cat Tom"  # a person's caption wins
    assert Image.objects.get(pk=curated.pk).active_caption.text == "a man in the snow"
    assert Caption.objects.filter(image=curated, is_active=True).count() == 1
    assert list(Tag.objects.filter(image=one).values_list("kind", "word", "probability")) == [
        ("concept", "dog", 0.9), ("object", "retriever", 0.7), ("concept", "sand", 0.5)]  # a word's most probable occurrence
    assert set(Tag.objects.filter(image=curated, removed=False).values_list("word", flat=True)) == {"mountain"}
    assert Fingerprint.objects.get(image=one).projection == "p1" and not Fingerprint.objects.filter(image=curated).exists()
    assert set(Image.objects.filter(pk__in=stored).values_list("status", flat=True)) == {"done"}
    assert [h.doc_id for h in search_index.search("sand").hits] == [one.pk]  # the beam's alternative and the tag
    assert [h.doc_id for h in search_index.search("sofa").hits] == [by_person.pk]  # tags of a person-captioned photo
    assert [h.doc_id for h in search_index.search("snow").hits] == [curated.pk]  # by the caption only: the tag stays removed
    assert [h.doc_id for h in search_index.search("mountain").hits] == [curated.pk]
    again = add_model_captions([ModelDescription(one.pk, "something else")], model_version="m2")
    assert again[one.pk].text == "a dog on a beach"  # idempotent per model version


@pytest.mark.django_db
def test_results_below_the_calibrated_relevance_come_after_a_weaker_matches_divider(photo, monkeypatch, client):
    weights = SearchWeights(weak_match_below=0.5)
    monkeypatch.setattr("gallery.captions.search_weights", lambda: weights)
    monkeypatch.setattr("gallery.querying.search_weights", lambda: weights)
    monkeypatch.setattr("gallery.tasks.enqueue_captioning", lambda ids: True)
    strong = ingest_bytes(photo(3), "a.jpg").image
    weak = ingest_bytes(photo(4), "b.jpg").image
    add_model_caption(strong, "a dog", model_version="m1")
    add_model_caption(weak, "a dog and a cat and a horse and a cow on a farm", model_version="m1")
    page = client.get(reverse("gallery:search"), {"q": "dog"}).content.decode()
    assert "Weaker matches" in page
    before, after = page.split("Weaker matches")
    assert f"/images/{strong.pk}/" in before and f"/images/{weak.pk}/" in after and f"/images/{weak.pk}/" not in before


@pytest.mark.django_db
def test_a_curator_removes_a_wrong_tag_in_admin(photo, weighted, admin_client):
    image = ingest_bytes(photo(5), "p.jpg").image
    add_model_caption(image, "a kitchen", model_version="m1", concepts=[("dog", 0.7), ("table", 0.6)])
    assert [h.doc_id for h in search_index.search("dog").hits] == [image.pk]
    assert admin_client.get("/admin/gallery/tag/").status_code == 200
    wrong = Tag.objects.get(image=image, word="dog")
    response = admin_client.post("/admin/gallery/tag/", {"action": "remove_tags", "_selected_action": [wrong.pk]})
    assert response.status_code == 302
    assert Tag.objects.get(pk=wrong.pk).removed
    assert search_index.search("dog").hits == [] and [h.doc_id for h in search_index.search("table").hits] == [image.pk]


def test_document_fields_weigh_object_labels_by_their_own_weight():
    weights = SearchWeights(objects=3.0, object_min_probability=0.2, object_top_k=2)
    fields = document_fields("a room", objects=[("laptop", 0.9), ("computer", 0.5), ("desk", 0.4), ("mouse", 0.1)], weights=weights)
    assert [(f.text, f.weight) for f in fields] == [("a room", 1.0), ("laptop", 2.7), ("computer", 1.5)]
    assert document_fields("a room", objects=[("laptop", 0.9)], weights=SearchWeights()) == [fields[0]]  # weight 0: left out


@pytest.mark.django_db
def test_object_labels_are_searchable_shown_apart_and_removable(photo, weighted, client):
    image = ingest_bytes(photo(6), "p.jpg").image
    add_model_caption(image, "two dogs in a kitchen", model_version="m1", concepts=[("dog", 0.8)],
                      objects=[("laptop", 0.7), ("computer", 0.7), ("dog", 0.25), ("mouse", 0.1)])
    assert set(Tag.objects.filter(image=image, kind=Tag.Kind.OBJECT).values_list("word", flat=True)) == {"laptop", "computer", "dog", "mouse"}
    assert [h.doc_id for h in search_index.search("laptop").hits] == [image.pk]
    assert search_index.search("mouse").hits == []  # below the object labels' indexing floor
    page = client.get(reverse("gallery:image", args=[image.pk])).content.decode()
    objects = page.split('aria-label="Objects"')[1].split("</p>")[0]
    assert 'class="chip chip-object"' in objects and f'href="{reverse("gallery:search")}?q=laptop"' in objects
    assert ">dog</a>" not in objects and ">dog</a>" in page.split('aria-label="Tags"')[1].split("</p>")[0]  # each kind its own row
    remove_tag(Tag.objects.get(image=image, kind=Tag.Kind.OBJECT, word="laptop"))
    assert search_index.search("laptop").hits == []
    assert ">laptop</a>" not in client.get(reverse("gallery:image", args=[image.pk])).content.decode()
    assert Tag.objects.get(image=image, kind=Tag.Kind.CONCEPT, word="dog").removed is False  # same word, other kind: kept
    add_model_caption(image, "a table with things", model_version="m2", objects=[("laptop", 0.9), ("desk", 0.6)])
    assert set(Tag.objects.filter(image=image, kind=Tag.Kind.OBJECT, removed=False).values_list("word", flat=True)) == {"desk"}
    assert search_index.search("laptop").hits == []  # the curator's removal survives re-captioning


@pytest.mark.django_db
def test_the_api_lists_tags_with_their_kind(photo, weighted, client):
    image = ingest_bytes(photo(7), "p.jpg").image
    add_model_caption(image, "a cup", model_version="m1", concepts=[("table", 0.6)], objects=[("espresso", 0.8)])
    tags = client.get(reverse("gallery:api-image", args=[image.pk])).json()["tags"]
    assert {(t["word"], t["kind"]) for t in tags} == {("table", "concept"), ("espresso", "object")}
    assert {t["word"]: t["probability"] for t in tags}["espresso"] == pytest.approx(0.8)


def test_the_harness_weighs_object_labels_like_the_product():
    from gallery.search_quality import PhotoDescription, evaluate_design

    descriptions = {
        "a.jpg": PhotoDescription("a man sits at a table", [], [], [("laptop", 0.9), ("computer", 0.9)]),
        "b.jpg": PhotoDescription("a man sits at a table", [], [], [("cup", 0.8)]),
    }
    references = {n: ["a man at a table", "a man sits"] for n in descriptions}
    words = [("laptop", {"a.jpg"})]
    without = evaluate_design(descriptions, references, SearchWeights(), words=words)
    with_labels = evaluate_design(descriptions, references, SearchWeights(objects=1.0, object_min_probability=0.1), words=words)
    assert without["word"]["mAP"] == 0.0 and with_labels["word"]["mAP"] == 100.0


@pytest.mark.django_db
def test_more_like_this_shows_a_stored_copy_first(photo, fake_captioner, no_queue, monkeypatch, client):
    from gallery.tasks import caption_images

    monkeypatch.setattr("gallery.querying.search_weights", lambda: SearchWeights(fingerprint=1.0, duplicate_above=0.9))
    looks = np.random.default_rng(6).normal(size=(3, 16))
    images = []
    for seed, look in [(41, looks[0]), (42, looks[1]), (43, looks[0] + 0.1 * looks[2])]:
        images.append(ingest_bytes(fake_captioner.register(photo(seed), "a red car on a street", look), f"{seed}.jpg").image)
    caption_images([image.pk for image in images])
    original, other, copy = images
    page = client.get(reverse("gallery:image", args=[original.pk])).content.decode()
    similar = page.split("More like this")[1]
    assert similar.index(f"/images/{copy.pk}/") < similar.index(f"/images/{other.pk}/")


@pytest.mark.django_db
def test_rebuild_index_keeps_the_whole_description(photo, weighted):
    from django.core.management import call_command

    image = ingest_bytes(photo(7), "p.jpg").image
    add_model_caption(image, "a man stands outside", model_version="m1", alternatives=[("a man on a beach", -1.2)],
                      concepts=[("snow", 0.8), ("ski", 0.6)], objects=[("alp", 0.7)])
    remove_tag(Tag.objects.get(image=image, word="ski"))
    queries = ("snow", "beach", "man", "ski", "alp")
    before = {q: [(h.doc_id, round(h.score, 9)) for h in search_index.search(q).hits] for q in queries}
    call_command("rebuild_index")
    after = {q: [(h.doc_id, round(h.score, 9)) for h in search_index.search(q).hits] for q in queries}
    assert after == before and after["snow"] and after["alp"] and not after["ski"]


def test_the_harness_measures_copies_with_and_without_fingerprints_and_calibrates_the_copy_threshold():
    from gallery import search_quality

    looks = np.eye(4, dtype=np.float32)
    originals = {f"p{i}": search_quality.PhotoDescription("a dog on grass", [], [], [], looks[i]) for i in range(4)}
    copies = {n: search_quality.PhotoDescription("a dog on grass", [], [], [], 0.9 * d.fingerprint + 0.1) for n, d in originals.items()}
    calibration = search_quality.duplicate_threshold(originals, copies)
    assert calibration["copies_recognised"] == 100.0 and 0.1 < calibration["duplicate_above"] < 1
    weights = SearchWeights(fingerprint=1.0, duplicate_above=calibration["duplicate_above"])
    index, ids = search_quality.description_index(originals, weights)
    assert search_quality.copy_metrics(index, ids, originals, copies, weights, fingerprints=True)["R@1"] == 100.0
    assert search_quality.copy_metrics(index, ids, originals, copies, weights, fingerprints=False)["R@1"] == 25.0
