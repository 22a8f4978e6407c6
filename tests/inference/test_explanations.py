from functools import partial

import keras
import numpy as np
import pytest

# after lungviz.inference.explanations, which imports tf-keras-vis without its SciPy deprecation warnings
from tf_keras_vis.gradcam import Gradcam
from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
from tf_keras_vis.utils.scores import BinaryScore, CategoricalScore

from lungviz.errors import ExplanationError
from lungviz.inference.explanations import (
    METHODS,
    CamGraph,
    GradCam,
    get_explainer,
    resize_heatmap,
)
from tests.model_factory import INPUT_SIZE, _conv_stack, flat_softmax_model, nested_sigmoid_model


def _nested_softmax_model() -> keras.Model:
    """A Sequential around a Functional base: the other common transfer-learning shape."""
    keras.utils.set_random_seed(2)
    base_inputs = keras.Input((*INPUT_SIZE, 3))
    x = keras.layers.Rescaling(1 / 255.0)(base_inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(12, 3, padding="same", activation="relu", name="inner_conv")(x)
    base = keras.Model(base_inputs, keras.layers.Conv2D(16, 1, activation="relu")(x), name="base")
    return keras.Sequential(
        [
            keras.Input((*INPUT_SIZE, 3)),
            base,
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(2, activation="softmax"),
        ],
        name="nested_softmax",
    )


def _normalised_then_nested_model() -> keras.Model:
    """Pixels rescaled, then a nested base model: how the packaged backbones (VGG16, MobileNetV2, InceptionV3)
    are wired; the base is called on an intermediate tensor, not on the model's input."""
    keras.utils.set_random_seed(7)
    base_inputs = keras.Input((*INPUT_SIZE, 3))
    base = keras.Model(base_inputs, _conv_stack(base_inputs, "base"), name="backbone")
    inputs = keras.Input((*INPUT_SIZE, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="input_normalization")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(base(x, training=False))
    outputs = keras.layers.Dense(2, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="normalised_then_nested")


CASES = {  # name: (model factory, cam layer, head)
    # seed 5: a random flat model whose maps for both classes are not all negative (so not all zero after ReLU)
    "flat-softmax": (partial(flat_softmax_model, seed=5), "flat_last_conv", "softmax"),
    "nested-sigmoid": (nested_sigmoid_model, "base_last_conv", "sigmoid"),
    "nested-softmax-mid-layer": (_nested_softmax_model, "inner_conv", "softmax"),
}


@pytest.fixture(scope="module")
def models():
    return {name: factory() for name, (factory, _, _) in CASES.items()}


@pytest.fixture(scope="module")
def gradcams(models):
    return {name: GradCam(models[name], CASES[name][1]) for name in CASES}


def _radiograph(seed: int, blob: tuple[int, int] | None = (20, 44)) -> np.ndarray:
    """A (1, H, W, 3) [0, 255] batch: a soft chest-like body, noise and optionally a bright nodule."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[: INPUT_SIZE[0], : INPUT_SIZE[1]].astype(np.float32)
    height, width = INPUT_SIZE
    image = 0.25 + 0.5 * np.exp(
        -(((rows - height / 2) / (height / 2.5)) ** 2 + ((cols - width / 2) / (width / 3)) ** 2)
    )
    if blob is not None:
        image += 0.6 * np.exp(-((rows - blob[0]) ** 2 + (cols - blob[1]) ** 2) / 18.0)
    image = np.clip(image + 0.03 * rng.normal(size=image.shape), 0, 1) * 255
    return np.repeat(image[None, :, :, None], 3, axis=-1).astype(np.float32)


def _flat_twin(model: keras.Model) -> keras.Model:
    """The same chain of layers as `model` without nesting: fresh layers, the model's weights copied."""
    inputs = x = keras.Input((*INPUT_SIZE, 3))
    for layer in model.layers:
        for inner in layer.layers if isinstance(layer, keras.Model) else [layer]:
            if not isinstance(inner, keras.layers.InputLayer):
                x = inner.__class__.from_config(inner.get_config())(x)
    twin = keras.Model(inputs, x)
    twin.set_weights(model.get_weights())
    return twin


@pytest.mark.parametrize("class_index", [0, 1])
@pytest.mark.parametrize("case", CASES)
def test_compiled_gradcam_equals_tf_keras_vis(models, gradcams, case, class_index):
    model, cam_layer, head = models[case], CASES[case][1], CASES[case][2]
    inputs = _radiograph(seed=class_index)
    # tf-keras-vis cannot reach into a nested base model, so it runs on a flat twin with the same weights.
    twin = _flat_twin(model)
    np.testing.assert_allclose(twin.predict(inputs, verbose=0), model.predict(inputs, verbose=0), atol=1e-6)
    score = BinaryScore(class_index == 1) if head == "sigmoid" else CategoricalScore(class_index)
    reference = Gradcam(twin, model_modifier=ReplaceToLinear(), clone=True)(
        score, inputs, penultimate_layer=cam_layer, seek_penultimate_conv_layer=False
    )[0]
    assert reference.max() > 0.99, "reference map is degenerate"
    assert np.mean(reference > 0.05) > 0.01, "reference map is degenerate"

    heatmap = gradcams[case].explain(inputs, class_index)

    assert heatmap.shape == INPUT_SIZE
    assert heatmap.dtype == np.float32
    np.testing.assert_allclose(heatmap, reference, atol=1e-4)


@pytest.mark.parametrize("case", CASES)
def test_gradcam_probabilities_are_the_models_predictions(models, gradcams, case):
    inputs = _radiograph(seed=3)
    predicted = models[case].predict(inputs, verbose=0)[0]
    if CASES[case][2] == "sigmoid":
        predicted = np.array([1 - predicted[0], predicted[0]])
    for class_index in (0, 1):
        probabilities, _ = gradcams[case].explain_with_probabilities(inputs, class_index)
        np.testing.assert_allclose(probabilities, predicted, atol=1e-6)


def test_the_two_classes_of_a_sigmoid_head_explain_opposite_evidence(gradcams):
    """Negative class score is -logit: its map highlights what the positive map leaves out."""
    inputs = _radiograph(seed=4)
    positive = gradcams["nested-sigmoid"].explain(inputs, 1)
    negative = gradcams["nested-sigmoid"].explain(inputs, 0)
    assert np.corrcoef(positive.ravel(), negative.ravel())[0, 1] < 0


def test_the_flat_graph_shares_the_models_weights_and_leaves_it_unchanged(models):
    model = models["nested-sigmoid"]
    inputs = _radiograph(seed=5)
    before = model.predict(inputs, verbose=0)
    graph = CamGraph.build(model, "base_last_conv")
    for method in METHODS:
        get_explainer(method, model, "base_last_conv").explain(inputs, 1)

    assert {id(v) for v in graph.model.weights} <= {id(v) for v in model.weights}
    assert model.layers[-1].activation is keras.activations.sigmoid
    np.testing.assert_array_equal(model.predict(inputs, verbose=0), before)


@pytest.mark.parametrize("case", ["flat-softmax", "nested-sigmoid"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_a_finite_map_in_unit_range_at_input_size(models, case, method):
    explainer = get_explainer(method, models[case], CASES[case][1])
    heatmap = explainer.explain(_radiograph(seed=6), 1)
    assert heatmap.shape == INPUT_SIZE
    assert heatmap.dtype == np.float32
    assert np.isfinite(heatmap).all()
    assert heatmap.min() >= 0
    assert heatmap.max() <= 1
    assert heatmap.max() > 0.5, f"{METHODS[method].label} produced an empty map"


def _quadrant(row: int, col: int) -> tuple[int, int]:
    return row // (INPUT_SIZE[0] // 2), col // (INPUT_SIZE[1] // 2)


@pytest.fixture(scope="module")
def blob_detector() -> keras.Model:
    """A small CNN trained briefly to tell radiographs with a bright nodule (anywhere) from those without."""
    keras.utils.set_random_seed(7)
    rng = np.random.default_rng(7)
    images, labels = [], []
    for i in range(192):
        has_blob = i % 2
        blob = tuple(rng.integers(8, INPUT_SIZE[0] - 8, size=2)) if has_blob else None
        images.append(_radiograph(seed=100 + i, blob=blob)[0])
        labels.append(has_blob)
    inputs = keras.Input((*INPUT_SIZE, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="last_conv")(x)
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalMaxPooling2D()(x))
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(np.stack(images), np.array(labels), epochs=8, batch_size=32, verbose=0)
    assert history.history["accuracy"][-1] > 0.9, "the detector did not learn; the localisation test would be moot"
    return model


@pytest.mark.parametrize("blob", [(14, 16), (18, 48), (46, 12), (50, 50)])
def test_gradcam_peaks_in_the_quadrant_holding_the_evidence(blob_detector, blob):
    explainer = get_explainer("gradcam", blob_detector, "last_conv")
    inputs = _radiograph(seed=999, blob=blob)
    probabilities, heatmap = explainer.explain_with_probabilities(inputs, 1)
    assert probabilities[1] > 0.5
    peak = np.unravel_index(np.argmax(heatmap), heatmap.shape)
    assert _quadrant(*peak) == _quadrant(*blob)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: get_explainer("occlusion", m, "flat_last_conv"), "unknown explanation method"),
        (lambda m: get_explainer("gradcam", m, "no_such_layer"), "no layer named"),
        (lambda m: get_explainer("gradcam", m, "predictions"), "feature map"),
        (
            lambda m: get_explainer("gradcam", m, "flat_last_conv").explain(np.zeros((64, 64, 3), np.float32), 0),
            "expected one image",
        ),
        (
            lambda m: get_explainer("gradcam", m, "flat_last_conv").explain(np.zeros((1, 32, 32, 3), np.float32), 0),
            "expected one image",
        ),
        (lambda m: get_explainer("layercam", m, "flat_last_conv").explain(_radiograph(0), 2), "out of range"),
    ],
)
def test_bad_requests_raise_a_clear_error(models, call, message):
    with pytest.raises(ExplanationError, match=message):
        call(models["flat-softmax"])


def test_resize_heatmap_stretches_back_to_the_image_and_stays_in_range():
    heatmap = np.zeros(INPUT_SIZE, np.float32)
    heatmap[:, INPUT_SIZE[1] // 2 :] = 1.0  # right half hot
    resized = resize_heatmap(heatmap, (300, 90))
    assert resized.shape == (300, 90)
    assert resized.dtype == np.float32
    assert resized[:, :40].max() == 0
    assert resized[:, 50:].min() == 1
    with pytest.raises(ValueError, match="2-D"):
        resize_heatmap(heatmap[None], (10, 10))


def test_compiled_gradcam_backpropagates_only_through_the_head(gradcams):
    """The CAM layer feeds pooling and Dense only: no convolution gradient may be in the compiled graph."""
    graph = gradcams["flat-softmax"]._compiled.get_concrete_function().graph
    op_types = {op.type for op in graph.get_operations()}
    assert "Conv2D" in op_types
    assert not any("Backprop" in t or t == "ReluGrad" for t in op_types)


@pytest.mark.parametrize("method", METHODS)
def test_explaining_prints_nothing(models, method, capfd):
    """The CLI writes JSON to stdout; a progress bar from a method would corrupt it."""
    explainer = get_explainer(method, models["nested-sigmoid"], "base_last_conv")
    capfd.readouterr()
    explainer.explain(_radiograph(seed=8), 0)
    assert capfd.readouterr().out == ""


def test_a_base_model_called_after_a_rescaling_layer_is_explained_like_its_flat_equivalent():
    """The packaged backbones' wiring (pixels -> Rescaling -> nested base): same maps as the same layers inlined."""
    nested = _normalised_then_nested_model()
    inputs = keras.Input((*INPUT_SIZE, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(_conv_stack(x, "flat"))
    flat = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))
    flat.set_weights(nested.get_weights())
    image = _radiograph(seed=4)
    for class_index in (0, 1):
        expected = GradCam(flat, "flat_last_conv").explain(image, class_index)
        assert np.mean(expected > 0.05) > 0.05  # a map with heat, not a degenerate one
        np.testing.assert_allclose(GradCam(nested, "base_last_conv").explain(image, class_index), expected, atol=1e-5)
