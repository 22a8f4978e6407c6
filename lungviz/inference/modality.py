"""The modality and out-of-distribution gate: chest X-ray, chest CT slice, or neither.

A DICOM header that names the modality is trusted first. Otherwise the gate embeds
the image with an ImageNet EfficientNet-Lite0 backbone (global-average pooled
features) and applies a linear discriminant over three classes: X-ray, CT and
"other", the last fitted on non-chest pictures (photos, documents, faces, other
body parts and modalities). A distance to the chest clusters alone cannot tell a
head CT or an MR slice from an unfamiliar chest film, since both are simply far;
a class that has seen what "other" looks like can. The out-of-distribution score
is P(other) divided by the likelier chest modality's probability: above 1 the
image is called "other".

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


CLASSES = (*MODALITIES, "other")
"""The gate's classes, in the order of its weight columns."""
OTHER = CLASSES.index("other")
_MAX_LOG_ODDS = 30.0
"""Scores are capped at e^30 so that they stay finite numbers in JSON."""


@dataclass
class ModalityGate:
    """Embedding model plus a linear classifier over CLASSES (chest modalities, then other).

    Linear discriminant analysis: class means under a shared, shrunk covariance,
    stored as its `weights` (d, classes) and `bias`, so applying it needs numpy only.
    """

    embedding: Callable[[np.ndarray], Any]
    """Model inputs (n, 224, 224, 3) -> features (n, d), in inference mode."""
    weights: np.ndarray
    bias: np.ndarray

    def logits(self, features: np.ndarray) -> np.ndarray:
        """Unnormalised log-probabilities, shape (n, classes)."""
        return np.asarray(features, np.float64) @ self.weights + self.bias

    def scores(self, features: np.ndarray) -> np.ndarray:
        """P(other) / P(likelier chest modality) per row: above 1 the row is called other."""
        logits = self.logits(features)
        log_odds = logits[:, OTHER] - logits[:, :OTHER].max(axis=1)
        return np.exp(np.clip(log_odds, -_MAX_LOG_ODDS, _MAX_LOG_ODDS))

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Index into CLASSES of each row's verdict."""
        return np.asarray(self.logits(features).argmax(axis=1))

    def embed(self, images: Iterable[np.ndarray], batch_size: int = 32) -> np.ndarray:
        return embed_images(self.embedding, images, batch_size, self.weights.shape[0])

    def assess(self, pixels: np.ndarray) -> ModalityAssessment:
        features = self.embed([pixels])
        return ModalityAssessment(CLASSES[int(self.predict(features)[0])], float(self.scores(features)[0]), "gate")


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
        return ModalityGate(embedding, stats["weights"], stats["bias"])


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
