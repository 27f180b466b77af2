"""The torch legacy-format reader, the Keras port of EfficientNet-Lite0 and the object labels.

The pinned logits are the Keras port's on two scikit-image photos; the PyTorch reference
(bench/efficientnet_reference.py, torch 2.14) gives the same values within 1e-6 relative.
"""

import collections
import io
import pickle
import struct

import numpy as np
import pytest
import skimage.data

from captioning import efficientnet
from captioning import features as feature_store
from captioning.files import ModelFileError, sha256_file
from captioning.objects import ObjectWords, default_words
from captioning.torchfile import LEGACY_MAGIC, LEGACY_PROTOCOL, read_legacy_tensors

# (photo, class index) -> logit, and the top-1 class of each photo.
PINNED_LOGITS = {
    ("chelsea", 285): 10.518279,  # Egyptian Mau
    ("chelsea", 282): 8.327563,  # tiger cat
    ("chelsea", 0): -1.0776014,
    ("coffee", 967): 10.729589,  # espresso
    ("coffee", 968): 7.3596053,  # cup
    ("coffee", 504): 6.5031848,  # coffee mug
}
TOP1 = {"chelsea": 285, "coffee": 967}


# ---------------------------------------------------------------------- a tiny legacy-format file
class _Global:
    """A pickle global by name (``torch._utils._rebuild_tensor_v2``) without importing torch."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle wants a callable in a reduce tuple; never called here
        raise AssertionError("not called")


class _Storage:
    def __init__(self, key: str, array: np.ndarray, kind: str):
        self.key, self.array, self.kind = key, array, kind


class _Tensor:
    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return _Global("torch._utils", "_rebuild_tensor_v2"), self.args


class _TorchLikePickler(pickle._Pickler):
    """Writes what torch.save's legacy format writes: globals by name, storages as persistent ids."""

    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, _Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            self.memoize(obj)
            return
        super().save(obj, save_persistent_id)

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", _Global("torch", obj.kind), obj.key, "cpu", obj.array.size, None)
        return None


def legacy_file(state: dict, storages: list[_Storage], *, cut: int = 0) -> bytes:
    buffer = io.BytesIO()
    for obj in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(obj, buffer, protocol=2)
    _TorchLikePickler(buffer, protocol=2).dump(state)
    pickle.dump([s.key for s in storages], buffer, protocol=2)
    for storage in storages:
        buffer.write(struct.pack("<q", storage.array.size) + storage.array.astype(storage.array.dtype.newbyteorder("<")).tobytes())
    data = buffer.getvalue()
    return data[: len(data) - cut]


def _tiny_state():
    weights = _Storage("0", np.arange(12, dtype=np.float32), "FloatStorage")
    counter = _Storage("1", np.array([7], dtype=np.int64), "LongStorage")
    state = collections.OrderedDict(
        [
            ("conv.weight", _Tensor(weights, 0, (3, 4), (4, 1))),
            ("conv.weight_t", _Tensor(weights, 1, (2, 3), (1, 4))),  # a strided view of the same storage
            ("bn.num_batches_tracked", _Tensor(counter, 0, (), ())),
        ]
    )
    return state, [weights, counter]


def test_read_legacy_tensors_of_a_tiny_file(tmp_path):
    path = tmp_path / "tiny.pth"
    path.write_bytes(legacy_file(*_tiny_state()))
    tensors = read_legacy_tensors(path)
    assert sorted(tensors) == ["bn.num_batches_tracked", "conv.weight", "conv.weight_t"]
    np.testing.assert_array_equal(tensors["conv.weight"], np.arange(12, dtype=np.float32).reshape(3, 4))
    np.testing.assert_array_equal(tensors["conv.weight_t"], np.arange(12).reshape(3, 4)[:, 1:3].T)
    assert tensors["bn.num_batches_tracked"].dtype == np.int64 and tensors["bn.num_batches_tracked"] == 7


def test_truncated_or_foreign_legacy_files_are_refused(tmp_path):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(legacy_file(*_tiny_state(), cut=5))
    with pytest.raises(ValueError, match="truncated|bytes"):
        read_legacy_tensors(truncated)
    not_torch = tmp_path / "plain.pth"
    not_torch.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(ValueError, match="magic number"):
        read_legacy_tensors(not_torch)


def test_a_legacy_file_cannot_run_code(tmp_path):
    state, storages = _tiny_state()
    state["evil"] = _EvilReduce()
    path = tmp_path / "evil.pth"
    path.write_bytes(legacy_file(state, storages))
    with pytest.raises(ValueError, match="unsupported global.*os.system"):
        read_legacy_tensors(path)


class _EvilReduce:
    def __reduce__(self):
        return _Global("os", "system"), ("echo pwned",)


# ---------------------------------------------------------------------- the real network
@pytest.fixture(scope="module")
def classifier(converted_efficientnet):
    return efficientnet.load_classifier(converted_efficientnet["path"], expected_sha256=converted_efficientnet["sha256"])


def test_read_the_wheel_weights_without_torch(converted_efficientnet):
    tensors = read_legacy_tensors(converted_efficientnet["source_path"])
    assert len(tensors) == 296
    assert tensors["_blocks.15._depthwise_conv.weight"].shape == (1152, 1, 3, 3)
    assert tensors["_fc.weight"].shape == (1000, 1280)


def test_conversion_record(converted_efficientnet, classifier):
    assert converted_efficientnet["source_sha256"] == efficientnet.SOURCE_SHA256
    assert converted_efficientnet["weight_count"] == efficientnet.WEIGHT_COUNT
    assert not any(type(layer).__name__ == "BatchNormalization" for layer in classifier.layers)  # folded for serving
    assert converted_efficientnet["sha256"] == sha256_file(converted_efficientnet["path"])
    assert classifier.output_shape == (None, 1000)


def test_folding_the_batch_norms_keeps_the_logits(converted_efficientnet, classifier):
    unfolded = efficientnet.build_classifier()
    unfolded.load_weights(converted_efficientnet["path"])
    inputs = np.random.default_rng(3).uniform(-1, 1, (2, 224, 224, 3)).astype(np.float32)
    np.testing.assert_allclose(classifier.predict(inputs, verbose=0), unfolded.predict(inputs, verbose=0), rtol=1e-4, atol=1e-4)


def test_pinned_logits_of_real_photos(classifier):
    photos = {"chelsea": skimage.data.chelsea(), "coffee": skimage.data.coffee()}
    inputs = np.stack([efficientnet.preprocess_image(_png(photos[name])) for name in photos])
    assert inputs.shape == (2, 224, 224, 3)
    logits = classifier.predict(inputs, verbose=0)
    for (photo, index), value in PINNED_LOGITS.items():
        assert logits[list(photos).index(photo), index] == pytest.approx(value, rel=1e-4, abs=1e-4), (photo, index)
    assert [int(i) for i in logits.argmax(1)] == [TOP1[name] for name in photos]
    probabilities = efficientnet.classify(classifier, inputs)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, rtol=1e-5)
    assert [int(i) for i in probabilities.argmax(1)] == [TOP1[name] for name in photos]


def test_the_inception_input_of_a_photo_gives_the_same_labels(classifier):
    from captioning.inception import preprocess_image as inception_input

    image = _png(skimage.data.coffee())
    probabilities = efficientnet.classify_inception_inputs(classifier, inception_input(image)[None])
    assert int(probabilities.argmax()) == TOP1["coffee"]
    labels = dict(default_words().ranked(probabilities)[0])
    assert labels["espresso"] > 0.5 and labels["coffee"] >= labels["espresso"]


def test_classify_checks_its_input(classifier):
    assert efficientnet.classify(classifier, np.zeros((0, 224, 224, 3), np.float32)).shape == (0, 1000)
    with pytest.raises(ValueError, match="shape"):
        efficientnet.classify(classifier, np.zeros((1, 299, 299, 3), np.float32))


def test_feature_dir_without_a_conversion_record_says_how_to_make_one(tmp_path):
    with pytest.raises(ModelFileError, match="prepare_models"):
        feature_store.load_classifier(tmp_path)


def _png(array) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------- labels from class probabilities
def test_labels_gather_the_classes_they_name():
    words = default_words()
    probabilities = np.zeros((1, 1000), np.float32)
    probabilities[0, [151, 207, 281]] = [0.3, 0.3, 0.4]  # Chihuahua, golden retriever, tabby cat
    labels = dict(words.ranked(probabilities, min_probability=0.05)[0])
    assert labels["dog"] == pytest.approx(0.6) and labels["cat"] == pytest.approx(0.4)
    assert labels["animal"] == pytest.approx(1.0)
    assert labels["tabby cat"] == labels["tabby"] == pytest.approx(0.4)
    assert list(labels)[0] == "animal"  # most probable first


def test_a_damaged_words_table_is_refused(tmp_path):
    broken = tmp_path / "words.json"
    broken.write_text('{"classes": [{"index": 0, "name": "x", "words": ["x"]}]}')
    with pytest.raises(ModelFileError, match="0..999"):
        ObjectWords.load(broken)
    with pytest.raises(ModelFileError, match="missing or damaged"):
        ObjectWords.load(tmp_path / "absent.json")


def test_prepare_once_then_cache_the_class_probabilities_of_photos(tmp_path, photo):
    try:
        efficientnet.find_source_weights()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    feature_dir = tmp_path / "models"
    messages = []
    assert feature_store.ensure_classifier_weights(feature_dir, log=messages.append)["action"] == "converted"
    assert feature_store.ensure_classifier_weights(feature_dir, log=messages.append)["action"] == "verified"
    photos = [(f"{i}.jpg", photo(i)) for i in range(3)] + [("broken.jpg", b"not a photo")]
    stats = feature_store.cache_class_probabilities(photos, tmp_path / "cache", feature_dir=feature_dir, progress=False, log=messages.append)
    assert stats["written"] == 3 and stats["failed"] == ["broken.jpg"]
    probabilities = feature_store.load_class_probabilities(tmp_path / "cache", ["0.jpg", "2.jpg"])
    assert probabilities.shape == (2, 1000)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-2)  # stored as float16
