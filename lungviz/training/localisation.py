"""Do the heatmaps point at the findings? Pointing game and heat inside annotated regions, per model and method.

Two sources of annotated chest X-rays are read here, for scoring heatmaps
only (never to train or test a classifier):

* COVID-QU-Ex infection masks (`val/COVID`). Its README notes that some masks
  cover the whole lung; those only say whether heat lies inside the lungs, so
  they are left out (and counted).
* NIH ChestX-ray14 radiologist boxes for Pneumonia (`boxes.csv`), drawn as
  filled rectangles in the 512-pixel images.

Each model explains the positive (finding) class. A hit is the heatmap's peak
inside the region grown by a small tolerance; the heat share is the part of
the map's heat inside the region. Both come with percentile bootstrap 95%
intervals over images (fixed seed), so two models can be compared honestly.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lungviz.errors import DatasetError
from lungviz.inference.explanations.graph import find_layer
from lungviz.inference.localisation import heat_share, pointing_hit
from lungviz.inference.lungs import Lungs, XrayLungSegmenter
from lungviz.inference.prediction import Classifier

POINTING_TOLERANCE = 0.02
"""The pointing game's tolerance, as a share of the image's longer side (10 pixels at 512)."""
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 20241122


@dataclass(frozen=True)
class AnnotatedImage:
    """A radiograph in [0, 1] and the region a reader marked on it, at the same resolution."""

    name: str
    source: str
    pixels: np.ndarray
    region: np.ndarray
    lungs: Lungs | None = None
    """Found once per image (`with_lungs`), for the models that crop to them and for lung attention."""


def with_lungs(images: Sequence[AnnotatedImage], segmenter: XrayLungSegmenter | None) -> list[AnnotatedImage]:
    """The images with their lungs, segmented once for every model and method that scores them."""
    if segmenter is None:
        return list(images)
    return [replace(image, lungs=segmenter.segment(image.pixels)) for image in images]


def sample_images(images: Sequence[AnnotatedImage], limit: int, seed: int = BOOTSTRAP_SEED) -> list[AnnotatedImage]:
    """At most `limit` of the images, a fixed random sample kept in their order (so reruns score the same ones)."""
    if len(images) <= limit:
        return list(images)
    chosen = np.sort(np.random.default_rng(seed).choice(len(images), limit, replace=False))
    return [images[i] for i in chosen]


def _gray(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise DatasetError(f"cannot read {path}")
    return image.astype(np.float32) / 255.0


def _rows(table: Path) -> list[dict[str, str]]:
    if not table.is_file():
        raise DatasetError(f"{table} is missing (see the data set's README)")
    with table.open(newline="") as handle:
        return list(csv.DictReader(handle))


def covid_qu_ex_infections(data_dir: Path, split: str = "val") -> tuple[list[AnnotatedImage], int]:
    """COVID images of `split` with an infection mask smaller than the lungs, and the count of whole-lung ones."""
    images, whole_lung = [], 0
    for row in _rows(Path(data_dir) / "labels.csv"):
        if row["split"] != split or not row.get("infection_mask"):
            continue
        if float(row["infection_fraction_of_lung"] or 0) >= 1.0:
            whole_lung += 1
            continue
        mask = cv2.imread(str(Path(data_dir) / row["infection_mask"]), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise DatasetError(f"cannot read {row['infection_mask']}")
        images.append(
            AnnotatedImage(row["file"], "covid-qu-ex infection", _gray(Path(data_dir) / row["file"]), mask > 0)
        )
    return images, whole_lung


def nih_boxes(data_dir: Path, finding: str = "Pneumonia") -> list[AnnotatedImage]:
    """NIH images with radiologist boxes of `finding`; several boxes on one image form one region."""
    regions: dict[str, list[tuple[float, float, float, float]]] = {}
    for row in _rows(Path(data_dir) / "boxes.csv"):
        if row["finding"] == finding:
            x, y, w, h = (float(row[key]) for key in ("x", "y", "w", "h"))
            regions.setdefault(row["file"], []).append((x, y, w, h))
    images = []
    for file, boxes in sorted(regions.items()):
        pixels = _gray(Path(data_dir) / file)
        region = np.zeros(pixels.shape, bool)
        for x, y, w, h in boxes:
            region[int(y) : int(np.ceil(y + h)), int(x) : int(np.ceil(x + w))] = True
        images.append(AnnotatedImage(file, f"nih {finding.lower()} boxes", pixels, region))
    return images


def _with_interval(values: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
    """Mean with a percentile bootstrap 95% interval over images."""
    draws = rng.integers(0, len(values), size=(BOOTSTRAP_RESAMPLES, len(values)))
    means = values[draws].mean(axis=1)
    return {
        "value": float(values.mean()),
        "ci95": [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))],
    }


def localisation_scores(classifier: Classifier, images: Sequence[AnnotatedImage], method: str) -> dict[str, Any]:
    """Pointing-game hit rate and heat inside the regions for one model and method, with 95% intervals."""
    hits, shares = [], []
    positive = classifier.card.positive_class
    for image in images:
        result = classifier.run(image.pixels, method, positive, image.lungs)
        heatmap = result.heatmap if result.heatmap is not None else np.zeros(image.pixels.shape, np.float32)
        tolerance = round(POINTING_TOLERANCE * max(image.pixels.shape))
        hits.append(pointing_hit(heatmap, image.region, tolerance))
        shares.append(heat_share(heatmap, image.region) or 0.0)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    region_share = float(np.mean([image.region.mean() for image in images]))
    return {
        "images": len(images),
        "pointing_hit_rate": _with_interval(np.array(hits, np.float64), rng),
        "heat_inside": _with_interval(np.array(shares, np.float64), rng),
        "region_share_of_image": region_share,
        "tolerance_share_of_side": POINTING_TOLERANCE,
    }


def compare_layers(
    classifier: Classifier, images: Sequence[AnnotatedImage], layers: Sequence[str], method: str
) -> dict[str, dict[str, Any]]:
    """Localisation scores of `method` at each of `layers` the model has (others are skipped)."""
    return {
        layer: localisation_scores(
            Classifier(replace(classifier.card, cam_layer=layer), classifier.model), images, method
        )
        for layer in layers
        if find_layer(classifier.model, layer) is not None
    }


def best_layer(scores_by_layer: dict[str, dict[str, Any]]) -> str:
    """The layer whose maps point at the findings most often; more heat inside breaks a tie."""
    if not scores_by_layer:
        raise DatasetError("no candidate layer to choose from")

    def rank(layer: str) -> tuple[float, float]:
        scores = scores_by_layer[layer]
        return scores["pointing_hit_rate"]["value"], scores["heat_inside"]["value"]

    return max(scores_by_layer, key=rank)
