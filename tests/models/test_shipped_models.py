"""The models shipped in weights/: cards complete, files load safely, numbers reproducible."""

import numpy as np
import pytest

from lungviz.inference.explanations.graph import cam_resolution
from lungviz.models.registry import DEFAULT_WEIGHTS_DIR, discover, load_model
from lungviz.reporting.tables import README_BEGIN, README_END, markdown_table

SHIPPED = [card for cards in discover(DEFAULT_WEIGHTS_DIR).values() for card in cards]
DATA_FOLDERS = {
    "xray-pneumonia": ["kermany_chest_xray_pneumonia", "nih_chestxray14_pneumonia"],
    "ct-covid": ["sars_cov2_ct"],
}
MIN_FAMILIES = 4  # architecture families per task besides the from-scratch baseline
METRICS = ("accuracy", "sensitivity", "specificity", "precision", "f1", "mcc", "roc_auc", "pr_auc")


def test_the_repository_ships_models_for_every_task():
    """weights/ is part of the repository: an empty registry means the path or a card is wrong, not a skip."""
    shipped = discover(DEFAULT_WEIGHTS_DIR)
    assert all(shipped.values()), {task: len(cards) for task, cards in shipped.items()}


@pytest.mark.parametrize("card", SHIPPED, ids=lambda c: f"{c.task}/{c.name}")
def test_card_is_complete_and_matches_its_file(card):
    assert card.file_size_bytes == card.model_path.stat().st_size
    assert card.calibration["method"] == "temperature"
    assert card.temperature > 0
    assert "Youden" in card.threshold_rule
    assert card.training["data_dirs"] == DATA_FOLDERS[card.task]
    assert all(sizes["train"] for sizes in card.training["split_sizes"].values())
    assert card.input_crop == "lungs"
    assert card.training["weights_max_output_change"] <= card.training["weights_tolerance"]
    assert card.training["command"].startswith("python -m lungviz train")
    assert card.limitations
    test = card.metrics["test"]
    for name in METRICS:
        low, high = test[name]["ci95"]
        assert low <= test[name]["value"] <= high, name


@pytest.mark.parametrize("card", SHIPPED, ids=lambda c: f"{c.task}/{c.name}")
def test_model_loads_in_safe_mode_with_its_cam_layer(card):
    from lungviz.inference.explanations import get_explainer
    from lungviz.preprocessing import image_to_input

    model = load_model(card)
    explainer = get_explainer("gradcam", model, card.cam_layer)
    probabilities, heatmap = explainer.explain_with_probabilities(
        image_to_input(np.full((256, 256), 0.5, np.float32), card.input_size), card.positive_index
    )
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    assert heatmap.shape == tuple(card.input_size)
    assert card.parameters == model.count_params()
    assert card.cam_resolution == cam_resolution(model, card.cam_layer)


@pytest.mark.parametrize("task", list(DATA_FOLDERS))
def test_each_task_compares_architecture_families_not_siblings(task):
    families = {card.family for card in discover(DEFAULT_WEIGHTS_DIR)[task]}
    assert "from-scratch CNN" in families
    assert len(families - {"from-scratch CNN"}) >= MIN_FAMILIES, families


def test_weights_stay_within_their_budget():
    total = sum(path.stat().st_size for path in DEFAULT_WEIGHTS_DIR.rglob("*") if path.is_file())
    assert total <= 150e6, f"weights/ holds {total / 1e6:.1f} MB"


def test_readme_table_is_generated_from_the_cards():
    readme = (DEFAULT_WEIGHTS_DIR.parent / "README.md").read_text()
    table = readme[readme.index(README_BEGIN) + len(README_BEGIN) : readme.index(README_END)].strip()
    assert table == markdown_table(discover(DEFAULT_WEIGHTS_DIR)), "run: python -m lungviz cards --update-readme"


@pytest.mark.parametrize("task", ["ct-covid"])
def test_evaluate_reproduces_the_card_metrics(task, shared_data, tmp_path):
    from lungviz.training.evaluation import evaluate_task

    cards = discover(DEFAULT_WEIGHTS_DIR)[task]
    sources = [shared_data / folder for folder in DATA_FOLDERS[task]]
    report = evaluate_task(task, sources, [(c, load_model(c)) for c in cards], crop_cache=tmp_path)
    for card in cards:
        for name in METRICS:
            assert report["models"][card.name]["metrics"][name] == card.metrics["test"][name], (card.name, name)
