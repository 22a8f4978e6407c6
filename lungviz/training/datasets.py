"""Folder-per-class image data sets (`<root>/<split>/<class>/*.jpg|png`) as model inputs.

A task can train on several sources at once (one folder per source, e.g. the
pediatric Kermany and the adult NIH radiographs); every image remembers its
source so that training can weight the sources and evaluation can report each.
Images are read once as 8-bit grayscale, cropped to their lungs' box exactly as
inference crops an upload (`LungCropper`, the same `lungviz.inference.lungs`
code, boxes cached per file), stretched to the model's input size as inference
stretches (area interpolation when shrinking, bilinear otherwise, aspect ratio
not kept), and kept in memory as uint8: 6,600 images of 224 x 224 are under
350 MB. They become float32 [0, 255] with the gray replicated to three channels
only batch by batch; normalisation is inside each model.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lungviz.errors import DatasetError
from lungviz.inference import lungs
from lungviz.models.registry import weights_dir
from lungviz.preprocessing import crop, gray_batch_to_input, stretch_to_size
from lungviz.tasks import get_task

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
_READ_THREADS = 2  # JPEG decoding releases the GIL; the machine is small and shared


@dataclass(frozen=True)
class SplitData:
    """One split decoded for one input size: images (n, H, W) uint8, labels (n,) class indices.

    `sources` (n,) names each image's data set (its root folder's name);
    `lungs_found` (n,) says whether the image was cropped to lungs found in it
    (None when the split was read without a lung crop).
    """

    name: str
    classes: tuple[str, ...]
    files: tuple[Path, ...]
    images: np.ndarray
    labels: np.ndarray
    sources: np.ndarray
    lungs_found: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def counts(self) -> dict[str, int]:
        """Images per class, in class order (what model cards record as split sizes)."""
        return {name: int(np.sum(self.labels == index)) for index, name in enumerate(self.classes)}

    def source_names(self) -> list[str]:
        """The sources in the order they were given."""
        return list(dict.fromkeys(self.sources.tolist()))

    def counts_by_source(self) -> dict[str, dict[str, int]]:
        """Images per class for every source."""
        return {source: self.subset(self.sources == source).counts() for source in self.source_names()}

    def lungs_found_counts(self) -> dict[str, int]:
        """How many images had lungs found (all of them when the split was read without a lung crop)."""
        found = len(self) if self.lungs_found is None else int(self.lungs_found.sum())
        return {"found": found, "images": len(self)}

    def subset(self, keep: np.ndarray) -> SplitData:
        """The images where `keep` (bool (n,)) is True, in their order."""
        index = np.flatnonzero(keep)
        return replace(
            self,
            files=tuple(self.files[i] for i in index),
            images=self.images[index],
            labels=self.labels[index],
            sources=self.sources[index],
            lungs_found=None if self.lungs_found is None else self.lungs_found[index],
        )


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


def read_gray(path: Path) -> np.ndarray:
    """An image file as 8-bit grayscale at its own resolution."""
    gray = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    if gray is None:
        raise DatasetError(f"cannot decode image {path}")
    return gray


class LungCropper:
    """Finds each training image's lungs exactly as inference does and caches the crop box per file.

    Finding the lungs costs about 12 ms per radiograph, so the boxes of a data
    set are computed once and kept in `cache_dir` as JSON, in a file named by
    the modality, the segmenter's card and the margin: a new segmenter or margin
    starts a new cache instead of reusing stale boxes.
    """

    def __init__(self, modality: str, segmenter: lungs.XrayLungSegmenter | None, cache_dir: Path) -> None:
        if modality == "xray" and segmenter is None:
            raise DatasetError("cropping radiographs to their lungs needs the lung segmenter (weights/lungs)")
        self.modality, self.segmenter = modality, segmenter
        identity = json.dumps([modality, segmenter.card if segmenter else None, lungs.CROP_MARGIN], sort_keys=True)
        digest = hashlib.sha256(identity.encode()).hexdigest()[:12]
        self.cache_file = Path(cache_dir) / f"lung-boxes-{modality}-{digest}.json"
        self._boxes: dict[str, list[int] | None] = (
            json.loads(self.cache_file.read_text()) if self.cache_file.is_file() else {}
        )
        self._lock = threading.Lock()

    @staticmethod
    def _key(path: Path) -> str:
        return "/".join(Path(path).resolve().parts[-4:])  # <source>/<split>/<class>/<file>

    def box(self, path: Path, gray: np.ndarray) -> tuple[tuple[int, int, int, int], bool]:
        """The crop box of one image (the whole image when no lungs are found) and whether lungs were found."""
        key = self._key(path)
        with self._lock:
            known, cached = key in self._boxes, self._boxes.get(key)
        if not known:
            found = lungs.find_lungs(gray.astype(np.float32) / 255.0, self.modality, segmenter=self.segmenter)
            cached = list(found.crop_box()) if found is not None and found.found else None
            with self._lock:
                self._boxes[key] = cached
        if cached is None:
            return (0, 0, gray.shape[1], gray.shape[0]), False
        x0, y0, x1, y1 = cached
        return (x0, y0, x1, y1), True

    def save(self) -> None:
        """Write the cache (atomically: a killed run never leaves half a file)."""
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            text = json.dumps(self._boxes, sort_keys=True)
        temporary = self.cache_file.with_suffix(".tmp")
        temporary.write_text(text)
        temporary.replace(self.cache_file)


def lung_cropper(task: str, input_crop: str, cache_dir: Path, weights: Path | None = None) -> LungCropper | None:
    """The cropper that frames a task's images as inference will (None for whole-image models)."""
    if input_crop == "none":
        return None
    modality = get_task(task).modality
    segmenter = lungs.load_segmenter(weights or weights_dir()) if modality == "xray" else None
    return LungCropper(modality, segmenter, cache_dir)


def _read_input(path: Path, input_size: Sequence[int], cropper: LungCropper | None) -> tuple[np.ndarray, bool]:
    gray = read_gray(path)
    if cropper is None:
        return stretch_to_size(gray, input_size), False
    box, found = cropper.box(path, gray)
    return stretch_to_size(crop(gray, box), input_size), found


def load_split(
    data_dirs: Path | Sequence[Path],
    split: str,
    classes: Sequence[str],
    input_size: Sequence[int],
    cropper: LungCropper | None = None,
) -> SplitData:
    """Decode one split of one or more sources into memory at the model's input size.

    With a `cropper`, every image is first cropped to its lungs' box as inference crops it.
    """
    roots = [Path(data_dirs)] if isinstance(data_dirs, str | Path) else [Path(d) for d in data_dirs]
    names = [root.name for root in roots]
    if len(set(names)) != len(names):
        raise DatasetError(f"two sources share a folder name: {names}; sources are told apart by name")
    listed = [list_split(root, split, classes) for root in roots]
    files = [file for root_files, _ in listed for file in root_files]
    labels = np.concatenate([root_labels for _, root_labels in listed])
    sources = np.array([name for name, (root_files, _) in zip(names, listed, strict=True) for _ in root_files], object)
    with ThreadPoolExecutor(_READ_THREADS) as pool:
        decoded = list(pool.map(lambda p: _read_input(p, input_size, cropper), files))
    if cropper is not None:
        cropper.save()
    images = np.stack([image for image, _ in decoded])
    found = np.array([lungs_found for _, lungs_found in decoded]) if cropper is not None else None
    return SplitData(split, tuple(classes), tuple(files), images, labels, sources, found)


def labels_column(split: SplitData, roots: Sequence[Path], column: str) -> np.ndarray | None:
    """One column of the sources' `labels.csv` for every image of `split` ("" where a source lacks it).

    None when no source has the column (e.g. NIH's `view_position`, which only its labels.csv holds).
    """
    import csv

    values: dict[tuple[str, str], str] = {}
    for root in roots:
        table = Path(root) / "labels.csv"
        if not table.is_file():
            continue
        with table.open(newline="") as handle:
            for row in csv.DictReader(handle):
                if column in row:
                    values[Path(root).name, row["file"]] = row[column]
    if not values:
        return None
    keys = (
        (str(source), "/".join(Path(file).parts[-3:])) for source, file in zip(split.sources, split.files, strict=True)
    )
    return np.array([values.get(key, "") for key in keys], dtype=object)


def iterate_batches(images: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Model-input batches in order, without TensorFlow (evaluation and feature extraction)."""
    for start in range(0, len(images), batch_size):
        yield gray_batch_to_input(images[start : start + batch_size])


AUGMENTATION: dict[str, Any] = {
    "rotation_degrees": 7.0,
    "shift_fraction": 0.05,
    "zoom_fraction": 0.10,
    "brightness_fraction": 0.15,
    "contrast_fraction": 0.30,
    "gamma_range": [0.67, 1.5],
    "noise_std_range": [0.0, 4.0],
    "jpeg_probability": 0.5,
    "jpeg_quality_range": [30, 95],
    "flips": "none",
}
"""The training augmentation, recorded verbatim in model cards.

Geometry stays small: the lung crop already frames every image alike. The
intensity part mimics other hospitals: brightness, contrast and gamma stand for
other detectors, exposures and CT windows; noise for other doses; JPEG
re-encoding at quality 30-95 for the compression archives and web copies
apply. No flips of any kind. Chest radiographs and axial CT slices have a fixed
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


def _acquisition_jitter(seed: int):
    """Per-image gamma, noise and JPEG re-encoding of (B, H, W, 1) [0, 255] batches, reproducible from `seed`."""
    import tensorflow as tf

    generator = tf.random.Generator.from_seed(seed)
    low, high = np.log(AUGMENTATION["gamma_range"])
    quality_low, quality_high = AUGMENTATION["jpeg_quality_range"]

    def reencode(args):
        image, quality, apply = args
        encoded = tf.image.adjust_jpeg_quality(tf.cast(tf.round(image), tf.uint8), quality)
        return tf.where(apply, tf.cast(encoded, tf.float32), image)

    def jitter(gray):
        count = tf.shape(gray)[0]
        gamma = tf.exp(generator.uniform([count, 1, 1, 1], low, high))
        gray = 255.0 * tf.pow(gray / 255.0, gamma)
        noise = generator.uniform([count, 1, 1, 1], *AUGMENTATION["noise_std_range"])
        gray = tf.clip_by_value(gray + noise * generator.normal(tf.shape(gray)), 0.0, 255.0)
        quality = generator.uniform([count], quality_low, quality_high + 1, dtype=tf.int32)
        apply = generator.uniform([count]) < AUGMENTATION["jpeg_probability"]
        return tf.map_fn(reencode, (gray, quality, apply), fn_output_signature=tf.float32)

    return jitter


def augment_images(images: np.ndarray, seed: int) -> np.ndarray:
    """One augmented copy of uint8 (n, H, W) images, as training sees them, as model inputs (n, H, W, 3)."""
    import tensorflow as tf

    prepare = _prepare(seed)
    labels = tf.zeros(len(images), tf.int64)
    return np.asarray(prepare(tf.convert_to_tensor(images), labels)[0])


def _prepare(seed: int | None):
    """A tf.data map from uint8 (B, H, W) batches to model inputs, augmented when a seed is given.

    Batches may carry per-image loss weights as a third element; they pass through.
    """
    import tensorflow as tf

    augmenter = make_augmenter(seed) if seed is not None else None
    jitter = _acquisition_jitter(seed + 5) if seed is not None else None

    def prepare(images, labels, *weights):
        gray = tf.cast(images[..., None], tf.float32)
        if augmenter is not None and jitter is not None:
            gray = jitter(tf.clip_by_value(augmenter(gray, training=True), 0.0, 255.0))
        return (tf.repeat(gray, 3, axis=-1), labels, *weights)

    return prepare


def _slices(split: SplitData, weights: np.ndarray | None = None):
    import tensorflow as tf

    if weights is None:
        return tf.data.Dataset.from_tensor_slices((split.images, split.labels))
    return tf.data.Dataset.from_tensor_slices((split.images, split.labels, weights.astype(np.float32)))


def training_dataset(split: SplitData, batch_size: int, *, seed: int, augment: bool, weights: np.ndarray | None = None):
    """Shuffled (fixed seed, reshuffled each epoch), optionally augmented, prefetched tf.data batches.

    With `weights` (n,), each batch carries the images' loss weights.
    """
    data = _slices(split, weights).shuffle(len(split), seed=seed, reshuffle_each_iteration=True).batch(batch_size)
    return data.map(_prepare(seed if augment else None)).prefetch(2)


def evaluation_dataset(split: SplitData, batch_size: int):
    """Batches in file order, no augmentation (validation during training)."""
    return _slices(split).batch(batch_size).map(_prepare(None)).prefetch(2)
