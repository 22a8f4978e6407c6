"""Shared by the backbone tests: jittered gray crops of scikit-image photos, and how well features separate them.

A random network separates crops of two photos by their brightness and
contrast alone, so every crop gets its own random size, position, flip,
contrast and brightness: what is left to separate them by is content (a cat's
face and fur, a cup and saucer). Crops are gray replicated to three channels,
like LungViz's inputs. (skimage.data.cat is the same photo as chelsea.)
"""

from __future__ import annotations

import numpy as np
import skimage.data
from PIL import Image

SAMPLES_PER_PHOTO = 16


def jittered_crops(photo: np.ndarray, size: int, seed: int, count: int = SAMPLES_PER_PHOTO) -> np.ndarray:
    """`count` gray crops of `photo` as (count, size, size, 3) float32 pixels in [0, 255]."""
    rng = np.random.default_rng(seed)
    gray = np.asarray(Image.fromarray(photo).convert("L"))
    height, width = gray.shape
    crops = []
    for _ in range(count):
        side = int(rng.uniform(0.5, 0.9) * min(height, width))
        top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        patch = Image.fromarray(gray[top : top + side, left : left + side]).resize((size, size), Image.BILINEAR)
        crop = np.asarray(patch, dtype=np.float32)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        mean = crop.mean()
        crops.append(np.clip((crop - mean) * rng.uniform(0.6, 1.4) + mean + rng.uniform(-40, 40), 0, 255))
    return np.repeat(np.stack(crops)[..., None], 3, axis=-1)


def cats_and_cups(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Jittered crops of the cat photo and of the coffee-cup photo."""
    return jittered_crops(skimage.data.chelsea(), size, seed=0), jittered_crops(skimage.data.coffee(), size, seed=1)


def separation(first: np.ndarray, second: np.ndarray) -> float:
    """Fisher ratio of two groups of feature vectors after L2 normalisation (direction, not magnitude).

    Squared distance between the group means over the mean squared distance
    of a vector to its own group's mean: above 1 the groups stand apart.
    """
    first, second = (f / np.linalg.norm(f, axis=1, keepdims=True) for f in (first, second))
    within = np.mean([((f - f.mean(0)) ** 2).sum(1).mean() for f in (first, second)])
    return float(((first.mean(0) - second.mean(0)) ** 2).sum() / within)
