"""Running one model on one chest image: inputs, calibrated probabilities, decision, heatmap.

Data flows one way here: a grayscale image in [0, 1] becomes the model's input
(stretched to the card's size, as the training images were), the model's
probabilities are calibrated with the card's temperature, the card's threshold
turns them into a decision, and the explanation method gives a heatmap that is
brought back to the image's own resolution.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
import tensorflow as tf

from lungviz.errors import ChoiceError
from lungviz.inference.explanations import (
    ClassChoice,
    Explainer,
    GradCam,
    get_explainer,
    resize_heatmap,
)
from lungviz.inference.localisation import heat_share, heatmap_peak
from lungviz.inference.lungs import Lungs
from lungviz.models.cards import ModelCard
from lungviz.models.outputs import apply_temperature, calibrated_probabilities, decide
from lungviz.preprocessing import image_to_input

if TYPE_CHECKING:
    from lungviz.inference.faithfulness import Faithfulness
    from lungviz.inference.service import BatchFunction, InferenceService

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
    """float32 (H, W) in [0, 1] at the image's own resolution; zero outside the box the model saw."""
    lung_attention: float | None = None
    """Share of the heatmap's heat inside the lungs (None without a heatmap or without lungs found)."""
    heatmap_peak: tuple[int, int] | None = None
    """(x, y) of the heatmap's maximum in the image's pixels."""
    faithfulness: Faithfulness | None = None
    """The heatmap's deletion/insertion check, once someone asked for it (`lungviz.inference.faithfulness`)."""

    @property
    def positive_probability(self) -> float:
        return self.probabilities[self.positive_class]


def _on_image(cam: np.ndarray, shape: tuple[int, ...], box: tuple[int, int, int, int] | None) -> np.ndarray:
    """A model-resolution map stretched back over the box the model saw, zero elsewhere in the image."""
    if box is None:
        return resize_heatmap(cam, shape)
    x0, y0, x1, y1 = box
    heatmap = np.zeros(shape[:2], np.float32)
    heatmap[y0:y1, x0:x1] = resize_heatmap(cam, (y1 - y0, x1 - x0))
    return heatmap


class Classifier:
    """A loaded model with its card; the compiled forward pass and the explainers are built once and reused.

    With a `service`, every model call goes through that shared queue (which may
    batch it with other viewers' calls) instead of running in the caller's thread.
    """

    def __init__(self, card: ModelCard, model: keras.Model, service: InferenceService | None = None) -> None:
        self.card = card
        self.model = model
        self.service = service
        self._explainers: dict[str, Explainer] = {}
        self._forward: Callable[[np.ndarray], Any] | None = None
        self._building = threading.Lock()

    def explainer(self, method: str) -> Explainer:
        with self._building:  # the warm-up thread may be building it right now
            if method not in self._explainers:
                self._explainers[method] = get_explainer(method, self.model, self.card.cam_layer)
            return self._explainers[method]

    def warm_up(self, method: str | None) -> None:
        """Build the compiled function `run` will use and run it once: its first run optimises the graph."""
        probe = np.zeros((1, *self.card.input_size, 3), np.float32)
        if method is None:
            self.predict_batch(probe)
        else:
            self._explained(method, probe, 0)

    def predict_batch(self, batch: np.ndarray) -> np.ndarray:
        """Calibrated probabilities, shape (n, classes), for a batch of model inputs."""
        raw = self._compute(self._raw_outputs, batch)
        return calibrated_probabilities(raw, self.card.head, self.card.temperature)

    def _raw_outputs(self, batch: np.ndarray) -> np.ndarray:
        if self._forward is None:  # compiled on first use: an eager Keras call costs several forward passes
            self._forward = tf.function(partial(self.model, training=False), reduce_retracing=True)
        return np.asarray(self._forward(tf.convert_to_tensor(batch, tf.float32)))

    def _compute(self, function: BatchFunction, inputs: np.ndarray) -> Any:
        """`function(inputs)`: through the shared service where there is one, else right here."""
        return function(inputs) if self.service is None else self.service.run(function, inputs)

    def _explained(self, method: str, inputs: np.ndarray, class_index: ClassChoice) -> tuple[np.ndarray, np.ndarray]:
        """(raw probabilities, heatmap) of one image.

        Grad-CAM gives every class's map from one compiled call of a batch, so
        its calls from several viewers can share one; the other methods need
        the class before they compute, so each call runs alone.
        """
        explainer = self.explainer(method)
        if isinstance(explainer, GradCam):
            return explainer.chosen(inputs, self._compute(explainer.probabilities_and_cams, inputs), class_index)
        return self._compute(partial(explainer.explain_with_probabilities, class_index=class_index), inputs)

    def run(
        self, pixels: np.ndarray, method: str | None = None, target: str = PREDICTED, lungs: Lungs | None = None
    ) -> ModelResult:
        """Classify one image and, when a method is given, explain `target`.

        A model whose card says `input_crop: lungs` sees the lungs' crop box;
        its heatmap is placed back into the whole image. With lungs found, the
        result says how much of the heat lies inside them.
        """
        if target != PREDICTED and target not in self.card.classes:
            raise ChoiceError(f"cannot explain class {target!r}: model {self.card.name!r} knows {self.card.classes}")
        started = time.perf_counter()
        box = self.input_box(lungs)
        inputs = image_to_input(pixels, self.card.input_size, box)
        heatmap = explained = attention = peak = None
        if method is None:
            probabilities = self.predict_batch(inputs)[0]
        else:
            raw, cam = self._explained(method, inputs, self._class_to_explain(target))
            probabilities = apply_temperature(raw, self.card.temperature)
            heatmap = _on_image(cam, pixels.shape[:2], box)
            peak = heatmap_peak(heatmap)
            if lungs is not None and lungs.found:
                attention = heat_share(heatmap, lungs.mask)
        predicted = decide(probabilities, self.card)
        if method is not None:
            explained = predicted if target == PREDICTED else target
        return ModelResult(
            name=self.card.name,
            architecture=self.card.architecture,
            classes=list(self.card.classes),
            positive_class=self.card.positive_class,
            probabilities={c: float(p) for c, p in zip(self.card.classes, probabilities, strict=True)},
            predicted=predicted,
            threshold=float(self.card.threshold),
            seconds=time.perf_counter() - started,
            method=method,
            explained_class=explained,
            heatmap=heatmap,
            lung_attention=attention,
            heatmap_peak=peak,
        )

    def input_box(self, lungs: Lungs | None) -> tuple[int, int, int, int] | None:
        """The part of the image this model sees: the lungs' crop box if its card says so, else None (all of it)."""
        return lungs.crop_box() if lungs is not None and self.card.input_crop == "lungs" else None

    def _class_to_explain(self, target: str) -> ClassChoice:
        """The target's class index, or for PREDICTED the rule that finds it from the model's raw probabilities."""
        if target != PREDICTED:
            return self.card.classes.index(target)
        card = self.card
        return lambda raw: card.classes.index(decide(apply_temperature(raw, card.temperature), card))
