"""The one-line model summary that heads a dashboard column, and README's table of models."""

import pytest

from lungviz.models.cards import ModelCard
from lungviz.reporting.tables import markdown_table, model_summary, subgroup_aucs
from tests.model_factory import make_card


def _card(**fields) -> ModelCard:
    values = {"name": "vgg16", "architecture": "vgg16", "input_size": [160, 160], "cam_layer": "block5_conv3",
              "family": "VGG", "parameters": 14_715_714, "cam_resolution": [10, 10]}  # fmt: skip
    return make_card("xray-pneumonia", **{**values, **fields})


SCORED = {
    "test": {"roc_auc": {"value": 0.9512, "ci95": [0.93, 0.97]}},
    "subgroups": {
        "nih_chestxray14_pneumonia": {"metrics": {"roc_auc": {"value": 0.8123}}},
        "nih_chestxray14_pneumonia PA": {"counts": {"positive": 3, "negative": 0}, "note": "one class only"},
    },
}


def test_the_summary_names_family_size_input_cam_resolution_and_test_auc():
    line = model_summary(_card(metrics=SCORED))
    assert line == "VGG · 14.7 M parameters · input 160 x 160 · CAM 10 x 10 · test ROC-AUC 0.951"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"family": "", "parameters": None, "cam_resolution": None}, "vgg16 · input 160 x 160"),
        ({}, "VGG · 14.7 M parameters · input 160 x 160 · CAM 10 x 10"),
    ],
    ids=["an old card", "not evaluated yet"],
)
def test_the_summary_leaves_out_what_a_card_does_not_know(fields, expected):
    assert model_summary(_card(**fields)) == expected


def test_per_source_aucs_say_where_a_view_has_one_class_only():
    assert subgroup_aucs(_card(metrics=SCORED)) == "nih chestxray14 pneumonia 0.812; nih chestxray14 pneumonia PA n/a"
    assert subgroup_aucs(_card()) == "-"


def test_readme_table_has_one_row_per_card_with_family_and_storage():
    card = _card(metrics=SCORED, training={"weights_dtype": "float16"}, file_size_bytes=29_400_000)
    header, rule, row = markdown_table({"xray-pneumonia": [card]}).splitlines()
    assert header.count("|") == rule.count("|") == row.count("|")
    assert "| xray-pneumonia | vgg16 | VGG | 160x160 |" in row
    assert row.endswith("| 29.4 MB float16 |")
