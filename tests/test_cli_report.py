"""`python -m lungviz report`: a PDF study report, progress on stderr, bad files on their own pages."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from lungviz.cli import main
from lungviz.reporting.study_report import NOTICE
from tests.images_factory import chest_radiograph, to_8bit
from tests.pdf_reading import page_texts

MODELS = ["flat-softmax", "nested-sigmoid"]


@pytest.fixture
def files(tmp_path) -> dict[str, str]:
    good = tmp_path / "chest.png"
    Image.fromarray(to_8bit(chest_radiograph())).save(good)
    (tmp_path / "notes.png").write_text("this is not an image")
    return {"good": str(good), "text": str(tmp_path / "notes.png"), "missing": str(tmp_path / "missing.png")}


def _report(weights_root: Path, out: Path, paths: list[str], *options: str) -> int:
    return main(["report", *paths, "--out", str(out), "--weights", str(weights_root), *options])


def test_report_writes_one_page_per_file_and_shows_progress(weights_root, files, tmp_path, capsys):
    out = tmp_path / "report.pdf"
    paths = [files["good"], files["text"], files["missing"], files["good"]]
    assert _report(weights_root, out, paths, "--task", "xray-pneumonia") == 0
    pages = [" ".join(page.split()) for page in page_texts(out.read_bytes())]  # wrapped lines read whole
    assert len(pages) == len(paths) + 1
    assert all(name in pages[0] for name in MODELS)
    for page, path in zip(pages[1:], paths, strict=True):
        assert Path(path).name in page
        assert NOTICE in page
    assert all(name in pages[1] for name in MODELS)
    assert "not an image LungViz can read" in pages[2]
    assert "cannot read file" in pages[3]
    captured = capsys.readouterr()
    for index, path in enumerate(paths, start=1):
        assert f"[{index}/4] {path}: reading" in captured.err
    for name in MODELS:
        assert f"[1/4] {files['good']}: {name}: loading and running" in captured.err
    assert f"[2/4] {files['text']}: ERROR" in captured.err
    assert "Traceback" not in captured.err
    assert f"wrote {out}: 4 file(s), 2 of them could not be analysed" in captured.out


def test_a_report_of_only_bad_files_is_still_written(weights_root, files, tmp_path):
    out = tmp_path / "report.pdf"
    assert _report(weights_root, out, [files["text"], files["missing"]]) == 0
    pages = page_texts(out.read_bytes())
    assert len(pages) == 3
    assert all("Not analysed:" in page for page in pages[1:])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--models", "resnet"], "unknown model(s) resnet"),
        (["--method", "occlusion"], "unknown method 'occlusion'"),
        (["--task", "ct-covid", "--target", "PNEUMONIA"], "cannot explain class 'PNEUMONIA'"),
        (["--out", "/no/such/folder/report.pdf"], "folder /no/such/folder for the report does not exist"),
    ],
)
def test_usage_errors_exit_2_with_a_message_and_write_nothing(weights_root, files, tmp_path, capsys, options, message):
    out = tmp_path / "report.pdf"
    with pytest.raises(SystemExit) as exit_info:
        _report(weights_root, out, [files["good"]], *options)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_the_chosen_models_and_method_are_what_the_report_shows(weights_root, files, tmp_path):
    out = tmp_path / "report.pdf"
    assert _report(weights_root, out, [files["good"]], "--models", "nested-sigmoid", "--method", "none") == 0
    first, page = page_texts(out.read_bytes())
    assert "none (no heatmaps)" in first
    assert "nested-sigmoid" in first
    assert "flat-softmax" not in first + page
    assert "no heatmap" in page
