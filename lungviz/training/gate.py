"""Fitting and measuring the modality gate (`lungviz.inference.modality` applies it).

The gate is fitted on training images of each modality, its threshold is set
on validation images, and `evaluate_gate` reports how test images of both
modalities and non-chest pictures are routed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from lungviz.inference.modality import (
    CARD_FILE,
    EMBEDDING_FILE,
    INPUT_SIZE,
    STATS_FILE,
    ModalityGate,
)
from lungviz.models.backbones.efficientnet_lite import build_efficientnet_lite
from lungviz.models.storage import save_compact
from lungviz.tasks import MODALITIES
from lungviz.training import datasets


def fit_gate(
    embedding,
    features_by_modality: dict[str, np.ndarray],
    validation: dict[str, np.ndarray],
    *,
    components: int = 32,
    quantile: float = 0.995,
) -> ModalityGate:
    """Fit class means and the shared within-modality subspace; threshold on validation.

    The threshold is the `quantile` of validation images' distance to their
    nearest modality, so about 1 - quantile of real chest images are called other.
    """
    train = np.concatenate([features_by_modality[m] for m in MODALITIES]).astype(np.float64)
    labels = np.concatenate([np.full(len(features_by_modality[m]), i) for i, m in enumerate(MODALITIES)])
    class_means = np.stack([train[labels == i].mean(axis=0) for i in range(len(MODALITIES))])
    within = train - class_means[labels]
    _, singular, vt = np.linalg.svd(within, full_matrices=False)
    variances = singular**2 / (len(train) - len(MODALITIES))
    components = min(components, len(variances) - 1)
    residual_variance = float(variances[components:].sum() / max(train.shape[1] - components, 1))
    gate = ModalityGate(
        embedding, class_means, vt[:components].T, np.sqrt(variances[:components]), max(residual_variance, 1e-12), 1.0
    )
    val = np.concatenate([validation[m] for m in MODALITIES]).astype(np.float64)
    gate.threshold = float(np.quantile(gate.distances(val).min(axis=1), quantile))
    return gate


def _split_features(gate_embedding, data_dir: Path, split: str, limit: int | None, seed: int) -> np.ndarray:
    """Embeddings of (a seeded sample of) one split of a folder-per-class data set."""
    data = datasets.load_split(data_dir, split, datasets.dataset_classes(data_dir), INPUT_SIZE)
    images = data.images
    if limit is not None and len(images) > limit:
        images = images[np.sort(np.random.default_rng(seed).choice(len(images), limit, replace=False))]
    return np.concatenate([np.asarray(gate_embedding(batch)) for batch in datasets.iterate_batches(images, 32)])


def build_embedding():
    """ImageNet EfficientNet-Lite0 with global average pooling: the gate's feature extractor."""
    import keras

    backbone = build_efficientnet_lite("efficientnet_lite0", (*INPUT_SIZE, 3), include_top=False)
    pooled = keras.layers.GlobalAveragePooling2D(name="embedding")(backbone.output)
    return keras.Model(backbone.input, pooled, name="modality_embedding")


def train_gate(data_dirs: dict[str, Path], out_dir: Path, *, per_modality: int = 800, seed: int = 0) -> dict[str, Any]:
    """Fit the gate on training images of each modality, threshold it on validation, save it."""
    embedding = build_embedding()
    train = {m: _split_features(embedding, data_dirs[m], "train", per_modality, seed) for m in MODALITIES}
    val = {m: _split_features(embedding, data_dirs[m], "val", None, seed) for m in MODALITIES}
    gate = fit_gate(embedding, train, val)
    card = {
        "method": "EfficientNet-Lite0 ImageNet features, PCA-whitened; nearest modality mean under a shared "
        "covariance; out-of-distribution score = distance / threshold",
        "training": {
            m: {"data": data_dirs[m].name, "train_images": len(train[m]), "val_images": len(val[m])} for m in MODALITIES
        },
        "threshold_rule": "99.5th percentile of validation images' distance to their nearest modality",
        "threshold": gate.threshold,
    }
    save_gate(gate, out_dir, card)
    return card


def natural_images() -> dict[str, np.ndarray]:
    """Images that are not chest X-rays or CT slices, as [0, 1] grayscale: scikit-image's bundled
    photos, documents, a retina and micrographs (no download needed)."""
    import skimage.color
    import skimage.data

    names = [
        "astronaut",
        "brick",
        "camera",
        "cat",
        "checkerboard",
        "clock",
        "coffee",
        "coins",
        "colorwheel",
        "grass",
        "gravel",
        "horse",
        "logo",
        "microaneurysms",
        "moon",
        "page",
        "retina",
        "rocket",
        "text",
        "immunohistochemistry",
        "hubble_deep_field",
        "shepp_logan_phantom",
        "cell",
        "binary_blobs",
    ]
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
        report[modality] = {
            "images": len(features),
            "correct": float(np.mean((nearest == MODALITIES.index(modality)) & ~other)),
            "called_other": float(np.mean(other)),
            "called_wrong_modality": float(np.mean((nearest != MODALITIES.index(modality)) & ~other)),
        }
    natural = natural_images()
    verdicts = {name: gate.assess(pixels) for name, pixels in natural.items()}
    report["natural"] = {
        "images": len(natural),
        "called_other": float(np.mean([v.predicted == "other" for v in verdicts.values()])),
        "missed": {n: v.to_dict() for n, v in verdicts.items() if v.predicted != "other"},
    }
    return report


def save_gate(gate: ModalityGate, folder: Path, card: dict[str, Any]) -> None:
    """Write the embedding (int8 or float16 where its features stay within tolerance), the statistics and the card."""
    folder.mkdir(parents=True, exist_ok=True)
    probe = np.random.default_rng(0).uniform(0, 255, (4, *INPUT_SIZE, 3)).astype(np.float32)
    stored = save_compact(gate.embedding, folder / EMBEDDING_FILE, probe, tolerance=0.1)  # features lie in [0, 6]
    card["weights_dtype"], card["weights_max_feature_change"] = stored.dtype, stored.max_output_change
    np.savez(
        folder / STATS_FILE,
        class_means=gate.class_means,
        basis=gate.basis,
        scale=gate.scale,
        residual_variance=np.float64(gate.residual_variance),
        threshold=np.float64(gate.threshold),
    )
    (folder / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
