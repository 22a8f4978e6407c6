"""Figures that compare models: drawn from stored results, with operating points and intervals where they belong."""

import pytest

from lungviz.reporting.model_figures import (
    POOLED,
    ScoredModel,
    forest_figure,
    learning_curves,
    pr_figure,
    randomisation_figure,
    reliability_figure,
    roc_figure,
    subgroup_names,
)


def _stored(auc: float, sensitivity: float, specificity: float) -> dict:
    def entry(value):
        return {"value": value, "ci95": [value - 0.05, value + 0.05]}

    metrics = {"roc_auc": entry(auc), "sensitivity": entry(sensitivity), "specificity": entry(specificity),
               "accuracy": entry(0.8), "precision": entry(0.7), "pr_auc": entry(0.75)}  # fmt: skip
    adults = {"counts": {"positive": 5, "negative": 5}, "metrics": {"roc_auc": entry(auc - 0.1)}}
    return {
        "test": metrics,
        "threshold": 0.5,
        "ece": 0.04,
        "subgroups": {"adults": adults, "adults PA": {"counts": {"positive": 2, "negative": 0}}},
        "curves": {
            "roc": {"fpr": [0, 0.2, 1], "tpr": [0, 0.7, 1]},
            "pr": {"recall": [0, 1], "precision": [1, 0.5]},
            "reliability": {"mean_predicted": [0.3], "fraction_positive": [0.35], "counts": [10]},
            "subgroup_roc": {"adults": {"fpr": [0, 1], "tpr": [0, 1]}},
        },
    }


MODELS = [ScoredModel.from_stored("a", _stored(0.9, 0.8, 0.7)), ScoredModel.from_stored("b", _stored(0.8, 0.6, 0.9))]


def test_roc_marks_each_models_operating_point_in_its_own_colour():
    figure = roc_figure(MODELS)
    curves = [trace for trace in figure.data if trace.mode == "lines" and trace.name != "chance"]
    points = [trace for trace in figure.data if trace.mode == "markers"]
    assert [trace.name for trace in curves] == ["a (AUC 0.900)", "b (AUC 0.800)"]
    assert [(p.x[0], p.y[0]) for p in points] == [pytest.approx((0.3, 0.8)), pytest.approx((0.1, 0.6))]
    assert [p.marker.color for p in points] == [c.line.color for c in curves]
    assert curves[0].line.color != curves[1].line.color


def test_a_source_switches_the_roc_and_the_forest_plot():
    assert subgroup_names(MODELS) == [POOLED, "adults", "adults PA"]
    roc = roc_figure(MODELS, "adults")
    assert roc.layout.title.text == "ROC (test, adults)"
    assert [t.name for t in roc.data if t.mode == "lines"][:2] == ["a (AUC 0.800)", "b (AUC 0.700)"]
    forest = forest_figure(MODELS, "adults PA")  # one class only: nothing measured, nothing drawn, no error
    assert all(value is None for trace in forest.data for value in trace.x)


def test_forest_plot_has_a_row_per_model_and_intervals_around_each_value():
    forest = forest_figure(MODELS)
    auc_panel = forest.data[3]
    assert list(auc_panel.y) == ["a", "b"]
    assert list(auc_panel.x) == [0.9, 0.8]
    assert list(auc_panel.error_x.array) == pytest.approx([0.05, 0.05])
    assert list(forest.data[-1].x) == [0.04, 0.04]  # ECE: pooled, no interval


def test_pr_and_reliability_draw_every_model():
    assert [t.name for t in pr_figure(MODELS, "P").data if t.mode == "lines"] == ["a (AP 0.750)", "b (AP 0.750)"]
    assert [t.name for t in reliability_figure(MODELS, "P").data][:2] == ["a (ECE 0.040)", "b (ECE 0.040)"]


def test_learning_curves_continue_epochs_across_stages():
    stages = [
        {"name": "head", "history": {"val_auc": [0.8, 0.9], "val_loss": [0.5, 0.4], "loss": [0.6, 0.5]}},
        {"name": "finetune", "history": {"val_auc": [0.91], "val_loss": [0.39], "loss": [0.45]}},
        {"name": "old card", "history": {}},
    ]
    figure = learning_curves(stages)
    auc = [trace for trace in figure.data if trace.name.endswith(": validation")]
    assert [list(trace.x) for trace in auc] == [[1, 2], [3]]


def test_randomisation_plot_names_the_verdict_of_each_method():
    results = {
        "gradcam": {"steps": ["head", "all"], "rank_correlation": [0.3, 0.05], "passed": True, "pass_below": 0.5},
        "edges": {"steps": ["head", "all"], "rank_correlation": [1.0, 0.98], "passed": False, "pass_below": 0.5},
    }
    figure = randomisation_figure(results)
    assert [trace.name for trace in figure.data] == ["gradcam (passed)", "edges (FAILED)"]
    assert figure.layout.shapes[0].y0 == 0.5
