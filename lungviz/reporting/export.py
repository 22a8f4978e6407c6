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
from collections.abc import Iterator, Sequence
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


_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
"""What makes a spreadsheet read a text cell as a formula (OWASP, CSV injection)."""


def _spreadsheet_text(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula, quoted to stay text; numbers stay numbers.

    File names and messages are data from users: `=HYPERLINK(...)` as a file name
    must not become a live link (or worse) when the CSV is opened in Excel or Calc.
    """
    return "'" + value if isinstance(value, str) and value.startswith(_FORMULA_PREFIXES) else value


def to_csv(records: Sequence[dict[str, Any]]) -> str:
    """One row per (file, model); a rejected file keeps one row with its error. Text cells are formula-safe."""
    buffer = io.StringIO()
    # CRLF rows (RFC 4180) make the writer quote a cell holding a lone CR, which would otherwise start a new row.
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    for row in _csv_rows(records):
        writer.writerow({column: _spreadsheet_text(value) for column, value in row.items()})
    return buffer.getvalue()


def _csv_rows(records: Sequence[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The flattened cells, as the records hold them."""
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
            yield base
        for model in record["models"]:
            positive = model["positive_class"]
            yield {
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


def overlay_filename(source: str, model: str) -> str:
    """`<source stem>__<model>.png`: the name under which a model's overlay of a file is saved."""
    return f"{Path(source).stem}__{model}.png"


def png_bytes(rgb: np.ndarray) -> bytes:
    """An RGB uint8 image encoded as PNG (for overlay downloads and --save-heatmaps)."""
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("could not encode the overlay as PNG")
    return encoded.tobytes()
