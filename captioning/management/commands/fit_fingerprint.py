"""``manage.py fit_fingerprint``: fit the visual-fingerprint projection of a model directory."""

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from captioning import evaluation, training
from captioning import features as feature_store
from captioning.fingerprints import DEFAULT_DIMENSIONS


class Command(BaseCommand):
    help = "Fit the fingerprint projection (PCA of pooled InceptionV3 features) on training photos and install it."

    def add_arguments(self, parser):
        default_data = Path(settings.BASE_DIR).parent / "shared" / "datasets" / "flickr8k"
        parser.add_argument("--data-dir", default=str(default_data), help="train.txt, images/")
        parser.add_argument("--model-dir", default=None, help="model directory to install it in (default: settings)")
        parser.add_argument("--cache-dir", default=None, help="feature cache (default: the training cache)")
        parser.add_argument("--limit", type=int, default=None, help="only the first N training photos")
        parser.add_argument("--dimensions", type=int, default=DEFAULT_DIMENSIONS)

    def handle(self, *args, **opts):
        data_dir = Path(opts["data_dir"])
        try:
            names, _ = evaluation.load_split(data_dir, "train")
        except (OSError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        names = names[: opts["limit"]] if opts["limit"] else names
        cache_dir = Path(opts["cache_dir"] or feature_store.default_cache_dir(Path(settings.BASE_DIR) / "var", data_dir / "images"))
        feature_store.cache_features([(n, data_dir / "images" / n) for n in names], cache_dir,
                                     feature_dir=settings.IMAGESEARCH_FEATURE_DIR, log=self.stderr.write)
        try:
            training.install_fingerprint_projection(
                opts["model_dir"] or settings.IMAGESEARCH_MODEL_DIR, names, cache_dir,
                dimensions=opts["dimensions"], log=self.stdout.write,
            )
        except (OSError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
