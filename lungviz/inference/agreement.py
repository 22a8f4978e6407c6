"""Do the models agree? Their decisions, the ensemble's probability and spread, and how alike their heatmaps are.

Where models disagree (different decisions, or heatmaps that rank the image's
regions differently) is where a reader should look first. Maps are compared on
a common coarse grid (64 x 64) by Spearman rank correlation, which ignores how
each method scales its heat, and by the overlap (IoU) of each map's hottest
tenth. Plain numpy: scipy is not a runtime dependency.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

if TYPE_CHECKING:
    from lungviz.inference.prediction import ModelResult

GRID = 64
"""Side of the common grid the maps are compared on: coarser than any CAM's detail is not needed."""
HOTTEST = 0.1
"""The share of each map called its hottest region."""
LOW_CORRELATION = 0.3
"""Rank correlation below which two maps are said to point at different places."""


def on_grid(heatmap: np.ndarray, size: int = GRID) -> np.ndarray:
    """A map averaged down (or stretched) to size x size, so maps of any resolution compare cell by cell."""
    heatmap = np.asarray(heatmap, np.float32)
    shrinking = heatmap.shape[0] > size or heatmap.shape[1] > size
    return cv2.resize(heatmap, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of the flattened values, ties given their average rank (as Spearman's coefficient needs)."""
    flat = np.asarray(values, np.float64).ravel()
    _, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts  # 0-based position of each distinct value's first copy in sorted order
    return (first + (counts + 1) / 2.0)[inverse]


def spearman(first: np.ndarray, second: np.ndarray) -> float | None:
    """Spearman rank correlation of two maps of the same shape; None when either is constant (no order to compare)."""
    a, b = ranks(first), ranks(second)
    a, b = a - a.mean(), b - b.mean()
    spread = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return None if spread == 0 else float((a * b).sum() / spread)


def hottest(heatmap: np.ndarray, fraction: float = HOTTEST) -> np.ndarray:
    """The map's hottest `fraction` of cells, as a boolean mask.

    Cells tied with the last one included all count, and cells without heat
    never do: a map hot on 4% of the image has a 4% region, not 4% plus
    arbitrary cold cells.
    """
    values = np.asarray(heatmap, np.float64)
    count = max(1, round(fraction * values.size))
    cutoff = np.partition(values.ravel(), values.size - count)[values.size - count]
    return (values >= cutoff) & (values > 0)


def iou(first: np.ndarray, second: np.ndarray) -> float | None:
    """|A and B| / |A or B| of two masks; None when both are empty."""
    union = int(np.logical_or(first, second).sum())
    return None if union == 0 else float(np.logical_and(first, second).sum()) / union


@dataclass(frozen=True)
class Agreement:
    """How the models of one task agree on one image."""

    positive_class: str
    probabilities: dict[str, float]
    """Each model's calibrated P(positive class), by model name."""
    decisions: dict[str, str]
    rank_correlation: dict[tuple[str, str], float | None] = field(default_factory=dict)
    """Spearman r of each pair of models' heatmaps; None where a map is flat."""
    hottest_iou: dict[tuple[str, str], float | None] = field(default_factory=dict)
    """IoU of each pair's hottest 10%; None where neither map has heat."""

    @property
    def ensemble(self) -> dict[str, float]:
        """Mean P(positive) over the models and its spread: standard deviation (population), min and max."""
        values = np.array(list(self.probabilities.values()))
        return {
            "mean": float(values.mean()),
            "std": float(values.std()),
            "min": float(values.min()),
            "max": float(values.max()),
        }

    @property
    def decisions_differ(self) -> bool:
        return len(set(self.decisions.values())) > 1

    def disagreements(self, low_correlation: float = LOW_CORRELATION) -> list[str]:
        """What a reader should look at first, one phrase each: split decisions, then maps that point elsewhere."""
        found = []
        if self.decisions_differ:
            by_decision: dict[str, list[str]] = {}
            for name, decision in self.decisions.items():
                by_decision.setdefault(decision, []).append(name)
            found.append(
                "the decisions differ (" + "; ".join(f"{', '.join(n)}: {d}" for d, n in by_decision.items()) + ")"
            )
        for (first, second), r in self.rank_correlation.items():
            if r is not None and r < low_correlation:
                found.append(f"{first} and {second} look at different places (rank correlation {r:.2f})")
        return found

    def to_dict(self) -> dict[str, Any]:
        """The CLI's `agreement` record; a pair of models is named "a|b"."""

        def rounded(values: dict[tuple[str, str], float | None]) -> dict[str, float | None]:
            return {f"{a}|{b}": None if value is None else round(value, 4) for (a, b), value in values.items()}

        return {
            "ensemble": {key: round(value, 6) for key, value in self.ensemble.items()},
            "decisions_differ": self.decisions_differ,
            "heatmap_rank_correlation": rounded(self.rank_correlation),
            "hottest_10pct_iou": rounded(self.hottest_iou),
        }


def assess_agreement(results: Sequence[ModelResult], grid: int = GRID, fraction: float = HOTTEST) -> Agreement | None:
    """The agreement of one file's models (None when no model ran); maps are compared where both models made one."""
    if not results:
        return None
    maps = {r.name: on_grid(r.heatmap, grid) for r in results if r.heatmap is not None}
    regions = {name: hottest(heatmap, fraction) for name, heatmap in maps.items()}
    pairs = list(combinations(maps, 2))
    return Agreement(
        positive_class=results[0].positive_class,
        probabilities={r.name: r.positive_probability for r in results},
        decisions={r.name: r.predicted for r in results},
        rank_correlation={(a, b): spearman(maps[a], maps[b]) for a, b in pairs},
        hottest_iou={(a, b): iou(regions[a], regions[b]) for a, b in pairs},
    )
