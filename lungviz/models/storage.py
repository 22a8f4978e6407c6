"""Compact model files: `.keras` archives whose weights are stored as float16.

Every retrain adds its bytes to git history, so shipped models store their
weights at half precision. Keras casts them back to float32 variables when it
loads the file, so inference runs in float32 as before; `save_compact` checks
that predictions did not change before it keeps the smaller file.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import h5py
import numpy as np

from lungviz.errors import PrecisionLossError

WEIGHTS_MEMBER = "model.weights.h5"
FLOAT16_MAX = float(np.finfo(np.float16).max)


def _halve(source: h5py.Group, target: h5py.Group) -> None:
    for key, item in source.items():
        if isinstance(item, h5py.Group):
            _halve(item, target.create_group(key))
            continue
        values = item[()]
        if values.dtype == np.float32 and (values.size == 0 or np.abs(values).max() < FLOAT16_MAX):
            values = values.astype(np.float16)
        target.create_dataset(key, data=values)
    for name, value in source.attrs.items():
        target.attrs[name] = value


def halve_weights(path: Path) -> None:
    """Rewrite a `.keras` archive in place with float16 weight datasets."""
    path = Path(path)
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    compact = io.BytesIO()
    with h5py.File(io.BytesIO(members[WEIGHTS_MEMBER]), "r") as source, h5py.File(compact, "w") as target:
        _halve(source, target)
    members[WEIGHTS_MEMBER] = compact.getvalue()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def save_compact(model, path: Path, probe: np.ndarray, *, tolerance: float = 2e-3) -> float:
    """Save `model` with float16 weights; return the largest output change on `probe` inputs.

    Raises PrecisionLossError (and leaves a float32 file) when the change exceeds `tolerance`.
    """
    import keras

    path = Path(path)
    model.save(path)
    before = np.asarray(model(probe, training=False))
    halve_weights(path)
    after = np.asarray(keras.models.load_model(path, compile=False, safe_mode=True)(probe, training=False))
    change = float(np.abs(after - before).max())
    if change > tolerance:
        model.save(path)
        raise PrecisionLossError(f"float16 weights change outputs by {change:.2e} (> {tolerance}); kept float32")
    return change
