"""Both image networks' weight files: converted only from the pinned source file, and loaded through
captioning.files.load_keras_weights, which refuses a file that is missing, truncated, not the
recorded conversion or made for another model with a ModelFileError that says how to make a good one."""

import pytest

from captioning import efficientnet, inception
from captioning.files import ModelFileError

# network -> (its loader, the fixture of its conversion, what the error tells people to run)
NETWORKS = {
    "InceptionV3": (inception.load_feature_extractor, "converted_inception", "convert_weights"),
    "EfficientNet-Lite0": (efficientnet.load_classifier, "converted_efficientnet", "prepare_models"),
}
SOURCES = {"InceptionV3": (inception, "default_1.pt"), "EfficientNet-Lite0": (efficientnet, "efficientnet-lite0.pth")}


@pytest.mark.parametrize("network", SOURCES)
def test_convert_refuses_an_unknown_source(network, tmp_path):
    module, file_name = SOURCES[network]
    bogus = tmp_path / file_name
    bogus.write_bytes(b"not the pinned file")
    with pytest.raises(ValueError, match="SHA-256"):
        module.convert_weights(bogus, tmp_path / "out.weights.h5")
    assert not (tmp_path / "out.weights.h5").exists()


@pytest.mark.parametrize("network", NETWORKS)
def test_missing_truncated_other_or_foreign_weights_are_refused(network, request, tmp_path):
    import keras  # TensorFlow: only when the test runs

    load, fixture, remedy = NETWORKS[network]
    converted = request.getfixturevalue(fixture)
    with pytest.raises(ModelFileError, match=f"does not exist.*{remedy}"):
        load(tmp_path / "missing.weights.h5")
    data = open(converted["path"], "rb").read()
    truncated = tmp_path / "truncated.weights.h5"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated"):
        load(truncated)
    with pytest.raises(ModelFileError, match="SHA-256"):
        load(converted["path"], expected_sha256="0" * 64)
    foreign = tmp_path / "foreign.weights.h5"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save_weights(foreign)
    with pytest.raises(ModelFileError, match="not made for this model"):
        load(foreign)
