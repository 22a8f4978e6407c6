"""Records of an analysis, as the CLI prints them and the dashboard downloads them.

One record per input file; the same schema feeds `predict --json` (JSON Lines),
the dashboard's JSON download and, flattened to one row per model, its CSV.
Records carry only the file name as given and technical results: never DICOM
patient fields.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lungviz.inference.prediction import ModelResult

CSV_COLUMNS = [
    "file",
    "error",
    "warning",
    "task",
    "modality",
    "modality_score",
    "model",
    "architecture",
    "predicted",
    "threshold",
    "positive_class",
    "positive_probability",
    "explained_class",
    "method",
    "seconds",
]


def model_record(result: ModelResult) -> dict[str, Any]:
    """One model's part of a file record."""
    return {
        "name": result.name,
        "architecture": result.architecture,
        "probabilities": {c: round(p, 6) for c, p in result.probabilities.items()},
        "predicted": result.predicted,
        "threshold": result.threshold,
        "positive_class": result.positive_class,
        "explained_class": result.explained_class,
        "method": result.method,
        "seconds": round(result.seconds, 4),
    }


def file_record(
    file: str,
    *,
    error: str | None = None,
    task: str | None = None,
    modality: dict[str, Any] | None = None,
    warning: str | None = None,
    results: Sequence[ModelResult] = (),
) -> dict[str, Any]:
    """The stable per-file record documented in README (keep keys backwards compatible)."""
    return {
        "file": file,
        "error": error,
        "task": task,
        "modality": modality,
        "warning": warning,
        "models": [model_record(r) for r in results],
    }


def to_json_lines(records: Sequence[dict[str, Any]]) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def to_csv(records: Sequence[dict[str, Any]]) -> str:
    """One row per (file, model); a rejected file keeps one row with its error."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for record in records:
        modality = record.get("modality") or {}
        base = {
            "file": record["file"],
            "error": record["error"] or "",
            "warning": record["warning"] or "",
            "task": record["task"] or "",
            "modality": modality.get("predicted", ""),
            "modality_score": modality.get("score", ""),
        }
        if not record["models"]:
            writer.writerow(base)
        for model in record["models"]:
            positive = model["positive_class"]
            writer.writerow(
                {
                    **base,
                    "model": model["name"],
                    "architecture": model["architecture"],
                    "predicted": model["predicted"],
                    "threshold": model["threshold"],
                    "positive_class": positive,
                    "positive_probability": model["probabilities"][positive],
                    "explained_class": model["explained_class"] or "",
                    "method": model["method"] or "",
                    "seconds": model["seconds"],
                }
            )
    return buffer.getvalue()


def overlay_filename(source: str, model: str) -> str:
    """`<source stem>__<model>.png`: the name under which a model's overlay of a file is saved."""
    return f"{Path(source).stem}__{model}.png"


def png_bytes(rgb: np.ndarray) -> bytes:
    """An RGB uint8 image encoded as PNG (for overlay downloads and --save-heatmaps)."""
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("could not encode the overlay as PNG")
    return encoded.tobytes()
