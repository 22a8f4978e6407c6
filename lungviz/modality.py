"""The modality and out-of-distribution gate: chest X-ray, chest CT slice, or neither.

A DICOM header that names the modality is trusted first. Otherwise the gate embeds
the image with an ImageNet EfficientNet-Lite0 backbone (global-average pooled
features), whitens the features with PCA fitted on training images of both
modalities, and measures the Mahalanobis distance to each modality's mean under a
shared covariance (linear discriminant). The nearest modality is the prediction;
the distance to it, divided by a threshold set on validation images, is the
out-of-distribution score: above 1 the image is called "other". Photos,
documents and other body parts land far from both chest clusters.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lungviz.images import ChestImage
from lungviz.prediction import to_model_input

MODALITIES = ("xray", "ct")
GATE_DIR = "gate"
EMBEDDING_FILE = "embedding.keras"
STATS_FILE = "gate.npz"
CARD_FILE = "gate.json"
INPUT_SIZE = (224, 224)
DICOM_MODALITIES = {"CR": "xray", "DX": "xray", "DR": "xray", "RG": "xray", "CT": "ct"}


@dataclass(frozen=True)
class ModalityAssessment:
    """What the image is, how sure, and where that came from ("dicom", "gate" or "none")."""

    predicted: str | None
    score: float | None
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"predicted": self.predicted, "score": None if self.score is None else round(self.score, 4),
                "source": self.source}

    def describe(self) -> str:
        names = {"xray": "a chest X-ray", "ct": "a chest CT slice", "other": "neither X-ray nor CT", None: "unknown"}
        if self.score is None:
            return f"{names[self.predicted]}, from the {self.source}"
        return f"{names[self.predicted]}, out-of-distribution score {self.score:.2f}; above 1 means other"


@dataclass
class ModalityGate:
    """Embedding model plus the fitted whitening, class means and threshold."""

    embedding: Any
    mean: np.ndarray
    components: np.ndarray
    class_means: np.ndarray
    threshold: float

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each feature row to each modality mean, shape (n, 2)."""
        whitened = (features - self.mean) @ self.components
        return np.linalg.norm(whitened[:, None, :] - self.class_means[None, :, :], axis=-1)

    def embed(self, images: Iterable[np.ndarray], batch_size: int = 32) -> np.ndarray:
        batches, batch = [], []
        for pixels in images:
            batch.append(to_model_input(pixels, INPUT_SIZE)[0])
            if len(batch) == batch_size:
                batches.append(np.asarray(self.embedding(np.stack(batch), training=False)))
                batch = []
        if batch:
            batches.append(np.asarray(self.embedding(np.stack(batch), training=False)))
        return np.concatenate(batches) if batches else np.zeros((0, self.mean.size), np.float32)

    def assess(self, pixels: np.ndarray) -> ModalityAssessment:
        distances = self.distances(self.embed([pixels]))[0]
        nearest = int(np.argmin(distances))
        score = float(distances[nearest] / self.threshold)
        return ModalityAssessment("other" if score > 1.0 else MODALITIES[nearest], score, "gate")

    def save(self, folder: Path, card: dict[str, Any]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.embedding.save(folder / EMBEDDING_FILE)
        np.savez(folder / STATS_FILE, mean=self.mean, components=self.components,
                 class_means=self.class_means, threshold=np.float64(self.threshold))
        (folder / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")


def load_gate(weights_root: Path) -> ModalityGate | None:
    """The shipped gate, or None where a weights folder has none (e.g. test fixtures)."""
    folder = Path(weights_root) / GATE_DIR
    if not (folder / EMBEDDING_FILE).is_file():
        return None
    import keras

    embedding = keras.models.load_model(folder / EMBEDDING_FILE, compile=False, safe_mode=True)
    with np.load(folder / STATS_FILE, allow_pickle=False) as stats:
        return ModalityGate(embedding, stats["mean"], stats["components"], stats["class_means"],
                            float(stats["threshold"]))


def assess_modality(image: ChestImage, gate: ModalityGate | None) -> ModalityAssessment:
    """DICOM header first (it is authoritative), then the gate, else unknown."""
    dicom_modality = image.metadata.get("Modality")
    if dicom_modality:
        return ModalityAssessment(DICOM_MODALITIES.get(dicom_modality, "other"), None, "dicom")
    if gate is None:
        return ModalityAssessment(None, None, "none")
    return gate.assess(image.pixels)


def fit_gate(embedding, features_by_modality: dict[str, np.ndarray], validation: dict[str, np.ndarray],
             *, components: int = 32, quantile: float = 0.995) -> ModalityGate:
    """Fit whitening and class means on training features; threshold on validation.

    The threshold is the `quantile` of validation images' distance to their
    nearest modality, so about 1 - quantile of real chest images are called other.
    """
    train = np.concatenate([features_by_modality[m] for m in MODALITIES])
    labels = np.concatenate([np.full(len(features_by_modality[m]), i) for i, m in enumerate(MODALITIES)])
    mean = train.mean(axis=0)
    class_means_raw = np.stack([train[labels == i].mean(axis=0) for i in range(len(MODALITIES))])
    within = train - class_means_raw[labels]
    _, singular, vt = np.linalg.svd(within, full_matrices=False)
    scale = singular[:components] / np.sqrt(len(train) - len(MODALITIES))
    projection = vt[:components].T / scale
    gate = ModalityGate(embedding, mean, projection, (class_means_raw - mean) @ projection, 1.0)
    val = np.concatenate([validation[m] for m in MODALITIES])
    gate.threshold = float(np.quantile(gate.distances(val).min(axis=1), quantile))
    return gate
