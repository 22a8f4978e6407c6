"""The restricted PyTorch checkpoint reader: real shipped weights, hand-written files, hostile pickles."""

from __future__ import annotations

import builtins
import collections
import os
import pickle
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lungviz.errors import CheckpointError
from lungviz.models.backbones.efficientnet_lite import VARIANTS, imagenet_weights_path
from lungviz.models.backbones.torch_checkpoint import (
    LEGACY_MAGIC,
    LEGACY_PROTOCOL,
    load_state_dict,
)

SYS_INFO = {"protocol_version": LEGACY_PROTOCOL, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
TORCH_STORAGE_NAMES = {
    np.dtype("float32"): "FloatStorage",
    np.dtype("float16"): "HalfStorage",
    np.dtype("int64"): "LongStorage",
    np.dtype("uint8"): "ByteStorage",
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_reads_shipped_imagenet_state_dicts(variant):
    state = load_state_dict(imagenet_weights_path(variant))

    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert state["_fc.bias"].shape == (1000,)
    assert state["_bn0.num_batches_tracked"].dtype == np.int64
    assert state["_bn0.num_batches_tracked"].shape == ()
    depthwise = state["_blocks.1._depthwise_conv.weight"]
    assert depthwise.shape[1:] == (1, 3, 3)
    assert depthwise.shape[0] == state["_blocks.1._bn1.weight"].shape[0]
    floats = [v for v in state.values() if v.dtype == np.float32]
    assert len(floats) == len(state) - sum(k.endswith("num_batches_tracked") for k in state)
    assert all(np.isfinite(v).all() for v in floats)
    assert all((v >= 0).all() for k, v in state.items() if k.endswith("running_var"))
    # Trained weights, not zeros: every conv kernel has spread.
    assert all(v.std() > 0 for k, v in state.items() if k.endswith("conv.weight"))


@pytest.fixture
def fake_torch(monkeypatch):
    """Just enough of a `torch` module for the standard pickler to name torch's globals (writing only)."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    for name in TORCH_STORAGE_NAMES.values():
        setattr(torch, name, type(name, (), {"__module__": "torch"}))

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only used as a name while writing")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


class _Storage:
    def __init__(self, key: str, data: np.ndarray):
        self.key, self.data = key, data


class _Tensor:
    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.args = (storage, offset, size, stride)

    def __reduce__(self):
        return sys.modules["torch._utils"]._rebuild_tensor_v2, (*self.args, False, collections.OrderedDict())


def write_legacy(path: Path, state: dict[str, _Tensor], storages: list[_Storage], declared_numel=None) -> Path:
    """A file laid out like torch.save(..., _use_new_zipfile_serialization=False) writes it."""
    torch = sys.modules["torch"]

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _Storage):
                storage_type = getattr(torch, TORCH_STORAGE_NAMES[obj.data.dtype])
                return ("storage", storage_type, obj.key, "cpu", declared_numel or obj.data.size, None)
            return None

    with path.open("wb") as f:
        for header in (LEGACY_MAGIC, LEGACY_PROTOCOL, SYS_INFO):
            pickle.dump(header, f, protocol=2)
        Pickler(f, protocol=2).dump(collections.OrderedDict(state))
        pickle.dump([s.key for s in storages], f, protocol=2)
        for storage in storages:
            f.write(np.int64(declared_numel or storage.data.size).tobytes())
            f.write(storage.data.astype(storage.data.dtype.newbyteorder("<")).tobytes())
    return path


def test_views_share_storage_with_offset_and_stride(fake_torch, tmp_path):
    values = np.arange(24, dtype=np.float32)
    shared = _Storage("0", values)
    counts = _Storage("1", np.array([7], dtype=np.int64))
    path = write_legacy(
        tmp_path / "views.pth",
        {
            "matrix": _Tensor(shared, 0, (4, 6), (6, 1)),
            "transposed": _Tensor(shared, 0, (6, 4), (1, 6)),
            "tail": _Tensor(shared, 20, (4,), (1,)),
            "every_other_row": _Tensor(shared, 6, (2, 6), (12, 1)),
            "scalar": _Tensor(counts, 0, (), ()),
        },
        [shared, counts],
    )

    state = load_state_dict(path)

    matrix = values.reshape(4, 6)
    np.testing.assert_array_equal(state["matrix"], matrix)
    np.testing.assert_array_equal(state["transposed"], matrix.T)
    np.testing.assert_array_equal(state["tail"], values[20:])
    np.testing.assert_array_equal(state["every_other_row"], matrix[1::2])
    assert state["scalar"].shape == ()
    assert state["scalar"] == 7
    assert state["scalar"].dtype == np.int64
    # Copies, not views into one buffer: changing one tensor leaves the others alone.
    state["matrix"][0, 0] = -1
    assert state["transposed"][0, 0] == 0


@pytest.mark.parametrize("dtype", sorted(TORCH_STORAGE_NAMES, key=str))
def test_storage_types_map_to_numpy_dtypes(fake_torch, tmp_path, dtype):
    data = (np.arange(10) * 3).astype(dtype)
    storage = _Storage("s", data)
    state = load_state_dict(write_legacy(tmp_path / "t.pth", {"t": _Tensor(storage, 0, (2, 5), (5, 1))}, [storage]))
    assert state["t"].dtype == dtype
    np.testing.assert_array_equal(state["t"], data.reshape(2, 5))


@pytest.mark.parametrize(
    ("offset", "size", "stride", "message"),
    [
        (4, (2, 3), (3, 1), "past the end"),
        (0, (10**6, 10**6), (0, 0), "past the end"),  # stride-0 view that would allocate a terabyte
        (0, (2, 3), (3,), "strides"),
        (-1, (2,), (1,), "offset"),
        (0, (2.5,), (1,), "size"),
    ],
)
def test_malformed_views_are_refused(fake_torch, tmp_path, offset, size, stride, message):
    storage = _Storage("s", np.zeros(6, np.float32))
    path = write_legacy(tmp_path / "t.pth", {"t": _Tensor(storage, offset, size, stride)}, [storage])
    with pytest.raises(CheckpointError, match=message):
        load_state_dict(path)


def test_forged_storage_size_is_refused_before_reading(fake_torch, tmp_path):
    storage = _Storage("s", np.zeros(6, np.float32))
    path = write_legacy(tmp_path / "t.pth", {"t": _Tensor(storage, 0, (6,), (1,))}, [storage], declared_numel=10**15)
    with pytest.raises(CheckpointError, match="ends inside"):
        load_state_dict(path)


def test_truncated_file_is_refused(fake_torch, tmp_path):
    storage = _Storage("s", np.zeros(100, np.float32))
    path = write_legacy(tmp_path / "t.pth", {"t": _Tensor(storage, 0, (100,), (1,))}, [storage])
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(CheckpointError, match="ends inside"):
        load_state_dict(path)


class _RunsCode:
    """A pickle payload that calls `func(arg)` when unpickled by a permissive loader."""

    def __init__(self, func, arg: str):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


@pytest.mark.parametrize("position", ["header", "state_dict", "storage_keys"])
@pytest.mark.parametrize("payload", ["os.system", "builtins.exec"])
def test_pickled_code_is_refused_without_running(tmp_path, position, payload):
    marker = tmp_path / "pwned"
    evil = (
        _RunsCode(os.system, f"touch {marker}")
        if payload == "os.system"
        else _RunsCode(builtins.exec, f"open({str(marker)!r}, 'w').close()")
    )
    parts = {"header": LEGACY_MAGIC, "state_dict": collections.OrderedDict(), "storage_keys": []}
    parts[position] = evil
    path = tmp_path / "evil.pth"
    with path.open("wb") as f:
        for obj in (parts["header"], LEGACY_PROTOCOL, SYS_INFO, parts["state_dict"], parts["storage_keys"]):
            pickle.dump(obj, f, protocol=2)

    with pytest.raises(CheckpointError, match=r"refusing to load .*(system|exec)"):
        load_state_dict(path)
    assert not marker.exists()


def test_zip_format_is_refused_with_a_clear_message(tmp_path):
    path = tmp_path / "new.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({}))
    with pytest.raises(CheckpointError, match="zip format"):
        load_state_dict(path)


@pytest.mark.parametrize(
    "content",
    [b"", b"not a checkpoint at all", pickle.dumps({"weights": [1, 2, 3]}, protocol=2)],
    ids=["empty", "text", "plain_pickle"],
)
def test_other_files_are_refused(tmp_path, content):
    path = tmp_path / "other.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError):
        load_state_dict(path)
