"""Where a heatmap's evidence lies, measured against a region: share of heat inside, peak, pointing game.

Pure numpy on a heatmap and a mask at the image's resolution, so the
dashboard, the CLI and the localisation report all measure alike.
"""

from __future__ import annotations

import numpy as np


def heat_share(heatmap: np.ndarray, region: np.ndarray) -> float | None:
    """The share of the map's total heat that falls inside `region` (0-1); None for a map without heat."""
    heat = np.asarray(heatmap, np.float64)
    total = heat.sum()
    if total <= 0:
        return None
    return float(heat[np.asarray(region, bool)].sum() / total)


def heatmap_peak(heatmap: np.ndarray) -> tuple[int, int] | None:
    """(x, y) of the map's maximum in its pixels (the first of ties); None for a map without heat."""
    if not np.max(heatmap) > 0:
        return None
    row, column = np.unravel_index(int(np.argmax(heatmap)), np.shape(heatmap))
    return int(column), int(row)


def pointing_hit(heatmap: np.ndarray, region: np.ndarray, tolerance: int = 0) -> bool:
    """Whether the map's peak lies inside `region` grown by `tolerance` pixels (the pointing game)."""
    peak = heatmap_peak(heatmap)
    if peak is None:
        return False
    x, y = peak
    mask = np.asarray(region, bool)
    y0, y1 = max(0, y - tolerance), min(mask.shape[0], y + tolerance + 1)
    x0, x1 = max(0, x - tolerance), min(mask.shape[1], x + tolerance + 1)
    return bool(mask[y0:y1, x0:x1].any())
