"""Self-critical sequence training (captioning.scst): the CIDEr-D reward, the baseline, the sampler's
guard, the update direction, the export and the command, on the tiny random captioner."""

import dataclasses
import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from django.core.management import CommandError, call_command

from captioning import features as feature_store
from captioning.model import ModelConfig, build_captioner
from captioning.scst import (
    CiderD, InventedObjects, ScstConfig, ScstRun, ScstTrainer, average_checkpoints, best_epoch, build_sampler, ends_badly,
    penalised_reward, policy_loss, run_scst, self_critical_advantages,
)
from captioning.inference import forbidden_tokens, has_repeated_trigram
from captioning.storage import load_model_dir, read_meta
from captioning.training import teacher_forced
from captioning.vocabulary import END_ID, PAD_ID

from .conftest import MAX_LENGTH

REFERENCES = {
    "a": ["a dog runs on the grass", "a brown dog running in a field", "the dog is running outside"],
    "b": ["two children play in the water", "kids splash at the beach", "two kids play in the sea"],
    "c": ["a man rides a bike down a hill", "a cyclist rides downhill", "a person on a bicycle on a dirt road"],
}
HYPOTHESES = {"a": "a dog running on the grass", "b": "two dogs play in the snow", "c": "a man on a bike"}


def test_cider_d_equals_pycocoevalcap_on_a_hand_made_case():
    from pycocoevalcap.cider.cider import Cider

    keys = list(REFERENCES)
    expected_mean, expected = Cider().compute_score(REFERENCES, {k: [HYPOTHESES[k]] for k in keys})
    scorer = CiderD([[r.split() for r in REFERENCES[k]] for k in keys])
    got = [scorer.score(i, HYPOTHESES[k].split()) for i, k in enumerate(keys)]
    assert got == pytest.approx(list(expected), rel=1e-9)
    assert np.mean(got) == pytest.approx(expected_mean)


def test_cider_d_rewards_overlap_and_with_end_token_punishes_a_dangling_ending():
    refs = [[r.split() for r in REFERENCES[k]] for k in REFERENCES]
    with_end, plain = CiderD(refs, end_token=True), CiderD(refs)
    assert with_end.score(0, "kids splash at sea".split()) == 0.0  # <end> is in every caption: no weight

    def dangling_share(scorer):
        return scorer.score(0, "a dog runs on the".split()) / scorer.score(0, "a dog runs on the grass".split())

    assert 0 < dangling_share(with_end) < dangling_share(plain) - 0.05


def test_reward_loses_the_chair_weight_per_invented_object_group():
    keys = list(REFERENCES)
    cider = CiderD([[r.split() for r in REFERENCES[k]] for k in keys])
    invented = InventedObjects([REFERENCES[k] for k in keys])
    # Photo "b": children (person) and water are supported; "dogs" and "snow" are invented.
    assert invented.count(1, "two dogs play in the snow".split()) == 2
    assert invented.count(1, "two kids play in the water".split()) == 0
    # Photo "c": "cyclist" and "man" are both person, "bike" and "bicycle" one group.
    assert invented.count(2, "a man on a bike".split()) == 0
    reward = penalised_reward(cider, invented, 0.25)
    words = "two dogs play in the snow".split()
    assert reward(1, words) == pytest.approx(cider.score(1, words) - 0.5)
    assert reward(2, "a man on a bike".split()) == pytest.approx(cider.score(2, "a man on a bike".split()))
    assert penalised_reward(cider, invented, 0.0) == cider.score


def test_baseline_is_the_mean_of_the_other_samples():
    advantages = self_critical_advantages(np.array([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]]))
    np.testing.assert_allclose(advantages, [[-1.5, 0.0, 1.5], [0.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="2 samples"):
        self_critical_advantages(np.ones((2, 1)))


def test_bad_endings_and_best_epoch_skips_unclean_epochs():
    assert ends_badly("a dog with a".split()) and not ends_badly("a dog runs".split())
    history = [
        {"epoch": 0, "dev_greedy": {"CIDEr-D": 40.0, "degenerate": 0, "bad_endings": 0}},
        {"epoch": 1, "dev_greedy": {"CIDEr-D": 48.0, "degenerate": 0, "bad_endings": 0}},
        {"epoch": 2, "dev_greedy": {"CIDEr-D": 52.0, "degenerate": 0, "bad_endings": 3}},
        {"epoch": 3, "dev_greedy": {"CIDEr-D": 51.0, "degenerate": 1, "bad_endings": 0}},
    ]
    assert best_epoch(history) == 1
    history.append({"epoch": 4, "dev_greedy": {"CIDEr-D": 47.0, "CHAIR-i": 20.0, "degenerate": 0, "bad_endings": 0}})
    for h in history[:4]:
        h["dev_greedy"]["CHAIR-i"] = 30.0
    assert best_epoch(history) == 1 and best_epoch(history, "CIDEr-D-CHAIR-i") == 4
    with pytest.raises(ValueError, match="select_by"):
        ScstConfig(select_by="BLEU")


def test_samples_obey_the_inference_guard(tiny_model, features, tokenizer):
    tf.random.set_seed(0)
    seq, banned, steps = (t.numpy() for t in build_sampler(tiny_model, 4)(tf.constant(features[:5].astype(np.float16))))
    assert seq.shape == (20, MAX_LENGTH) and banned.shape == (20, int(steps), tokenizer.size)
    for row, row_banned in zip(seq, banned):
        end = list(row).index(END_ID)  # every sample ends within the maximum length
        assert 1 < end < MAX_LENGTH and (row[end + 1 :] == PAD_ID).all()
        assert not has_repeated_trigram(list(row[1:end]))
        for t in range(end):  # the token at t + 1 was allowed, and the mask is the guard's
            assert not row_banned[t, row[t + 1]]
            np.testing.assert_array_equal(row_banned[t], forbidden_tokens(row[None], t, tokenizer.size, MAX_LENGTH).numpy()[0])
    assert len({tuple(r) for r in seq}) > 10  # samples, not one repeated caption


def test_policy_step_raises_a_better_than_baseline_caption_and_lowers_a_worse_one(tokenizer):
    model = build_captioner(ModelConfig(vocab_size=tokenizer.size, embedding_dim=8, units=16, attention_units=8, max_length=MAX_LENGTH), seed=3)
    feats = tf.constant(np.random.default_rng(1).standard_normal((1, 64, 2048)).astype(np.float16))
    tokens = tf.constant([[1, 5, 6, 7, END_ID], [1, 9, 10, END_ID, PAD_ID]], tf.int32)
    banned = tf.zeros((2, 4, tokenizer.size), tf.bool)
    advantages = tf.constant([1.0, -1.0])

    def log_probs():
        logits, _ = teacher_forced(model, feats, tf.constant([0, 0]), tokens, training=False)
        logp = tf.nn.log_softmax(logits)
        targets = tokens[:, 1:].numpy()
        return [sum(float(logp[r, t, targets[r, t]]) for t in range(4) if targets[r, t] != PAD_ID) for r in range(2)]

    before = log_probs()
    optimizer = keras.optimizers.SGD(0.5)
    with tf.GradientTape() as tape:
        logits, _ = teacher_forced(model, feats, tf.constant([0, 0]), tokens, training=False)
        loss = policy_loss(logits, tokens[:, 1:], banned, advantages)
    optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
    after = log_probs()
    assert after[0] > before[0] and after[1] < before[1]


def test_training_raises_the_reward(tokenizer):
    """Reward = share of the words that are "w3": a few SCST updates make the model say it more."""
    model = build_captioner(ModelConfig(vocab_size=tokenizer.size, embedding_dim=8, units=16, attention_units=8, max_length=MAX_LENGTH), seed=4)
    trainer = ScstTrainer(model, tokenizer, ScstConfig(samples=6, learning_rate=0.02, xe_weight=0.0))
    feats = np.random.default_rng(2).standard_normal((4, 64, 2048)).astype(np.float16)

    def reward(image, words):
        return words.count("w3") / max(1, len(words))

    tf.random.set_seed(5)
    rewards = [trainer.step(feats, [[]] * 4, reward)["reward"] for _ in range(25)]
    assert np.mean(rewards[-5:]) > np.mean(rewards[:5]) + 0.2


@pytest.fixture
def cached_split(tmp_path):
    """Four train and two dev photos with cached random features and made-up captions."""
    rng = np.random.default_rng(0)
    cache = tmp_path / "cache"
    cache.mkdir()
    train = {f"t{i}.jpg": [f"w{i} w{i + 1} w{i + 2}", f"w{i} w{i + 2}"] for i in range(4)}
    dev = {f"d{i}.jpg": [f"w{i} w3 w4", f"w{i + 1} w5"] for i in range(2)}
    for name in [*train, *dev]:
        np.save(feature_store.cache_path(cache, name), rng.standard_normal((64, 2048)).astype(np.float16))
    return cache, train, dev


def test_run_exports_a_loadable_model_with_the_run_recorded(tmp_path, model_and_feature_dirs, cached_split):
    model_dir, _ = model_and_feature_dirs
    cache, train, dev = cached_split
    run = ScstRun(
        init_from=model_dir, output=tmp_path / "out", work_dir=tmp_path / "work", cache_dir=cache, train=train, dev=dev,
        config=ScstConfig(epochs=2, batch_images=2, samples=3, learning_rate=0.01, xe_captions=1), version="tiny-scst",
    )
    out = run_scst(run, log=lambda m: None)
    meta = read_meta(out)
    assert meta["version"] == "tiny-scst" and meta["derived_from"]["version"] == "tiny-1"
    assert [h["epoch"] for h in meta["scst"]["history"]] == [0, 1, 2]
    loaded = load_model_dir(out)  # the checksum in meta.json is the new file's
    best = meta["scst"]["best_epoch"]
    state = json.loads((tmp_path / "work" / "state.json").read_text())
    assert state["epoch"] == 2 and (tmp_path / "work" / "checkpoints" / "epoch-002.weights.h5").is_file()
    if best:
        assert meta["weights"]["sha256"] != read_meta(model_dir)["weights"]["sha256"]
    assert loaded.tokenizer == load_model_dir(model_dir).tokenizer
    # resuming with more epochs and another learning rate trains only the new epoch, from the saved optimizer
    more = dataclasses.replace(run.config, epochs=3, learning_rate=0.005, average=(2, 3))
    again = read_meta(run_scst(dataclasses.replace(run, resume=True, config=more), log=lambda m: None))["scst"]
    assert [h["learning_rate"] for h in again["history"][1:]] == [0.01, 0.01, 0.005]
    assert again["history"][:3] == meta["scst"]["history"]
    assert again["average"]["epochs"] == [2, 3] and again["exported"] in ("average of epochs 2-3", f"epoch {again['best_epoch']}")


def test_checkpoint_average_is_the_mean_of_the_weights(tmp_path, tiny_model):
    first = [w.copy() for w in tiny_model.get_weights()]
    tiny_model.save_weights(str(tmp_path / "a.weights.h5"))
    tiny_model.set_weights([w + 1.0 for w in first])
    tiny_model.save_weights(str(tmp_path / "b.weights.h5"))
    average_checkpoints(tiny_model, [tmp_path / "a.weights.h5", tmp_path / "b.weights.h5"])
    for got, w in zip(tiny_model.get_weights(), first):
        np.testing.assert_allclose(got, w + 0.5, rtol=1e-6, atol=1e-6)
    tiny_model.set_weights(first)


def test_command_refuses_missing_features_and_one_sample(tmp_path, model_and_feature_dirs):
    model_dir, _ = model_and_feature_dirs
    data = tmp_path / "data"
    data.mkdir()
    (data / "captions.txt").write_text("x.jpg#0\ta dog\ny.jpg#0\ta cat\n")
    (data / "train.txt").write_text("x.jpg\n")
    (data / "dev.txt").write_text("y.jpg\n")
    common = ["--data-dir", str(data), "--init-from", str(model_dir), "--output", str(tmp_path / "o"), "--feature-cache", str(tmp_path / "none")]
    with pytest.raises(CommandError, match="no cached features"):
        call_command("scst_captioner", *common)
    with pytest.raises(CommandError, match="at least 2"):
        call_command("scst_captioner", *common, "--samples", "1")
    with pytest.raises(CommandError, match="comma-separated"):
        call_command("scst_captioner", *common, "--average", "3-5")
