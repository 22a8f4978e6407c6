"""Explanation methods: which pixels made a model favour a class.

Every method is a small `Explainer` subclass registered in `METHODS`; the base
class owns the shared work (exposing the CAM layer of possibly nested models,
validating inputs, shaping the result). What to explain (a class of the model
card) is kept apart from how (the method), and nothing here draws pixels:
`lungviz.overlay` renders the heatmaps.

Models are explained through a flat view of their graph (`CamGraph`): the
layers of any nested base model are re-wired into one graph, using the same
layer objects and therefore the same weights, with the CAM layer's output
exposed next to the logits (the final layer before its softmax/sigmoid). This
is what makes CAMs work for transfer-learning models whose CAM layer lives
inside a base model, which tf-keras-vis cannot do on its own.

A heatmap is float32 in [0, 1] at the model's input resolution; bilinear
upsampling maps corner cells to corner pixels (as tf-keras-vis does), so every
method aligns its map the same way.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import cv2
import keras
import numpy as np
import tensorflow as tf

with warnings.catch_warnings():  # tf-keras-vis imports `zoom` from a SciPy path deprecated since 1.8
    warnings.simplefilter("ignore", DeprecationWarning)
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.layercam import Layercam
    from tf_keras_vis.saliency import Saliency
    from tf_keras_vis.scorecam import Scorecam
    from tf_keras_vis.utils.scores import BinaryScore, CategoricalScore

FEATURES_LAYER = "lungviz_cam_features"
"""Name of the pass-through layer that marks the CAM layer's output in a `CamGraph`."""

_EPSILON = 1e-7  # as tf-keras-vis' normalisation, so maps agree to the last digit


class ExplanationError(ValueError):
    """A model cannot be explained as asked (unknown layer, unsupported head, bad input)."""


# --------------------------------------------------------------------------- the flat graph


@dataclass(frozen=True)
class CamGraph:
    """A model seen as input -> (CAM layer features, logits), sharing the model's weights."""

    model: keras.Model
    """Outputs [features (batch, h, w, channels), logits (batch, units)]."""
    head: str
    """"softmax" or "sigmoid": how logits become probabilities."""
    n_classes: int

    @classmethod
    def build(cls, model: keras.Model, cam_layer: str) -> CamGraph:
        """Re-wire `model` so the CAM layer's output and the logits are outputs of one graph."""
        if len(model.inputs) != 1:
            raise ExplanationError(f"model {model.name!r} has {len(model.inputs)} inputs; expected one image input")
        target = _find_layer(model, cam_layer)
        if target is None:
            raise ExplanationError(f"model {model.name!r} has no layer named {cam_layer!r} (not even in a nested model)")
        final = _output_layer(model)
        head = _head_of(final)
        found: dict[str, keras.KerasTensor] = {}

        def call(layer, *args, **kwargs):
            if isinstance(layer, keras.Model) and (_contains(layer, target) or _contains(layer, final)):
                return _rewire(layer, args[0], call)
            outputs = layer(*args, **kwargs)
            if layer is target:
                outputs = found["features"] = keras.layers.Identity(name=FEATURES_LAYER)(outputs)
            if layer is final:
                found["logits"] = _logits(layer, args[0], outputs)
            return outputs

        source = model.inputs[0]
        inputs = keras.Input(batch_shape=source.shape, dtype=source.dtype, name="image")
        _rewire(model, inputs, call)
        features, logits = found["features"], found["logits"]
        if len(features.shape) != 4:
            raise ExplanationError(f"CAM layer {cam_layer!r} outputs shape {tuple(features.shape)}; "
                                   "a CAM needs a (batch, height, width, channels) feature map")
        units = logits.shape[-1]
        if head == "sigmoid" and units != 1:
            raise ExplanationError(f"a sigmoid head must have one unit, {final.name!r} has {units}")
        flat = keras.Model(inputs, [features, logits], name=f"{model.name}_cam_graph")
        return cls(model=flat, head=head, n_classes=2 if head == "sigmoid" else units)

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        return tuple(self.model.inputs[0].shape)

    def logits_model(self) -> keras.Model:
        """Input -> logits, with the features layer at the top level (what tf-keras-vis can find)."""
        return keras.Model(self.model.inputs, self.model.outputs[1])


def _find_layer(model: keras.Model, name: str) -> keras.layers.Layer | None:
    for layer in model.layers:
        if layer.name == name:
            return layer
        if isinstance(layer, keras.Model) and (inner := _find_layer(layer, name)) is not None:
            return inner
    return None


def _contains(model: keras.Model, wanted: keras.layers.Layer) -> bool:
    return any(layer is wanted or (isinstance(layer, keras.Model) and _contains(layer, wanted))
               for layer in model.layers)


def _output_layer(model: keras.Model) -> keras.layers.Layer:
    """The layer that produces the class output, looking inside a nested model that ends the graph."""
    if len(model.outputs) != 1:
        raise ExplanationError(f"model {model.name!r} has {len(model.outputs)} outputs; expected one class output")
    last = model.layers[-1]
    return _output_layer(last) if isinstance(last, keras.Model) else last


def _activation_name(layer: keras.layers.Layer) -> str:
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    return getattr(getattr(layer, "activation", None), "__name__", "linear")


def _head_of(final: keras.layers.Layer) -> str:
    activation = _activation_name(final)
    if activation == "linear":  # the model already outputs logits
        return "sigmoid" if final.output.shape[-1] == 1 else "softmax"
    if activation not in ("softmax", "sigmoid"):
        raise ExplanationError(f"final layer {final.name!r} ends in {activation!r}; expected softmax or sigmoid")
    return activation


class _DenseLogits(keras.layers.Layer):
    """A Dense layer's output before its activation, from that layer's own kernel and bias (no copy)."""

    def __init__(self, dense: keras.layers.Dense) -> None:
        super().__init__(name=f"{dense.name}_logits")
        self.dense = dense

    def call(self, inputs):
        logits = keras.ops.matmul(inputs, self.dense.kernel)
        return logits + self.dense.bias if self.dense.use_bias else logits


def _logits(final: keras.layers.Layer, inputs, outputs):
    """Pre-activation logits of the final layer, without changing the shared model."""
    if _activation_name(final) == "linear":
        return outputs
    if isinstance(final, (keras.layers.Activation, keras.layers.Softmax)):
        return inputs
    if isinstance(final, keras.layers.Dense):
        return _DenseLogits(final)(inputs)
    raise ExplanationError(f"cannot read logits before the activation of final layer {final.name!r} "
                           f"({type(final).__name__}); expected Dense or Activation")


def _rewire(model: keras.Model, inputs, call):
    """Run `model`'s graph on `inputs` layer by layer through `call`, reusing its layers."""
    if isinstance(model, keras.Sequential):
        x = inputs
        for layer in model.layers:
            x = call(layer, x)
        return x
    try:
        clone = keras.models.clone_model(model, input_tensors=inputs, clone_function=lambda layer: layer,
                                         call_function=call)
    except ValueError as error:
        raise ExplanationError(f"cannot look inside model {model.name!r} ({type(model).__name__}); "
                               f"CAMs need Functional or Sequential models: {error}") from error
    return clone.outputs[0]


# --------------------------------------------------------------------------- explainers


class Explainer(ABC):
    """Builds its machinery once per (model, cam_layer); `explain` is then cheap to call repeatedly."""

    label: ClassVar[str]
    """Human name shown in the UI."""

    def __init__(self, model: keras.Model, cam_layer: str) -> None:
        self.graph = CamGraph.build(model, cam_layer)

    def explain(self, inputs: np.ndarray, class_index: int) -> np.ndarray:
        """Heatmap (H, W) float32 in [0, 1] of where `inputs` (1, H, W, 3) supports class `class_index`."""
        self._check(inputs, class_index)
        return _as_heatmap(self._explain(np.asarray(inputs, np.float32), int(class_index)), inputs.shape[1:3])

    @abstractmethod
    def _explain(self, inputs: np.ndarray, class_index: int) -> np.ndarray:
        """The method's map for a checked batch of one, any shape that squeezes to (H, W)."""

    def _check(self, inputs: np.ndarray, class_index: int) -> None:
        expected = self.graph.input_shape
        shape = getattr(inputs, "shape", None)
        if shape is None or len(shape) != 4 or shape[0] != 1 or shape[-1] != expected[-1] or any(
                want is not None and got != want for got, want in zip(shape[1:3], expected[1:3])):
            raise ExplanationError(f"expected one image shaped (1, {expected[1]}, {expected[2]}, {expected[3]}), "
                                   f"got {shape}")
        if not 0 <= class_index < self.graph.n_classes:
            raise ExplanationError(f"class index {class_index} out of range for a model with "
                                   f"{self.graph.n_classes} classes")


def _as_heatmap(heatmap, shape: tuple[int, int]) -> np.ndarray:
    heatmap = np.nan_to_num(np.asarray(heatmap, np.float32).reshape(shape), nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(heatmap, 0.0, 1.0)


class GradCam(Explainer):
    """Grad-CAM as one compiled TensorFlow function: probabilities and map from a single forward pass.

    The class score is back-propagated only from the logits to the CAM layer,
    so a call costs about one forward pass plus the head's gradient.
    """

    label = "Grad-CAM"

    def __init__(self, model: keras.Model, cam_layer: str) -> None:
        super().__init__(model, cam_layer)
        signature = [tf.TensorSpec(self.graph.input_shape, tf.float32), tf.TensorSpec((), tf.int32)]
        self._compiled = tf.function(self._probabilities_and_cam, input_signature=signature, reduce_retracing=True)
        self._compiled.get_concrete_function()  # trace now, not on the user's first click

    def explain_with_probabilities(self, inputs: np.ndarray, class_index: int) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities (n_classes,), heatmap (H, W)); a sigmoid head gives [1 - p, p]."""
        self._check(inputs, class_index)
        probabilities, cam = self._compiled(tf.convert_to_tensor(inputs, tf.float32), tf.constant(class_index, tf.int32))
        return probabilities.numpy()[0], _as_heatmap(cam.numpy(), inputs.shape[1:3])

    def _explain(self, inputs: np.ndarray, class_index: int) -> np.ndarray:
        return self.explain_with_probabilities(inputs, class_index)[1]

    def _probabilities_and_cam(self, inputs: tf.Tensor, class_index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        features, logits = self.graph.model(inputs, training=False)
        if self.graph.head == "sigmoid":
            score = logits[:, 0] * (2.0 * tf.cast(class_index, logits.dtype) - 1.0)
        else:
            score = tf.gather(logits, class_index, axis=-1)
        # Symbolic gradients (this runs only as a traced graph) cover just the ops between features and score.
        gradients = tf.gradients(score, features)[0]
        channel_weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(features * channel_weights, axis=-1, keepdims=True))
        cam = tf.raw_ops.ResizeBilinear(images=cam, size=tf.shape(inputs)[1:3], align_corners=True)[..., 0]
        low = tf.reduce_min(cam, axis=(1, 2), keepdims=True)
        high = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
        cam = (cam - low) / (high - low + _EPSILON)
        if self.graph.head == "sigmoid":
            positive = tf.sigmoid(logits)
            return tf.concat([1.0 - positive, positive], axis=-1), cam
        return tf.nn.softmax(logits, axis=-1), cam


class _TfKerasVis(Explainer):
    """A tf-keras-vis visualiser run on the flat graph's logits (ReplaceToLinear semantics, no model copy)."""

    visualiser: ClassVar[type]
    options: ClassVar[dict] = {}

    def __init__(self, model: keras.Model, cam_layer: str) -> None:
        super().__init__(model, cam_layer)
        self._visualiser = self.visualiser(self._visualised_model(), model_modifier=None, clone=False)

    def _visualised_model(self) -> keras.Model:
        return self.graph.logits_model()

    def _score(self, class_index: int):
        if self.graph.head == "sigmoid":
            return BinaryScore(class_index == 1)
        return CategoricalScore(class_index)

    def _explain(self, inputs: np.ndarray, class_index: int) -> np.ndarray:
        return self._visualiser(self._score(class_index), inputs, **self._call_options())

    def _call_options(self) -> dict:
        return dict(self.options)


class _TfKerasVisCam(_TfKerasVis):
    """The CAM methods: they weight the features layer of the flat graph."""

    def _call_options(self) -> dict:
        return {"penultimate_layer": FEATURES_LAYER, "seek_penultimate_conv_layer": False, **self.options}


class GradCamPlusPlus(_TfKerasVisCam):
    label = "Grad-CAM++"
    visualiser = GradcamPlusPlus


class LayerCam(_TfKerasVisCam):
    label = "LayerCAM"
    visualiser = Layercam


class ScoreCam(_TfKerasVisCam):
    """Faster Score-CAM: only the `MAX_MAPS` feature maps with the largest spread mask the input.

    tf-keras-vis applies softmax to the model's outputs itself, so a sigmoid
    logit z is presented as the pair [0, z], whose softmax is [1 - p, p].
    """

    label = "Score-CAM"
    visualiser = Scorecam
    MAX_MAPS = 10

    def _visualised_model(self) -> keras.Model:
        logits = self.graph.model.outputs[1]
        if self.graph.head == "sigmoid":
            logits = keras.ops.concatenate([keras.ops.zeros_like(logits), logits], axis=-1)
        model = keras.Model(self.graph.model.inputs, logits)
        model.predict = partial(model.predict, verbose=0)  # its progress bar would pollute CLI output
        return model

    def _score(self, class_index: int):
        return CategoricalScore(class_index)

    def _call_options(self) -> dict:
        channels = self.graph.model.outputs[0].shape[-1]
        return {**super()._call_options(), "max_N": min(self.MAX_MAPS, channels)}


class SmoothGrad(_TfKerasVis):
    """Input-gradient saliency averaged over noisy copies of the image (pixel level, ignores cam_layer)."""

    label = "SmoothGrad saliency"
    visualiser = Saliency
    options = {"smooth_samples": 16, "smooth_noise": 0.2}


METHODS: dict[str, type[Explainer]] = {
    "gradcam": GradCam,
    "gradcam++": GradCamPlusPlus,
    "scorecam": ScoreCam,
    "layercam": LayerCam,
    "smoothgrad": SmoothGrad,
}
"""Every explanation method by key; adding one is a subclass plus an entry here."""

DEFAULT_METHOD = "gradcam"


def get_explainer(method: str, model: keras.Model, cam_layer: str) -> Explainer:
    """A ready explainer; build it once per model and reuse it (construction does the slow setup)."""
    if method not in METHODS:
        raise ExplanationError(f"unknown explanation method {method!r}; choose from {', '.join(METHODS)}")
    return METHODS[method](model, cam_layer)


def resize_heatmap(heatmap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
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
