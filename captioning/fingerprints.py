"""Visual fingerprints: a compact vector per photo that recognises re-saved copies of it.

Words cannot tell a re-saved copy of a photo (smaller, cropped, recompressed) from the dozens of
photos that share its caption; the InceptionV3 features the captioner already computes can. A
fingerprint is the mean-pooled (2048-d) feature vector, L2-normalised, centred on the training
photos' mean and projected onto their first principal components (PCA, fitted once on training
features), L2-normalised again and stored as float16: 128 dimensions = 256 bytes per photo. The
cosine of two fingerprints is near 1 for copies of one photo and near 0 for unrelated photos.

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

from .concepts import pool
from .files import ModelFileError, sha256_file, write_atomic

FINGERPRINT_NAME = "fingerprint.npz"
DEFAULT_DIMENSIONS = 128
STORED_DTYPE = np.dtype("<f2")  # little-endian float16, the stored form


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


@dataclass
class FingerprintProjection:
    mean: np.ndarray  # (2048,) mean of the training photos' normalised pooled features
    components: np.ndarray  # (2048, d) principal directions, strongest first
    key: str = ""  # SHA-256 of the file it was loaded from: fingerprints compare only within one key

    def __post_init__(self):
        if self.mean.ndim != 1 or self.components.ndim != 2 or self.components.shape[0] != len(self.mean):
            raise ValueError("fingerprint projection: mean and components disagree in size")

    @property
    def dimensions(self) -> int:
        return int(self.components.shape[1])

    def fingerprints(self, features: np.ndarray) -> np.ndarray:
        """Unit-length float16 fingerprints (n, d) of (n, 64, 2048) or pooled (n, 2048) features."""
        centred = _unit(pool(features)) - self.mean
        return _unit(centred @ self.components).astype(STORED_DTYPE)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        buffer = io.BytesIO()
        np.savez(buffer, mean=self.mean.astype(np.float32), components=self.components.astype(np.float32))
        write_atomic(path, lambda fh: fh.write(buffer.getvalue()))
        return path


def fit_projection(pooled: np.ndarray, dimensions: int = DEFAULT_DIMENSIONS) -> FingerprintProjection:
    """PCA of the normalised pooled features (n, 2048) of training photos, keeping ``dimensions`` directions."""
    x = _unit(np.asarray(pooled, dtype=np.float64))
    if len(x) <= dimensions:
        raise ValueError(f"fitting {dimensions} dimensions needs more than {dimensions} photos, got {len(x)}")
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    return FingerprintProjection(mean.astype(np.float32), vt[:dimensions].T.astype(np.float32))


def load_projection(path: str | os.PathLike, *, expected_sha256: str | None = None) -> FingerprintProjection:
    """Read ``fingerprint.npz``; raises ModelFileError naming the file for a missing, altered or unreadable one."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"fingerprint projection file {path} is missing; reinstall the model directory")
    key = sha256_file(path)
    if expected_sha256 and key != expected_sha256:
        raise ModelFileError(f"fingerprint projection file {path} does not match the checksum in meta.json (damaged or replaced)")
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
