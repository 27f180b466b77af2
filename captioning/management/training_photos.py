"""What the management commands that train, fit or evaluate on Flickr8k share.

The data set lives beside the project (``../shared/datasets/flickr8k``); the commands that fit one
part of a model directory (fingerprint projection, neighbour captions, concept head) take the same
three options and read the training photos' features from the same cache, filling it first where
the command may run InceptionV3.
"""

from pathlib import Path

from django.conf import settings
from django.core.management.base import CommandError

from captioning import evaluation
from captioning import features as feature_store


def default_data_dir() -> Path:
    return Path(settings.BASE_DIR).parent / "shared" / "datasets" / "flickr8k"


def add_model_part_arguments(parser, *, data_help: str, model_help: str = "model directory to install it in (default: settings)") -> None:
    """--data-dir, --model-dir and --cache-dir of a command that fits a part of a model directory."""
    parser.add_argument("--data-dir", default=str(default_data_dir()), help=data_help)
    parser.add_argument("--model-dir", default=None, help=model_help)
    parser.add_argument("--cache-dir", default=None, help="feature cache (default: the training cache)")


def feature_cache_dir(opts: dict) -> Path:
    """--cache-dir, or the training cache of --data-dir's photos."""
    data_dir = Path(opts["data_dir"])
    return Path(opts["cache_dir"] or feature_store.default_cache_dir(Path(settings.BASE_DIR) / "var", data_dir / "images"))


def cached_training_photos(opts: dict, *, limit: int | None = None, log=print) -> tuple[list[str], dict[str, list[str]], Path]:
    """The training photos' names (the first ``limit``), their captions and the feature cache,
    every photo's features cached first (InceptionV3 runs for those missing)."""
    data_dir = Path(opts["data_dir"])
    try:
        names, captions = evaluation.load_split(data_dir, "train")
    except (OSError, ValueError) as exc:
        raise CommandError(str(exc)) from exc
    names = names[:limit] if limit else names
    cache_dir = feature_cache_dir(opts)
    feature_store.cache_features([(n, data_dir / "images" / n) for n in names], cache_dir,
                                 feature_dir=settings.IMAGESEARCH_FEATURE_DIR, log=log)
    return names, captions, cache_dir
