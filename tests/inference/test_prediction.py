import numpy as np
import pytest

from lungviz.inference.lungs import Lungs
from lungviz.inference.prediction import PREDICTED, Classifier
from lungviz.models.cards import ModelCard
from lungviz.models.outputs import calibrated_probabilities, decide
from lungviz.models.registry import discover, load_model
from lungviz.preprocessing import image_to_input
from tests.model_factory import make_card


def _card(**change) -> ModelCard:
    return make_card("ct-covid", threshold=0.3, **change)


def test_model_input_is_stretched_to_the_card_size_in_0_255():
    image = np.zeros((300, 100), np.float32)
    image[:, 50:] = 1.0  # right half bright
    batch = image_to_input(image, (64, 32))
    assert batch.shape == (1, 64, 32, 3)
    assert batch.dtype == np.float32
    assert np.all(batch[..., 0] == batch[..., 2])
    assert batch[0, :, :15].max() == 0
    assert batch[0, :, 17:].min() == pytest.approx(255, abs=1e-3)


@pytest.mark.parametrize(("head", "raw"), [("softmax", [0.2, 0.8]), ("sigmoid", [0.8])])
def test_temperature_softens_but_keeps_the_ranking(head, raw):
    plain = calibrated_probabilities(np.array([raw]), head, _card(head=head).temperature)[0]
    softened = calibrated_probabilities(
        np.array([raw]), head, _card(head=head, calibration={"temperature": 2.0}).temperature
    )[0]
    np.testing.assert_allclose(plain, [0.2, 0.8], atol=1e-9)
    assert softened.sum() == pytest.approx(1.0)
    assert 0.5 < softened[1] < 0.8  # sqrt-odds: 2/3
    assert softened[1] == pytest.approx(2 / 3)


@pytest.mark.parametrize(("p_positive", "expected"), [(0.29, "non-COVID"), (0.30, "COVID"), (0.9, "COVID")])
def test_decision_uses_the_card_threshold_not_argmax(p_positive, expected):
    assert decide(np.array([1 - p_positive, p_positive]), _card()) == expected


@pytest.fixture(scope="module")
def classifiers(weights_root):
    return [Classifier(card, load_model(card)) for card in discover(weights_root)["xray-pneumonia"]]


def _radiograph(shape=(180, 150)) -> np.ndarray:
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    body = np.exp(-(((rows - shape[0] / 2) / (shape[0] / 2.5)) ** 2 + ((cols - shape[1] / 2) / (shape[1] / 3)) ** 2))
    return np.clip(0.2 + 0.7 * body + 0.02 * np.random.default_rng(0).normal(size=shape), 0, 1).astype(np.float32)


@pytest.mark.parametrize("target", [PREDICTED, "NORMAL", "PNEUMONIA"])
def test_run_gives_calibrated_probabilities_decision_and_a_heatmap_at_image_size(classifiers, target):
    image = _radiograph()
    for classifier in classifiers:
        result = classifier.run(image, "gradcam", target)
        probabilities = np.array(list(result.probabilities.values()))
        assert sum(probabilities) == pytest.approx(1.0)
        assert np.all(probabilities >= 0)
        batch = image_to_input(image, classifier.card.input_size)
        np.testing.assert_allclose(probabilities, classifier.predict_batch(batch)[0], atol=1e-6)
        assert result.predicted == decide(probabilities, classifier.card)
        assert result.explained_class == (result.predicted if target == PREDICTED else target)
        assert result.heatmap.shape == image.shape
        assert result.heatmap.min() >= 0.0
        assert result.heatmap.max() <= 1.0
        assert result.seconds > 0


def test_run_without_a_method_skips_the_heatmap(classifiers):
    result = classifiers[0].run(_radiograph(), None)
    assert result.heatmap is None
    assert result.method is None


def test_unknown_target_class_is_refused(classifiers):
    with pytest.raises(ValueError, match="cannot explain class 'COVID'"):
        classifiers[0].run(_radiograph(), "gradcam", "COVID")


def _lungs(shape) -> Lungs:
    mask = np.zeros(shape, bool)
    mask[40:140, 30:120] = True
    return Lungs(mask, True, "test")


@pytest.mark.parametrize("crop", ["none", "lungs"])
def test_a_lung_cropping_model_sees_the_lungs_box_and_its_heat_stays_inside(classifiers, crop):
    from dataclasses import replace

    image = _radiograph()
    lungs = _lungs(image.shape)
    for plain in classifiers:
        classifier = Classifier(replace(plain.card, input_crop=crop), plain.model)
        result = classifier.run(image, "gradcam", PREDICTED, lungs)
        x0, y0, x1, y1 = lungs.crop_box()
        expected = image_to_input(image, classifier.card.input_size, (x0, y0, x1, y1) if crop == "lungs" else None)
        np.testing.assert_allclose(
            list(result.probabilities.values()), classifier.predict_batch(expected)[0], atol=1e-6
        )
        outside = np.ones(image.shape, bool)
        outside[y0:y1, x0:x1] = False
        total = result.heatmap.sum()
        if total == 0:  # an untrained model can see no evidence at all: then no peak and no share
            assert (result.heatmap_peak, result.lung_attention) == (None, None)
            continue
        if crop == "lungs":
            assert result.heatmap[outside].max() == 0
            assert x0 <= result.heatmap_peak[0] < x1
            assert y0 <= result.heatmap_peak[1] < y1
        assert result.lung_attention == pytest.approx(result.heatmap[lungs.mask].sum() / total, rel=1e-5)


def test_without_lungs_found_there_is_no_lung_attention(classifiers):
    image = _radiograph()
    nothing = Lungs(np.zeros(image.shape, bool), False, "test")
    result = classifiers[0].run(image, "gradcam", PREDICTED, nothing)
    assert result.lung_attention is None
