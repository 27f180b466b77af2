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

import datetime as dt
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from captioning import features
from captioning.datasets import DatasetError
from captioning.files import ModelFileError
from captioning.model import ModelConfig
from captioning.training import TrainConfig, TrainingError, TrainingRun, run_training


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
        hh, mm = (int(x) for x in value.split(":"))
        now = dt.datetime.now(dt.timezone.utc)
        target = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
        if target < now - dt.timedelta(hours=1):
            target += dt.timedelta(days=1)
        return target.timestamp()

    def handle(self, *args, **opts):
        base = Path(settings.BASE_DIR)
        version = opts["model_version"]
        images_dir = Path(opts["images"])
        run = TrainingRun(
            captions=opts["captions"],
            caption_format=opts["format"],
            images_dir=images_dir,
            train_split=opts["train_split"],
            dev_split=opts["dev_split"],
            version=version,
            output=Path(opts["output"] or base / "captioning" / "models" / version),
            work_dir=Path(opts["work_dir"] or base / "var" / "train" / version),
            feature_dir=Path(settings.IMAGESEARCH_FEATURE_DIR),
            cache_dir=Path(opts["feature_cache"] or features.default_cache_dir(base / "var", images_dir)),
            vocab_min_count=opts["vocab_min_count"],
            vocab_max_words=opts["vocab_max_words"],
            model=ModelConfig(
                vocab_size=0,  # set from the vocabulary
                embedding_dim=opts["embedding_dim"],
                units=opts["units"],
                attention_units=opts["attention_units"],
                dropout=opts["dropout"],
                max_length=opts["max_length"],
                state_from_image=opts["state_from_image"],
            ),
            train=TrainConfig(
                epochs=opts["epochs"],
                batch_images=opts["batch_size"],
                learning_rate=opts["learning_rate"],
                lr_decay=opts["lr_decay"],
                attention_reg=opts["attention_reg"],
                patience=opts["patience"],
                seed=opts["seed"],
                max_length=opts["max_length"],
                max_train_batches=opts["max_train_batches"],
                deadline=self._deadline(opts["deadline"]),
            ),
            feature_batch=opts["feature_batch"],
            max_images=opts["max_images"],
            flip_augment=opts["flip_augment"],
            init_from=opts["init_from"],
            resume=opts["resume"],
            export_only=opts["export_only"],
            set_current=opts["set_current"],
            progress=not opts["no_progress"],
            options={k: v for k, v in opts.items() if isinstance(v, (str, int, float, bool, type(None)))},
        )
        try:
            run_training(run, log=self.log)
        except (DatasetError, ModelFileError, TrainingError) as exc:
            raise CommandError(str(exc)) from exc
