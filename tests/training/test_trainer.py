import csv
import json
from pathlib import Path

import keras
import numpy as np
import pytest

from lungviz.errors import TrainingError
from lungviz.models.cards import ModelCard
from lungviz.models.outputs import apply_temperature
from lungviz.models.storage import load_compact
from lungviz.training import trainer as training
from lungviz.training.calibration import THRESHOLD_RULE
from lungviz.training.datasets import SplitData, iterate_batches, load_split
from lungviz.training.trainer import (
    STORAGE_TOLERANCE,
    TrainConfig,
    image_weights,
    loss_weights,
    plan_stages,
    stage_histories,
    train,
)
from tests.synthetic_dataset import write_blob_dataset

CLASSES = ("NORMAL", "PNEUMONIA")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_blob_dataset(tmp_path_factory.mktemp("blobs"), CLASSES, {"train": 30, "val": 10, "test": 12})


def _config(data_dir, run_dir, **change) -> TrainConfig:
    fields = {
        "task": "xray-pneumonia",
        "data_dirs": (data_dir,),
        "architecture": "simple_cnn",
        "run_dir": run_dir,
        "input_size": (32, 32),
        "batch_size": 4,
        "epochs": 6,
        "patience": 6,
        "verbose": 0,
        "command": "pytest run",
    }
    return TrainConfig(**{**fields, **change})


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    return train(_config(data_dir, tmp_path_factory.mktemp("run")))


def test_simple_cnn_learns_the_task_and_writes_model_and_card(trained, data_dir):
    card = ModelCard.load(trained.card_path)
    assert card == trained.card
    assert card.model_path == trained.model_path
    assert (card.classes, card.positive_class, card.head, card.input_size) == (
        list(CLASSES),
        "PNEUMONIA",
        "softmax",
        [32, 32],
    )
    assert card.threshold_rule == THRESHOLD_RULE
    assert card.calibration["method"] == "temperature"
    assert card.file_size_bytes == trained.model_path.stat().st_size
    model = load_compact(trained.model_path)
    assert len(model.get_layer(card.cam_layer).output.shape) == 4
    test = load_split(data_dir, "test", CLASSES, (32, 32))
    raw = np.concatenate([np.asarray(model(b)) for b in iterate_batches(test.images, 8)])
    called = apply_temperature(raw, card.temperature)[:, 1] >= card.threshold
    assert np.mean(called == (test.labels == 1)) >= 0.75  # chance is 0.5


def test_card_records_how_the_model_was_trained(trained, data_dir):
    record = trained.card.training
    assert record["data_dirs"] == [data_dir.name]
    assert record["command"] == "pytest run"
    assert record["split_sizes"] == {
        data_dir.name: {split: {"NORMAL": n, "PNEUMONIA": n} for split, n in (("train", 30), ("val", 10), ("test", 12))}
    }
    # blobs are not chests: the segmenter finds no lungs, so every image was used whole
    assert record["input_crop"] == trained.card.input_crop == "lungs"
    assert record["lungs_found"] == {"train": {"found": 0, "images": 60}, "val": {"found": 0, "images": 20}}
    recipe = record["recipe"]
    assert recipe["loss_weights"] == {data_dir.name: {"NORMAL": 1.0, "PNEUMONIA": 1.0}}
    assert recipe["seed"] == 42
    assert recipe["augmentation"]["flips"] == "none"
    assert recipe["batch_size"] == 4
    assert record["weights_dtype"] in {"int8-per-channel", "float16"}
    assert record["weights_max_output_change"] <= record["weights_tolerance"] == STORAGE_TOLERANCE
    assert record["weights_tried"][record["weights_dtype"]] == record["weights_max_output_change"]
    (stage,) = recipe["stages"]
    assert stage["name"] == "scratch"
    assert 1 <= stage["best_epoch"] <= stage["epochs_run"] <= 6
    assert stage["seconds_per_epoch"] > 0
    # the card carries the learning curves, so the Model cards page can draw them without the run folder
    assert set(stage["history"]) == {"loss", "auc", "val_loss", "val_auc"}
    assert all(len(values) == stage["epochs_run"] for values in stage["history"].values())
    assert max(stage["history"]["val_auc"]) == pytest.approx(stage["best_val_auc"], abs=1e-4)


def test_run_folder_has_checkpoint_history_and_logs(trained):
    files = {p.name for p in trained.run_dir.iterdir()}
    assert {"last.keras", "best.weights.h5", "state.json", "history.csv", "train.log"} <= files
    with open(trained.run_dir / "history.csv") as handle:
        epochs = [int(row["epoch"]) for row in csv.DictReader(handle)]
    assert epochs == list(range(trained.stages[0]["epochs_run"]))
    assert "stage scratch epoch 1/6" in (trained.run_dir / "train.log").read_text()


def test_resume_continues_an_interrupted_run_from_its_checkpoint(data_dir, tmp_path, monkeypatch):
    finish_epoch = training._RunState.on_epoch_end

    def interrupt_after_two(self, epoch, logs=None):
        finish_epoch(self, epoch, logs)
        if epoch + 1 == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(training._RunState, "on_epoch_end", interrupt_after_two)
    with pytest.raises(KeyboardInterrupt):
        train(_config(data_dir, tmp_path, epochs=4))
    assert json.loads((tmp_path / "state.json").read_text())["epoch"] == 2
    steps_done = int(keras.models.load_model(tmp_path / "last.keras").optimizer.iterations)
    assert steps_done == 2 * 60 // 4
    monkeypatch.undo()

    with pytest.raises(TrainingError, match="already holds a training run"):
        train(_config(data_dir, tmp_path, epochs=4))
    with pytest.raises(TrainingError, match="cannot resume"):
        train(_config(data_dir, tmp_path, epochs=4, resume=True, seed=7))
    result = train(_config(data_dir, tmp_path, epochs=4, resume=True))
    with open(tmp_path / "history.csv") as handle:
        assert [int(row["epoch"]) for row in csv.DictReader(handle)] == [0, 1, 2, 3]
    assert "resuming from" in (tmp_path / "train.log").read_text()
    assert result.card.training["resumed"] == 1
    assert result.stages[0]["epochs_run"] == 4


def test_transfer_model_trains_head_on_features_then_fine_tunes_top_blocks(data_dir, tmp_path):
    pytest.importorskip("lungviz.models.backbones.efficientnet_lite")
    result = train(
        _config(data_dir, tmp_path, architecture="efficientnet_lite0", head_epochs=3, epochs=1, finetune_blocks=1)
    )
    head, finetune = result.stages
    assert (head["name"], head["features_precomputed"], finetune["name"]) == ("head", True, "finetune")
    assert head["learning_rate"] > finetune["learning_rate"]
    assert (tmp_path / "head_features.npz").exists()
    assert result.card.training["recipe"]["initial_weights"].startswith("ImageNet")
    backbone = keras.models.load_model(tmp_path / "last.keras").get_layer("efficientnet_lite0")
    trainable = {layer.name for layer in backbone.layers if layer.trainable and layer.weights}
    assert trainable
    assert all(name.startswith(("block7a_", "top_")) for name in trainable)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) and layer.trainable for layer in backbone.layers)


def _split_of(cells: dict[tuple[str, int], int]) -> SplitData:
    """A split with `cells[(source, label)]` blank images per source and class."""
    sources = np.array([source for (source, _), n in cells.items() for _ in range(n)], object)
    labels = np.array([label for (_, label), n in cells.items() for _ in range(n)])
    return SplitData(
        "train", CLASSES, (Path("x"),) * len(labels), np.zeros((len(labels), 2, 2), np.uint8), labels, sources
    )


def test_loss_weights_balance_classes_within_a_source_and_sources_by_square_root_of_size():
    # a large pediatric source (100 / 300) and a small adult one (20 / 5): 400 and 25 images
    split = _split_of({("kids", 0): 100, ("kids", 1): 300, ("adults", 0): 20, ("adults", 1): 5})
    weights = loss_weights(split)
    per_image = image_weights(split, weights)
    assert per_image.mean() == pytest.approx(1.0)
    totals = {
        (s, c): per_image[(split.sources == s) & (split.labels == c)].sum() for s in ("kids", "adults") for c in (0, 1)
    }
    assert totals["kids", 0] == pytest.approx(totals["kids", 1])
    assert totals["adults", 0] == pytest.approx(totals["adults", 1])
    adult_share = (totals["adults", 0] + totals["adults", 1]) / per_image.sum()
    assert adult_share == pytest.approx(np.sqrt(25) / (np.sqrt(25) + np.sqrt(400)))  # 0.2, not 25/425 = 0.06
    assert weights["adults"] == {
        "NORMAL": pytest.approx(adult_share * 425 / 40),
        "PNEUMONIA": pytest.approx(adult_share * 425 / 10),
    }


def test_one_source_gets_plain_balanced_class_weights_and_an_empty_class_is_refused():
    weights = loss_weights(_split_of({("only", 0): 10, ("only", 1): 30}))
    assert weights == {"only": {"NORMAL": pytest.approx(2.0), "PNEUMONIA": pytest.approx(2 / 3)}}
    with pytest.raises(TrainingError, match="every class"):
        loss_weights(_split_of({("only", 0): 5, ("other", 0): 2, ("other", 1): 2}))


@pytest.mark.parametrize(
    ("architecture", "epochs", "expected"),
    [
        ("simple_cnn", 5, ["scratch"]),
        ("efficientnet_lite0", 5, ["head", "finetune"]),
        ("efficientnet_lite0", 0, ["head"]),
    ],
)
def test_stage_plan_follows_the_architecture(tmp_path, architecture, epochs, expected):
    assert [
        s.name for s in plan_stages(_config(tmp_path, tmp_path, architecture=architecture, epochs=epochs))
    ] == expected


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"task": "mri"}, "unknown task"),
        ({"monitor": "val_accuracy"}, "monitor"),
        ({"finetune_blocks": "some"}, "finetune_blocks"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_configs_are_training_errors(tmp_path, change, message):
    with pytest.raises(TrainingError, match=message):
        _config(tmp_path, tmp_path, **change)


def test_fine_tuning_that_never_beats_the_head_keeps_the_head_weights(data_dir, tmp_path, monkeypatch):
    """Early stopping spans the stages: a stage-2 that only gets worse on validation changes nothing."""
    snapshots = {}
    original_fit_stage = training._fit_stage

    def recording_fit_stage(model, built, stage, *args):
        original_fit_stage(model, built, stage, *args)
        snapshots[stage.name] = [np.array(w) for w in model.get_weights()]

    monkeypatch.setattr(training, "_fit_stage", recording_fit_stage)
    # A learning rate of 50 wrecks the weights at once, so no fine-tuning epoch can beat the head.
    result = train(
        _config(
            data_dir,
            tmp_path,
            architecture="efficientnet_lite0",
            head_epochs=4,
            epochs=2,
            learning_rate=50.0,
            finetune_blocks=1,
            patience=2,
        )
    )
    head, finetune = result.stages
    assert finetune["best_epoch"] == 0
    assert finetune["epochs_run"] == 2
    assert finetune["best_val_auc"] == head["best_val_auc"]
    for kept, after_head in zip(snapshots["finetune"], snapshots["head"], strict=False):
        np.testing.assert_array_equal(kept, after_head)


def test_stage_histories_deal_the_logged_epochs_out_to_their_stages(tmp_path):
    rows = ["epoch,accuracy,auc,loss,val_accuracy,val_auc,val_loss"]
    rows += [f"{e},0.5,0.{e + 1},1.{e},0.5,0.{e + 5},2.{e}" for e in range(3)]  # head: 3 epochs
    rows += [f"{e},0.5,0.9,0.{e},0.5,0.9{e},0.{e}" for e in range(2)]  # fine-tuning restarts at epoch 0
    (tmp_path / "history.csv").write_text("\n".join(rows) + "\n")
    head, finetune = stage_histories(tmp_path / "history.csv", [{"epochs_run": 3}, {"epochs_run": 2}])
    assert head["val_auc"] == [0.5, 0.6, 0.7]
    assert head["loss"] == [1.0, 1.1, 1.2]
    assert finetune["val_loss"] == [0.0, 0.1]
    assert stage_histories(tmp_path / "missing.csv", [{"epochs_run": 1}]) == [{}]
