import json

import pytest

from lungviz.errors import ModelCardError
from lungviz.models.cards import ModelCard

VALID = {
    "name": "m",
    "task": "xray-pneumonia",
    "architecture": "simple_cnn",
    "classes": ["NORMAL", "PNEUMONIA"],
    "positive_class": "PNEUMONIA",
    "input_size": [224, 224],
    "head": "softmax",
    "cam_layer": "conv",
    "file": "m.keras",
    "threshold": 0.42,
    "calibration": {"method": "temperature", "temperature": 1.7},
}


def test_round_trip_through_json(tmp_path):
    card = ModelCard(**VALID)
    card.save(tmp_path / "m.json")
    loaded = ModelCard.load(tmp_path / "m.json")
    assert loaded == card
    assert loaded.temperature == 1.7
    assert loaded.positive_index == 1
    assert loaded.model_path == tmp_path / "m.keras"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"task": "mri-brain"}, "unknown task"),
        ({"head": "relu"}, "head must be"),
        ({"positive_class": "COVID"}, "positive_class"),
        ({"classes": ["A", "B", "C"], "positive_class": "A", "head": "sigmoid"}, "sigmoid head needs exactly two"),
        ({"input_size": [224]}, "input_size"),
        ({"threshold": 1.5}, "threshold"),
        ({"calibration": {"temperature": 0}}, "temperature"),
    ],
)
def test_inconsistent_cards_are_refused_with_the_reason(change, message):
    with pytest.raises(ModelCardError, match=message):
        ModelCard(**{**VALID, **change})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "cannot read model card"),
        ("[1, 2]", "must hold a JSON object"),
        (json.dumps({"name": "m"}), "missing keys"),
    ],
)
def test_unreadable_card_files(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ModelCardError, match=message):
        ModelCard.load(path)


@pytest.mark.parametrize(
    ("randomisation", "expected"),
    [
        ({"gradcam": {"rank_correlation": [0.9, 0.8], "passed": False}}, 0.8),
        ({"gradcam": {"rank_correlation": [0.4, 0.1], "passed": True}}, None),
        ({"layercam": {"rank_correlation": [0.9, 0.8], "passed": False}}, None),
        ({}, None),
    ],
    ids=["failed", "passed", "another method failed", "not checked"],
)
def test_a_failed_randomisation_check_is_reported_per_method(randomisation, expected):
    card = ModelCard(**{**VALID, "metrics": {"randomisation": randomisation}})
    assert card.failed_randomisation("gradcam") == expected
    assert card.failed_randomisation(None) is None
