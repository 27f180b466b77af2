"""``manage.py evaluate_captioner``: BLEU/METEOR/ROUGE-L/CIDEr/CIDEr-D/CHAIR and degenerate share on a split.

Prints a table, writes the full report as JSON (``--output``) and attention plots of a few images.
``--tune`` tries the visual-evidence reranking settings and calibrates the confidence
(captioning.evaluation.tune); ``--save-tuning`` records both in the model's meta.json.
"""

import json
import sys
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Caption a data split (default: Flickr8k dev) and score it with the COCO caption metrics."

    def add_arguments(self, parser):
        default_data = Path(settings.BASE_DIR).parent / "shared" / "datasets" / "flickr8k"
        parser.add_argument("--data-dir", default=str(default_data), help="captions.txt, <split>.txt, images/")
        parser.add_argument("--split", default="dev", help="split file name without .txt (default: dev)")
        parser.add_argument("--limit", type=int, default=None, help="score only the first N images")
        parser.add_argument("--beam", type=int, default=None, help="beam width (1 = greedy; default: settings)")
        parser.add_argument("--length-alpha", type=float, default=None, help="length normalisation exponent")
        parser.add_argument("--model-dir", default=None, help="model directory (default: settings)")
        parser.add_argument("--feature-dir", default=None, help="converted InceptionV3 weights (default: settings)")
        parser.add_argument("--cache-dir", default=None, help="feature cache (default: the training cache)")
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
            help="with --tune: record the best reranking and the confidence in meta.json, the reliability diagram beside it",
        )

    def handle(self, *args, **opts):
        from captioning import evaluation
        from captioning import features as feature_store
        from captioning.inference import ImageCaptioner

        data_dir = Path(opts["data_dir"])
        if opts["beam"] is not None and opts["beam"] < 1:
            raise CommandError("--beam must be at least 1")
        if opts["save_tuning"] and not opts["tune"]:
            raise CommandError("--save-tuning needs --tune")
        try:
            names, references = evaluation.load_split(data_dir, opts["split"])
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if opts["limit"]:
            names = names[: opts["limit"]]
        model_dir = Path(opts["model_dir"] or settings.IMAGESEARCH_MODEL_DIR)
        feature_dir = Path(opts["feature_dir"] or settings.IMAGESEARCH_FEATURE_DIR)
        try:
            captioner = ImageCaptioner.from_dirs(
                model_dir,
                feature_dir,
                beam_width=opts["beam"] or settings.IMAGESEARCH_BEAM_WIDTH,
                length_alpha=settings.IMAGESEARCH_LENGTH_ALPHA if opts["length_alpha"] is None else opts["length_alpha"],
                batch_size=opts["batch_size"],
            )
        except (OSError, ValueError) as exc:
            raise CommandError(f"cannot load the captioner: {exc}") from exc
        # The cache that train_captioner fills.
        cache_dir = Path(opts["cache_dir"] or feature_store.default_cache_dir(Path(settings.BASE_DIR) / "var", data_dir / "images"))
        cached = sum(feature_store.cache_path(cache_dir, n).is_file() for n in names)
        self.stderr.write(f"{len(names)} {opts['split']} images, {cached} with cached features in {cache_dir}")

        from tqdm import tqdm

        if opts["tune"]:
            return self._tune(captioner, names, references, data_dir, cache_dir, model_dir, opts)
        with tqdm(total=len(names), desc="captioning", unit="img", file=sys.stderr) as bar:
            report, results = evaluation.evaluate(
                captioner,
                names,
                references,
                data_dir / "images",
                cache_dir=cache_dir,
                meteor=not opts["no_meteor"],
                progress=bar.update,
            )
        report.update(split=opts["split"], data_dir=str(data_dir), model_dir=str(model_dir))

        output = Path(
            opts["output"]
            or Path(settings.BASE_DIR) / "var" / "eval" / f"{captioner.version}-{opts['split']}-beam{captioner.beam_width}.json"
        )
        plots = []
        for name in names[: max(0, opts["plots"])]:
            path = output.with_name(f"{output.stem}-attention-{Path(name).stem}.png")
            plots.append(str(evaluation.plot_attention(data_dir / "images" / name, results[name], path)))
        report["attention_plots"] = plots
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

        self.stdout.write(evaluation.format_table(report))
        self.stdout.write(f"report: {output}")
        if opts["save_decoding"]:
            from captioning.storage import update_meta

            decoding = {
                "beam_width": captioner.beam_width,
                "length_alpha": captioner.length_alpha,
                "chosen_on": f"{data_dir.name}/{opts['split']} ({len(names)} images)",
                "scores": report["scores"],
            }
            update_meta(model_dir, decoding=decoding)
            self.stdout.write(f"decoding defaults saved in {model_dir}/meta.json: beam {captioner.beam_width}, length alpha {captioner.length_alpha}")
        for plot in plots:
            self.stdout.write(f"attention plot: {plot}")

    def _tune(self, captioner, names, references, data_dir, cache_dir, model_dir, opts):
        from tqdm import tqdm

        from captioning import evaluation

        with tqdm(total=len(names), desc="n-best", unit="img", file=sys.stderr) as bar:
            found = evaluation.n_best(captioner, names, data_dir / "images", cache_dir=cache_dir, progress=bar.update)
        try:
            tuned = evaluation.tune(captioner, found, references)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(evaluation.format_tries(tuned))
        if opts["save_tuning"]:
            chosen_on = f"{data_dir.name}/{opts['split']} ({len(names)} images), beam {captioner.beam_width}"
            plot = evaluation.save_tuning(model_dir, tuned, version=captioner.version, chosen_on=chosen_on)
            self.stdout.write(f"reranking and confidence saved in {model_dir}/meta.json; reliability diagram {plot}")
