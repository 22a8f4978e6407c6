"""Model cards: what every shipped model is, how it decides and how well it did on held-out data.

Read from the cards alone (`registry.discover`), so the page is instant and
never loads a model.
"""

from __future__ import annotations

import json
from typing import Any

import streamlit as st

from lungviz.cards import ModelCard, ModelCardError
from lungviz.registry import discover, weights_dir

st.set_page_config(page_title="LungViz model cards", page_icon=":material/description:", layout="wide")


def _metric_rows(split: dict[str, Any]) -> list[dict[str, Any]]:
    """Table rows 'metric, value, 95% CI' for one split of a card's metrics."""
    rows = []
    for metric, entry in split.items():
        if isinstance(entry, dict) and "value" in entry:
            low, high = entry.get("ci95") or (None, None)
            rows.append({"metric": metric, "value": entry["value"],
                         "95% CI": "-" if low is None else f"{low:.3f} to {high:.3f}"})
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
            f"**File:** {card.file} ({card.file_size_bytes / 1e6:.1f} MB)")
        if card.training:
            left.markdown("**Training data**")
            left.table([{"item": key, "value": _plain(value)} for key, value in card.training.items()])
        evaluated = {name: _metric_rows(split) for name, split in card.metrics.items() if isinstance(split, dict)}
        evaluated = {name: rows for name, rows in evaluated.items() if rows}
        if not evaluated:
            right.info("Not evaluated yet: this card has no test metrics.")
        for name, rows in evaluated.items():
            right.markdown(f"**Metrics on the {name} split**")
            right.dataframe(rows, hide_index=True,
                            column_config={"value": st.column_config.NumberColumn(format="%.3f")})
        if card.limitations:
            st.markdown("**Limitations**\n" + "\n".join(f"- {item}" for item in card.limitations))


st.title("Model cards")
st.caption("Every model the dashboard can run, as described by the card shipped beside its weights. "
           "LungViz is a research tool, not a medical device.")
try:
    cards_by_task = discover()
except ModelCardError as error:
    st.error(f"A model card in {weights_dir()} is broken: {error}")
    st.stop()
if not any(cards_by_task.values()):
    st.info(f"No models in {weights_dir()}. The dashboard's start page explains how to get them.")
for task, cards in cards_by_task.items():
    if cards:
        st.header(task)
        for card in cards:
            show_card(card)
