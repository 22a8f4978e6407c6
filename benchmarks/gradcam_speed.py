"""How long one Grad-CAM costs: the compiled Grad-CAM against tf-keras-vis and a plain forward pass.

Run from the repository root:

    .venv/bin/python -m benchmarks.gradcam_speed [--repeats N]

Models: DenseNet121 (random weights, 2-class softmax head) both flat and as a
nested base model, plus every model in weights/ with a card. Timings are the
median of N calls after warm-up, for a batch of one image.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf
from tf_keras_vis.gradcam import Gradcam
from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
from tf_keras_vis.utils.scores import BinaryScore, CategoricalScore

from benchmarks.timing import median_seconds
from lungviz.inference.explanations import FEATURES_LAYER, GradCam
from lungviz.models.registry import discover, load_model


def densenet(nested: bool) -> tuple[keras.Model, str]:
    """DenseNet121 with a 2-class softmax head, and the name of its last conv block's activation."""
    if not nested:
        return keras.applications.DenseNet121(weights=None, classes=2, input_shape=(224, 224, 3)), "relu"
    base = keras.applications.DenseNet121(weights=None, include_top=False, input_shape=(224, 224, 3))
    inputs = keras.Input((224, 224, 3))
    x = keras.layers.GlobalAveragePooling2D()(base(inputs))
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x), name="nested_densenet121"), "relu"


def benchmark(name: str, model: keras.Model, cam_layer: str, repeats: int) -> None:
    height, width = model.inputs[0].shape[1:3]
    inputs = np.random.default_rng(0).uniform(0, 255, (1, height, width, 3)).astype(np.float32)
    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    started = time.perf_counter()
    gradcam = GradCam(model, cam_layer)
    setup = time.perf_counter() - started

    def score(class_index: int):
        return BinaryScore(class_index == 1) if gradcam.graph.head == "sigmoid" else CategoricalScore(class_index)

    rows: list[tuple[str, float | None]] = [
        ("compiled forward pass", median_seconds(lambda: forward(inputs).numpy(), repeats)),
        (
            "compiled Grad-CAM (+probabilities)",
            median_seconds(lambda: gradcam.explain_with_probabilities(inputs, 1), repeats),
        ),
    ]
    try:  # tf-keras-vis as documented: ReplaceToLinear on a clone of the model
        reference = Gradcam(model, model_modifier=ReplaceToLinear(), clone=True)
        layer = cam_layer
        reference(score(1), inputs, penultimate_layer=layer, seek_penultimate_conv_layer=False)
        label = "tf-keras-vis Gradcam"
    except ValueError as error:  # tf-keras-vis cannot reach a layer inside a nested base model
        rows.append((f"tf-keras-vis Gradcam fails: {str(error).splitlines()[0][:60]}", None))
        reference = Gradcam(gradcam.graph.logits_model(), model_modifier=None, clone=False)
        layer, label = FEATURES_LAYER, "tf-keras-vis Gradcam on lungviz's flat graph"

    def run_reference(class_index: int) -> np.ndarray:
        return reference(score(class_index), inputs, penultimate_layer=layer, seek_penultimate_conv_layer=False)[0]

    rows.append((label, median_seconds(lambda: run_reference(1), max(3, repeats // 2))))
    print(f"\n{name}  input {height}x{width}, CAM layer {cam_layer!r}, Grad-CAM setup {setup:.2f} s")
    for what, seconds in rows:
        print(f"  {what}" if seconds is None else f"  {what:<48} {seconds * 1000:9.1f} ms")
    for class_index in (0, 1):
        heatmap = gradcam.explain(inputs, class_index)
        difference = np.abs(heatmap - run_reference(class_index)).max()
        print(
            f"  class {class_index}: max |compiled - tf-keras-vis| = {difference:.1e} "
            f"(map covers {np.mean(heatmap > 0.05):.0%} of the image)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per measurement (median reported)")
    parser.add_argument("--shipped-only", action="store_true", help="only the models in weights/ (no DenseNet121)")
    args = parser.parse_args()
    print(
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}, devices: "
        f"{', '.join(d.device_type for d in tf.config.list_logical_devices())}, CPU threads: {os.cpu_count()}"
    )
    for nested in () if args.shipped_only else (False, True):
        keras.utils.set_random_seed(0)
        model, cam_layer = densenet(nested)
        benchmark(f"DenseNet121 {'nested base' if nested else 'flat'} (random weights)", model, cam_layer, args.repeats)
    cards = [card for task_cards in discover().values() for card in task_cards]
    if not cards:
        print("\nno models with cards in weights/")
    for card in cards:
        benchmark(f"{card.task}/{card.name} ({card.file})", load_model(card), card.cam_layer, args.repeats)


if __name__ == "__main__":
    main()
