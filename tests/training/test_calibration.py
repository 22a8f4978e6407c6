import numpy as np
import pytest

from lungviz.errors import CalibrationError
from lungviz.models.outputs import apply_temperature, as_class_probabilities
from lungviz.training.calibration import (
    THRESHOLD_RULE,
    choose_threshold,
    fit_temperature,
    negative_log_likelihood,
)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _overconfident(temperature: float, classes: int, n: int = 4000, seed: int = 0):
    """Labels drawn from softmax(z); the model reports softmax(z * T), i.e. T times too confident."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(0, 2.0, size=(n, classes))
    labels = np.array([rng.choice(classes, p=p) for p in _softmax(true_logits)])
    return _softmax(true_logits * temperature), labels


@pytest.mark.parametrize("classes", [2, 3])
def test_fitted_temperature_recovers_the_overconfidence(classes):
    reported, labels = _overconfident(2.5, classes)
    temperature = fit_temperature(reported, labels)
    assert temperature == pytest.approx(2.5, rel=0.08)
    assert negative_log_likelihood(reported, labels, temperature) < negative_log_likelihood(reported, labels)


def test_well_calibrated_model_keeps_temperature_near_one():
    reported, labels = _overconfident(1.0, 2, seed=1)
    assert fit_temperature(reported, labels) == pytest.approx(1.0, rel=0.08)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.9, 0.999])
@pytest.mark.parametrize("temperature", [0.5, 2.5])
def test_sigmoid_scaling_equals_logit_over_t(p, temperature):
    two_class = as_class_probabilities(np.array([[p]]), "sigmoid")
    logit = np.log(p / (1 - p)) / temperature
    np.testing.assert_allclose(apply_temperature(two_class, temperature)[0, 1], 1 / (1 + np.exp(-logit)))


@pytest.mark.parametrize("classes", [2, 3])
def test_temperature_sums_to_one_and_keeps_each_images_ranking(classes):
    probabilities = _softmax(np.random.default_rng(2).normal(size=(50, classes)))
    scaled = apply_temperature(probabilities, 3.0)
    np.testing.assert_allclose(scaled.sum(axis=1), 1.0)
    np.testing.assert_array_equal(np.argsort(scaled, axis=1), np.argsort(probabilities, axis=1))
    assert scaled.max() < probabilities.max()


def test_two_class_temperature_keeps_the_ranking_across_images():
    """Why ROC-AUC is unchanged by calibration."""
    p = np.random.default_rng(3).uniform(size=200)
    scaled = apply_temperature(np.stack([1 - p, p], axis=1), 0.4)[:, 1]
    np.testing.assert_array_equal(np.argsort(scaled), np.argsort(p))


def test_threshold_maximises_youden_j_on_a_constructed_case():
    # negatives at 0.1..0.4 and one at 0.7; positives at 0.6, 0.8, 0.9.
    # Cutting between 0.4 and 0.6 gives sensitivity 1, specificity 4/5 (J = 0.8), the best.
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.7, 0.6, 0.8, 0.9])
    truth = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    point = choose_threshold(p, truth)
    assert point.threshold == pytest.approx(0.5)
    assert (point.sensitivity, point.specificity) == (1.0, 0.8)
    assert point.youden_j == pytest.approx(0.8)
    assert point.rule == THRESHOLD_RULE


def test_threshold_ties_go_to_the_cut_nearest_one_half():
    # Perfect separation anywhere in the gap 0.2..0.9: the natural cut 0.5 lies in it and is kept.
    p = np.array([0.1, 0.2, 0.9, 0.95])
    assert choose_threshold(p, np.array([0, 0, 1, 1])).threshold == 0.5
    # Perfect separation in the gap 0.6..0.9 only: its midpoint 0.75, not a cut on an image.
    p = np.array([0.1, 0.6, 0.9, 0.95])
    assert choose_threshold(p, np.array([0, 0, 1, 1])).threshold == pytest.approx(0.75)
    # A constant model: every cut has J = 0, so 0.5 stays.
    assert choose_threshold(np.full(6, 0.3), np.array([0, 1] * 3)).threshold == 0.5
    # Two disjoint best cuts (J = 0.5 each), 0.2|0.3 and 0.55|0.7: the second one's midpoint is nearer 0.5.
    p = np.array([0.1, 0.2, 0.3, 0.35, 0.45, 0.55, 0.7, 0.8])
    truth = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    point = choose_threshold(p, truth)
    assert point.threshold == pytest.approx(0.625)
    assert (point.sensitivity, point.specificity) == (0.5, 1.0)


@pytest.mark.parametrize(
    ("call", "args"),
    [
        (fit_temperature, (np.full((3, 2), 0.5), np.array([0, 1]))),
        (fit_temperature, (np.full((2, 2), 0.5), np.array([0, 2]))),
        (choose_threshold, (np.array([0.2, 0.8]), np.array([1, 1]))),
        (apply_temperature, (np.array([0.2, 0.8]), 0.0)),
        (as_class_probabilities, (np.array([[0.2, 0.8]]), "sigmoid")),
    ],
)
def test_bad_input_is_a_calibration_error(call, args):
    with pytest.raises(CalibrationError):
        call(*args)
