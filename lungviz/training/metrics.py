"""Binary classification metrics with bootstrap confidence intervals, curves and calibration bins.

Test sets here are small (a few hundred images), so every headline number
comes with a 95% interval. The scalar metrics have one implementation that
works on resampling weights: the point estimate uses weight 1 per image and a
bootstrap resample uses how often each image was drawn, so 2,000 resamples are
a handful of vectorised numpy operations instead of 2,000 scikit-learn calls.
The tests check this implementation against scikit-learn.

Bootstrap: stratified (positives and negatives are resampled separately, so
every resample keeps the test set's prevalence and has both classes, which
keeps ROC-AUC defined), percentile intervals, fixed seed so that `evaluate`
reproduces the numbers on the model cards exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from lungviz.errors import MetricsError

METRICS = (
    "accuracy",
    "sensitivity",
    "specificity",
    "precision",
    "npv",
    "f1",
    "mcc",
    "balanced_accuracy",
    "roc_auc",
    "pr_auc",
)
"""Scalar metrics reported for every model; sensitivity is recall of the positive class, pr_auc is
average precision."""

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 20240601
RELIABILITY_BINS = 15
_CHUNK = 250  # resamples per vectorised batch: bounds memory at 250 x n weights


def _check(is_positive: np.ndarray, p_positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    truth = np.asarray(is_positive).astype(bool).reshape(-1)
    scores = np.asarray(p_positive, dtype=np.float64).reshape(-1)
    if len(truth) != len(scores):
        raise MetricsError(f"{len(truth)} labels but {len(scores)} scores")
    if not np.all(np.isfinite(scores)):
        raise MetricsError("scores contain NaN or infinite values")
    if truth.all() or not truth.any():
        raise MetricsError("metrics need both positive and negative cases in the labels")
    return truth, scores


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (scikit-learn's zero_division=0)."""
    safe = np.where(denominator > 0, denominator, 1)
    return np.where(denominator > 0, numerator / safe, 0.0)


def _weighted_metrics(
    truth: np.ndarray, scores: np.ndarray, threshold: float, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """Every metric in METRICS for each row of `weights` (shape (resamples, n))."""
    weights = np.asarray(weights, dtype=np.float64)
    called = scores >= threshold
    tp = weights @ (truth & called)
    fn = weights @ (truth & ~called)
    fp = weights @ (~truth & called)
    tn = weights @ (~truth & ~called)
    positives, negatives = tp + fn, tn + fp
    sensitivity, specificity = _ratio(tp, positives), _ratio(tn, negatives)
    mcc_denominator = np.sqrt((tp + fp) * positives * negatives * (tn + fn))
    result = {
        "accuracy": _ratio(tp + tn, positives + negatives),
        "sensitivity": sensitivity,
        "specificity": specificity,
        "precision": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "mcc": _ratio(tp * tn - fp * fn, mcc_denominator),
        "balanced_accuracy": (sensitivity + specificity) / 2,
    }
    result.update(_weighted_ranking(truth, scores, weights, positives, negatives))
    return result


def _weighted_ranking(
    truth: np.ndarray, scores: np.ndarray, weights: np.ndarray, positives: np.ndarray, negatives: np.ndarray
) -> dict[str, np.ndarray]:
    """ROC-AUC (ties count one half) and average precision (scikit-learn's step definition)."""
    order = np.argsort(-scores, kind="stable")  # descending: thresholds from strict to lenient
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    pos = np.add.reduceat(weights[:, order] * truth[order], starts, axis=1)
    neg = np.add.reduceat(weights[:, order] * ~truth[order], starts, axis=1)
    pos_above = np.cumsum(pos, axis=1) - pos  # positives scored strictly higher than each score group
    roc_auc = _ratio(np.sum(neg * (pos_above + 0.5 * pos), axis=1), positives * negatives)
    precision_at = _ratio(np.cumsum(pos, axis=1), np.cumsum(pos + neg, axis=1))
    pr_auc = _ratio(np.sum(pos * precision_at, axis=1), positives)
    return {"roc_auc": roc_auc, "pr_auc": pr_auc}


def binary_metrics(is_positive: np.ndarray, p_positive: np.ndarray, threshold: float) -> dict[str, float]:
    """Every metric in METRICS for one set of predictions; a case is positive when p >= threshold."""
    truth, scores = _check(is_positive, p_positive)
    values = _weighted_metrics(truth, scores, threshold, np.ones((1, len(truth))))
    return {name: float(values[name][0]) for name in METRICS}


def bootstrap_intervals(
    is_positive: np.ndarray,
    p_positive: np.ndarray,
    threshold: float,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Stratified percentile bootstrap interval of every metric (the threshold stays fixed)."""
    truth, scores = _check(is_positive, p_positive)
    if resamples < 10:
        raise MetricsError(f"a bootstrap needs at least 10 resamples, got {resamples}")
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(truth), np.flatnonzero(~truth)]
    collected: dict[str, list[np.ndarray]] = {name: [] for name in METRICS}
    for start in range(0, resamples, _CHUNK):
        size = min(_CHUNK, resamples - start)
        weights = np.zeros((size, len(truth)))
        for members in groups:
            weights[:, members] = rng.multinomial(len(members), np.full(len(members), 1 / len(members)), size=size)
        for name, values in _weighted_metrics(truth, scores, threshold, weights).items():
            collected[name].append(values)
    tail = (1 - level) / 2 * 100
    intervals = {}
    for name in METRICS:
        low, high = np.percentile(np.concatenate(collected[name]), [tail, 100 - tail])
        intervals[name] = (float(low), float(high))
    return intervals


def metrics_with_ci(
    is_positive: np.ndarray,
    p_positive: np.ndarray,
    threshold: float,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, dict[str, Any]]:
    """{metric: {"value": v, "ci95": [low, high]}}, the shape model cards store."""
    values = binary_metrics(is_positive, p_positive, threshold)
    intervals = bootstrap_intervals(is_positive, p_positive, threshold, resamples=resamples, seed=seed)
    return {name: {"value": values[name], "ci95": list(intervals[name])} for name in METRICS}


def confusion_matrix(is_positive: np.ndarray, p_positive: np.ndarray, threshold: float) -> list[list[int]]:
    """[[TN, FP], [FN, TP]]: rows are the true class (negative, positive), columns the call."""
    truth, scores = _check(is_positive, p_positive)
    called = scores >= threshold
    return [
        [int(np.sum(~truth & ~called)), int(np.sum(~truth & called))],
        [int(np.sum(truth & ~called)), int(np.sum(truth & called))],
    ]


def roc_points(is_positive: np.ndarray, p_positive: np.ndarray) -> dict[str, list[float]]:
    """The ROC curve's corners (false positive rate, true positive rate, threshold)."""
    truth, scores = _check(is_positive, p_positive)
    fpr, tpr, thresholds = roc_curve(truth, scores, drop_intermediate=True)
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": np.minimum(thresholds, 1.0).tolist()}


def pr_points(is_positive: np.ndarray, p_positive: np.ndarray) -> dict[str, list[float]]:
    """The precision-recall curve (the last point, recall 0 and precision 1, has no threshold)."""
    truth, scores = _check(is_positive, p_positive)
    precision, recall, thresholds = precision_recall_curve(truth, scores)
    return {"recall": recall.tolist(), "precision": precision.tolist(), "thresholds": thresholds.tolist()}


def reliability(is_positive: np.ndarray, p_positive: np.ndarray, bins: int = RELIABILITY_BINS) -> dict[str, Any]:
    """Reliability diagram of P(positive) in equal-width bins, and its expected calibration error.

    ECE = sum over bins of (share of images in the bin) x |observed positive rate - mean P(positive)|.
    Empty bins have None for their rate and mean and add nothing to the ECE.
    """
    truth, scores = _check(is_positive, p_positive)
    index = np.clip((scores * bins).astype(int), 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    filled = counts > 0
    mean_p = _ratio(np.bincount(index, weights=scores, minlength=bins), counts)
    observed = _ratio(np.bincount(index, weights=truth.astype(float), minlength=bins), counts)
    ece = float(np.sum(counts / len(truth) * np.abs(observed - mean_p)))
    return {
        "bin_edges": np.linspace(0.0, 1.0, bins + 1).tolist(),
        "counts": counts.tolist(),
        "mean_predicted": [float(v) if f else None for v, f in zip(mean_p, filled, strict=False)],
        "fraction_positive": [float(v) if f else None for v, f in zip(observed, filled, strict=False)],
        "ece": ece,
    }
