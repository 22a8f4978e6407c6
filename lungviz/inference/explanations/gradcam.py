"""Grad-CAM as one compiled TensorFlow function: probabilities and every class's map from one forward pass."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from lungviz.inference.explanations.base import (
    EPSILON,
    ClassChoice,
    Explainer,
    as_heatmap,
    register_method,
    resolve_class,
)


@register_method("gradcam")
class GradCam(Explainer):
    """Grad-CAM (Selvaraju et al., 2017), compiled.

    Each class score is back-propagated only from the logits to the CAM layer,
    so one call costs about one forward pass plus the head's gradients, and it
    returns the maps of all classes: the class to show can be chosen after the
    probabilities are known without a second pass.
    """

    label = "Grad-CAM"

    def __init__(self, model, cam_layer: str) -> None:
        super().__init__(model, cam_layer)
        signature = [tf.TensorSpec(self.graph.input_shape, tf.float32)]
        self._compiled = tf.function(self._probabilities_and_cams, input_signature=signature, autograph=False)
        self._compiled.get_concrete_function()  # trace now, not on the user's first click

    def explain_with_probabilities(self, inputs: np.ndarray, class_index: ClassChoice) -> tuple[np.ndarray, np.ndarray]:
        self._check(inputs, 0)
        return self.chosen(inputs, self.probabilities_and_cams(inputs), class_index)

    def probabilities_and_cams(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities (n, classes), every class's map (n, classes, H, W)) for a batch of any size.

        What a shared queue batches: several viewers' images cost one call, and
        each picks its class afterwards (`chosen`).
        """
        probabilities, cams = self._compiled(tf.convert_to_tensor(inputs, tf.float32))
        return probabilities.numpy(), cams.numpy()

    def chosen(
        self, inputs: np.ndarray, outputs: tuple[np.ndarray, np.ndarray], class_index: ClassChoice
    ) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, heatmap of the chosen class) of one image (1, H, W, 3) from its `probabilities_and_cams`."""
        probabilities, cams = outputs[0][0], outputs[1][0]
        chosen = resolve_class(class_index, probabilities)
        self._check(inputs, chosen)
        return probabilities, as_heatmap(cams[chosen], inputs.shape[1:3])

    def _explain(self, inputs: np.ndarray, class_index: int) -> np.ndarray:
        return self.explain_with_probabilities(inputs, class_index)[1]

    def _probabilities_and_cams(self, inputs: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(probabilities (n, classes), maps (n, classes, H, W)), each image's maps normalised per class to [0, 1]."""
        features, logits = self.graph.model(inputs, training=False)
        if self.graph.head == "sigmoid":  # class 1 scores +logit, class 0 scores -logit
            scores = [-logits[:, 0], logits[:, 0]]
        else:
            scores = [logits[:, index] for index in range(self.graph.n_classes)]
        # Symbolic gradients (this runs only as a traced graph) cover just the ops between features and scores.
        cams = []
        for score in scores:
            gradients = tf.gradients(score, features)[0]
            channel_weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
            cams.append(tf.nn.relu(tf.reduce_sum(features * channel_weights, axis=-1)))
        cam = tf.stack(cams, axis=-1)  # (n, h, w, classes)
        cam = tf.raw_ops.ResizeBilinear(images=cam, size=tf.shape(inputs)[1:3], align_corners=True)
        low = tf.reduce_min(cam, axis=(1, 2), keepdims=True)
        high = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
        cam = (cam - low) / (high - low + EPSILON)
        return self.graph.probabilities(logits), tf.transpose(cam, (0, 3, 1, 2))
