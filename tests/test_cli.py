import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lungviz.cli import main

REPO = Path(__file__).resolve().parents[1]


def _chest_png(path: Path, shape=(200, 180)) -> Path:
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    lungs = np.exp(-(((rows - 100) / 60.0) ** 2 + ((np.abs(cols - 90) - 40) / 25.0) ** 2))
    Image.fromarray((np.clip(0.8 - 0.6 * lungs, 0, 1) * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture
def inputs(tmp_path):
    good = _chest_png(tmp_path / "chest.png")
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    return [str(good), str(text), str(tmp_path / "missing.png"), str(empty), str(good)]


def _records(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_json_lines_one_record_per_file_in_input_order(weights_root, inputs, capsys):
    status = main(["predict", *inputs, "--json", "--task", "xray-pneumonia", "--weights", str(weights_root)])
    records = _records(capsys)
    assert status == 0
    assert [r["file"] for r in records] == inputs
    good, text, missing, empty, again = records
    for record in (good, again):
        assert record["error"] is None
        assert record["task"] == "xray-pneumonia"
        assert set(record["modality"]) >= {"predicted", "score"}
        assert [m["name"] for m in record["models"]] == ["flat-softmax", "nested-sigmoid"]
        for model in record["models"]:
            assert set(model["probabilities"]) == {"NORMAL", "PNEUMONIA"}
            assert sum(model["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
            assert model["predicted"] in model["probabilities"]
            assert 0 <= model["threshold"] <= 1
    assert good["models"] == [
        {**m, "seconds": a["seconds"]} for m, a in zip(again["models"], good["models"], strict=True)
    ]
    assert "not an image" in text["error"]
    assert text["models"] == []
    assert "cannot read file" in missing["error"]
    assert "empty" in empty["error"]


def test_model_selection_and_heatmaps_on_disk(weights_root, inputs, tmp_path, capsys):
    out = tmp_path / "heatmaps"
    status = main(
        [
            "predict",
            inputs[0],
            "--json",
            "--task",
            "ct-covid",
            "--models",
            "nested-sigmoid",
            "--save-heatmaps",
            str(out),
            "--weights",
            str(weights_root),
        ]
    )
    (record,) = _records(capsys)
    assert status == 0
    assert [m["name"] for m in record["models"]] == ["nested-sigmoid"]
    (png,) = out.glob("*.png")
    assert png.name == "chest__nested-sigmoid.png"
    assert Image.open(png).size == (180, 200)
    heatmap = np.load(out / "chest__nested-sigmoid.npy", allow_pickle=False)
    assert heatmap.dtype == np.float32
    assert heatmap.shape == (200, 180)
    assert heatmap.min() >= 0
    assert heatmap.max() <= 1
    peak = record["models"][0]["heatmap_peak"]
    if peak is not None:  # an untrained model may see no evidence at all
        assert heatmap[peak[1], peak[0]] == heatmap.max()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--models", "resnet"], "unknown model(s) resnet"),
        (["--method", "occlusion"], "unknown method 'occlusion'"),
        (["--task", "mri"], "invalid choice: 'mri'"),
        (["--task", "ct-covid", "--target", "PNEUMONIA"], "cannot explain class 'PNEUMONIA'"),
        (["--weights", "/no/such/weights"], "weights folder /no/such/weights does not exist"),
        (["--faithfulness", "--method", "none"], "--faithfulness checks heatmaps"),
    ],
)
def test_usage_errors_exit_2_with_a_message(weights_root, inputs, capsys, arguments, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", inputs[0], "--weights", str(weights_root), *arguments])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_human_readable_output(weights_root, inputs, capsys):
    main(["predict", inputs[0], inputs[1], "--task", "xray-pneumonia", "--weights", str(weights_root)])
    out = capsys.readouterr().out
    assert "flat-softmax" in out
    assert "P(PNEUMONIA)=" in out
    assert f"{inputs[1]}: ERROR" in out


def test_module_entry_point_never_prints_a_traceback(weights_root, tmp_path):
    bad = tmp_path / "scan.dcm"
    bad.write_bytes(b"\x00" * 128 + b"DICM" + b"\x01\x02" * 10)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lungviz",
            "predict",
            str(bad),
            "--json",
            "--method",
            "none",
            "--weights",
            str(weights_root),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    (record,) = [json.loads(line) for line in done.stdout.splitlines()]
    assert record["file"] == str(bad)
    assert record["error"]


def test_empty_weights_folder_is_a_usage_error(inputs, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", inputs[0], "--weights", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "no models in" in capsys.readouterr().err


def test_inputs_with_the_same_stem_keep_both_heatmaps(weights_root, tmp_path, capsys):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    files = [str(_chest_png(first / "chest.png")), str(_chest_png(second / "chest.png", (150, 200)))]
    out = tmp_path / "heatmaps"
    main(
        [
            "predict",
            *files,
            "--task",
            "ct-covid",
            "--models",
            "flat-softmax",
            "--save-heatmaps",
            str(out),
            "--weights",
            str(weights_root),
        ]
    )
    assert sorted(p.name for p in out.glob("*.png")) == ["001-chest__flat-softmax.png", "chest__flat-softmax.png"]
    assert Image.open(out / "001-chest__flat-softmax.png").size == (200, 150)


def _predict_with_heatmaps(files: list[str], out: Path, weights_root: Path) -> int:
    arguments = ["--json", "--task", "ct-covid", "--models", "flat-softmax", "--weights", str(weights_root)]
    return main(["predict", *files, "--save-heatmaps", str(out), *arguments])


def test_a_long_input_name_gets_a_short_distinct_overlay_name_and_the_batch_goes_on(weights_root, tmp_path, capsys):
    """244 characters of stem: the overlay name (stem + model) would pass the file system's 255-byte limit."""
    long_stems = ["a" * 244, "a" * 243 + "b"]
    files = [str(_chest_png(tmp_path / f"{stem}.png")) for stem in long_stems] + [str(_chest_png(tmp_path / "c.png"))]
    out = tmp_path / "heatmaps"

    status = _predict_with_heatmaps(files, out, weights_root)

    records = _records(capsys)
    assert status == 0
    assert [record["file"] for record in records] == files
    assert all(record["warning"] is None for record in records)
    written = sorted(path.name for path in out.glob("*.png"))
    assert sorted(path.name for path in out.glob("*.npy")) == [name[:-4] + ".npy" for name in written]
    assert len(written) == 3
    assert all(len(name.encode()) <= 120 and name.endswith("__flat-softmax.png") for name in written)
    assert written[2] == "c__flat-softmax.png"
    assert all(name.startswith("a" * 60) for name in written[:2])


def test_an_overlay_that_cannot_be_written_is_its_files_warning_not_the_end_of_the_batch(
    weights_root, tmp_path, capsys
):
    files = [str(_chest_png(tmp_path / "first.png")), str(_chest_png(tmp_path / "second.png"))]
    out = tmp_path / "heatmaps"
    (out / "first__flat-softmax.png").mkdir(parents=True)  # the overlay's name is taken by a folder

    status = _predict_with_heatmaps(files, out, weights_root)

    first, second = _records(capsys)
    assert status == 0
    assert first["models"]
    assert first["error"] is None
    assert "overlay first__flat-softmax.png was not saved (Is a directory)" in first["warning"]
    assert second["warning"] is None
    assert Image.open(out / "second__flat-softmax.png").size == (180, 200)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["train", "--data", ".", "--task", "ct-covid", "--arch", "simple_cnn", "--finetune-blocks", "two"],
            "expected a number of blocks or 'all'",
        ),
        (["cards", "--update-readme", "--weights", "."], "cannot be used with --weights"),
    ],
)
def test_other_commands_report_bad_arguments_without_a_traceback(arguments, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


FAITHFULNESS_KEYS = {
    "deletion_auc",
    "insertion_auc",
    "random_deletion_auc",
    "random_insertion_auc",
    "gradient_deletion_auc",
    "gradient_insertion_auc",
}


def test_faithfulness_and_agreement_in_the_json(weights_root, inputs, capsys):
    status = main(
        ["predict", inputs[0], "--faithfulness", "--json", "--task", "xray-pneumonia", "--weights", str(weights_root)]
    )
    (record,) = _records(capsys)
    assert status == 0
    for model in record["models"]:
        areas = model["faithfulness"]
        assert set(areas) == {*FAITHFULNESS_KEYS, "seconds"}
        assert all(0 <= areas[key] <= 1 for key in FAITHFULNESS_KEYS), areas
        assert areas["seconds"] > 0
    agreement = record["agreement"]
    probabilities = [m["probabilities"]["PNEUMONIA"] for m in record["models"]]
    assert agreement["ensemble"]["mean"] == pytest.approx(np.mean(probabilities), abs=1e-5)
    assert agreement["ensemble"]["min"] <= agreement["ensemble"]["mean"] <= agreement["ensemble"]["max"]
    assert agreement["decisions_differ"] == (len({m["predicted"] for m in record["models"]}) > 1)
    assert (
        set(agreement["heatmap_rank_correlation"])
        == set(agreement["hottest_10pct_iou"])
        == {"flat-softmax|nested-sigmoid"}
    )


def test_without_the_flag_no_heatmap_is_checked(weights_root, inputs, capsys):
    main(["predict", inputs[0], "--json", "--task", "xray-pneumonia", "--weights", str(weights_root)])
    (record,) = _records(capsys)
    assert [m["faithfulness"] for m in record["models"]] == [None, None]
