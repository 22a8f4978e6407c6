"""EfficientNet-Lite port: ImageNet predictions on real photos, layout, weight loading, saving."""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest
import skimage.data
from PIL import Image

from lungviz.models.backbones.efficientnet_lite import (
    CAM_LAYER,
    VARIANTS,
    block_names,
    build_efficientnet_lite,
    imagenet_weights_path,
    load_imagenet_weights,
)
from lungviz.models.backbones.torch_checkpoint import load_state_dict

# scikit-image photo -> (acceptable ImageNet classes, how high the first of them must rank)
PHOTOS = {
    "chelsea": ({281: "tabby", 282: "tiger cat", 285: "Egyptian cat"}, 1),
    "coffee": ({967: "espresso", 968: "cup"}, 1),
    # A launch-pad rocket has no exact class; these are the sensible neighbours.
    "rocket": ({657: "missile", 744: "projectile", 812: "space shuttle"}, 5),
}


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The reference evaluation crop: the central size/(size+32) of the short side, bicubic to size."""
    height, width = image.shape[:2]
    crop = int(size / (size + 32) * min(height, width))
    top, left = (height - crop + 1) // 2, (width - crop + 1) // 2
    patch = Image.fromarray(image[top : top + crop, left : left + crop])
    return np.asarray(patch.resize((size, size), Image.BICUBIC), dtype=np.float32)


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def imagenet_predictions(request) -> tuple[str, dict[str, np.ndarray]]:
    """Each variant's ImageNet probabilities for the photos, at its native resolution, one batch."""
    size = VARIANTS[request.param].resolution
    model = build_efficientnet_lite(request.param, (size, size, 3), include_top=True)
    pixels = np.stack([center_crop(getattr(skimage.data, name)(), size) for name in PHOTOS])
    return request.param, dict(zip(PHOTOS, model.predict(pixels, verbose=0), strict=False))


@pytest.mark.parametrize("photo", sorted(PHOTOS))
def test_imagenet_weights_recognise_photos(imagenet_predictions, photo):
    variant, predictions = imagenet_predictions
    classes, within = PHOTOS[photo]
    probabilities = predictions[photo]
    ranking = np.argsort(probabilities)[::-1]
    assert np.isclose(probabilities.sum(), 1.0, atol=1e-4)
    assert set(ranking[:within]) & set(classes), (
        f"{variant} ranks {photo} as {ranking[:5].tolist()}, expected one of {classes} in the top {within}"
    )


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_blocks_match_checkpoint_and_are_named_by_stage(variant):
    model = build_efficientnet_lite(variant, (64, 64, 3), weights=None)
    state = load_state_dict(imagenet_weights_path(variant))
    checkpoint_blocks = {int(k.split(".")[1]) for k in state if k.startswith("_blocks.")}

    names = block_names(model)

    assert len(names) == len(checkpoint_blocks)
    assert all(re.fullmatch(r"block[1-7][a-z]", n) for n in names)
    assert [n[5] for n in names] == sorted(n[5] for n in names), "stages must run from input to output"
    # Every layer belongs to exactly the stem, one block, or the top.
    for layer in model.layers[2:]:
        assert layer.name.startswith(("stem_", "top_")) or layer.name.split("_")[0] in names, layer.name


def test_features_end_at_cam_layer_and_share_the_classifiers_weights():
    photo = center_crop(skimage.data.chelsea(), 224)[None]
    features_model = build_efficientnet_lite("efficientnet_lite0")
    classifier = build_efficientnet_lite("efficientnet_lite0", include_top=True)

    features = features_model.predict(photo, verbose=0)

    assert features_model.output_shape == (None, 7, 7, 1280)
    assert features_model.layers[-1].name == CAM_LAYER
    assert features.min() >= 0.0
    assert features.max() <= 6.0
    assert features.max() > 0.0
    inner = keras.Model(classifier.input, classifier.get_layer(CAM_LAYER).output).predict(photo, verbose=0)
    np.testing.assert_allclose(features, inner, atol=1e-5)


def test_inputs_are_raw_pixels_normalised_inside_the_graph():
    photo = center_crop(skimage.data.coffee(), 224)[None]
    model = build_efficientnet_lite("efficientnet_lite0", include_top=True)

    assert model.predict(photo, verbose=0).argmax() in PHOTOS["coffee"][0]
    # The same photo already scaled to [0, 1] is not what the weights expect.
    assert model.predict(photo / 255.0, verbose=0).argmax() not in PHOTOS["coffee"][0]


def test_saved_model_reloads_in_safe_mode_with_same_outputs(tmp_path):
    model = build_efficientnet_lite("efficientnet_lite0", (96, 96, 3))
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 96, 96, 3)).astype(np.float32)
    model.save(tmp_path / "lite0.keras")

    reloaded = keras.models.load_model(tmp_path / "lite0.keras", safe_mode=True)

    np.testing.assert_allclose(reloaded.predict(pixels, verbose=0), model.predict(pixels, verbose=0), atol=1e-6)
    assert block_names(reloaded) == block_names(model)


def test_loading_weights_into_another_variant_names_the_mismatch():
    model = build_efficientnet_lite("efficientnet_lite1", (64, 64, 3), weights=None)
    with pytest.raises(ValueError, match="layout"):
        load_imagenet_weights(model, "efficientnet_lite0")


def test_loading_weights_with_wrong_shapes_names_the_layer():
    model = build_efficientnet_lite("efficientnet_lite0", (64, 64, 1), weights=None)
    with pytest.raises(ValueError, match="stem_conv"):
        load_imagenet_weights(model, "efficientnet_lite0")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"variant": "efficientnet_lite9"}, "unknown EfficientNet-Lite variant"),
        ({"variant": "efficientnet_lite0", "weights": "noisy-student"}, "weights must be"),
        ({"variant": "efficientnet_lite0", "input_shape": (64, 64, 1)}, "3 input channels"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_efficientnet_lite(**kwargs)
