"""train -> evaluate -> cards -> predict through the command line, on a tiny synthetic data set."""

import json

import cv2
import numpy as np
import pytest

from lungviz.cli import main
from lungviz.models.cards import ModelCard
from lungviz.tasks import TASKS
from tests.synthetic_dataset import synthetic_image, write_blob_dataset

TASK = "ct-covid"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_training")
    data = write_blob_dataset(root / "data", TASKS[TASK].classes, {"train": 24, "val": 12, "test": 12})
    weights = root / "weights"
    status = main(
        [
            "train",
            "--data",
            str(data),
            "--task",
            TASK,
            "--arch",
            "simple_cnn",
            "--name",
            "tiny",
            "--input-size",
            "32",
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--out",
            str(weights / TASK),
            "--run-dir",
            str(root / "run"),
        ]
    )
    assert status == 0
    return data, weights


def test_train_writes_a_model_and_a_card_that_records_the_command(trained):
    _, weights = trained
    card = ModelCard.load(weights / TASK / "tiny.json")
    assert card.model_path.is_file()
    assert card.input_size == [32, 32]
    assert card.training["command"].startswith("python -m lungviz train --data")
    assert card.calibration["method"] == "temperature"
    assert 0 <= card.threshold <= 1


def test_evaluate_reports_and_writes_card_metrics(trained, capsys):
    data, weights = trained
    capsys.readouterr()
    assert (
        main(["evaluate", "--task", TASK, "--data", str(data), "--weights", str(weights), "--json", "--update-cards"])
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    card = ModelCard.load(weights / TASK / "tiny.json")
    assert (report["task"], list(report["models"]), report["ensemble"]) == (TASK, ["tiny"], None)
    assert report["test_counts"] == dict.fromkeys(TASKS[TASK].classes, 12)
    entry = report["models"]["tiny"]
    (negatives_right, false_positives), (false_negatives, positives_right) = entry["confusion_matrix"]
    assert negatives_right + false_positives == false_negatives + positives_right == 12
    accuracy = entry["metrics"]["accuracy"]["value"]
    assert accuracy == pytest.approx((negatives_right + positives_right) / 24)
    assert entry["threshold"] == card.threshold
    # --update-cards wrote this very report into the card
    assert card.metrics["test"] == entry["metrics"]
    assert card.metrics["confusion_matrix"] == entry["confusion_matrix"]
    assert main(["cards", "--weights", str(weights)]) == 0
    assert "| ct-covid | tiny | from-scratch CNN | 32x32 |" in capsys.readouterr().out


def test_predict_uses_the_trained_model(trained, tmp_path, capsys):
    _, weights = trained
    image = tmp_path / "slice.png"
    cv2.imwrite(str(image), synthetic_image(True, np.random.default_rng(5), (96, 96)))
    capsys.readouterr()
    assert main(["predict", str(image), "--task", TASK, "--json", "--weights", str(weights)]) == 0
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert record["error"] is None, record["error"]
    assert [m["name"] for m in record["models"]] == ["tiny"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["train", "--data", "/no/such/folder", "--task", TASK, "--arch", "simple_cnn"], "does not exist"),
        (["evaluate", "--data", "/no/such/folder", "--task", TASK], "does not exist"),
    ],
)
def test_missing_data_folder_is_a_usage_error(arguments, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_localisation_scores_the_x_ray_models_and_writes_them_into_their_cards(weights_root, tmp_path, capsys):
    import shutil

    import cv2
    import numpy as np

    from lungviz.models.registry import discover
    from tests.training.test_localisation import _write_rows

    weights = tmp_path / "weights"
    shutil.copytree(weights_root, weights)
    nih = tmp_path / "nih"
    (nih / "test" / "PNEUMONIA").mkdir(parents=True)
    for index in range(3):
        cv2.imwrite(str(nih / f"test/PNEUMONIA/{index}.jpg"), np.full((96, 96), 60 + 40 * index, np.uint8))
    _write_rows(nih / "boxes.csv", [{"file": f"test/PNEUMONIA/{index}.jpg", "finding": "Pneumonia", "x": "10",
                                     "y": "20", "w": "30", "h": "25"} for index in range(3)])  # fmt: skip

    status = main(["localisation", "--nih", str(nih), "--methods", "gradcam,layercam", "--update-cards",
                   "--weights", str(weights)])  # fmt: skip

    report = json.loads(capsys.readouterr().out)
    assert status == 0
    assert set(report) == {"flat-softmax", "nested-sigmoid"}
    for card in discover(weights)["xray-pneumonia"]:
        scores = card.metrics["localisation"]["nih pneumonia boxes"]
        assert scores == report[card.name]["nih pneumonia boxes"]
        assert set(scores) == {"gradcam", "layercam"}
        assert scores["gradcam"]["images"] == 3
        assert 0 <= scores["gradcam"]["pointing_hit_rate"]["value"] <= 1
    assert "localisation" not in discover(weights)["ct-covid"][0].metrics


def test_localisation_without_annotated_images_is_a_usage_error(weights_root, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["localisation", "--weights", str(weights_root)])
    assert exit_info.value.code == 2
    assert "give --qu-ex, --nih or both" in capsys.readouterr().err


def test_randomisation_check_writes_each_methods_verdict_into_the_card(trained, capsys):
    data, weights = trained
    capsys.readouterr()
    command = ["randomisation", "--task", TASK, "--data", str(data), "--weights", str(weights)]
    assert main([*command, "--methods", "gradcam", "--images", "3", "--update-cards"]) == 0
    report = json.loads(capsys.readouterr().out)
    result = report["tiny"]["gradcam"]
    assert result["images"] == 3
    assert result["steps"][0] == "head"
    assert len(result["rank_correlation"]) == len(result["steps"])
    assert result["passed"] == (result["rank_correlation"][-1] < result["pass_below"])
    assert ModelCard.load(weights / TASK / "tiny.json").metrics["randomisation"] == report["tiny"]
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--methods", "no-such-method"])
    assert exit_info.value.code == 2
    assert "unknown method 'no-such-method'" in capsys.readouterr().err
