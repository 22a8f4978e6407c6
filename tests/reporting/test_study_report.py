"""The study report: the sortable summary rows and the PDF with a first page and one page per file."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from PIL import Image

from lungviz.errors import ChoiceError
from lungviz.inference.session import AnalysisSession
from lungviz.reporting.study_report import NOTICE, ReportSettings, pdf_report, summary_columns, summary_rows
from tests.images_factory import chest_hounsfield, chest_radiograph, ct_dicom, to_8bit
from tests.model_factory import make_card
from tests.pdf_reading import page_count, page_texts

MODELS = ["flat-softmax", "nested-sigmoid"]
SETTINGS = ReportSettings(method="gradcam", created=datetime(2026, 3, 1, 9, 30, tzinfo=UTC))


def _flat(text: str) -> str:
    """Page text with line breaks as spaces: wrapped sentences read whole again."""
    return " ".join(text.split())


@pytest.fixture(scope="module")
def study_files(tmp_path_factory) -> dict[str, str]:
    """An X-ray (a name with parentheses), a CT slice, a text file, an empty file and a missing one."""
    folder = tmp_path_factory.mktemp("study")
    xray, ct = folder / "chest (1).png", folder / "slice.dcm"
    Image.fromarray(to_8bit(chest_radiograph(seed=3))).save(xray)
    ct.write_bytes(ct_dicom(chest_hounsfield()))
    (folder / "notes.png").write_text("this is not an image")
    (folder / "empty.jpg").write_bytes(b"")
    return {
        "xray": str(xray),
        "ct": str(ct),
        "text": str(folder / "notes.png"),
        "empty": str(folder / "empty.jpg"),
        "missing": str(folder / "missing.png"),
    }


@pytest.fixture(scope="module")
def session(weights_root) -> AnalysisSession:
    return AnalysisSession(weights_root)


@pytest.fixture(scope="module")
def analyses(session, study_files):
    return [session.analyse_path(path) for path in study_files.values()]


@pytest.fixture(scope="module")
def cards(session):
    return [card for task in session.tasks for card in session.cards[task]]


@pytest.fixture(scope="module")
def pages(analyses, cards) -> list[str]:
    return page_texts(pdf_report(analyses, SETTINGS, cards))


def test_a_first_page_then_one_page_per_file_in_input_order(analyses, cards, pages, study_files):
    pdf = pdf_report(analyses, SETTINGS, cards)
    assert page_count(pdf) == len(pages) == len(study_files) + 1
    for page, path in zip(pages[1:], study_files.values(), strict=True):
        assert Path(path).name in page
    assert all(NOTICE in page for page in pages)


def test_the_first_page_states_the_settings_and_every_model(pages):
    first = _flat(pages[0])
    for expected in ("gradcam", "auto (routed by modality)", "2026-03-01 09:30 UTC", "0.1.0", *MODELS):
        assert expected in first
    assert "Pneumonia on a chest radiograph (xray-pneumonia)" in first
    assert "COVID-19 on an axial chest CT slice (ct-covid)" in first


@pytest.mark.parametrize("kind", ["xray", "ct"])
def test_an_analysed_file_shows_each_models_decision_and_probability(analyses, pages, study_files, kind):
    index = list(study_files).index(kind)
    analysis, page = analyses[index], _flat(pages[index + 1])
    assert [result.name for result in analysis.results] == MODELS
    for result in analysis.results:
        assert f"{result.predicted}: P({result.positive_class}) {result.positive_probability:.3f}" in page
    mean = sum(result.positive_probability for result in analysis.results) / len(analysis.results)
    assert f"{mean:.3f} ±" in page
    assert "How alike the heatmaps are" in page
    assert "1 = flat-softmax" in page


@pytest.mark.parametrize(
    ("kind", "message"),
    [("text", "not an image LungViz can read"), ("empty", "empty"), ("missing", "cannot read file")],
)
def test_a_bad_file_gets_a_page_with_its_error(pages, study_files, kind, message):
    page = _flat(pages[list(study_files).index(kind) + 1])
    assert "Not analysed:" in page
    assert message in page


def test_card_metrics_with_intervals_and_per_source_auc_are_on_the_first_page():
    metrics = {
        "test": {
            "roc_auc": {"value": 0.9512, "ci95": [0.9301, 0.9702]},
            "sensitivity": {"value": 0.88, "ci95": [0.84, 0.91]},
            "specificity": {"value": 0.79, "ci95": [0.75, 0.83]},
        },
        "subgroups": {"kermany": {"metrics": {"roc_auc": {"value": 0.963}}}, "nih PA": {"note": "one class only"}},
    }
    cards = [make_card(name="scored <model>", metrics=metrics), make_card(name="unscored")]
    first = _flat(page_texts(pdf_report([], SETTINGS, cards))[0])
    for expected in ("0.951 (0.930-0.970)", "0.880 (0.840-0.910)", "0.790 (0.750-0.830)"):
        assert expected in first
    assert "scored<model>" in "".join(first.split())  # shown as written, not read as markup
    assert "kermany 0.963; nih PA n/a" in first
    assert "unscored a 64x64 0.500 - - - -" in first  # a card without metrics shows dashes, not an error


def test_without_heatmaps_the_page_says_so_and_draws_no_matrix(session, study_files, cards):
    analysis = session.analyse_path(study_files["xray"], method=None)
    page = _flat(page_texts(pdf_report([analysis], ReportSettings(method=None), cards))[1])
    assert page.count("no heatmap") == len(MODELS)
    assert "How alike the heatmaps are" not in page


def test_every_summary_row_has_every_column(analyses, study_files):
    rows = summary_rows(analyses)
    assert [row["file"] for row in rows] == list(study_files.values())
    assert all(list(row) == summary_columns(MODELS) for row in rows)
    xray, ct, text, _, _ = rows
    assert (xray["task"], ct["task"], ct["modality"]) == ("xray-pneumonia", "ct-covid", "ct")
    for row, analysis in ((xray, analyses[0]), (ct, analyses[1])):
        for result in analysis.results:
            assert row[f"{result.name} decision"] == result.predicted
            assert row[f"{result.name} P(positive)"] == pytest.approx(result.positive_probability, abs=1e-4)
        assert row["ensemble P(positive)"] == pytest.approx(
            sum(r.positive_probability for r in analysis.results) / len(MODELS), abs=1e-4
        )
        assert row["decisions agree"] == (len({r.predicted for r in analysis.results}) == 1)
        assert -1 <= row["heatmap rank correlation"] <= 1
        assert 0 <= row["hottest 10% overlap"] <= 1
        assert row["error"] is None
    assert ct["lung attention"] is not None  # CT lungs come from Hounsfield units; the fixture has no X-ray segmenter
    assert "not an image" in text["error"]
    assert text["flat-softmax P(positive)"] is None


@pytest.mark.parametrize("column", ["file", "ensemble P(positive)", "nested-sigmoid P(positive)", "decisions agree"])
@pytest.mark.parametrize("descending", [False, True])
def test_rows_sort_by_any_column_with_empty_cells_last(analyses, column, descending):
    rows = summary_rows(analyses, sort_by=column, descending=descending)
    values = [row[column] for row in rows]
    filled = [value for value in values if value is not None]
    assert values == filled + [None] * (len(values) - len(filled))
    assert filled == sorted(filled, reverse=descending)
    assert sorted(row["file"] for row in rows) == sorted(row["file"] for row in summary_rows(analyses))


def test_sorting_by_an_unknown_column_names_the_columns(analyses):
    with pytest.raises(ChoiceError, match=r"cannot sort by 'age'.*ensemble P\(positive\)"):
        summary_rows(analyses, sort_by="age")
