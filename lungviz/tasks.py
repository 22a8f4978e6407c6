"""The tasks LungViz knows: one `Task` record each, the single place a task is spelled out.

A task fixes what its models answer (classes in output order, the positive
class), which imaging modality routes to it, and the limitations every model
card of the task states. Adding a task is one entry in `TASKS`; model cards,
data sets, training, evaluation and routing all read it from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from lungviz.errors import ChoiceError

MODALITIES = ("xray", "ct")
"""Imaging modalities the modality gate tells apart (anything else is "other")."""

NOT_A_DEVICE = "Not a medical device; not for clinical use."


@dataclass(frozen=True)
class Task:
    """A classification task: its classes, its modality and what its models cannot do."""

    name: str
    title: str
    modality: str
    classes: tuple[str, ...]
    """Class names in model output order; the last is the positive (finding) class."""
    limitations: tuple[str, ...]
    """Written into every model card of the task."""

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"task {self.name!r}: modality must be one of {MODALITIES}, not {self.modality!r}")
        if len(self.classes) < 2:
            raise ValueError(f"task {self.name!r} needs at least two classes")

    @property
    def positive_class(self) -> str:
        return self.classes[-1]


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task(
            name="xray-pneumonia",
            title="Pneumonia on a chest radiograph",
            modality="xray",
            classes=("NORMAL", "PNEUMONIA"),
            limitations=(
                "Trained on pediatric (1-5 years) anterior-posterior chest X-rays from one hospital in Guangzhou; "
                "adult radiographs are out of distribution.",
                "Training images were squashed to 224 x 224 without keeping the aspect ratio.",
                NOT_A_DEVICE,
            ),
        ),
        Task(
            name="ct-covid",
            title="COVID-19 on an axial chest CT slice",
            modality="ct",
            classes=("non-COVID", "COVID"),
            limitations=(
                "Trained on 2-D lung-window CT screen crops from one hospital network in Sao Paulo, without "
                "Hounsfield units; expect a drop on other scanners and sites.",
                "Splits are grouped by a pseudo-patient heuristic; a patient may occasionally straddle splits.",
                NOT_A_DEVICE,
            ),
        ),
    )
}
"""Every known task by name."""


def task_problem(name: str) -> str | None:
    """Why `name` is not a task, for validators that collect every problem at once; None when it is one."""
    return None if name in TASKS else f"unknown task {name!r} (known: {', '.join(TASKS)})"


def get_task(name: str) -> Task:
    """The task called `name`; an unknown name is a `ChoiceError` that lists the known ones."""
    problem = task_problem(name)
    if problem is not None:
        raise ChoiceError(problem)
    return TASKS[name]
