"""A model's raw output to calibrated class probabilities and the card's decision.

This is the part of the model card contract that every consumer applies the
same way (prediction, evaluation, training's export). It works on
probabilities outside the Keras graph: logits = log(p) for a softmax head; a
sigmoid head's p is first written as the two-class vector [1 - p, p], for which
softmax(log(.) / T) equals sigmoid(logit(p) / T), so one code path serves both
heads. The card's threshold then turns calibrated P(positive) into a decision.
"""

from __future__ import annotations

import numpy as np

from lungviz.errors import CalibrationError
from lungviz.models.cards import ModelCard

EPSILON = 1e-12
"""Probabilities are clipped to [EPSILON, 1] before their logarithm."""


def as_class_probabilities(raw_output: np.ndarray, head: str) -> np.ndarray:
    """The model's raw output as per-class probabilities, shape (n, classes).

    A sigmoid head's single unit is P(classes[1]); it becomes [1 - p, p].
    """
    raw = np.asarray(raw_output, dtype=np.float64)
    raw = raw.reshape(len(raw), -1) if raw.ndim != 1 else raw.reshape(1, -1)
    if head == "sigmoid":
        if raw.shape[1] != 1:
            raise CalibrationError(f"a sigmoid head gives one value per image, got {raw.shape[1]}")
        return np.concatenate([1.0 - raw, raw], axis=1)
    if head != "softmax":
        raise CalibrationError(f"unknown head {head!r} (expected 'softmax' or 'sigmoid')")
    return raw


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(p) / T) along the last axis; works for one image (classes,) or a batch."""
    if temperature <= 0:
        raise CalibrationError(f"temperature must be positive, got {temperature}")
    logits = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), EPSILON, 1.0)) / float(temperature)
    logits -= logits.max(axis=-1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=-1, keepdims=True)


def calibrated_probabilities(raw_output: np.ndarray, head: str, temperature: float) -> np.ndarray:
    """Per-class probabilities (n, classes) from a model's raw outputs, scaled by the card's temperature."""
    return apply_temperature(as_class_probabilities(raw_output, head), temperature)


def decide(probabilities: np.ndarray, card: ModelCard) -> str:
    """The card's decision rule: threshold on P(positive) for two classes, else argmax."""
    if len(card.classes) == 2:
        positive = probabilities[card.positive_index] >= card.threshold
        other = card.classes[1 - card.positive_index]
        return card.positive_class if positive else other
    return card.classes[int(np.argmax(probabilities))]
