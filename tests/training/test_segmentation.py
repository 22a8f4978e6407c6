"""Training the lung segmenter on a tiny made-up COVID-QU-Ex-shaped data set."""

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from lungviz.errors import DatasetError
from lungviz.inference.lungs import SEGMENTER_CARD, XrayLungSegmenter
from lungviz.training.segmentation import dice_loss, load_masked_split, train_segmenter
from tests.images_factory import chest_radiograph, chest_regions, to_8bit


def write_masked_dataset(root: Path, per_split: dict[str, int]) -> Path:
    """Radiographs with their lung masks in the COVID-QU-Ex layout, labels.csv included."""
    rows = []
    for split, count in per_split.items():
        for index in range(count):
            label = ("COVID", "Normal")[index % 2]
            height, width = 64 + 8 * (index % 3), 64
            stem = f"{label.lower()}_{index}"
            image, mask = f"{split}/{label}/images/{stem}.jpg", f"{split}/{label}/lung_masks/{stem}.png"
            for path in (image, mask):
                (root / path).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / image), to_8bit(chest_radiograph(height, width, seed=index)))
            cv2.imwrite(str(root / mask), chest_regions(height, width)["lungs"].astype(np.uint8) * 255)
            rows.append({"file": image, "split": split, "label": label, "lung_mask": mask})
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "split", "label", "lung_mask"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_dice_loss_is_zero_for_a_perfect_mask_and_near_one_for_its_complement():
    truth = np.zeros((2, 8, 8, 1), np.float32)
    truth[:, 2:6, 2:6] = 1
    assert float(dice_loss(truth, truth)) == pytest.approx(0.0, abs=0.05)
    assert float(dice_loss(truth, 1 - truth)) > 0.95


def test_a_split_without_labels_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match=r"no labels\.csv"):
        load_masked_split(tmp_path, "train")


def test_training_writes_a_segmenter_and_a_card_that_reload(tmp_path):
    data = write_masked_dataset(tmp_path / "data", {"train": 12, "val": 6})
    card = train_segmenter(data, tmp_path / "weights", tmp_path / "run", input_size=(32, 32), epochs=2,
                           batch_size=4, command="test")  # fmt: skip
    saved = json.loads((tmp_path / "weights" / SEGMENTER_CARD).read_text())
    assert saved == card
    assert card["training"]["train_images"] == 12
    assert card["evaluation"]["images"] == 6
    assert set(card["evaluation"]["dice_by_class"]) == {"COVID", "Normal"}
    assert 0 <= card["evaluation"]["dice_mean"] <= 1
    segmenter = XrayLungSegmenter.load(tmp_path / "weights")
    probability = segmenter.probabilities(np.full((72, 64), 0.5, np.float32))
    assert probability.shape == (72, 64)
    assert ((probability >= 0) & (probability <= 1)).all()
