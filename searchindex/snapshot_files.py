"""Snapshot files: one immutable folder per index version, memory-mapped by every process of a machine.

Loading the postings from PostgreSQL costs each process seconds and its own copy of the arrays
(gigabytes at a million richly described photos). Instead, the first process that needs a
snapshot of a version builds it from PostgreSQL and writes it here; every other process maps the
same files read-only, so a new process is ready in well under a second and the page cache holds
the arrays once per machine. Machines that share no disk each build their own.

Layout, under settings.IMAGESEARCH_INDEX_DIR:

    <database>/<epoch>-<version, 20 digits>/
        manifest.json    written last: format, epoch, version, and per file its dtype, shape, CRC-32
        <array>.npy      one per Snapshot array (NumPy's .npy format, mapped with mmap_mode="r")
        terms.npy        the term texts in row order, a JSON array in UTF-8 (uint8)
    <database>/.tmp-<random>/   a folder being written (renamed into place when complete)
    <database>/.lock            held (flock) while a snapshot is built, cleaned up or discarded

PostgreSQL stays the source of truth: a folder is used only when its name, its manifest and
every file agree on the epoch and a version the change log still reaches, and every file's CRC-32
matches; anything else is treated as absent (and discarded under the lock) and the snapshot is
built again. A folder appears by one rename of a complete temporary folder, so a crash while
writing leaves at most a temporary folder, removed by the next builder, and the previous
versions untouched.
"""

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import threading
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db import connection

log = logging.getLogger(__name__)

FORMAT = 1
KEEP = 2  # complete folders kept per database: the newest, and the one processes may still be opening
# Arrays up to this size are checksummed before a folder is used; larger ones (the per-posting
# arrays) right after, in the background (read()).
CHECK_AT_MAP_BYTES = 64 * 2**20
_NAME_RE = re.compile(r"^(?P<epoch>[0-9a-f]+)-(?P<version>\d{20})$")


class SnapshotFileError(Exception):
    """A snapshot folder that is missing, stale or corrupt: never used."""


def database_dir() -> Path:
    """This database's folder: several databases (developers, test runs) may share one directory."""
    s = connection.settings_dict
    key = "-".join(str(part) for part in (connection.vendor, s.get("HOST") or "", s.get("PORT") or "", s["NAME"]))
    return Path(settings.IMAGESEARCH_INDEX_DIR) / re.sub(r"[^A-Za-z0-9_.-]+", "_", key).strip("_")


def folder_name(epoch: str, version: int) -> str:
    return f"{epoch}-{version:020d}"


@contextlib.contextmanager
def build_lock(root: Path):
    """Exclusive among this machine's processes: one builds while the others wait and then map its file."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _crc(array: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(array).view(np.uint8))


class NewFolder:
    """A snapshot folder being written in a temporary place: arrays allocated in it as .npy files
    mapped read-write (so that building a large snapshot needs no second copy in memory), then
    completed by commit() or removed by abort()."""

    def __init__(self, root: Path):
        self.root = root
        self.tmp = root / f".tmp-{uuid.uuid4().hex}"
        self.tmp.mkdir(parents=True)
        self._mapped: dict[str, np.memmap] = {}

    def allocate(self, name: str, shape, dtype) -> np.ndarray:
        """A zeroed array stored as this folder's <name>.npy: what commit() will save under that name."""
        path = self.tmp / f"{name}.npy"
        array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        with open(path, "r+b") as handle:  # a full disk: OSError now, not SIGBUS when a page is written
            os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
        self._mapped[name] = array
        return array

    def commit(self, arrays: dict[str, np.ndarray], terms: list[str], epoch: str, version: int) -> Path:
        """Save arrays and terms (in row order) as the folder of (epoch, version); returns it.

        Arrays allocated here are flushed in place, the others written; everything is flushed to
        disk before the folder is renamed into place in one step. When another process got there
        first, its folder is kept and this one dropped.
        """
        final = self.root / folder_name(epoch, version)
        files = {**arrays, "terms": np.frombuffer(json.dumps(terms).encode(), dtype=np.uint8)}
        manifest = {"format": FORMAT, "epoch": epoch, "version": version, "terms": len(terms), "files": {}}
        for name, array in files.items():
            path = self.tmp / f"{name}.npy"
            if name in self._mapped and array is self._mapped[name]:
                array.flush()
            else:
                array = np.ascontiguousarray(array)
                with open(path, "wb") as out:
                    np.save(out, array, allow_pickle=False)
            _fsync(path)
            manifest["files"][name] = {"dtype": array.dtype.str, "shape": list(array.shape), "crc32": _crc(array)}
        with open(self.tmp / "manifest.json", "w", encoding="utf-8") as out:
            json.dump(manifest, out)
            out.flush()
            os.fsync(out.fileno())
        self._mapped.clear()
        try:
            os.rename(self.tmp, final)  # atomic; fails when the folder exists (renaming onto a non-empty folder)
        except OSError:
            if not final.is_dir():
                raise
            shutil.rmtree(self.tmp, ignore_errors=True)  # another process wrote this version meanwhile
        _fsync(self.root)
        return final

    def abort(self) -> None:
        self._mapped.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


@contextlib.contextmanager
def new_folder(root: Path):
    """A NewFolder under root, removed unless committed (also when the build raises)."""
    folder = NewFolder(root)
    try:
        yield folder
    except BaseException:
        folder.abort()
        raise


def write(root: Path, arrays: dict[str, np.ndarray], terms: list[str], epoch: str, version: int) -> Path:
    """Write in-memory arrays and terms (in row order) as the folder of (epoch, version); returns it."""
    with new_folder(root) as folder:
        return folder.commit(arrays, terms, epoch, version)


@dataclass
class DeferredCheck:
    """The checksums of a mapped folder's large arrays, left for verify() after the folder is in use."""

    path: Path
    arrays: list[tuple[str, np.ndarray, int]]  # name, mapped array, expected CRC-32
    failed: bool = False
    done: threading.Event = field(default_factory=threading.Event)

    def verify(self) -> None:
        """Checksum the arrays; on a mismatch, discard the folder (under the build lock) and mark it failed."""
        try:
            for name, array, expected in self.arrays:
                if _crc(array) != expected:
                    log.error("Search-index snapshot %s/%s.npy: checksum mismatch; discarding it", self.path.name, name)
                    with build_lock(self.path.parent):
                        discard(self.path)
                    self.failed = True  # after the discard, so that the next snapshot cannot be this folder again
                    return
        finally:
            self.done.set()


def read(path: Path, epoch: str, version: int, names) -> tuple[dict[str, np.ndarray], list[str], DeferredCheck]:
    """The arrays (mapped read-only) and terms of a folder, checked against its manifest and checksums.

    Raises SnapshotFileError for anything missing, stale or corrupt. The checksums of arrays
    larger than CHECK_AT_MAP_BYTES (the per-posting arrays: gigabytes at a million rich photos,
    seconds of reading) are left to the returned DeferredCheck, which the caller runs in the
    background; the rest, structure included, is checked here.
    """
    try:
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        if (manifest.get("format"), manifest.get("epoch"), manifest.get("version")) != (FORMAT, epoch, version):
            raise SnapshotFileError(f"{path.name}: the manifest describes another format or version")
        files = manifest["files"]
        if set(files) != {*names, "terms"}:
            raise SnapshotFileError(f"{path.name}: the manifest lists other arrays")
        arrays, deferred = {}, DeferredCheck(path, [])
        for name, meta in files.items():
            array = np.load(path / f"{name}.npy", mmap_mode="r", allow_pickle=False).view(np.ndarray)
            if array.dtype.str != meta["dtype"] or list(array.shape) != meta["shape"]:
                raise SnapshotFileError(f"{path.name}/{name}.npy: header does not match the manifest")
            if array.nbytes > CHECK_AT_MAP_BYTES:
                deferred.arrays.append((name, array, meta["crc32"]))
            elif _crc(array) != meta["crc32"]:
                raise SnapshotFileError(f"{path.name}/{name}.npy: checksum mismatch")
            arrays[name] = array
        terms = json.loads(arrays.pop("terms").tobytes().decode())
        if not isinstance(terms, list) or len(terms) != manifest["terms"]:
            raise SnapshotFileError(f"{path.name}: {len(terms)} terms where the manifest says {manifest['terms']}")
        return arrays, terms, deferred
    except SnapshotFileError:
        raise
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:  # missing, truncated, garbled
        raise SnapshotFileError(f"{path.name}: {exc}") from exc


def candidates(root: Path, epoch: str, lowest: int, highest: int) -> list[tuple[int, Path]]:
    """Complete folders of this epoch with a version in [lowest, highest], newest first."""
    found = []
    with contextlib.suppress(OSError):  # no folder (yet), or none readable: none to map
        for entry in os.scandir(root):
            match = _NAME_RE.match(entry.name)
            if match and match["epoch"] == epoch and lowest <= int(match["version"]) <= highest:
                found.append((int(match["version"]), root / entry.name))
    return sorted(found, reverse=True)


def discard(path: Path) -> None:
    """Remove a folder (call under build_lock). Processes that mapped its files keep their mappings."""
    shutil.rmtree(path, ignore_errors=True)


def clean(root: Path) -> None:
    """Remove temporary folders of dead builders and all but the KEEP newest complete folders (under build_lock).

    Held by whoever holds the lock, so no temporary folder belongs to a live builder. An unlinked
    file stays valid for the processes that mapped it; KEEP spares the folder that a process may
    have listed but not yet opened (it would then just build or map another).
    """
    complete = []
    for entry in os.scandir(root):
        if entry.name.startswith(".tmp-"):
            discard(root / entry.name)
        elif _NAME_RE.match(entry.name):
            complete.append((entry.stat().st_mtime_ns, entry.name))
    for _, name in sorted(complete, reverse=True)[KEEP:]:
        log.info("Removing the search-index snapshot %s", name)
        discard(root / name)
