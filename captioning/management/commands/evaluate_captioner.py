"""``manage.py evaluate_captioner``: BLEU/METEOR/ROUGE-L/CIDEr/CIDEr-D/CHAIR and degenerate share on a split.

Prints a table, writes the full report as JSON (``--output``) and attention plots of a few images.
``--tune`` tries the visual-evidence reranking settings (with consensus reranking when the model has
neighbours.npz: ``--consensus-weights`` x ``--consensus-neighbours``) and calibrates the confidence
(captioning.evaluation.tune); ``--save-tuning`` records both in the model's meta.json.
The work is ``captioning.evaluation.run_evaluation``; this command only parses the arguments.
"""

import argparse
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from captioning import features as feature_store
from captioning.evaluation import CONSENSUS_NEIGHBOURS, CONSENSUS_WEIGHTS, EvaluationError, EvaluationRun, run_evaluation
from captioning.management.training_photos import default_data_dir
from captioning.runtime import PRECISIONS


def _numbers(kind):
    """An argparse type: comma-separated numbers of ``kind``."""
    def parse(text: str) -> list:
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc
    return parse


class Command(BaseCommand):
    help = "Caption a data split (default: Flickr8k dev) and score it with the COCO caption metrics."

    def add_arguments(self, parser):
        default_data = default_data_dir()
        parser.add_argument("--data-dir", default=str(default_data), help="captions.txt, <split>.txt, images/")
        parser.add_argument("--split", default="dev", help="split file name without .txt (default: dev)")
        parser.add_argument("--limit", type=int, default=None, help="score only the first N images")
        parser.add_argument("--beam", type=int, default=None, help="beam width (1 = greedy; default: settings)")
        parser.add_argument("--length-alpha", type=float, default=None, help="length normalisation exponent")
        parser.add_argument("--model-dir", default=None, help="model directory (default: settings)")
        parser.add_argument("--feature-dir", default=None, help="converted InceptionV3 weights (default: settings)")
        parser.add_argument("--cache-dir", default=None, help="feature cache (default: the training cache; with int8 the one beside it)")
        parser.add_argument("--image-precision", choices=PRECISIONS, default="fp32",
                            help="InceptionV3's graph for photos not in the cache (default: fp32, the reference)")
        parser.add_argument("--batch-size", type=int, default=32)
        parser.add_argument("--output", default=None, help="JSON report (default: var/eval/<version>-<split>-beam<N>.json)")
        parser.add_argument("--plots", type=int, default=3, help="attention plots to save (0 = none)")
        parser.add_argument("--no-meteor", action="store_true", help="skip METEOR (needs Java, slow)")
        parser.add_argument(
            "--save-decoding", action="store_true",
            help="record this beam width and length alpha in the model's meta.json as its tuned defaults",
        )
        parser.add_argument("--tune", action="store_true", help="try reranking settings and calibrate the confidence")
        parser.add_argument(
            "--save-tuning", action="store_true",
            help="with --tune: record the best reranking, evidence bias and the confidence in meta.json, the reliability diagram beside it",
        )
        parser.add_argument(
            "--bias-weights", type=_numbers(float), default=(), metavar="W,W,...",
            help="with --tune: evidence-bias weights of the search to try jointly with the reranking (0 = none; default: the model's own)",
        )
        parser.add_argument("--bias-floors", type=_numbers(float), default=(0.1, 0.3), metavar="F,F,...", help="with --bias-weights: the floors to try")
        parser.add_argument(
            "--max-chair-i", type=float, default=None,
            help="with --tune: a CHAIR-i target; among the settings meeting the targets, the highest CIDEr-D is chosen",
        )
        parser.add_argument("--min-bleu-4", type=float, default=None, help="with --tune: a BLEU-4 target (see --max-chair-i)")
        parser.add_argument(
            "--consensus-weights", type=_numbers(float), default=CONSENSUS_WEIGHTS,
            help="with --tune: consensus reranking weights to try, comma-separated (default: %(default)s)",
        )
        parser.add_argument(
            "--consensus-neighbours", type=_numbers(int), default=CONSENSUS_NEIGHBOURS,
            help="with --tune: numbers of neighbour photos to try, comma-separated (default: %(default)s)",
        )

    def handle(self, *args, **opts):
        base = Path(settings.BASE_DIR)
        data_dir = Path(opts["data_dir"])
        try:
            run = EvaluationRun(
                data_dir=data_dir,
                split=opts["split"],
                model_dir=Path(opts["model_dir"] or settings.IMAGESEARCH_MODEL_DIR),
                feature_dir=Path(opts["feature_dir"] or settings.IMAGESEARCH_FEATURE_DIR),
                cache_dir=Path(opts["cache_dir"] or feature_store.default_cache_dir(base / "var", data_dir / "images", opts["image_precision"])),
                image_precision=opts["image_precision"],
                report_dir=base / "var" / "eval",
                output=Path(opts["output"]) if opts["output"] else None,
                limit=opts["limit"],
                beam_width=opts["beam"] or settings.IMAGESEARCH_BEAM_WIDTH,
                length_alpha=settings.IMAGESEARCH_LENGTH_ALPHA if opts["length_alpha"] is None else opts["length_alpha"],
                batch_size=opts["batch_size"],
                plots=opts["plots"],
                meteor=not opts["no_meteor"],
                save_decoding=opts["save_decoding"],
                tune=opts["tune"],
                save_tuning=opts["save_tuning"],
                bias_weights=tuple(opts["bias_weights"]),
                bias_floors=tuple(opts["bias_floors"]),
                max_chair_i=opts["max_chair_i"],
                min_bleu_4=opts["min_bleu_4"],
                consensus_weights=tuple(opts["consensus_weights"]),
                consensus_neighbours=tuple(opts["consensus_neighbours"]),
            )
            run_evaluation(run, log=self.stdout.write)
        except EvaluationError as exc:
            raise CommandError(str(exc)) from exc
