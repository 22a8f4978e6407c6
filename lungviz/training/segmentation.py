"""Training and measuring the chest X-ray lung segmenter on COVID-QU-Ex lung masks.

COVID-QU-Ex (its infection-segmentation part) may be used for lung
segmentation and for scoring heatmap localisation only, never to train or
test a classifier: its images overlap the classifiers' data sets. Its images
come from several collections (adult and pediatric, COVID and other
pneumonias), which is what a segmenter that must work on every user's
radiograph needs. The segmenter trains on `train/` and is measured on `val/`
(Dice at the masks' own 256 x 256 resolution, after the same post-processing
that inference applies), and the model and its card go to `weights/lungs/`.

Augmentation makes the training radiographs look like what users bring: the
chest smaller in a wider field with black borders (zoom out), shifted and
slightly rotated, with other brightness, contrast and gamma. Geometry moves
image and mask together; intensity touches the image only. No flips (the
heart's side is anatomy).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import keras
import numpy as np

from lungviz.errors import DatasetError
from lungviz.inference.lungs import SEGMENTER_CARD, SEGMENTER_FILE, XrayLungSegmenter, dice
from lungviz.models.segmentation import ENCODER, build_lung_unet
from lungviz.models.storage import save_compact
from lungviz.preprocessing import gray_batch_to_input

log = logging.getLogger(__name__)

AUGMENTATION: dict[str, Any] = {
    "zoom_out_fraction": 0.35,
    "zoom_in_fraction": 0.10,
    "shift_fraction": 0.08,
    "rotation_degrees": 10.0,
    "brightness_fraction": 0.15,
    "contrast_fraction": 0.25,
    "gamma_range": [0.7, 1.5],
    "flips": "none",
}
"""The segmenter's augmentation, recorded verbatim in its card."""


@dataclass(frozen=True)
class MaskedImages:
    """Gray images (H, W) uint8 and lung masks (H, W) bool at each file's resolution, with names and classes."""

    images: tuple[np.ndarray, ...]
    masks: tuple[np.ndarray, ...]
    files: tuple[str, ...]
    classes: tuple[str, ...]


def load_masked_split(data_dir: Path, split: str, limit: int | None = None) -> MaskedImages:
    """Images and lung masks of one split, listed by the data set's labels.csv (in its order)."""
    labels = Path(data_dir) / "labels.csv"
    if not labels.is_file():
        raise DatasetError(f"{data_dir} has no labels.csv (expected the COVID-QU-Ex layout, see its README)")
    with labels.open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["split"] == split and row["lung_mask"]]
    if not rows:
        raise DatasetError(f"{labels} lists no {split} images with lung masks")
    rows = rows[:limit] if limit else rows
    images, masks = [], []
    for row in rows:
        image = cv2.imread(str(Path(data_dir) / row["file"]), cv2.IMREAD_GRAYSCALE)
        mask = cv2.imread(str(Path(data_dir) / row["lung_mask"]), cv2.IMREAD_GRAYSCALE)
        if image is None or mask is None or image.shape != mask.shape:
            raise DatasetError(f"cannot read {row['file']} and its lung mask as images of one size")
        images.append(image)
        masks.append(mask > 0)
    files, classes = tuple(row["file"] for row in rows), tuple(row["label"] for row in rows)
    return MaskedImages(tuple(images), tuple(masks), files, classes)


def _resized(data: MaskedImages, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, h, w) float32 [0, 255] and masks (n, h, w) float32 {0, 1} at the network's input size."""
    height, width = size
    images = np.stack([cv2.resize(i, (width, height), interpolation=cv2.INTER_AREA) for i in data.images])
    masks = np.stack([cv2.resize(m.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
                      for m in data.masks])  # fmt: skip
    return images.astype(np.float32), (masks >= 0.5).astype(np.float32)


def _augmenter(seed: int) -> keras.Sequential:
    """Joint geometry for a (B, H, W, 2) stack of image and mask; black fill, as a wide detector border."""
    fill = {"fill_mode": "constant", "fill_value": 0.0}
    zoom = (-AUGMENTATION["zoom_in_fraction"], AUGMENTATION["zoom_out_fraction"])
    return keras.Sequential(
        [
            keras.layers.RandomRotation(AUGMENTATION["rotation_degrees"] / 360.0, seed=seed, **fill),
            keras.layers.RandomZoom(zoom, seed=seed + 1, **fill),
            keras.layers.RandomTranslation(
                AUGMENTATION["shift_fraction"], AUGMENTATION["shift_fraction"], seed=seed + 2, **fill
            ),
        ],
        name="joint_geometry",
    )


def training_dataset(images: np.ndarray, masks: np.ndarray, batch_size: int, seed: int):
    """Shuffled, augmented tf.data batches of (model input, mask (B, H, W, 1))."""
    import tensorflow as tf

    geometry = _augmenter(seed)
    generator = tf.random.Generator.from_seed(seed)
    low, high = AUGMENTATION["gamma_range"]

    def augment(image, mask):
        stacked = geometry(tf.stack([image, mask], axis=-1), training=True)
        image, mask = stacked[..., 0:1], tf.cast(stacked[..., 1:2] >= 0.5, tf.float32)
        batch = tf.shape(image)[0]
        unit = tf.clip_by_value(image / 255.0, 0.0, 1.0)
        gamma = tf.exp(generator.uniform((batch, 1, 1, 1), np.log(low), np.log(high)))
        unit = unit**gamma
        contrast = 1.0 + generator.uniform((batch, 1, 1, 1), -1.0, 1.0) * AUGMENTATION["contrast_fraction"]
        brightness = generator.uniform((batch, 1, 1, 1), -1.0, 1.0) * AUGMENTATION["brightness_fraction"]
        mean = tf.reduce_mean(unit, axis=(1, 2, 3), keepdims=True)
        unit = tf.clip_by_value((unit - mean) * contrast + mean + brightness, 0.0, 1.0)
        return tf.repeat(unit * 255.0, 3, axis=-1), mask

    data = tf.data.Dataset.from_tensor_slices((images, masks))
    data = data.shuffle(len(images), seed=seed, reshuffle_each_iteration=True).batch(batch_size)
    return data.map(augment).prefetch(2)


def dice_loss(truth, predicted):
    """1 - soft Dice per image, averaged: the overlap the card reports, made differentiable."""
    axes = (1, 2, 3)
    overlap = keras.ops.sum(truth * predicted, axis=axes)
    total = keras.ops.sum(truth, axis=axes) + keras.ops.sum(predicted, axis=axes)
    return 1.0 - keras.ops.mean((2.0 * overlap + 1.0) / (total + 1.0))


def _loss(truth, predicted):
    return keras.losses.binary_crossentropy(truth, predicted) + dice_loss(truth, predicted)


def evaluate_segmenter(segmenter: XrayLungSegmenter, data: MaskedImages) -> dict[str, Any]:
    """Dice of the post-processed masks against the references at their resolution, overall and per class."""
    scores, seconds = [], []
    for image in data.images:
        started = time.perf_counter()
        found = segmenter.segment(image.astype(np.float32) / 255.0)
        seconds.append(time.perf_counter() - started)
        scores.append(found.mask)
    values = np.array([dice(mask, reference) for mask, reference in zip(scores, data.masks, strict=True)])
    classes = np.array(data.classes)
    return {
        "images": len(values),
        "dice_mean": float(values.mean()),
        "dice_median": float(np.median(values)),
        "dice_5th_percentile": float(np.percentile(values, 5)),
        "dice_by_class": {c: float(values[classes == c].mean()) for c in sorted(set(data.classes))},
        "seconds_per_image_median": float(np.median(seconds)),
    }


def train_segmenter(data_dir: Path, out_dir: Path, run_dir: Path, *, input_size: tuple[int, int] = (160, 160),
                    epochs: int = 14, batch_size: int = 16, learning_rate: float = 1e-3, patience: int = 3,
                    seed: int = 42, limit: int | None = None, command: str = "") -> dict[str, Any]:  # fmt: skip
    """Train, keep the best epoch on validation Dice, save the segmenter and its card; returns the card."""
    keras.utils.set_random_seed(seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    train, val = load_masked_split(data_dir, "train", limit), load_masked_split(data_dir, "val", limit)
    train_x, train_y = _resized(train, input_size)
    val_x, val_y = _resized(val, input_size)
    model = build_lung_unet(input_size, pretrained=True)
    model.compile(keras.optimizers.Adam(learning_rate), loss=_loss, metrics=[keras.metrics.BinaryIoU(name="iou")])
    best = run_dir / "best.weights.h5"
    callbacks = [
        keras.callbacks.ModelCheckpoint(str(best), monitor="val_loss", save_best_only=True, save_weights_only=True),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.3, patience=max(1, patience - 1)),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv")),
    ]
    started = time.perf_counter()
    history = model.fit(training_dataset(train_x, train_y, batch_size, seed),
                        validation_data=(gray_batch_to_input(val_x), val_y[..., None]), epochs=epochs,
                        callbacks=callbacks, shuffle=False, verbose=2)  # fmt: skip
    seconds = time.perf_counter() - started
    shipped = build_lung_unet(input_size, pretrained=False)  # the same graph without the optimizer's state
    shipped.load_weights(best)
    out_dir.mkdir(parents=True, exist_ok=True)
    # a mask is P(lung) >= 0.5: a change of 0.01 moves its edge by a fraction of a pixel
    stored = save_compact(shipped, out_dir / SEGMENTER_FILE, gray_batch_to_input(val_x[:16]), tolerance=1e-2)
    epochs_run = len(history.history["loss"])
    card: dict[str, Any] = {
        "name": "xray-lungs",
        "architecture": f"U-Net, {ENCODER} encoder (ImageNet) to stride 16, light decoder",
        "input_size": list(input_size),
        "threshold": 0.5,
        "file": SEGMENTER_FILE,
        "file_size_bytes": (out_dir / SEGMENTER_FILE).stat().st_size,
        "parameters": int(shipped.count_params()),
        "weights_dtype": stored.dtype,
        "weights_max_output_change": stored.max_output_change,
        "training": {
            "data": Path(data_dir).name,
            "train_images": len(train.images),
            "val_images": len(val.images),
            "epochs_run": epochs_run,
            "best_epoch": int(np.argmin(history.history["val_loss"])) + 1,
            "seconds_per_epoch": seconds / max(epochs_run, 1),
            "loss": "binary cross-entropy + soft Dice",
            "optimizer": f"Adam {learning_rate:g}, x0.3 on plateau",
            "batch_size": batch_size,
            "augmentation": AUGMENTATION,
            "seed": seed,
            "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), Keras {keras.__version__}",
            "command": command,
        },
        "use": "lung masks and boxes of chest radiographs: the crop every X-ray model sees, heat inside the lungs",
    }
    (out_dir / SEGMENTER_CARD).write_text(json.dumps(card, indent=2) + "\n")
    segmenter = XrayLungSegmenter.load(out_dir)
    card["evaluation"] = {"split": "val", **evaluate_segmenter(segmenter, val)}
    (out_dir / SEGMENTER_CARD).write_text(json.dumps(card, indent=2) + "\n")
    log.info("segmenter: val Dice %.4f", card["evaluation"]["dice_mean"])
    return card
