"""The modality and out-of-distribution gate: chest X-ray, chest CT slice, or neither.

A DICOM header that names the modality is trusted first. Otherwise the gate embeds
the image with an ImageNet EfficientNet-Lite0 backbone (global-average pooled
features), whitens the features with PCA fitted on training images of both
modalities, and measures the Mahalanobis distance to each modality's mean under a
shared covariance (probabilistic PCA). The nearest modality is the prediction;
the distance to it, divided by a threshold set on validation images, is the
out-of-distribution score: above 1 the image is called "other". Photos,
documents and other body parts land far from both chest clusters.

This module applies a fitted gate; `lungviz.training.gate` fits and measures it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from lungviz.inference.images import ChestImage
from lungviz.preprocessing import image_to_input
from lungviz.tasks import MODALITIES

GATE_DIR = "gate"
EMBEDDING_FILE = "embedding.keras"
STATS_FILE = "gate.npz"
CARD_FILE = "gate.json"
INPUT_SIZE = (224, 224)
UNSPECIFIED_DICOM_MODALITIES = {"", "OT", "SC"}
"""DICOM Modality values that say nothing about the picture (other, secondary capture): the gate decides."""


def embed_images(
    embedding: Callable[[np.ndarray], Any], images: Iterable[np.ndarray], batch_size: int = 32, width: int = 0
) -> np.ndarray:
    """Features (n, d) of [0, 1] grayscale images at any size, made into model inputs the way uploads are;
    shared by the gate and its fitting so both see identical inputs. `width` shapes the empty result."""
    batches, batch = [], []
    for pixels in images:
        batch.append(image_to_input(pixels, INPUT_SIZE)[0])
        if len(batch) == batch_size:
            batches.append(np.asarray(embedding(np.stack(batch))))
            batch = []
    if batch:
        batches.append(np.asarray(embedding(np.stack(batch))))
    return np.concatenate(batches) if batches else np.zeros((0, width), np.float32)


@dataclass(frozen=True)
class ModalityAssessment:
    """What the image is, how sure, and where that came from ("dicom", "gate" or "none")."""

    predicted: str | None
    score: float | None
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "predicted": self.predicted,
            "score": None if self.score is None else round(self.score, 4),
            "source": self.source,
        }

    def describe(self) -> str:
        names = {"xray": "a chest X-ray", "ct": "a chest CT slice", "other": "neither X-ray nor CT", None: "unknown"}
        if self.source == "none":
            return "unknown (no DICOM header and no modality gate)"
        if self.score is None:
            return f"{names[self.predicted]}, from the DICOM header"
        return f"{names[self.predicted]}, out-of-distribution score {self.score:.2f}; above 1 means other"


@dataclass
class ModalityGate:
    """Embedding model plus the fitted class means, principal subspace and threshold.

    Distances are those of probabilistic PCA: Mahalanobis inside the `basis`
    subspace of within-modality variation, plus the residual outside it scaled
    by its average variance. The residual matters: photos and documents differ
    from chest images mostly in directions chest images never vary in.
    """

    embedding: Callable[[np.ndarray], Any]
    """Model inputs (n, 224, 224, 3) -> features (n, d), in inference mode."""
    class_means: np.ndarray
    basis: np.ndarray
    scale: np.ndarray
    residual_variance: float
    threshold: float

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Distance of each feature row to each modality, shape (n, modalities)."""
        offsets = features[:, None, :] - self.class_means[None, :, :]
        inside = offsets @ self.basis
        residual = np.maximum((offsets**2).sum(-1) - (inside**2).sum(-1), 0.0)
        return np.sqrt(((inside / self.scale) ** 2).sum(-1) + residual / self.residual_variance)

    def embed(self, images: Iterable[np.ndarray], batch_size: int = 32) -> np.ndarray:
        return embed_images(self.embedding, images, batch_size, self.class_means.shape[1])

    def assess(self, pixels: np.ndarray) -> ModalityAssessment:
        distances = self.distances(self.embed([pixels]))[0]
        nearest = int(np.argmin(distances))
        score = float(distances[nearest] / self.threshold)
        return ModalityAssessment("other" if score > 1.0 else MODALITIES[nearest], score, "gate")


def load_gate(weights_root: Path) -> ModalityGate | None:
    """The shipped gate, or None where a weights folder has none (e.g. test fixtures)."""
    folder = Path(weights_root) / GATE_DIR
    if not (folder / EMBEDDING_FILE).is_file():
        return None
    import tensorflow as tf

    from lungviz.models.storage import load_compact  # any of the precisions save_compact may choose

    model = load_compact(folder / EMBEDDING_FILE)
    # Compiled once: an eager call of the ~100-layer embedding costs several times its graph.
    embedding = tf.function(partial(model, training=False), input_signature=[tf.TensorSpec((None, *INPUT_SIZE, 3))])
    with np.load(folder / STATS_FILE, allow_pickle=False) as stats:
        return ModalityGate(
            embedding,
            stats["class_means"],
            stats["basis"],
            stats["scale"],
            float(stats["residual_variance"]),
            float(stats["threshold"]),
        )


def gate_card(weights_root: Path) -> dict[str, Any] | None:
    """The gate's card (method, threshold, measured rates), or None where none is shipped."""
    path = Path(weights_root) / GATE_DIR / CARD_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def assess_modality(image: ChestImage, gate: ModalityGate | None) -> ModalityAssessment:
    """A DICOM header that names the modality first (it is authoritative), then the gate, else unknown."""
    if image.modality_hint is not None:
        return ModalityAssessment(image.modality_hint, None, "dicom")
    if image.metadata.get("Modality", "").strip().upper() not in UNSPECIFIED_DICOM_MODALITIES:
        return ModalityAssessment("other", None, "dicom")  # MR, US, NM...: not a chest X-ray or CT
    if gate is None:
        return ModalityAssessment(None, None, "none")
    return gate.assess(image.pixels)
