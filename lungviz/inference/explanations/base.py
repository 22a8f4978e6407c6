"""The explainer base class and the method registry.

The base owns the work every method shares: building the flat graph once per
(model, CAM layer), checking inputs and the class asked for, the model's
probabilities from that same graph, and shaping each method's output into a
heatmap. A method only says how it turns an input and a class into a map
(`_explain`); what to explain is the caller's choice, a class index or a rule
that picks the class from the probabilities (such as the card's decision).

A heatmap is float32 in [0, 1] at the model's input resolution; bilinear
upsampling maps corner cells to corner pixels (as tf-keras-vis does), so every
method aligns its map the same way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar, TypeVar

import cv2
import keras
import numpy as np
import tensorflow as tf

from lungviz.errors import ChoiceError, ExplanationError
from lungviz.inference.explanations.graph import CamGraph

EPSILON = 1e-7
"""Added to a map's range before normalising (as tf-keras-vis does, so maps agree to the last digit)."""

ClassChoice = int | Callable[[np.ndarray], int]
"""The class to explain: an index, or a function of the model's probabilities that returns one."""


class Explainer(ABC):
    """Builds its machinery once per (model, cam_layer); explaining is then cheap to call repeatedly."""

    label: ClassVar[str]
    """Human name shown in the UI."""

    def __init__(self, model: keras.Model, cam_layer: str) -> None:
        self.graph = CamGraph.build(model, cam_layer)
        signature = [tf.TensorSpec(self.graph.input_shape, tf.float32)]
        self._forward = tf.function(self._graph_probabilities, input_signature=signature, reduce_retracing=True)

    def probabilities(self, inputs: np.ndarray) -> np.ndarray:
        """The model's class probabilities (n_classes,) for one image; a sigmoid head gives [1 - p, p]."""
        self._check(inputs, 0)
        return self._forward(tf.convert_to_tensor(inputs, tf.float32)).numpy()[0]

    def explain(self, inputs: np.ndarray, class_index: int) -> np.ndarray:
        """Heatmap (H, W) float32 in [0, 1] of where `inputs` (1, H, W, 3) supports class `class_index`."""
        self._check(inputs, class_index)
        return as_heatmap(self._explain(np.asarray(inputs, np.float32), int(class_index)), inputs.shape[1:3])

    def explain_with_probabilities(self, inputs: np.ndarray, class_index: ClassChoice) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, heatmap of the chosen class): what a prediction with an explanation needs.

        Methods that get both from one pass override this (Grad-CAM).
        """
        probabilities = self.probabilities(inputs)
        return probabilities, self.explain(inputs, resolve_class(class_index, probabilities))

    @abstractmethod
    def _explain(self, inputs: np.ndarray, class_index: int) -> np.ndarray:
        """The method's map for a checked batch of one, any shape that squeezes to (H, W)."""

    def _graph_probabilities(self, inputs: tf.Tensor) -> tf.Tensor:
        return self.graph.probabilities(self.graph.model(inputs, training=False)[1])

    def _check(self, inputs: np.ndarray, class_index: int) -> None:
        expected = self.graph.input_shape
        shape = getattr(inputs, "shape", None)
        if (
            shape is None
            or len(shape) != 4
            or shape[0] != 1
            or shape[-1] != expected[-1]
            or any(want is not None and got != want for got, want in zip(shape[1:3], expected[1:3], strict=True))
        ):
            raise ExplanationError(
                f"expected one image shaped (1, {expected[1]}, {expected[2]}, {expected[3]}), got {shape}"
            )
        if not 0 <= class_index < self.graph.n_classes:
            raise ExplanationError(
                f"class index {class_index} out of range for a model with {self.graph.n_classes} classes"
            )


def resolve_class(class_index: ClassChoice, probabilities: np.ndarray) -> int:
    """The index a ClassChoice names, given the model's probabilities."""
    return int(class_index(probabilities) if callable(class_index) else class_index)


def as_heatmap(heatmap: np.ndarray | tf.Tensor, shape: tuple[int, int]) -> np.ndarray:
    """Any map that squeezes to `shape`, as float32 in [0, 1] with NaN and infinities made finite."""
    values = np.nan_to_num(np.asarray(heatmap, np.float32).reshape(shape), nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(values, 0.0, 1.0)


def resize_heatmap(heatmap: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A model-resolution heatmap stretched to the original image's (height, width).

    The image was stretched to the model's size without keeping its aspect
    ratio, so stretching the map back is the exact inverse.
    """
    heatmap = np.asarray(heatmap, np.float32)
    if heatmap.ndim != 2:
        raise ValueError(f"a heatmap must be 2-D, got shape {heatmap.shape}")
    height, width = (int(n) for n in shape[:2])
    if height < 1 or width < 1:
        raise ValueError(f"cannot resize a heatmap to {tuple(shape)}")
    return np.clip(cv2.resize(heatmap, (width, height), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)


METHODS: dict[str, type[Explainer]] = {}
"""Every explanation method by key, in the order the UI offers them; filled by `register_method`."""

DEFAULT_METHOD = "gradcam"

_E = TypeVar("_E", bound=type[Explainer])


def register_method(key: str) -> Callable[[_E], _E]:
    """Class decorator: make an `Explainer` subclass available under `key` (CLI, dashboard, registry)."""

    def register(cls: _E) -> _E:
        if key in METHODS:
            raise ValueError(f"explanation method {key!r} is registered twice")
        METHODS[key] = cls
        return cls

    return register


def get_explainer(method: str, model: keras.Model, cam_layer: str) -> Explainer:
    """A ready explainer; build it once per model and reuse it (construction does the slow setup)."""
    if method not in METHODS:
        raise ExplanationError(f"unknown explanation method {method!r}; choose from {', '.join(METHODS)}")
    return METHODS[method](model, cam_layer)


def check_method(method: str | None) -> None:
    """Raise ChoiceError unless `method` is a registered key (None means "no explanation")."""
    if method is not None and method not in METHODS:
        raise ChoiceError(f"unknown method {method!r}; choose from: none, {', '.join(METHODS)}")
