import re
import shutil

import numpy as np
import pytest

from lungviz.errors import ChoiceError, ModelCardError, ModelLoadError
from lungviz.models.registry import discover, ensemble_summary_path, load_ensemble_summary, load_model, select_cards
from lungviz.tasks import TASKS


def test_discovers_every_card_by_task(weights_root):
    found = discover(weights_root)
    assert set(found) == set(TASKS)
    for task, cards in found.items():
        assert [c.name for c in cards] == ["flat-softmax", "nested-sigmoid"]
        assert all(c.task == task and c.model_path.is_file() for c in cards)


@pytest.mark.parametrize("name", ["flat-softmax", "nested-sigmoid"])
def test_loads_models_that_match_their_cards(weights_root, name):
    card = find_card("ct-covid", name, weights_root)
    model = load_model(card)
    output = np.asarray(model(np.zeros((1, *card.input_size, 3), np.float32)))
    assert output.shape == (1, 1 if card.head == "sigmoid" else 2)


def find_card(task, name, root):
    (card,) = select_cards(discover(root)[task], [name])
    return card


def test_selection_keeps_registry_order_and_lists_the_choices_for_unknown_names(weights_root):
    cards = discover(weights_root)["xray-pneumonia"]
    assert select_cards(cards, None) == cards
    assert [c.name for c in select_cards(cards, ["nested-sigmoid", "flat-softmax"])] == [
        "flat-softmax",
        "nested-sigmoid",
    ]
    with pytest.raises(ChoiceError, match="available: flat-softmax, nested-sigmoid"):
        select_cards(cards, ["densenet"])


def test_card_in_the_wrong_task_folder_is_an_error(weights_root, tmp_path):
    shutil.copytree(weights_root / "ct-covid", tmp_path / "xray-pneumonia")
    with pytest.raises(ModelCardError, match="lives in xray-pneumonia"):
        discover(tmp_path)


def test_missing_model_file_is_an_error(weights_root, tmp_path):
    shutil.copytree(weights_root / "ct-covid", tmp_path / "ct-covid")
    (tmp_path / "ct-covid" / "flat-softmax.keras").unlink()
    with pytest.raises(ModelCardError, match=re.escape("model file 'flat-softmax.keras' is missing")):
        discover(tmp_path)


def test_card_that_disagrees_with_the_model_is_refused(weights_root, tmp_path):
    shutil.copytree(weights_root / "ct-covid", tmp_path / "ct-covid")
    card = find_card("ct-covid", "flat-softmax", tmp_path)
    card.head, card.classes = "sigmoid", card.classes
    with pytest.raises(ModelLoadError, match="has 2 outputs"):
        load_model(card)


def test_corrupt_model_file_gives_a_clear_error(weights_root, tmp_path):
    shutil.copytree(weights_root / "ct-covid", tmp_path / "ct-covid")
    (tmp_path / "ct-covid" / "flat-softmax.keras").write_bytes(b"not a zip")
    with pytest.raises(ModelLoadError, match="cannot load model 'flat-softmax'"):
        load_model(find_card("ct-covid", "flat-softmax", tmp_path))


def test_the_ensemble_summary_is_read_beside_the_cards_and_a_broken_one_is_an_error(tmp_path):
    assert load_ensemble_summary("ct-covid", tmp_path) is None
    path = ensemble_summary_path("ct-covid", tmp_path)
    path.parent.mkdir()
    path.write_text('{"members": ["a", "b"]}')
    assert load_ensemble_summary("ct-covid", tmp_path) == {"members": ["a", "b"]}
    path.write_text("{not json")
    with pytest.raises(ModelCardError, match="not readable JSON"):
        load_ensemble_summary("ct-covid", tmp_path)
