"""Agreement between models: Spearman against its textbook definition, hottest regions, and the per-file summary."""

from __future__ import annotations

import numpy as np
import pytest

from lungviz.inference.agreement import assess_agreement, hottest, iou, on_grid, ranks, spearman
from lungviz.inference.prediction import ModelResult
from tests.model_factory import model_result


def test_ranks_average_ties_as_spearman_needs():
    np.testing.assert_array_equal(ranks(np.array([10.0, 30.0, 20.0, 30.0, 5.0])), [2, 4.5, 3, 4.5, 1])


@pytest.mark.parametrize("seed", range(4))
def test_spearman_is_pearson_of_ranks_and_ignores_monotone_rescaling(seed):
    rng = np.random.default_rng(seed)
    first = rng.random((16, 16))
    second = 0.6 * first + 0.4 * rng.random((16, 16))
    second[second < 0.3] = 0  # a ReLU'd map: many ties, as Grad-CAM has
    expected = np.corrcoef(ranks(first), ranks(second))[0, 1]
    assert spearman(first, second) == pytest.approx(expected)
    assert spearman(first, np.exp(5 * first)) == pytest.approx(1.0)
    assert spearman(first, -first) == pytest.approx(-1.0)
    assert spearman(first, np.zeros_like(first)) is None


def test_the_hottest_tenth_keeps_ties_and_never_takes_cold_cells():
    ramp = np.arange(100, dtype=float).reshape(10, 10)
    assert hottest(ramp).sum() == 10
    assert hottest(ramp)[-1].all()
    sparse = np.zeros((10, 10))
    sparse[0, :4] = 1.0  # heat on 4% of the map
    assert hottest(sparse).sum() == 4
    assert not hottest(np.zeros((10, 10))).any()


def test_iou_of_masks():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2], b[1:3] = True, True
    assert iou(a, b) == pytest.approx(4 / 12)
    assert iou(a, a) == 1.0
    assert iou(np.zeros_like(a), np.zeros_like(a)) is None


def test_maps_of_different_resolutions_meet_on_the_grid():
    blob = np.exp(-((np.mgrid[:300, :200][0] - 80.0) ** 2) / 800)
    assert on_grid(blob).shape == (64, 64)
    assert spearman(on_grid(blob), on_grid(blob[::3, ::3])) > 0.99


def result(name: str, p: float, heatmap: np.ndarray | None, threshold: float = 0.5) -> ModelResult:
    return model_result(name, p, threshold, heatmap=heatmap)


def blob(row: float, column: float, shape=(240, 200)) -> np.ndarray:
    rows, columns = np.mgrid[: shape[0], : shape[1]] / np.array(shape)[:, None, None]
    return np.exp(-((rows - row) ** 2 + (columns - column) ** 2) / 0.02).astype(np.float32)


def test_agreeing_models_raise_nothing_and_disagreeing_ones_are_named():
    left, also_left, right = blob(0.5, 0.25), blob(0.55, 0.3), blob(0.5, 0.8)
    calm = assess_agreement([result("a", 0.8, left), result("b", 0.9, also_left)])
    assert calm is not None
    assert not calm.decisions_differ
    assert calm.disagreements() == []
    assert calm.rank_correlation[("a", "b")] > 0.8
    assert calm.hottest_iou[("a", "b")] > 0.3

    split = assess_agreement([result("a", 0.8, left), result("b", 0.2, left), result("c", 0.7, right)])
    assert split is not None
    assert split.decisions_differ
    assert split.ensemble == pytest.approx(
        {"mean": 0.5666667, "std": float(np.std([0.8, 0.2, 0.7])), "min": 0.2, "max": 0.8}
    )
    assert split.hottest_iou[("a", "c")] == 0
    found = split.disagreements()
    assert found[0] == "the decisions differ (a, c: PNEUMONIA; b: NORMAL)"
    assert [line.split(" look")[0] for line in found[1:]] == ["a and c", "b and c"]


def test_the_record_names_pairs_and_leaves_out_models_without_a_heatmap():
    results = [result("a", 0.8, blob(0.5, 0.3)), result("b", 0.6, blob(0.5, 0.35)), result("c", 0.7, None)]
    record = assess_agreement(results).to_dict()
    assert set(record) == {"ensemble", "decisions_differ", "heatmap_rank_correlation", "hottest_10pct_iou"}
    assert record["ensemble"]["mean"] == pytest.approx(0.7)
    assert list(record["heatmap_rank_correlation"]) == ["a|b"]
    assert list(record["hottest_10pct_iou"]) == ["a|b"]
    assert record["decisions_differ"] is False
    assert assess_agreement([]) is None


def test_a_flat_map_has_no_correlation_rather_than_a_made_up_one():
    flat = result("b", 0.6, np.zeros((240, 200), np.float32))
    agreement = assess_agreement([result("a", 0.8, blob(0.5, 0.3)), flat])
    assert agreement.rank_correlation[("a", "b")] is None
    assert agreement.hottest_iou[("a", "b")] == 0.0
    assert agreement.disagreements() == []
