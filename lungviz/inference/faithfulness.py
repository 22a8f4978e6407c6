"""Does a heatmap show what the model uses? Deletion and insertion curves against two baseline maps.

A faithful map ranks pixels by how much the model needs them: removing its
hottest pixels first should make the class probability fall faster than
removing the same share at random (a lower deletion area), and revealing them
first should make it rise faster (a higher insertion area) (Petsiuk et al.,
RISE, 2018). Two reference maps put the heatmap's areas in context: a random
order (fixed seed), which any useful map must beat, and the plain input
gradient |d logit / d input| (Simonyan et al., 2014), the cheapest saliency.

Everything runs on the input the model saw (its crop, at its input size), and
the masked inputs of one curve go to the model in one batch, so a check costs
seven model calls and one gradient pass (`benchmarks/faithfulness_speed.py`).

Not Xplique or Quantus: Xplique 2.0.2 requires tensorflow<=2.20 (the full CUDA
build on Linux), tensorflow-probability, scipy<=1.15.3 and scikit-learn<=1.7.2,
and Quantus 0.6.0's TensorFlow support pins tensorflow<2.16, keras<3 and
numpy<2; neither installs beside TensorFlow 2.21 and Keras 3, and the
algorithm is a few array operations.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

from lungviz.errors import ExplanationError
from lungviz.preprocessing import crop, image_to_input, stretch_to_size

if TYPE_CHECKING:
    from lungviz.inference.explanations import CamGraph
    from lungviz.inference.lungs import Lungs
    from lungviz.inference.prediction import Classifier, ModelResult

STEPS = 10
"""Points per curve after the start: 10% of the pixels more at each step.

Twenty steps cost twice the model calls (116 inputs instead of 56 per check):
1.7-3.4 s instead of 0.65-1.3 s per shipped X-ray EfficientNet-Lite on this
2-core CPU while a training ran beside it, over the 2 s budget; on three test
radiographs and four models the areas moved by 0.016 (median of the largest
change per check; at most 0.07), and the map is judged against references
sampled the same way.
"""
VERDICT_FRACTION = 0.1
"""The share of pixels the one-line verdict removes: the map's hottest tenth."""
SEED = 0
"""Seeds the random map and the tie-breaking order, so a check gives the same numbers every time."""
MAPS = ("heatmap", "random", "gradient")
"""The map checked, then its two references, in the order figures and records list them."""
DELETION, INSERTION = "deletion", "insertion"

ScoreFunction = Callable[[np.ndarray], np.ndarray]
"""A model seen as a batch of inputs (n, H, W, C) -> the probability of the class explained, shape (n,)."""


@dataclass(frozen=True)
class Curve:
    """The class probability after each step of removing (deletion) or revealing (insertion) pixels."""

    fractions: np.ndarray
    """Share of the pixels removed or revealed, 0 to 1."""
    scores: np.ndarray

    @property
    def area(self) -> float:
        """Area under the curve (trapezoids over the fraction), in [0, 1] because probabilities are."""
        return float(np.trapezoid(self.scores, self.fractions))

    def at(self, fraction: float) -> float:
        """The probability once `fraction` of the pixels are done (interpolated between steps)."""
        return float(np.interp(fraction, self.fractions, self.scores))


@dataclass(frozen=True)
class Faithfulness:
    """One heatmap's check: deletion and insertion curves of the heatmap and of both reference maps."""

    class_name: str
    """The class whose probability the curves follow: the class the heatmap explains."""
    deletion: dict[str, Curve]
    """By map name (MAPS)."""
    insertion: dict[str, Curve]
    seconds: float

    def to_dict(self) -> dict[str, float]:
        """The CLI's `faithfulness` record: areas normalised to 0-1 and the seconds the check took."""
        record = {}
        for name in MAPS:
            prefix = "" if name == "heatmap" else f"{name}_"
            record[f"{prefix}deletion_auc"] = round(self.deletion[name].area, 4)
            record[f"{prefix}insertion_auc"] = round(self.insertion[name].area, 4)
        return {**record, "seconds": round(self.seconds, 4)}

    def verdict(self, fraction: float = VERDICT_FRACTION) -> str:
        """What removing the map's hottest pixels does, beside removing as many at random, in one line."""
        heatmap, random = self.deletion["heatmap"], self.deletion["random"]
        before, after = heatmap.at(0.0), heatmap.at(fraction)
        verb = "drops" if after < before else "raises"
        return (
            f"removing the top {fraction:.0%} of this map {verb} P({self.class_name}) from {before:.2f} to "
            f"{after:.2f}; a random map of the same size: to {random.at(fraction):.2f}"
        )


def mean_baseline(inputs: np.ndarray) -> np.ndarray:
    """What a removed pixel becomes: the image's mean value (per channel), the same everywhere.

    Why not a blurred copy, the other common choice: a blur keeps each region's
    brightness, and brightness over large areas is what consolidation looks like
    on a radiograph; a model that reads it would barely notice that evidence
    "removed", and the check would call a faithful map unfaithful. The mean
    takes away detail and brightness alike. Its flat patches have edges a CNN
    may react to, but the three maps are measured with the same baseline, so
    that artefact does not favour one of them. One baseline serves both curves:
    insertion starts from it, deletion ends at it.
    """
    image = np.asarray(inputs, np.float32)
    return np.broadcast_to(image.mean(axis=(1, 2), keepdims=True), image.shape).copy()


def random_map(shape: tuple[int, int], seed: int = SEED) -> np.ndarray:
    """A map with no information: uniform noise, the order any useful heatmap must beat."""
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def pixel_ranks(saliency: np.ndarray, seed: int = SEED) -> np.ndarray:
    """Each pixel's place in the map's order, 0 for the hottest, shape (H, W).

    Ties are broken in a fixed random order: Grad-CAM is zero over large areas,
    and removing those in reading order would test the top rows, not the map.
    """
    values = np.asarray(saliency, np.float64).ravel()
    tie_breaker = np.random.default_rng(seed).random(values.size)
    order = np.lexsort((tie_breaker, -values))
    ranks = np.empty(values.size, np.int64)
    ranks[order] = np.arange(values.size)
    return ranks.reshape(np.shape(saliency))


def perturbed(
    inputs: np.ndarray, baseline: np.ndarray, ranks: np.ndarray, fractions: np.ndarray, mode: str
) -> np.ndarray:
    """The inputs of one curve (len(fractions), H, W, C): the top `fraction` of `ranks` removed or revealed."""
    counts = np.rint(np.asarray(fractions) * ranks.size).astype(np.int64)
    done = (ranks[None] < counts[:, None, None])[..., None]
    if mode == DELETION:
        return np.where(done, baseline, inputs)
    if mode == INSERTION:
        return np.where(done, inputs, baseline)
    raise ValueError(f"mode must be {DELETION!r} or {INSERTION!r}, not {mode!r}")


def perturbation_curves(
    score: ScoreFunction,
    inputs: np.ndarray,
    maps: Mapping[str, np.ndarray],
    baseline: np.ndarray | None = None,
    steps: int = STEPS,
) -> tuple[dict[str, Curve], dict[str, Curve]]:
    """(deletion, insertion) curves of each map (H, W) over a batch of one `inputs` (1, H, W, C).

    The ends are shared: every deletion starts at the image and ends at the
    baseline, every insertion the other way round, so they are scored once;
    the steps between go to the model one batch per curve.
    """
    if steps < 1:
        raise ValueError(f"a curve needs at least one step, got {steps}")
    inputs = np.asarray(inputs, np.float32)
    baseline = mean_baseline(inputs) if baseline is None else np.asarray(baseline, np.float32)
    fractions = np.linspace(0.0, 1.0, steps + 1)
    original, flat = np.asarray(score(np.concatenate([inputs, baseline])), np.float64)
    curves: dict[str, dict[str, Curve]] = {DELETION: {}, INSERTION: {}}
    for name, saliency in maps.items():
        if saliency.shape != inputs.shape[1:3]:
            raise ValueError(f"the {name} map is {saliency.shape}, the input {inputs.shape[1:3]}")
        ranks = pixel_ranks(saliency)
        for mode, start, end in ((DELETION, original, flat), (INSERTION, flat, original)):
            middle = np.asarray(score(perturbed(inputs, baseline, ranks, fractions[1:-1], mode)), np.float64)
            curves[mode][name] = Curve(fractions, np.concatenate([[start], middle, [end]]))
    return curves[DELETION], curves[INSERTION]


def input_gradient_map(logit: Callable[[tf.Tensor], tf.Tensor], inputs: np.ndarray) -> np.ndarray:
    """|d logit / d input| summed over channels, (H, W): the plain image-gradient saliency of a batch of one."""
    return np.asarray(_input_gradients(logit, tf.convert_to_tensor(inputs, tf.float32)))[0]


def _input_gradients(logit: Callable[[tf.Tensor], tf.Tensor], image: tf.Tensor) -> tf.Tensor:
    with tf.GradientTape() as tape:
        tape.watch(image)
        total = tf.reduce_sum(logit(image))
    return tf.reduce_sum(tf.abs(tape.gradient(total, image)), axis=-1)


def class_logit(graph: CamGraph, class_index: int, inputs: tf.Tensor) -> tf.Tensor:
    """The logit a heatmap of `class_index` explains: a sigmoid unit z is +z for class 1, -z for class 0."""
    logits = graph.model(inputs, training=False)[1]
    return logits[:, 0] * (2 * class_index - 1) if graph.head == "sigmoid" else logits[:, class_index]


def check_heatmap(
    classifier: Classifier, pixels: np.ndarray, result: ModelResult, lungs: Lungs | None = None, steps: int = STEPS
) -> Faithfulness:
    """Check `result`'s heatmap on the image it came from, at the model's input (its crop, its size).

    `lungs` must be the lungs the analysis found, so the check sees the crop the model saw.
    """
    if result.heatmap is None or result.method is None or result.explained_class is None:
        raise ExplanationError(f"model {result.name!r} made no heatmap on this image, so there is nothing to check")
    started = time.perf_counter()
    box = classifier.input_box(lungs)
    size = tuple(classifier.card.input_size)
    inputs = image_to_input(pixels, size, box)
    index = classifier.card.classes.index(result.explained_class)
    maps = {
        "heatmap": stretch_to_size(crop(result.heatmap, box), size),
        "random": random_map(inputs.shape[1:3]),
        "gradient": _gradient_map(classifier, result.method, index, inputs),
    }

    def probability(batch: np.ndarray) -> np.ndarray:
        return classifier.predict_batch(batch)[:, index]

    deletion, insertion = perturbation_curves(probability, inputs, maps, steps=steps)
    return Faithfulness(result.explained_class, deletion, insertion, time.perf_counter() - started)


_GRADIENTS: weakref.WeakKeyDictionary[Classifier, dict[int, Callable[[tf.Tensor], tf.Tensor]]] = (
    weakref.WeakKeyDictionary()
)
"""Each classifier's compiled gradient per class, dropped with the classifier."""


def _gradient_map(classifier: Classifier, method: str, class_index: int, inputs: np.ndarray) -> np.ndarray:
    """`input_gradient_map` traced once per classifier and class: eager gradients cost several forward passes.

    Any of the classifier's graphs gives the same logits; the method's is built already.
    """
    compiled = _GRADIENTS.setdefault(classifier, {})
    if class_index not in compiled:
        logit = partial(class_logit, classifier.explainer(method).graph, class_index)
        compiled[class_index] = tf.function(partial(_input_gradients, logit), reduce_retracing=True)
    return np.asarray(compiled[class_index](tf.convert_to_tensor(inputs, tf.float32)))[0]
