"""``manage.py scst_captioner``: fine-tune a captioner by self-critical sequence training (captioning.scst).

Example (as the flickr8k-v4-scst run: 8 epochs of 1500 images, then the mean of epochs 3-5)::

    python manage.py scst_captioner --init-from captioning/models/flickr8k-v4 \\
        --output var/models-scst/flickr8k-v4-scst --work-dir var/train/flickr8k-v4-scst \\
        --epochs 8 --images-per-epoch 1500 --learning-rate 5e-5 --xe-weight 0.1 --xe-captions 2 --deadline 23:50
    python manage.py scst_captioner ... --resume --average 3,4,5   # export the checkpoint average

``--resume`` continues after the last finished epoch (weights and Adam state), with the options
given now (e.g. another learning rate).

Features are read from the training feature cache (``train_captioner`` / the dataset caching
fills it); images without cached features are an error, not a reason to run InceptionV3.
"""

from __future__ import annotations

import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from captioning import features as feature_store
from captioning.evaluation import load_split
from captioning.files import ModelFileError
from captioning.management.commands.train_captioner import Command as TrainCommand
from captioning.management.training_photos import default_data_dir
from captioning.scst import SELECT_BY, ScstConfig, ScstRun, run_scst


class Command(BaseCommand):
    help = "Fine-tune a trained captioner with the CIDEr-D reward of sampled captions (self-critical training)."

    def add_arguments(self, parser):
        default_data = default_data_dir()
        parser.add_argument("--data-dir", default=str(default_data), help="captions.txt, train.txt, dev.txt, images/")
        parser.add_argument("--init-from", required=True, metavar="MODEL_DIR", help="the model directory to fine-tune")
        parser.add_argument("--output", required=True, help="model directory to write (a copy of --init-from with the new weights)")
        parser.add_argument("--model-version", default=None, help="version in meta.json (default: <init version>-scst)")
        parser.add_argument("--work-dir", default=None, help="checkpoints and state.json (default var/train/<version>)")
        parser.add_argument("--feature-cache", default=None, help="feature cache (default: the training cache of the data set)")
        parser.add_argument("--epochs", type=int, default=3)
        parser.add_argument("--images-per-epoch", type=int, default=None, help="training images per epoch (default: all)")
        parser.add_argument("--batch-size", type=int, default=16, help="images per update")
        parser.add_argument("--samples", type=int, default=5, help="sampled captions per image (>= 2)")
        parser.add_argument("--learning-rate", type=float, default=5e-5)
        parser.add_argument("--xe-weight", type=float, default=0.2, help="weight of the cross-entropy on the human captions")
        parser.add_argument("--xe-captions", type=int, default=None, help="human captions per image in that term (default: all)")
        parser.add_argument(
            "--chair-weight", type=float, default=0.0,
            help="reward penalty per object group a sampled caption names that none of the photo's captions names (CHAIR's groups)",
        )
        parser.add_argument("--no-end-token-reward", action="store_true", help="score captions without their <end> token")
        parser.add_argument("--seed", type=int, default=1234)
        parser.add_argument("--deadline", help="UTC time HH:MM or unix seconds; no epoch starts that would end later")
        parser.add_argument("--limit", type=int, default=None, help="smoke: only the first N train and dev images")
        parser.add_argument(
            "--average", default="", metavar="EPOCHS",
            help="comma-separated epochs whose mean weights are also scored (checkpoint averaging); exported when better on dev",
        )
        parser.add_argument(
            "--select-by", choices=SELECT_BY, default="CIDEr-D",
            help="the greedy dev figure that picks the exported epoch (CIDEr-D-CHAIR-i: CIDEr-D minus CHAIR-i)",
        )
        parser.add_argument("--resume", action="store_true", help="continue after the last epoch in --work-dir")

    def handle(self, *args, **opts):
        if opts["chair_weight"] < 0:
            raise CommandError("--chair-weight must be at least 0")
        if opts["samples"] < 2:
            raise CommandError("--samples must be at least 2 (the baseline is the other samples' mean reward)")
        try:
            average = tuple(int(e) for e in opts["average"].split(",") if e.strip())
        except ValueError:
            raise CommandError(f"--average takes comma-separated epoch numbers, not {opts['average']!r}") from None
        data_dir = Path(opts["data_dir"])
        try:
            train_names, train = load_split(data_dir, "train")
            dev_names, dev = load_split(data_dir, "dev")
        except (OSError, ValueError) as exc:
            raise CommandError(f"cannot read the data set: {exc}") from exc
        if opts["limit"]:
            train_names, dev_names = train_names[: opts["limit"]], dev_names[: opts["limit"]]
        cache_dir = Path(opts["feature_cache"] or feature_store.default_cache_dir(Path(settings.BASE_DIR) / "var", data_dir / "images"))
        missing = [n for n in train_names + dev_names if not feature_store.cache_path(cache_dir, n).is_file()]
        if missing:
            raise CommandError(f"{len(missing)} images have no cached features in {cache_dir}, e.g. {missing[0]}")
        init_from = Path(opts["init_from"])
        version = opts["model_version"] or f"{init_from.resolve().name}-scst"
        run = ScstRun(
            init_from=init_from,
            output=Path(opts["output"]),
            work_dir=Path(opts["work_dir"] or Path(settings.BASE_DIR) / "var" / "train" / version),
            cache_dir=cache_dir,
            train={n: train[n] for n in train_names},
            dev={n: dev[n] for n in dev_names},
            config=ScstConfig(
                epochs=opts["epochs"],
                images_per_epoch=opts["images_per_epoch"],
                batch_images=opts["batch_size"],
                samples=opts["samples"],
                learning_rate=opts["learning_rate"],
                xe_weight=opts["xe_weight"],
                xe_captions=opts["xe_captions"],
                chair_weight=opts["chair_weight"],
                end_token_reward=not opts["no_end_token_reward"],
                seed=opts["seed"],
                deadline=TrainCommand._deadline(opts["deadline"]),
                average=average,
                select_by=opts["select_by"],
            ),
            version=version,
            resume=opts["resume"],
        )
        try:
            output = run_scst(run, log=self.log)
        except (ModelFileError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        self.log(f"wrote {output}")

    def log(self, msg: str) -> None:
        self.stdout.write(f"[{time.strftime('%H:%M:%S')}] {msg}")
        self.stdout.flush()
