import cv2
import numpy as np
import pytest

from lungviz.reporting.overlay import (
    COLORMAPS,
    colorize,
    draw_outline,
    hot_region,
    outline_region,
    overlay_heatmap,
)

SHAPE = (120, 90)
BLOB = (40, 60)  # row, column of the planted hot spot


def _chest(shape=SHAPE) -> np.ndarray:
    """A [0, 1] grayscale image with a bright body and some noise, like a small radiograph."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    body = np.exp(-(((rows - shape[0] / 2) / (shape[0] / 2.5)) ** 2 + ((cols - shape[1] / 2) / (shape[1] / 3)) ** 2))
    return np.clip(0.15 + 0.7 * body + 0.03 * np.random.default_rng(0).normal(size=shape), 0, 1).astype(np.float32)


def _heatmap(shape=SHAPE, blob=BLOB, radius: float = 6.0) -> np.ndarray:
    """A CAM-like map: a strong blob, a weaker one elsewhere, faint noise; normalised to [0, 1]."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    heat = np.exp(-((rows - blob[0]) ** 2 + (cols - blob[1]) ** 2) / (2 * radius**2))
    heat += 0.6 * np.exp(-((rows - 95) ** 2 + (cols - 20) ** 2) / (2 * radius**2))
    heat += 0.02 * np.random.default_rng(1).random(shape)
    return ((heat - heat.min()) / (heat.max() - heat.min())).astype(np.float32)


@pytest.mark.parametrize("colormap", COLORMAPS)
def test_overlay_is_rgb_uint8_at_the_image_size(colormap):
    rgb = overlay_heatmap(_chest(), _heatmap(), opacity=0.6, colormap=colormap)
    assert rgb.shape == (*SHAPE, 3)
    assert rgb.dtype == np.uint8


def test_zero_opacity_gives_back_the_grayscale_image():
    gray = _chest()
    rgb = overlay_heatmap(gray, _heatmap(), opacity=0.0)
    expected = np.round(gray * 255).astype(np.uint8)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], expected)


def test_cold_pixels_stay_anatomy_and_the_hottest_get_the_full_opacity():
    gray, heat = _chest(), _heatmap()
    rgb = overlay_heatmap(gray, heat, opacity=1.0, colormap="inferno").astype(int)
    coldest = np.unravel_index(np.argmin(heat), SHAPE)
    assert np.abs(rgb[coldest] - round(gray[coldest] * 255)).max() <= 1
    np.testing.assert_array_equal(rgb[BLOB], colorize(np.ones((1, 1)), "inferno")[0, 0])
    # halfway between: half the colour, half the image
    half = np.unravel_index(np.argmin(np.abs(heat - 0.5)), SHAPE)
    expected = (1 - heat[half]) * gray[half] * 255 + heat[half] * colorize(heat, "inferno")[half]
    np.testing.assert_allclose(rgb[half], expected, atol=1)


def test_hot_region_box_encloses_the_planted_blob_and_only_it():
    heat = _heatmap()
    region = hot_region(heat, quantile=0.95)
    x, y, width, height = region.box
    core_rows, core_cols = np.nonzero(heat > 0.8)  # the blob's core
    assert x <= core_cols.min()
    assert core_cols.max() < x + width
    assert y <= core_rows.min()
    assert core_rows.max() < y + height
    assert not region.mask[95, 20], "the weaker second blob is not the hottest region"
    assert width < SHAPE[1] / 3
    assert height < SHAPE[0] / 3


def test_a_threshold_overrides_the_quantile():
    heat = _heatmap()
    strict, loose = hot_region(heat, threshold=0.5), hot_region(heat, threshold=0.2)
    assert strict.level == 0.5
    assert heat[strict.mask].min() >= 0.5
    assert strict.mask.sum() < loose.mask.sum()
    assert not (strict.mask & ~loose.mask).any()


@pytest.mark.parametrize("style", ["contour", "box"])
def test_outline_surrounds_the_blob_and_leaves_the_rest_alone(style):
    heat = _heatmap()
    rgb = overlay_heatmap(_chest(), heat)
    outlined = draw_outline(rgb, heat, style)
    changed_rows, changed_cols = np.nonzero(np.any(outlined != rgb, axis=-1))
    assert changed_rows.size > 0
    assert changed_rows.min() < BLOB[0] < changed_rows.max()
    assert changed_cols.min() < BLOB[1] < changed_cols.max()
    assert max(abs(changed_rows - BLOB[0]).max(), abs(changed_cols - BLOB[1]).max()) < 25
    np.testing.assert_array_equal(outlined[BLOB], rgb[BLOB])  # the evidence itself is not painted over


def test_no_outline_for_style_none_or_a_flat_map():
    rgb = overlay_heatmap(_chest(), _heatmap())
    np.testing.assert_array_equal(draw_outline(rgb, _heatmap(), None), rgb)
    flat = np.zeros(SHAPE, np.float32)
    assert hot_region(flat) is None
    np.testing.assert_array_equal(draw_outline(rgb, flat, "box"), rgb)


def test_outline_contour_follows_the_region():
    heat = _heatmap()
    region = hot_region(heat)
    drawn = np.zeros(SHAPE, np.uint8)
    cv2.drawContours(drawn, [region.contour], -1, 1, cv2.FILLED)
    assert np.array_equal(drawn.astype(bool), region.mask)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda g, h: overlay_heatmap(g, h, opacity=1.5), "opacity"),
        (lambda g, h: overlay_heatmap(g, h, colormap="rainbow"), "unknown colour map"),
        (lambda g, h: overlay_heatmap(g, h[:60]), "differs from the image"),
        (lambda g, h: overlay_heatmap(np.stack([g] * 3, -1), h), "2-D"),
        (lambda g, h: overlay_heatmap(g * 255, h), r"\[0, 1\]"),
        (lambda g, h: overlay_heatmap(g, np.where(h > 0.5, np.nan, h)), "NaN"),
        (lambda g, h: draw_outline(overlay_heatmap(g, h), h, "circle"), "unknown outline style"),
        (lambda g, h: draw_outline(g, h), "RGB uint8"),
        (lambda g, h: hot_region(h, quantile=1.0), "quantile"),
        (lambda g, h: hot_region(h, threshold=2.0), "threshold"),
    ],
)
def test_invalid_arguments_raise_value_error_with_a_clear_message(call, message):
    with pytest.raises(ValueError, match=message):
        call(_chest(), _heatmap())


def test_a_region_outline_follows_its_edge_and_leaves_the_rest_gray():
    gray = np.full((64, 80), 0.5, np.float32)
    region = np.zeros((64, 80), bool)
    region[16:48, 20:60] = True
    rgb = outline_region(gray, region)
    assert rgb.shape == (64, 80, 3)
    assert tuple(rgb[16, 30]) == (0, 200, 80)  # on the edge
    assert tuple(rgb[32, 40]) == (128, 128, 128)  # inside, untouched
    assert tuple(rgb[2, 2]) == (128, 128, 128)  # far outside, untouched
    with pytest.raises(ValueError, match="region shape"):
        outline_region(gray, region[:10])
