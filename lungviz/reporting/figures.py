"""Plotly figures of model results: per-model probabilities and the side-by-side comparison.

Figures are built here, not in the pages, so the CLI, exports and tests can
make exactly what the dashboard shows.
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

from lungviz.inference.prediction import ModelResult

POSITIVE_COLOUR = "#d62728"
OTHER_COLOUR = "#1f77b4"


def probability_chart(result: ModelResult) -> go.Figure:
    """Horizontal bars of one model's calibrated class probabilities, threshold drawn."""
    classes = result.classes
    values = [result.probabilities[c] for c in classes]
    colours = [POSITIVE_COLOUR if c == result.positive_class else OTHER_COLOUR for c in classes]
    figure = go.Figure(
        go.Bar(
            x=values,
            y=classes,
            orientation="h",
            marker_color=colours,
            text=[f"{v:.1%}" for v in values],
            textposition="inside",
            insidetextanchor="start",
            hovertemplate="%{y}: %{x:.3f}<extra></extra>",
        )
    )
    figure.add_vline(
        x=result.threshold,
        line_dash="dash",
        line_color="black",
        annotation_text=f"threshold {result.threshold:.2f}",
        annotation_position="top",
    )
    figure.update_layout(
        xaxis={"range": [0, 1.04], "dtick": 0.25, "title": "calibrated probability", "tickformat": ".0%"},
        yaxis={"title": None},
        height=220,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        showlegend=False,
    )
    return figure


def comparison_chart(results: Sequence[ModelResult]) -> go.Figure:
    """Every model's P(positive class) on this image, each against its own threshold."""
    figure = go.Figure()
    if not results:
        return figure
    positive = results[0].positive_class
    names = [r.name for r in results]
    figure.add_trace(
        go.Bar(
            x=names,
            y=[r.positive_probability for r in results],
            name=f"P({positive})",
            marker_color=[POSITIVE_COLOUR if r.predicted == r.positive_class else OTHER_COLOUR for r in results],
            text=[f"{r.positive_probability:.1%}" for r in results],
            textposition="auto",
        )
    )
    figure.add_trace(
        go.Scatter(
            x=names,
            y=[r.threshold for r in results],
            mode="markers",
            name="threshold",
            marker={"symbol": "line-ew-open", "size": 40, "color": "black", "line": {"width": 3}},
        )
    )
    figure.update_layout(
        yaxis={"range": [0, 1.04], "dtick": 0.25, "title": f"calibrated P({positive})", "tickformat": ".0%"},
        height=320,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        legend={"orientation": "h", "y": 1.12},
    )
    return figure
