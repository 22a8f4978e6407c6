"""Explanation methods: which pixels made a model favour a class.

Every method is a small `Explainer` subclass registered with
`@register_method("key")`; the base class owns the shared work (the flat graph
that exposes a CAM layer inside nested models, input checks, probabilities,
the heatmap's shape and range). Nothing here draws pixels:
`lungviz.reporting.overlay` renders the heatmaps. Importing this package
registers every method below, in the order the UI lists them.
"""

from lungviz.inference.explanations.base import (
    DEFAULT_METHOD,
    METHODS,
    ClassChoice,
    Explainer,
    check_method,
    get_explainer,
    register_method,
    resize_heatmap,
)
from lungviz.inference.explanations.gradcam import GradCam
from lungviz.inference.explanations.graph import FEATURES_LAYER, CamGraph
from lungviz.inference.explanations.tf_keras_vis import (
    GradCamPlusPlus,
    LayerCam,
    ScoreCam,
    SmoothGrad,
)

__all__ = [
    "DEFAULT_METHOD",
    "FEATURES_LAYER",
    "METHODS",
    "CamGraph",
    "ClassChoice",
    "Explainer",
    "GradCam",
    "GradCamPlusPlus",
    "LayerCam",
    "ScoreCam",
    "SmoothGrad",
    "check_method",
    "get_explainer",
    "register_method",
    "resize_heatmap",
]
