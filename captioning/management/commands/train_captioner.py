"""Train the attention captioner on cached InceptionV3 features and export a model directory.

Example (the bundled model)::

    python manage.py train_captioner --captions ../shared/datasets/flickr8k/captions.txt \\
        --format flickr8k --images ../shared/datasets/flickr8k/images \\
        --train-split ../shared/datasets/flickr8k/train.txt \\
        --dev-split ../shared/datasets/flickr8k/dev.txt \\
        --flip-augment --state-from-image --dropout 0.5 \\
        --model-version flickr8k-v2 --output captioning/models/flickr8k-v2 --epochs 30

Work files (feature cache, checkpoints, logs) go under ``var/``; ``--resume`` continues from the
newest checkpoint of the same ``--work-dir``; ``--export-only`` exports the best checkpoint so
far (e.g. while a run is still going) without training.  ``--init-from MODEL_DIR`` fine-tunes a
saved model (its vocabulary and sizes); ``--flip-augment`` also trains on mirrored photos.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Train the Show-Attend-Tell captioner (teacher forcing) and write a model directory."

    def add_arguments(self, parser):
        parser.add_argument("--captions", required=True, help="caption file")
        parser.add_argument("--format", default="flickr8k", choices=["flickr8k", "coco", "tsv"])
        parser.add_argument("--images", required=True, help="directory holding the image files")
        parser.add_argument("--train-split", help="file of training image names (default: 80%% of images)")
        parser.add_argument("--dev-split", help="file of validation image names (default: the other 20%%)")
        parser.add_argument("--model-version", default="flickr8k-v2", help="model version name written to meta.json")
        parser.add_argument("--output", help="model directory to write (default captioning/models/<version>)")
        parser.add_argument("--work-dir", help="checkpoints and logs (default var/train/<version>)")
        parser.add_argument("--feature-cache", help="feature .npy cache (default var/features/<extractor>/<images dir name>)")
        parser.add_argument("--vocab-min-count", type=int, default=5, help="keep words seen at least N times (0 = all)")
        parser.add_argument("--vocab-max-words", type=int, default=None, help="keep at most the K most frequent words")
        parser.add_argument("--max-length", type=int, default=32, help="max caption tokens incl. <start>/<end>")
        parser.add_argument("--embedding-dim", type=int, default=256)
        parser.add_argument("--units", type=int, default=512)
        parser.add_argument("--attention-units", type=int, default=512)
        parser.add_argument("--dropout", type=float, default=0.4)
        parser.add_argument(
            "--state-from-image", action="store_true", help="initial GRU state from the mean encoded image (the paper's init)"
        )
        parser.add_argument("--epochs", type=int, default=20)
        parser.add_argument("--batch-size", type=int, default=16, help="IMAGES per batch (each with all its captions)")
        parser.add_argument("--learning-rate", type=float, default=1e-3)
        parser.add_argument("--lr-decay", type=float, default=0.9, help="learning-rate factor per epoch")
        parser.add_argument("--attention-reg", type=float, default=1.0, help="doubly stochastic attention lambda (0 = off)")
        parser.add_argument("--patience", type=int, default=3, help="early stopping patience in epochs")
        parser.add_argument("--seed", type=int, default=1234)
        parser.add_argument("--deadline", help="UTC time HH:MM (today/tomorrow) or unix seconds; no epoch starts that would end later")
        parser.add_argument("--feature-batch", type=int, default=16, help="images per InceptionV3 batch while caching")
        parser.add_argument("--max-train-batches", type=int, default=None, help="profile/smoke: batches per epoch")
        parser.add_argument("--max-images", type=int, default=None, help="smoke: use only the first N train/dev images")
        parser.add_argument(
            "--flip-augment", action="store_true",
            help="also cache mirrored training images and train on each image or its mirror (left/right swapped)",
        )
        parser.add_argument(
            "--init-from", metavar="MODEL_DIR",
            help="start from a saved model's weights and vocabulary (fine-tuning; its sizes override the size options)",
        )
        parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --work-dir")
        parser.add_argument("--export-only", action="store_true", help="only export the best checkpoint of --work-dir")
        parser.add_argument("--set-current", action="store_true", help="point captioning/models/current at the output")
        parser.add_argument("--no-progress", action="store_true")

    # ------------------------------------------------------------------ helpers
    def log(self, msg: str) -> None:
        self.stdout.write(f"[{time.strftime('%H:%M:%S')}] {msg}")
        self.stdout.flush()

    @staticmethod
    def _deadline(value):
        if not value:
            return None
        if ":" not in value:
            return float(value)
        import datetime as dt

        hh, mm = (int(x) for x in value.split(":"))
        now = dt.datetime.now(dt.timezone.utc)
        target = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
        if target < now - dt.timedelta(hours=1):
            target += dt.timedelta(days=1)
        return target.timestamp()

    def handle(self, *args, **opts):
        import dataclasses

        from captioning import datasets, features
        from captioning.model import ModelConfig, build_captioner
        from captioning.storage import ModelFileError, load_model_dir, save_model_dir
        from captioning.training import CaptionSet, Trainer, TrainConfig
        from captioning.vocabulary import Tokenizer

        base = Path(settings.BASE_DIR)
        version = opts["model_version"]
        output = Path(opts["output"] or base / "captioning" / "models" / version)
        work_dir = Path(opts["work_dir"] or base / "var" / "train" / version)
        work_dir.mkdir(parents=True, exist_ok=True)
        images_dir = Path(opts["images"])
        feature_dir = Path(settings.IMAGESEARCH_FEATURE_DIR)
        fx_id = features.FEATURE_EXTRACTOR_ID
        cache_dir = Path(opts["feature_cache"] or features.default_cache_dir(base / "var", images_dir))
        flipped_cache_dir = cache_dir.with_name(cache_dir.name + "-flipped")

        # ---- data and vocabulary
        try:
            captions = datasets.read_captions(opts["captions"], opts["format"])
            train_names, dev_names = datasets.split_images(
                captions, train_split=opts["train_split"], dev_split=opts["dev_split"], seed=opts["seed"]
            )
        except datasets.DatasetError as exc:
            raise CommandError(str(exc)) from exc
        if opts["max_images"]:
            train_names, dev_names = train_names[: opts["max_images"]], dev_names[: max(1, opts["max_images"] // 4)]
        self.log(f"data: {datasets.describe(captions, train_names)} train, {datasets.describe(captions, dev_names)} dev")
        vocab_path = work_dir / "vocabulary.json"
        init = None
        if opts["init_from"]:
            try:
                init = load_model_dir(opts["init_from"], expected_feature_extractor=fx_id)
            except ModelFileError as exc:
                raise CommandError(str(exc)) from exc
            tokenizer = init.tokenizer
            tokenizer.save(vocab_path)
            self.log(f"starting from {init.path} ({init.version}): {tokenizer.size} tokens")
        elif (opts["resume"] or opts["export_only"]) and vocab_path.is_file():
            tokenizer = Tokenizer.load(vocab_path)
            self.log(f"vocabulary from {vocab_path}: {tokenizer.size} tokens")
        else:
            min_count = opts["vocab_min_count"] or None
            tokenizer = Tokenizer.build(
                (c for n in train_names for c in captions[n]), min_count=min_count, max_words=opts["vocab_max_words"]
            )
            tokenizer.save(vocab_path)
            self.log(f"vocabulary: {tokenizer.size} tokens (min count {min_count}, max words {opts['vocab_max_words']})")

        if init is not None:
            config = dataclasses.replace(init.config, dropout=opts["dropout"])
        else:
            config = ModelConfig(
                vocab_size=tokenizer.size,
                embedding_dim=opts["embedding_dim"],
                units=opts["units"],
                attention_units=opts["attention_units"],
                dropout=opts["dropout"],
                max_length=opts["max_length"],
                state_from_image=opts["state_from_image"],
            )
        tcfg = TrainConfig(
            epochs=opts["epochs"],
            batch_images=opts["batch_size"],
            learning_rate=opts["learning_rate"],
            lr_decay=opts["lr_decay"],
            attention_reg=opts["attention_reg"],
            patience=opts["patience"],
            seed=opts["seed"],
            max_length=config.max_length,
            max_train_batches=opts["max_train_batches"],
            deadline=self._deadline(opts["deadline"]),
        )
        (work_dir / "run_config.json").write_text(
            json.dumps({"model": config.to_dict(), "train": tcfg.to_dict(), "args": {k: v for k, v in opts.items() if isinstance(v, (str, int, float, bool, type(None)))}}, indent=1)
        )
        model = build_captioner(config, seed=opts["seed"])
        if init is not None:
            model.set_weights(init.model.get_weights())
        trainer = Trainer(model, tcfg, work_dir, log=self.log)
        fx_meta = features.read_feature_meta(feature_dir) or {}

        if not opts["export_only"]:
            # ---- features
            fx_meta = features.ensure_feature_weights(feature_dir, log=self.log)
            failed = set()
            caches = [(cache_dir, list(train_names) + list(dev_names), False)]
            if opts["flip_augment"]:
                caches.append((flipped_cache_dir, list(train_names), True))
            for directory, names, flip in caches:
                self.log(f"caching {'mirrored ' if flip else ''}features of {len(names)} images in {directory} ...")
                stats = features.cache_features(
                    [(n, images_dir / n) for n in names], directory, feature_dir=feature_dir, flip=flip,
                    batch_size=opts["feature_batch"], progress=not opts["no_progress"], log=self.log,
                )
                failed.update(stats["failed"])
                self.log(f"features: {stats['written']} new, {stats['cached_before']} cached, {len(stats['failed'])} failed")
            train_names = [n for n in train_names if n not in failed]
            dev_names = [n for n in dev_names if n not in failed]
            t0 = time.time()
            mirrored = features.load_features(flipped_cache_dir, train_names) if opts["flip_augment"] else None
            train_set = CaptionSet.build(
                train_names, features.load_features(cache_dir, train_names), captions, tokenizer, config.max_length, mirrored=mirrored
            )
            dev_set = CaptionSet.build(dev_names, features.load_features(cache_dir, dev_names), captions, tokenizer, config.max_length)
            self.log(f"loaded features in {time.time() - t0:.0f} s ({train_set.features.nbytes / 2**30:.2f} GiB train)")

            # ---- training
            trainer.fit(train_set, dev_set, resume=opts["resume"], progress=not opts["no_progress"])
        else:
            latest = trainer.latest_checkpoint()
            if latest is None:
                raise CommandError(f"no checkpoint in {work_dir}")
            trainer.restore(latest)

        # ---- export the best epoch
        best = trainer.best_checkpoint()
        if best is None:
            raise CommandError("no checkpoint to export")
        model.load_weights(str(best / "model.weights.h5"))
        best_rec = next((h for h in trainer.history if h["epoch"] == trainer.best_epoch), {})
        training_info = {
            "data": {
                "captions": os.path.abspath(opts["captions"]),
                "format": opts["format"],
                "train_split": opts["train_split"],
                "dev_split": opts["dev_split"],
                "train_images": len(train_names),
                "dev_images": len(dev_names),
            },
            "flip_augment": bool(opts["flip_augment"]),
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
            "weights_file": features.FEATURE_WEIGHTS_NAME,
        }
        card = output / "MODEL_CARD.md"
        card_text = card.read_text(encoding="utf-8") if card.is_file() else None
        save_model_dir(output, model, tokenizer, version=version, feature_extractor=fx_info, training=training_info, metrics=metrics, overwrite=True)
        if card_text is not None:
            card.write_text(card_text, encoding="utf-8")
        for name in ("loss_curve.png", "train_log.json"):
            if (work_dir / name).is_file():
                shutil.copy2(work_dir / name, output / name)
        self.log(f"exported epoch {trainer.best_epoch} (val loss {metrics['dev_loss']}) to {output}")
        if opts["set_current"]:
            current = output.parent / "current"
            if current.is_symlink() or current.is_file():
                current.unlink()
            current.symlink_to(output.name)
            self.log(f"{current} -> {output.name}")
