"""Self-critical sequence training (Rennie et al. 2017) of a trained captioner on cached features.

Teacher forcing teaches the captioner to predict the next word of a human caption; at inference it
continues its own words, and it is scored by CIDEr-D. SCST closes that gap: per image it SAMPLES
``samples`` captions from the model (with the same loop guard as inference, so what is rewarded
is what can be shown), scores each with CIDEr-D against the image's training captions, and raises
the log-probability of the captions that beat the baseline (lowers the others). The baseline is
the mean reward of the image's OTHER samples (the "new self-critical" variant, Luo 2020): no
greedy decode is needed and the advantages of an image sum to zero.

Guards against SCST's known failure, captions that end in "with a" or "and a":

* the reward scores the caption WITH its ``<end>`` token (and the references with theirs), so an
  ending that people never write earns no 2-, 3- or 4-gram credit;
* a cross-entropy term on the image's human captions (``xe_weight``) keeps the language model;
* optionally (``chair_weight``), the reward loses that much per object group the caption names
  that none of the image's training captions names (captioning.chair's groups, as CHAIR counts
  them), so invented objects cost more than CIDEr-D alone charges for them;
* each "epoch" ends with a greedy decode of the dev images scored by CIDEr-D, CHAIR, BLEU-4 and
  the count of degenerate captions and of captions ending in a function word; the exported
  checkpoint is the best dev CIDEr-D among those without degenerate or badly ending captions,
  or (``average``) the mean weights of some epochs when they score better still.

Only the decoder side runs (encoder Dense, attention, GRU): InceptionV3 features come from the
training feature cache. Plain Python + TensorFlow, no Django (``scst_captioner`` is the glue).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from . import features as feature_store
from .cider import CiderD
from .files import atomic_directory, sha256_file, write_atomic
from .chair import ObjectVocabulary, load_object_vocabulary
from .evaluation import is_degenerate, score_captions
from .inference import decode_features, forbidden_tokens
from .model import Captioner
from .storage import META_NAME, WEIGHTS_NAME, load_model_dir, read_meta
from .training import masked_cross_entropy, teacher_forced
from .vocabulary import END_ID, PAD_ID, START_ID, Tokenizer, normalize_words

# Words a finished caption should not end with (SCST's degenerate endings: "... with a", "... and").
BAD_LAST_WORDS = frozenset({"a", "an", "the", "and", "with", "of", "in", "on", "at", "to", "for", "his", "her", "their", "its", "is", "are", "while", "from", "by"})
_NEG = -1e9
# What picks the exported epoch on dev: CIDEr-D alone, or CIDEr-D minus CHAIR-i (evaluation.best_try's rule,
# for runs that also train against invented objects).
SELECT_BY = ("CIDEr-D", "CIDEr-D-CHAIR-i")


# ------------------------------------------------------------------------------------ the reward
class InventedObjects:
    """Per image, the object groups its human captions support (captioning.chair); counts the
    groups a caption names that they do not (CHAIR's "hallucinated" objects)."""

    def __init__(self, references: Sequence[Sequence[str]], objects: ObjectVocabulary | None = None):
        self.objects = objects or load_object_vocabulary()
        self.supported = [self.objects.supported(refs) for refs in references]

    def count(self, image: int, words: Sequence[str]) -> int:
        return sum(group not in self.supported[image] for group in self.objects.groups_named(words))


def penalised_reward(cider: CiderD, invented: InventedObjects | None, chair_weight: float) -> Callable[[int, Sequence[str]], float]:
    """reward(image, words) = CIDEr-D - chair_weight x the number of object groups the caption invents."""
    if not chair_weight or invented is None:
        return cider.score
    return lambda image, words: cider.score(image, words) - chair_weight * invented.count(image, words)


def self_critical_advantages(rewards: np.ndarray) -> np.ndarray:
    """rewards (images, samples) -> reward minus the mean reward of the image's other samples."""
    rewards = np.asarray(rewards, dtype=np.float64)
    k = rewards.shape[1]
    if k < 2:
        raise ValueError("the self-critical baseline needs at least 2 samples per image")
    others = (rewards.sum(axis=1, keepdims=True) - rewards) / (k - 1)
    return (rewards - others).astype(np.float32)


# ------------------------------------------------------------------------------------ the steps
def build_sampler(model: Captioner, samples: int):
    """A compiled function: features (B, L, D) float16 -> (seq (B*samples, max_len), forbidden
    (B*samples, steps, V) bool, steps). Rows i*samples .. i*samples+samples-1 are image i's samples,
    drawn from the model's distribution with the inference guard's forbidden tokens masked out."""
    cfg = model.config
    vocab, max_len = cfg.vocab_size, cfg.max_length

    @tf.function(input_signature=[tf.TensorSpec((None, cfg.feature_locations, cfg.feature_depth), tf.float16)])
    def sample(features):
        enc, keys = model.encode(features)
        enc, keys = tf.repeat(enc, samples, axis=0), tf.repeat(keys, samples, axis=0)
        rows = tf.shape(enc)[0]
        state = model.initial_state(enc)
        seq = tf.tile(tf.one_hot([0], max_len, on_value=START_ID, off_value=PAD_ID, dtype=tf.int32), [rows, 1])
        tokens = tf.fill([rows], START_ID)
        finished = tf.zeros([rows], tf.bool)
        banned_ta = tf.TensorArray(tf.bool, size=0, dynamic_size=True)
        step = tf.constant(0)
        while (step < max_len - 1) & ~tf.reduce_all(finished):
            logits, state, _ = model.decode_step(tokens, state, enc, keys)
            banned = forbidden_tokens(seq, step, vocab, max_len)
            logits = tf.where(banned, _NEG, tf.cast(logits, tf.float32))
            token = tf.random.categorical(logits, 1, dtype=tf.int32)[:, 0]
            token = tf.where(finished, PAD_ID, token)
            banned_ta = banned_ta.write(step, banned)
            seq = seq + tf.one_hot(step + 1, max_len, dtype=tf.int32)[None, :] * token[:, None]
            finished = finished | tf.equal(token, END_ID)
            tokens = token
            step += 1
        banned = tf.transpose(banned_ta.stack(), [1, 0, 2])
        return seq, banned, step

    return sample


def policy_loss(logits, targets, banned, advantages):
    """Self-critical loss of sampled rows: -mean over real tokens of advantage x log q(token), where
    q is the model's distribution with the guard's ``banned`` tokens removed (what was sampled from)."""
    logits = tf.where(banned, _NEG, logits)
    logp = tf.nn.log_softmax(logits)
    mask = tf.not_equal(targets, PAD_ID)
    token_logp = tf.gather(logp, tf.where(mask, targets, 0), batch_dims=2)
    weighted = tf.where(mask, advantages[:, None] * token_logp, 0.0)
    return -tf.reduce_sum(weighted) / tf.maximum(tf.reduce_sum(tf.cast(mask, tf.float32)), 1.0)


@dataclass
class ScstConfig:
    epochs: int = 3
    images_per_epoch: int | None = None  # an "epoch" is this many training images (None: all)
    batch_images: int = 16
    samples: int = 5
    learning_rate: float = 5e-5
    clipnorm: float = 5.0
    xe_weight: float = 0.2  # weight of the cross-entropy on the human captions
    xe_captions: int | None = None  # human captions per image in that term, drawn at random (None: all)
    chair_weight: float = 0.0  # reward penalty per object group the caption invents (see InventedObjects)
    end_token_reward: bool = True
    seed: int = 1234
    deadline: float | None = None  # unix time: no epoch starts that would end after it
    average: tuple[int, ...] = ()  # also try the mean weights of these epochs; exported if better on dev
    select_by: str = "CIDEr-D"  # or "CIDEr-D-CHAIR-i": the dev figure that picks the exported epoch (see dev_merit)

    def __post_init__(self):
        if self.select_by not in SELECT_BY:
            raise ValueError(f"select_by must be one of {', '.join(SELECT_BY)}, not {self.select_by!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class ScstTrainer:
    """Fine-tunes ``model`` by self-critical training; see the module docstring."""

    def __init__(self, model: Captioner, tokenizer: Tokenizer, config: ScstConfig, log: Callable[[str], None] = print):
        self.model, self.tokenizer, self.config, self.log = model, tokenizer, config, log
        self.optimizer = keras.optimizers.Adam(learning_rate=config.learning_rate, clipnorm=config.clipnorm)
        self.optimizer.build(model.trainable_variables)
        self.sample = build_sampler(model, config.samples)
        self.rng = np.random.default_rng(config.seed)
        vocab = model.config.vocab_size
        spec = [
            tf.TensorSpec((None, model.config.feature_locations, model.config.feature_depth), tf.float16),
            tf.TensorSpec((None,), tf.int32),  # row -> image of the batch
            tf.TensorSpec((None, None), tf.int32),  # sampled rows first, then the human captions
            tf.TensorSpec((None, None, vocab), tf.bool),  # banned tokens of the sampled rows
            tf.TensorSpec((None,), tf.float32),  # advantages of the sampled rows
        ]
        self._step = tf.function(self._step_impl, input_signature=spec)

    def _step_impl(self, features, row_image, tokens, banned, advantages):
        n_sampled = tf.shape(banned)[0]
        targets = tokens[:, 1:]
        with tf.GradientTape() as tape:
            logits, _ = teacher_forced(self.model, features, row_image, tokens, training=False)
            pg = policy_loss(logits[:n_sampled], targets[:n_sampled], banned, advantages)
            xe, _, _ = masked_cross_entropy(targets[n_sampled:], logits[n_sampled:])
            loss = pg + self.config.xe_weight * xe
        variables = self.model.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return pg, xe

    def save_optimizer(self, path: Path) -> None:
        """Adam's moments and step count (the latest epoch's; resuming continues from them)."""
        write_atomic(path, lambda fh: np.savez(fh, *[np.asarray(v.numpy()) for v in self.optimizer.variables]))

    def restore_optimizer(self, path: Path) -> None:
        """Load :meth:`save_optimizer`'s file, keeping this run's learning rate."""
        with np.load(path) as data:
            values = [data[f"arr_{i}"] for i in range(len(data.files))]
        if len(values) != len(self.optimizer.variables):
            raise ValueError(f"{path}: optimizer state has {len(values)} variables, expected {len(self.optimizer.variables)}")
        for var, value in zip(self.optimizer.variables, values):
            var.assign(value)
        self.optimizer.learning_rate.assign(self.config.learning_rate)

    def words_of(self, seq: np.ndarray) -> list[list[str]]:
        return [self.tokenizer.decode_tokens(row[1:]) for row in seq]

    def step(self, features: np.ndarray, references: Sequence[Sequence[np.ndarray]], reward: Callable[[int, list[str]], float]) -> dict:
        """One update on a batch of images: features (B, L, D); ``references[i]`` image i's encoded
        human captions; ``reward(i, words)`` the reward of a caption of image i."""
        k = self.config.samples
        features = tf.constant(np.asarray(features, dtype=np.float16))
        seq, banned, _ = self.sample(features)
        seq, banned = seq.numpy(), banned.numpy()
        words = self.words_of(seq)
        rewards = np.array([reward(r // k, w) for r, w in enumerate(words)], dtype=np.float64).reshape(-1, k)
        advantages = self_critical_advantages(rewards).reshape(-1)
        lengths = [len(w) + 2 for w in words]  # <start> words <end>
        picks = self.config.xe_captions
        refs = [
            (i, caps[j]) for i, caps in enumerate(references)
            for j in (range(len(caps)) if picks is None else self.rng.permutation(len(caps))[:picks])
        ]
        width = max(lengths + [len(c) for _, c in refs])
        tokens = np.full((len(words) + len(refs), width), PAD_ID, dtype=np.int32)
        kept = min(width, seq.shape[1])
        tokens[: len(words), :kept] = seq[:, :kept]
        for r, (_, cap) in enumerate(refs):
            tokens[len(words) + r, : len(cap)] = cap
        steps = width - 1
        padded = np.zeros((len(words), steps, banned.shape[2]), dtype=bool)
        padded[:, : min(steps, banned.shape[1])] = banned[:, :steps]
        row_image = np.concatenate([np.arange(len(words)) // k, [i for i, _ in refs]]).astype(np.int32)
        pg, xe = self._step(features, tf.constant(row_image), tf.constant(tokens), tf.constant(padded), tf.constant(advantages))
        return {"reward": float(rewards.mean()), "pg": float(pg), "xe": float(xe), "words": float(np.mean([len(w) for w in words]))}


# ------------------------------------------------------------------------------------ dev check
def ends_badly(words: Sequence[str]) -> bool:
    """A caption that stops on a function word ("... with a", "... and")."""
    return bool(words) and words[-1] in BAD_LAST_WORDS


def greedy_dev_report(model: Captioner, tokenizer: Tokenizer, features: np.ndarray, names: Sequence[str], references: dict[str, list[str]], batch: int = 100) -> dict:
    """Greedy captions of the dev images scored as evaluate_captioner does (no METEOR)."""
    results = []
    for start in range(0, len(names), batch):
        results += decode_features(model, tokenizer, features[start : start + batch].astype(np.float32), beam_width=1)
    scored = score_captions({n: references[n] for n in names}, {n: r.text for n, r in zip(names, results)}, meteor=False)
    return {
        **scored["scores"],
        "degenerate": sum(is_degenerate(r) for r in results),
        "bad_endings": sum(ends_badly(r.words) for r in results),
        "mean_words": round(float(np.mean([len(r.words) for r in results])), 2),
        "samples": {n: r.text for n, r in list(zip(names, results))[:5]},
    }


# ------------------------------------------------------------------------------------ the run
@dataclass
class ScstRun:
    init_from: Path
    output: Path
    work_dir: Path
    cache_dir: Path
    train: dict[str, list[str]]  # image name -> human captions
    dev: dict[str, list[str]]
    config: ScstConfig
    version: str
    resume: bool = False


def _write_json(path: Path, data) -> None:
    write_atomic(path, lambda fh: fh.write(json.dumps(data, indent=1) + "\n"), "w")


def run_scst(run: ScstRun, log: Callable[[str], None] = print) -> Path:
    """Fine-tune ``run.init_from`` by SCST, checkpoint each epoch in ``run.work_dir`` (resumable),
    and export the best epoch (dev CIDEr-D, greedy) as a model directory; returns its path."""
    cfg = run.config
    keras.utils.set_random_seed(cfg.seed)
    loaded = load_model_dir(run.init_from, expected_feature_extractor=feature_store.FEATURE_EXTRACTOR_ID)
    model, tokenizer = loaded.model, loaded.tokenizer
    work = Path(run.work_dir)
    (work / "checkpoints").mkdir(parents=True, exist_ok=True)
    train_names, dev_names = list(run.train), list(run.dev)
    t0 = time.time()
    train_features = feature_store.load_features(run.cache_dir, train_names)
    dev_features = feature_store.load_features(run.cache_dir, dev_names)
    log(f"loaded features of {len(train_names)} train / {len(dev_names)} dev images in {time.time() - t0:.0f} s")
    max_length = model.config.max_length
    encoded = [[np.asarray(tokenizer.encode(c, max_length=max_length), np.int32) for c in run.train[n]] for n in train_names]
    cider = CiderD([[normalize_words(c) for c in run.train[n]] for n in train_names], end_token=cfg.end_token_reward)
    invented = InventedObjects([run.train[n] for n in train_names]) if cfg.chair_weight else None
    reward = penalised_reward(cider, invented, cfg.chair_weight)
    trainer = ScstTrainer(model, tokenizer, cfg, log=log)

    state_path = work / "state.json"
    state = {"epoch": 0, "history": [], "best_epoch": 0, "config": cfg.to_dict(), "init_from": str(run.init_from)}
    if run.resume and state_path.is_file():
        state = json.loads(state_path.read_text())
        model.load_weights(str(work / "checkpoints" / f"epoch-{state['epoch']:03d}.weights.h5"))
        trainer.restore_optimizer(work / "optimizer.npz")
        state["config"] = cfg.to_dict()  # the settings of the epochs to come; each epoch records its own
        log(f"resumed after epoch {state['epoch']}")
    else:
        base = greedy_dev_report(model, tokenizer, dev_features, dev_names, run.dev)
        state["history"].append({"epoch": 0, "dev_greedy": base})
        log(f"epoch 0 (the initial model): dev greedy {json.dumps({k: v for k, v in base.items() if k != 'samples'})}")
        _write_json(state_path, state)

    # Epochs of ``images_per_epoch`` images walk through shuffled passes over the training set.
    per_epoch = cfg.images_per_epoch or len(train_names)
    rng = np.random.default_rng(cfg.seed)
    passes = -(-cfg.epochs * per_epoch // len(train_names))
    order = np.concatenate([rng.permutation(len(train_names)) for _ in range(passes)])
    while state["epoch"] < cfg.epochs:
        history = state["history"]
        if cfg.deadline and len(history) > 1 and time.time() + 1.1 * history[-1]["seconds"] > cfg.deadline:
            log(f"stopping before epoch {state['epoch'] + 1}: it would end after the deadline")
            break
        epoch = state["epoch"] + 1
        start = time.time()
        picked = order[(epoch - 1) * per_epoch : epoch * per_epoch]
        sums, batches = Counter(), 0
        for b in range(0, len(picked), cfg.batch_images):
            idx = np.sort(picked[b : b + cfg.batch_images])
            stats = trainer.step(train_features[idx], [encoded[i] for i in idx], lambda i, w, idx=idx: reward(int(idx[i]), w))
            if not math.isfinite(stats["pg"]) or not math.isfinite(stats["xe"]):
                raise FloatingPointError(f"non-finite loss at epoch {epoch}, batch {batches}")
            sums.update(stats)
            batches += 1
            if batches % 20 == 0:
                log(
                    f"epoch {epoch} batch {batches}/{-(-len(picked) // cfg.batch_images)}: reward {sums['reward'] / batches:.4f}, "
                    f"xe {sums['xe'] / batches:.3f}, words {sums['words'] / batches:.2f}, {time.time() - start:.0f} s"
                )
        train_seconds = time.time() - start
        model.save_weights(str(work / "checkpoints" / f"epoch-{epoch:03d}.weights.h5"))
        trainer.save_optimizer(work / "optimizer.npz")
        dev = greedy_dev_report(model, tokenizer, dev_features, dev_names, run.dev)
        record = {
            "epoch": epoch,
            "images": len(picked),
            "learning_rate": cfg.learning_rate,
            "xe_weight": cfg.xe_weight,
            "chair_weight": cfg.chair_weight,
            "train_reward": round(sums["reward"] / max(batches, 1), 4),
            "train_xe": round(sums["xe"] / max(batches, 1), 4),
            "train_words": round(sums["words"] / max(batches, 1), 2),
            "dev_greedy": dev,
            "seconds": round(time.time() - start, 1),
            "train_seconds": round(train_seconds, 1),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        history.append(record)
        state["epoch"] = epoch
        state["best_epoch"] = best_epoch(history, cfg.select_by)
        _write_json(state_path, state)
        log(f"epoch {epoch}: {json.dumps({k: v for k, v in record.items() if k != 'dev_greedy'})}")
        log(f"  dev greedy: {json.dumps({k: v for k, v in dev.items() if k != 'samples'})}; best epoch {state['best_epoch']}")
    best = state["best_epoch"] = best_epoch(state["history"], cfg.select_by)  # the rule given now (a resumed run may change it)
    if best == 0:
        log("no epoch beat the initial model on dev; exporting it unchanged")
        model.load_weights(str(Path(loaded.path) / loaded.meta["weights"].get("file", WEIGHTS_NAME)))
    else:
        model.load_weights(str(work / "checkpoints" / f"epoch-{best:03d}.weights.h5"))
    state["exported"] = f"epoch {best}"
    if cfg.average:
        epochs = sorted(cfg.average)
        if epochs[0] < 1 or epochs[-1] > state["epoch"]:
            raise ValueError(f"cannot average epochs {epochs}: the run has epochs 1 to {state['epoch']}")
        chosen = model.get_weights()
        average_checkpoints(model, [work / "checkpoints" / f"epoch-{e:03d}.weights.h5" for e in epochs])
        dev = greedy_dev_report(model, tokenizer, dev_features, dev_names, run.dev)
        state["average"] = {"epochs": epochs, "dev_greedy": dev}
        best_record = next(h for h in state["history"] if h["epoch"] == best)
        if is_clean(dev) and dev_merit(dev, cfg.select_by) > dev_merit(best_record["dev_greedy"], cfg.select_by):
            state["exported"] = f"average of epochs {epochs[0]}-{epochs[-1]}"
        else:
            model.set_weights(chosen)
        log(f"average of epochs {epochs}: dev greedy {json.dumps({k: v for k, v in dev.items() if k != 'samples'})}")
    _write_json(state_path, state)
    log(f"exporting {state['exported']}")
    return export_model_dir(loaded.path, model, run.output, version=run.version, scst=state)


def average_checkpoints(model: Captioner, paths: Sequence[Path]) -> None:
    """Set ``model``'s weights to the mean of the checkpoints' (checkpoint averaging)."""
    weights = []
    for path in paths:
        model.load_weights(str(path))
        weights.append(model.get_weights())
    model.set_weights([np.mean(stack, axis=0) for stack in zip(*weights)])


def is_clean(dev: dict) -> bool:
    """No degenerate caption and no caption ending in a function word."""
    return not dev["degenerate"] and not dev["bad_endings"]


def dev_merit(dev: dict, select_by: str = "CIDEr-D") -> float:
    """The greedy dev figure an epoch is chosen by (see SELECT_BY)."""
    return dev["CIDEr-D"] - (dev["CHAIR-i"] if select_by == "CIDEr-D-CHAIR-i" else 0.0)


def best_epoch(history: Sequence[dict], select_by: str = "CIDEr-D") -> int:
    """The epoch with the highest greedy dev figure (:func:`dev_merit`) among those without
    degenerate or badly ending captions (epoch 0 is the initial model)."""
    clean = [h for h in history if is_clean(h["dev_greedy"])]
    return max(clean or history, key=lambda h: dev_merit(h["dev_greedy"], select_by))["epoch"]


def export_model_dir(base: Path, model: Captioner, output: Path, *, version: str, scst: dict) -> Path:
    """A copy of the model directory ``base`` with ``model``'s weights: the concept head, vocabulary
    and settings carried over; meta.json records the new weights' checksum and the SCST run. The
    base's decoding scores, reranking tries and confidence were measured on other weights, so the
    scores are dropped and the rest marked as inherited until ``evaluate_captioner --tune`` refits them."""
    output = Path(output)
    with atomic_directory(output) as tmp:
        shutil.copytree(base, tmp, dirs_exist_ok=True)
        for stale in ("loss_curve.png", "train_log.json", "confidence_reliability.png"):
            (tmp / stale).unlink(missing_ok=True)
        meta, base_version = read_meta(tmp), read_meta(base)["version"]
        weights = tmp / meta["weights"].get("file", WEIGHTS_NAME)
        model.save_weights(str(weights))
        meta["version"] = version
        meta["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        meta["weights"] = {**meta["weights"], "sha256": sha256_file(weights), "bytes": weights.stat().st_size}
        meta["derived_from"] = {"version": base_version, "note": "fine-tuned by self-critical sequence training (captioning.scst)"}
        if "decoding" in meta:
            meta["decoding"] = {k: v for k, v in meta["decoding"].items() if k in ("beam_width", "length_alpha", "evidence_bias")}
        inherited = f"inherited from {base_version} (refit with evaluate_captioner --tune --save-tuning)"
        for key, field in (("reranking", "chosen_on"), ("confidence", "fitted_on")):
            if key in meta:
                meta[key] = {**meta[key], field: inherited}
        meta["scst"] = scst
        (tmp / META_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return output
