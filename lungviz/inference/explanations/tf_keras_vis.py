"""The methods LungViz takes from tf-keras-vis, run on LungViz's flat graph.

tf-keras-vis keeps "what to explain" (its Score objects) apart from "how" (the
visualiser); here the score is the pre-activation logit of the class asked for
(a single sigmoid unit: +logit for the positive class, -logit for the other),
and each method is the visualiser plus its options. The flat graph lets them
reach a CAM layer inside a nested base model, which tf-keras-vis cannot do
on its own.
"""

from __future__ import annotations

import importlib
import warnings
from functools import partial
from typing import Any, ClassVar

import keras
import numpy as np

from lungviz.inference.explanations.base import Explainer, register_method
from lungviz.inference.explanations.graph import FEATURES_LAYER


def _tf_keras_vis(path: str) -> Any:
    """A tf-keras-vis class by "module.Name", imported on first use.

    Importing tf-keras-vis costs about 0.3 s, which every cold start that only
    needs the compiled Grad-CAM would otherwise pay.
    """
    module, name = path.rsplit(".", 1)
    with warnings.catch_warnings():  # tf-keras-vis imports `zoom` from a SciPy path deprecated since 1.8
        warnings.simplefilter("ignore", DeprecationWarning)
        return getattr(importlib.import_module(f"tf_keras_vis.{module}"), name)


class _TfKerasVis(Explainer):
    """A tf-keras-vis visualiser run on the flat graph's logits (ReplaceToLinear semantics, no model copy)."""

    visualiser: ClassVar[str]
    """The tf-keras-vis class as "module.Name" under tf_keras_vis."""
    options: ClassVar[dict[str, Any]] = {}

    def __init__(self, model: keras.Model, cam_layer: str) -> None:
        super().__init__(model, cam_layer)
        self._visualiser = _tf_keras_vis(self.visualiser)(self._visualised_model(), model_modifier=None, clone=False)

    def _visualised_model(self) -> keras.Model:
        return self.graph.logits_model()

    def _score(self, class_index: int):
        if self.graph.head == "sigmoid":
            return _tf_keras_vis("utils.scores.BinaryScore")(class_index == 1)
        return _tf_keras_vis("utils.scores.CategoricalScore")(class_index)

    def _explain(self, inputs: np.ndarray, class_index: int) -> np.ndarray:
        return self._visualiser(self._score(class_index), inputs, **self._call_options())

    def _call_options(self) -> dict[str, Any]:
        return dict(self.options)


class _TfKerasVisCam(_TfKerasVis):
    """The CAM methods: they weight the features layer of the flat graph."""

    def _call_options(self) -> dict[str, Any]:
        return {"penultimate_layer": FEATURES_LAYER, "seek_penultimate_conv_layer": False, **self.options}


@register_method("gradcam++")
class GradCamPlusPlus(_TfKerasVisCam):
    label = "Grad-CAM++"
    visualiser = "gradcam_plus_plus.GradcamPlusPlus"


@register_method("scorecam")
class ScoreCam(_TfKerasVisCam):
    """Faster Score-CAM: only the `MAX_MAPS` feature maps with the largest spread mask the input.

    tf-keras-vis applies softmax to the model's outputs itself, so a sigmoid
    logit z is presented as the pair [0, z], whose softmax is [1 - p, p].
    """

    label = "Score-CAM"
    visualiser = "scorecam.Scorecam"
    MAX_MAPS = 10

    def _visualised_model(self) -> keras.Model:
        logits = self.graph.model.outputs[1]
        if self.graph.head == "sigmoid":
            logits = keras.ops.concatenate([keras.ops.zeros_like(logits), logits], axis=-1)
        model = keras.Model(self.graph.model.inputs, logits)
        model.predict = partial(model.predict, verbose=0)  # its progress bar would pollute CLI output
        return model

    def _score(self, class_index: int):
        return _tf_keras_vis("utils.scores.CategoricalScore")(class_index)

    def _call_options(self) -> dict[str, Any]:
        channels = self.graph.model.outputs[0].shape[-1]
        return {**super()._call_options(), "max_N": min(self.MAX_MAPS, channels)}


@register_method("layercam")
class LayerCam(_TfKerasVisCam):
    label = "LayerCAM"
    visualiser = "layercam.Layercam"


@register_method("smoothgrad")
class SmoothGrad(_TfKerasVis):
    """Input-gradient saliency averaged over noisy copies of the image (pixel level, ignores cam_layer)."""

    label = "SmoothGrad saliency"
    visualiser = "saliency.Saliency"
    options: ClassVar[dict[str, Any]] = {"smooth_samples": 16, "smooth_noise": 0.2}
