"""Compact model files: `.keras` archives whose weights are stored as int8 or float16.

Every retrain adds its bytes to git history and `weights/` must stay under 150 MB, so
`save_compact` stores each model at the smallest precision that moves none of its outputs on
validation images by more than a tolerance, tried in this order:

- "int8-per-channel": every conv/dense kernel of at least `INT8_MIN_SIZE` values as int8 codes
  with one float32 scale per output channel (symmetric, w ~ code * scale, |code| <= 127; the last
  axis, or for depthwise kernels their channel and multiplier axes); biases, BatchNorm statistics
  and small tensors as in "float16". About a quarter of the float32 bytes.
- "float16": every float32 dataset as float16 (float32 where float16 would overflow).
- "float32": exactly what `model.save` writes; the last resort, output change 0.
Whatever the storage, the model loads with float32 variables and runs in float32.

File layout, and why plain Keras cannot load an int8 file wrongly: a float16 or float32 file is a
plain Keras archive (Keras casts float16 datasets to its float32 variables). An int8 file has no
`model.weights.h5` member: it holds `model.weights.int8.h5` instead, with Keras's HDF5 layout but
int8 codes in the quantised datasets and their scales at the same paths under `int8_scales/`.
`keras.models.load_model` therefore refuses it ("Expected a model.weights.h5 or model.weights.npz
file") rather than reading codes as weights; `load_compact` dequantises the member into a standard
archive and lets Keras load that, in safe mode. Keras's own `model.quantize("int8")` does not fit:
it covers dense layers only, not convolutions, and changes how the model computes.
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

from lungviz.errors import ModelLoadError

if TYPE_CHECKING:
    import keras

WEIGHTS_MEMBER = "model.weights.h5"
INT8_MEMBER = "model.weights.int8.h5"
SCALES_GROUP = "int8_scales"
INT8_MIN_SIZE = 1024
"""Smaller kernels stay float16: their bytes do not matter, and a head's few weights move outputs most."""
FLOAT16_MAX = float(np.finfo(np.float16).max)
MAX_MEMBER_EXPANSION = 100
"""A member that inflates more than this (and past `MAX_MEMBER_BYTES`) is a decompression bomb, as Keras judges it."""
MAX_MEMBER_BYTES = 1 << 30


@dataclass(frozen=True)
class StoredWeights:
    """How `save_compact` stored a model, for its card: the precision kept and the drift measured for each one tried."""

    dtype: str
    max_output_change: float
    tried: dict[str, float]


def _float16_or_same(values: np.ndarray) -> np.ndarray:
    if values.dtype == np.float32 and (values.size == 0 or np.abs(values).max() < FLOAT16_MAX):
        return values.astype(np.float16)
    return values


def _is_quantised(values: np.ndarray) -> bool:
    return values.dtype == np.float32 and values.ndim >= 2 and values.size >= INT8_MIN_SIZE


def _reduced_axes(dataset_path: str, ndim: int) -> tuple[int, ...]:
    """Axes that share one scale: all but the output channels.

    Keras names a layer's group in the weights file after its class (`depthwise_conv2d_3`), which
    is how a depthwise kernel (kh, kw, channels, multiplier) is told from a conv kernel. A wrong
    guess would only coarsen the scales: the output change is measured either way.
    """
    layer_group = dataset_path.split("/")[-3] if dataset_path.count("/") >= 2 else ""
    channel_axes = 2 if layer_group.startswith("depthwise_conv") else 1
    return tuple(range(ndim - channel_axes))


def _quantise(values: np.ndarray, reduced_axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 codes and float32 scales (kept dims, so they broadcast) for a kernel."""
    scales = (np.abs(values).max(axis=reduced_axes, keepdims=True) / 127.0).astype(np.float32)
    codes = np.round(values / np.where(scales > 0, scales, 1.0))
    return np.clip(codes, -127, 127).astype(np.int8), scales


def _compact_copy(source: h5py.Group, target: h5py.Group, scales: h5py.Group | None) -> None:
    """Copy Keras's weights tree at lower precision; int8 codes with their scales where `scales` is given."""
    for key, item in source.items():
        if isinstance(item, h5py.Group):
            _compact_copy(item, target.create_group(key), scales)
            continue
        values = item[()]
        if scales is not None and _is_quantised(values):
            codes, channel_scales = _quantise(values, _reduced_axes(item.name, values.ndim))
            target.create_dataset(key, data=codes)
            scales.create_dataset(item.name.lstrip("/"), data=channel_scales)
        else:
            target.create_dataset(key, data=_float16_or_same(values))
    for name, value in source.attrs.items():
        target.attrs[name] = value


def _compact_weights(weights: bytes, *, int8: bool) -> bytes:
    compact = io.BytesIO()
    with h5py.File(io.BytesIO(weights), "r") as source, h5py.File(compact, "w") as target:
        _compact_copy(source, target, target.create_group(SCALES_GROUP) if int8 else None)
    return compact.getvalue()


def _dequantised_weights(int8_weights: bytes, file_name: str) -> bytes:
    """Keras's float32 weights file back from an int8 member; a member whose parts do not fit is an error."""
    restored = io.BytesIO()
    with h5py.File(io.BytesIO(int8_weights), "r") as source, h5py.File(restored, "w") as target:
        scales: dict[str, np.ndarray] = {}
        if isinstance(source.get(SCALES_GROUP), h5py.Group):
            source[SCALES_GROUP].visititems(
                lambda name, item: scales.update({f"/{name}": item[()]}) if isinstance(item, h5py.Dataset) else None
            )
        if not scales:
            raise ModelLoadError(f"{file_name}: {INT8_MEMBER} holds no {SCALES_GROUP}")
        if _dequantised_copy(source, target, scales, file_name) != len(scales):
            raise ModelLoadError(f"{file_name}: {INT8_MEMBER} has int8 scales for weights it does not hold")
    return restored.getvalue()


def _dequantised_copy(source: h5py.Group, target: h5py.Group, scales: dict[str, np.ndarray], file_name: str) -> int:
    """Copy the tree with each scaled dataset dequantised; return how many were."""
    dequantised = 0
    for key, item in source.items():
        if item.name == f"/{SCALES_GROUP}":
            continue
        if isinstance(item, h5py.Group):
            dequantised += _dequantised_copy(item, target.create_group(key), scales, file_name)
            continue
        values = item[()]
        if item.name in scales:
            scale = scales[item.name]
            channels_fit = scale.ndim == values.ndim and all(
                s in (1, v) for s, v in zip(scale.shape, values.shape, strict=True)
            )
            if values.dtype != np.int8 or not channels_fit:
                raise ModelLoadError(
                    f"{file_name}: int8 weights {item.name} {values.shape} do not fit scales {scale.shape}"
                )
            values, dequantised = values.astype(np.float32) * scale.astype(np.float32), dequantised + 1
        target.create_dataset(key, data=values)
    for name, value in source.attrs.items():
        target.attrs[name] = value
    return dequantised


@contextmanager
def _archive(path: Path) -> Iterator[zipfile.ZipFile]:
    """The `.keras` zip archive, with unreadable files (and decompression bombs) as ModelLoadError."""
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.file_size > max(MAX_MEMBER_BYTES, MAX_MEMBER_EXPANSION * info.compress_size):
                    raise ModelLoadError(f"{path.name}: member {info.filename} would inflate to {info.file_size} bytes")
            yield archive
    except (OSError, zipfile.BadZipFile) as error:
        raise ModelLoadError(f"{path.name} is not a readable .keras (zip) archive: {error}") from error


def _read_members(path: Path) -> dict[str, bytes]:
    with _archive(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _write_members(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def _compact_members(full: dict[str, bytes], dtype: str) -> dict[str, bytes]:
    """The archive's members with its float32 weights stored as `dtype`."""
    weights = full[WEIGHTS_MEMBER]
    others = {name: data for name, data in full.items() if name != WEIGHTS_MEMBER}
    if dtype == "int8-per-channel":
        return {**others, INT8_MEMBER: _compact_weights(weights, int8=True)}
    return {**others, WEIGHTS_MEMBER: _compact_weights(weights, int8=False)}


def load_compact(path: Path) -> keras.Model:
    """Load a float32, float16 or int8 `.keras` file with float32 variables (safe mode, uncompiled).

    Raises ModelLoadError, with the file's name, for anything that is not a loadable model.
    """
    import keras

    path = Path(path)
    with _archive(path) as archive:
        int8 = INT8_MEMBER in archive.namelist()
    try:
        if not int8:
            return keras.models.load_model(path, compile=False, safe_mode=True)
        members = _read_members(path)
        members[WEIGHTS_MEMBER] = _dequantised_weights(members.pop(INT8_MEMBER), path.name)
        with tempfile.TemporaryDirectory() as folder:
            restored = Path(folder) / "model.keras"  # Keras loads only files named *.keras
            _write_members(restored, members)
            return keras.models.load_model(restored, compile=False, safe_mode=True)
    except ModelLoadError:
        raise
    except Exception as error:  # Keras and h5py raise many types for a bad file
        raise ModelLoadError(f"cannot load {path.name}: {error}") from error


def save_compact(model: keras.Model, path: Path, probe: np.ndarray, *, tolerance: float = 2e-3) -> StoredWeights:
    """Save `model` at the smallest precision whose outputs on `probe` stay within `tolerance` of float32's.

    The change is measured on the file as `load_compact` reads it back; float32 is kept when
    neither int8 nor float16 stays within tolerance.
    """
    path = Path(path)
    model.save(path)
    full = _read_members(path)
    before = np.asarray(model(probe, training=False))
    tried: dict[str, float] = {}
    for dtype in ("int8-per-channel", "float16"):
        _write_members(path, _compact_members(full, dtype))
        tried[dtype] = float(np.abs(np.asarray(load_compact(path)(probe, training=False)) - before).max())
        if tried[dtype] <= tolerance:  # (NaN never is)
            return StoredWeights(dtype, tried[dtype], tried)
    _write_members(path, full)
    return StoredWeights("float32", 0.0, tried)
