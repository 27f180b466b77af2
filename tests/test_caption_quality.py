"""Caption quality: the CHAIR object-hallucination rate, CIDEr / CIDEr-D, reranking the beam by
visual evidence, and the calibrated confidence (captioning.chair, captioning.evidence,
captioning.evaluation)."""

import json

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.urls import reverse

from captioning import concepts
from captioning.chair import OBJECTS_PATH, ObjectVocabulary, chair, load_object_vocabulary
from captioning.evaluation import best_try, calibrate_confidence, cider, human_reference, rerank_tries, score_captions
from captioning.evidence import CaptionConfidence, EvidenceReranker, ObjectWordBias, VisualEvidence
from captioning.files import ModelFileError, sha256_file
from captioning.inference import CaptionResult, ImageCaptioner, decode_candidates
from captioning.model import ModelConfig
from captioning.storage import update_meta
from captioning.vocabulary import END_ID, START_ID, Tokenizer
from gallery.captions import set_human_caption

from .conftest import captioned


def caption(text, score):
    words = text.split()
    return CaptionResult(text, score, words, np.zeros((len(words), 64), np.float32))


def head_over(words, seed=0, depth=2048, hidden=4):
    """A concept head whose probabilities the tests pass in directly (only its words matter)."""
    rng = np.random.default_rng(seed)
    return concepts.ConceptHead(
        list(words), list(words), rng.normal(size=(depth, hidden)).astype(np.float32), np.zeros(hidden, np.float32),
        rng.normal(size=(hidden, len(words))).astype(np.float32), np.zeros(len(words), np.float32),
    )


# ---------------------------------------------------------------------------- CHAIR
def test_chair_of_a_hand_made_case():
    references = {
        "a.jpg": ["A dog runs on the grass .", "A puppy plays in a field ."],
        "b.jpg": ["A man rides a bike .", "A person on a bicycle ."],
        "c.jpg": ["A dog in the snow .", "A black dog plays in snow ."],
    }
    hypotheses = {
        "a.jpg": "two puppies and a cat on the grass",  # dog, cat (invented), grass
        "b.jpg": "a man rides a bicycle on the street",  # person, bicycle, street (invented)
        "c.jpg": "an animal in the snow",  # animal (supported by "dog"), snow
    }
    result = chair(hypotheses, references)
    assert result["per_image"] == {"a.jpg": ["cat"], "b.jpg": ["street"], "c.jpg": []}
    assert result["objects_named"] == 8 and result["objects_invented"] == 2
    assert result["CHAIR-i"] == 25.0  # 2 of 8 named groups
    assert result["CHAIR-s"] == pytest.approx(66.67)  # 2 of 3 captions


def test_object_groups_match_synonyms_plurals_and_longest_phrases_first():
    objects = load_object_vocabulary()
    assert objects.groups_named("A man eats a hot dog") == ["person", "food"]
    assert objects.groups_named("Two puppies and a greyhound") == ["dog"]
    assert objects.groups_named("a woman with glasses and a glass") == ["person", "sunglasses", "cup"]
    assert objects.groups_named("a boy slides down a slide") == ["person", "slide"]  # "slides" is the verb
    assert objects.groups_named(["a", "dog", "on", "a", "bench"]) == ["dog", "bench"]


def test_object_vocabulary_refuses_a_word_in_two_groups_and_an_unknown_broader_group():
    with pytest.raises(ValueError, match="two groups"):
        ObjectVocabulary.from_groups([{"name": "a", "words": ["dog"]}, {"name": "b", "words": ["dog"]}])
    with pytest.raises(ValueError, match="unknown groups"):
        ObjectVocabulary.from_groups([{"name": "dog", "words": ["dog"], "kind_of": "animal"}])


def test_the_shipped_word_list_says_where_it_comes_from():
    data = json.loads(OBJECTS_PATH.read_text())
    assert "COCO" in data["source"] and "Flickr8k" in data["source"] and "Rohrbach" in data["source"]
    assert len(load_object_vocabulary().groups) >= 120


# ---------------------------------------------------------------------------- CIDEr, CIDEr-D, the report
REFS = {
    "a.jpg": ["A dog runs through the grass .", "A brown dog is running on a lawn ."],
    "b.jpg": ["Two children play on a beach .", "Kids playing in the sand by the sea ."],
    "c.jpg": ["A man rides a bike down a street .", "A cyclist on a city road ."],
}


def test_cider_d_punishes_padding_that_plain_cider_lets_through():
    refs = {k: [" ".join(c.lower().split()[:-1]) for c in v] for k, v in REFS.items()}
    exact = {k: [v[0]] for k, v in refs.items()}
    plain, cider_d, per_image = cider(refs, exact)
    assert set(per_image) == set(refs) and cider_d == pytest.approx(np.mean(list(per_image.values())))
    padded = {k: [f"{v[0]} {v[0]}"] for k, v in refs.items()}
    padded_plain, padded_d, _ = cider(refs, padded)
    assert padded_d < cider_d / 2  # clipped counts and the length penalty
    assert padded_plain > padded_d  # cosine ignores how often the words are repeated


def test_score_captions_reports_cider_d_and_chair_per_image():
    scored = score_captions(REFS, {"a.jpg": "a dog runs on the grass", "b.jpg": "a dog on the beach", "c.jpg": "a man rides a bike"}, meteor=False)
    assert {"CIDEr", "CIDEr-D", "CHAIR-i", "CHAIR-s"} <= set(scored["scores"])
    assert scored["per_image"]["b.jpg"]["invented"] == ["dog"] and scored["per_image"]["a.jpg"]["invented"] == []
    assert scored["scores"]["CHAIR-s"] == pytest.approx(33.33)


def test_human_reference_scores_the_first_caption_against_the_others():
    refs = {n: caps + caps[:1] for n, caps in REFS.items()}  # the first caption also appears among the others
    reference = human_reference(refs)
    assert reference["scores"]["BLEU-4"] > 90 and reference["scores"]["CHAIR-i"] == 0.0
    assert "per_image" not in reference


# ---------------------------------------------------------------------------- reranking
def test_a_candidate_naming_an_object_the_photo_lacks_loses_the_rerank():
    evidence = VisualEvidence(head_over(["dog", "cat", "grass", "man"]))
    probabilities = np.array([0.9, 0.01, 0.8, 0.05])
    search_order = [caption("a cat on the grass", -0.50), caption("a dog on the grass", -0.60)]
    assert EvidenceReranker(evidence, weight=0.0, floor=0.1).rank(search_order, probabilities)[0].text == "a cat on the grass"
    reranked = EvidenceReranker(evidence, weight=0.2, floor=0.1).rank(search_order, probabilities)
    assert [c.text for c in reranked] == ["a dog on the grass", "a cat on the grass"]
    # Well-supported objects cost nothing: the search's order stands.
    supported = [caption("a dog on the grass", -0.5), caption("a dog", -0.55)]
    assert EvidenceReranker(evidence, weight=5.0, floor=0.5).rank(supported, probabilities)[0].text == "a dog on the grass"
    assert evidence.shortfall("a man with a dog".split(), probabilities, 0.1) == pytest.approx(np.log(0.05 / 0.1))


def test_coverage_prefers_the_candidate_using_words_people_would_use():
    evidence = VisualEvidence(head_over(["dog", "grass", "run", "beach"]))
    probabilities = np.array([0.9, 0.7, 0.6, 0.02])
    search_order = [caption("a dog on the beach", -0.50), caption("two dogs run on the grass", -0.55)]
    assert evidence.coverage("two dogs run on the grass".split(), probabilities) == pytest.approx(0.9 + 0.6 + 0.7)
    assert EvidenceReranker(evidence, 0.0, 0.1, coverage=0.0).rank(search_order, probabilities)[0].text == "a dog on the beach"
    assert EvidenceReranker(evidence, 0.0, 0.1, coverage=0.2).rank(search_order, probabilities)[0].text == "two dogs run on the grass"
    record = {"weight": 1.0, "floor": 0.3, "coverage": 0.2}
    assert EvidenceReranker.from_meta(record, evidence).coverage == 0.2


def test_rerank_tries_report_one_row_per_setting():
    evidence = VisualEvidence(head_over(["dog", "cat", "grass", "beach", "man", "bike"]))
    found = {
        "a.jpg": ([caption("a cat on the grass", -0.4), caption("a dog on the grass", -0.5)], np.array([0.9, 0.01, 0.9, 0.1, 0.1, 0.1])),
        "b.jpg": ([caption("two children on a beach", -0.5)], np.array([0.1, 0.1, 0.1, 0.9, 0.1, 0.1])),
        "c.jpg": ([caption("a man rides a bike", -0.5)], np.array([0.1, 0.1, 0.1, 0.1, 0.9, 0.9])),
    }
    rows = rerank_tries(found, REFS, evidence, weights=(0.0, 0.5), floors=(0.1, 0.3), coverages=(0.0,))
    assert [(r["weight"], r["floor"], r["coverage"]) for r in rows] == [(0.0, 0.1, 0.0), (0.5, 0.1, 0.0), (0.5, 0.3, 0.0)]
    assert rows[0]["CHAIR-i"] > 0 and rows[1]["CHAIR-i"] == 0.0 and rows[1]["CIDEr-D"] > rows[0]["CIDEr-D"]


class TableCaptioner:
    """A hand-made captioner for the search: the next word's logits depend only on the last word."""

    def __init__(self, tokenizer, table):
        import tensorflow as tf

        self.config = ModelConfig(vocab_size=tokenizer.size, max_length=8, feature_locations=2, feature_depth=3)
        self.table = tf.constant(table, tf.float32)

    def encode(self, features):
        return features, features

    def initial_state(self, enc):
        import tensorflow as tf

        return tf.zeros([tf.shape(enc)[0], 1])

    def decode_step(self, tokens, state, enc, keys):
        import tensorflow as tf

        return tf.gather(self.table, tokens), state, tf.zeros([tf.shape(tokens)[0], 2])


def test_evidence_bias_makes_the_beam_drop_an_unsupported_object():
    tokenizer = Tokenizer(["a", "dog", "cat", "runs"])
    ids = tokenizer.word_index
    table = np.full((tokenizer.size, tokenizer.size), -10.0, np.float32)
    table[START_ID, ids["a"]] = 5.0
    table[ids["a"], ids["dog"]], table[ids["a"], ids["cat"]] = 3.0, 2.0  # the language model prefers "dog"
    for word in ("dog", "cat"):
        table[ids[word], END_ID] = 5.0
    captioner, features = TableCaptioner(tokenizer, table), np.zeros((2, 2, 3), np.float32)
    evidence = VisualEvidence(head_over(["dog", "cat", "runs"]))
    probabilities = np.array([[0.01, 0.9, 0.5], [0.9, 0.9, 0.5]])  # photo 0 shows no dog, photo 1 does
    word_bias = ObjectWordBias(evidence, tokenizer.index_word, weight=1.0, floor=0.3)
    bias = word_bias.of(probabilities)
    assert bias[0, ids["dog"]] == pytest.approx(np.log(0.01 / 0.3)) and bias[0, ids["cat"]] == 0.0
    assert not bias[1].any() and not bias[:, ids["runs"]].any()  # supported objects and non-objects: no bias
    plain = decode_candidates(captioner, tokenizer, features, beam_width=1, length_alpha=0.0)
    biased = decode_candidates(captioner, tokenizer, features, beam_width=1, length_alpha=0.0, bias=bias)
    assert [c[0].text for c in plain] == ["a dog", "a dog"]
    assert [c[0].text for c in biased] == ["a cat", "a dog"]
    # The score stays the model's own log-probability of the caption, without the bias.
    logp = table - np.log(np.exp(table).sum(axis=1, keepdims=True))
    assert biased[0][0].score == pytest.approx(logp[START_ID, ids["a"]] + logp[ids["a"], ids["cat"]] + logp[ids["cat"], END_ID], abs=1e-5)
    assert ObjectWordBias.from_meta(word_bias.to_meta(), evidence, tokenizer.index_word).to_meta() == {"weight": 1.0, "floor": 0.3}


def test_a_model_with_an_evidence_bias_decodes_with_it(model_and_feature_dirs, features):
    model_dir, feature_dir = model_and_feature_dirs
    path = head_over(["dog", "cat"]).save(model_dir / concepts.CONCEPTS_NAME)
    update_meta(model_dir, concepts={"file": concepts.CONCEPTS_NAME, "sha256": sha256_file(path)})
    assert ImageCaptioner.from_dirs(model_dir, feature_dir).word_bias is None  # older model dirs: no bias
    update_meta(model_dir, decoding={"beam_width": 2, "evidence_bias": {"weight": 0.5, "floor": 0.2}})
    captioner = ImageCaptioner.from_dirs(model_dir, feature_dir)
    assert captioner.word_bias.to_meta() == {"weight": 0.5, "floor": 0.2}
    assert len(captioner.describe_features(features[:2])) == 2


def test_best_try_meets_the_targets_first_then_raises_cider_d():
    rows = [
        {"name": "fewest invented", "CIDEr-D": 47.0, "CHAIR-i": 11.0, "BLEU-4": 19.5, "degenerate": 0},
        {"name": "targets met", "CIDEr-D": 52.0, "CHAIR-i": 19.0, "BLEU-4": 20.6, "degenerate": 0},
        {"name": "most CIDEr-D", "CIDEr-D": 53.0, "CHAIR-i": 23.0, "BLEU-4": 20.9, "degenerate": 0},
        {"name": "loops", "CIDEr-D": 60.0, "CHAIR-i": 5.0, "BLEU-4": 25.0, "degenerate": 3},
    ]
    assert best_try(rows)["name"] == "fewest invented"  # CIDEr-D minus CHAIR-i
    assert best_try(rows, max_chair_i=19.2, min_bleu_4=19.61)["name"] == "targets met"
    assert best_try(rows, max_chair_i=5.0)["name"] == "fewest invented"  # none meets it: the plain rule


# ---------------------------------------------------------------------------- confidence
def test_confidence_is_calibrated_on_held_out_captions():
    rng = np.random.default_rng(0)
    evidence = VisualEvidence(head_over(["dog", "cat"]))
    chosen, probabilities, per_image = {}, {}, {}
    for i in range(600):
        score = rng.uniform(-2.0, 0.0)
        good = rng.random() < 1 / (1 + np.exp(-(4 * score + 4)))
        name = f"{i}.jpg"
        chosen[name], probabilities[name] = caption("a dog", score), np.array([0.9, 0.1])
        per_image[name] = {"invented": [], "CIDEr-D": 1.0 if good else 0.1}
    record = calibrate_confidence(chosen, probabilities, per_image, evidence)
    assert record["coefficients"][0] > 2  # a higher score, a likelier good caption
    for row in record["held_out"]["reliability"]:
        if row["count"] >= 60:
            assert abs(row["predicted"] - row["observed"]) < 0.12, row
    assert record["held_out"]["brier"] < record["held_out"]["brier_constant"]
    confidence = CaptionConfidence.from_meta(record, evidence)
    assert 0.0 <= confidence.of(caption("a dog", -1.9), np.array([0.9, 0.1])) < confidence.of(caption("a dog", -0.1), np.array([0.9, 0.1])) <= 1.0


def test_confidence_refuses_to_calibrate_on_one_kind_of_caption():
    evidence = VisualEvidence(head_over(["dog"]))
    chosen = {f"{i}": caption("a dog", -1.0) for i in range(20)}
    with pytest.raises(ValueError, match="too few of one kind"):
        calibrate_confidence(chosen, {k: np.array([0.5]) for k in chosen}, {k: {"invented": ["cat"], "CIDEr-D": 0.0} for k in chosen}, evidence)


def test_a_model_with_reranking_and_confidence_uses_them(model_and_feature_dirs, features):
    model_dir, feature_dir = model_and_feature_dirs
    path = head_over(["w1", "w2"]).save(model_dir / concepts.CONCEPTS_NAME)
    update_meta(
        model_dir,
        concepts={"file": concepts.CONCEPTS_NAME, "sha256": sha256_file(path)},
        reranking={"weight": 0.3, "floor": 0.1},
        confidence={"coefficients": [2.0, 1.0, 0.5], "intercept": 1.0},
    )
    captioner = ImageCaptioner.from_dirs(model_dir, feature_dir)
    assert (captioner.reranker.weight, captioner.reranker.floor) == (0.3, 0.1)
    probabilities = captioner.concepts.probabilities(features[:3])
    for description, p in zip(captioner.describe_features(features[:3]), probabilities):
        result = description.caption  # names no object: the weakest object's log-probability is 0
        covered = sum(p[i] for i, word in enumerate(["w1", "w2"]) if word in result.words)
        assert result.confidence == pytest.approx(1 / (1 + np.exp(-(2.0 * result.score + 0.5 * covered + 1.0))), abs=1e-6)


def test_reranking_settings_without_a_concept_head_are_refused(model_and_feature_dirs):
    model_dir, feature_dir = model_and_feature_dirs
    update_meta(model_dir, reranking={"weight": 0.3, "floor": 0.1})
    with pytest.raises(ModelFileError, match="no concept head"):
        ImageCaptioner.from_dirs(model_dir, feature_dir)


def test_save_tuning_needs_tune(model_and_feature_dirs, tmp_path):
    model_dir, feature_dir = model_and_feature_dirs
    with pytest.raises(CommandError, match="needs --tune"):
        call_command("evaluate_captioner", "--model-dir", str(model_dir), "--feature-dir", str(feature_dir), "--save-tuning")


# ---------------------------------------------------------------------------- the confidence in the product
@pytest.mark.django_db
def test_image_page_and_api_show_the_confidence_in_words_not_the_raw_score(client, photo, no_queue):
    sure = captioned(photo, 1, "a dog runs on the beach", confidence=0.81)
    unsure = captioned(photo, 2, "a man in a blue shirt", confidence=0.12)
    html = client.get(reverse("gallery:image", args=[sure.pk])).content.decode()
    assert ">confident</span>" in html and "score -0.500" not in html
    assert ">unsure</span>" in client.get(reverse("gallery:image", args=[unsure.pk])).content.decode()
    body = client.get(f"/api/images/{unsure.pk}").json()["caption"]
    assert (body["confidence"], body["confidence_label"], body["log_prob"]) == (0.12, "unsure", -0.5)


@pytest.mark.django_db
def test_a_caption_without_a_confidence_shows_no_word(client, photo, no_queue):
    image = captioned(photo, 1, "a dog runs on the beach")  # a model from before the calibration
    html = client.get(reverse("gallery:image", args=[image.pk])).content.decode()
    assert "confident" not in html and "unsure" not in html
    assert client.get(f"/api/images/{image.pk}").json()["caption"]["confidence"] is None


@pytest.mark.django_db
def test_admin_needs_review_lists_unsure_model_captions_least_confident_first(client, photo, staff, user, no_queue):
    captioned(photo, 1, "a man in a blue shirt", confidence=0.4)
    captioned(photo, 2, "a group of people", confidence=0.1)
    captioned(photo, 3, "a dog on the grass", confidence=0.9)  # confident: no review
    fixed = captioned(photo, 4, "a man with a cat", confidence=0.05)
    set_human_caption(fixed, "a cat on a sofa", user=user)  # a person's caption is active: nothing to review
    client.force_login(staff)
    html = client.get("/admin/gallery/image/", {"review": "needed"}).content.decode()
    assert "Needs review" in html
    listed = [name for name in ("photo-1.jpg", "photo-2.jpg", "photo-3.jpg", "photo-4.jpg") if name in html]
    assert listed == ["photo-1.jpg", "photo-2.jpg"]
    assert html.index("photo-2.jpg") < html.index("photo-1.jpg")  # least confident first
    assert "unsure (0.10)" in html
    everything = client.get("/admin/gallery/image/").content.decode()
    assert all(f"photo-{i}.jpg" in everything for i in range(1, 5))


@pytest.mark.django_db
def test_search_by_image_answers_with_the_confidence(client, photo, fake_captioner, no_queue):
    query = fake_captioner.register(photo(60), "two boats on the water")
    body = client.post("/api/search/by-image", {"file": SimpleUploadedFile("q.jpg", query)}).json()
    assert (body["log_prob"], body["confidence"], body["confidence_label"]) == (-0.42, 0.8, "confident")
