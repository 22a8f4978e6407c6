"""The model-randomisation sanity check: maps that ignore the model fail it, model-driven maps change."""

import keras
import numpy as np
import pytest

from lungviz.inference.explanations import base
from lungviz.training import randomisation
from lungviz.training.randomisation import PASS_BELOW, cascade, randomisation_check, weighted_layers
from tests.images_factory import chest_radiograph
from tests.model_factory import INPUT_SIZE, flat_softmax_model, nested_sigmoid_model


class _ImageEdges(base.Explainer):
    """A 'method' that draws the image's edges whatever the model: what the check exists to catch."""

    label = "image edges"

    def _explain(self, inputs: np.ndarray, class_index: int) -> np.ndarray:
        gray = inputs[0, ..., 0]
        return np.hypot(*np.gradient(gray)).astype(np.float32)


@pytest.fixture
def edges_method(monkeypatch):
    monkeypatch.setitem(base.METHODS, "image-edges", _ImageEdges)
    return "image-edges"


@pytest.fixture(scope="module")
def inputs():
    images = [chest_radiograph(*INPUT_SIZE, seed=seed) for seed in range(4)]
    return np.repeat(np.stack(images)[..., None] * 255.0, 3, axis=-1).astype(np.float32)


@pytest.mark.parametrize("build", [flat_softmax_model, nested_sigmoid_model], ids=["flat", "nested backbone"])
def test_the_cascade_starts_at_the_head_and_grows_down_to_the_input(build):
    model = build()
    layers = weighted_layers(model)
    assert layers[0].name == "predictions"
    assert layers[-1].name.endswith("conv1")  # the first conv, found inside a nested backbone too
    steps = cascade(model)
    assert steps[0][0] == "head"
    sizes = [len(randomised) for _, randomised in steps]
    assert sizes == sorted(sizes)
    assert sizes[-1] == len(layers)


def test_maps_that_ignore_the_model_fail_and_grad_cam_changes_with_the_weights(edges_method, inputs):
    model = flat_softmax_model()
    before = [np.array(w) for w in model.get_weights()]
    results = randomisation_check(model, "flat_last_conv", inputs, [edges_method, "gradcam"])
    edges, gradcam = results[edges_method], results["gradcam"]
    assert edges.rank_correlation == pytest.approx([1.0] * len(edges.steps))
    assert not edges.passed
    assert gradcam.rank_correlation[-1] < PASS_BELOW < edges.rank_correlation[-1]
    assert gradcam.passed
    assert gradcam.to_dict()["images"] == len(inputs)
    for kept, original in zip(model.get_weights(), before, strict=True):  # only a copy was randomised
        np.testing.assert_array_equal(kept, original)


def test_batch_normalisation_keeps_positive_moving_variances():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="predictions")(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    _, every_layer = cascade(model)[-1]
    for layer in every_layer:
        randomisation._randomise(layer, np.random.default_rng(0))
    assert np.all(np.asarray(model.get_layer("bn").moving_variance) > 0)
