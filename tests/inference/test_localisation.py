import numpy as np
import pytest

from lungviz.inference.localisation import heat_share, heatmap_peak, pointing_hit


def _map_with_peak_at(x: int, y: int, shape=(40, 60)) -> np.ndarray:
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return np.exp(-((cols - x) ** 2 + (rows - y) ** 2) / 20.0).astype(np.float32)


def test_heat_share_is_the_fraction_of_heat_in_the_region():
    heat = np.zeros((4, 4), np.float32)
    heat[0, 0], heat[3, 3] = 3.0, 1.0
    region = np.zeros((4, 4), bool)
    region[:2, :2] = True
    assert heat_share(heat, region) == pytest.approx(0.75)
    assert heat_share(heat, ~region) == pytest.approx(0.25)
    assert heat_share(np.zeros((4, 4)), region) is None


def test_peak_is_x_then_y_in_image_pixels_and_a_map_without_heat_has_none():
    assert heatmap_peak(_map_with_peak_at(x=50, y=7)) == (50, 7)
    assert heatmap_peak(np.zeros((5, 5))) is None
    assert pointing_hit(np.zeros((5, 5)), np.ones((5, 5), bool), tolerance=5) is False


@pytest.mark.parametrize(("tolerance", "hit"), [(0, False), (2, False), (3, True)])
def test_pointing_game_tolerance_grows_the_region(tolerance, hit):
    region = np.zeros((40, 60), bool)
    region[10:20, 10:20] = True
    heat = _map_with_peak_at(x=22, y=15)  # three columns right of the region
    assert pointing_hit(heat, region, tolerance) is hit
