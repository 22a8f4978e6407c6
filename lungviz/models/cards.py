"""Model cards: the JSON file beside each shipped model that says what it is.

Everything the dashboard and the CLI need to know about a model (classes, input
size, CAM layer, operating point, calibration, provenance, test metrics) is read
from its card, so adding a model never means touching UI code.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lungviz.errors import ModelCardError
from lungviz.tasks import task_problem

HEADS = ("softmax", "sigmoid")
INPUT_CROPS = ("none", "lungs")
"""How a model's input is framed: the whole image, or the lungs' box with a margin (lungviz.inference.lungs)."""


@dataclass
class ModelCard:
    """What a shipped model is, how to feed it and how well it did."""

    name: str
    task: str
    architecture: str
    classes: list[str]
    positive_class: str
    input_size: list[int]
    head: str
    cam_layer: str
    input_crop: str = "none"
    family: str = ""
    """The architecture family (from the architecture registry), so pages can group models by it."""
    parameters: int | None = None
    cam_resolution: list[int] | None = None
    """[height, width] of the CAM layer's feature map: how coarse the heatmaps are before upsampling."""
    threshold: float = 0.5
    threshold_rule: str = "fixed 0.5"
    calibration: dict[str, Any] = field(default_factory=lambda: {"method": "none", "temperature": 1.0})
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    file: str = ""
    file_size_bytes: int = 0
    limitations: list[str] = field(default_factory=list)
    card_path: Path | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        problems = [problem for problem in [task_problem(self.task)] if problem]
        if self.input_crop not in INPUT_CROPS:
            problems.append(f"input_crop must be one of {INPUT_CROPS}, not {self.input_crop!r}")
        if self.head not in HEADS:
            problems.append(f"head must be one of {HEADS}, not {self.head!r}")
        if len(self.classes) < 2:
            problems.append("needs at least two classes")
        if self.head == "sigmoid" and len(self.classes) != 2:
            problems.append("a sigmoid head needs exactly two classes")
        if self.positive_class not in self.classes:
            problems.append(f"positive_class {self.positive_class!r} is not one of {self.classes}")
        if len(self.input_size) != 2 or min(self.input_size) < 8:
            problems.append(f"input_size must be [height, width], got {self.input_size}")
        if not 0.0 <= float(self.threshold) <= 1.0:
            problems.append(f"threshold must lie in [0, 1], got {self.threshold}")
        if float(self.temperature) <= 0:
            problems.append(f"calibration temperature must be positive, got {self.temperature}")
        if problems:
            raise ModelCardError(f"model card {self.name!r}: " + "; ".join(problems))

    @property
    def temperature(self) -> float:
        return float(self.calibration.get("temperature", 1.0))

    def failed_randomisation(self, method: str | None) -> float | None:
        """The rank correlation left once the model was destroyed, when `method` failed the randomisation
        check on this model (its maps show the image, not the model); None when it passed or was not checked."""
        result = self.metrics.get("randomisation", {}).get(method or "")
        if not result or result.get("passed", True):
            return None
        return float(result["rank_correlation"][-1])

    @property
    def positive_index(self) -> int:
        return self.classes.index(self.positive_class)

    @property
    def model_path(self) -> Path:
        """The Keras file, resolved next to the card."""
        base = self.card_path.parent if self.card_path else Path.cwd()
        return base / self.file

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("card_path")
        return data

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any], card_path: Path | None = None) -> ModelCard:
        known = {f for f in cls.__dataclass_fields__ if f != "card_path"}
        missing = {
            "name",
            "task",
            "architecture",
            "classes",
            "positive_class",
            "input_size",
            "head",
            "cam_layer",
        } - data.keys()
        if missing:
            where = card_path or data.get("name", "?")
            raise ModelCardError(f"model card {where}: missing keys {sorted(missing)}")
        return cls(**{k: v for k, v in data.items() if k in known}, card_path=card_path)

    @classmethod
    def load(cls, path: Path) -> ModelCard:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ModelCardError(f"cannot read model card {path}: {error}") from error
        if not isinstance(data, dict):
            raise ModelCardError(f"model card {path} must hold a JSON object")
        return cls.from_dict(data, card_path=Path(path))
