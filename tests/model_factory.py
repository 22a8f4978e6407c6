"""Small real Keras classifiers with model cards, written to a weights folder for tests.

They are untrained but real: the registry, the explainers, the CLI and the
dashboard exercise exactly the code paths they use with the shipped models.
One model per task is flat with a softmax head; another nests a base model
(the usual transfer-learning shape) and ends in a single sigmoid unit.
"""

from __future__ import annotations

from pathlib import Path

import keras

from lungviz.inference.prediction import ModelResult
from lungviz.models.cards import ModelCard
from lungviz.tasks import TASKS

INPUT_SIZE = (64, 64)


def _conv_stack(inputs, prefix: str):
    x = keras.layers.Rescaling(1 / 255.0, name=f"{prefix}_rescale")(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name=f"{prefix}_conv1")(x)
    x = keras.layers.MaxPooling2D(name=f"{prefix}_pool1")(x)
    return keras.layers.Conv2D(16, 3, padding="same", activation="relu", name=f"{prefix}_last_conv")(x)


def flat_softmax_model(classes: int = 2, seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((*INPUT_SIZE, 3))
    x = keras.layers.GlobalAveragePooling2D()(_conv_stack(inputs, "flat"))
    outputs = keras.layers.Dense(classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="flat_softmax")


def nested_sigmoid_model(seed: int = 1) -> keras.Model:
    keras.utils.set_random_seed(seed)
    base_inputs = keras.Input((*INPUT_SIZE, 3))
    base = keras.Model(base_inputs, _conv_stack(base_inputs, "base"), name="backbone")
    inputs = keras.Input((*INPUT_SIZE, 3))
    x = keras.layers.GlobalAveragePooling2D()(base(inputs))
    outputs = keras.layers.Dense(1, activation="sigmoid", name="predictions")(x)
    return keras.Model(inputs, outputs, name="nested_sigmoid")


def write_model(
    root: Path,
    task: str,
    name: str,
    model: keras.Model,
    *,
    head: str,
    cam_layer: str,
    threshold: float = 0.5,
    temperature: float = 1.0,
) -> ModelCard:
    folder = root / task
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.keras"
    model.save(path)
    classes = list(TASKS[task].classes)
    card = ModelCard(
        name=name,
        task=task,
        architecture=model.name,
        classes=classes,
        positive_class=classes[1],
        input_size=list(INPUT_SIZE),
        head=head,
        cam_layer=cam_layer,
        threshold=threshold,
        threshold_rule="test fixture",
        calibration={"method": "temperature", "temperature": temperature},
        file=path.name,
        file_size_bytes=path.stat().st_size,
        limitations=["untrained test model"],
    )
    card.save(folder / f"{name}.json")
    card.card_path = folder / f"{name}.json"
    return card


def write_weights(root: Path) -> Path:
    """Two models for each task: flat softmax and nested sigmoid."""
    for task in TASKS:
        write_model(
            root,
            task,
            "flat-softmax",
            flat_softmax_model(),
            head="softmax",
            cam_layer="flat_last_conv",
            threshold=0.4,
            temperature=1.5,
        )
        write_model(root, task, "nested-sigmoid", nested_sigmoid_model(), head="sigmoid", cam_layer="base_last_conv")
    return root


def make_card(task: str = "xray-pneumonia", **fields) -> ModelCard:
    """A valid card for `task` with a made-up identity; `fields` override any field."""
    classes = list(TASKS[task].classes)
    values = {
        "name": "m",
        "task": task,
        "architecture": "a",
        "classes": classes,
        "positive_class": classes[1],
        "input_size": [64, 64],
        "head": "softmax",
        "cam_layer": "c",
    }
    return ModelCard(**{**values, **fields})


def model_result(
    name: str, p_positive: float, threshold: float = 0.5, *, task: str = "xray-pneumonia", **fields
) -> ModelResult:
    """A model's answer as `Classifier.run` gives it, explaining the class it predicted; `fields` override."""
    negative, positive = TASKS[task].classes
    predicted = positive if p_positive >= threshold else negative
    values = {
        "name": name,
        "architecture": name,
        "classes": [negative, positive],
        "positive_class": positive,
        "probabilities": {negative: 1.0 - p_positive, positive: p_positive},
        "predicted": predicted,
        "threshold": threshold,
        "seconds": 0.1,
        "method": "gradcam",
        "explained_class": predicted,
    }
    return ModelResult(**{**values, **fields})
