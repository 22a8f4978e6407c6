import numpy as np
import pytest
from sklearn import metrics as sk

from lungviz.errors import MetricsError
from lungviz.training.metrics import (
    METRICS,
    binary_metrics,
    bootstrap_intervals,
    confusion_matrix,
    metrics_with_ci,
    pr_points,
    reliability,
    roc_points,
)


def _scores(n: int, seed: int = 0, separation: float = 1.2, ties: bool = False):
    """A realistic classifier: positives score higher on average; ~35% negatives like the X-ray set."""
    rng = np.random.default_rng(seed)
    truth = rng.uniform(size=n) < 0.65
    p = 1 / (1 + np.exp(-(rng.normal(size=n) + separation * (2 * truth - 1))))
    return truth.astype(int), (np.round(p, 1) if ties else p)


def test_hand_computed_case():
    # TP 3 (0.9, 0.8, 0.6), FN 1 (0.3), TN 2 (0.1, 0.2), FP 1 (0.7)
    truth = np.array([1, 1, 1, 1, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.6, 0.3, 0.1, 0.2, 0.7])
    m = binary_metrics(truth, p, 0.5)
    assert m["accuracy"] == pytest.approx(5 / 7)
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["npv"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(3 / 4)
    assert m["mcc"] == pytest.approx((3 * 2 - 1 * 1) / np.sqrt(4 * 4 * 3 * 3))
    # of the 12 positive-negative pairs, 10 are ordered correctly (0.3 < 0.7 is wrong, 0.6 < 0.7 is wrong)
    assert m["roc_auc"] == pytest.approx(10 / 12)
    assert confusion_matrix(truth, p, 0.5) == [[2, 1], [1, 3]]


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.72])
def test_metrics_agree_with_scikit_learn(ties, threshold):
    truth, p = _scores(300, ties=ties)
    called = (p >= threshold).astype(int)
    m = binary_metrics(truth, p, threshold)
    expected = {
        "accuracy": sk.accuracy_score(truth, called),
        "sensitivity": sk.recall_score(truth, called),
        "specificity": sk.recall_score(truth, called, pos_label=0),
        "precision": sk.precision_score(truth, called, zero_division=0),
        "npv": sk.precision_score(truth, called, pos_label=0, zero_division=0),
        "f1": sk.f1_score(truth, called),
        "mcc": sk.matthews_corrcoef(truth, called),
        "balanced_accuracy": sk.balanced_accuracy_score(truth, called),
        "roc_auc": sk.roc_auc_score(truth, p),
        "pr_auc": sk.average_precision_score(truth, p),
    }
    assert set(m) == set(METRICS) == set(expected)
    for name in METRICS:
        assert m[name] == pytest.approx(expected[name], abs=1e-12), name
    assert confusion_matrix(truth, p, threshold) == sk.confusion_matrix(truth, called).tolist()


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_more_data():
    widths = {}
    for n in (120, 1200):
        truth, p = _scores(n, seed=n)
        report = metrics_with_ci(truth, p, 0.5, resamples=1000)
        for name in METRICS:
            low, high = report[name]["ci95"]
            assert low <= report[name]["value"] <= high, (n, name)
        widths[n] = {name: report[name]["ci95"][1] - report[name]["ci95"][0] for name in METRICS}
    for name in METRICS:
        assert widths[1200][name] < widths[120][name] * 0.6, name  # ~ 1/sqrt(10) in theory


def test_bootstrap_is_reproducible_with_its_seed_and_changes_without():
    truth, p = _scores(200, seed=4)
    first = bootstrap_intervals(truth, p, 0.5, resamples=300, seed=7)
    assert bootstrap_intervals(truth, p, 0.5, resamples=300, seed=7) == first
    assert bootstrap_intervals(truth, p, 0.5, resamples=300, seed=8) != first


def test_curves_run_from_corner_to_corner():
    truth, p = _scores(200, seed=5)
    roc = roc_points(truth, p)
    assert (roc["fpr"][0], roc["tpr"][0], roc["fpr"][-1], roc["tpr"][-1]) == (0, 0, 1, 1)
    assert np.all(np.diff(roc["fpr"]) >= 0)
    assert np.all(np.diff(roc["tpr"]) >= 0)
    pr = pr_points(truth, p)
    assert pr["recall"][0] == 1
    assert pr["recall"][-1] == 0
    assert len(pr["thresholds"]) == len(pr["recall"]) - 1


def test_reliability_of_a_calibrated_and_an_overconfident_model():
    rng = np.random.default_rng(6)
    p = rng.uniform(size=20000)
    truth = rng.uniform(size=20000) < p  # calibrated by construction
    calibrated = reliability(truth, p)
    assert len(calibrated["counts"]) == 15
    assert sum(calibrated["counts"]) == 20000
    assert calibrated["ece"] < 0.02
    sharpened = np.clip(0.5 + 1.8 * (p - 0.5), 0, 1)  # the same cases, reported too confidently
    assert reliability(truth, sharpened)["ece"] > 0.08  # about 0.8 * E|p - 0.5| where unclipped


def test_reliability_ece_by_hand_and_empty_bins():
    result = reliability(np.array([1, 0, 1, 1]), np.array([0.02, 0.03, 0.95, 0.99]), bins=10)
    # bin 0: mean p 0.025, rate 0.5; bin 9: mean p 0.97, rate 1
    assert result["ece"] == pytest.approx(0.5 * abs(0.5 - 0.025) + 0.5 * abs(1 - 0.97))
    assert result["mean_predicted"][5] is None
    assert result["counts"][5] == 0


@pytest.mark.parametrize(
    ("truth", "p"),
    [
        ([1, 1, 1], [0.2, 0.5, 0.9]),
        ([0, 1], [0.2, 0.5, 0.9]),
        ([0, 1], [0.2, np.nan]),
    ],
)
def test_unscorable_input_is_a_metrics_error(truth, p):
    with pytest.raises(MetricsError):
        binary_metrics(np.array(truth), np.array(p), 0.5)
