"""The image networks on ONNX Runtime: the Keras -> ONNX export, the InceptionV3 and EfficientNet-Lite0
graphs' agreement with the TensorFlow reference on real photos, and the fallback to TensorFlow."""

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
# EfficientNet-Lite0's class probabilities: at most this far from TensorFlow's (measured about 1e-6).
PROBABILITY_TOLERANCE = 1e-4
# The int8 graph's InceptionV3 features: relative L2 distance from the fp32 graph's, per photo
# (quantisation error, not float rounding: 0.146 on average, at most 0.224, over 32 dev photos;
# the captioner's and the search's dev figures with these features are in docs/benchmarks.md).
INT8_PHOTO_TOLERANCE = 0.25


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
    for network in feature_store.ONNX_EXPORTS:
        if network.read_weights_meta(directory) is None:
            continue  # no converted classifier: its tests skip
        record = feature_store.ensure_onnx_model(directory, network, log=lambda message: None)
        assert record["action"] == "exported"
        assert record["max_relative_difference"] <= feature_store.ONNX_TOLERANCE
    # InceptionV3's int8 graph from the committed activation ranges (the classifier has none: fp32).
    assert feature_store.ensure_int8_model(directory, log=lambda message: None)["action"] == "quantised"
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


def small_classifier():
    """The EfficientNet-Lite0 layer kinds (depthwise convolutions, ReLU6, residual add, pooling to a
    vector, dense logits) in a few layers, behind the serving graph's resize, shift and softmax."""
    import keras
    from keras import layers

    from captioning import efficientnet

    keras.utils.set_random_seed(4)
    inputs = keras.Input((224, 224, 3))
    x = layers.Conv2D(8, 3, strides=2, padding="same", name="stem")(inputs)
    x = layers.ReLU(6.0, name="stem.relu6")(x)
    y = layers.DepthwiseConv2D(5, padding="same", name="depthwise")(x)
    y = layers.ReLU(6.0, name="depthwise.relu6")(y)
    x = layers.Add(name="add")([x, layers.Conv2D(8, 1, name="project")(y)])
    x = layers.DepthwiseConv2D(3, strides=2, padding="same", name="strided_depthwise")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return efficientnet.inception_input_graph(keras.Model(inputs, layers.Dense(1000, name="fc")(x), name="small_classifier"))


def test_export_reproduces_the_classifier_serving_graph(tmp_path):
    """Resize (antialiased, exactly as TensorFlow), shift, depthwise convolutions, ReLU6, softmax."""
    model = small_classifier()
    runtime.export_onnx(model, tmp_path / "classifier.onnx")
    network = runtime.OnnxNetwork(tmp_path / "classifier.onnx", threads=1)
    batch = np.random.default_rng(2).uniform(-1, 1, (2, 299, 299, 3)).astype(np.float32)
    expected = runtime.KerasNetwork(model).run(batch)

    assert network.input_shape == (None, 299, 299, 3)
    assert expected.shape == (2, 1000) and np.allclose(expected.sum(1), 1.0)
    np.testing.assert_allclose(network.run(batch), expected, atol=1e-6, rtol=1e-4)


def test_classifier_on_onnx_runtime_matches_tensorflow_on_real_photos(feature_dir):
    from captioning import efficientnet

    if feature_store.read_classifier_meta(feature_dir) is None:
        pytest.skip("no converted EfficientNet-Lite0 weights; run `python manage.py prepare_models`")
    paths = [FLICKR_IMAGES / name for name in REAL_PHOTOS]
    if not all(p.is_file() for p in paths):
        pytest.skip("the Flickr8k photos in ../shared are not here")
    batch = np.stack([inception.preprocess_image(p) for p in paths])
    fast_network = feature_store.load_classifier_network(feature_dir, image_runtime="onnx")
    # The reference: the Keras network as the TensorFlow path has always run it.
    reference = efficientnet.classify_inception_inputs(feature_store.load_classifier(feature_dir), batch)
    fast = efficientnet.classify_inception_inputs(fast_network, batch)

    assert fast_network.runtime == "onnxruntime"
    assert fast.shape == reference.shape == (3, 1000)
    assert np.abs(fast - reference).max() <= PROBABILITY_TOLERANCE
    assert (fast.argmax(1) == reference.argmax(1)).all()


def test_classifier_falls_back_to_tensorflow_when_its_onnx_file_is_corrupt(damaged_dir, caplog):
    if feature_store.read_classifier_meta(damaged_dir) is None:
        pytest.skip("no converted EfficientNet-Lite0 weights; run `python manage.py prepare_models`")
    path = feature_store.onnx_path(damaged_dir, feature_store.CLASSIFIER_ONNX)
    path.write_bytes(path.read_bytes()[:1000])
    with caplog.at_level(logging.INFO, logger="captioning.features"):
        network = feature_store.load_classifier_network(damaged_dir)
    assert network.runtime == "tensorflow" and network.run(np.zeros((1, 299, 299, 3), np.float32)).shape == (1, 1000)
    assert "EfficientNet-Lite0 falls back to TensorFlow" in caplog.text and "does not match its recorded SHA-256" in caplog.text
    with pytest.raises(ModelFileError, match="EfficientNet-Lite0 ONNX graph"):
        feature_store.load_classifier_network(damaged_dir, image_runtime="onnx")
    # InceptionV3 is not affected.
    assert feature_store.load_extractor(damaged_dir).runtime == "onnxruntime"


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
    meta_path = feature_store.onnx_record_path(damaged_dir)
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
    if feature_store.read_classifier_meta(damaged_dir) is not None:
        assert "object classifier (ONNX Runtime): verified" in out.getvalue()
    assert feature_store.load_extractor(damaged_dir).runtime == "onnxruntime"


def test_onnx_sessions_keep_no_activation_memory_between_calls(tmp_path):
    """The options every image network's session is created with (docs/benchmarks.md, "memory of a
    worker"): no arena or memory pattern by default, so a worker stays within its memory budget;
    one thread pool of the asked size, idle threads asleep."""
    import onnxruntime

    runtime.export_onnx(small_network(), tmp_path / "small.onnx")
    options = runtime.OnnxNetwork(tmp_path / "small.onnx", threads=2).session.get_session_options()
    assert (options.enable_cpu_mem_arena, options.enable_mem_pattern) == (False, False)
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (2, 1)
    assert options.execution_mode == onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    assert options.graph_optimization_level == onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    arena = runtime.OnnxNetwork(tmp_path / "small.onnx", memory_arena=True).session.get_session_options()
    assert (arena.enable_cpu_mem_arena, arena.enable_mem_pattern) == (True, True)


def test_the_worker_memory_settings_reach_the_captioner(settings, monkeypatch):
    """IMAGESEARCH_IMAGE_MEMORY_ARENA goes to the image networks' sessions (both, through
    from_dirs: test above for the options); IMAGESEARCH_MALLOC_MMAP_THRESHOLD to glibc first."""
    from captioning import services

    calls = []
    monkeypatch.setattr(services, "_captioner", None)
    monkeypatch.setattr(services, "map_large_allocations", lambda threshold: calls.append(("mmap", threshold)))
    monkeypatch.setattr(services.ImageCaptioner, "from_dirs", lambda *a, **kw: calls.append(("load", kw["image_memory_arena"])) or "loaded")
    settings.IMAGESEARCH_IMAGE_MEMORY_ARENA, settings.IMAGESEARCH_MALLOC_MMAP_THRESHOLD = True, 123456
    assert services.get_captioner() == "loaded"
    assert calls == [("mmap", 123456), ("load", True)]


def test_both_networks_load_with_the_memory_arena_asked_for(feature_dir):
    for arena in (False, True):
        for network in (feature_store.load_extractor(feature_dir, image_runtime="onnx", memory_arena=arena),
                        feature_store.load_classifier_network(feature_dir, image_runtime="onnx", memory_arena=arena)):
            assert network.session.get_session_options().enable_cpu_mem_arena is arena


# ------------------------------------------------------------------------------ int8


def relative_l2(fast: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per item: the L2 norm of the difference over the reference's."""
    fast, reference = fast.reshape(len(fast), -1), reference.reshape(len(reference), -1)
    return np.linalg.norm(fast - reference, axis=1) / np.linalg.norm(reference, axis=1)


def test_int8_features_agree_with_fp32_on_real_photos(feature_dir):
    paths = [FLICKR_IMAGES / name for name in REAL_PHOTOS]
    if not all(p.is_file() for p in paths):
        pytest.skip("the Flickr8k photos in ../shared are not here")
    batch = np.stack([inception.preprocess_image(p) for p in paths])
    int8_network = feature_store.load_extractor(feature_dir, image_runtime="onnx", precision="int8")
    reference = inception.extract_features(feature_store.load_extractor(feature_dir, image_runtime="onnx"), batch)
    fast = inception.extract_features(int8_network, batch)

    assert (int8_network.runtime, int8_network.precision) == ("onnxruntime", "int8")
    assert fast.shape == reference.shape == (3, 64, 2048)
    assert relative_l2(fast, reference).max() <= INT8_PHOTO_TOLERANCE
    # Each photo's int8 features are far nearer its own fp32 features than another photo's.
    assert relative_l2(fast, reference).max() < 0.5 * relative_l2(reference[[1, 2, 0]], reference).min()


def test_quantisation_is_reproducible_from_the_ranges_file(tmp_path):
    """Calibrated once (on random inputs here), the ranges file alone gives the same int8 graph again."""
    runtime.export_onnx(small_network(), tmp_path / "small.onnx")
    rng = np.random.default_rng(5)
    batches = [rng.normal(size=(4, 33, 29, 3)).astype(np.float32) for _ in range(3)]
    ranges = tmp_path / "ranges.json"
    runtime.quantize_onnx(tmp_path / "small.onnx", tmp_path / "a.onnx", ranges_path=ranges, calibration=batches, method="minmax")
    runtime.quantize_onnx(tmp_path / "small.onnx", tmp_path / "b.onnx", ranges_path=ranges)

    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    fast = runtime.OnnxNetwork(tmp_path / "a.onnx", precision="int8").run(batches[0])
    reference = runtime.OnnxNetwork(tmp_path / "small.onnx").run(batches[0])
    assert relative_l2(fast, reference).max() < 0.1
    with pytest.raises(ValueError, match="no activation ranges"):
        runtime.quantize_onnx(tmp_path / "small.onnx", tmp_path / "c.onnx", ranges_path=tmp_path / "none.json")


def test_int8_falls_back_to_fp32_when_its_file_is_corrupt_then_prepare_repairs_it(damaged_dir, caplog):
    path = feature_store.int8_path(damaged_dir)
    path.write_bytes(path.read_bytes()[:1000])
    with caplog.at_level(logging.INFO, logger="captioning.features"):
        network = feature_store.load_extractor(damaged_dir, precision="int8")
    assert (network.runtime, network.precision) == ("onnxruntime", "fp32")
    assert "InceptionV3 falls back to fp32" in caplog.text and "int8 ONNX graph" in caplog.text
    assert "runs on ONNX Runtime, fp32" in caplog.text
    # With the float graph damaged too: TensorFlow (auto), or a clear error (onnx).
    feature_store.onnx_path(damaged_dir).write_bytes(b"damaged")
    assert feature_store.load_extractor(damaged_dir, precision="int8").runtime == "tensorflow"
    with pytest.raises(ModelFileError, match="does not match its recorded SHA-256"):
        feature_store.load_extractor(damaged_dir, image_runtime="onnx", precision="int8")
    # prepare_models repairs both.
    assert feature_store.ensure_onnx_model(damaged_dir, log=lambda message: None)["action"] == "exported"
    assert feature_store.ensure_int8_model(damaged_dir, log=lambda message: None)["action"] == "quantised"
    assert feature_store.load_extractor(damaged_dir, precision="int8").precision == "int8"


def test_int8_falls_back_to_fp32_when_it_is_missing_or_its_ranges_are(damaged_dir, tmp_path, caplog):
    feature_store.int8_path(damaged_dir).unlink()
    with caplog.at_level(logging.INFO, logger="captioning.features"):
        assert feature_store.load_extractor(damaged_dir, precision="int8").precision == "fp32"
    assert "no InceptionV3 int8 ONNX graph" in caplog.text
    messages = []
    assert feature_store.ensure_int8_model(damaged_dir, ranges_path=tmp_path / "absent.json", log=messages.append) is None
    assert "runs in fp32" in messages[0]
    # The classifier has no committed ranges: it stays fp32 whatever the setting.
    assert feature_store.ensure_int8_model(damaged_dir, feature_store.CLASSIFIER_ONNX, log=messages.append) is None


def test_an_int8_graph_of_another_float_graph_is_refused(damaged_dir):
    import json

    record_path = feature_store.int8_record_path(damaged_dir)
    record_path.write_text(json.dumps({**json.loads(record_path.read_text()), "onnx_sha256": "0" * 64}))
    with pytest.raises(ModelFileError, match="made from another float graph"):
        feature_store._load_onnx(damaged_dir, feature_store.INCEPTION_ONNX, 0, False, "int8")
    assert feature_store.ensure_int8_model(damaged_dir, log=lambda message: None)["action"] == "quantised"


def test_an_unknown_precision_is_refused(damaged_dir):
    with pytest.raises(ValueError, match="unknown image precision 'int4'"):
        feature_store.load_extractor(damaged_dir, precision="int4")


def test_the_precision_setting_reaches_the_captioner(settings, monkeypatch):
    from captioning import services

    calls = []
    monkeypatch.setattr(services, "_captioner", None)
    monkeypatch.setattr(services, "map_large_allocations", lambda threshold: None)
    monkeypatch.setattr(services.ImageCaptioner, "from_dirs", lambda *a, **kw: calls.append(kw["image_precision"]) or "loaded")
    settings.IMAGESEARCH_IMAGE_PRECISION = "int8"
    assert services.get_captioner() == "loaded" and calls == ["int8"]
