"""The model registry: which models exist, read from the model cards in `weights/`.

A model is a Keras file in `weights/<task>/` with a JSON card beside it. The
registry only reads cards (cheap) until a model is asked for; loading is done
with Keras safe mode so a shipped file can never run arbitrary code, by
`load_compact`, which reads the float32, float16 and int8 files `save_compact` writes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lungviz.errors import ChoiceError, ModelCardError, ModelLoadError
from lungviz.models.cards import ModelCard
from lungviz.tasks import TASKS

DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"
WEIGHTS_ENV = "LUNGVIZ_WEIGHTS"


def weights_dir() -> Path:
    """The weights folder: `$LUNGVIZ_WEIGHTS` when set, else the repo's `weights/`."""
    return Path(os.environ.get(WEIGHTS_ENV, DEFAULT_WEIGHTS_DIR))


def discover(root: Path | None = None) -> dict[str, list[ModelCard]]:
    """All model cards under `root`, grouped by task, sorted by architecture family, then name.

    A broken card is an error (not silently skipped): a shipped model that
    vanished from the dashboard would be worse than a loud failure.
    """
    root = Path(root) if root is not None else weights_dir()
    found: dict[str, list[ModelCard]] = {task: [] for task in TASKS}
    for card_path in sorted(p for task in TASKS for p in (root / task).glob("*.json")):
        card = ModelCard.load(card_path)
        if card.task != card_path.parent.name:
            raise ModelCardError(f"{card_path}: card says task {card.task!r} but lives in {card_path.parent.name}/")
        if not card.model_path.is_file():
            raise ModelCardError(f"{card_path}: model file {card.file!r} is missing")
        found[card.task].append(card)
    return {task: sorted(cards, key=lambda card: (card.family, card.name)) for task, cards in found.items()}


EVALUATION_DIR = "evaluation"
"""weights/evaluation/<task>-ensemble.json: the ensemble's test results, written by `evaluate --update-cards`."""


def ensemble_summary_path(task: str, root: Path | None = None) -> Path:
    return (Path(root) if root is not None else weights_dir()) / EVALUATION_DIR / f"{task}-ensemble.json"


def load_ensemble_summary(task: str, root: Path | None = None) -> dict[str, Any] | None:
    """The task's ensemble results beside the cards, or None where none were written."""
    path = ensemble_summary_path(task, root)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ModelCardError(f"{path} is not readable JSON: {error}") from error


def select_cards(cards: list[ModelCard], names: list[str] | None) -> list[ModelCard]:
    """The cards named (all when names is None), in registry order; unknown names are an error listing the choices."""
    if names is None:
        return list(cards)
    known = [card.name for card in cards]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ChoiceError(f"unknown model(s) {', '.join(unknown)}; available: {', '.join(known) or 'none'}")
    return [card for card in cards if card.name in names]


def load_model(card: ModelCard):
    """Load the card's Keras model in safe mode and check it agrees with the card."""
    from lungviz.models.storage import load_compact  # deferred: reading cards must stay fast (no h5py, no TensorFlow)

    try:
        model = load_compact(card.model_path)
    except ModelLoadError as error:
        raise ModelLoadError(f"cannot load model {card.name!r}: {error}") from error
    _check_matches_card(model, card)
    return model


def _check_matches_card(model, card: ModelCard) -> None:
    height, width = card.input_size
    input_shape = tuple(model.inputs[0].shape)
    if input_shape[1:3] not in ((height, width), (None, None)) or input_shape[-1] != 3:
        raise ModelLoadError(f"model {card.name!r} takes input {input_shape}, card says {height}x{width}x3")
    units = model.outputs[0].shape[-1]
    expected = 1 if card.head == "sigmoid" else len(card.classes)
    if units != expected:
        raise ModelLoadError(f"model {card.name!r} has {units} outputs, its {card.head} card expects {expected}")
