"""Shared fixtures and helpers: photos made in code, the media directory of each test, users, a
fake captioner for the web tests, and a tiny random captioner for the TensorFlow tests."""
import hashlib
import importlib
import io
import json
import math
import re
import struct
import zlib

import numpy as np
import PIL.Image
import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache

from captioning import efficientnet, inception
from captioning.images import open_upright_rgb
from captioning.inference import Description, ImageCaptioner
from captioning.vocabulary import Tokenizer
from gallery.captions import add_model_caption
from gallery.ingest import ingest_bytes

# The tiny captioner's vocabulary and caption length.
WORDS = [f"w{i}" for i in range(26)]
MAX_LENGTH = 12


def make_photo(seed: int = 0, size=(96, 64), fmt: str = "JPEG", **save_args) -> bytes:
    """A small, distinct, valid image; different seeds give different bytes (and hashes)."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, size[0], dtype=np.float32)
    y = np.linspace(0, 255, size[1], dtype=np.float32)[:, None]
    pixels = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=-1)
    pixels = (pixels + rng.integers(0, 60, size=pixels.shape)).clip(0, 255).astype(np.uint8)
    out = io.BytesIO()
    PIL.Image.fromarray(pixels).save(out, format=fmt, **save_args)
    return out.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb when huge)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture
def photo():
    return make_photo


@pytest.fixture(autouse=True)
def fresh_rate_limits():
    """Rate-limit counters (in the cache) start at zero in each test."""
    cache.clear()


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    """Each test writes uploads into its own folder."""
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


# ---------------------------------------------------------------------------- the API's schema
@pytest.fixture(scope="session")
def openapi_schema():
    """The OpenAPI document served at /api/schema, as generated from the code."""
    from drf_spectacular.generators import SchemaGenerator

    return SchemaGenerator().get_schema(request=None, public=True)


def _operation_schema(schema, method: str, path: str, status: int, content_type: str):
    """The JSON schema the document gives for this answer, or a reason why there is none."""
    for template, operations in schema["paths"].items():
        if re.fullmatch(re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(template)), path):
            operation = operations.get(method.lower())
            if operation is None:
                return f"{method} {template} is not documented"
            responses = operation["responses"]
            answer = responses.get(str(status))
            if answer is None:
                return f"{method} {template} does not document status {status} (has {sorted(responses)})"
            media = answer.get("content", {}).get(content_type)
            if media is None:
                return f"{method} {template} {status} does not document {content_type}"
            return {**media["schema"], "components": schema["components"]}
    return f"{path} is not in the schema"


@pytest.fixture
def openapi_validated(monkeypatch, openapi_schema):
    """Every API answer a test client gets is checked against the generated OpenAPI document."""
    import jsonschema
    from django.test import Client

    request = Client.request

    def checked(client, **environ):
        response = request(client, **environ)
        path = environ["PATH_INFO"]
        if path.startswith("/api/") and path != "/api/schema" and response.status_code != 405:
            found = _operation_schema(openapi_schema, environ["REQUEST_METHOD"], path, response.status_code, response["Content-Type"])
            if found == f"{path} is not in the schema" and response.status_code == 404:  # an unknown endpoint
                found = {"$ref": "#/components/schemas/Error", "components": openapi_schema["components"]}
            assert not isinstance(found, str), found
            jsonschema.validate(response.json(), found, cls=jsonschema.Draft202012Validator)
        return response

    monkeypatch.setattr(Client, "request", checked)


# ---------------------------------------------------------------------------- people
@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("ada", password="pw-ada-123")


@pytest.fixture
def staff(db):
    return get_user_model().objects.create_user("cura", password="pw-cura-123", is_staff=True, is_superuser=True)


# ---------------------------------------------------------------------------- the web's captioner
def attention_for(text):
    """Per-word attention over the 8x8 grid, row by row, like the model's attention_json(): a soft
    spot that moves from word to word, summing to 1."""
    maps = []
    for i, word in enumerate(text.split()):
        row, col = (2 + 3 * i) % 8, (1 + 5 * i) % 8
        weights = [math.exp(-((cell // 8 - row) ** 2 + (cell % 8 - col) ** 2) / 3) for cell in range(64)]
        maps.append([word, [round(w / sum(weights), 5) for w in weights]])
    return maps


class FakeResult:
    def __init__(self, text):
        self.text, self.score, self.alternatives, self.confidence = text, -0.42, [], 0.8

    def attention_json(self):
        return attention_for(self.text)


class FakeProjection:
    """Stands in for the model's fingerprint projection: only its key matters to the gallery."""

    key = "fake-projection"


def _photo_key(source) -> str:
    """Encoded bytes by their hash, a decoded photo by its pixels' hash."""
    return hashlib.sha256(source.tobytes() if isinstance(source, PIL.Image.Image) else source).hexdigest()


class FakeCaptioner:
    """Captions each photo with the text registered for it (else "a photo of something"), and
    gives it the fingerprint registered for it (else none, like a model without fingerprints).

    load_image hands its input through: the stored photo's bytes (stored photos), or the upload
    check's decoded picture (query photos in-process); a registered photo is known either way.
    """

    version = "fake-1"
    fingerprint = FakeProjection()

    def __init__(self):
        self.texts, self.prints, self.sources = {}, {}, {}

    def register(self, data: bytes, text: str, fingerprint=None, concepts=(), objects=()) -> bytes:
        """``concepts`` / ``objects``: the photo's [(word, probability), ...], most probable first."""
        for key in (_photo_key(data), _photo_key(open_upright_rgb(data))):
            self.texts[key] = text
            self.sources[key] = (list(concepts), list(objects))
            if fingerprint is not None:
                vector = np.asarray(fingerprint, dtype=np.float32)
                self.prints[key] = (vector / np.linalg.norm(vector)).astype(np.float16)
        return data

    def describe_arrays(self, arrays):
        keys = [_photo_key(a) for a in arrays]
        return [
            Description(FakeResult(self.texts.get(k, "a photo of something")), *self.sources.get(k, ([], [])), fingerprint=self.prints.get(k))
            for k in keys
        ]


@pytest.fixture
def fake_captioner(monkeypatch):
    """In-process captioning by FakeCaptioner; load_image hands its input (bytes or a decoded photo) through."""
    captioner = FakeCaptioner()
    monkeypatch.setattr("captioning.services.get_captioner", lambda: captioner)
    monkeypatch.setattr("captioning.services.load_image", lambda data: data)
    return captioner


@pytest.fixture
def decodes(monkeypatch):
    """The size of each photo decoded from its encoded bytes by the upload check or the networks'
    preprocessing (a decoded picture handed on is not counted: it is not decoded again)."""
    decoded = []
    for module in ("gallery.ingest", "captioning.inception"):

        def spy(source, min_size=None, decode=getattr(importlib.import_module(module), "open_upright_rgb")):
            image = decode(source, min_size=min_size)
            if not isinstance(source, PIL.Image.Image):
                decoded.append(image.size)
            return image

        monkeypatch.setattr(f"{module}.open_upright_rgb", spy)
    return decoded


@pytest.fixture
def allocations(monkeypatch):
    """The size of each Pillow image allocated from now on (decodes included): a memory bound
    checked without timing or measuring the process."""
    allocated = []
    for name in ("new", "fill"):

        def spy(mode, size, *args, allocate=getattr(PIL.Image.core, name)):
            allocated.append(tuple(size))
            return allocate(mode, size, *args)

        monkeypatch.setattr(PIL.Image.core, name, spy)
    return allocated


@pytest.fixture
def no_queue(monkeypatch):
    """Stored images stay pending: for tests that place captions themselves."""
    monkeypatch.setattr("gallery.tasks.enqueue_captioning", lambda ids: True)


def captioned(photo, seed, text, **kwargs):
    """An image with an active model caption (and its attention), straight through the services."""
    image = ingest_bytes(photo(seed), f"photo-{seed}.jpg").image
    add_model_caption(image, text, model_version="v1", score=-0.5, attention=attention_for(text), **kwargs)
    image.refresh_from_db()
    return image


# ---------------------------------------------------------------------------- a tiny real captioner
@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer(WORDS)


@pytest.fixture(scope="module")
def tiny_model(tokenizer):
    from captioning.model import ModelConfig, build_captioner  # TensorFlow: only for the tests that use it

    config = ModelConfig(
        vocab_size=tokenizer.size, embedding_dim=16, units=32, attention_units=16, max_length=MAX_LENGTH
    )
    return build_captioner(config, seed=0)


@pytest.fixture(scope="module")
def features():
    return np.random.default_rng(0).standard_normal((12, 64, 2048)).astype(np.float32)


def tiny_feature_model():
    """Stands in for InceptionV3: (299, 299, 3) -> (8, 8, 2048), cheap and deterministic."""
    import keras

    keras.utils.set_random_seed(1)
    inputs = keras.Input((299, 299, 3))
    x = keras.layers.AveragePooling2D(37)(inputs)  # 299 // 37 = 8
    return keras.Model(inputs, keras.layers.Conv2D(2048, 1)(x))


@pytest.fixture(scope="module")
def image_captioner(tiny_model, tokenizer):
    return ImageCaptioner(tiny_model, tokenizer, tiny_feature_model(), version="tiny", beam_width=3, batch_size=3)


@pytest.fixture
def model_and_feature_dirs(tmp_path, tiny_model, tokenizer, monkeypatch):
    """A saved tiny model directory and a feature directory whose record matches it."""
    from captioning import features as feature_store
    from captioning.storage import save_model_dir

    source_sha, weights_sha = "ab" * 32, "12" * 32
    model_dir = save_model_dir(
        tmp_path / "model",
        tiny_model,
        tokenizer,
        version="tiny-1",
        feature_extractor={
            "id": feature_store.FEATURE_EXTRACTOR_ID,
            "source_sha256": source_sha,
            "weights_sha256": weights_sha,
        },
    )
    feature_dir = tmp_path / "features"
    feature_dir.mkdir()
    feature_store.feature_weights_path(feature_dir).write_bytes(b"stand-in")
    record = {"source_sha256": source_sha, "sha256": weights_sha}
    (feature_dir / feature_store.FEATURE_META_NAME).write_text(json.dumps(record))
    monkeypatch.setattr(feature_store, "load_extractor", lambda directory, **runtime: tiny_feature_model())
    return model_dir, feature_dir


# ---------------------------------------------------------------------------- the converted image networks
def _converted(network, file_name: str, tmp_path_factory) -> dict:
    """A network's pinned source weights converted once per session; skipped where the source is not installed."""
    try:
        source = network.find_source_weights()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    return network.convert_weights(source, tmp_path_factory.mktemp("converted") / file_name)


@pytest.fixture(scope="session")
def converted_inception(tmp_path_factory):
    return _converted(inception, "inception.weights.h5", tmp_path_factory)


@pytest.fixture(scope="session")
def converted_efficientnet(tmp_path_factory):
    return _converted(efficientnet, "lite0.weights.h5", tmp_path_factory)
