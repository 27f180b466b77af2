"""``manage.py fit_fingerprint``: fit the visual-fingerprint projection of a model directory."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from captioning import training
from captioning.fingerprints import DEFAULT_DIMENSIONS
from captioning.management.training_photos import add_model_part_arguments, cached_training_photos


class Command(BaseCommand):
    help = "Fit the fingerprint projection (PCA of pooled InceptionV3 features) on training photos and install it."

    def add_arguments(self, parser):
        add_model_part_arguments(parser, data_help="train.txt, images/")
        parser.add_argument("--limit", type=int, default=None, help="only the first N training photos")
        parser.add_argument("--dimensions", type=int, default=DEFAULT_DIMENSIONS)

    def handle(self, *args, **opts):
        names, _, cache_dir = cached_training_photos(opts, limit=opts["limit"], log=self.stderr.write)
        try:
            training.install_fingerprint_projection(
                opts["model_dir"] or settings.IMAGESEARCH_MODEL_DIR, names, cache_dir,
                dimensions=opts["dimensions"], log=self.stdout.write,
            )
        except (OSError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
