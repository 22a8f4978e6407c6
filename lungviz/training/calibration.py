"""Temperature scaling and the operating point, both fitted on the validation split.

A network trained with cross-entropy on a few thousand images is usually
overconfident. One temperature T, fitted by minimising the negative
log-likelihood on validation, softens (T > 1) or sharpens (T < 1) its
probabilities without changing their ranking, so ROC-AUC is untouched while the
probabilities become honest. The decision threshold is then chosen on the
calibrated P(positive) of the same validation split.

Applying T is part of the model card contract and lives with the models
(`lungviz.models.outputs`); this module only fits T and the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar

from lungviz.errors import CalibrationError
from lungviz.models.outputs import EPSILON, apply_temperature

TEMPERATURE_BOUNDS = (0.05, 20.0)
"""Search range for T; far outside it a model is broken rather than miscalibrated."""

THRESHOLD_RULE = "max Youden J on validation (ties: nearest 0.5)"
"""The operating-point rule, written verbatim into model cards' `threshold_rule`."""


def _check(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels).astype(int).reshape(-1)
    if probabilities.ndim != 2 or len(probabilities) != len(labels) or len(labels) == 0:
        raise CalibrationError(
            f"need probabilities (n, classes) and n labels, got {probabilities.shape} and {labels.shape}"
        )
    if labels.min() < 0 or labels.max() >= probabilities.shape[1]:
        raise CalibrationError(f"labels must lie in [0, {probabilities.shape[1] - 1}]")
    return probabilities, labels


def negative_log_likelihood(probabilities: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean NLL of the true classes after temperature scaling (the quantity T minimises)."""
    probabilities, labels = _check(probabilities, labels)
    scaled = apply_temperature(probabilities, temperature)
    return float(-np.mean(np.log(np.clip(scaled[np.arange(len(labels)), labels], EPSILON, 1.0))))


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The T in TEMPERATURE_BOUNDS that minimises validation NLL.

    The search runs over log T (bounded Brent), where the NLL is smooth and
    T = 0.5 and T = 2 are equally far from 1.
    """
    probabilities, labels = _check(probabilities, labels)
    low, high = np.log(TEMPERATURE_BOUNDS)
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(probabilities, labels, float(np.exp(log_t))),
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-5},
    )
    return float(np.exp(result.x))


@dataclass(frozen=True)
class OperatingPoint:
    """A decision threshold on calibrated P(positive) and what it gives on validation."""

    threshold: float
    rule: str
    sensitivity: float
    specificity: float

    @property
    def youden_j(self) -> float:
        return self.sensitivity + self.specificity - 1.0


def choose_threshold(p_positive: np.ndarray, is_positive: np.ndarray) -> OperatingPoint:
    """THRESHOLD_RULE: the cut maximising sensitivity + specificity - 1.

    A case is called positive when p >= threshold. Candidates are 0.5, 0, 1 and
    the midpoints between neighbouring observed probabilities, so a cut never
    sits on a validation image. Among equal J the candidate nearest 0.5 wins: a
    tie carries no evidence for moving away from the natural cut (and a model
    whose validation probabilities are all equal keeps 0.5).
    """
    p_positive = np.asarray(p_positive, dtype=np.float64).reshape(-1)
    truth = np.asarray(is_positive).astype(bool).reshape(-1)
    if len(p_positive) != len(truth) or truth.all() or not truth.any():
        raise CalibrationError("choosing a threshold needs probabilities and labels of both classes, same length")
    observed = np.unique(p_positive)
    candidates = np.unique(np.concatenate([[0.0, 0.5, 1.0], (observed[1:] + observed[:-1]) / 2]))
    predicted = p_positive[None, :] >= candidates[:, None]
    sensitivity = (predicted & truth).sum(axis=1) / truth.sum()
    specificity = (~predicted & ~truth).sum(axis=1) / (~truth).sum()
    j = sensitivity + specificity - 1.0
    best = np.flatnonzero(np.isclose(j, j.max(), rtol=0, atol=1e-12))
    pick = best[np.argmin(np.abs(candidates[best] - 0.5))]
    return OperatingPoint(float(candidates[pick]), THRESHOLD_RULE, float(sensitivity[pick]), float(specificity[pick]))
