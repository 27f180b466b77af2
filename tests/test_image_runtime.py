"""The image networks on ONNX Runtime: the Keras -> ONNX export, the InceptionV3 graph's agreement
with the TensorFlow reference on real photos, and the fallback to TensorFlow."""

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from captioning import features as feature_store
from captioning import inception, runtime
from captioning.files import ModelFileError

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

FLICKR_IMAGES = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "flickr8k" / "images"
REAL_PHOTOS = ["1000268201_693b08cb0e.jpg", "1001773457_577c3a7d70.jpg", "1002674143_1b742ab4b8.jpg"]
# The ONNX graph's InceptionV3 features may differ from TensorFlow's by at most this fraction of
# the largest feature of the batch (float32 sums in another order; measured about 1e-6).
PHOTO_TOLERANCE = 1e-4


def small_network():
    """One of each exported layer kind, with every padding: cheap, and random but fixed weights."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(3)
    inputs = keras.Input((33, 29, 3), name="image")
    x = layers.Conv2D(8, 3, strides=2, padding="valid", use_bias=False, name="stem")(inputs)
    x = layers.BatchNormalization(scale=False, epsilon=1e-3, name="stem.bn")(x)
    x = layers.Activation("relu", name="stem.relu")(x)
    a = layers.Conv2D(6, (1, 5), padding="same", activation="relu", name="wide")(x)
    b = layers.AveragePooling2D(3, strides=1, padding="same", name="average")(x)
    c = layers.MaxPooling2D(3, strides=1, padding="same", name="max_same")(x)
    x = layers.Concatenate(name="joined")([a, b, c])
    x = layers.Conv2D(12, 3, strides=2, padding="same", name="strided_same")(x)
    x = layers.MaxPooling2D(3, strides=2, name="max_valid")(x)
    model = keras.Model(inputs, x, name="small")
    rng = np.random.default_rng(0)  # batch norm statistics other than the fresh 0 and 1
    model.get_layer("stem.bn").set_weights([rng.normal(size=8), rng.normal(size=8), rng.uniform(0.5, 2, size=8)])
    return model


def test_export_reproduces_the_keras_network(tmp_path):
    model = small_network()
    runtime.export_onnx(model, tmp_path / "small.onnx")
    network = runtime.OnnxNetwork(tmp_path / "small.onnx", threads=1)
    batch = np.random.default_rng(1).normal(size=(3, 33, 29, 3)).astype(np.float32)

    assert network.input_shape == (None, 33, 29, 3)
    assert network.runtime == "onnxruntime"
    np.testing.assert_allclose(network.run(batch), runtime.KerasNetwork(model).run(batch), atol=1e-5, rtol=1e-5)


def test_export_refuses_a_layer_it_does_not_know(tmp_path):
    import keras

    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Dropout(0.5, name="dropout")(inputs))
    with pytest.raises(ValueError, match="dropout"):
        runtime.export_onnx(model, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


@pytest.fixture(scope="module")
def feature_dir(tmp_path_factory):
    """A feature directory with the installed Keras weights and a fresh ONNX export of them."""
    from django.conf import settings

    installed = Path(settings.IMAGESEARCH_FEATURE_DIR)
    if not feature_store.feature_weights_path(installed).is_file():
        pytest.skip("no converted InceptionV3 weights; run `python manage.py prepare_models`")
    directory = tmp_path_factory.mktemp("features")
    names = [feature_store.FEATURE_WEIGHTS_NAME, feature_store.FEATURE_META_NAME,
             feature_store.CLASSIFIER_WEIGHTS_NAME, feature_store.CLASSIFIER_META_NAME]
    for name in names:
        if (installed / name).is_file():  # prepare_models would otherwise convert the classifier here
            (directory / name).symlink_to(installed / name)
    record = feature_store.ensure_onnx_model(directory, log=lambda message: None)
    assert record["action"] == "exported"
    assert record["max_relative_difference"] <= feature_store.ONNX_TOLERANCE
    return directory


@pytest.fixture
def damaged_dir(feature_dir, tmp_path):
    """A copy of feature_dir whose ONNX files a test may damage (the Keras weights are links)."""
    for path in feature_dir.iterdir():
        if path.is_symlink():
            (tmp_path / path.name).symlink_to(path.resolve())
        else:
            shutil.copy(path, tmp_path / path.name)
    return tmp_path


def test_onnx_features_match_tensorflow_on_real_photos(feature_dir):
    paths = [FLICKR_IMAGES / name for name in REAL_PHOTOS]
    if not all(p.is_file() for p in paths):
        pytest.skip("the Flickr8k photos in ../shared are not here")
    batch = np.stack([inception.preprocess_image(p) for p in paths])
    onnx_network = feature_store.load_extractor(feature_dir, image_runtime="onnx")
    reference = inception.extract_features(feature_store.load_extractor(feature_dir, image_runtime="tensorflow"), batch)
    fast = inception.extract_features(onnx_network, batch)

    assert onnx_network.runtime == "onnxruntime"
    assert fast.shape == reference.shape == (3, 64, 2048)
    assert np.abs(fast - reference).max() <= PHOTO_TOLERANCE * np.abs(reference).max()
    # The photos' features differ from each other far more than the two runtimes do.
    assert np.abs(reference[0] - reference[1]).max() > 1000 * np.abs(fast - reference).max()


def test_a_second_prepare_only_verifies(feature_dir):
    assert feature_store.ensure_onnx_model(feature_dir, log=lambda message: None)["action"] == "verified"


def test_auto_falls_back_to_tensorflow_when_the_onnx_file_is_corrupt(damaged_dir, caplog):
    path = feature_store.onnx_path(damaged_dir)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with caplog.at_level(logging.INFO, logger="captioning.features"):
        network = feature_store.load_extractor(damaged_dir, image_runtime="auto")
    assert network.runtime == "tensorflow"
    assert "falls back to TensorFlow" in caplog.text and "does not match its recorded SHA-256" in caplog.text
    with pytest.raises(ModelFileError, match="does not match its recorded SHA-256"):
        feature_store.load_extractor(damaged_dir, image_runtime="onnx")
    # prepare_models repairs it.
    assert feature_store.ensure_onnx_model(damaged_dir, log=lambda message: None)["action"] == "exported"
    assert feature_store.load_extractor(damaged_dir, image_runtime="auto").runtime == "onnxruntime"


def test_a_file_onnx_runtime_cannot_load_is_refused_with_a_clear_message(damaged_dir):
    """Garbage recorded as the ONNX file (checksums agree): ONNX Runtime's refusal becomes ModelFileError."""
    import json

    path = feature_store.onnx_path(damaged_dir)
    path.write_bytes(b"not an onnx graph")
    meta_path = damaged_dir / feature_store.ONNX_META_NAME
    record = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**record, "sha256": feature_store.sha256_file(path)}))
    with pytest.raises(ModelFileError, match="could not be loaded"):
        feature_store.load_extractor(damaged_dir, image_runtime="onnx")


def test_auto_falls_back_when_the_onnx_file_is_missing(damaged_dir, caplog):
    feature_store.onnx_path(damaged_dir).unlink()
    with caplog.at_level(logging.INFO, logger="captioning.features"):
        assert feature_store.load_extractor(damaged_dir).runtime == "tensorflow"
    assert "no InceptionV3 ONNX graph" in caplog.text and "runs on TensorFlow" in caplog.text


def test_auto_falls_back_when_onnxruntime_is_not_installed(damaged_dir, monkeypatch, caplog):
    monkeypatch.setattr(runtime, "onnxruntime_available", lambda: False)
    with caplog.at_level(logging.INFO, logger="captioning.features"):
        assert feature_store.load_extractor(damaged_dir).runtime == "tensorflow"
    assert "onnxruntime is not installed" in caplog.text
    assert feature_store.ensure_onnx_model(damaged_dir, log=lambda message: None) is None


def test_an_unknown_runtime_is_refused(damaged_dir):
    with pytest.raises(ValueError, match="unknown image runtime 'gpu'"):
        feature_store.load_extractor(damaged_dir, image_runtime="gpu")


def test_prepare_models_exports_the_onnx_graph_once(damaged_dir, settings):
    import io

    from django.core.management import call_command

    feature_store.onnx_path(damaged_dir).unlink()
    settings.IMAGESEARCH_FEATURE_DIR = damaged_dir
    out = io.StringIO()
    call_command("prepare_models", "--skip-captioner", stdout=out)
    assert f"feature extractor (ONNX Runtime): exported {feature_store.onnx_path(damaged_dir)}" in out.getvalue()
    call_command("prepare_models", "--skip-captioner", stdout=out)
    assert "feature extractor (ONNX Runtime): verified" in out.getvalue()
    assert feature_store.load_extractor(damaged_dir).runtime == "onnxruntime"
