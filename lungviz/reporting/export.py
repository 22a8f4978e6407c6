"""Records of an analysis, as the CLI prints them and the dashboard downloads them.

One record per input file; the same schema feeds `predict --json` (JSON Lines),
the dashboard's JSON download and, flattened to one row per model, its CSV.
Records carry only the file name as given and technical results: never DICOM
patient fields.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import re
from collections.abc import Iterator, Sequence
from typing import Any

import cv2
import numpy as np

from lungviz.inference.agreement import assess_agreement
from lungviz.inference.prediction import ModelResult

CSV_COLUMNS = [
    "file",
    "error",
    "warning",
    "task",
    "modality",
    "modality_score",
    "lungs_found",
    "model",
    "architecture",
    "predicted",
    "threshold",
    "positive_class",
    "positive_probability",
    "explained_class",
    "method",
    "lung_attention",
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
        "lung_attention": None if result.lung_attention is None else round(result.lung_attention, 4),
        "heatmap_peak": None if result.heatmap_peak is None else list(result.heatmap_peak),
        "seconds": round(result.seconds, 4),
        "faithfulness": None if result.faithfulness is None else result.faithfulness.to_dict(),
    }


def file_record(
    file: str,
    *,
    error: str | None = None,
    task: str | None = None,
    modality: dict[str, Any] | None = None,
    warning: str | None = None,
    lungs: dict[str, Any] | None = None,
    results: Sequence[ModelResult] = (),
) -> dict[str, Any]:
    """The stable per-file record documented in README (keep keys backwards compatible)."""
    agreement = assess_agreement(results)
    return {
        "file": file,
        "error": error,
        "task": task,
        "modality": modality,
        "warning": warning,
        "lungs": lungs,
        "models": [model_record(r) for r in results],
        "agreement": None if agreement is None else agreement.to_dict(),
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
            "lungs_found": "" if not record.get("lungs") else record["lungs"]["found"],
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
                "lung_attention": "" if model.get("lung_attention") is None else model["lung_attention"],
                "seconds": model["seconds"],
            }


MAX_FILENAME_BYTES = 120
"""Longest overlay file name written: far under the 255 bytes of ext4, APFS and NTFS (143 on eCryptfs), so a
ZIP still extracts into a download folder within Windows' 260-character paths."""
_UNSAFE_IN_NAMES = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]|^\.')
"""Path separators, control characters, what Windows refuses in a name, and a leading dot (a hidden file)."""
_HASH_CHARS = 8


def overlay_filename(source: str, model: str, prefix: str = "") -> str:
    """`<prefix><source stem>__<model>.png`: where a model's overlay of a file is saved, on any file system.

    `source` is a file name as the user gave it (an upload's name may hold '/', ':' or
    a whole URL); each unsafe character becomes '_', so nothing can point outside the
    folder or the ZIP. A stem too long for MAX_FILENAME_BYTES keeps its beginning
    plus a short hash of the whole name: still recognisable, still distinct.
    """
    stem, _, extension = source.rpartition(".")
    if not stem or "/" in extension or "\\" in extension:  # no extension: the whole name is the stem
        stem = source
    model_part = _shortened(_UNSAFE_IN_NAMES.sub("_", model), model, MAX_FILENAME_BYTES // 3)
    room = MAX_FILENAME_BYTES - len(f"{prefix}__{model_part}.png".encode())
    return f"{prefix}{_shortened(_UNSAFE_IN_NAMES.sub('_', stem), source, room)}__{model_part}.png"


def _shortened(safe: str, original: str, limit: int) -> str:
    """`safe` cut to `limit` UTF-8 bytes if longer, ending in '~' and a hash of `original` so cut names stay apart."""
    if len(safe.encode()) <= limit:
        return safe
    kept = safe.encode()[: limit - 1 - _HASH_CHARS].decode(errors="ignore")
    return f"{kept}~{hashlib.sha256(original.encode()).hexdigest()[:_HASH_CHARS]}"


class OverlayNames:
    """Distinct overlay file names for one export (a folder or a ZIP), claimed file by file in input order.

    A file keeps `overlay_filename` unless an earlier one took that name, as two
    `chest.png` from different folders, `xray.bmp` and `xray.tiff`, or names that
    differ only in case or in unsafe characters would: then its position in the
    batch comes first (`001-chest__model.png`), so no overlay overwrites another.
    """

    def __init__(self) -> None:
        self._taken: set[str] = set()  # case-folded: macOS and Windows file systems ignore case

    def claim(self, index: int, source: str, model: str) -> str:
        first_choices = ("", f"{index:03d}-")
        prefixes = itertools.chain(first_choices, (f"{index:03d}-{copy}-" for copy in itertools.count(2)))
        name = next(
            name
            for name in (overlay_filename(source, model, prefix) for prefix in prefixes)
            if name.casefold() not in self._taken
        )
        self._taken.add(name.casefold())
        return name


def npy_bytes(heatmap: np.ndarray) -> bytes:
    """A heatmap as a float32 .npy file (the image's height x width, values 0-1), for tools that score it."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(heatmap, np.float32), allow_pickle=False)
    return buffer.getvalue()


def png_bytes(rgb: np.ndarray) -> bytes:
    """An RGB uint8 image encoded as PNG (for overlay downloads and --save-heatmaps)."""
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("could not encode the overlay as PNG")
    return encoded.tobytes()
