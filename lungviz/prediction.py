"""Running one model on one chest image: inputs, calibrated probabilities, decision, heatmap.

Data flows one way here: a grayscale image in [0, 1] becomes the model's input
(stretched to the card's size, as the training images were), the model's
probabilities are calibrated with the card's temperature, the card's threshold
turns them into a decision, and the explanation method gives a heatmap that is
brought back to the image's own resolution.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from lungviz import datasets
from lungviz.calibration import apply_temperature, calibrated_probabilities
from lungviz.cards import ModelCard
from lungviz.explanations import get_explainer, resize_heatmap

PREDICTED = "predicted"
"""Target meaning "explain whichever class the model decided on"."""


@dataclass
class ModelResult:
    """One model's answer on one image, ready for figures and exports."""

    name: str
    architecture: str
    classes: list[str]
    positive_class: str
    probabilities: dict[str, float]
    predicted: str
    threshold: float
    seconds: float
    method: str | None = None
    explained_class: str | None = None
    heatmap: np.ndarray | None = field(default=None, repr=False)

    @property
    def positive_probability(self) -> float:
        return self.probabilities[self.positive_class]


def to_model_input(pixels: np.ndarray, input_size: tuple[int, int] | list[int]) -> np.ndarray:
    """A [0, 1] grayscale image as a (1, H, W, 3) float32 batch of [0, 255] values.

    The image is stretched to the model's size without keeping its aspect ratio,
    because that is how the training images were made.
    """
    stretched = datasets.stretch_to_size(np.clip(pixels, 0.0, 1.0).astype(np.float32), input_size)
    return datasets.to_model_input(stretched[None] * 255.0)


def decide(probabilities: np.ndarray, card: ModelCard) -> str:
    """The card's decision rule: threshold on P(positive) for two classes, else argmax."""
    if len(card.classes) == 2:
        positive = probabilities[card.positive_index] >= card.threshold
        other = card.classes[1 - card.positive_index]
        return card.positive_class if positive else other
    return card.classes[int(np.argmax(probabilities))]


class Classifier:
    """A loaded model with its card; explainers are built once and reused."""

    def __init__(self, card: ModelCard, model) -> None:
        self.card = card
        self.model = model
        self._explainers: dict[str, object] = {}

    def explainer(self, method: str):
        if method not in self._explainers:
            self._explainers[method] = get_explainer(method, self.model, self.card.cam_layer)
        return self._explainers[method]

    def predict_batch(self, batch: np.ndarray) -> np.ndarray:
        """Calibrated probabilities, shape (n, classes), for a batch of model inputs."""
        return calibrated_probabilities(np.asarray(self.model(batch, training=False)), self.card.head,
                                        self.card.temperature)

    def run(self, pixels: np.ndarray, method: str | None = None, target: str = PREDICTED) -> ModelResult:
        """Classify one image and, when a method is given, explain `target`."""
        if target != PREDICTED and target not in self.card.classes:
            raise ValueError(f"cannot explain class {target!r}: model {self.card.name!r} knows {self.card.classes}")
        started = time.perf_counter()
        inputs = to_model_input(pixels, self.card.input_size)
        heatmap = explained = cam = None
        explainer = self.explainer(method) if method is not None else None
        guess = self.card.positive_class if target == PREDICTED else target
        if hasattr(explainer, "explain_with_probabilities"):  # one pass gives both (compiled Grad-CAM)
            raw, cam = explainer.explain_with_probabilities(inputs, self.card.classes.index(guess))
            probabilities = apply_temperature(raw, self.card.temperature)
        else:
            probabilities = self.predict_batch(inputs)[0]
        predicted = decide(probabilities, self.card)
        if explainer is not None:
            explained = predicted if target == PREDICTED else target
            if cam is None or explained != guess:
                cam = explainer.explain(inputs, self.card.classes.index(explained))
            heatmap = resize_heatmap(cam, pixels.shape[:2])
        return ModelResult(
            name=self.card.name,
            architecture=self.card.architecture,
            classes=list(self.card.classes),
            positive_class=self.card.positive_class,
            probabilities={c: float(p) for c, p in zip(self.card.classes, probabilities)},
            predicted=predicted,
            threshold=float(self.card.threshold),
            seconds=time.perf_counter() - started,
            method=method,
            explained_class=explained,
            heatmap=heatmap,
        )
