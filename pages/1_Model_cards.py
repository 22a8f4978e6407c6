"""Model cards: per task, the models compared at a glance, then each model's card in words, tables and plots.

Read from the cards (and the ensemble's results beside them) alone, so the page
is instant, never loads a model and needs no data set.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from lungviz.errors import ModelCardError
from lungviz.inference.modality import gate_card
from lungviz.models.cards import ModelCard
from lungviz.models.registry import discover, load_ensemble_summary, weights_dir
from lungviz.reporting import model_figures
from lungviz.reporting.markdown import literal
from lungviz.reporting.tables import model_summary
from lungviz.tasks import get_task

# An emoji page icon: a ":material/...:" one is fetched from fonts.gstatic.com (see dashboard.py).
st.set_page_config(page_title="LungViz model cards", page_icon="📇", layout="wide")

LOCALISATION_NOTE = (
    "Pointing game: the heatmap's peak inside the marked region. Heat inside: the share of the map's heat in the "
    "region; chance is the region's share of the image. 95% bootstrap intervals."
)


RANDOMISATION_NOTE = (
    "The model's layers are re-initialised from the head down and each method's maps recomputed on validation "
    "images (Adebayo et al., 2018). Maps that stay alike once the model is destroyed show the image, not the model."
)


def _with_interval(entry: dict[str, Any]) -> str:
    low, high = entry["ci95"]
    return f"{entry['value']:.3f} ({low:.3f} to {high:.3f})"


def _metric_rows(test: dict[str, Any]) -> list[dict[str, Any]]:
    """Table rows 'metric, value, 95% CI' from a card's test metrics ({metric: {"value", "ci95"}})."""
    rows = []
    for metric, entry in test.items():
        if isinstance(entry, dict) and "value" in entry:
            low, high = entry.get("ci95") or (None, None)
            interval = "-" if low is None else f"{low:.3f} to {high:.3f}"
            rows.append({"metric": metric, "value": entry["value"], "95% CI": interval})
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


def _subgroup_rows(card: ModelCard) -> list[dict[str, Any]]:
    """One row per source and view the card was also scored on, at the same threshold."""
    rows = []
    for group, scored in card.metrics.get("subgroups", {}).items():
        counts = scored["counts"]
        row: dict[str, Any] = {"test images": group, card.positive_class: counts["positive"]}
        row["others"] = counts["negative"]
        for metric in ("roc_auc", "sensitivity", "specificity"):
            row[metric] = _with_interval(scored["metrics"][metric]) if "metrics" in scored else "n/a (one class)"
        rows.append(row)
    return rows


def _localisation_rows(card: ModelCard) -> list[dict[str, Any]]:
    """One row per annotated source and explanation method, from the card's `metrics.localisation`."""
    return [
        {"annotations": source, "method": method, "images": scores["images"],
         "pointing game": _with_interval(scores["pointing_hit_rate"]),
         "heat inside": _with_interval(scores["heat_inside"]), "chance": round(scores["region_share_of_image"], 3)}
        for source, by_method in card.metrics.get("localisation", {}).items()
        for method, scores in by_method.items()
    ]  # fmt: skip


def _split_rows(card: ModelCard) -> list[dict[str, Any]]:
    """Images per source, split and class: {source: {split: {class: n}}} (older cards: {split: {class: n}})."""
    sizes = card.training.get("split_sizes", {})
    if sizes and all(split in ("train", "val", "test") for split in sizes):
        sizes = {card.training.get("data_dir", "data"): sizes}
    return [
        {"source": source, "split": split, **counts}
        for source, splits in sizes.items()
        for split, counts in splits.items()
    ]


def _recipe_text(card: ModelCard) -> str:
    """Provenance and recipe as short labelled lines."""
    training, recipe = card.training, card.training.get("recipe", {})
    lines = [f"**Starting weights:** {recipe.get('initial_weights', 'not recorded')}"]
    for stage in recipe.get("stages", []):
        seconds = stage.get("seconds_per_epoch")
        pace = f", {seconds:.0f} s per epoch" if seconds else ""
        lines.append(
            f"**Stage {stage['name']}:** {stage['description']}; learning rate {stage['learning_rate']:g}; "
            f"{stage['epochs_run']} of {stage['max_epochs']} epochs run, best epoch {stage['best_epoch']}{pace}"
        )
    if augmentation := recipe.get("augmentation"):
        jitter = ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in augmentation.items())
        lines.append(f"**Augmentation:** {jitter}")
    else:
        lines.append("**Augmentation:** none")
    if weights := recipe.get("loss_weights"):
        shares = "; ".join(
            f"{literal(source)}: " + ", ".join(f"{name} {w:.2f}" for name, w in by_class.items())
            for source, by_class in weights.items()
        )
        lines.append(f"**Loss weight per image:** {shares}")
    crop = "the lungs' box (8% margin)" if card.input_crop == "lungs" else "the whole image"
    lines.append(f"**Input:** {card.input_size[0]} x {card.input_size[1]}, cropped to {crop}")
    if dtype := training.get("weights_dtype"):
        change = training.get("weights_max_output_change")
        moved = f", outputs moved by at most {change:.4f} on validation images" if change is not None else ""
        lines.append(f"**Storage:** {dtype}, {card.file_size_bytes / 1e6:.1f} MB{moved}")
    if command := training.get("command"):
        lines.append(f"**Command:** {literal(command)}")
    return "  \n".join(lines)


def show_card(card: ModelCard, key: str) -> None:
    with st.container(border=True):
        st.subheader(card.name)
        st.caption(model_summary(card))
        left, right = st.columns(2)
        left.markdown(
            f"**Classes:** {', '.join(card.classes)} (positive: {card.positive_class})  \n"
            f"**Threshold:** {card.threshold:.3f} on calibrated P({card.positive_class}) ({card.threshold_rule})  \n"
            f"**Calibration:** {card.calibration.get('method', 'none')}, temperature {card.temperature:.3f}  \n"
            f"**CAM layer:** {card.cam_layer}"
        )
        if card.training:
            left.markdown(_recipe_text(card))
            if splits := _split_rows(card):
                left.markdown("**Images per split**")
                left.dataframe(splits, hide_index=True)
        rows = _metric_rows(card.metrics.get("test", {}))
        if not rows:
            right.info("Not evaluated yet: this card has no test metrics.")
        else:
            right.markdown("**Test metrics**")
            right.dataframe(
                rows, hide_index=True, column_config={"value": st.column_config.NumberColumn(format="%.3f")}
            )
            right.caption(_evaluation_note(card))
            if (matrix := card.metrics.get("confusion_matrix")) and len(card.classes) == 2:
                negative = card.classes[1 - card.positive_index]
                figure = model_figures.confusion_figure(matrix, negative, card.positive_class)
                right.plotly_chart(figure, key=f"confusion-{key}")
        stages = card.training.get("recipe", {}).get("stages", [])
        if any(stage.get("history") for stage in stages):
            st.plotly_chart(model_figures.learning_curves(stages), key=f"learning-{key}")
        if subgroups := _subgroup_rows(card):
            st.markdown("**Per source and view position** (pooled metrics above)")
            st.dataframe(subgroups, hide_index=True)
        if localisation := _localisation_rows(card):
            st.markdown(f"**Where its heatmaps of {literal(card.positive_class)} point** (annotated findings)")
            st.dataframe(localisation, hide_index=True)
            st.caption(LOCALISATION_NOTE)
        if randomisation := card.metrics.get("randomisation"):
            st.plotly_chart(model_figures.randomisation_figure(randomisation), key=f"randomisation-{key}")
            st.caption(RANDOMISATION_NOTE)
        if card.limitations:
            st.markdown("**Limitations**\n" + "\n".join(f"- {item}" for item in card.limitations))


def show_comparison(task: str, cards: list[ModelCard]) -> None:
    """The task's models (and their ensemble) on shared plots, switchable by source where cards have them."""
    scored = [model_figures.ScoredModel.from_card(card) for card in cards if card.metrics.get("test")]
    if ensemble := load_ensemble_summary(task, weights_dir()):
        scored.append(model_figures.ScoredModel.from_stored("ensemble", ensemble, metrics_key="metrics"))
    if not scored:
        return
    positive = get_task(task).positive_class
    groups = model_figures.subgroup_names(scored)
    subgroup = model_figures.POOLED
    if len(groups) > 1:
        choice = st.segmented_control("Test images", groups, default=groups[0], key=f"source-{task}")
        subgroup = choice or groups[0]
    roc_column, pr_column = st.columns(2)
    roc_column.plotly_chart(model_figures.roc_figure(scored, subgroup), key=f"roc-{task}")
    pr_column.plotly_chart(model_figures.pr_figure(scored, positive), key=f"pr-{task}")
    st.plotly_chart(model_figures.forest_figure(scored, subgroup), key=f"forest-{task}")
    reliability_column, note_column = st.columns(2)
    reliability_column.plotly_chart(model_figures.reliability_figure(scored, positive), key=f"reliability-{task}")
    note_column.caption(
        "Dots mark each model's operating point (its card's threshold, chosen on validation). The ensemble "
        "averages the models' calibrated probabilities. Precision-recall and reliability are pooled over the "
        "sources; ROC and the metrics switch with the test images chosen above."
    )


def _gate_rows(evaluation: dict[str, Any], held_out_families: dict[str, Any]) -> list[dict[str, Any]]:
    """Routing of each source's test images, plain and re-framed, and of non-chest pictures from families
    the gate was fitted without."""
    rows = []
    for source, rates in evaluation.items():
        for variant in ("test", "test_reframed"):
            if isinstance(rates, dict) and variant in rates:
                counts = rates[variant]
                rows.append({"images": f"{source} ({variant.replace('_', ', ')})", "count": counts["images"],
                             "routed": counts["routed"], "called other": counts["called_other"]})  # fmt: skip
    for family, counts in held_out_families.get("non_chest_summary", {}).items():
        rows.append({"images": family.replace("_", " "), "count": counts["images"], "routed": None,
                     "called other": counts["called_other"]})  # fmt: skip
    return rows


def _held_out_rows(folds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"held out": fold["held_out"], "images": fold["unseen"]["images"], "routed": fold["unseen"]["routed"],
         "called other": fold["unseen"]["called_other"], "wrong modality": fold["unseen"]["wrong_modality"]}
        for fold in folds
    ]  # fmt: skip


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
        try:
            show_comparison(task, cards)
        except ModelCardError as error:
            st.error(literal(str(error)))
        for card in cards:
            show_card(card, key=f"{task}-{card.name}")

gate = gate_card(weights_dir())
if gate:
    st.header("Modality gate")
    st.markdown(f"**Method:** {gate['method']}  \n**Threshold rule:** {gate['threshold_rule']}")
    if evaluation := gate.get("evaluation"):
        st.dataframe(_gate_rows(evaluation, gate.get("leave_one_family_out", {})), hide_index=True)
        st.caption("Each source's test split, as stored and re-framed (borders, markers, windows, JPEG); non-chest "
                   "pictures from scikit-image, scikit-learn and pydicom, each family scored by a gate fitted "
                   "without it.")  # fmt: skip
    if folds := gate.get("leave_one_source_out"):
        st.markdown("**Leave one source out**: fitted without a source, then routing that source's images")
        st.dataframe(_held_out_rows(folds), hide_index=True)
