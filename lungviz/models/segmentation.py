"""The chest X-ray lung segmenter's network: a U-Net on an ImageNet EfficientNet-Lite0 encoder.

The encoder stops at stride 16 (lungs are large, smooth shapes: the deepest
blocks add cost, not accuracy) and the decoder is light, so a mask costs a
fraction of one classifier's forward pass. Input follows the classifiers'
contract (raw [0, 255] gray replicated to three channels, normalised inside);
output is P(lung) per pixel at the input size. Batch normalisation in the
encoder always runs in inference mode, as in the classifiers' fine-tuning.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from lungviz.models.backbones.efficientnet_lite import block_names, build_efficientnet_lite

ENCODER = "efficientnet_lite0"
SKIP_STRIDES = (2, 4, 8, 16)
DECODER_FILTERS = (64, 32, 24, 16)
"""Channels of the decoder stages, from stride 8 back up to full resolution."""
OUTPUT_LAYER = "lung_probability"


def _conv_bn_relu(x, filters: int, name: str):
    x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _block_outputs_by_stride(encoder: keras.Model, input_height: int) -> dict[int, keras.KerasTensor]:
    """The last block output at each stride: `<block>_add` where the block has a skip, else its projection."""
    layers = {layer.name: layer for layer in encoder.layers}
    taps = {input_height // int(layers["stem_activation"].output.shape[1]): layers["stem_activation"].output}
    for block in block_names(encoder):
        output = layers.get(f"{block}_add") or layers[f"{block}_project_bn"]
        taps[input_height // int(output.output.shape[1])] = output.output
    return taps


def build_lung_unet(input_size: Sequence[int] = (192, 192), *, pretrained: bool = True) -> keras.Model:
    """A new lung segmenter for (H, W) inputs, both divisible by 16; pretrained loads the ImageNet encoder."""
    height, width = (int(n) for n in input_size)
    if height % SKIP_STRIDES[-1] or width % SKIP_STRIDES[-1]:
        raise ValueError(f"input size {height}x{width} must be divisible by {SKIP_STRIDES[-1]}")
    backbone = build_efficientnet_lite(ENCODER, (height, width, 3), weights="imagenet" if pretrained else None)
    taps = _block_outputs_by_stride(backbone, height)
    encoder = keras.Model(backbone.input, [taps[stride] for stride in SKIP_STRIDES], name="encoder")
    inputs = keras.Input((height, width, 3), name="pixels")
    *skips, x = encoder(inputs, training=False)
    for index, filters in enumerate(DECODER_FILTERS):
        x = keras.layers.UpSampling2D(2, interpolation="bilinear", name=f"decoder{index}_up")(x)
        if index < len(skips):
            x = keras.layers.Concatenate(name=f"decoder{index}_concat")([x, skips[-1 - index]])
        x = _conv_bn_relu(x, filters, f"decoder{index}")
    outputs = keras.layers.Conv2D(1, 1, activation="sigmoid", name=OUTPUT_LAYER)(x)
    return keras.Model(inputs, outputs, name="lung_unet")
