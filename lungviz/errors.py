"""Every error LungViz raises on purpose, under one base class.

A `LungVizError` means "the input, a file or a request cannot be used as
given": its text is written for the person who can fix it, and the CLI and the
dashboard show it as a message. Anything else that escapes is a bug and is
allowed to surface as one. Each class also derives from the built-in exception
it specialises (`ValueError` for bad values, `RuntimeError` for a model that
will not load), so callers that catch those keep working.
"""

from __future__ import annotations


class LungVizError(Exception):
    """Base of LungViz's own errors; str() is a message for the user."""


# --------------------------------------------------------------------------- what the user brings


class ImageInputError(LungVizError, ValueError):
    """A file LungViz cannot turn into a chest image."""

    def __init__(self, file: str, problem: str) -> None:
        super().__init__(file, problem)  # both in args, so the error survives pickling (process pools)
        self.file = file
        self.problem = problem

    def __str__(self) -> str:
        return f"{self.file}: {self.problem}"


class ChoiceError(LungVizError, ValueError):
    """A name that is not among the choices (task, model, method, class, window); the message lists them."""


# --------------------------------------------------------------------------- models and their files


class ModelCardError(LungVizError, ValueError):
    """A model card is missing, malformed or inconsistent with its model file."""


class ModelLoadError(LungVizError, RuntimeError):
    """A model file could not be loaded or does not match its card."""


class ArchitectureError(LungVizError, ValueError):
    """Unknown architecture or missing pretrained weights, with what to do about it."""


class CheckpointError(LungVizError, ValueError):
    """A pretrained-weights file that is not what it claims to be, or does not fit its model."""


class PrecisionLossError(LungVizError, ValueError):
    """Storing weights at lower precision would move a model's outputs by more than allowed."""


class ExplanationError(LungVizError, ValueError):
    """A model cannot be explained as asked (unknown layer, unsupported head, bad input)."""


# --------------------------------------------------------------------------- training and evaluation


class DatasetError(LungVizError, ValueError):
    """A data folder that does not have the expected split/class/image layout."""


class TrainingError(LungVizError, ValueError):
    """A training request that cannot run as asked (bad config, mismatched resume)."""


class CalibrationError(LungVizError, ValueError):
    """Calibration data that cannot be fitted (wrong shapes, one class only, ...)."""


class MetricsError(LungVizError, ValueError):
    """Labels and scores that cannot be scored (lengths differ, one class only, NaNs)."""


class EvaluationError(LungVizError, ValueError):
    """Models that cannot be evaluated together on the task asked for."""
