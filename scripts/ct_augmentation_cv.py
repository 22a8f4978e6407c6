"""Does the acquisition augmentation make the CT models hold up on slices from another scanner?

Grouped cross-validation on the SARS-CoV-2 CT train + val splits (never the test
split): folds keep each pseudo-patient group together. For each fold, a
logistic-regression head on frozen ImageNet EfficientNet-Lite0 features of the
lung-cropped slices is fitted on plain images, or on plain plus two augmented
copies (the training augmentation), and scored on the held-out groups as they
are and "re-scanned": another window's gamma, lower contrast, coarser JPEG.

    .venv/bin/python scripts/ct_augmentation_cv.py [--data ../shared/data/sars_cov2_ct]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2
import keras
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold

from lungviz.models.architectures import POOL_LAYER, build_model
from lungviz.preprocessing import gray_batch_to_input
from lungviz.tasks import get_task
from lungviz.training.datasets import augment_images, labels_column, load_split, lung_cropper

TASK = "ct-covid"
SIZE = (224, 224)


def rescanned(images: np.ndarray) -> np.ndarray:
    """The same slices as another scanner and archive might give them: gamma 1.3, 80% contrast, JPEG quality 40."""
    out = []
    for image in images:
        x = 255.0 * (image / 255.0) ** 1.3
        x = np.clip((x - x.mean()) * 0.8 + x.mean(), 0, 255).astype(np.uint8)
        _, encoded = cv2.imencode(".jpg", x, [cv2.IMWRITE_JPEG_QUALITY, 40])
        out.append(cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE))
    return np.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/sars_cov2_ct"))
    parser.add_argument("--folds", type=int, default=4)
    args = parser.parse_args()
    classes = get_task(TASK).classes
    cropper = lung_cropper(TASK, "lungs", Path("runs") / TASK)
    splits = [load_split([args.data], name, classes, SIZE, cropper) for name in ("train", "val")]
    images = np.concatenate([split.images for split in splits])
    labels = np.concatenate([split.labels for split in splits])
    groups = np.concatenate([labels_column(split, [args.data], "pseudo_patient_group") for split in splits])
    model = build_model("efficientnet_lite0", 2, SIZE).model
    extractor = keras.Model(model.input, model.get_layer(POOL_LAYER).output)

    def features(batch: np.ndarray) -> np.ndarray:
        return extractor.predict(batch, batch_size=32, verbose=0)

    plain = features(gray_batch_to_input(images))
    augmented = [features(augment_images(images, seed)) for seed in (1, 2)]
    rescan = features(gray_batch_to_input(rescanned(images)))
    scores: dict[str, list[float]] = {}
    folds = StratifiedGroupKFold(args.folds, shuffle=True, random_state=0).split(plain, labels, groups)
    for train, held_out in folds:
        for recipe, x, y in (
            ("plain", plain[train], labels[train]),
            ("augmented", np.concatenate([plain[train], *(a[train] for a in augmented)]), np.tile(labels[train], 3)),
        ):
            head = LogisticRegression(C=0.5, class_weight="balanced", max_iter=2000).fit(x, y)
            for test_name, test_x in (("as stored", plain[held_out]), ("re-scanned", rescan[held_out])):
                auc = roc_auc_score(labels[held_out], head.predict_proba(test_x)[:, 1])
                scores.setdefault(f"{recipe} -> {test_name}", []).append(auc)
    print(f"{len(images)} slices, {len(set(groups))} pseudo-patient groups, {args.folds} grouped folds")
    for name, values in scores.items():
        print(f"{name:<28} ROC-AUC {np.mean(values):.3f} (folds {', '.join(f'{v:.3f}' for v in values)})")


if __name__ == "__main__":
    main()
