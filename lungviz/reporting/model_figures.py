"""Plotly figures that compare models' held-out results: ROC, precision-recall, reliability, forest plot.

They draw from what `evaluate` stores (a report entry, a model card, or the
ensemble summary beside the cards), all turned into one `ScoredModel` first, so
the evaluation report and the Model cards page show the same pictures and the
page needs no data set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from lungviz.models.cards import ModelCard

POOLED = "pooled"
FOREST_METRICS = ("accuracy", "sensitivity", "specificity", "roc_auc")
METRIC_LABELS = {
    "accuracy": "accuracy",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
    "roc_auc": "ROC-AUC",
    "ece": "ECE",
}
CURVE_SIZE = {"width": 560, "height": 460}
PALETTE = qualitative.Plotly


@dataclass(frozen=True)
class ScoredModel:
    """One model's (or the ensemble's) test results as the figures need them."""

    name: str
    metrics: dict[str, Any]
    threshold: float
    ece: float | None = None
    roc: dict[str, list[float]] = field(default_factory=dict)
    pr: dict[str, list[float]] = field(default_factory=dict)
    reliability: dict[str, Any] = field(default_factory=dict)
    subgroups: dict[str, Any] = field(default_factory=dict)
    subgroup_roc: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    @classmethod
    def from_stored(cls, name: str, stored: dict[str, Any], metrics_key: str = "test") -> ScoredModel:
        """From a card's metrics (`metrics_key` "test") or the ensemble summary ("metrics")."""
        curves = stored.get("curves", {})
        return cls(
            name,
            stored.get(metrics_key, {}),
            float(stored.get("threshold", 0.5)),
            stored.get("ece"),
            curves.get("roc", {}),
            curves.get("pr", {}),
            curves.get("reliability", {}),
            stored.get("subgroups", {}),
            curves.get("subgroup_roc", {}),
        )

    @classmethod
    def from_card(cls, card: ModelCard) -> ScoredModel:
        return cls.from_stored(card.name, card.metrics)

    @classmethod
    def from_report_entry(cls, name: str, entry: dict[str, Any]) -> ScoredModel:
        """From one entry of an `evaluate` report (full, unthinned curves)."""
        return cls(
            name,
            entry["metrics"],
            entry["threshold"],
            entry["ece"],
            entry["roc"],
            entry["pr"],
            entry["reliability"],
            entry.get("subgroups", {}),
        )

    def metrics_for(self, subgroup: str = POOLED) -> dict[str, Any]:
        """Pooled metrics, or one source's / view's (empty when that subgroup had one class only)."""
        return self.metrics if subgroup == POOLED else self.subgroups.get(subgroup, {}).get("metrics", {})

    def roc_for(self, subgroup: str = POOLED) -> dict[str, list[float]]:
        return self.roc if subgroup == POOLED else self.subgroup_roc.get(subgroup, {})


def subgroup_names(models: Sequence[ScoredModel]) -> list[str]:
    """ "pooled" and every source / view any of the models was scored on, in order."""
    names = dict.fromkeys(name for model in models for name in model.subgroups)
    return [POOLED, *names]


def _value(metrics: dict[str, Any], key: str) -> float | None:
    entry = metrics.get(key)
    return None if entry is None else float(entry["value"])


def roc_figure(models: Sequence[ScoredModel], subgroup: str = POOLED) -> go.Figure:
    """Every model's ROC curve on one plot, each with its operating point (the card's threshold) marked."""
    figure = go.Figure()
    for index, model in enumerate(models):
        roc, metrics = model.roc_for(subgroup), model.metrics_for(subgroup)
        if not roc.get("fpr"):
            continue
        auc, colour = _value(metrics, "roc_auc"), _colour(index)
        label = f"{model.name} (AUC {auc:.3f})" if auc is not None else model.name
        figure.add_scatter(
            x=roc["fpr"], y=roc["tpr"], mode="lines", name=label, legendgroup=model.name, line_color=colour
        )
        sensitivity, specificity = _value(metrics, "sensitivity"), _value(metrics, "specificity")
        if sensitivity is not None and specificity is not None:
            figure.add_scatter(
                x=[1 - specificity],
                y=[sensitivity],
                mode="markers",
                marker={"size": 10, "color": colour},
                name=f"{model.name} at its threshold",
                legendgroup=model.name,
                showlegend=False,
                hovertemplate=f"{model.name}: sensitivity %{{y:.3f}}, specificity {specificity:.3f}"
                "<extra>operating point</extra>",
            )
    figure.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line_dash="dot", line_color="grey", name="chance")
    title = "ROC (test)" if subgroup == POOLED else f"ROC (test, {subgroup})"
    figure.update_layout(title=title, xaxis_title="1 - specificity", yaxis_title="sensitivity", **CURVE_SIZE)
    return figure.update_layout(xaxis_range=[0, 1], yaxis_range=[0, 1.02])


def pr_figure(models: Sequence[ScoredModel], positive: str) -> go.Figure:
    """Every model's precision-recall curve, each with its operating point marked."""
    figure = go.Figure()
    for index, model in enumerate(models):
        if not model.pr.get("recall"):
            continue
        ap, colour = _value(model.metrics, "pr_auc"), _colour(index)
        label = f"{model.name} (AP {ap:.3f})" if ap is not None else model.name
        figure.add_scatter(
            x=model.pr["recall"],
            y=model.pr["precision"],
            mode="lines",
            line_shape="vh",
            name=label,
            legendgroup=model.name,
            line_color=colour,
        )
        recall, precision = _value(model.metrics, "sensitivity"), _value(model.metrics, "precision")
        if recall is not None and precision is not None:
            figure.add_scatter(
                x=[recall],
                y=[precision],
                mode="markers",
                marker={"size": 10, "color": colour},
                legendgroup=model.name,
                showlegend=False,
                name=f"{model.name} at its threshold",
            )
    figure.update_layout(
        title="Precision-recall (test)",
        xaxis_title=f"recall ({positive})",
        yaxis_title="precision",
        xaxis_range=[0, 1],
        yaxis_range=[0, 1.02],
        **CURVE_SIZE,
    )
    return figure


def reliability_figure(models: Sequence[ScoredModel], positive: str) -> go.Figure:
    """Observed positive rate against mean predicted probability per bin, every model on one plot."""
    figure = go.Figure()
    for index, model in enumerate(models):
        bins = model.reliability
        if not bins.get("mean_predicted"):
            continue
        label = f"{model.name} (ECE {model.ece:.3f})" if model.ece is not None else model.name
        figure.add_scatter(
            x=bins["mean_predicted"],
            y=bins["fraction_positive"],
            mode="lines+markers",
            name=label,
            line_color=_colour(index),
            customdata=bins.get("counts"),
            hovertemplate="mean P %{x:.2f}, observed %{y:.2f}, %{customdata} images",
        )
    figure.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line_dash="dot", line_color="grey", name="perfect")
    figure.update_layout(
        title="Reliability of calibrated P(positive)",
        xaxis_title=f"mean predicted P({positive})",
        yaxis_title=f"observed fraction {positive}",
        xaxis_range=[0, 1],
        yaxis_range=[0, 1.02],
        **CURVE_SIZE,
    )
    return figure


def _colour(index: int) -> str:
    """One colour per model, the same on every plot of a page."""
    return PALETTE[index % len(PALETTE)]


def _with_interval(model: ScoredModel, metric: str, subgroup: str) -> tuple[float | None, float, float]:
    """(value, low, high) of one metric; ECE has no interval and is pooled only; None where not measured."""
    if metric == "ece":
        ece = model.ece if subgroup == POOLED else None
        return ece, ece or 0.0, ece or 0.0
    entry = model.metrics_for(subgroup).get(metric)
    if entry is None or entry.get("value") is None:
        return None, 0.0, 0.0
    low, high = entry.get("ci95") or (entry["value"], entry["value"])
    return float(entry["value"]), float(low), float(high)


def forest_figure(models: Sequence[ScoredModel], subgroup: str = POOLED) -> go.Figure:
    """Headline metrics with their 95% intervals, one row per model, one panel per metric (and ECE)."""
    panels = [*FOREST_METRICS, "ece"]
    figure = make_subplots(
        rows=1,
        cols=len(panels),
        shared_yaxes=True,
        horizontal_spacing=0.02,
        subplot_titles=[METRIC_LABELS[p] for p in panels],
    )
    names = [model.name for model in models]
    for column, metric in enumerate(panels, start=1):
        values: list[float | None] = []
        lows: list[float] = []
        highs: list[float] = []
        for model in models:
            value, low, high = _with_interval(model, metric, subgroup)
            values.append(value)
            lows.append(0.0 if value is None else value - low)
            highs.append(0.0 if value is None else high - value)
        figure.add_scatter(
            x=values,
            y=names,
            mode="markers",
            showlegend=False,
            row=1,
            col=column,
            error_x={"type": "data", "array": highs, "arrayminus": lows},
            hovertemplate="%{y}: %{x:.3f}<extra>" + METRIC_LABELS[metric] + "</extra>",
        )
    figure.update_yaxes(autorange="reversed")
    title = "Test metrics with 95% intervals" + ("" if subgroup == POOLED else f" ({subgroup})")
    return figure.update_layout(title=title, height=140 + 34 * len(models), margin={"l": 10, "r": 10})


def confusion_figure(matrix: list[list[int]], negative: str, positive: str) -> go.Figure:
    """[[TN, FP], [FN, TP]] as a heatmap: true class down, called class across."""
    labels = [negative, positive]
    figure = go.Figure(
        go.Heatmap(
            z=matrix,
            x=[f"called {c}" for c in labels],
            y=[f"true {c}" for c in labels],
            text=matrix,
            texttemplate="%{text}",
            colorscale="Blues",
            showscale=False,
        )
    )
    figure.update_yaxes(autorange="reversed")
    return figure.update_layout(title="Confusion matrix at the threshold (test)", width=380, height=320)


def learning_curves(stages: Sequence[dict[str, Any]]) -> go.Figure:
    """Validation ROC-AUC and loss per epoch across the training stages (a dotted line where a stage starts)."""
    figure = make_subplots(rows=1, cols=2, subplot_titles=["validation ROC-AUC", "loss"])
    epoch = 0
    for stage in stages:
        history = stage.get("history") or {}
        count = len(history.get("val_auc", []))
        if not count:
            continue
        epochs = list(range(epoch + 1, epoch + count + 1))
        if epoch:
            for column in (1, 2):
                figure.add_vline(x=epoch + 0.5, line_dash="dot", line_color="grey", row=1, col=column)
        figure.add_scatter(
            x=epochs, y=history["val_auc"], mode="lines+markers", name=f"{stage['name']}: validation", row=1, col=1
        )
        figure.add_scatter(
            x=epochs,
            y=history["val_loss"],
            mode="lines+markers",
            name=f"{stage['name']}: validation loss",
            row=1,
            col=2,
        )
        figure.add_scatter(
            x=epochs,
            y=history["loss"],
            mode="lines",
            line_dash="dash",
            name=f"{stage['name']}: training loss",
            row=1,
            col=2,
        )
        epoch += count
    figure.update_xaxes(title_text="epoch")
    return figure.update_layout(title="Learning curves", height=320)


def randomisation_figure(results: dict[str, dict[str, Any]]) -> go.Figure:
    """Rank correlation of each method's maps with the trained model's, as ever more layers are randomised.

    A method whose line stays high (above the card's pass line) explains the image, not the model.
    """
    figure = go.Figure()
    for index, (method, result) in enumerate(results.items()):
        verdict = "passed" if result["passed"] else "FAILED"
        figure.add_scatter(
            x=result["steps"],
            y=result["rank_correlation"],
            mode="lines+markers",
            name=f"{method} ({verdict})",
            line_color=_colour(index),
        )
    if results:
        figure.add_hline(
            y=next(iter(results.values()))["pass_below"],
            line_dash="dot",
            line_color="grey",
            annotation_text="pass below",
        )
    figure.update_layout(
        title="Randomisation check: maps vs the trained model's",
        yaxis_title="rank correlation",
        yaxis_range=[-0.2, 1.05],
        height=320,
    )
    return figure
