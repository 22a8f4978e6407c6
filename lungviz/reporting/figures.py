"""Plotly figures of model results: probabilities, the side-by-side comparison, heatmap checks and agreement.

Figures are built here, not in the pages, so the CLI, exports and tests can
make exactly what the dashboard shows.
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from lungviz.inference.agreement import Agreement
from lungviz.inference.faithfulness import Faithfulness
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


MAP_STYLES = {
    "heatmap": ("this heatmap", POSITIVE_COLOUR, "solid"),
    "random": ("random map", "#7f7f7f", "dot"),
    "gradient": ("image gradient", OTHER_COLOUR, "dash"),
}
"""How each map of a faithfulness check is drawn: label, colour, line style."""


def faithfulness_chart(check: Faithfulness) -> go.Figure:
    """Deletion and insertion curves side by side, each map's area in its legend entry.

    A faithful map's deletion curve falls below the random map's and its insertion curve rises above it.
    """
    figure = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("Deletion: hottest pixels removed first", "Insertion: hottest pixels revealed first"),
        horizontal_spacing=0.12,
    )
    for column, curves in enumerate((check.deletion, check.insertion), start=1):
        for name, curve in curves.items():
            label, colour, dash = MAP_STYLES[name]
            figure.add_trace(
                go.Scatter(
                    x=curve.fractions,
                    y=curve.scores,
                    mode="lines",
                    name=f"{label} (area {curve.area:.2f})",
                    legendgroup=f"{column}",
                    legendgrouptitle_text="deletion" if column == 1 else "insertion",
                    line={"color": colour, "dash": dash},
                    hovertemplate=f"{label}: %{{x:.0%}} of pixels, P = %{{y:.3f}}<extra></extra>",
                ),
                row=1,
                col=column,
            )
        figure.update_xaxes(title_text="share of pixels", tickformat=".0%", range=[0, 1], row=1, col=column)
        figure.update_yaxes(title_text=f"P({check.class_name})", range=[0, 1.02], row=1, col=column)
    figure.update_layout(height=300, margin={"l": 10, "r": 10, "t": 40, "b": 10}, legend={"groupclick": "toggleitem"})
    return figure


def agreement_matrix(agreement: Agreement) -> go.Figure:
    """Two model-by-model matrices of the heatmaps' similarity: rank correlation and the hottest 10%'s overlap.

    Cells without a value (a flat map) stay blank; the diagonal is each map against itself.
    """
    names = list(agreement.probabilities)
    panels = (
        ("Rank correlation (Spearman)", agreement.rank_correlation, -1.0, "RdBu"),
        ("Overlap of the hottest 10% (IoU)", agreement.hottest_iou, 0.0, "Blues"),
    )
    figure = make_subplots(rows=1, cols=2, subplot_titles=[title for title, *_ in panels], horizontal_spacing=0.15)
    for column, (title, pairs, low, colours) in enumerate(panels, start=1):
        values = [[_pair_value(pairs, a, b) for b in names] for a in names]
        figure.add_trace(
            go.Heatmap(
                z=values,
                x=names,
                y=names,
                zmin=low,
                zmax=1.0,
                colorscale=colours,
                text=[["" if v is None else f"{v:.2f}" for v in row] for row in values],
                texttemplate="%{text}",
                hovertemplate=f"%{{y}} vs %{{x}}: %{{z:.2f}}<extra>{title}</extra>",
                showscale=False,
            ),
            row=1,
            col=column,
        )
        figure.update_yaxes(autorange="reversed", row=1, col=column)
    figure.update_layout(height=120 + 50 * len(names), margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return figure


def _pair_value(pairs: dict[tuple[str, str], float | None], first: str, second: str) -> float | None:
    if first == second:
        return 1.0
    return pairs.get((first, second), pairs.get((second, first)))
