"""The model-randomisation sanity check for explanation methods (Adebayo et al., NeurIPS 2018).

A heatmap that explains the model must change when the model's weights are
destroyed. The check re-initialises a copy of the model's layers from the top
down (the classification head first, then ever deeper parts of the network),
recomputes each method's maps on a fixed set of images after every step, and
reports the Spearman rank correlation with the trained model's maps. A method
whose maps still look the same once every layer is random is showing the
image (edges, bright regions), not what the model learnt: it fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import keras
import numpy as np
from scipy.stats import spearmanr

from lungviz.inference.explanations import get_explainer

PASS_BELOW = 0.5
"""A method passes when the mean rank correlation with the trained maps, once every layer is random, is below this."""
STEPS = (0.0, 0.25, 0.5, 1.0)
"""Share of the network's weighted layers (below the head) randomised after the head, top down."""
COMPARISON_GRID = (56, 56)
"""Maps are compared on a common coarse grid: the CAM layers are 5x5 to 16x16, finer grids only add ties."""
SEED = 20181203


@dataclass(frozen=True)
class RandomisationResult:
    """One method on one model: the mean rank correlation with the trained maps after each cascade step."""

    method: str
    steps: list[str]
    rank_correlation: list[float]
    images: int

    @property
    def passed(self) -> bool:
        return self.rank_correlation[-1] < PASS_BELOW

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "rank_correlation": [round(value, 4) for value in self.rank_correlation],
            "images": self.images,
            "passed": self.passed,
            "pass_below": PASS_BELOW,
        }


def weighted_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every layer that holds weights, nested sub-models included, from the output back to the input."""
    found: list[keras.layers.Layer] = []

    def walk(container: keras.Model) -> None:
        for layer in container.layers:
            if isinstance(layer, keras.Model):
                walk(layer)
            elif layer.weights:
                found.append(layer)

    walk(model)
    return found[::-1]


def cascade(model: keras.Model) -> list[tuple[str, list[keras.layers.Layer]]]:
    """The cumulative randomisation steps: (label, layers randomised so far), head first."""
    layers = weighted_layers(model)
    head, body = layers[:1], layers[1:]
    steps = []
    for share in STEPS:
        count = round(share * len(body))
        label = "head" if count == 0 else f"head + top {share:.0%} of layers"
        steps.append((label, head + body[:count]))
    return steps


def _randomise(layer: keras.layers.Layer, rng: np.random.Generator) -> None:
    """New random values with each learnt tensor's own mean and spread (batch normalisation's moving
    statistics are not learnt parameters and stay, so activations keep a sane scale)."""
    if isinstance(layer, keras.layers.BatchNormalization):
        variables = [v for v in (layer.gamma, layer.beta) if v is not None]
    else:
        variables = list(layer.weights)
    for variable in variables:
        value = np.asarray(variable)
        variable.assign(rng.normal(float(value.mean()), float(value.std()) or 0.05, value.shape).astype(value.dtype))


def _on_grid(heatmap: np.ndarray) -> np.ndarray:
    return cv2.resize(heatmap, COMPARISON_GRID[::-1], interpolation=cv2.INTER_AREA).ravel()


def _mean_rank_correlation(reference: Sequence[np.ndarray], maps: Sequence[np.ndarray]) -> float:
    values = []
    for before, after in zip(reference, maps, strict=True):
        first, second = _on_grid(before), _on_grid(after)
        if np.ptp(first) == 0 or np.ptp(second) == 0:  # a constant map has no rank order left to compare
            values.append(0.0)
            continue
        values.append(float(spearmanr(first, second).statistic))
    return float(np.mean(values))


def _maps(model: keras.Model, cam_layer: str, method: str, inputs: np.ndarray, classes: Sequence[int]) -> list:
    explainer = get_explainer(method, model, cam_layer)
    return [explainer.explain(inputs[i : i + 1], int(c)) for i, c in enumerate(classes)]


def randomisation_check(
    model: keras.Model, cam_layer: str, inputs: np.ndarray, methods: Sequence[str], *, seed: int = SEED
) -> dict[str, RandomisationResult]:
    """Run the cascade on a copy of `model` for every method; `inputs` are (n, H, W, 3) model inputs.

    Each image's map explains the class the trained model predicts for it, before and after.
    """
    classes = np.asarray(model(inputs, training=False)).argmax(axis=1)
    trained = {method: _maps(model, cam_layer, method, inputs, classes) for method in methods}
    randomised = keras.models.clone_model(model)
    randomised.set_weights(model.get_weights())
    rng = np.random.default_rng(seed)
    done: set[int] = set()
    correlations: dict[str, list[float]] = {method: [] for method in methods}
    labels = []
    for label, layers in cascade(randomised):
        for layer in layers:
            if id(layer) not in done:
                _randomise(layer, rng)
                done.add(id(layer))
        labels.append(label)
        for method in methods:
            maps = _maps(randomised, cam_layer, method, inputs, classes)
            correlations[method].append(_mean_rank_correlation(trained[method], maps))
    return {method: RandomisationResult(method, labels, correlations[method], len(inputs)) for method in methods}
