"""nsfwjs backbones: the package's own classifier on real photos, tensor-by-tensor loading, fine-tuning blocks."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import skimage.data
from PIL import Image

from lungviz.errors import ArchitectureError, CheckpointError
from lungviz.models.backbones import nsfwjs
from lungviz.models.backbones.tfjs import read_layers_model
from tests.models.backbones.photos import cats_and_cups, separation

NSFW_CLASSES = ("Drawing", "Hentai", "Neutral", "Porn", "Sexy")  # dist/cjs/nsfw_classes.js


def _installed(variant: str):
    try:
        return read_layers_model(nsfwjs.model_file(variant))
    except ArchitectureError as error:
        pytest.skip(f"nsfwjs package not available: {error}")


@pytest.fixture(scope="module", params=sorted(nsfwjs.VARIANTS))
def loaded(request) -> tuple[str, keras.Model, object]:
    """(variant, backbone with nsfwjs weights at the native size, the package's model as read)."""
    source = _installed(request.param)
    return request.param, nsfwjs.build_backbone(request.param), source


def _center_square(photo: np.ndarray, size: int) -> np.ndarray:
    height, width = photo.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = Image.fromarray(photo[top : top + side, left : left + side]).convert("RGB")
    return np.asarray(square.resize((size, size), Image.BILINEAR), dtype=np.float32)


def _with_nsfwjs_head(backbone: keras.Model, source) -> keras.Model:
    """The package's whole classifier: the backbone plus its dense head, rebuilt from the topology."""
    x = backbone.output
    head = [layer for layer in source.layers if layer.class_name in ("Flatten", "Dense")]
    x = keras.layers.GlobalAveragePooling2D()(x)  # the topology's AveragePooling2D covers the whole native map
    for layer in head[1:]:
        dense = keras.layers.Dense(layer.config["units"], activation=layer.config["activation"])
        x = dense(x)
        dense.set_weights([source.weights[f"{layer.name}/kernel"], source.weights[f"{layer.name}/bias"]])
    return keras.Model(backbone.input, x)


def test_the_packages_classifier_still_works_on_our_backbone(loaded):
    variant, backbone, source = loaded
    size = nsfwjs.VARIANTS[variant].resolution
    photos = [skimage.data.chelsea(), skimage.data.coffee(), skimage.data.astronaut()]
    silhouette = (skimage.data.horse() * 255).astype(np.uint8)  # a black-and-white drawing of a horse
    pixels = np.stack([_center_square(image, size) for image in [*photos, silhouette]])

    probabilities = np.asarray(_with_nsfwjs_head(backbone, source)(pixels * nsfwjs.INPUT_SCALE, training=False))

    labels = [NSFW_CLASSES[index] for index in probabilities.argmax(axis=1)]
    assert labels == ["Neutral", "Neutral", "Neutral", "Drawing"], probabilities.round(2)
    assert probabilities[:3, NSFW_CLASSES.index("Neutral")].min() > 0.9


def test_every_backbone_tensor_is_loaded_by_name_and_only_the_head_is_left(loaded):
    variant, backbone, source = loaded
    renamed = {"DepthwiseConv2D": {"kernel": "depthwise_kernel"}}
    loaded_names = set()
    for layer in backbone.layers:
        for variable, value in zip(layer.weights, layer.get_weights(), strict=True):
            name = f"{layer.name}/{renamed.get(type(layer).__name__, {}).get(variable.name, variable.name)}"
            np.testing.assert_array_equal(value, source.weights[name], err_msg=name)
            loaded_names.add(name)

    classes = {layer.name: layer.class_name for layer in source.layers}
    left = {name.split("/")[0] for name in set(source.weights) - loaded_names}
    assert sorted(classes[name] for name in left) == ["Dense"] * 3  # the 5-class head, dropped
    assert {layer.name for layer in backbone.layers[1:]} <= set(classes)
    assert backbone.layers[-1].name == nsfwjs.VARIANTS[variant].cam_layer


def test_features_separate_cats_from_cups_better_than_random_weights(loaded):
    variant, _, _ = loaded
    size = 160  # not the native size: the weights load at any input size
    cats, cups = cats_and_cups(size)
    scores = {}
    for weights in ("nsfwjs", None):
        keras.utils.set_random_seed(0)
        backbone = nsfwjs.build_backbone(variant, (size, size, 3), weights=weights)
        pooled = [np.asarray(backbone(x * nsfwjs.INPUT_SCALE, training=False)).mean(axis=(1, 2)) for x in (cats, cups)]
        scores[weights] = separation(*pooled)
    assert scores["nsfwjs"] > 1.3 * scores[None], scores


def test_weights_of_another_variant_are_refused_by_name(loaded):
    variant, backbone, _ = loaded
    other = next(name for name in nsfwjs.VARIANTS if name != variant)
    with pytest.raises(CheckpointError, match=r"has no \w+ layer named"):
        nsfwjs.load_nsfwjs_weights(backbone, other)


def test_inception_layer_names_do_not_depend_on_what_was_built_before():
    first = nsfwjs.build_backbone("inceptionv3", (96, 96, 3), weights=None)
    keras.layers.Conv2D(1, 1)  # advances Keras' auto-naming counter
    keras.layers.BatchNormalization()
    second = nsfwjs.build_backbone("inceptionv3", (96, 96, 3), weights=None)

    names = [layer.name for layer in first.layers]
    assert names == [layer.name for layer in second.layers]
    assert names[:3] == [nsfwjs.INPUT_NAME, "conv2d_1", "batch_normalization_1"]
    assert sum(name.startswith("conv2d_") for name in names) == 94


def test_inception_blocks_are_the_stem_then_one_per_mixed_module():
    model = nsfwjs.build_backbone("inceptionv3", (96, 96, 3), weights=None)

    blocks = nsfwjs.inception_blocks(model)

    assert [block[-1] for block in blocks[1:]] == [f"mixed{index}" for index in range(11)]
    assert blocks[0][0] == "conv2d_1"
    assert blocks[0][-1].startswith("max_pooling2d")  # the stem ends where the graph first branches
    flat = [name for block in blocks for name in block]
    assert flat == [layer.name for layer in model.layers[1:]]
    # "Fine-tune the top 2 blocks" reaches exactly mixed9 and mixed10 with every layer feeding them.
    top_two = set(blocks[-2] + blocks[-1])
    assert {"mixed9_0", "concatenate_1", "mixed9", "mixed9_1", "concatenate_2", "mixed10"} <= top_two
    ancestors = set()
    frontier = ["mixed10"]
    inbound = nsfwjs.keras_inbound(model)
    while frontier:
        name = frontier.pop()
        if name != "mixed8" and name not in ancestors:
            ancestors.add(name)
            frontier.extend(inbound[name])
    assert top_two == ancestors
    assert all(len(block) > 1 for block in blocks)


def test_missing_or_wrong_package_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv(nsfwjs.DIR_ENV, str(tmp_path))
    with pytest.raises(ArchitectureError, match=r"make nsfwjs.*LUNGVIZ_NSFWJS_DIR"):
        nsfwjs.build_backbone("mobilenetv2")
    (tmp_path / "package.json").write_text(json.dumps({"name": "nsfwjs", "version": "2.4.2"}))
    with pytest.raises(ArchitectureError, match=r"nsfwjs 2\.4\.2, not nsfwjs 4\.4\.0"):
        nsfwjs.model_file("inceptionv3")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"variant": "mobilenetv3"}, "unknown nsfwjs backbone"),
        ({"variant": "mobilenetv2", "weights": "imagenet"}, "weights must"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        nsfwjs.build_backbone(**kwargs)
