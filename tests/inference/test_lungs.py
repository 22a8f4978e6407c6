"""Finding the lungs: CT from Hounsfield units and from lung-window pictures, X-ray through the segmenter."""

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from lungviz.inference.images import CT_WINDOWS, apply_window, load_image
from lungviz.inference.lungs import (
    Lungs,
    XrayLungSegmenter,
    ct_lungs_from_hounsfield,
    ct_lungs_from_intensity,
    dice,
    load_segmenter,
)
from lungviz.models.registry import DEFAULT_WEIGHTS_DIR
from tests.images_factory import chest_hounsfield, chest_regions


def _abdomen_hounsfield(height: int = 320, width: int = 256) -> np.ndarray:
    """An abdominal slice: soft tissue and organs, a few small pockets of bowel gas, air around it."""
    y, x = np.mgrid[-1 : 1 : height * 1j, -1 : 1 : width * 1j]
    hu = np.full((height, width), -1000.0)
    hu[(x / 0.9) ** 2 + (y / 0.8) ** 2 < 1] = 45
    for cx, cy in ((-0.3, -0.2), (0.25, 0.1), (0.0, 0.4), (0.4, -0.35)):
        hu[((x - cx) / 0.06) ** 2 + ((y - cy) / 0.05) ** 2 < 1] = -950
    return hu + np.random.default_rng(0).normal(0, 8, hu.shape)


@pytest.mark.parametrize(
    "finder",
    [ct_lungs_from_hounsfield, lambda hu: ct_lungs_from_intensity(apply_window(hu, CT_WINDOWS["lung"]))],
    ids=["hounsfield", "lung-window picture"],
)
def test_ct_lungs_are_the_air_inside_the_body_not_around_it(finder):
    hu = chest_hounsfield().astype(np.float32)
    truth = chest_regions(*hu.shape)["lungs"]
    lungs = finder(hu)
    assert lungs.found
    assert dice(lungs.mask, truth) > 0.9
    assert not lungs.mask[0].any()  # the air above the patient is outside
    x0, y0, x1, y1 = lungs.box
    rows, cols = np.flatnonzero(truth.any(axis=1)), np.flatnonzero(truth.any(axis=0))
    assert abs(x0 - cols[0]) <= 3
    assert abs(x1 - cols[-1] - 1) <= 3
    assert abs(y0 - rows[0]) <= 3
    assert abs(y1 - rows[-1] - 1) <= 3


@pytest.mark.parametrize(
    ("column", "radius", "share"),
    [(74, 12, 0.99), (45, 8, 0.65)],  # against the wall only the closing recovers it, and only in part
    ids=["central", "against the chest wall"],
)
def test_a_dense_finding_inside_a_lung_counts_as_lung(column, radius, share):
    hu = chest_hounsfield().astype(np.float32)
    regions = chest_regions(*hu.shape)
    y, x = np.mgrid[: hu.shape[0], : hu.shape[1]]
    consolidation = regions["lungs"] & ((x - column) ** 2 + (y - 150) ** 2 < radius**2)
    hu[consolidation] = 30  # as dense as soft tissue
    lungs = ct_lungs_from_hounsfield(hu)
    assert lungs.mask[consolidation].mean() >= share


@pytest.mark.parametrize(
    "finder", [ct_lungs_from_hounsfield, lambda hu: ct_lungs_from_intensity(apply_window(hu, CT_WINDOWS["lung"]))]
)
def test_an_abdominal_slice_has_no_lungs(finder):
    lungs = finder(_abdomen_hounsfield())
    assert not lungs.found
    assert lungs.box is None
    assert lungs.crop_box() == (0, 0, 256, 320)  # a task chosen by hand still sees the whole image
    assert lungs.to_dict()["found"] is False


def test_crop_box_adds_the_margin_inside_the_image():
    mask = np.zeros((100, 200), bool)
    mask[20:60, 50:150] = True
    lungs = Lungs(mask, True, "test")
    assert lungs.box == (50, 20, 150, 60)
    assert lungs.crop_box(0.1) == (40, 16, 160, 64)
    assert lungs.crop_box(1.0) == (0, 0, 200, 100)
    assert lungs.to_dict() == {"found": True, "box": [50, 20, 150, 60], "fraction": 0.2}


def test_dice_counts_overlap_and_two_empty_masks_agree():
    a, b = np.zeros((10, 10), bool), np.zeros((10, 10), bool)
    assert dice(a, b) == 1.0
    a[:5] = True
    b[2:7] = True
    assert dice(a, b) == pytest.approx(2 * 30 / 100)


def _stub_segmenter(level: float) -> XrayLungSegmenter:
    """A segmenter whose network answers `level` inside two lung-shaped ellipses and 0 elsewhere."""
    size = (64, 64)
    y, x = np.mgrid[-1 : 1 : size[0] * 1j, -1 : 1 : size[1] * 1j]
    lungs = (((np.abs(x) - 0.45) / 0.3) ** 2 + (y / 0.7) ** 2) < 1
    answer = tf.constant((lungs * level)[None, :, :, None], tf.float32)

    def network(batch, training=False):
        return tf.repeat(answer, tf.shape(batch)[0], axis=0)

    return XrayLungSegmenter(network, {"input_size": list(size), "threshold": 0.5})


def test_the_segmenter_mask_comes_back_at_the_images_resolution():
    lungs = _stub_segmenter(0.97).segment(np.full((300, 240), 0.5, np.float32))
    assert lungs.found
    assert lungs.mask.shape == (300, 240)
    assert 0.2 < lungs.fraction < 0.45
    x0, _, x1, _ = lungs.box  # the ellipses span |x| in [0.15, 0.75] of the half-width
    assert abs(x0 - 30) <= 3
    assert abs(x1 - 210) <= 3


def test_a_hesitant_segmenter_finds_no_lungs():
    assert not _stub_segmenter(0.6).segment(np.full((128, 128), 0.5, np.float32)).found


def test_real_ct_slices_from_both_paths(shared_data):
    from pydicom.data import get_testdata_file

    dicom = load_image(Path(get_testdata_file("CT_small.dcm")).read_bytes(), "CT_small.dcm")
    lungs = ct_lungs_from_hounsfield(dicom.hounsfield)
    assert lungs.found
    assert lungs.box[3] <= dicom.pixels.shape[0] * 0.6  # its lungs are the two upper corners of the crop
    slices = sorted((shared_data / "sars_cov2_ct" / "test").glob("*/*.jpg"))
    found = [ct_lungs_from_intensity(load_image(path.read_bytes(), path.name).pixels).found for path in slices]
    assert np.mean(found) >= 0.98


@pytest.fixture(scope="module")
def shipped_segmenter() -> XrayLungSegmenter:
    segmenter = load_segmenter(DEFAULT_WEIGHTS_DIR)
    assert segmenter is not None, "the repository ships the X-ray lung segmenter in weights/lungs"
    return segmenter


def test_shipped_segmenter_outlines_real_lungs(shipped_segmenter, shared_data):
    from lungviz.training.segmentation import load_masked_split

    data = load_masked_split(shared_data / "covid_qu_ex_infection", "val")
    chosen = np.random.default_rng(0).choice(len(data.images), 40, replace=False)
    scores = [dice(shipped_segmenter.segment(data.images[i] / 255.0).mask, data.masks[i]) for i in chosen]
    assert np.mean(scores) > 0.93


def test_shipped_segmenter_finds_no_lungs_in_photos(shipped_segmenter):
    from lungviz.training.gate import natural_images

    pictures = natural_images()
    found = [name for name, pixels in pictures.items() if shipped_segmenter.segment(pixels).found]
    assert len(found) <= 2, found
