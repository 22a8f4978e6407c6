"""Where the lungs are in a chest image: a mask, its box, and how much of the image it covers.

Every classifier sees the image cropped to the lungs' box (with a margin), at
training, evaluation and prediction alike, so a full-field CT slice, an adult
radiograph with wide borders and a tight pediatric film reach the models
framed alike; an image without lungs is not classified; and every heatmap can
say how much of its heat lies inside the lungs.

* Chest X-ray: a small U-Net (`lungviz.models.segmentation`) trained on
  COVID-QU-Ex lung masks, shipped in `weights/lungs/` with its card.
* CT: no network. Lungs are the air inside the body: dark voxels (below -400
  HU when the DICOM gives Hounsfield units, else below the slice's Otsu level
  for lung-window pictures) inside the convex hull of the body (the largest
  bright component), which leaves out the air around the patient; vessels
  inside the lungs are filled in.

Both end in the same post-processing: the largest components (at most three,
each at least a tenth of the largest), holes filled; "found" needs the lungs
to cover a minimum share of the image (X-ray) or of the body (CT).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lungviz.errors import ModelLoadError
from lungviz.preprocessing import image_to_input

LUNGS_DIR = "lungs"
SEGMENTER_FILE = "xray-lungs.keras"
SEGMENTER_CARD = "xray-lungs.json"
CROP_MARGIN = 0.08
"""Margin added on every side of the lungs' box, as a share of the box's width or height."""
MAX_COMPONENTS = 3
MIN_XRAY_FRACTION = 0.04
"""Lungs must cover at least this share of a radiograph (adult and pediatric films: 0.1 to 0.4)."""
MIN_XRAY_CONFIDENCE = 0.9
"""Mean P(lung) inside the mask: below it the segmenter is guessing. Chosen on validation radiographs
(lowest 0.927 over the Kermany, NIH and COVID-QU-Ex val splits) against scikit-image's photos (highest 0.88)."""
MIN_CT_FRACTION = 0.04
"""Lungs must cover at least this share of the body's cross-section (abdominal gas stays below it)."""
CT_AIR_HU, CT_TISSUE_HU = -400.0, -200.0
CT_CLOSING = 0.08
"""Dense findings up to this share of the slice's side are closed into the lungs."""


@dataclass(frozen=True)
class Lungs:
    """The lungs found in one image, in its own pixel coordinates."""

    mask: np.ndarray
    """bool (H, W): True inside the lungs."""
    found: bool
    method: str
    """"segmenter", "hounsfield" or "intensity"."""

    @property
    def fraction(self) -> float:
        """Share of the image's pixels inside the lungs."""
        return float(self.mask.mean())

    @property
    def box(self) -> tuple[int, int, int, int] | None:
        """(x0, y0, x1, y1) of the mask, x1 and y1 exclusive; None when no lungs were found."""
        if not self.found:
            return None
        rows, cols = np.flatnonzero(self.mask.any(axis=1)), np.flatnonzero(self.mask.any(axis=0))
        return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1

    def crop_box(self, margin: float = CROP_MARGIN) -> tuple[int, int, int, int]:
        """The box the models see: the lungs' box grown by `margin` on every side, inside the image.

        Without lungs it is the whole image (a task chosen by hand still runs on something).
        """
        height, width = self.mask.shape
        if self.box is None:
            return 0, 0, width, height
        x0, y0, x1, y1 = self.box
        dx, dy = round((x1 - x0) * margin), round((y1 - y0) * margin)
        return max(0, x0 - dx), max(0, y0 - dy), min(width, x1 + dx), min(height, y1 + dy)

    def to_dict(self) -> dict[str, Any]:
        """The CLI's `lungs` record: found, box [x0, y0, x1, y1] in the original image's pixels, fraction."""
        return {"found": self.found, "box": list(self.box) if self.box else None, "fraction": round(self.fraction, 4)}


def dice(mask: np.ndarray, reference: np.ndarray) -> float:
    """2|A n B| / (|A| + |B|); 1 when both are empty."""
    total = int(mask.sum()) + int(reference.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(mask, reference).sum()) / total


def _largest_components(mask: np.ndarray) -> np.ndarray:
    """The biggest components (at most MAX_COMPONENTS, each at least a tenth of the largest), holes filled."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return np.zeros(mask.shape, bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    order = np.argsort(areas)[::-1][:MAX_COMPONENTS]
    kept = [index + 1 for index in order if areas[index] >= areas[order[0]] / 10]
    filled = np.zeros(mask.shape, np.uint8)
    for label in kept:
        contours, _ = cv2.findContours((labels == label).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled.astype(bool)


def _ct_lungs(dark: np.ndarray, bright: np.ndarray, method: str) -> Lungs:
    """Dark regions inside the convex hull of the body (the largest bright component)."""
    kernel = np.ones((3, 3), np.uint8)
    body = cv2.morphologyEx(bright.astype(np.uint8), cv2.MORPH_OPEN, kernel)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(body, connectivity=8)
    if count <= 1:
        return Lungs(np.zeros(dark.shape, bool), False, method)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    points = cv2.findNonZero((labels == largest).astype(np.uint8))
    hull = np.zeros(dark.shape, np.uint8)
    cv2.fillConvexPoly(hull, cv2.convexHull(points), 1)
    inside = cv2.morphologyEx((dark & hull.astype(bool)).astype(np.uint8), cv2.MORPH_OPEN, kernel)
    mask = _largest_components(inside)
    # Consolidation is as dense as tissue: close over it (a lung's share of the slice, not the heart's) so that
    # heat on a dense finding still counts as inside the lungs.
    side = max(3, round(CT_CLOSING * min(mask.shape)) | 1)
    ellipse = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side))
    closed = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, ellipse)
    mask = _largest_components(np.logical_and(closed, hull))
    return Lungs(mask, bool(mask.sum() >= MIN_CT_FRACTION * hull.sum()), method)


def ct_lungs_from_hounsfield(hounsfield: np.ndarray) -> Lungs:
    """Lungs of a CT slice in Hounsfield units (a DICOM CT)."""
    values = np.asarray(hounsfield, np.float32)
    return _ct_lungs(values < CT_AIR_HU, values > CT_TISSUE_HU, "hounsfield")


def ct_lungs_from_intensity(pixels: np.ndarray) -> Lungs:
    """Lungs of a CT slice shown as a picture (lung window), split dark/bright at its Otsu level."""
    gray = np.round(np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8)
    level, _ = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return _ct_lungs(gray < level, gray >= level, "intensity")


class XrayLungSegmenter:
    """The shipped chest X-ray lung segmenter: a compiled network and its card."""

    def __init__(self, model: Any, card: dict[str, Any]) -> None:
        import tensorflow as tf

        self.card = card
        self.input_size = (int(card["input_size"][0]), int(card["input_size"][1]))
        self.threshold = float(card.get("threshold", 0.5))
        signature = [tf.TensorSpec((None, *self.input_size, 3), tf.float32)]
        compiled = tf.function(partial(model, training=False), input_signature=signature)
        self.forward: Callable[[np.ndarray], Any] = compiled
        """Model inputs (n, H, W, 3) -> P(lung) (n, H, W, 1); a server routes it through its inference service."""

    @classmethod
    def load(cls, folder: Path) -> XrayLungSegmenter:
        """Load from a folder holding the segmenter and its card (safe mode: no code runs from the file)."""
        from lungviz.models.storage import load_compact  # any of the precisions save_compact may choose

        try:
            card = json.loads((Path(folder) / SEGMENTER_CARD).read_text())
            model = load_compact(Path(folder) / SEGMENTER_FILE)
        except (OSError, ValueError, ModelLoadError) as error:
            raise ModelLoadError(f"cannot load the lung segmenter from {folder}: {error}") from error
        return cls(model, card)

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """P(lung) (H, W) float32 at the image's own resolution."""
        raw = np.asarray(self.forward(image_to_input(pixels, self.input_size)))[0, ..., 0]
        height, width = pixels.shape[:2]
        return cv2.resize(raw, (width, height), interpolation=cv2.INTER_LINEAR)

    def segment(self, pixels: np.ndarray) -> Lungs:
        probability = self.probabilities(pixels)
        mask = _largest_components(probability >= self.threshold)
        confident = bool(mask.any()) and float(probability[mask].mean()) >= MIN_XRAY_CONFIDENCE
        return Lungs(mask, confident and float(mask.mean()) >= MIN_XRAY_FRACTION, "segmenter")


def find_lungs(pixels: np.ndarray, modality: str, *, hounsfield: np.ndarray | None = None,
               segmenter: XrayLungSegmenter | None = None) -> Lungs | None:  # fmt: skip
    """The lungs of an image of `modality` ("xray" or "ct"), or None where nothing can look (no X-ray segmenter).

    CT uses Hounsfield units when the file gave them, else the picture's intensities.
    """
    if modality == "ct":
        return ct_lungs_from_hounsfield(hounsfield) if hounsfield is not None else ct_lungs_from_intensity(pixels)
    if modality == "xray" and segmenter is not None:
        return segmenter.segment(pixels)
    return None


def load_segmenter(weights_root: Path) -> XrayLungSegmenter | None:
    """The shipped X-ray segmenter, or None where the weights folder has none (e.g. test fixtures)."""
    folder = Path(weights_root) / LUNGS_DIR
    return XrayLungSegmenter.load(folder) if (folder / SEGMENTER_FILE).is_file() else None
