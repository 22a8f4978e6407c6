"""Drawing a heatmap over a chest image, for the screen and for exported PNGs.

Pure numpy/OpenCV: no model and no UI here. The heatmap is blended with an
opacity that grows with the heat itself, so cold regions leave the anatomy
exactly as it was and only the evidence is tinted; a reader can still judge
the lung fields, ribs and lines under a warm area. An optional outline of the
hottest region (a contour, or a box) makes the localisation readable at a
glance, even in print or for a colour-blind reader.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

COLORMAPS: dict[str, int] = {
    "turbo": cv2.COLORMAP_TURBO,
    "jet": cv2.COLORMAP_JET,
    "inferno": cv2.COLORMAP_INFERNO,
    "viridis": cv2.COLORMAP_VIRIDIS,
}
"""Colour maps offered for heatmaps: turbo (a smoother jet, the default), jet (as in the CAM papers), and
the perceptually uniform inferno and viridis."""

DEFAULT_COLORMAP = "turbo"
DEFAULT_OPACITY = 0.5
OUTLINE_STYLES = ("contour", "box", None)
DEFAULT_QUANTILE = 0.9
"""The hottest region is where the heatmap reaches its top 10% of values."""


def _unit_map(values: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float32)
    if array.ndim != 2 or min(array.shape) < 1:
        raise ValueError(f"{what} must be a 2-D array, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{what} contains NaN or infinite values")
    if array.min() < 0.0 or array.max() > 1.0:
        raise ValueError(f"{what} values must lie in [0, 1], got [{array.min():.3g}, {array.max():.3g}]")
    return array


def _same_shape(heatmap: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    heat = _unit_map(heatmap, "heatmap")
    if heat.shape != tuple(shape[:2]):
        raise ValueError(
            f"heatmap shape {heat.shape} differs from the image's {tuple(shape[:2])}; resize it to the image first"
        )
    return heat


def colorize(heatmap: np.ndarray, colormap: str = DEFAULT_COLORMAP) -> np.ndarray:
    """A [0, 1] heatmap as an RGB uint8 picture in the named colour map."""
    if colormap not in COLORMAPS:
        raise ValueError(f"unknown colour map {colormap!r}; choose from {', '.join(COLORMAPS)}")
    heat = _unit_map(heatmap, "heatmap")
    bgr = cv2.applyColorMap(np.round(heat * 255).astype(np.uint8), COLORMAPS[colormap])
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def overlay_heatmap(
    gray: np.ndarray, heatmap: np.ndarray, *, opacity: float = DEFAULT_OPACITY, colormap: str = DEFAULT_COLORMAP
) -> np.ndarray:
    """The grayscale image with the heatmap blended on top, as RGB uint8.

    Each pixel's colour weight is `opacity * heat`: where the model saw no
    evidence the image shows through untouched, and the hottest pixels get
    the full `opacity`.
    """
    if not 0.0 <= float(opacity) <= 1.0:
        raise ValueError(f"opacity must lie in [0, 1], got {opacity}")
    image = _unit_map(gray, "image")
    heat = _same_shape(heatmap, image.shape)
    colours = colorize(heat, colormap).astype(np.float32) / 255.0
    alpha = float(opacity) * heat[..., None]
    blended = (1.0 - alpha) * image[..., None] + alpha * colours
    return np.round(blended * 255.0).astype(np.uint8)


@dataclass(frozen=True)
class HotRegion:
    """The connected region around the heatmap's peak where the heat is at or above `level`."""

    mask: np.ndarray
    contour: np.ndarray
    """Outline points as OpenCV gives them: (n, 1, 2) int32 (x, y)."""
    box: tuple[int, int, int, int]
    """x, y of the top-left pixel, then width and height, all in pixels."""
    level: float


def hot_region(
    heatmap: np.ndarray, *, quantile: float = DEFAULT_QUANTILE, threshold: float | None = None
) -> HotRegion | None:
    """The hottest region: pixels connected to the peak whose heat reaches the given quantile (or threshold).

    None when the map is flat (nothing stands out) or nothing reaches `threshold`.
    """
    heat = _unit_map(heatmap, "heatmap")
    if threshold is not None:
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
        level = float(threshold)
    else:
        if not 0.0 < float(quantile) < 1.0:
            raise ValueError(f"quantile must lie strictly between 0 and 1, got {quantile}")
        level = float(np.quantile(heat, quantile))
    above = (heat >= level) & (heat > heat.min())  # the background minimum never counts as "hot"
    if not above.any():
        return None
    _, labels = cv2.connectedComponents(above.astype(np.uint8), connectivity=8)
    peak = np.unravel_index(np.argmax(heat), heat.shape)  # the peak is always above the level
    mask = labels == labels[peak]
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    x, y, width, height = cv2.boundingRect(mask.astype(np.uint8))
    box = (int(x), int(y), int(width), int(height))
    return HotRegion(mask=mask, contour=max(contours, key=len), box=box, level=level)


def draw_outline(
    rgb: np.ndarray,
    heatmap: np.ndarray,
    style: str | None = "contour",
    *,
    quantile: float = DEFAULT_QUANTILE,
    color: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """A copy of `rgb` with the hottest region outlined; `style` None leaves it as is.

    The line is drawn over a dark halo so it stays visible on any colour of the map.
    """
    if style not in OUTLINE_STYLES:
        raise ValueError(f"unknown outline style {style!r}; choose from {', '.join(map(str, OUTLINE_STYLES))}")
    image = np.asarray(rgb)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 image (height, width, 3), got {image.dtype} {image.shape}")
    heat = _same_shape(heatmap, image.shape)
    out = image.copy()
    region = hot_region(heat, quantile=quantile) if style else None
    if region is None:
        return out
    thickness = max(1, round(min(image.shape[:2]) / 256))
    for line_color, width in (((0, 0, 0), thickness + 2), (tuple(int(c) for c in color), thickness)):
        if style == "box":
            x, y, w, h = region.box
            cv2.rectangle(out, (x, y), (x + w - 1, y + h - 1), line_color, width)
        else:
            cv2.drawContours(out, [region.contour], -1, line_color, width)
    return out


def outline_region(gray: np.ndarray, region: np.ndarray, color: tuple[int, int, int] = (0, 200, 80)) -> np.ndarray:
    """The grayscale image as RGB uint8 with the outline of `region` (e.g. the lungs) drawn over a dark halo."""
    image = _unit_map(gray, "image")
    mask = np.asarray(region, bool)
    if mask.shape != image.shape:
        raise ValueError(f"region shape {mask.shape} differs from the image's {image.shape}")
    rgb = np.repeat(np.round(image * 255).astype(np.uint8)[..., None], 3, axis=-1)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    thickness = max(1, round(min(image.shape) / 256))
    cv2.drawContours(rgb, contours, -1, (0, 0, 0), thickness + 2)
    cv2.drawContours(rgb, contours, -1, color, thickness)
    return rgb


def render_overlay(
    gray: np.ndarray,
    heatmap: np.ndarray,
    *,
    opacity: float = DEFAULT_OPACITY,
    colormap: str = DEFAULT_COLORMAP,
    outline: str | None = "contour",
) -> np.ndarray:
    """The overlay as LungViz shows and exports it: the heatmap blended on the image, its hottest region outlined."""
    return draw_outline(overlay_heatmap(gray, heatmap, opacity=opacity, colormap=colormap), heatmap, outline)
