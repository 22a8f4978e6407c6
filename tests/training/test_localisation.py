"""Scoring where heatmaps point: annotated regions read from made-up data, pointing game and heat inside."""

import csv
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from lungviz.errors import DatasetError
from lungviz.inference.prediction import Classifier, ModelResult
from lungviz.training.localisation import (
    best_layer,
    compare_layers,
    covid_qu_ex_infections,
    localisation_scores,
    nih_boxes,
    sample_images,
)
from tests.model_factory import nested_sigmoid_model, write_model


def _write_rows(path, rows):
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_qu_ex_infection_masks_leave_out_the_whole_lung_ones(tmp_path):
    rows = []
    for index, fraction in enumerate(["0.4", "1.0", "0.2"]):
        image, mask = f"val/COVID/images/c{index}.jpg", f"val/COVID/infection_masks/c{index}.png"
        for path in (image, mask):
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / image), np.full((32, 32), 100, np.uint8))
        region = np.zeros((32, 32), np.uint8)
        region[4:10, 4:10] = 255
        cv2.imwrite(str(tmp_path / mask), region)
        rows.append({"file": image, "split": "val", "label": "COVID", "infection_mask": mask,
                     "infection_fraction_of_lung": fraction})  # fmt: skip
    rows.append({"file": "val/Normal/images/n.jpg", "split": "val", "label": "Normal", "infection_mask": "",
                 "infection_fraction_of_lung": ""})  # fmt: skip
    _write_rows(tmp_path / "labels.csv", rows)
    images, whole_lung = covid_qu_ex_infections(tmp_path)
    assert [image.name for image in images] == ["val/COVID/images/c0.jpg", "val/COVID/images/c2.jpg"]
    assert whole_lung == 1
    assert images[0].region.sum() == 36


def test_nih_boxes_of_one_image_form_one_region(tmp_path):
    (tmp_path / "test" / "PNEUMONIA").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "test/PNEUMONIA/a.jpg"), np.full((64, 64), 90, np.uint8))
    _write_rows(tmp_path / "boxes.csv", [
        {"file": "test/PNEUMONIA/a.jpg", "finding": "Pneumonia", "x": "2.5", "y": "4", "w": "10", "h": "5"},
        {"file": "test/PNEUMONIA/a.jpg", "finding": "Pneumonia", "x": "40", "y": "40", "w": "4", "h": "4"},
        {"file": "test/PNEUMONIA/a.jpg", "finding": "Mass", "x": "0", "y": "0", "w": "60", "h": "60"},
    ])  # fmt: skip
    (image,) = nih_boxes(tmp_path)
    assert image.region.sum() == 11 * 5 + 16
    assert image.region[4, 2]
    assert not image.region[3, 2]


class _PeakAt:
    """A stand-in model whose heatmap peaks where told, so the scores have a known answer."""

    card = SimpleNamespace(positive_class="PNEUMONIA")

    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def run(self, pixels, method, target, lungs):
        rows, cols = np.mgrid[: pixels.shape[0], : pixels.shape[1]]
        heat = np.exp(-((cols - self.x) ** 2 + (rows - self.y) ** 2) / 8.0).astype(np.float32)
        return ModelResult("m", "a", ["NORMAL", "PNEUMONIA"], "PNEUMONIA", {"NORMAL": 0.2, "PNEUMONIA": 0.8},
                           "PNEUMONIA", 0.5, 0.0, method, target, heat)  # fmt: skip


def _annotated(count=5):
    from lungviz.training.localisation import AnnotatedImage

    region = np.zeros((100, 100), bool)
    region[10:30, 10:30] = True
    return [AnnotatedImage(f"i{i}", "made up", np.full((100, 100), 0.5, np.float32), region) for i in range(count)]


def test_a_map_peaking_inside_the_region_hits_and_puts_its_heat_there():
    scores = localisation_scores(_PeakAt(20, 20), _annotated(), "gradcam")
    assert scores["pointing_hit_rate"] == {"value": 1.0, "ci95": [1.0, 1.0]}
    assert scores["heat_inside"]["value"] > 0.99
    assert scores["region_share_of_image"] == pytest.approx(0.04)


def test_a_peak_just_outside_counts_within_the_tolerance_and_not_beyond():
    assert localisation_scores(_PeakAt(31, 20), _annotated(), "gradcam")["pointing_hit_rate"]["value"] == 1.0
    far = localisation_scores(_PeakAt(60, 60), _annotated(), "gradcam")
    assert far["pointing_hit_rate"]["value"] == 0.0
    assert far["heat_inside"]["value"] < 0.01


def _scores(hit: float, inside: float) -> dict:
    return {"pointing_hit_rate": {"value": hit}, "heat_inside": {"value": inside}}


def test_the_best_layer_points_most_often_and_heat_inside_breaks_ties():
    assert best_layer({"a": _scores(0.2, 0.5), "b": _scores(0.4, 0.1)}) == "b"
    assert best_layer({"a": _scores(0.4, 0.3), "b": _scores(0.4, 0.1)}) == "a"
    with pytest.raises(DatasetError, match="no candidate"):
        best_layer({})


def test_layers_are_compared_on_a_real_model_nested_layers_included_and_absent_ones_skipped(tmp_path):
    model = nested_sigmoid_model()
    card = write_model(tmp_path, "xray-pneumonia", "nested", model, head="sigmoid", cam_layer="base_last_conv")
    classifier = Classifier(card, model)
    scored = compare_layers(classifier, _annotated(2), ["base_conv1", "base_last_conv", "no_such_layer"], "gradcam")
    assert list(scored) == ["base_conv1", "base_last_conv"]
    for scores in scored.values():
        assert scores["images"] == 2
        assert 0.0 <= scores["heat_inside"]["value"] <= 1.0
    assert classifier.card.cam_layer == "base_last_conv"  # the shipped card is not changed by comparing


def test_a_sample_is_fixed_and_keeps_order():
    images = _annotated(10)
    sample = sample_images(images, 4)
    assert [image.name for image in sample] == [image.name for image in sample_images(images, 4)]
    assert [image.name for image in sample] == sorted(image.name for image in sample)
    assert len(sample) == 4
    assert sample_images(images, 20) == images
