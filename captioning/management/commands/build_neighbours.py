"""``manage.py build_neighbours``: the training photos' concept vectors and captions for consensus reranking."""

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from captioning import training
from captioning.consensus import DEFAULT_DIMENSIONS
from captioning.management.training_photos import add_model_part_arguments, cached_training_photos


class Command(BaseCommand):
    help = "Build neighbours.npz (captioning.consensus) of a model directory from the training photos' cached features and captions."

    def add_arguments(self, parser):
        add_model_part_arguments(parser, data_help="captions.txt, train.txt, images/")
        parser.add_argument("--dimensions", type=int, default=DEFAULT_DIMENSIONS,
                            help="principal directions of the concept vectors kept (0: all)")

    def handle(self, *args, **opts):
        names, captions, cache_dir = cached_training_photos(opts, log=self.stderr.write)
        try:
            training.install_neighbour_captions(
                opts["model_dir"] or settings.IMAGESEARCH_MODEL_DIR, {n: captions[n] for n in names}, cache_dir,
                dimensions=opts["dimensions"] or None, data_name=f"{Path(opts['data_dir']).name}/train", log=self.stdout.write,
            )
        except (OSError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
