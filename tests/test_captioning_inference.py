"""Inference: greedy/beam search, the no-loop guard, batching, attention maps, the `caption` command.

Fast tests use a tiny randomly initialised captioner and a stand-in feature extractor; the last test
runs the bundled model on a few Flickr8k dev images (skipped until that model is committed).
"""

import json
from pathlib import Path

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from captioning.evaluation import EvaluationError, EvaluationRun, run_evaluation
from captioning.inference import (
    CaptionResult,
    ImageCaptioner,
    decode_features,
    forbidden_tokens,
    has_repeated_trigram,
)
from captioning.model import ModelConfig, build_captioner
from captioning.storage import load_model_dir, read_meta
from captioning.vocabulary import END_ID, PAD_ID, START_ID, UNK_ID, Tokenizer, normalize_words

from .conftest import MAX_LENGTH, WORDS, tiny_feature_model

REPO = Path(__file__).resolve().parent.parent
FLICKR = REPO.parent / "shared" / "datasets" / "flickr8k"
BUNDLED_MODEL = REPO / "captioning" / "models" / "current"


# ---------------------------------------------------------------------------- the guard
def test_guard_forbids_completing_a_seen_trigram_and_repeating_the_last_word():
    vocab = 10
    # <start> 4 5 6 4 5 -> "6" would repeat the trigram (4, 5, 6); "5" would repeat the last word.
    seq = np.zeros((1, MAX_LENGTH), np.int32)
    seq[0, :6] = [START_ID, 4, 5, 6, 4, 5]
    banned = forbidden_tokens(seq, 5, vocab, MAX_LENGTH).numpy()[0]
    assert banned[6] and banned[5]
    assert not banned[4] and not banned[7] and not banned[END_ID]
    assert banned[PAD_ID] and banned[START_ID] and banned[UNK_ID]


def test_guard_limits_bigrams_and_rare_words_to_two_occurrences():
    vocab = 40
    seq = np.zeros((2, MAX_LENGTH), np.int32)
    # Row 0: bigram (4, 5) twice and word 20 twice, no trigram twice; the last word is 4.
    seq[0, :10] = [START_ID, 4, 5, 20, 6, 4, 5, 7, 20, 4]
    # Row 1: word 4 (the most frequent, free) three times already.
    seq[1, :10] = [START_ID, 4, 6, 4, 7, 4, 9, 10, 11, 12]
    banned = forbidden_tokens(seq, 9, vocab, MAX_LENGTH, free_words=5).numpy()
    assert banned[0, 5] and banned[0, 20]  # (4, 5) or 20 a third time
    assert not banned[0, 21] and not banned[0, 6] and not banned[0, 7]
    assert not banned[1, 4]  # a free word may come a fourth time


def test_guard_forbids_an_empty_caption_and_forces_end_at_the_last_position():
    vocab = 10
    seq = np.zeros((2, MAX_LENGTH), np.int32)
    seq[:, 0] = START_ID
    first = forbidden_tokens(seq, 0, vocab, MAX_LENGTH).numpy()
    assert first[:, END_ID].all() and not first[:, 4:].any()
    seq[:, 1 : MAX_LENGTH - 1] = np.arange(4, 4 + MAX_LENGTH - 2) % vocab
    last = forbidden_tokens(seq, MAX_LENGTH - 2, vocab, MAX_LENGTH).numpy()
    assert (~last).sum(axis=1).tolist() == [1, 1] and not last[:, END_ID].any()


def test_rigged_model_that_loves_two_words_cannot_loop(tokenizer):
    """Logits rigged towards "w0 w1 w0 w1 ...": the guard breaks the loop and <end> follows."""
    config = ModelConfig(vocab_size=tokenizer.size, embedding_dim=8, units=8, attention_units=8, max_length=MAX_LENGTH)
    model = build_captioner(config, seed=1)
    kernel, bias = model.decoder.fc2.get_weights()
    bias = np.zeros_like(bias)
    bias[tokenizer.word_index["w0"]], bias[tokenizer.word_index["w1"]], bias[END_ID] = 30.0, 29.0, 28.0
    model.decoder.fc2.set_weights([kernel * 0.0, bias])
    feats = np.random.default_rng(2).standard_normal((4, 64, 2048)).astype(np.float32)
    greedy = decode_features(model, tokenizer, feats, beam_width=1)
    beam = decode_features(model, tokenizer, feats, beam_width=3)
    for g, b in zip(greedy, beam):
        # Greedy: after "w0 w1 w0 w1", w1 would repeat the last word, w0 would repeat (w0, w1, w0).
        assert g.words == ["w0", "w1", "w0", "w1"] and not g.reached_max_length
        # Beam prefers ending one word earlier (higher mean log-probability).
        assert b.words == ["w0", "w1", "w0"] and b.score > g.score


def test_random_models_never_produce_a_repeated_trigram_or_special_token(tokenizer, tiny_model):
    feats = np.random.default_rng(3).standard_normal((32, 64, 2048)).astype(np.float32)
    for width in (1, 2, 4):
        for result in decode_features(tiny_model, tokenizer, feats, beam_width=width):
            assert 1 <= len(result.words) <= MAX_LENGTH - 2
            assert not has_repeated_trigram(result.words)
            assert not {"<pad>", "<start>", "<end>", "<unk>"} & set(result.words)
            assert all(a != b for a, b in zip(result.words, result.words[1:]))


def test_has_repeated_trigram():
    assert has_repeated_trigram("a dog runs a dog runs".split())
    assert not has_repeated_trigram("a dog runs on a dog".split())


# ---------------------------------------------------------------------------- search
@pytest.mark.parametrize("width", [2, 3, 5])
def test_beam_score_is_never_below_greedy(tiny_model, tokenizer, features, width):
    greedy = decode_features(tiny_model, tokenizer, features, beam_width=1)
    beam = decode_features(tiny_model, tokenizer, features, beam_width=width)
    assert all(b.score >= g.score - 1e-5 for b, g in zip(beam, greedy))


def test_score_is_the_length_normalised_log_probability(tiny_model, tokenizer, features):
    """Re-score the returned caption with teacher forcing: mean log p over words + <end>."""
    import tensorflow as tf

    result = decode_features(tiny_model, tokenizer, features[:1], beam_width=3)[0]
    ids = [START_ID] + [tokenizer.word_index[w] for w in result.words] + [END_ID]
    logits, alphas = tiny_model((features[:1], np.array([ids[:-1]], np.int32)))
    logp = tf.nn.log_softmax(logits[0]).numpy()
    expected = float(np.mean([logp[t, ids[t + 1]] for t in range(len(ids) - 1)]))
    assert result.score == pytest.approx(expected, abs=1e-4)
    np.testing.assert_allclose(result.attention, alphas[0, : len(result.words)].numpy(), atol=1e-5)


def test_attention_has_one_row_of_64_weights_per_word(tiny_model, tokenizer, features):
    for result in decode_features(tiny_model, tokenizer, features[:4], beam_width=3):
        assert result.attention.shape == (len(result.words), 64)
        np.testing.assert_allclose(result.attention.sum(axis=1), 1.0, atol=1e-4)
        stored = json.loads(json.dumps(result.attention_json()))
        assert [w for w, _ in stored] == result.words
        assert all(len(row) == 64 and row == [round(x, 4) for x in row] for _, row in stored)


def test_batched_results_equal_single_image_results(tiny_model, tokenizer, features):
    batched = decode_features(tiny_model, tokenizer, features, beam_width=3)
    for i, result in enumerate(batched):
        single = decode_features(tiny_model, tokenizer, features[i : i + 1], beam_width=3)[0]
        assert single.words == result.words
        assert single.score == pytest.approx(result.score, abs=1e-5)
        np.testing.assert_allclose(single.attention, result.attention, atol=1e-5)


def test_image_captioner_batches_and_takes_beam_width_per_call(image_captioner, photo):
    sources = [photo(seed) for seed in range(7)]  # batch_size 3: batches of 3, 3, 1
    results = image_captioner.caption_sources(sources)
    assert len(results) == 7 and all(isinstance(r, CaptionResult) for r in results)
    one_by_one = [image_captioner.caption_sources([s])[0] for s in sources[:3] + sources[-1:]]
    assert [r.text for r in one_by_one] == [r.text for r in results[:3] + results[-1:]]
    greedy = image_captioner.caption_sources(sources, beam_width=1)
    assert all(b.score >= g.score - 1e-5 for b, g in zip(results, greedy))


def test_a_broken_file_in_a_later_batch_fails_the_call_clearly(image_captioner, photo):
    from captioning.images import InvalidImageError

    sources = [photo(seed) for seed in range(4)] + [b"not an image"]  # the bad one is decoded ahead
    with pytest.raises(InvalidImageError):
        image_captioner.caption_sources(sources)


def test_image_captioner_refuses_a_vocabulary_of_another_size(tiny_model):
    with pytest.raises(ValueError, match="vocabulary"):
        ImageCaptioner(tiny_model, Tokenizer(WORDS[:5]), tiny_feature_model())


# ---------------------------------------------------------------------------- loading
def test_from_dirs_loads_the_model_and_its_version(model_and_feature_dirs, image_captioner, photo):
    captioner = ImageCaptioner.from_dirs(*model_and_feature_dirs, beam_width=2, batch_size=4)
    assert captioner.version == "tiny-1" and captioner.beam_width == 2
    sources = [photo(1), photo(2)]
    assert [r.text for r in captioner.caption_sources(sources)] == [
        r.text for r in image_captioner.caption_sources(sources, beam_width=2)
    ]


def test_from_dirs_refuses_feature_weights_of_another_source(model_and_feature_dirs):
    from captioning import features as feature_store
    from captioning.inference import ModelMismatchError

    model_dir, feature_dir = model_and_feature_dirs
    record_path = feature_dir / feature_store.FEATURE_META_NAME
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({**record, "sha256": "cd" * 32}))
    with pytest.raises(ModelMismatchError, match="trained on InceptionV3 features with weights_sha256"):
        ImageCaptioner.from_dirs(model_dir, feature_dir)
    record_path.write_text(json.dumps({**record, "source_sha256": "cd" * 32}))
    with pytest.raises(ModelMismatchError, match="with source_sha256 abab"):
        ImageCaptioner.from_dirs(model_dir, feature_dir)


def test_from_dirs_without_feature_weights_says_how_to_make_them(model_and_feature_dirs, tmp_path):
    with pytest.raises(ValueError, match="prepare_models"):
        ImageCaptioner.from_dirs(model_and_feature_dirs[0], tmp_path / "empty")


def tiny_object_classifier(favourite: int = 504):
    """Stands in for EfficientNet-Lite0: (224, 224, 3) -> 1,000 logits, sure of one class (504, coffee mug)."""
    import keras

    inputs = keras.Input((224, 224, 3))
    dense = keras.layers.Dense(1000)
    model = keras.Model(inputs, dense(keras.layers.GlobalAveragePooling2D()(inputs)))
    bias = np.zeros(1000, np.float32)
    bias[favourite] = 12.0
    dense.set_weights([np.zeros((3, 1000), np.float32), bias])
    return model


def test_object_labels_come_from_the_same_batch_of_decoded_photos(tiny_model, tokenizer, image_captioner, photo):
    labelled = ImageCaptioner(tiny_model, tokenizer, tiny_feature_model(), beam_width=3, batch_size=3,
                              object_classifier=tiny_object_classifier())
    sources = [photo(i) for i in range(4)]
    described = labelled.describe_sources(sources)
    plain = image_captioner.describe_sources(sources)
    assert [d.caption.text for d in described] == [d.caption.text for d in plain]
    assert all(d.objects == [] for d in plain)  # no classifier, no labels
    for d in described:
        labels = dict(d.objects)
        assert set(list(labels)[:3]) == {"coffee mug", "cup", "mug"} and labels["coffee mug"] > 0.99


def test_from_dirs_with_object_labels_needs_the_converted_classifier(model_and_feature_dirs):
    from captioning.files import ModelFileError

    with pytest.raises(ModelFileError, match="EfficientNet-Lite0.*prepare_models"):
        ImageCaptioner.from_dirs(*model_and_feature_dirs, object_labels=True)
    assert ImageCaptioner.from_dirs(*model_and_feature_dirs).object_classifier is None


# ---------------------------------------------------------------------------- the command
@pytest.fixture
def installed_captioner(monkeypatch, image_captioner):
    from captioning import services

    monkeypatch.setattr(services, "_captioner", image_captioner)
    return image_captioner


def test_caption_command_prints_one_json_line_per_file(installed_captioner, tmp_path, photo, capsys):
    files = []
    for seed in range(2):
        path = tmp_path / f"p{seed}.jpg"
        path.write_bytes(photo(seed))
        files.append(str(path))
    call_command("caption", *files, "--json", "--beam", "2")
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["file"] for line in lines] == files
    expected = installed_captioner.caption_sources(files, beam_width=2)
    assert [line["caption"] for line in lines] == [r.text for r in expected]
    assert all(isinstance(line["score"], float) for line in lines)


def test_caption_command_reports_bad_files_clearly_and_fails(installed_captioner, tmp_path, photo, capsys):
    good, text = tmp_path / "good.jpg", tmp_path / "notes.jpg"
    good.write_bytes(photo(0))
    text.write_text("this is not an image")
    missing = tmp_path / "missing.jpg"
    with pytest.raises(CommandError, match="3 of 4 files could not be captioned") as raised:
        call_command("caption", str(text), str(good), str(missing), str(tmp_path), "--json")
    assert raised.value.returncode == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["file"] == str(text) and lines[0]["error"].startswith("not an image")
    assert "caption" in lines[1]
    assert lines[2] == {"file": str(missing), "error": "file not found"}
    assert lines[3] == {"file": str(tmp_path), "error": "is a directory, not an image file"}


def test_caption_command_plain_output(installed_captioner, tmp_path, photo, capsys):
    path = tmp_path / "p.png"
    path.write_bytes(photo(5, fmt="PNG"))
    call_command("caption", str(path))
    out = capsys.readouterr().out.strip()
    assert str(path) in out and installed_captioner.caption_sources([path])[0].text in out


# ---------------------------------------------------------------------------- the bundled model
STOPWORDS = {"a", "an", "the", "is", "are", "in", "on", "of", "with", "and", "at", "to", "its", "his", "her"}


@pytest.mark.skipif(not BUNDLED_MODEL.exists(), reason="the bundled model is not committed yet")
def test_bundled_model_captions_dev_images_sensibly(settings):
    from captioning import features as feature_store
    from captioning.datasets import read_flickr8k

    # The converted InceptionV3 weights: the configured ones, else those `make run` converted into
    # var/models, else convert now (about a minute).
    candidates = [Path(settings.IMAGESEARCH_FEATURE_DIR), REPO / "var" / "models"]
    feature_dir = next((d for d in candidates if feature_store.read_feature_meta(d)), candidates[0])
    feature_store.ensure_feature_weights(feature_dir, log=lambda message: None)
    captioner = ImageCaptioner.from_dirs(BUNDLED_MODEL, feature_dir)
    names = (FLICKR / "dev.txt").read_text().split()[:8]
    results = captioner.caption_sources([FLICKR / "images" / n for n in names])
    captions = read_flickr8k(FLICKR / "captions.txt")
    refs = {n: [set(normalize_words(c)) for c in captions[n]] for n in names}
    shared = 0
    for name, result in zip(names, results):
        assert result.words and not result.reached_max_length, (name, result.text)
        assert not has_repeated_trigram(result.words)
        content = set(result.words) - STOPWORDS
        shared += any(content & ref for ref in refs[name])
    assert shared >= 6, [r.text for r in results]


# ---------------------------------------------------------------------------- evaluation
def test_score_captions_rewards_a_human_caption_over_a_wrong_one():
    from captioning.evaluation import score_captions

    refs = {
        "a.jpg": ["A dog runs through the grass .", "A brown dog is running on a lawn ."],
        "b.jpg": ["Two children play on a beach .", "Kids playing in the sand by the sea ."],
    }
    good = score_captions(refs, {"a.jpg": "a dog runs through the grass", "b.jpg": "two children play on a beach"}, meteor=False)
    bad = score_captions(refs, {"a.jpg": "a red car", "b.jpg": "a man rides a bike"}, meteor=False)
    assert set(good["scores"]) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr", "CIDEr-D", "CHAIR-i", "CHAIR-s"}
    assert good["scores"]["BLEU-4"] > 90 and bad["scores"]["BLEU-4"] < 1
    assert good["scores"]["CIDEr"] > bad["scores"]["CIDEr"]


def test_length_ratio_explains_bleus_brevity_penalty():
    from captioning.evaluation import score_captions

    refs = {"a.jpg": ["a dog runs on the grass", "a brown dog is running on the green grass"]}
    short = score_captions(refs, {"a.jpg": "a dog"}, meteor=False)
    assert short["length_ratio"] == pytest.approx(2 / 6, abs=1e-4)
    assert short["brevity_penalty"] == pytest.approx(np.exp(1 - 3), rel=1e-3)
    assert short["scores"]["BLEU-1"] == pytest.approx(100 * short["brevity_penalty"], abs=0.01)  # both words match
    whole = score_captions(refs, {"a.jpg": "a dog runs on the grass"}, meteor=False)
    assert whole["length_ratio"] == 1.0 and whole["brevity_penalty"] == 1.0


def test_degenerate_captions_are_counted():
    from captioning.evaluation import is_degenerate

    def result(words, at_max=False):
        return CaptionResult(" ".join(words), -1.0, words, np.zeros((len(words), 64)), at_max)

    assert not is_degenerate(result("a dog runs".split()))
    assert is_degenerate(result("a dog runs a dog runs".split()))
    assert is_degenerate(result("a dog runs".split(), at_max=True))


@pytest.fixture
def tiny_dataset(tmp_path, photo):
    """A Flickr8k-shaped data directory with 3 dev photos."""
    data = tmp_path / "flickr"
    (data / "images").mkdir(parents=True)
    names = [f"{i}.jpg" for i in range(3)]
    lines = []
    for i, name in enumerate(names):
        (data / "images" / name).write_bytes(photo(i, size=(120, 90)))
        lines += [f"{name}#{k}\tw{i} w{k} w{i + k} ." for k in range(5)]
    (data / "captions.txt").write_text("\n".join(lines) + "\n")
    (data / "dev.txt").write_text("\n".join(names) + "\n")
    return data


def test_evaluate_captioner_command_writes_report_and_attention_plot(model_and_feature_dirs, tiny_dataset, tmp_path, capsys):
    model_dir, feature_dir = model_and_feature_dirs
    output = tmp_path / "eval" / "report.json"
    call_command(
        "evaluate_captioner",
        "--data-dir", str(tiny_dataset), "--model-dir", str(model_dir), "--feature-dir", str(feature_dir),
        "--cache-dir", str(tmp_path / "no-cache"), "--output", str(output), "--plots", "1", "--no-meteor", "--beam", "2",
    )
    out = capsys.readouterr().out
    assert "BLEU-4" in out and "CIDEr" in out and "degenerate" in out
    report = json.loads(output.read_text())
    assert report["images"] == 3 and report["beam_width"] == 2 and report["model_version"] == "tiny-1"
    assert set(report["scores"]) >= {"BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr"}
    assert 0.0 <= report["degenerate_share"] <= 1.0
    [plot] = report["attention_plots"]
    assert Path(plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_captioner_saves_tuned_decoding_that_loading_then_uses(model_and_feature_dirs, tiny_dataset, tmp_path, settings):
    model_dir, feature_dir = model_and_feature_dirs
    settings.IMAGESEARCH_BEAM_WIDTH = settings.IMAGESEARCH_LENGTH_ALPHA = None
    assert ImageCaptioner.from_dirs(model_dir, feature_dir).beam_width == 3  # nothing tuned yet
    call_command(
        "evaluate_captioner", "--data-dir", str(tiny_dataset), "--model-dir", str(model_dir), "--feature-dir", str(feature_dir),
        "--output", str(tmp_path / "r.json"), "--plots", "0", "--no-meteor", "--beam", "2", "--length-alpha", "0.7", "--save-decoding",
    )
    tuned = ImageCaptioner.from_dirs(model_dir, feature_dir)
    assert (tuned.beam_width, tuned.length_alpha) == (2, 0.7)
    assert set(read_meta(model_dir)["decoding"]["scores"]) >= {"BLEU-4", "CIDEr"}
    chosen = ImageCaptioner.from_dirs(model_dir, feature_dir, beam_width=4, length_alpha=1.0)  # settings win
    assert (chosen.beam_width, chosen.length_alpha) == (4, 1.0)
    load_model_dir(model_dir)  # meta.json still matches the weights


def test_tuning_a_model_without_a_concept_head_says_why(model_and_feature_dirs, tiny_dataset, tmp_path):
    model_dir, feature_dir = model_and_feature_dirs
    run = EvaluationRun(
        data_dir=tiny_dataset, split="dev", model_dir=model_dir, feature_dir=feature_dir, cache_dir=tmp_path / "cache",
        report_dir=tmp_path / "eval", beam_width=2, tune=True,
    )
    logged = []
    with pytest.raises(EvaluationError, match="no concept head"):
        run_evaluation(run, log=logged.append)
    assert logged == [f"3 dev images, 0 with cached features in {tmp_path / 'cache'}"]


def test_evaluation_reads_cached_features_instead_of_images(image_captioner, tiny_dataset, tmp_path):
    from captioning import features as feature_store
    from captioning.evaluation import caption_dataset_images

    cache = tmp_path / "cache"
    cache.mkdir()
    feats = np.random.default_rng(5).standard_normal((1, 64, 2048)).astype(np.float16)
    np.save(feature_store.cache_path(cache, "0.jpg"), feats[0])
    (tiny_dataset / "images" / "0.jpg").unlink()  # only the cache can caption it now
    results = caption_dataset_images(image_captioner, ["0.jpg", "1.jpg"], tiny_dataset / "images", cache_dir=cache)
    expected = decode_features(image_captioner.captioner, image_captioner.tokenizer, feats.astype(np.float32))[0]
    assert results["0.jpg"].text == expected.text and results["1.jpg"].words


def test_train_captioner_fine_tunes_a_saved_model_with_mirrored_images(model_and_feature_dirs, tiny_dataset, tmp_path, settings, monkeypatch):
    from captioning import features as feature_store

    model_dir, feature_dir = model_and_feature_dirs
    settings.IMAGESEARCH_FEATURE_DIR = str(feature_dir)
    monkeypatch.setattr(feature_store, "ensure_feature_weights", lambda directory, log=print: {"sha256": "12" * 32})
    (tiny_dataset / "train.txt").write_text("0.jpg\n1.jpg\n")
    (tiny_dataset / "dev.txt").write_text("2.jpg\n")
    cache, output = tmp_path / "cache" / "flickr", tmp_path / "tuned"
    call_command(
        "train_captioner", "--captions", str(tiny_dataset / "captions.txt"), "--images", str(tiny_dataset / "images"),
        "--train-split", str(tiny_dataset / "train.txt"), "--dev-split", str(tiny_dataset / "dev.txt"),
        "--init-from", str(model_dir), "--flip-augment", "--epochs", "1", "--batch-size", "2",
        "--model-version", "tiny-2", "--output", str(output), "--work-dir", str(tmp_path / "work"),
        "--feature-cache", str(cache), "--no-progress",
    )
    assert sorted(p.name for p in (tmp_path / "cache" / "flickr-flipped").iterdir()) == ["0.jpg.npy", "1.jpg.npy"]
    assert len(list(cache.iterdir())) == 3
    start, tuned = load_model_dir(model_dir), load_model_dir(output)
    assert tuned.tokenizer == start.tokenizer  # the saved model's vocabulary, not one built from this data
    assert tuned.config.units == start.config.units and tuned.version == "tiny-2"
    training = tuned.meta["training"]
    assert training["flip_augment"] is True and training["initialised_from"]["version"] == "tiny-1"


def test_train_captioner_refuses_a_broken_model_to_start_from(tiny_dataset, tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "meta.json").write_text("{not json")
    with pytest.raises(CommandError, match="meta.json"):
        call_command(
            "train_captioner", "--captions", str(tiny_dataset / "captions.txt"), "--images", str(tiny_dataset / "images"),
            "--init-from", str(tmp_path / "broken"), "--output", str(tmp_path / "out"), "--work-dir", str(tmp_path / "work"),
        )


def test_from_dirs_refuses_object_labels_other_than_the_model_was_tuned_with(model_and_feature_dirs, monkeypatch):
    from captioning import features as feature_store
    from captioning.inference import ModelMismatchError
    from captioning.storage import update_meta

    model_dir, feature_dir = model_and_feature_dirs
    (feature_dir / feature_store.CLASSIFIER_META_NAME).write_text(json.dumps({"source_sha256": "ef" * 32}))
    monkeypatch.setattr(feature_store, "load_classifier", lambda directory: tiny_object_classifier())
    update_meta(model_dir, objects={"source_sha256": "ef" * 32})
    assert ImageCaptioner.from_dirs(model_dir, feature_dir, object_labels=True).object_classifier is not None
    update_meta(model_dir, objects={"source_sha256": "01" * 32})
    with pytest.raises(ModelMismatchError, match="object labels of source_sha256 0101"):
        ImageCaptioner.from_dirs(model_dir, feature_dir, object_labels=True)
    update_meta(model_dir, objects={"source_sha256": "ef" * 32, "words_sha256": "02" * 32})
    with pytest.raises(ModelMismatchError, match="words_sha256"):
        ImageCaptioner.from_dirs(model_dir, feature_dir, object_labels=True)
