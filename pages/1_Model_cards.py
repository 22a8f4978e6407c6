"""Model cards: what every shipped model is, how it decides and how well it did on held-out data.

Read from the cards alone (`registry.discover`), so the page is instant and
never loads a model.
"""

from __future__ import annotations

import json
from typing import Any

import streamlit as st

from lungviz.errors import ModelCardError
from lungviz.inference.modality import gate_card
from lungviz.models.cards import ModelCard
from lungviz.models.registry import discover, weights_dir
from lungviz.reporting.markdown import literal

# An emoji page icon: a ":material/...:" one is fetched from fonts.gstatic.com (see dashboard.py).
st.set_page_config(page_title="LungViz model cards", page_icon="📇", layout="wide")


def _metric_rows(test: dict[str, Any]) -> list[dict[str, Any]]:
    """Table rows 'metric, value, 95% CI' from a card's test metrics ({metric: {"value", "ci95"}})."""
    rows = []
    for metric, entry in test.items():
        if isinstance(entry, dict) and "value" in entry:
            low, high = entry.get("ci95") or (None, None)
            rows.append(
                {
                    "metric": metric,
                    "value": entry["value"],
                    "95% CI": "-" if low is None else f"{low:.3f} to {high:.3f}",
                }
            )
    return rows


def _evaluation_note(card: ModelCard) -> str:
    """Where the test metrics come from, in one line: data, class counts, calibration error, interval method."""
    metrics, parts = card.metrics, []
    if counts := metrics.get("test_counts"):
        sources = metrics.get("data_dirs") or [metrics[key] for key in ("data_dir",) if metrics.get(key)]
        where = f"{' + '.join(sources)} test splits" if sources else "Test split"
        parts.append(f"{where}: " + ", ".join(f"{n} {name}" for name, n in counts.items()))
    if metrics.get("ece") is not None:
        parts.append(f"expected calibration error {metrics['ece']:.3f}")
    if bootstrap := metrics.get("bootstrap"):
        parts.append(f"95% CIs by {bootstrap.get('method', '')} bootstrap, {bootstrap.get('resamples', '?')} resamples")
    return "; ".join(parts)


def _confusion_rows(card: ModelCard) -> list[dict[str, Any]]:
    """[[TN, FP], [FN, TP]] as rows 'true class' x 'called class' (two-class cards only)."""
    matrix = card.metrics.get("confusion_matrix")
    if not matrix or len(card.classes) != 2:
        return []
    negative = card.classes[1 - card.positive_index]
    order = [negative, card.positive_class]
    return [
        {"true class": truth, **{f"called {called}": matrix[i][j] for j, called in enumerate(order)}}
        for i, truth in enumerate(order)
    ]


LOCALISATION_NOTE = (
    "Pointing game: the heatmap's peak inside the marked region. Heat inside: the share of the map's heat in the "
    "region; chance is the region's share of the image. 95% bootstrap intervals."
)


def _with_interval(entry: dict[str, Any]) -> str:
    low, high = entry["ci95"]
    return f"{entry['value']:.3f} ({low:.3f} to {high:.3f})"


def _localisation_rows(card: ModelCard) -> list[dict[str, Any]]:
    """One row per annotated source and explanation method, from the card's `metrics.localisation`."""
    return [
        {"annotations": source, "method": method, "images": scores["images"],
         "pointing game": _with_interval(scores["pointing_hit_rate"]),
         "heat inside": _with_interval(scores["heat_inside"]), "chance": round(scores["region_share_of_image"], 3)}
        for source, by_method in card.metrics.get("localisation", {}).items()
        for method, scores in by_method.items()
    ]  # fmt: skip


def _subgroup_rows(card: ModelCard) -> list[dict[str, Any]]:
    """One row per source and view the card was also scored on, at the same threshold."""
    rows = []
    for group, scored in card.metrics.get("subgroups", {}).items():
        counts = scored["counts"]
        row: dict[str, Any] = {
            "test images": group,
            card.positive_class: counts["positive"],
            "others": counts["negative"],
        }
        for metric in ("roc_auc", "sensitivity", "specificity"):
            row[metric] = _with_interval(scored["metrics"][metric]) if "metrics" in scored else "n/a (one class)"
        rows.append(row)
    return rows


def _plain(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def show_card(card: ModelCard) -> None:
    with st.container(border=True):
        st.subheader(card.name)
        left, right = st.columns(2)
        left.markdown(
            f"**Architecture:** {card.architecture}  \n"
            f"**Classes:** {', '.join(card.classes)} (positive: {card.positive_class})  \n"
            f"**Input size:** {card.input_size[0]} x {card.input_size[1]}, {card.head} head  \n"
            f"**Threshold:** {card.threshold:.3f} on calibrated P({card.positive_class}) ({card.threshold_rule})  \n"
            f"**Calibration:** {card.calibration.get('method', 'none')}, temperature {card.temperature:.3f}  \n"
            f"**File:** {card.file} ({card.file_size_bytes / 1e6:.1f} MB)"
        )
        if card.training:
            left.markdown("**Training**")
            left.table([{"item": key, "value": _plain(value)} for key, value in card.training.items()])
        rows = _metric_rows(card.metrics.get("test", {}))
        if not rows:
            right.info("Not evaluated yet: this card has no test metrics.")
        else:
            right.markdown("**Test metrics**")
            right.dataframe(
                rows, hide_index=True, column_config={"value": st.column_config.NumberColumn(format="%.3f")}
            )
            right.caption(_evaluation_note(card))
            if confusion := _confusion_rows(card):
                right.markdown("**Confusion matrix at the threshold (test)**")
                right.dataframe(confusion, hide_index=True)
        if subgroups := _subgroup_rows(card):
            st.markdown("**Per source and view position** (pooled metrics above)")
            st.dataframe(subgroups, hide_index=True)
        if localisation := _localisation_rows(card):
            st.markdown(f"**Where its heatmaps of {literal(card.positive_class)} point** (annotated findings)")
            st.dataframe(localisation, hide_index=True)
            st.caption(LOCALISATION_NOTE)
        if card.limitations:
            st.markdown("**Limitations**\n" + "\n".join(f"- {item}" for item in card.limitations))


st.title("Model cards")
st.caption(
    "Every model the dashboard can run, as described by the card shipped beside its weights. "
    "LungViz is a research tool, not a medical device."
)
try:
    cards_by_task = discover()
except ModelCardError as error:
    st.error(literal(f"A model card in {weights_dir()} is broken: {error}"))
    st.stop()
if not any(cards_by_task.values()):
    st.info(f"No models in {literal(str(weights_dir()))}. The dashboard's start page explains how to get them.")
for task, cards in cards_by_task.items():
    if cards:
        st.header(task)
        for card in cards:
            show_card(card)

gate = gate_card(weights_dir())
if gate:
    st.header("Modality gate")
    st.markdown(f"**Method:** {gate['method']}  \n**Threshold rule:** {gate['threshold_rule']}")
    if evaluation := gate.get("evaluation"):
        st.dataframe(
            [
                {
                    "images": name,
                    "count": rates["images"],
                    "called other": rates["called_other"],
                    "correct": rates.get("correct", "-"),
                }
                for name, rates in evaluation.items()
            ],
            hide_index=True,
        )
        st.caption("Test splits of both data sets, and scikit-image's bundled photos, documents and micrographs.")
