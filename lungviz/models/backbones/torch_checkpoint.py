"""Read PyTorch state dicts without PyTorch and without running pickled code.

The ImageNet EfficientNet-Lite weights ship as `.pth` files in PyTorch's legacy
(pre-1.6, non-zip) format. `torch.load` would unpickle them with full Python
power, so any callable named in the file could run. This module reads the same
format with an unpickler that only knows the handful of names a plain state
dict needs, and turns the tensors into numpy arrays.

Legacy layout: five pickles back to back (magic number, protocol version,
sys_info, the state dict whose tensors point at storages through
`persistent_id`, the list of storage keys), then for each key in that list an
int64 element count followed by the raw storage bytes.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from lungviz.errors import CheckpointError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# torch storage classes and the numpy dtype of their elements (little endian).
STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


# Objects handed to the pickle are immutable tuples: the BUILD opcode can set
# attributes on ordinary instances, so nothing the file can reach holds state.
class _StorageType(NamedTuple):
    """Stand-in for a `torch.*Storage` class, identified by name."""

    name: str


class _StorageRef(NamedTuple):
    """What a tensor's persistent id resolves to: the key of a storage."""

    key: str


class _TensorRef(NamedTuple):
    """What `torch._utils._rebuild_tensor_v2` would build: a strided view of a storage."""

    key: str
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


@dataclass
class _Storage:
    """A storage announced by the pickle; its bytes come later in the file."""

    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None


def _ints(values, what: str) -> tuple[int, ...]:
    if not (isinstance(values, tuple) and all(type(v) is int and v >= 0 for v in values)):
        raise CheckpointError(f"tensor {what} must be a tuple of non-negative integers, got {values!r}")
    return values


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored) -> _TensorRef:
    if not isinstance(storage, _StorageRef):
        raise CheckpointError("a tensor in the checkpoint does not point at a storage")
    (offset,) = _ints((storage_offset,), "offset")
    return _TensorRef(storage.key, offset, _ints(size, "size"), _ints(stride, "stride"))


def _rebuild_parameter(data, *_ignored) -> _TensorRef:
    if not isinstance(data, _TensorRef):
        raise CheckpointError("a parameter in the checkpoint does not wrap a tensor")
    return data


_ALLOWED_CALLABLES = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed names and never imports anything."""

    def __init__(self, file: io.BufferedIOBase, storages: dict[str, _Storage]):
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str):
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        try:
            return _ALLOWED_CALLABLES[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"refusing to load {module}.{name}: a state dict only needs tensors, "
                "so this checkpoint may contain code"
            ) from None

    def persistent_load(self, pid):
        # Legacy pids: ("storage", storage type, key, device, element count, view metadata).
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise CheckpointError(f"unsupported persistent reference in checkpoint: {pid!r}")
        _, storage_type, key, _location, numel, view = pid
        if view is not None:
            raise CheckpointError("storage views (pre-0.4 checkpoints) are not supported")
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"storage {key!r} has an unknown element type")
        if not (isinstance(key, str) and type(numel) is int and numel >= 0):
            raise CheckpointError(f"malformed storage reference {pid!r}")
        if key not in self._storages:
            self._storages[key] = _Storage(STORAGE_DTYPES[storage_type.name], numel)
        return _StorageRef(key)


def _unpickle(file: io.BufferedIOBase, storages: dict[str, _Storage], name: str):
    """The next pickle in the file, with any decoding failure reported as a CheckpointError."""
    try:
        return _RestrictedUnpickler(file, storages).load()
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise CheckpointError(f"{name} is corrupt or unsupported: {exc}") from exc


def _read_storage_bytes(file: io.BufferedIOBase, key: str, storage: _Storage, file_size: int) -> None:
    header = file.read(8)
    if len(header) != 8:
        raise CheckpointError(f"checkpoint ends before the data of storage {key!r}")
    count = int(np.frombuffer(header, dtype="<i8")[0])
    if count != storage.numel:
        raise CheckpointError(f"storage {key!r} holds {count} elements, the pickle said {storage.numel}")
    nbytes = count * storage.dtype.itemsize
    if nbytes > file_size - file.tell():  # checked before reading, so a forged count cannot exhaust memory
        raise CheckpointError(f"checkpoint ends inside the data of storage {key!r}")
    storage.data = np.frombuffer(file.read(nbytes), dtype=storage.dtype)


def _to_array(name: str, ref: _TensorRef, storages: dict[str, _Storage]) -> np.ndarray:
    """Copy the tensor's strided view out of its storage, after checking it stays inside it."""
    data = storages[ref.key].data
    if data is None:
        raise CheckpointError(f"tensor {name!r} refers to storage {ref.key!r}, whose bytes the file never gives")
    if len(ref.size) != len(ref.stride):
        raise CheckpointError(f"tensor {name!r} has {len(ref.size)} dimensions but {len(ref.stride)} strides")
    count = math.prod(ref.size)
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride, strict=False))
    if count and (last >= data.size or count > data.size):
        raise CheckpointError(f"tensor {name!r} reads past the end of storage {ref.key!r}")
    view = np.lib.stride_tricks.as_strided(
        data[min(ref.offset, data.size) :],
        shape=ref.size,
        strides=tuple(s * data.itemsize for s in ref.stride),
        writeable=False,
    )
    return np.array(view, copy=True)


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a legacy-format PyTorch state dict, as numpy arrays keyed by name.

    Raises CheckpointError for anything that is not a plain state dict of CPU
    tensors (other pickled objects, the newer zip format, truncated files).
    """
    path = Path(path)
    if zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path.name} uses PyTorch's zip format (torch>=1.6); only the legacy format is supported"
        )
    storages: dict[str, _Storage] = {}
    with path.open("rb") as file:
        magic, protocol, sys_info = (_unpickle(file, storages, path.name) for _ in range(3))
        if magic != LEGACY_MAGIC or protocol != LEGACY_PROTOCOL:
            raise CheckpointError(f"{path.name} is not a legacy PyTorch checkpoint")
        if not (isinstance(sys_info, dict) and sys_info.get("little_endian") is True):
            raise CheckpointError(f"{path.name} was not written on a little-endian machine")
        state = _unpickle(file, storages, path.name)
        keys = _unpickle(file, storages, path.name)
        if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys) and sorted(keys) == sorted(storages)):
            raise CheckpointError(f"{path.name}: storage list does not match the tensors")
        file_size = os.fstat(file.fileno()).st_size
        for key in keys:
            _read_storage_bytes(file, key, storages[key], file_size)
    if not isinstance(state, dict) or any(
        not (isinstance(k, str) and isinstance(v, _TensorRef)) for k, v in state.items()
    ):
        raise CheckpointError(f"{path.name} is not a state dict of tensors")
    return {name: _to_array(name, ref, storages) for name, ref in state.items()}
