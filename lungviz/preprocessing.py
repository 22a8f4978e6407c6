"""The model input contract, shared by training, evaluation and inference.

Every classifier (and the modality gate's embedding) takes float32 batches
(n, H, W, 3) of raw [0, 255] values with the gray image replicated to three
channels, and does its own normalisation inside the graph. Images reach the
model's size by stretching without keeping the aspect ratio, because that is
how the training images were made. Before that, every image is cropped to
its lungs' box (`lungviz.inference.lungs`), so that models see the lungs
framed alike whatever the file holds. Training reads 8-bit files and inference
[0, 1] float images, so both paths meet here, in one crop, one resize and one
layout.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np


def stretch_to_size(gray: np.ndarray, input_size: Sequence[int]) -> np.ndarray:
    """Resize a 2-D image to (H, W), ignoring its aspect ratio: area interpolation when shrinking, else bilinear."""
    height, width = input_size
    if gray.shape == (height, width):
        return gray
    shrinking = gray.shape[0] > height or gray.shape[1] > width
    return cv2.resize(gray, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def gray_batch_to_input(images: np.ndarray) -> np.ndarray:
    """(n, H, W) gray values in [0, 255] (uint8 or float) -> float32 (n, H, W, 3) model input."""
    return np.repeat(images[..., None].astype(np.float32), 3, axis=-1)


def crop(gray: np.ndarray, box: Sequence[int] | None) -> np.ndarray:
    """The (x0, y0, x1, y1) part of a 2-D image (x1, y1 exclusive); None keeps the whole image."""
    if box is None:
        return gray
    x0, y0, x1, y1 = (int(v) for v in box)
    return gray[y0:y1, x0:x1]


def image_to_input(pixels: np.ndarray, input_size: Sequence[int], box: Sequence[int] | None = None) -> np.ndarray:
    """A [0, 1] grayscale image at any resolution, cropped to `box` -> a (1, H, W, 3) model input batch of one."""
    stretched = stretch_to_size(np.clip(crop(pixels, box), 0.0, 1.0).astype(np.float32), input_size)
    return gray_batch_to_input(stretched[None] * 255.0)
