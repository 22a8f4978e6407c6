"""Tiny folder-per-class image trees for data, training and evaluation tests.

Every image is a noisy gray background with soft texture; the positive class
(the second class name) also has a bright round blob somewhere on it, which a
small CNN picks up in a few epochs. Source sizes and formats vary (JPEG and PNG,
non-square), so reading code has to decode and stretch like it does on the real
sets.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

SOURCE_SHAPES = ((40, 40), (36, 48), (52, 30))


def synthetic_image(positive: bool, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    height, width = shape
    rows, cols = np.mgrid[:height, :width]
    image = 70 + 25 * np.sin(cols / width * rng.uniform(2, 6)) + rng.normal(0, 12, size=shape)
    if positive:
        centre_r, centre_c = rng.uniform(0.25, 0.75) * height, rng.uniform(0.25, 0.75) * width
        radius = 0.12 * min(shape)
        image += 140 * np.exp(-(((rows - centre_r) ** 2 + (cols - centre_c) ** 2) / (2 * radius**2)))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_blob_dataset(root: Path, classes: Sequence[str], per_class: dict[str, int], seed: int = 0) -> Path:
    """`root/<split>/<class>/img_<i>.jpg|png` with `per_class[split]` images of each class."""
    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image = synthetic_image(label == 1, rng, SOURCE_SHAPES[i % len(SOURCE_SHAPES)])
                suffix = ".png" if i % 2 else ".jpg"
                cv2.imwrite(str(folder / f"img_{i:03d}{suffix}"), image)
    return root
