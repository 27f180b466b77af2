"""``manage.py build_neighbours``: the training photos' concept vectors and captions for consensus reranking."""

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from captioning import evaluation, training
from captioning import features as feature_store
from captioning.consensus import DEFAULT_DIMENSIONS


class Command(BaseCommand):
    help = "Build neighbours.npz (captioning.consensus) of a model directory from the training photos' cached features and captions."

    def add_arguments(self, parser):
        default_data = Path(settings.BASE_DIR).parent / "shared" / "datasets" / "flickr8k"
        parser.add_argument("--data-dir", default=str(default_data), help="captions.txt, train.txt, images/")
        parser.add_argument("--model-dir", default=None, help="model directory to install it in (default: settings)")
        parser.add_argument("--cache-dir", default=None, help="feature cache (default: the training cache)")
        parser.add_argument("--dimensions", type=int, default=DEFAULT_DIMENSIONS,
                            help="principal directions of the concept vectors kept (0: all)")

    def handle(self, *args, **opts):
        data_dir = Path(opts["data_dir"])
        try:
            names, captions = evaluation.load_split(data_dir, "train")
        except (OSError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        cache_dir = Path(opts["cache_dir"] or feature_store.default_cache_dir(Path(settings.BASE_DIR) / "var", data_dir / "images"))
        feature_store.cache_features([(n, data_dir / "images" / n) for n in names], cache_dir,
                                     feature_dir=settings.IMAGESEARCH_FEATURE_DIR, log=self.stderr.write)
        try:
            training.install_neighbour_captions(
                opts["model_dir"] or settings.IMAGESEARCH_MODEL_DIR, {n: captions[n] for n in names}, cache_dir,
                dimensions=opts["dimensions"] or None, data_name=f"{data_dir.name}/train", log=self.stdout.write,
            )
        except (OSError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
