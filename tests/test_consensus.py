"""Consensus reranking (captioning.consensus): the candidate that agrees with the captions of
visually similar training photos wins; the neighbours file is checked like the other model files;
build_neighbours makes it from cached features and captions."""

import io
import json

import numpy as np
import pytest
from django.core.management import call_command

from captioning import concepts, consensus
from captioning import features as feature_store
from captioning.cider import CiderD
from captioning.evaluation import rerank_tries
from captioning.evidence import EvidenceReranker, VisualEvidence
from captioning.files import ModelFileError, sha256_file
from captioning.inference import ImageCaptioner
from captioning.storage import load_model_dir, read_meta, update_meta
from captioning.training import install_neighbour_captions

from .test_caption_quality import caption, head_over
from .test_descriptions import assert_damaged_file_refused

WORDS = ["dog", "grass", "man", "bike"]
DOG, BIKE = np.array([0.9, 0.8, 0.02, 0.01]), np.array([0.02, 0.05, 0.9, 0.8])
TRAIN_CAPTIONS = [
    ["a dog runs on the grass", "a brown dog running through grass"],
    ["a dog plays on the grass", "the dog is running in a field"],
    ["a dog runs across the green grass", "a puppy on a lawn"],
    ["a man rides a bike down the street", "a cyclist on a road"],
    ["a man on a bike", "a person riding a bicycle"],
    ["a man rides his bike", "a biker in the city"],
]


def words_of(photos):
    return [[c.split() for c in captions] for captions in photos]


def neighbour_captions(dimensions=None):
    rng = np.random.default_rng(0)
    probabilities = np.stack([DOG] * 3 + [BIKE] * 3) * rng.uniform(0.9, 1.0, size=(6, 4))
    return consensus.build_neighbours(probabilities, words_of(TRAIN_CAPTIONS), dimensions=dimensions)


def test_consensus_prefers_the_candidate_agreeing_with_the_neighbours_captions():
    neighbours = neighbour_captions()
    assert set(neighbours.nearest(DOG, 3)) == {0, 1, 2} and set(neighbours.nearest(BIKE, 2)) <= {3, 4, 5}
    search_order = [caption("a man rides a bike", -0.40), caption("a dog runs on the grass", -0.50)]
    agreement = neighbours.consensus([c.words for c in search_order], DOG, 3)
    assert agreement[1] > agreement[0] + 0.5
    evidence_only = EvidenceReranker(VisualEvidence(head_over(WORDS)), weight=0.0, floor=0.1)
    assert consensus.ConsensusReranker(evidence_only, neighbours, 0.0, 3).rank(search_order, DOG)[0].text == "a man rides a bike"
    reranked = consensus.ConsensusReranker.from_meta({"weight": 1.0, "neighbours": 3}, evidence_only, neighbours).rank(search_order, DOG)
    assert [c.text for c in reranked] == ["a dog runs on the grass", "a man rides a bike"]
    # The same photo's neighbours agree with the bike caption: consensus follows the photo, not the wording.
    assert consensus.ConsensusReranker(evidence_only, neighbours, 1.0, 3).rank(search_order, BIKE)[0].text == "a man rides a bike"


def test_consensus_is_cider_d_against_the_neighbours_with_the_training_document_frequencies():
    neighbours = neighbour_captions()
    reference = CiderD(words_of(TRAIN_CAPTIONS))
    words = "a dog runs on the grass".split()
    near = neighbours.nearest(DOG, 2)
    assert neighbours.consensus([words], DOG, 2)[0] == pytest.approx(np.mean([reference.score(int(i), words) for i in near]))
    bike = "a man on a bike".split()
    many = reference.scores([0, 3, 5], [words, bike])  # one vectorised pass: captions x images
    assert many.shape == (2, 3)
    assert many[0, 0] == pytest.approx(reference.score(0, words)) and many[1, 1] == pytest.approx(reference.score(3, bike))


def test_a_reduced_key_space_finds_the_same_neighbours_and_survives_saving(tmp_path):
    full, reduced = neighbour_captions(), neighbour_captions(dimensions=2)
    assert reduced.keys.shape == (6, 2) and reduced.keys.dtype == np.float16 and full.keys.shape == (6, 4)
    loaded = consensus.load_neighbours(reduced.save(tmp_path / consensus.NEIGHBOURS_NAME))
    assert loaded.captions(4) == [c.split() for c in TRAIN_CAPTIONS[4]] and loaded.concept_size == 4
    for query in (DOG, BIKE):
        assert set(loaded.nearest(query, 3)) == set(full.nearest(query, 3))


def install_neighbours(model_dir, neighbours, head=None):
    """A concept head over WORDS and the neighbours file, both recorded in meta.json."""
    head_path = (head or head_over(WORDS)).save(model_dir / concepts.CONCEPTS_NAME)
    update_meta(model_dir, concepts={"file": concepts.CONCEPTS_NAME, "sha256": sha256_file(head_path)})
    path = neighbours.save(model_dir / consensus.NEIGHBOURS_NAME)
    update_meta(model_dir, neighbours={"file": consensus.NEIGHBOURS_NAME, "sha256": sha256_file(path), "concepts_sha256": sha256_file(head_path)})
    return path


def test_a_model_with_consensus_settings_reranks_with_its_neighbours(model_and_feature_dirs, features):
    model_dir, feature_dir = model_and_feature_dirs
    install_neighbours(model_dir, neighbour_captions())
    update_meta(model_dir, reranking={"weight": 0.0, "floor": 0.1, "consensus": {"weight": 10.0, "neighbours": 2}})
    captioner = ImageCaptioner.from_dirs(model_dir, feature_dir)
    assert isinstance(captioner.reranker, consensus.ConsensusReranker)
    assert (captioner.reranker.weight, captioner.reranker.k, captioner.reranker.neighbours.photos) == (10.0, 2, 6)
    assert len(captioner.describe_features(features[:2])) == 2
    update_meta(model_dir, reranking={"consensus": None})  # tuned without consensus: the evidence reranker alone
    assert isinstance(ImageCaptioner.from_dirs(model_dir, feature_dir).reranker, EvidenceReranker)


def test_a_missing_or_corrupt_neighbours_file_is_refused_clearly(model_and_feature_dirs):
    model_dir, feature_dir = model_and_feature_dirs
    assert load_model_dir(model_dir).neighbours is None  # a model directory without the record loads as before
    path = install_neighbours(model_dir, neighbour_captions())
    assert load_model_dir(model_dir).neighbours.photos == 6
    assert_damaged_file_refused(model_dir, path, "neighbours", "neighbour captions")


def test_neighbours_of_another_concept_head_or_consensus_without_them_are_refused(model_and_feature_dirs):
    model_dir, feature_dir = model_and_feature_dirs
    install_neighbours(model_dir, neighbour_captions())
    other = head_over(WORDS, seed=5).save(model_dir / concepts.CONCEPTS_NAME)
    update_meta(model_dir, concepts={"file": concepts.CONCEPTS_NAME, "sha256": sha256_file(other)})
    with pytest.raises(ModelFileError, match="built with another concept head.*build_neighbours"):
        load_model_dir(model_dir)
    meta = read_meta(model_dir)
    del meta["neighbours"]
    (model_dir / "meta.json").write_text(json.dumps(meta))
    update_meta(model_dir, reranking={"weight": 0.0, "floor": 0.1, "consensus": {"weight": 10.0, "neighbours": 2}})
    with pytest.raises(ModelFileError, match="no neighbours.npz.*build_neighbours"):
        ImageCaptioner.from_dirs(model_dir, feature_dir)


def test_rerank_tries_cross_the_evidence_settings_with_the_consensus_settings():
    evidence = VisualEvidence(head_over(WORDS))
    found = {
        "a.jpg": ([caption("a man rides a bike", -0.4), caption("a dog runs on the grass", -0.5)], DOG),
        "b.jpg": ([caption("a dog runs on the grass", -0.4), caption("a man rides a bike", -0.5)], BIKE),
    }
    references = {"a.jpg": ["A dog runs on the grass .", "A dog on a lawn ."], "b.jpg": ["A man rides a bike .", "A cyclist ."]}
    rows = rerank_tries(found, references, evidence, weights=(0.0,), floors=(0.1,), coverages=(0.0,),
                        neighbours=neighbour_captions(), consensus_weights=(0.0, 1.0), consensus_neighbours=(2, 3))
    assert [(r["consensus"], r["neighbours"]) for r in rows] == [(0.0, 2), (1.0, 2), (1.0, 3)]
    assert rows[1]["CIDEr-D"] > rows[0]["CIDEr-D"]


def test_build_neighbours_makes_the_file_from_cached_features_and_captions(model_and_feature_dirs, tmp_path):
    model_dir, feature_dir = model_and_feature_dirs
    head = head_over(WORDS)
    head_path = head.save(model_dir / concepts.CONCEPTS_NAME)
    update_meta(model_dir, concepts={"file": concepts.CONCEPTS_NAME, "sha256": sha256_file(head_path)})
    data_dir, cache_dir = tmp_path / "flickr8k", tmp_path / "cache"
    (data_dir / "images").mkdir(parents=True)
    rng = np.random.default_rng(1)
    names = [f"{i}.jpg" for i in range(len(TRAIN_CAPTIONS))]
    for name in names:
        feature_store._save_npy_atomic(feature_store.cache_path(cache_dir, name), rng.random((64, 2048)).astype(np.float16))
    (data_dir / "train.txt").write_text("\n".join(names) + "\n")
    (data_dir / "captions.txt").write_text(
        "".join(f"{n}#{j}\t{c.capitalize()} .\n" for n, captions in zip(names, TRAIN_CAPTIONS) for j, c in enumerate(captions))
    )
    call_command("build_neighbours", "--data-dir", str(data_dir), "--model-dir", str(model_dir), "--cache-dir", str(cache_dir),
                 "--dimensions", "3", stdout=io.StringIO())
    record = read_meta(model_dir)["neighbours"]
    assert (record["photos"], record["captions"], record["dimensions"]) == (6, 12, 3)
    assert record["concepts_sha256"] == sha256_file(head_path) and "Hodosh" in record["data"]
    neighbours = load_model_dir(model_dir).neighbours
    assert neighbours.captions(0) == [c.split() for c in TRAIN_CAPTIONS[0]]
    pooled = concepts.pooled_from_cache(cache_dir, names)
    expected = consensus.build_neighbours(head.probabilities(pooled), words_of(TRAIN_CAPTIONS), dimensions=3)
    np.testing.assert_array_equal(neighbours.keys, expected.keys)
    # The function the command runs, with all dimensions kept.
    record = install_neighbour_captions(model_dir, {n: TRAIN_CAPTIONS[i] for i, n in enumerate(names)}, cache_dir, dimensions=None, log=lambda m: None)
    assert record["dimensions"] == 4
