"""MobileNetV2 and InceptionV3 in Keras 3 with the pretrained weights of the npm package nsfwjs 4.4.0.

nsfwjs (MIT, Infinite Red) ships two Keras 2.2.4 models exported to TF.js:
ImageNet MobileNetV2 (alpha 1.0, 224) and InceptionV3 (299) backbones, each
fine-tuned with a small dense head for a 5-class content-safety task, every
tensor quantised to 8 bits. LungViz keeps the backbones and drops the head;
the weights are read from the package's JavaScript files by `tfjs`, which
parses them as data and never runs them. npm is not a Python dependency, so
the package is fetched once (`make nsfwjs`: `npm pack nsfwjs@4.4.0`, unpacked
into `~/.cache/lungviz/nsfwjs/package`) or pointed to with `LUNGVIZ_NSFWJS_DIR`.

Matching how the weights were trained: nsfwjs feeds RGB pixels divided by 255
(`img.toFloat().div(255)` in `dist/cjs/core.js`), so the expected input range is
[0, 1] (`INPUT_SCALE`), not the [-1, 1] of Keras' ImageNet MobileNetV2/InceptionV3.

Layers are loaded by name and checked by wiring: every Keras layer must have a
TF.js layer of the same name and class fed by the same layers, and every
tensor outside the dropped head must be used. Keras 3 auto-names InceptionV3's
layers with a process-wide counter (`conv2d_57` if 56 convolutions were built
before); `build_backbone` renames them to the Keras 2 names nsfwjs uses
(`conv2d_1` for the first convolution created), so names are the same in
every process, which fine-tuning by layer name and resumed runs rely on.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from lungviz.errors import ArchitectureError, CheckpointError
from lungviz.models.backbones import tfjs

PACKAGE_VERSION = "4.4.0"
DIR_ENV = "LUNGVIZ_NSFWJS_DIR"
DEFAULT_DIR = Path("~/.cache/lungviz/nsfwjs/package")
INPUT_SCALE = 1 / 255.0
INPUT_NAME = "input_1"

# Keras 3 renamed DepthwiseConv2D's weight; everything else keeps its Keras 2 name.
_KERAS2_WEIGHT_NAMES = {("DepthwiseConv2D", "kernel"): "depthwise_kernel"}


@dataclass(frozen=True)
class Variant:
    """One nsfwjs backbone: its folder in `dist/models/`, keras.applications constructor, size and CAM layer."""

    folder: str
    constructor: str
    resolution: int
    cam_layer: str


VARIANTS: dict[str, Variant] = {
    "mobilenetv2": Variant("mobilenet_v2", "MobileNetV2", 224, "out_relu"),
    "inceptionv3": Variant("inception_v3", "InceptionV3", 299, "mixed10"),
}


def _variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown nsfwjs backbone {name!r} (choose from {', '.join(VARIANTS)})") from None


def package_dir() -> Path:
    """The unpacked nsfwjs 4.4.0 package: $LUNGVIZ_NSFWJS_DIR, else ~/.cache/lungviz/nsfwjs/package."""
    root = Path(os.environ.get(DIR_ENV) or DEFAULT_DIR).expanduser()
    how = (
        f"Fetch it once with `make nsfwjs` (npm pack nsfwjs@{PACKAGE_VERSION}, unpacked into "
        f"{DEFAULT_DIR.parent}), or set {DIR_ENV} to an unpacked nsfwjs {PACKAGE_VERSION} package folder"
    )
    manifest = root / "package.json"
    if not manifest.is_file():
        raise ArchitectureError(f"the nsfwjs package is not at {root} (no package.json). {how}")
    meta = json.loads(manifest.read_text(encoding="utf-8"))
    if (meta.get("name"), meta.get("version")) != ("nsfwjs", PACKAGE_VERSION):
        raise ArchitectureError(
            f"{root} holds {meta.get('name')} {meta.get('version')}, not nsfwjs {PACKAGE_VERSION}. {how}"
        )
    return root


def model_file(variant: str) -> Path:
    """The variant's browserified TF.js model inside the nsfwjs package."""
    return package_dir() / "dist" / "models" / _variant(variant).folder / f"model{tfjs.SCRIPT_SUFFIX}"


def _auto_name_prefix(layer: keras.layers.Layer) -> str:
    """The prefix Keras gives unnamed layers of this class (its snake-cased class name, as keras does it)."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", type(layer).__name__)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _keras2_names(model: keras.Model) -> keras.Model:
    """`model` with its auto-named layers renamed `<prefix>_<k>`, k the 1-based creation order (Keras 2 style).

    Keras 3 names the n-th unnamed layer of a class `<prefix>_<n>` with a
    counter that keeps counting across models, so creation order is the order
    of those numbers (`<prefix>` alone being the first). Returns `model`
    itself when no layer is auto-named.
    """
    created: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for layer in model.layers:
        prefix = _auto_name_prefix(layer)
        match = re.fullmatch(rf"{re.escape(prefix)}(?:_(\d+))?", layer.name)
        if match and not isinstance(layer, keras.layers.InputLayer):
            created[prefix].append((int(match.group(1) or 0), layer.name))
    names = {old: f"{prefix}_{k}" for prefix, found in created.items() for k, (_, old) in enumerate(sorted(found), 1)}
    if not names:
        return model

    def renamed(layer: keras.layers.Layer) -> keras.layers.Layer:
        return type(layer).from_config({**layer.get_config(), "name": names.get(layer.name, layer.name)})

    inputs = keras.Input(model.input_shape[1:], name=INPUT_NAME)
    return keras.models.clone_model(model, input_tensors=inputs, clone_function=renamed)


def keras_inbound(model: keras.Model) -> dict[str, tuple[str, ...]]:
    """Layer name -> names of the layers feeding it, read from the functional model's config."""

    def sources(argument: Any) -> list[str]:
        if isinstance(argument, dict):
            history = argument.get("config", {}).get("keras_history") if "class_name" in argument else None
            return [history[0]] if history else [name for value in argument.values() for name in sources(value)]
        if isinstance(argument, list | tuple):
            return [name for value in argument for name in sources(value)]
        return []

    return {
        layer["name"]: tuple(sources(layer["inbound_nodes"][0]["args"]) if layer["inbound_nodes"] else ())
        for layer in model.get_config()["layers"]
    }


def build_backbone(
    variant: str, input_shape: tuple[int, int, int] | None = None, weights: str | None = "nsfwjs"
) -> keras.Model:
    """The Keras backbone (no top; ends at `VARIANTS[variant].cam_layer`) taking RGB in [0, 1].

    weights is "nsfwjs" (the package's weights; ArchitectureError if it is not
    installed) or None (random init). input_shape defaults to the native size.
    """
    spec = _variant(variant)
    if weights not in ("nsfwjs", None):
        raise ValueError(f"weights must be 'nsfwjs' or None, not {weights!r}")
    shape = input_shape or (spec.resolution, spec.resolution, 3)
    constructor = getattr(keras.applications, spec.constructor)
    model = _keras2_names(constructor(include_top=False, weights=None, input_shape=shape))
    if weights == "nsfwjs":
        load_nsfwjs_weights(model, variant)
    return model


def _descendants(layers: tuple[tfjs.TfjsLayer, ...], root: str) -> set[str]:
    """Names of the layers computed from `root` (in topology order, every layer follows its inputs)."""
    found = {root}
    for layer in layers:
        if found.intersection(layer.inbound):
            found.add(layer.name)
    return found - {root}


def load_nsfwjs_weights(model: keras.Model, variant: str) -> None:
    """Copy the nsfwjs backbone tensors into `model` (built by `build_backbone`), checking names and wiring.

    Raises CheckpointError when a layer is missing or wired differently, a
    shape differs, or a tensor outside the dropped head is left unused.
    """
    source = tfjs.read_layers_model(model_file(variant))
    theirs = {layer.name: layer for layer in source.layers}
    ours = keras_inbound(model)
    keras_input = model.layers[0].name

    def resolve(name: str, consumer: keras.layers.Layer) -> str:
        """The Keras layer that plays TF.js layer `name`'s part as an input of `consumer`."""
        layer = theirs[name]
        if layer.class_name == "InputLayer":
            return keras_input
        # Keras 3 folds MobileNetV2's first ZeroPadding2D into its convolution's padding="same" (same pads).
        if name not in ours and layer.class_name == "ZeroPadding2D" and consumer.get_config().get("padding") == "same":
            return resolve(layer.inbound[0], consumer)
        return name

    used: set[str] = set()
    for layer in model.layers[1:]:
        mine = theirs.get(layer.name)
        if mine is None or mine.class_name != type(layer).__name__:
            raise CheckpointError(f"nsfwjs {variant} has no {type(layer).__name__} layer named {layer.name}")
        wired = tuple(resolve(name, layer) for name in mine.inbound)
        if wired != ours[layer.name]:
            raise CheckpointError(
                f"layer {layer.name} takes {list(ours[layer.name])} in Keras but {list(wired)} in nsfwjs {variant}"
            )
        keys = [f"{layer.name}/{_KERAS2_WEIGHT_NAMES.get((mine.class_name, w.name), w.name)}" for w in layer.weights]
        missing = [key for key in keys if key not in source.weights]
        if missing:
            raise CheckpointError(f"nsfwjs {variant} lacks the tensors {missing}")
        arrays: list[np.ndarray] = [source.weights[key] for key in keys]
        expected = [tuple(w.shape) for w in layer.weights]
        if [a.shape for a in arrays] != expected:
            raise CheckpointError(
                f"layer {layer.name} expects weights of shapes {expected}, nsfwjs gives {[a.shape for a in arrays]}"
            )
        layer.set_weights(arrays)
        used.update(keys)
    head = _descendants(source.layers, model.layers[-1].name)
    unused = sorted(key for key in set(source.weights) - used if key.split("/")[0] not in head)
    if unused:
        raise CheckpointError(f"nsfwjs {variant} tensors not used by the backbone: {unused[:10]}")


def inception_blocks(model: keras.Model) -> list[list[str]]:
    """InceptionV3's layers (no input) grouped for fine-tuning: the stem, then one group per `mixedN` module.

    The stem is the chain of layers before the graph first branches; each
    later group holds a module's concatenation `mixedN` and every layer
    between it and the previous one. Layers come in topological order, so a
    module's layers (descendants of mixed{N-1}, ancestors of mixedN) sit
    between the two in the list.
    """
    inbound = keras_inbound(model)
    consumers: dict[str, int] = defaultdict(int)
    for sources in inbound.values():
        for name in sources:
            consumers[name] += 1
    names = [layer.name for layer in model.layers[1:]]
    stem_end = next(index for index, name in enumerate(names) if consumers[name] > 1)
    groups = [names[: stem_end + 1], []]
    for name in names[stem_end + 1 :]:
        groups[-1].append(name)
        if re.fullmatch(r"mixed\d+", name):
            groups.append([])
    return [group for group in groups if group]
