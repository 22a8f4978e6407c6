"""The modality and out-of-distribution gate: chest X-ray, chest CT slice, or neither.

A DICOM header that names the modality is trusted first. Otherwise the gate embeds
the image with an ImageNet EfficientNet-Lite0 backbone (global-average pooled
features), whitens the features with PCA fitted on training images of both
modalities, and measures the Mahalanobis distance to each modality's mean under a
shared covariance (probabilistic PCA). The nearest modality is the prediction;
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
UNSPECIFIED_DICOM_MODALITIES = {"", "OT", "SC"}
"""DICOM Modality values that say nothing about the picture (other, secondary capture): the gate decides."""


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

    embedding: Any
    class_means: np.ndarray
    basis: np.ndarray
    scale: np.ndarray
    residual_variance: float
    threshold: float

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Distance of each feature row to each modality, shape (n, modalities)."""
        offsets = features[:, None, :] - self.class_means[None, :, :]
        inside = offsets @ self.basis
        residual = np.maximum((offsets ** 2).sum(-1) - (inside ** 2).sum(-1), 0.0)
        return np.sqrt(((inside / self.scale) ** 2).sum(-1) + residual / self.residual_variance)

    def embed(self, images: Iterable[np.ndarray], batch_size: int = 32) -> np.ndarray:
        batches, batch = [], []
        for pixels in images:
            batch.append(to_model_input(pixels, INPUT_SIZE)[0])
            if len(batch) == batch_size:
                batches.append(np.asarray(self.embedding(np.stack(batch), training=False)))
                batch = []
        if batch:
            batches.append(np.asarray(self.embedding(np.stack(batch), training=False)))
        return np.concatenate(batches) if batches else np.zeros((0, self.class_means.shape[1]), np.float32)

    def assess(self, pixels: np.ndarray) -> ModalityAssessment:
        distances = self.distances(self.embed([pixels]))[0]
        nearest = int(np.argmin(distances))
        score = float(distances[nearest] / self.threshold)
        return ModalityAssessment("other" if score > 1.0 else MODALITIES[nearest], score, "gate")

    def save(self, folder: Path, card: dict[str, Any]) -> None:
        from lungviz.storage import save_compact

        folder.mkdir(parents=True, exist_ok=True)
        probe = np.random.default_rng(0).uniform(0, 255, (4, *INPUT_SIZE, 3)).astype(np.float32)
        card["float16_max_feature_change"] = save_compact(self.embedding, folder / EMBEDDING_FILE, probe,
                                                          tolerance=0.1)  # features lie in [0, 6]
        np.savez(folder / STATS_FILE, class_means=self.class_means, basis=self.basis, scale=self.scale,
                 residual_variance=np.float64(self.residual_variance), threshold=np.float64(self.threshold))
        (folder / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")


def load_gate(weights_root: Path) -> ModalityGate | None:
    """The shipped gate, or None where a weights folder has none (e.g. test fixtures)."""
    folder = Path(weights_root) / GATE_DIR
    if not (folder / EMBEDDING_FILE).is_file():
        return None
    import keras

    embedding = keras.models.load_model(folder / EMBEDDING_FILE, compile=False, safe_mode=True)
    with np.load(folder / STATS_FILE, allow_pickle=False) as stats:
        return ModalityGate(embedding, stats["class_means"], stats["basis"], stats["scale"],
                            float(stats["residual_variance"]), float(stats["threshold"]))


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


def fit_gate(embedding, features_by_modality: dict[str, np.ndarray], validation: dict[str, np.ndarray],
             *, components: int = 32, quantile: float = 0.995) -> ModalityGate:
    """Fit class means and the shared within-modality subspace; threshold on validation.

    The threshold is the `quantile` of validation images' distance to their
    nearest modality, so about 1 - quantile of real chest images are called other.
    """
    train = np.concatenate([features_by_modality[m] for m in MODALITIES]).astype(np.float64)
    labels = np.concatenate([np.full(len(features_by_modality[m]), i) for i, m in enumerate(MODALITIES)])
    class_means = np.stack([train[labels == i].mean(axis=0) for i in range(len(MODALITIES))])
    within = train - class_means[labels]
    _, singular, vt = np.linalg.svd(within, full_matrices=False)
    variances = singular ** 2 / (len(train) - len(MODALITIES))
    components = min(components, len(variances) - 1)
    residual_variance = float(variances[components:].sum() / max(train.shape[1] - components, 1))
    gate = ModalityGate(embedding, class_means, vt[:components].T, np.sqrt(variances[:components]),
                        max(residual_variance, 1e-12), 1.0)
    val = np.concatenate([validation[m] for m in MODALITIES]).astype(np.float64)
    gate.threshold = float(np.quantile(gate.distances(val).min(axis=1), quantile))
    return gate


def _split_features(gate_embedding, data_dir: Path, split: str, limit: int | None, seed: int) -> np.ndarray:
    """Embeddings of (a seeded sample of) one split of a folder-per-class data set."""
    from lungviz import datasets

    data = datasets.load_split(data_dir, split, datasets.dataset_classes(data_dir), INPUT_SIZE)
    images = data.images
    if limit is not None and len(images) > limit:
        images = images[np.sort(np.random.default_rng(seed).choice(len(images), limit, replace=False))]
    return np.concatenate([np.asarray(gate_embedding(batch, training=False))
                           for batch in datasets.iterate_batches(images, 32)])


def build_embedding():
    """ImageNet EfficientNet-Lite0 with global average pooling: the gate's feature extractor."""
    import keras

    from lungviz.backbones.efficientnet_lite import build_efficientnet_lite

    backbone = build_efficientnet_lite("efficientnet_lite0", (*INPUT_SIZE, 3), include_top=False)
    pooled = keras.layers.GlobalAveragePooling2D(name="embedding")(backbone.output)
    return keras.Model(backbone.input, pooled, name="modality_embedding")


def train_gate(data_dirs: dict[str, Path], out_dir: Path, *, per_modality: int = 800, seed: int = 0) -> dict[str, Any]:
    """Fit the gate on training images of each modality, threshold it on validation, save it."""
    embedding = build_embedding()
    train = {m: _split_features(embedding, data_dirs[m], "train", per_modality, seed) for m in MODALITIES}
    val = {m: _split_features(embedding, data_dirs[m], "val", None, seed) for m in MODALITIES}
    gate = fit_gate(embedding, train, val)
    card = {"method": "EfficientNet-Lite0 ImageNet features, PCA-whitened; nearest modality mean under a shared "
                      "covariance; out-of-distribution score = distance / threshold",
            "training": {m: {"data": data_dirs[m].name, "train_images": len(train[m]), "val_images": len(val[m])}
                         for m in MODALITIES},
            "threshold_rule": "99.5th percentile of validation images' distance to their nearest modality",
            "threshold": gate.threshold}
    gate.save(out_dir, card)
    return card


def natural_images() -> dict[str, np.ndarray]:
    """Images that are not chest X-rays or CT slices, as [0, 1] grayscale: scikit-image's bundled
    photos, documents, a retina and micrographs (no download needed)."""
    import skimage.color
    import skimage.data

    names = ["astronaut", "brick", "camera", "cat", "checkerboard", "clock", "coffee", "coins", "colorwheel",
             "grass", "gravel", "horse", "logo", "microaneurysms", "moon", "page", "retina", "rocket", "text",
             "immunohistochemistry", "hubble_deep_field", "shepp_logan_phantom", "cell", "binary_blobs"]
    images = {}
    for name in names:
        image = np.asarray(getattr(skimage.data, name)(), dtype=np.float64)
        if image.ndim == 3:
            image = skimage.color.rgb2gray(image[..., :3] / (255.0 if image.max() > 1 else 1.0))
        span = image.max() - image.min()
        images[name] = ((image - image.min()) / (span if span else 1.0)).astype(np.float32)
    return images


def evaluate_gate(gate: ModalityGate, data_dirs: dict[str, Path]) -> dict[str, Any]:
    """Rates on the test splits of both modalities and on natural images."""
    report: dict[str, Any] = {}
    for modality in MODALITIES:
        features = _split_features(gate.embedding, data_dirs[modality], "test", None, 0)
        distances = gate.distances(features)
        nearest = distances.argmin(axis=1)
        other = distances.min(axis=1) / gate.threshold > 1.0
        report[modality] = {"images": len(features),
                            "correct": float(np.mean((nearest == MODALITIES.index(modality)) & ~other)),
                            "called_other": float(np.mean(other)),
                            "called_wrong_modality": float(np.mean((nearest != MODALITIES.index(modality)) & ~other))}
    natural = natural_images()
    verdicts = {name: gate.assess(pixels) for name, pixels in natural.items()}
    report["natural"] = {"images": len(natural),
                         "called_other": float(np.mean([v.predicted == "other" for v in verdicts.values()])),
                         "missed": {n: v.to_dict() for n, v in verdicts.items() if v.predicted != "other"}}
    return report
