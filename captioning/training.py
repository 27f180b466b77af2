"""Teacher-forced training of the captioner on cached InceptionV3 features.

Design choices for a 2-core CPU:

* A batch is a group of IMAGES with ALL their captions (e.g. 16 images x 5 captions = 80 rows).
  The dense encoder and the attention projection W1 run once per image and are gathered to the
  caption rows, which saves most of the encoder's cost (about a third of a step).
* Images are pooled by the mean length of their captions before batching, so rows in a batch
  have similar lengths; each batch is padded only to its own longest caption, and captions are
  capped at ``max_length`` tokens (``<start>``/``<end>`` included).
* The whole step (encoder, a ``tf.while_loop`` over time steps, loss, gradients, Adam update)
  is one ``tf.function`` with a relaxed input signature (no retracing per length).  A Python-
  unrolled loop and XLA were measured slower on this CPU.

Loss: masked cross-entropy (``<pad>`` targets ignored), plus the optional doubly stochastic
attention regulariser ``lambda * mean_b mean_l (1 - sum_t alpha_tl)^2`` (the paper's sum over
locations divided by L=64, so lambda=1 keeps it at the scale of the cross-entropy).

Plain Python + TensorFlow, no Django.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from . import concepts, consensus, datasets, fingerprints
from . import features as feature_store
from .files import atomic_directory, atomic_path, sha256_file
from .model import Captioner, ModelConfig, build_captioner
from .storage import CARD_NAME, load_model_dir, read_meta, resolve_model_dir, save_model_dir, update_meta
from .vocabulary import PAD_ID, Tokenizer, normalize_words


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_images: int = 16  # images per batch; rows = all their captions
    learning_rate: float = 1e-3
    lr_decay: float = 0.9  # multiplied in once per epoch
    clipnorm: float = 5.0
    attention_reg: float = 1.0  # lambda of the doubly stochastic regulariser (0 = off)
    patience: int = 3  # epochs without validation improvement before stopping
    min_delta: float = 1e-3
    seed: int = 1234
    max_length: int = 32
    sort_pool: int = 50  # batches per length-sorted pool
    keep_checkpoints: int = 2
    max_train_batches: int | None = None  # for profiling / smoke runs
    max_val_batches: int | None = None
    deadline: float | None = None  # unix time: no epoch is started that would end after it

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


MIRROR_SWAPS = (("left", "right"),)


def mirror_token_map(tokenizer: Tokenizer) -> np.ndarray:
    """Token id -> id of its mirror word ("left" <-> "right"), identity for every other word."""
    table = np.arange(tokenizer.size, dtype=np.int32)
    for a, b in MIRROR_SWAPS:
        ia, ib = tokenizer.word_index.get(a), tokenizer.word_index.get(b)
        if ia is not None and ib is not None:
            table[ia], table[ib] = ib, ia
    return table


@dataclass
class CaptionSet:
    """Features of some images plus their encoded captions.

    With ``mirrored`` (features of the horizontally flipped images), training draws each image
    as itself or as its mirror image, with "left" and "right" swapped in its captions: more
    distinct (image, caption) pairs against over-fitting, at no cost per epoch.  Batch indices
    ``i >= len(names)`` denote the mirror image of ``i - len(names)``.
    """

    names: list[str]
    features: np.ndarray  # (n_images, 64, 2048), float16 or float32
    captions: list[list[np.ndarray]]  # per image: int32 token arrays (<start> ... <end>)
    mirrored: np.ndarray | None = None  # (n_images, 64, 2048) features of the flipped images
    mirrored_captions: list[list[np.ndarray]] | None = None

    @property
    def n_captions(self) -> int:
        return sum(len(c) for c in self.captions)

    @classmethod
    def build(
        cls, names, features, captions_by_image: dict, tokenizer: Tokenizer, max_length: int, mirrored=None
    ) -> "CaptionSet":
        caps = [
            [np.asarray(tokenizer.encode(c, max_length=max_length), dtype=np.int32) for c in captions_by_image[n]]
            for n in names
        ]
        mirrored_caps = None
        if mirrored is not None:
            swap = mirror_token_map(tokenizer)
            mirrored_caps = [[swap[c] for c in image_caps] for image_caps in caps]
        return cls(list(names), features, caps, mirrored, mirrored_caps)

    def captions_of(self, index: int) -> list[np.ndarray]:
        n = len(self.names)
        return self.captions[index] if index < n else self.mirrored_captions[index - n]

    def features_of(self, indices: np.ndarray) -> np.ndarray:
        n = len(self.names)
        if self.mirrored is None or not (indices >= n).any():
            return self.features[indices]
        out = np.empty((len(indices), *self.features.shape[1:]), dtype=self.features.dtype)
        plain = indices < n
        out[plain] = self.features[indices[plain]]
        out[~plain] = self.mirrored[indices[~plain] - n]
        return out


def make_batches(data: CaptionSet, batch_images: int, rng: np.random.Generator | None, sort_pool: int = 50):
    """List of ``(image_indices, row_image, tokens)``: ``row_image[r]`` indexes ``image_indices``.

    ``rng=None`` gives a fixed order (validation).  Otherwise images are shuffled, pooled,
    sorted by mean caption length inside each pool, cut into batches, and the batches shuffled;
    where ``data.mirrored`` is set, each image is drawn as its mirror image with probability 1/2.
    """
    n = len(data.names)
    order = np.arange(n) if rng is None else rng.permutation(n)
    mean_len = np.array([np.mean([len(c) for c in caps]) for caps in data.captions])
    if rng is not None and data.mirrored is not None:
        order = order + n * (rng.random(n) < 0.5)
        mean_len = np.concatenate([mean_len, mean_len])
    pool = max(1, sort_pool) * batch_images
    batches = []
    for p in range(0, n, pool):
        chunk = order[p : p + pool]
        chunk = chunk[np.argsort(mean_len[chunk], kind="stable")]
        for b in range(0, len(chunk), batch_images):
            imgs = chunk[b : b + batch_images]
            rows = [(j, cap) for j, i in enumerate(imgs) for cap in data.captions_of(i)]
            width = max(len(cap) for _, cap in rows)
            tokens = np.full((len(rows), width), PAD_ID, dtype=np.int32)
            for r, (_, cap) in enumerate(rows):
                tokens[r, : len(cap)] = cap
            batches.append((imgs, np.array([j for j, _ in rows], dtype=np.int32), tokens))
    if rng is not None:
        perm = rng.permutation(len(batches))
        batches = [batches[i] for i in perm]
    return batches


def masked_cross_entropy(targets, logits):
    """Mean cross-entropy over non-pad targets; returns (mean, sum, count)."""
    mask = tf.cast(tf.not_equal(targets, PAD_ID), tf.float32)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=tf.cast(logits, tf.float32))
    total = tf.reduce_sum(ce * mask)
    count = tf.reduce_sum(mask)
    return total / tf.maximum(count, 1.0), total, count


def attention_regulariser(alphas, targets):
    """mean over rows and locations of (1 - sum_t alpha_t)^2, counting only real time steps."""
    mask = tf.cast(tf.not_equal(targets, PAD_ID), tf.float32)
    coverage = tf.reduce_sum(alphas * mask[..., None], axis=1)  # (B, L)
    return tf.reduce_mean(tf.square(1.0 - coverage))


def teacher_forced(model: Captioner, features, row_image, tokens, training: bool):
    """Logits (B, T-1, V) and attention (B, T-1, L) for decoder inputs tokens[:, :-1].

    Only the recurrence (attention + GRU) runs inside the ``tf.while_loop`` (AutoGraph ``for
    ... in tf.range``); the two output layers are applied afterwards to all (B*(T-1)) steps at
    once, as large matrix products, which is the same function as ``decode_step`` per step but
    much cheaper on a CPU.
    """
    enc, keys = model.encode(features, training=training)
    enc = tf.gather(enc, row_image)
    keys = tf.gather(keys, row_image)
    steps = tf.shape(tokens)[1] - 1
    state = model.initial_state(enc)
    out_ta = tf.TensorArray(model.compute_dtype, size=steps)
    ctx_ta = tf.TensorArray(model.compute_dtype, size=steps)
    emb_ta = tf.TensorArray(model.compute_dtype, size=steps)
    alpha_ta = tf.TensorArray(tf.float32, size=steps)
    for t in tf.range(steps):
        context, alpha = model.attention.attend(enc, keys, state)
        output, state, emb = model.decoder.recur(tokens[:, t], state, context, training=training)
        out_ta = out_ta.write(t, output)
        ctx_ta = ctx_ta.write(t, context)
        emb_ta = emb_ta.write(t, emb)
        alpha_ta = alpha_ta.write(t, tf.cast(alpha, tf.float32))
    outputs, contexts, embs = (tf.transpose(ta.stack(), [1, 0, 2]) for ta in (out_ta, ctx_ta, emb_ta))
    logits = model.decoder.project(outputs, contexts, embs, training=training)
    alphas = tf.transpose(alpha_ta.stack(), [1, 0, 2])
    return tf.cast(logits, tf.float32), alphas


class Trainer:
    """Fits a :class:`Captioner`; checkpoints every epoch under ``work_dir`` and can resume."""

    def __init__(self, model: Captioner, config: TrainConfig, work_dir: str | os.PathLike, log: Callable[[str], None] = print):
        self.model = model
        self.config = config
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.optimizer = keras.optimizers.Adam(learning_rate=config.learning_rate, clipnorm=config.clipnorm)
        self.optimizer.build(model.trainable_variables)
        self.history: list[dict] = []
        self.epoch = 0
        self.best_val = math.inf
        self.best_epoch = 0
        self.wait = 0
        self.train_seconds = 0.0
        spec = [
            tf.TensorSpec((None, None, None), tf.float16),
            tf.TensorSpec((None,), tf.int32),
            tf.TensorSpec((None, None), tf.int32),
        ]
        self._train_step = tf.function(self._train_step_impl, input_signature=spec)
        self._eval_step = tf.function(self._eval_step_impl, input_signature=spec)

    # ----------------------------------------------------------------- steps
    def _train_step_impl(self, features, row_image, tokens):
        lam = float(self.config.attention_reg)
        targets = tokens[:, 1:]
        with tf.GradientTape() as tape:
            logits, alphas = teacher_forced(self.model, features, row_image, tokens, training=True)
            ce, total, count = masked_cross_entropy(targets, logits)
            reg = attention_regulariser(alphas, targets) if lam else tf.constant(0.0)
            loss = ce + lam * reg
        variables = self.model.trainable_variables
        grads = tape.gradient(loss, variables)
        self.optimizer.apply_gradients(zip(grads, variables))
        return total, count, reg

    def _eval_step_impl(self, features, row_image, tokens):
        targets = tokens[:, 1:]
        logits, alphas = teacher_forced(self.model, features, row_image, tokens, training=False)
        _, total, count = masked_cross_entropy(targets, logits)
        return total, count, attention_regulariser(alphas, targets)

    @staticmethod
    def _inputs(data: CaptionSet, batch):
        imgs, row_image, tokens = batch
        feats = data.features_of(imgs)
        return tf.constant(np.asarray(feats, dtype=np.float16)), tf.constant(row_image), tf.constant(tokens)

    def evaluate(self, data: CaptionSet) -> dict:
        batches = make_batches(data, self.config.batch_images * 2, None, self.config.sort_pool)
        if self.config.max_val_batches:
            batches = batches[: self.config.max_val_batches]
        total = count = reg = 0.0
        for batch in batches:
            t, c, r = self._eval_step(*self._inputs(data, batch))
            total += float(t)
            count += float(c)
            reg += float(r) * len(batch[1])
        rows = sum(len(b[1]) for b in batches)
        return {"loss": total / max(count, 1.0), "attention_reg": reg / max(rows, 1), "tokens": int(count)}

    def train_epoch(self, data: CaptionSet, epoch: int, progress: bool = True) -> dict:
        rng = np.random.default_rng([self.config.seed, epoch])
        batches = make_batches(data, self.config.batch_images, rng, self.config.sort_pool)
        if self.config.max_train_batches:
            batches = batches[: self.config.max_train_batches]
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(batches), desc=f"epoch {epoch}", unit="batch", mininterval=20, dynamic_ncols=False, ncols=100)
        total = count = reg_sum = 0.0
        running = None
        t0 = time.time()
        for i, batch in enumerate(batches):
            t, c, r = self._train_step(*self._inputs(data, batch))
            t, c, r = float(t), float(c), float(r)
            if not math.isfinite(t):
                raise FloatingPointError(f"non-finite training loss at epoch {epoch}, batch {i}")
            total += t
            count += c
            reg_sum += r
            batch_loss = t / max(c, 1.0)
            running = batch_loss if running is None else 0.98 * running + 0.02 * batch_loss
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{running:.3f}", refresh=False)
        if bar is not None:
            bar.close()
        return {
            "loss": total / max(count, 1.0),
            "attention_reg": reg_sum / max(len(batches), 1),
            "batches": len(batches),
            "seconds": time.time() - t0,
        }

    # ----------------------------------------------------------------- checkpoints
    def _state(self) -> dict:
        return {
            "epoch": self.epoch,
            "best_val": self.best_val if math.isfinite(self.best_val) else None,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "train_seconds": self.train_seconds,
            "history": self.history,
            "config": self.config.to_dict(),
        }

    def save_checkpoint(self) -> Path:
        """``work_dir/checkpoints/epoch-NNN/`` (weights, optimizer, state), written atomically."""
        final = self.work_dir / "checkpoints" / f"epoch-{self.epoch:03d}"
        with atomic_directory(final) as tmp:
            self.model.save_weights(str(tmp / "model.weights.h5"))
            np.savez(tmp / "optimizer.npz", *[np.asarray(v.numpy()) for v in self.optimizer.variables])
            (tmp / "state.json").write_text(json.dumps(self._state(), indent=1))
        kept = sorted(p for p in final.parent.glob("epoch-*") if p.is_dir())
        for old in kept[: -max(1, self.config.keep_checkpoints)]:
            if old.name != f"epoch-{self.best_epoch:03d}":
                shutil.rmtree(old, ignore_errors=True)
        return final

    def latest_checkpoint(self) -> Path | None:
        root = self.work_dir / "checkpoints"
        kept = sorted(p for p in root.glob("epoch-*") if (p / "state.json").is_file())
        return kept[-1] if kept else None

    def best_checkpoint(self) -> Path | None:
        path = self.work_dir / "checkpoints" / f"epoch-{self.best_epoch:03d}"
        return path if (path / "model.weights.h5").is_file() else None

    def restore(self, path: Path) -> None:
        self.model.load_weights(str(path / "model.weights.h5"))
        with np.load(path / "optimizer.npz") as data:
            values = [data[f"arr_{i}"] for i in range(len(data.files))]
        if len(values) != len(self.optimizer.variables):
            raise ValueError(f"{path}: optimizer state has {len(values)} variables, expected {len(self.optimizer.variables)}")
        for var, value in zip(self.optimizer.variables, values):
            var.assign(value)
        state = json.loads((path / "state.json").read_text())
        self.epoch = state["epoch"]
        self.best_val = state["best_val"] if state["best_val"] is not None else math.inf
        self.best_epoch = state["best_epoch"]
        self.wait = state["wait"]
        self.train_seconds = state.get("train_seconds", 0.0)
        self.history = state["history"]
        self.log(f"resumed from {path} (epoch {self.epoch}, best val {self.best_val:.4f} at epoch {self.best_epoch})")

    # ----------------------------------------------------------------- the loop
    def fit(self, train: CaptionSet, val: CaptionSet, *, resume: bool = False, progress: bool = True) -> list[dict]:
        cfg = self.config
        if resume:
            ckpt = self.latest_checkpoint()
            if ckpt is None:
                self.log("no checkpoint to resume from; starting fresh")
            else:
                self.restore(ckpt)
        self.log(
            f"training on {len(train.names)} images / {train.n_captions} captions, "
            f"validating on {len(val.names)} images / {val.n_captions} captions"
        )
        while self.epoch < cfg.epochs:
            if self.wait >= cfg.patience:
                self.log(f"early stopping: no validation improvement for {self.wait} epochs")
                break
            if cfg.deadline and self.history:
                last = self.history[-1]
                needed = 1.1 * (last["train_seconds"] + last["val_seconds"])
                if time.time() + needed > cfg.deadline:
                    self.log(f"stopping before epoch {self.epoch + 1}: it would end after the deadline")
                    break
            epoch = self.epoch + 1
            lr = cfg.learning_rate * (cfg.lr_decay ** (epoch - 1))
            self.optimizer.learning_rate.assign(lr)
            tr = self.train_epoch(train, epoch, progress=progress)
            t0 = time.time()
            va = self.evaluate(val)
            val_seconds = time.time() - t0
            self.epoch = epoch
            self.train_seconds += tr["seconds"] + val_seconds
            improved = va["loss"] < self.best_val - cfg.min_delta
            if improved:
                self.best_val, self.best_epoch, self.wait = va["loss"], epoch, 0
            else:
                self.wait += 1
            record = {
                "epoch": epoch,
                "lr": lr,
                "train_loss": tr["loss"],
                "train_attention_reg": tr["attention_reg"],
                "val_loss": va["loss"],
                "val_perplexity": math.exp(min(va["loss"], 50.0)),
                "val_attention_reg": va["attention_reg"],
                "train_seconds": tr["seconds"],
                "val_seconds": val_seconds,
                "batches": tr["batches"],
                "best": improved,
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            self.history.append(record)
            ckpt = self.save_checkpoint()
            self.write_log()
            self.log(
                f"epoch {epoch}: train {tr['loss']:.4f} (reg {tr['attention_reg']:.4f}), val {va['loss']:.4f} "
                f"(ppl {record['val_perplexity']:.1f}){' *best*' if improved else ''}, "
                f"{tr['seconds']:.0f}+{val_seconds:.0f} s, lr {lr:.2e} -> {ckpt}"
            )
        return self.history

    def write_log(self) -> None:
        state = self._state()
        (self.work_dir / "train_log.json").write_text(json.dumps(state, indent=1))
        plot_losses(self.history, self.work_dir / "loss_curve.png")


def plot_losses(history: Sequence[dict], path: str | os.PathLike) -> None:
    """Train/validation cross-entropy per epoch as a PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="train cross-entropy")
    ax.plot(epochs, [h["val_loss"] for h in history], "s-", label="validation cross-entropy")
    best = [h for h in history if h.get("best")]
    if best:
        ax.axvline(best[-1]["epoch"], color="grey", linestyle=":", label=f"best (epoch {best[-1]['epoch']})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss per token")
    ax.set_title("captioner training")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp)
    plt.close(fig)


class TrainingError(ValueError):
    """A training run cannot go on (nothing to export); the message says why."""


@dataclass
class TrainingRun:
    """Everything one ``train_captioner`` run needs: data, output, model and training settings.

    ``model.vocab_size`` is ignored: it comes from the vocabulary built (or loaded) by the run.
    ``options`` are the command's options as given, recorded in ``run_config.json``.
    """

    captions: str
    caption_format: str
    images_dir: Path
    train_split: str | None
    dev_split: str | None
    version: str
    output: Path
    work_dir: Path
    feature_dir: Path
    cache_dir: Path
    model: ModelConfig
    train: TrainConfig
    vocab_min_count: int = 5
    vocab_max_words: int | None = None
    feature_batch: int = 16
    max_images: int | None = None
    flip_augment: bool = False
    init_from: str | None = None
    resume: bool = False
    export_only: bool = False
    set_current: bool = False
    progress: bool = True
    options: dict = dataclasses.field(default_factory=dict)


def _vocabulary(run: TrainingRun, captions, train_names, init, log) -> Tokenizer:
    """The run's vocabulary: the initial model's, the one of the run being resumed, or a new one."""
    vocab_path = run.work_dir / "vocabulary.json"
    if init is not None:
        tokenizer = init.tokenizer
        tokenizer.save(vocab_path)
        log(f"starting from {init.path} ({init.version}): {tokenizer.size} tokens")
    elif (run.resume or run.export_only) and vocab_path.is_file():
        tokenizer = Tokenizer.load(vocab_path)
        log(f"vocabulary from {vocab_path}: {tokenizer.size} tokens")
    else:
        min_count = run.vocab_min_count or None
        tokenizer = Tokenizer.build((c for n in train_names for c in captions[n]), min_count=min_count, max_words=run.vocab_max_words)
        tokenizer.save(vocab_path)
        log(f"vocabulary: {tokenizer.size} tokens (min count {min_count}, max words {run.vocab_max_words})")
    return tokenizer


def _cached_caption_sets(run: TrainingRun, captions, train_names, dev_names, tokenizer, max_length, log):
    """Cache the features of the run's images (and their mirrors) and load the two caption sets."""
    flipped_cache_dir = run.cache_dir.with_name(run.cache_dir.name + "-flipped")
    failed = set()
    caches = [(run.cache_dir, list(train_names) + list(dev_names), False)]
    if run.flip_augment:
        caches.append((flipped_cache_dir, list(train_names), True))
    for directory, names, flip in caches:
        log(f"caching {'mirrored ' if flip else ''}features of {len(names)} images in {directory} ...")
        stats = feature_store.cache_features(
            [(n, run.images_dir / n) for n in names], directory, feature_dir=run.feature_dir, flip=flip,
            batch_size=run.feature_batch, progress=run.progress, log=log,
        )
        failed.update(stats["failed"])
        log(f"features: {stats['written']} new, {stats['cached_before']} cached, {len(stats['failed'])} failed")
    train_names = [n for n in train_names if n not in failed]
    dev_names = [n for n in dev_names if n not in failed]
    t0 = time.time()
    mirrored = feature_store.load_features(flipped_cache_dir, train_names) if run.flip_augment else None
    train_set = CaptionSet.build(
        train_names, feature_store.load_features(run.cache_dir, train_names), captions, tokenizer, max_length, mirrored=mirrored
    )
    dev_set = CaptionSet.build(dev_names, feature_store.load_features(run.cache_dir, dev_names), captions, tokenizer, max_length)
    log(f"loaded features in {time.time() - t0:.0f} s ({train_set.features.nbytes / 2**30:.2f} GiB train)")
    return train_set, dev_set


def run_training(run: TrainingRun, log: Callable[[str], None] = print) -> Path:
    """Train (or resume, or only export) a captioner and write its model directory; returns it.

    Raises ``datasets.DatasetError`` / ``ModelFileError`` for bad inputs and :class:`TrainingError`
    when there is no checkpoint to export.
    """
    fx_id = feature_store.FEATURE_EXTRACTOR_ID
    run.work_dir.mkdir(parents=True, exist_ok=True)
    captions = datasets.read_captions(run.captions, run.caption_format)
    train_names, dev_names = datasets.split_images(
        captions, train_split=run.train_split, dev_split=run.dev_split, seed=run.train.seed
    )
    if run.max_images:
        train_names, dev_names = train_names[: run.max_images], dev_names[: max(1, run.max_images // 4)]
    log(f"data: {datasets.describe(captions, train_names)} train, {datasets.describe(captions, dev_names)} dev")
    init = load_model_dir(run.init_from, expected_feature_extractor=fx_id) if run.init_from else None
    tokenizer = _vocabulary(run, captions, train_names, init, log)
    if init is not None:
        config = dataclasses.replace(init.config, dropout=run.model.dropout)
    else:
        config = dataclasses.replace(run.model, vocab_size=tokenizer.size)
    tcfg = dataclasses.replace(run.train, max_length=config.max_length)
    (run.work_dir / "run_config.json").write_text(
        json.dumps({"model": config.to_dict(), "train": tcfg.to_dict(), "args": run.options}, indent=1)
    )
    model = build_captioner(config, seed=tcfg.seed)
    if init is not None:
        model.set_weights(init.model.get_weights())
    trainer = Trainer(model, tcfg, run.work_dir, log=log)
    fx_meta = feature_store.read_feature_meta(run.feature_dir) or {}

    if not run.export_only:
        fx_meta = feature_store.ensure_feature_weights(run.feature_dir, log=log)
        train_set, dev_set = _cached_caption_sets(run, captions, train_names, dev_names, tokenizer, config.max_length, log)
        train_names, dev_names = train_set.names, dev_set.names
        trainer.fit(train_set, dev_set, resume=run.resume, progress=run.progress)
    else:
        latest = trainer.latest_checkpoint()
        if latest is None:
            raise TrainingError(f"no checkpoint in {run.work_dir}")
        trainer.restore(latest)

    # ---- export the best epoch
    best = trainer.best_checkpoint()
    if best is None:
        raise TrainingError("no checkpoint to export")
    model.load_weights(str(best / "model.weights.h5"))
    best_rec = next((h for h in trainer.history if h["epoch"] == trainer.best_epoch), {})
    training_info = {
        "data": {
            "captions": os.path.abspath(run.captions),
            "format": run.caption_format,
            "train_split": run.train_split,
            "dev_split": run.dev_split,
            "train_images": len(train_names),
            "dev_images": len(dev_names),
        },
        "flip_augment": bool(run.flip_augment),
        "initialised_from": (
            {"version": init.version, "weights_sha256": init.meta["weights"].get("sha256"), "epochs": init.meta.get("training", {}).get("epochs_run")}
            if init is not None else None
        ),
        "epochs_run": trainer.epoch,
        "best_epoch": trainer.best_epoch,
        "train_seconds": round(trainer.train_seconds, 1),
        "params": tcfg.to_dict(),
        "history": trainer.history,
    }
    metrics = {"dev_loss": best_rec.get("val_loss"), "dev_perplexity": best_rec.get("val_perplexity"), "train_loss": best_rec.get("train_loss")}
    fx_info = {
        "id": fx_id,
        "source_package": fx_meta.get("source_package"),
        "source_sha256": fx_meta.get("source_sha256"),
        "weights_sha256": fx_meta.get("sha256"),
        "weights_file": feature_store.FEATURE_WEIGHTS_NAME,
    }
    output = run.output
    card = output / CARD_NAME
    card_text = card.read_text(encoding="utf-8") if card.is_file() else None
    save_model_dir(output, model, tokenizer, version=run.version, feature_extractor=fx_info, training=training_info, metrics=metrics, overwrite=True)
    if card_text is not None:
        card.write_text(card_text, encoding="utf-8")
    for name in ("loss_curve.png", "train_log.json"):
        if (run.work_dir / name).is_file():
            shutil.copy2(run.work_dir / name, output / name)
    log(f"exported epoch {trainer.best_epoch} (val loss {metrics['dev_loss']}) to {output}")
    if run.set_current:
        current = output.parent / "current"
        if current.is_symlink() or current.is_file():
            current.unlink()
        current.symlink_to(output.name)
        log(f"{current} -> {output.name}")
    return output


def install_concept_head(
    model_dir: str | os.PathLike,
    train: Mapping[str, Sequence[str]],
    dev: Mapping[str, Sequence[str]],
    cache_dir: str | os.PathLike,
    word_keys: concepts.WordKeys,
    *,
    min_images: int = 10,
    hidden: int = 512,
    share: bool = True,
    linear: bool = True,
    seed: int = 1234,
    log: Callable[[str], None] = print,
) -> dict:
    """Train a concept head on the training images' captions, score it on dev, install it in ``model_dir``.

    ``train`` / ``dev``: image name -> its human captions; features come from the cache. ``share``
    and ``linear``: the targets and the wide path of captioning.concepts (False, False: the first
    heads). The head is written as ``concepts.npz`` and recorded (SHA-256, report with dev figures)
    in meta.json ``concepts``. Returns that record.
    """
    model_dir = resolve_model_dir(model_dir)
    train_names, dev_names = list(train), list(dev)
    targets = concepts.concept_targets([train[n] for n in train_names], word_keys, min_images=min_images, share=share)
    dev_captions = [dev[n] for n in dev_names]
    dev_targets = concepts.concept_targets(dev_captions, word_keys, vocabulary=targets.keys, share=share)
    dev_used = (dev_targets.labels > 0).astype(np.float32)  # "any caption uses it": a share above 0
    log(f"{len(train_names)} training images, {targets.labels.shape[1]} concept words (used for >= {min_images} images)")
    head, report = concepts.train_concept_head(
        concepts.pooled_from_cache(cache_dir, train_names), targets, hidden=hidden, linear=linear, seed=seed, log=log
    )
    probabilities = head.probabilities(concepts.pooled_from_cache(cache_dir, dev_names))
    labels = dev_targets.labels
    top10 = np.argsort(-probabilities, axis=1)[:, :10]
    report["dev"] = {
        "images": len(dev_names),
        "bce": round(concepts.binary_cross_entropy(probabilities, labels), 5),
        # share of the 10 most probable words that some caption of the photo uses
        "precision_at_10": round(float(np.take_along_axis(dev_used, top10, axis=1).mean()), 4),
        "reliability": concepts.reliability(probabilities, labels),
    }
    report["min_images"] = min_images
    report["targets"] = "share of the captions using the word" if share else "any caption uses the word"
    path = head.save(model_dir / concepts.CONCEPTS_NAME)
    record = {"file": concepts.CONCEPTS_NAME, "sha256": sha256_file(path), "report": report}
    update_meta(model_dir, concepts=record)
    log(f"concept head saved: {path} (dev precision@10 {report['dev']['precision_at_10']:.3f}, BCE {report['dev']['bce']:.4f})")
    return record


def install_fingerprint_projection(
    model_dir: str | os.PathLike,
    train_names: Sequence[str],
    cache_dir: str | os.PathLike,
    *,
    dimensions: int = fingerprints.DEFAULT_DIMENSIONS,
    log: Callable[[str], None] = print,
) -> dict:
    """Fit the fingerprint projection (PCA) on training images' cached features, install it in ``model_dir``.

    Written as ``fingerprint.npz`` and recorded (SHA-256, dimensions, photos fitted on) in
    meta.json ``fingerprint``. Returns that record.
    """
    model_dir = resolve_model_dir(model_dir)
    names = list(train_names)
    rows = np.stack([fingerprints.signatures(feature_store.load_feature(cache_dir, n)[None])[0] for n in names])
    projection = fingerprints.fit_projection(rows, dimensions)
    path = projection.save(model_dir / fingerprints.FINGERPRINT_NAME)
    record = {
        "file": fingerprints.FINGERPRINT_NAME, "sha256": sha256_file(path), "dimensions": dimensions,
        "fitted_on": f"{len(names)} training photos (square-root mean of the InceptionV3 features, whitened PCA)",
    }
    update_meta(model_dir, fingerprint=record)
    log(f"fingerprint projection saved: {path} ({dimensions} dimensions, fitted on {len(names)} photos)")
    return record


def install_neighbour_captions(
    model_dir: str | os.PathLike,
    train_captions: Mapping[str, Sequence[str]],
    cache_dir: str | os.PathLike,
    *,
    dimensions: int | None = consensus.DEFAULT_DIMENSIONS,
    data_name: str = "flickr8k/train",
    log: Callable[[str], None] = print,
) -> dict:
    """Build the consensus-reranking neighbours (captioning.consensus) of a model directory from
    training photos' cached features and their captions; returns the meta.json ``neighbours`` record.

    The photos' concept vectors come from the model's own concept head, whose SHA-256 the record keeps.
    Written as ``neighbours.npz`` (atomically) and recorded in meta.json ``neighbours``.
    """
    model_dir = resolve_model_dir(model_dir)
    head_record = read_meta(model_dir).get("concepts")
    if not head_record:
        raise ValueError(f"model {model_dir} has no concept head: consensus neighbours are found with its probabilities")
    head = concepts.load_concept_head(model_dir / head_record.get("file", concepts.CONCEPTS_NAME), expected_sha256=head_record["sha256"])
    names = list(train_captions)
    probabilities = np.concatenate([
        head.probabilities(concepts.pooled_from_cache(cache_dir, names[i : i + 256])) for i in range(0, len(names), 256)
    ])
    captions = [[normalize_words(c) for c in train_captions[n]] for n in names]
    neighbours = consensus.build_neighbours(probabilities, captions, dimensions=dimensions)
    path = neighbours.save(model_dir / consensus.NEIGHBOURS_NAME)
    record = {
        "file": consensus.NEIGHBOURS_NAME, "sha256": sha256_file(path), "bytes": path.stat().st_size,
        "photos": neighbours.photos, "captions": len(neighbours.caption_starts) - 1, "dimensions": int(neighbours.keys.shape[1]),
        "concepts_sha256": head_record["sha256"],
        "data": f"{data_name}: the photos' human captions (Flickr8k: research use only, M. Hodosh et al. 2013)",
        "space": "square roots of the concept head's probabilities, unit length, uncentred PCA, float16",
    }
    update_meta(model_dir, neighbours=record)
    log(f"neighbour captions saved: {path} ({neighbours.photos} photos, {record['dimensions']} dimensions, {record['bytes']} bytes)")
    return record
