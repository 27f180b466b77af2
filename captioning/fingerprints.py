"""Visual fingerprints: a compact vector per photo that recognises re-saved copies of it.

Words cannot tell a re-saved copy of a photo (smaller, cropped, recompressed) from the dozens of
photos that share its caption; the InceptionV3 features the captioner already computes can. A
photo's signature is the mean over the 64 locations of the square roots of its (64, 2048)
features (power normalisation: a few strong activations no longer drown the rest), L2-normalised;
its fingerprint is the signature centred on the training photos' mean, projected onto their first
256 principal components and whitened (PCA fitted once on training photos), L2-normalised again
and stored as float16: 512 bytes per photo. The cosine of two fingerprints is high for copies of
one photo and near 0 for unrelated photos. On the dev split (the harness's re-saved copies: half
size, 10 % cropped, JPEG 70, against 1,000 photos) the fingerprint alone ranks the original first
for 97.6 % of the copies (plain mean pooling without whitening, 128 dimensions: 89.9 %).

Fingerprints of different projections are not comparable: each projection is known by the
SHA-256 of its file (``fingerprint.npz`` in the model directory, recorded in meta.json
``fingerprint`` and checked at load), and callers compare only fingerprints of the same one.

Plain NumPy, no Django.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .files import ModelFileError, checked_model_file, write_atomic

FINGERPRINT_NAME = "fingerprint.npz"
DEFAULT_DIMENSIONS = 256
STORED_DTYPE = np.dtype("<f2")  # little-endian float16, the stored form


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


@dataclass
class FingerprintProjection:
    mean: np.ndarray  # (2048,) mean of the training photos' signatures
    components: np.ndarray  # (2048, d) principal directions, strongest first, each divided by its standard deviation
    key: str = ""  # SHA-256 of the file it was loaded from: fingerprints compare only within one key

    def __post_init__(self):
        if self.mean.ndim != 1 or self.components.ndim != 2 or self.components.shape[0] != len(self.mean):
            raise ValueError("fingerprint projection: mean and components disagree in size")

    @property
    def dimensions(self) -> int:
        return int(self.components.shape[1])

    def fingerprints(self, features: np.ndarray) -> np.ndarray:
        """Unit-length float16 fingerprints (n, d) of (n, 64, 2048) features (or their (n, 2048) signatures)."""
        return _unit((signatures(features) - self.mean) @ self.components).astype(STORED_DTYPE)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        buffer = io.BytesIO()
        np.savez(buffer, mean=self.mean.astype(np.float32), components=self.components.astype(np.float32))
        write_atomic(path, lambda fh: fh.write(buffer.getvalue()))
        return path


def signatures(features: np.ndarray) -> np.ndarray:
    """Unit (n, 2048) signatures of (n, 64, 2048) features: mean of the square roots; (n, 2048) input is taken as signatures."""
    features = np.asarray(features, dtype=np.float32)
    if features.ndim == 3:
        features = np.sqrt(np.maximum(features, 0.0)).mean(axis=1)
    return _unit(features)


def fit_projection(signature_rows: np.ndarray, dimensions: int = DEFAULT_DIMENSIONS) -> FingerprintProjection:
    """Whitened PCA of training photos' signatures (n, 2048), keeping ``dimensions`` directions."""
    x = signatures(np.asarray(signature_rows, dtype=np.float64)).astype(np.float64)
    if len(x) <= dimensions:
        raise ValueError(f"fitting {dimensions} dimensions needs more than {dimensions} photos, got {len(x)}")
    mean = x.mean(axis=0)
    _, singular, vt = np.linalg.svd(x - mean, full_matrices=False)
    scale = np.maximum(singular[:dimensions] / np.sqrt(len(x)), 1e-9)
    return FingerprintProjection(mean.astype(np.float32), (vt[:dimensions].T / scale).astype(np.float32))


def load_projection(path: str | os.PathLike, *, expected_sha256: str | None = None) -> FingerprintProjection:
    """Read ``fingerprint.npz``; raises ModelFileError naming the file for a missing, altered or unreadable one."""
    path = Path(path)
    key = checked_model_file(path, "fingerprint projection", expected_sha256=expected_sha256)
    try:
        with np.load(path, allow_pickle=False) as data:
            return FingerprintProjection(data["mean"], data["components"], key=key)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelFileError(f"fingerprint projection file {path} cannot be read: {exc}") from exc


def to_bytes(fingerprint: np.ndarray) -> bytes:
    """The stored form of one fingerprint (little-endian float16)."""
    return np.asarray(fingerprint, dtype=STORED_DTYPE).tobytes()


def from_bytes(data: bytes) -> np.ndarray:
    return np.frombuffer(bytes(data), dtype=STORED_DTYPE)


def cosines(query: np.ndarray, fingerprints: np.ndarray) -> np.ndarray:
    """Cosine of one unit fingerprint with each row of (n, d) unit fingerprints."""
    return np.asarray(fingerprints, dtype=np.float32) @ np.asarray(query, dtype=np.float32)
