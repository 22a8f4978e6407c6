"""Folder-per-class image data sets (`<root>/<split>/<class>/*.jpg|png`) as model inputs.

Images are read once as 8-bit grayscale, stretched to the model's input size
exactly as inference stretches an uploaded image (area interpolation
when shrinking, bilinear otherwise, aspect ratio not kept, as the data sets were
made), and kept in memory as uint8: the X-ray set is 5,840 images of 224 x 224,
under 300 MB. They become float32 [0, 255] with the gray replicated to three
channels only batch by batch; normalisation is inside each model.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lungviz.errors import DatasetError
from lungviz.preprocessing import gray_batch_to_input, stretch_to_size
from lungviz.tasks import get_task

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
_READ_THREADS = 2  # JPEG decoding releases the GIL; the machine is small and shared


@dataclass(frozen=True)
class SplitData:
    """One split decoded for one input size: images (n, H, W) uint8, labels (n,) class indices."""

    name: str
    classes: tuple[str, ...]
    files: tuple[Path, ...]
    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def counts(self) -> dict[str, int]:
        """Images per class, in class order (what model cards record as split sizes)."""
        return {name: int(np.sum(self.labels == index)) for index, name in enumerate(self.classes)}


def dataset_classes(data_dir: Path, task: str | None = None) -> tuple[str, ...]:
    """The class order: the task's (fixed by the model card contract) or the train folders sorted."""
    if task is not None:
        return get_task(task).classes
    train = Path(data_dir) / "train"
    if not train.is_dir():
        raise DatasetError(f"{data_dir} has no train/ folder (expected <root>/<split>/<class>/*.jpg)")
    found = tuple(sorted(p.name for p in train.iterdir() if p.is_dir()))
    if len(found) < 2:
        raise DatasetError(f"{train} needs at least two class folders, found {list(found)}")
    return found


def list_split(data_dir: Path, split: str, classes: Sequence[str]) -> tuple[list[Path], np.ndarray]:
    """The image files of one split in a fixed order (class, then file name) and their labels."""
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r} (expected one of {SPLITS})")
    files: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        folder = Path(data_dir) / split / name
        if not folder.is_dir():
            raise DatasetError(f"missing folder {folder}: every split needs one folder per class {list(classes)}")
        members = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not members:
            raise DatasetError(f"{folder} holds no .jpg or .png images")
        files += members
        labels += [index] * len(members)
    return files, np.array(labels, dtype=np.int64)


def _read_gray(path: Path, input_size: Sequence[int]) -> np.ndarray:
    gray = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    if gray is None:
        raise DatasetError(f"cannot decode image {path}")
    return stretch_to_size(gray, input_size)


def load_split(data_dir: Path, split: str, classes: Sequence[str], input_size: Sequence[int]) -> SplitData:
    """Decode one split into memory at the model's input size."""
    files, labels = list_split(data_dir, split, classes)
    with ThreadPoolExecutor(_READ_THREADS) as pool:
        images = np.stack(list(pool.map(lambda p: _read_gray(p, input_size), files)))
    return SplitData(split, tuple(classes), tuple(files), images, labels)


def iterate_batches(images: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Model-input batches in order, without TensorFlow (evaluation and feature extraction)."""
    for start in range(0, len(images), batch_size):
        yield gray_batch_to_input(images[start : start + batch_size])


AUGMENTATION: dict[str, Any] = {
    "rotation_degrees": 7.0,
    "shift_fraction": 0.05,
    "zoom_fraction": 0.10,
    "brightness_fraction": 0.10,
    "contrast_fraction": 0.10,
    "flips": "none",
}
"""The training augmentation, recorded verbatim in model cards.

No flips of any kind. Chest radiographs and axial CT slices have a fixed
orientation: the heart lies on the patient's left (dextrocardia and situs
inversus are findings in their own right), CT is displayed in radiological
convention and the diaphragm is always at the bottom. A mirrored chest is not a
plausible new patient, and a model that learnt to ignore the side would throw
away real anatomical information.
"""


def make_augmenter(seed: int):
    """Small geometric and intensity jitter for single-channel [0, 255] batches (B, H, W, 1)."""
    import keras

    fill = {"fill_mode": "constant", "fill_value": 0.0}  # black borders: no mirrored anatomy at the edges
    return keras.Sequential(
        [
            keras.layers.RandomRotation(AUGMENTATION["rotation_degrees"] / 360.0, seed=seed, **fill),
            keras.layers.RandomTranslation(
                AUGMENTATION["shift_fraction"], AUGMENTATION["shift_fraction"], seed=seed + 1, **fill
            ),
            keras.layers.RandomZoom(AUGMENTATION["zoom_fraction"], seed=seed + 2, **fill),
            keras.layers.RandomBrightness(AUGMENTATION["brightness_fraction"], value_range=(0, 255), seed=seed + 3),
            keras.layers.RandomContrast(AUGMENTATION["contrast_fraction"], value_range=(0, 255), seed=seed + 4),
        ],
        name="augmentation",
    )


def _prepare(augmenter):
    """A tf.data map from uint8 (B, H, W) batches to model inputs, augmented when an augmenter is given."""
    import tensorflow as tf

    def prepare(images, labels):
        gray = tf.cast(images[..., None], tf.float32)
        if augmenter is not None:
            gray = tf.clip_by_value(augmenter(gray, training=True), 0.0, 255.0)
        return tf.repeat(gray, 3, axis=-1), labels

    return prepare


def _slices(split: SplitData):
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((split.images, split.labels))


def training_dataset(split: SplitData, batch_size: int, *, seed: int, augment: bool):
    """Shuffled (fixed seed, reshuffled each epoch), optionally augmented, prefetched tf.data batches."""
    data = _slices(split).shuffle(len(split), seed=seed, reshuffle_each_iteration=True).batch(batch_size)
    return data.map(_prepare(make_augmenter(seed) if augment else None)).prefetch(2)


def evaluation_dataset(split: SplitData, batch_size: int):
    """Batches in file order, no augmentation (validation during training)."""
    return _slices(split).batch(batch_size).map(_prepare(None)).prefetch(2)
