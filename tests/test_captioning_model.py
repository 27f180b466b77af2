"""Fast unit tests of the captioner's model, vocabulary, data readers, training step and storage.

Tiny randomly initialised models on random features; no database, no real InceptionV3.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from captioning import datasets, features  # noqa: E402
from captioning.model import ModelConfig, build_captioner  # noqa: E402
from captioning.storage import ModelFileError, load_model_dir, read_meta, save_model_dir  # noqa: E402
from captioning.training import (  # noqa: E402
    CaptionSet,
    Trainer,
    TrainConfig,
    attention_regulariser,
    make_batches,
    masked_cross_entropy,
    teacher_forced,
)
from captioning.vocabulary import END_ID, PAD_ID, START_ID, UNK_ID, Tokenizer, VocabularyError, normalize_words  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
L, D = 64, 32  # feature locations, (tiny) feature depth

CAPTIONS = [
    "A dog runs on the grass.",
    "Two dogs play in the snow!",
    "A man's bike is red",
    "a child plays with a dog on the grass",
    "The dog jumps over a log .",
    "A man rides a red bike on the road",
]


def tiny_tokenizer():
    return Tokenizer.build(CAPTIONS, min_count=1)


def tiny_config(vocab_size, **kw):
    base = dict(vocab_size=vocab_size, embedding_dim=8, units=16, attention_units=12, feature_locations=L,
                feature_depth=D, dropout=0.3, max_length=12)
    base.update(kw)
    return ModelConfig(**base)


def random_features(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, L, D)).astype(np.float32)


FX = {"id": "test-extractor", "source_sha256": "0" * 64}


# ------------------------------------------------------------------------------ vocabulary
def test_normalize_lowercases_and_strips_punctuation():
    assert normalize_words("A Dog's ball, in the  snow!") == ["a", "dogs", "ball", "in", "the", "snow"]
    assert normalize_words("...") == []


def test_vocabulary_specials_ids_and_limits():
    tok = tiny_tokenizer()
    assert tok.index_word[:4] == ["<pad>", "<start>", "<end>", "<unk>"]
    assert (PAD_ID, START_ID, END_ID, UNK_ID) == (0, 1, 2, 3)
    assert tok.index_word[4] == "a"  # most frequent first
    assert Tokenizer.build(CAPTIONS, min_count=3).words == ["a", "the", "dog", "on"]
    assert Tokenizer.build(CAPTIONS, min_count=None, max_words=2).words == ["a", "the"]


def test_encode_decode():
    tok = tiny_tokenizer()
    ids = tok.encode("A dog on the zebra!")
    assert ids[0] == START_ID and ids[-1] == END_ID
    assert UNK_ID in ids
    assert tok.decode(ids) == "a dog on the <unk>"
    assert tok.decode(ids + [tok.word_index["dog"]]) == "a dog on the <unk>"  # stops at <end>
    capped = tok.encode("a dog on the grass with a man", max_length=5)
    assert len(capped) == 5 and capped[-1] == END_ID


def test_vocabulary_json_round_trip(tmp_path):
    tok = Tokenizer.build(CAPTIONS, min_count=2)
    path = tok.save(tmp_path / "v.json")
    data = json.loads(path.read_text())
    assert data["words"] == tok.words and data["size"] == tok.size
    again = Tokenizer.load(path)
    assert again == tok and again.min_count == 2
    assert again.encode("a red dog") == tok.encode("a red dog")


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"format": "x"}', "not an imagesearch vocabulary"),
    ],
)
def test_vocabulary_load_errors(tmp_path, content, message):
    path = tmp_path / "v.json"
    path.write_text(content)
    with pytest.raises(VocabularyError, match=message):
        Tokenizer.load(path)
    with pytest.raises(VocabularyError, match="not found"):
        Tokenizer.load(tmp_path / "missing.json")


def test_vocabulary_declared_size_mismatch(tmp_path):
    data = tiny_tokenizer().to_dict()
    data["size"] += 1
    (tmp_path / "v.json").write_text(json.dumps(data))
    with pytest.raises(VocabularyError, match="declared size"):
        Tokenizer.load(tmp_path / "v.json")


# ------------------------------------------------------------------------------ model
def test_shapes_and_attention():
    tok = tiny_tokenizer()
    model = build_captioner(tiny_config(tok.size), seed=1)
    feats = random_features(3)
    enc, keys = model.encode(feats)
    assert enc.shape == (3, L, 8) and keys.shape == (3, L, 12)
    state = model.initial_state(enc)
    logits, state2, alpha = model.decode_step(tf.constant([START_ID] * 3), state, enc, keys)
    assert logits.shape == (3, tok.size) and state2.shape == (3, 16) and alpha.shape == (3, L)
    np.testing.assert_allclose(tf.reduce_sum(alpha, axis=-1).numpy(), 1.0, rtol=1e-5)
    tokens = tf.constant([[START_ID, 5, 6, END_ID]] * 3)
    all_logits, alphas = model((feats, tokens))
    assert all_logits.shape == (3, 4, tok.size) and alphas.shape == (3, 4, L)


def test_all_weights_tracked_by_one_object():
    model = build_captioner(tiny_config(30), seed=1)
    paths = {w.path for w in model.weights}
    for needed in ("encoder/fc/kernel", "attention/W1/kernel", "attention/W2/kernel", "attention/V/kernel",
                   "decoder/embedding/embeddings", "decoder/gru/kernel", "decoder/gru/recurrent_kernel",
                   "decoder/fc1/kernel", "decoder/fc2/kernel"):
        assert needed in paths
    assert model.decoder.gru.reset_after is True
    assert len(model.trainable_variables) == len(model.weights) == 16


def test_teacher_forced_matches_python_loop():
    tok = tiny_tokenizer()
    model = build_captioner(tiny_config(tok.size), seed=2)
    feats = random_features(2)
    tokens = np.array([[START_ID, 5, 6, END_ID], [START_ID, 7, END_ID, PAD_ID]], dtype=np.int32)
    logits, alphas = teacher_forced(model, feats, tf.constant([0, 1]), tf.constant(tokens), training=False)
    ref_logits, ref_alphas = model((feats, tokens[:, :-1]))
    np.testing.assert_allclose(logits.numpy(), ref_logits.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(alphas.numpy(), ref_alphas.numpy(), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ loss and masking
def test_masked_loss_ignores_pad():
    rng = np.random.default_rng(0)
    targets = tf.constant([[5, 6, END_ID, PAD_ID, PAD_ID], [7, END_ID, PAD_ID, PAD_ID, PAD_ID]])
    logits = rng.standard_normal((2, 5, 20)).astype(np.float32)
    mean, total, count = masked_cross_entropy(targets, logits)
    assert float(count) == 5.0
    changed = logits.copy()
    changed[0, 3:] = 100 * rng.standard_normal((2, 20))
    changed[1, 2:] = -50.0
    mean2, _, _ = masked_cross_entropy(targets, changed)
    assert float(mean) == pytest.approx(float(mean2), abs=0)


def test_extra_padding_changes_nothing():
    tok = tiny_tokenizer()
    model = build_captioner(tiny_config(tok.size), seed=3)
    feats = random_features(2)
    short = np.array([[START_ID, 5, END_ID], [START_ID, 6, END_ID]], dtype=np.int32)
    padded = np.concatenate([short, np.zeros((2, 3), np.int32)], axis=1)
    results = []
    for toks in (short, padded):
        logits, alphas = teacher_forced(model, feats, tf.constant([0, 1]), tf.constant(toks), training=False)
        results.append((float(masked_cross_entropy(toks[:, 1:], logits)[0]), float(attention_regulariser(alphas, toks[:, 1:]))))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    assert results[0][1] == pytest.approx(results[1][1], rel=1e-6)


def test_batches_group_captions_by_image():
    tok = tiny_tokenizer()
    caps = {f"img{i}": CAPTIONS[i % 6 : i % 6 + 2] for i in range(7)}
    data = CaptionSet.build(list(caps), random_features(7), caps, tok, max_length=12)
    batches = make_batches(data, 3, np.random.default_rng(0))
    seen = sorted(int(i) for b in batches for i in b[0])
    assert seen == list(range(7))
    for imgs, row_image, tokens in batches:
        assert tokens.shape[0] == len(row_image) == sum(len(data.captions[i]) for i in imgs)
        assert (tokens[:, 0] == START_ID).all()
        for r, j in enumerate(row_image):  # each row holds a caption of its own image
            cap = [t for t in tokens[r] if t != PAD_ID]
            assert any(list(c) == cap for c in data.captions[imgs[j]])


def test_mirrored_images_swap_left_and_right_and_use_the_flipped_features():
    caps = {"a.jpg": ["a dog on the left of a man", "a dog runs right"], "b.jpg": ["the man is on the right"]}
    tok = Tokenizer.build([c for v in caps.values() for c in v], min_count=1)
    plain, flipped = random_features(2, seed=1), random_features(2, seed=2)
    data = CaptionSet.build(list(caps), plain, caps, tok, max_length=12, mirrored=flipped)
    left, right = tok.word_index["left"], tok.word_index["right"]
    assert (data.captions_of(2)[0] == np.where(data.captions[0][0] == left, right, data.captions[0][0])).all()
    assert tok.decode(data.captions_of(3)[0]) == "the man is on the left"
    np.testing.assert_array_equal(data.features_of(np.array([3, 0])), np.stack([flipped[1], plain[0]]))

    drawn = set()
    for epoch in range(20):  # each image is drawn once per epoch, as itself or as its mirror image
        batches = make_batches(data, 2, np.random.default_rng(epoch))
        images = sorted(int(i) for b in batches for i in b[0])
        assert len(images) == 2 and {i % 2 for i in images} == {0, 1}
        drawn.update(images)
        for imgs, row_image, tokens in batches:
            for r, j in enumerate(row_image):
                cap = [t for t in tokens[r] if t != PAD_ID]
                assert any(list(c) == cap for c in data.captions_of(imgs[j]))
    assert drawn == {0, 1, 2, 3}
    validation = make_batches(data, 2, None)  # validation never sees mirror images
    assert sorted(int(i) for b in validation for i in b[0]) == [0, 1]


# ------------------------------------------------------------------------------ training
def _tiny_sets(tok, n_train=8, n_val=4):
    rng = np.random.default_rng(5)
    names = [f"i{i}.jpg" for i in range(n_train + n_val)]
    caps = {n: [CAPTIONS[rng.integers(6)] for _ in range(2)] for n in names}
    feats = random_features(len(names), seed=7).astype(np.float16)
    train = CaptionSet.build(names[:n_train], feats[:n_train], caps, tok, max_length=12)
    val = CaptionSet.build(names[n_train:], feats[n_train:], caps, tok, max_length=12)
    return train, val


def test_training_learns_checkpoints_and_resumes(tmp_path):
    tok = tiny_tokenizer()
    train, val = _tiny_sets(tok)
    cfg = TrainConfig(epochs=3, batch_images=4, learning_rate=1e-2, patience=5, seed=1)
    model = build_captioner(tiny_config(tok.size, dropout=0.0), seed=1)
    trainer = Trainer(model, cfg, tmp_path / "work", log=lambda m: None)
    history = trainer.fit(train, val, progress=False)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert (tmp_path / "work" / "train_log.json").is_file()
    assert (tmp_path / "work" / "loss_curve.png").stat().st_size > 1000
    assert trainer.best_checkpoint() is not None

    cfg2 = TrainConfig(epochs=4, batch_images=4, learning_rate=1e-2, patience=5, seed=1)
    model2 = build_captioner(tiny_config(tok.size, dropout=0.0), seed=99)
    trainer2 = Trainer(model2, cfg2, tmp_path / "work", log=lambda m: None)
    trainer2.restore(trainer2.latest_checkpoint())
    assert trainer2.epoch == 3
    for a, b in zip(model.weights, model2.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(trainer.optimizer.variables, trainer2.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a.numpy()), np.asarray(b.numpy()))
    history2 = trainer2.fit(train, val, resume=True, progress=False)
    assert [h["epoch"] for h in history2] == [1, 2, 3, 4]


def test_early_stopping(tmp_path):
    tok = tiny_tokenizer()
    train, val = _tiny_sets(tok)
    cfg = TrainConfig(epochs=10, batch_images=4, learning_rate=0.0, lr_decay=1.0, patience=2, seed=1)
    trainer = Trainer(build_captioner(tiny_config(tok.size), seed=1), cfg, tmp_path, log=lambda m: None)
    history = trainer.fit(train, val, progress=False)
    assert len(history) == 3  # epoch 1 best, then 2 epochs without improvement


# ------------------------------------------------------------------------------ storage
def _greedy(model, feats, steps):
    enc, keys = model.encode(feats)
    state = model.initial_state(enc)
    tokens = tf.fill([feats.shape[0]], START_ID)
    out, first_logits = [], None
    for _ in range(steps):
        logits, state, _ = model.decode_step(tokens, state, enc, keys)
        if first_logits is None:
            first_logits = logits.numpy()
        tokens = tf.cast(tf.argmax(logits, axis=-1), tf.int32)
        out.append(tokens.numpy())
    return first_logits, np.stack(out, axis=1)


def _saved_model(tmp_path, seed=4, **config):
    tok = tiny_tokenizer()
    model = build_captioner(tiny_config(tok.size, **config), seed=seed)
    path = save_model_dir(tmp_path / "m1", model, tok, version="test-v1", feature_extractor=FX, metrics={"dev_loss": 1.0})
    return model, tok, path


@pytest.mark.parametrize("state_from_image", [False, True])
def test_save_load_round_trip_same_process(tmp_path, state_from_image):
    model, tok, path = _saved_model(tmp_path, state_from_image=state_from_image)
    assert sorted(p.name for p in path.iterdir()) == ["captioner.weights.h5", "meta.json", "vocabulary.json"]
    meta = read_meta(path)
    assert meta["vocab_size"] == tok.size and meta["max_length"] == 12 and meta["feature_extractor"] == FX
    loaded = load_model_dir(path)
    assert loaded.tokenizer == tok and loaded.version == "test-v1"
    feats = random_features(2, seed=11)
    a, ga = _greedy(model, feats, 6)
    b, gb = _greedy(loaded.model, feats, 6)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ga, gb)


def test_save_load_round_trip_fresh_process(tmp_path):
    model, tok, path = _saved_model(tmp_path)
    feats = random_features(3, seed=12)
    np.save(tmp_path / "feats.npy", feats)
    logits, greedy = _greedy(model, feats, 8)
    script = textwrap.dedent(
        f"""
        import sys, numpy as np, tensorflow as tf
        sys.path.insert(0, {str(REPO)!r})
        from captioning.storage import load_model_dir
        from captioning.vocabulary import START_ID
        m = load_model_dir({str(path)!r}).model
        feats = np.load({str(tmp_path / 'feats.npy')!r})
        enc, keys = m.encode(feats)
        state = m.initial_state(enc)
        tokens = tf.fill([feats.shape[0]], START_ID)
        out = []
        for i in range(8):
            logits, state, _ = m.decode_step(tokens, state, enc, keys)
            if i == 0:
                np.save({str(tmp_path / 'logits.npy')!r}, logits.numpy())
            tokens = tf.cast(tf.argmax(logits, axis=-1), tf.int32)
            out.append(tokens.numpy())
        np.save({str(tmp_path / 'greedy.npy')!r}, np.stack(out, axis=1))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=tmp_path, timeout=300)
    np.testing.assert_array_equal(np.load(tmp_path / "logits.npy"), logits)  # bit-identical
    np.testing.assert_array_equal(np.load(tmp_path / "greedy.npy"), greedy)


def test_load_errors_missing(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model_dir(tmp_path / "nope")
    _, _, path = _saved_model(tmp_path)
    (path / "vocabulary.json").unlink()
    with pytest.raises(ModelFileError, match="missing vocabulary.json"):
        load_model_dir(path)


def test_load_errors_missing_weights(tmp_path):
    _, _, path = _saved_model(tmp_path)
    (path / "captioner.weights.h5").unlink()
    with pytest.raises(ModelFileError, match="missing captioner.weights.h5"):
        load_model_dir(path)


def test_load_errors_truncated_weights(tmp_path):
    _, _, path = _saved_model(tmp_path)
    w = path / "captioner.weights.h5"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated"):
        load_model_dir(path)
    # even when meta.json is edited to match, the HDF5 reader catches it
    meta = json.loads((path / "meta.json").read_text())
    meta["weights"].update(bytes=len(data) // 2, sha256=None)
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="truncated or not an HDF5"):
        load_model_dir(path)


def test_initial_state_from_the_image_is_learned_and_must_be_in_the_file(tmp_path):
    tok = tiny_tokenizer()
    model = build_captioner(tiny_config(tok.size, state_from_image=True), seed=2)
    enc, _ = model.encode(random_features(3))
    state = model.initial_state(enc).numpy()
    assert state.shape == (3, 16) and np.abs(state).max() > 0 and not np.allclose(state[0], state[1])
    assert any("init_state" in v.path for v in model.trainable_variables)
    _, _, path = _saved_model(tmp_path)  # a model file without the layer
    meta = json.loads((path / "meta.json").read_text())
    meta["config"]["state_from_image"] = True
    meta["weights"] = {"file": "captioner.weights.h5"}
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="init_state"):
        load_model_dir(path)


def test_load_errors_mismatched_weights(tmp_path):
    _, tok, path = _saved_model(tmp_path)
    other = build_captioner(tiny_config(tok.size, units=20), seed=1)
    other_dir = save_model_dir(tmp_path / "m2", other, tok, version="other", feature_extractor=FX)
    os.replace(other_dir / "captioner.weights.h5", path / "captioner.weights.h5")
    with pytest.raises(ModelFileError, match="truncated or replaced"):
        load_model_dir(path)
    meta = json.loads((path / "meta.json").read_text())
    meta["weights"] = {"file": "captioner.weights.h5"}  # no checksum recorded: the shape check catches it
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="does not fit the model"):
        load_model_dir(path)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda m: m.pop("config"), "lacks required fields: config"),
        (lambda m: m.update(format="keras"), "format"),
        (lambda m: m.update(format_version=99), "unsupported format_version"),
        (lambda m: m.update(vocab_size=m["vocab_size"] + 1), "disagree"),
        (lambda m: m["config"].update(vocab_size=m["vocab_size"] + 1), "disagree"),
        (lambda m: m["config"].update(colour="blue"), "bad model config"),
        (lambda m: m.update(feature_extractor="x"), "feature_extractor"),
    ],
)
def test_load_errors_bad_meta(tmp_path, mutate, message):
    _, _, path = _saved_model(tmp_path)
    meta = json.loads((path / "meta.json").read_text())
    mutate(meta)
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match=message):
        load_model_dir(path)


def test_load_errors_meta_not_json_and_vocab_mismatch(tmp_path):
    _, _, path = _saved_model(tmp_path)
    good = (path / "meta.json").read_text()
    (path / "meta.json").write_text("{truncated")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_model_dir(path)
    (path / "meta.json").write_text(good)
    Tokenizer.build(CAPTIONS, min_count=2).save(path / "vocabulary.json")
    with pytest.raises(ModelFileError, match="tokens but the model"):
        load_model_dir(path)
    _, _, p2 = _saved_model(tmp_path / "b")
    with pytest.raises(ModelFileError, match="trained on features"):
        load_model_dir(p2, expected_feature_extractor="other")


def test_current_pointer_file_and_symlink(tmp_path):
    _, _, path = _saved_model(tmp_path)
    (tmp_path / "current").symlink_to(path.name)
    assert load_model_dir(tmp_path / "current").path == path.resolve()
    (tmp_path / "pointer").write_text("m1\n")
    assert load_model_dir(tmp_path / "pointer").path == path.resolve()


# ------------------------------------------------------------------------------ data readers
def test_readers(tmp_path):
    (tmp_path / "f.txt").write_text("a.jpg#0\tA dog .\na.jpg#1\tA cat .\nb.jpg#0\tA man .\n")
    assert datasets.read_captions(tmp_path / "f.txt", "flickr8k") == {"a.jpg": ["A dog .", "A cat ."], "b.jpg": ["A man ."]}
    (tmp_path / "t.tsv").write_text("file\tcaption\nx.png\tred car\nx.png\tblue car\n")
    assert datasets.read_captions(tmp_path / "t.tsv", "tsv") == {"x.png": ["red car", "blue car"]}
    coco = {"images": [{"id": 1, "file_name": "c.jpg"}], "annotations": [{"image_id": 1, "caption": "a bus "}]}
    (tmp_path / "c.json").write_text(json.dumps(coco))
    assert datasets.read_captions(tmp_path / "c.json", "coco") == {"c.jpg": ["a bus"]}
    with pytest.raises(datasets.DatasetError):
        datasets.read_captions(tmp_path / "missing.txt", "flickr8k")
    with pytest.raises(datasets.DatasetError):
        datasets.read_captions(tmp_path / "f.txt", "yaml")


def test_splits(tmp_path):
    caps = {f"{i}.jpg": ["x"] for i in range(10)}
    train, dev = datasets.split_images(caps, seed=3)
    assert len(train) == 8 and len(dev) == 2 and not set(train) & set(dev)
    assert datasets.split_images(caps, seed=3) == (train, dev)
    (tmp_path / "tr.txt").write_text("0.jpg\n1.jpg\nzzz.jpg\n")
    (tmp_path / "dv.txt").write_text("2.jpg\n")
    assert datasets.split_images(caps, train_split=tmp_path / "tr.txt", dev_split=tmp_path / "dv.txt") == (["0.jpg", "1.jpg"], ["2.jpg"])
    (tmp_path / "dv.txt").write_text("1.jpg\n")
    with pytest.raises(datasets.DatasetError, match="both"):
        datasets.split_images(caps, train_split=tmp_path / "tr.txt", dev_split=tmp_path / "dv.txt")


# ------------------------------------------------------------------------------ feature cache
def test_training_and_evaluation_share_one_feature_cache_per_data_set(tmp_path):
    (tmp_path / "flickr8k" / "images").mkdir(parents=True)
    expected = tmp_path / "var" / "features" / features.FEATURE_EXTRACTOR_ID.replace("/", "_") / "flickr8k"
    assert features.default_cache_dir(tmp_path / "var", tmp_path / "flickr8k" / "images") == expected
    assert features.default_cache_dir(tmp_path / "var", tmp_path / "flickr8k" / "images" / "..").name == "flickr8k"
    assert features.default_cache_dir(tmp_path / "var", tmp_path / "photos").name == "photos"


def test_feature_cache(tmp_path):
    import keras
    from PIL import Image

    inp = keras.Input((299, 299, 3))
    x = keras.layers.AveragePooling2D(37, 37)(inp)  # (8, 8, 3)
    extractor = keras.Model(inp, keras.layers.Dense(2048)(x))
    for i in range(3):
        Image.new("RGB", (40 + i, 30), (i * 80, 10, 200)).save(tmp_path / f"{i}.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    items = [(f"{i}.jpg", tmp_path / f"{i}.jpg") for i in range(3)] + [("bad.jpg", tmp_path / "bad.jpg")]
    cache = tmp_path / "cache"
    stats = features.cache_features(items, cache, extractor=extractor, batch_size=2, progress=False, log=lambda m: None)
    assert stats["written"] == 3 and stats["failed"] == ["bad.jpg"]
    arr = np.load(features.cache_path(cache, "1.jpg"))
    assert arr.shape == (64, 2048) and arr.dtype == np.float16
    stats = features.cache_features(items[:3], cache, extractor=None, progress=False)
    assert stats["cached_before"] == 3 and stats["written"] == 0
    stacked = features.load_features(cache, ["0.jpg", "2.jpg"])
    assert stacked.shape == (2, 64, 2048)
    mapped = features.load_features(cache, ["0.jpg", "2.jpg"], mmap=True)
    np.testing.assert_array_equal(mapped[[1]], stacked[[1]])
    assert not list(cache.glob(".*"))  # no temporary files left behind
