import json

import keras
import numpy as np
import pytest

from lungviz.errors import EvaluationError
from lungviz.models.architectures import build_model
from lungviz.models.cards import ModelCard
from lungviz.models.storage import load_compact
from lungviz.reporting.tables import markdown_table
from lungviz.training.calibration import THRESHOLD_RULE, choose_threshold
from lungviz.training.datasets import load_split
from lungviz.training.evaluation import (
    CURVE_POINTS,
    ENSEMBLE,
    ensemble_summary,
    evaluate_task,
    predict_probabilities,
    summary_markdown,
    update_card_metrics,
)
from lungviz.training.metrics import METRICS, binary_metrics
from lungviz.training.trainer import TrainConfig, train
from tests.synthetic_dataset import write_blob_dataset

TASK, CLASSES, SIZE = "ct-covid", ("non-COVID", "COVID"), (32, 32)
RESAMPLES = 200


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_blob_dataset(tmp_path_factory.mktemp("ct"), CLASSES, {"train": 30, "val": 10, "test": 15}, seed=3)


@pytest.fixture(scope="module")
def models(data_dir, tmp_path_factory):
    """A briefly trained simple CNN and an untrained one with a hand-written card: a good and a useless member."""
    trained = train(
        TrainConfig(
            task=TASK,
            data_dirs=(data_dir,),
            architecture="simple_cnn",
            run_dir=tmp_path_factory.mktemp("run"),
            input_size=SIZE,
            batch_size=4,
            epochs=6,
            patience=6,
            verbose=0,
        )
    )
    folder = tmp_path_factory.mktemp("untrained")
    keras.utils.set_random_seed(1)
    build_model("simple_cnn", 2, SIZE).model.save(folder / "untrained.keras")
    untrained = ModelCard(
        name="untrained",
        task=TASK,
        architecture="simple_cnn",
        classes=list(CLASSES),
        positive_class="COVID",
        input_size=list(SIZE),
        head="softmax",
        cam_layer="block5_relu",
        threshold=0.5,
        file="untrained.keras",
        card_path=folder / "untrained.json",
    )
    untrained.save(untrained.card_path)
    return [
        (card, load_compact(card.model_path))
        for card in (ModelCard.load(trained.card_path), ModelCard.load(untrained.card_path))
    ]


@pytest.fixture(scope="module")
def report(data_dir, models, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return evaluate_task(TASK, data_dir, models, out, resamples=RESAMPLES, crop_cache=out), out


def test_report_scores_every_model_and_the_ensemble(report, models):
    report, _ = report
    assert report["test_counts"] == {"non-COVID": 15, "COVID": 15}
    assert report["positive_class"] == "COVID"
    entries = {**report["models"], ENSEMBLE: report["ensemble"]}
    assert set(entries) == {"simple-cnn", "untrained", ENSEMBLE}
    for entry in entries.values():
        assert {"threshold", "metrics", "ece", "confusion_matrix", "roc", "pr", "reliability"} <= set(entry)
        assert set(entry["metrics"]) == set(METRICS)
        for value in entry["metrics"].values():
            assert value["ci95"][0] <= value["value"] <= value["ci95"][1]
        assert np.sum(entry["confusion_matrix"]) == 30
        assert sum(entry["reliability"]["counts"]) == 30
    assert report["models"]["simple-cnn"]["metrics"]["roc_auc"]["value"] > 0.8  # it learnt the blob
    assert report["models"]["simple-cnn"]["threshold"] == models[0][0].threshold


def test_ensemble_averages_calibrated_probabilities_with_a_validation_threshold(report, models, data_dir):
    report, _ = report
    splits = {name: load_split(data_dir, name, CLASSES, SIZE) for name in ("val", "test")}
    mean_p = {
        name: np.mean([predict_probabilities(model, card, split.images)[:, 1] for card, model in models], axis=0)
        for name, split in splits.items()
    }
    threshold = choose_threshold(mean_p["val"], splits["val"].labels == 1).threshold
    ensemble = report["ensemble"]
    assert ensemble["threshold"] == threshold
    assert ensemble["threshold_rule"] == THRESHOLD_RULE
    expected = binary_metrics(splits["test"].labels == 1, mean_p["test"], threshold)
    assert {k: v["value"] for k, v in ensemble["metrics"].items()} == pytest.approx(expected)


def test_files_written_for_people_and_programs(report):
    report, out = report
    assert json.loads((out / "report.json").read_text()) == report
    summary = (out / "summary.md").read_text()
    assert all(f"| {name} |" in summary for name in ("simple-cnn", "untrained", ENSEMBLE))
    html = (out / "figures.html").read_text()
    assert html.count("plotly.js") >= 1
    assert html.count('class="plotly-graph-div"') == 4 + 3  # ROC, PR, reliability, forest; a confusion matrix each


def test_card_metrics_are_reproduced_exactly_by_a_second_evaluation(report, models, data_dir):
    report, _ = report
    card = update_card_metrics(models[0][0], report)
    saved = ModelCard.load(card.card_path)
    again = evaluate_task(TASK, data_dir, models[:1], resamples=RESAMPLES, crop_cache=card.card_path.parent)
    assert saved.metrics["test"] == again["models"][card.name]["metrics"]
    assert saved.metrics["test"]["roc_auc"] == report["models"][card.name]["metrics"]["roc_auc"]
    assert again["ensemble"] is None
    assert f"{saved.metrics['test']['accuracy']['value']:.3f}" in markdown_table({TASK: [saved]})


def test_models_of_another_task_are_refused(models, data_dir):
    card, model = models[0]
    with pytest.raises(EvaluationError, match="not xray-pneumonia"):
        evaluate_task("xray-pneumonia", data_dir, [(card, model)])
    with pytest.raises(EvaluationError, match="no models"):
        evaluate_task(TASK, data_dir, [])
    with pytest.raises(EvaluationError, match="unique"):
        evaluate_task(TASK, data_dir, [models[0], models[0]])


@pytest.fixture(scope="module")
def second_source(tmp_path_factory):
    """Another hospital's test images with a labels.csv recording each film's view, as NIH's does."""
    root = write_blob_dataset(tmp_path_factory.mktemp("adults") / "adults", CLASSES, {"val": 4, "test": 8}, seed=9)
    rows = ["file,split,label,view_position"]
    for split in ("val", "test"):
        for name in CLASSES:
            for index, file in enumerate(sorted((root / split / name).iterdir())):
                rows.append(f"{split}/{name}/{file.name},{split},{name},{'PA' if index % 2 else 'AP'}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_several_sources_are_scored_pooled_each_and_per_view(data_dir, second_source, models, tmp_path):
    report = evaluate_task(TASK, [data_dir, second_source], models, resamples=RESAMPLES, crop_cache=tmp_path)
    assert report["data_dirs"] == [data_dir.name, "adults"]
    assert report["test_counts"] == {"non-COVID": 23, "COVID": 23}
    assert report["test_counts_by_source"]["adults"] == {"non-COVID": 8, "COVID": 8}
    for entry in (*report["models"].values(), report["ensemble"]):
        groups = entry["subgroups"]
        assert list(groups) == [data_dir.name, "adults", "adults AP", "adults PA"]
        assert groups["adults"]["counts"] == {"positive": 8, "negative": 8}
        assert groups["adults AP"]["counts"] == groups["adults PA"]["counts"] == {"positive": 4, "negative": 4}
        # the pooled confusion matrix is the sum of the sources' ones
        pooled = np.add(groups[data_dir.name]["confusion_matrix"], groups["adults"]["confusion_matrix"])
        np.testing.assert_array_equal(pooled, entry["confusion_matrix"])
    only_one = [data_dir, second_source]
    single = evaluate_task(TASK, only_one[:1], models[:1], resamples=RESAMPLES, crop_cache=tmp_path)
    assert single["models"]["simple-cnn"]["subgroups"] == {}
    trained = report["models"]["simple-cnn"]["subgroups"]["adults"]["metrics"]["roc_auc"]["value"]
    assert trained > 0.8  # the blob is the same finding at the other hospital
    assert "| simple-cnn | adults PA | 4 / 4 |" in summary_markdown(report)


def test_cards_keep_other_measurements_and_gain_thinned_curves(report, models):
    report, _ = report
    card = models[0][0]
    card.metrics = {**card.metrics, "localisation": {"kept": True}}
    update_card_metrics(card, report, save=False)
    assert card.metrics["localisation"] == {"kept": True}
    curves = card.metrics["curves"]
    full = report["models"][card.name]
    assert len(curves["roc"]["fpr"]) == min(CURVE_POINTS, len(full["roc"]["fpr"]))
    assert (curves["roc"]["fpr"][0], curves["roc"]["fpr"][-1]) == (0.0, 1.0)
    assert curves["reliability"] == full["reliability"]


def test_the_ensemble_summary_holds_what_the_cards_page_draws(report, data_dir, second_source, models, tmp_path):
    summary = ensemble_summary(report[0])
    assert summary["members"] == ["simple-cnn", "untrained"]
    assert summary["metrics"] == report[0]["ensemble"]["metrics"]
    assert set(summary["curves"]) == {"roc", "pr", "reliability", "subgroup_roc"}
    two = evaluate_task(TASK, [data_dir, second_source], models, resamples=RESAMPLES, crop_cache=tmp_path)
    by_source = ensemble_summary(two)
    assert set(by_source["curves"]["subgroup_roc"]) == {data_dir.name, "adults", "adults AP", "adults PA"}
    assert "roc" not in by_source["subgroups"]["adults"]  # thinned copies only, in the curves
    assert ensemble_summary(evaluate_task(TASK, data_dir, models[:1], resamples=RESAMPLES, crop_cache=tmp_path)) is None
