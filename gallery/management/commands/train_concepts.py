"""``manage.py train_concepts``: train the visual concept-word head of a model directory.

The concept words are search-index terms (a photo's words as the index analyses them), which is
why this glue lives in the gallery, the app that knows both the captioner and the index.
"""

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from captioning import evaluation, training
from captioning import features as feature_store
from captioning.management.training_photos import add_model_part_arguments, feature_cache_dir
from searchindex.index import tokens


def word_keys(caption: str):
    return [(surface, term) for surface, term, _, _ in tokens(caption)]


class Command(BaseCommand):
    help = "Train the concept-word head on the training split's captions and install it in the model directory."

    def add_arguments(self, parser):
        add_model_part_arguments(parser, data_help="captions.txt, train.txt, dev.txt, images/",
                                 model_help="model directory to install the head in (default: settings)")
        parser.add_argument("--min-images", type=int, default=10, help="concept words: used for at least N training images")
        parser.add_argument("--hidden", type=int, default=512)
        parser.add_argument("--any-caption", action="store_true",
                            help="targets: 1 when any caption uses the word (the first heads) instead of the share of captions using it")
        parser.add_argument("--no-linear-path", action="store_true", help="no linear path beside the hidden layer (the first heads)")
        parser.add_argument("--seed", type=int, default=1234)

    def handle(self, *args, **opts):
        data_dir = Path(opts["data_dir"])
        cache_dir = feature_cache_dir(opts)
        try:
            train_names, train = evaluation.load_split(data_dir, "train")
            dev_names, dev = evaluation.load_split(data_dir, "dev")
        except (OSError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        missing = [n for n in train_names + dev_names if not feature_store.cache_path(cache_dir, n).is_file()]
        if missing:
            raise CommandError(
                f"{len(missing)} images have no cached features in {cache_dir} (e.g. {missing[0]}); "
                "run train_captioner (it fills the cache) or pass --cache-dir"
            )
        try:
            training.install_concept_head(
                opts["model_dir"] or settings.IMAGESEARCH_MODEL_DIR, train, dev, cache_dir, word_keys,
                min_images=opts["min_images"], hidden=opts["hidden"], share=not opts["any_caption"],
                linear=not opts["no_linear_path"], seed=opts["seed"], log=self.stdout.write,
            )
        except (OSError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
