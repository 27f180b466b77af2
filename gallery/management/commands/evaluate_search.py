"""``manage.py evaluate_search``: search quality on a Flickr8k split (see gallery.search_quality)."""

import json
import sys
from dataclasses import replace
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from captioning import evaluation
from captioning import features as feature_store
from captioning.inference import ImageCaptioner
from captioning.management.training_photos import default_data_dir
from captioning.runtime import PRECISIONS
from captioning.storage import update_meta
from gallery import search_quality
from gallery.descriptions import SearchWeights

# The designs tried by --tune, on top of the model's recorded weights.
TUNING_GRID = {
    "alternatives": [0.5],
    "concepts": [8.0, 12.0, 16.0],
    "concept_power": [0.6, 0.75],
    "concept_min_probability": [0.001],
    "concept_top_k": [100, 200],
}
# --tune-objects: the object labels' weight and floor, on top of the model's recorded weights.
OBJECT_TUNING_GRID = {
    "objects": [0.0, 1.0, 2.0, 4.0, 8.0],
    "object_min_probability": [0.1, 0.2, 0.4],
}
# The fingerprint weights tried by --tune for search by photo, on top of the best of the grid.
FINGERPRINT_WEIGHTS = [0.0, 0.5, 1.0, 2.0, 4.0, 8.0]


def format_report(report: dict) -> str:
    rows = [("design", "R@1", "R@5", "R@10", "MRR", "word mAP", "P@10", "copy R@1", "copy R@5", "words only: copy R@1", "copy R@5")]
    for label, figures in report["designs"]:
        s, w = figures["sentence"], figures["word"]
        c, t = figures.get("resaved", {}), figures.get("resaved_text_only", {})
        rows.append((label, s["R@1"], s["R@5"], s["R@10"], s["MRR"], w["mAP"], w["P@10"],
                     c.get("R@1", "-"), c.get("R@5", "-"), t.get("R@1", "-"), t.get("R@5", "-")))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(v).rjust(widths[i]) if i else str(v).ljust(widths[i]) for i, v in enumerate(r)) for r in rows)


class Command(BaseCommand):
    help = "Measure search quality on a data split: sentence queries, word queries, re-saved copies."

    def add_arguments(self, parser):
        default_data = default_data_dir()
        parser.add_argument("--data-dir", default=str(default_data), help="captions.txt, <split>.txt, images/")
        parser.add_argument("--split", default="dev")
        parser.add_argument("--limit", type=int, default=None, help="only the first N photos of the split")
        parser.add_argument("--model-dir", default=None, help="model directory (default: settings)")
        parser.add_argument("--cache-dir", default=None, help="feature cache (default: the training cache; with int8 the one beside it)")
        parser.add_argument("--image-precision", choices=PRECISIONS, default="fp32",
                            help="InceptionV3's graph for features not yet cached (default: fp32, the reference)")
        parser.add_argument("--no-resaved", action="store_true", help="skip the re-saved copies (an InceptionV3 pass per photo)")
        parser.add_argument("--no-objects", action="store_true", help="describe without the ImageNet object labels")
        parser.add_argument("--tune", action="store_true", help="try the weighting grid and report the best designs")
        parser.add_argument("--tune-objects", action="store_true", help="try only the object labels' weights (on the recorded ones)")
        parser.add_argument("--save-weights", action="store_true", help="with --tune or --tune-objects: record the best weights in the model's meta.json")
        parser.add_argument("--json", action="store_true", help="print the report as JSON")

    def handle(self, *args, **opts):
        data_dir = Path(opts["data_dir"])
        if opts["tune"] and opts["tune_objects"]:
            raise CommandError("choose --tune or --tune-objects")
        if opts["save_weights"] and not (opts["tune"] or opts["tune_objects"]):
            raise CommandError("--save-weights needs --tune or --tune-objects")
        if opts["tune_objects"] and opts["no_objects"]:
            raise CommandError("--tune-objects needs the object labels (drop --no-objects)")
        try:
            names, references = evaluation.load_split(data_dir, opts["split"])
        except (OSError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        names = names[: opts["limit"]] if opts["limit"] else names
        references = {n: references[n] for n in names}
        model_dir = Path(opts["model_dir"] or settings.IMAGESEARCH_MODEL_DIR)
        try:
            captioner = ImageCaptioner.from_dirs(model_dir, settings.IMAGESEARCH_FEATURE_DIR, batch_size=32, image_precision=opts["image_precision"])
        except (OSError, ValueError) as exc:
            raise CommandError(f"cannot load the captioner: {exc}") from exc
        var = Path(settings.BASE_DIR) / "var"
        cache_dir = Path(opts["cache_dir"] or feature_store.default_cache_dir(var, data_dir / "images", opts["image_precision"]))
        class_dir = None if opts["no_objects"] else feature_store.default_class_cache_dir(var, data_dir / "images")
        from tqdm import tqdm

        log = sys.stderr
        photos = [(n, data_dir / "images" / n) for n in names]
        try:
            feature_store.cache_features(photos, cache_dir, feature_dir=settings.IMAGESEARCH_FEATURE_DIR, precision=opts["image_precision"], log=log.write)
            if class_dir:
                feature_store.cache_class_probabilities(photos, class_dir, feature_dir=settings.IMAGESEARCH_FEATURE_DIR, log=log.write)
        except ValueError as exc:  # ModelFileError: weights missing or damaged
            raise CommandError(str(exc)) from exc
        with tqdm(total=len(names), desc="describing", unit="img", file=log) as bar:
            descriptions = search_quality.describe_cached(captioner, names, cache_dir, class_dir=class_dir, progress=bar.update)
        resaved = None
        if not opts["no_resaved"]:
            resaved_dir = cache_dir.with_name(cache_dir.name + "-resaved")
            resaved_classes = class_dir.with_name(class_dir.name + "-resaved") if class_dir else None
            search_quality.cache_resaved_features(names, data_dir / "images", resaved_dir,
                                                  feature_dir=settings.IMAGESEARCH_FEATURE_DIR, class_dir=resaved_classes,
                                                  precision=opts["image_precision"])
            resaved = search_quality.describe_cached(captioner, names, resaved_dir, class_dir=resaved_classes)
        words = search_quality.word_queries(references)
        current = SearchWeights.from_meta(captioner.meta)
        designs = [
            ("one human caption (reference)", search_quality.evaluate_reference(references, words=words)),
            ("caption only", search_quality.evaluate_design(
                descriptions, references, SearchWeights(), words=words, resaved=resaved)),
            (f"model's weights ({captioner.version})", search_quality.evaluate_design(
                descriptions, references, current, words=words, resaved=resaved)),
        ]
        if current.objects > 0:
            designs.append(("model's weights, no object labels", search_quality.evaluate_design(
                descriptions, references, replace(current, objects=0.0), words=words, resaved=resaved)))
        report = {"split": opts["split"], "photos": len(names), "model": captioner.version,
                  "weights": current.to_dict(), "designs": designs}
        if resaved and captioner.fingerprint is not None:
            report["duplicate_calibration"] = search_quality.duplicate_threshold(descriptions, resaved)
        if opts["tune"] or opts["tune_objects"]:
            grid = OBJECT_TUNING_GRID if opts["tune_objects"] else TUNING_GRID
            tried = search_quality.tune(descriptions, references, words=words, resaved=resaved, base=current, grid=grid)
            report["tuning"] = [{"weights": w.to_dict(), **figures} for w, figures in tried]
            best, figures = tried[0]
            if "duplicate_calibration" in report:
                by_fingerprint = search_quality.tune_fingerprint(descriptions, resaved, best, values=FINGERPRINT_WEIGHTS)
                report["fingerprint_tuning"] = [{"weights": w.to_dict(), "resaved": f} for w, f in by_fingerprint]
                best = by_fingerprint[0][0]
                figures = search_quality.evaluate_design(descriptions, references, best, words=words, resaved=resaved)
            best = SearchWeights(**{**best.to_dict(), "weak_match_below": figures["weak_match_below"]})
            designs.append(("best of the tuning grid", figures))
            report["best_weights"] = best.to_dict()
            if opts["save_weights"]:
                update_meta(model_dir, search={**best.to_dict(), "chosen_on": f"{data_dir.name}/{opts['split']} ({len(names)} photos)",
                                               "figures": figures})
                self.stderr.write(f"weights saved in {model_dir}/meta.json: {best.to_dict()}")
        if opts["json"]:
            self.stdout.write(json.dumps(report, indent=2))
        else:
            self.stdout.write(format_report(report))
            if "duplicate_calibration" in report:
                self.stdout.write(f"copies by fingerprint: {report['duplicate_calibration']}")
            if "best_weights" in report:
                self.stdout.write(f"best weights: {report['best_weights']}")
