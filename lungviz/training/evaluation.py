"""Evaluating a task's models and their ensemble on the held-out test split.

Each model is scored exactly as the dashboard uses it: its raw output is
calibrated with the card's temperature and cut at the card's threshold. The
ensemble averages the members' calibrated class probabilities; its threshold is
chosen on the validation split by the same rule the trainer uses for single
models, so no test image influences any operating point. With several
sources (e.g. pediatric and adult radiographs), every model is also scored on
each source's test split alone, and within each view position where a
source's labels.csv records it (NIH: PA and AP): where the views are
confounded with the class, a model that learnt the view instead of the lungs
shows it there. Images are cropped to their lungs as each model's card says,
as the dashboard crops them. Metrics carry
stratified bootstrap 95% intervals with a fixed seed and inference runs with a
fixed batch size, so running `evaluate` again reproduces the numbers that
`update_card_metrics` wrote into the cards.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lungviz.errors import EvaluationError
from lungviz.models.cards import ModelCard
from lungviz.models.outputs import apply_temperature, as_class_probabilities
from lungviz.reporting.tables import format_with_ci
from lungviz.tasks import get_task
from lungviz.training import metrics
from lungviz.training.calibration import THRESHOLD_RULE, choose_threshold
from lungviz.training.datasets import SplitData, iterate_batches, labels_column, load_split, lung_cropper

ENSEMBLE = "ensemble"
EVALUATION_BATCH_SIZE = 32
SUMMARY_METRICS = ("accuracy", "sensitivity", "specificity", "precision", "f1", "mcc", "roc_auc", "pr_auc")
SUBGROUP_METRICS = ("accuracy", "sensitivity", "specificity", "roc_auc")
VIEW_COLUMN = "view_position"


def raw_probabilities(model, images: np.ndarray, head: str, batch_size: int = EVALUATION_BATCH_SIZE) -> np.ndarray:
    """Uncalibrated class probabilities (n, classes) of uint8 images already at the model's input size.

    The model is called eagerly batch by batch, as the dashboard calls it, so
    the temperature fitted on these outputs is the one the dashboard needs.
    """
    raw = np.concatenate([np.asarray(model(batch, training=False)) for batch in iterate_batches(images, batch_size)])
    return as_class_probabilities(raw, head)


def predict_probabilities(
    model, card: ModelCard, images: np.ndarray, batch_size: int = EVALUATION_BATCH_SIZE
) -> np.ndarray:
    """Calibrated class probabilities (n, classes): raw output scaled by the card's temperature."""
    return apply_temperature(raw_probabilities(model, images, card.head, batch_size), card.temperature)


def score(
    is_positive: np.ndarray,
    p_positive: np.ndarray,
    threshold: float,
    *,
    resamples: int = metrics.BOOTSTRAP_RESAMPLES,
    seed: int = metrics.BOOTSTRAP_SEED,
) -> dict[str, Any]:
    """Everything the report holds for one set of predictions at one threshold."""
    calibration = metrics.reliability(is_positive, p_positive)
    return {
        "threshold": float(threshold),
        "metrics": metrics.metrics_with_ci(is_positive, p_positive, threshold, resamples=resamples, seed=seed),
        "ece": calibration.pop("ece"),
        "confusion_matrix": metrics.confusion_matrix(is_positive, p_positive, threshold),
        "roc": metrics.roc_points(is_positive, p_positive),
        "pr": metrics.pr_points(is_positive, p_positive),
        "reliability": calibration,
    }


def _check_models(task: str, models: Sequence[tuple[ModelCard, Any]]) -> tuple[str, ...]:
    classes = get_task(task).classes
    if not models:
        raise EvaluationError(f"no models to evaluate for {task}")
    names = [card.name for card, _ in models]
    if len(set(names)) != len(names) or ENSEMBLE in names:
        raise EvaluationError(f"model names must be unique and not {ENSEMBLE!r}: {names}")
    for card, _ in models:
        if card.task != task or tuple(card.classes) != classes:
            raise EvaluationError(f"model {card.name!r} is for {card.task} {card.classes}, not {task} {list(classes)}")
    return classes


def subgroups(split: SplitData, roots: Sequence[Path]) -> dict[str, np.ndarray]:
    """Masks of the images scored on their own: each source (when there are several) and each view within it."""
    groups: dict[str, np.ndarray] = {}
    sources = split.source_names()
    views = labels_column(split, roots, VIEW_COLUMN)
    for source in sources:
        in_source = split.sources == source
        if len(sources) > 1:
            groups[source] = in_source
        if views is not None:
            for view in sorted({v for v in views[in_source] if v}):
                groups[f"{source} {view}"] = in_source & (views == view)
    return groups


def _score_subgroups(
    groups: dict[str, np.ndarray], truth: np.ndarray, p_positive: np.ndarray, threshold: float, **bootstrap
) -> dict[str, Any]:
    """Each subgroup's metrics at the model's threshold; a subgroup with one class only gets counts and a note."""
    scored: dict[str, Any] = {}
    for name, mask in groups.items():
        counts = {"positive": int(truth[mask].sum()), "negative": int((~truth[mask]).sum())}
        if min(counts.values()) == 0:
            scored[name] = {"counts": counts, "note": "one class only: no ROC-AUC, sensitivity or specificity"}
            continue
        scored[name] = {
            "counts": counts,
            "metrics": metrics.metrics_with_ci(truth[mask], p_positive[mask], threshold, **bootstrap),
            "confusion_matrix": metrics.confusion_matrix(truth[mask], p_positive[mask], threshold),
            "roc": metrics.roc_points(truth[mask], p_positive[mask]),
        }
    return scored


def evaluate_task(
    task: str,
    data_dirs: Path | Sequence[Path],
    models: Sequence[tuple[ModelCard, Any]],
    out_dir: Path | None = None,
    *,
    batch_size: int = EVALUATION_BATCH_SIZE,
    resamples: int = metrics.BOOTSTRAP_RESAMPLES,
    seed: int = metrics.BOOTSTRAP_SEED,
    lungs_weights: Path | None = None,
    crop_cache: Path | None = None,
) -> dict[str, Any]:
    """Test-split report for every (card, loaded Keras model) pair and, with two or more, their ensemble.

    Pooled over the sources, then per source and per view (`subgroups`). Lung
    crops use the segmenter in `lungs_weights` (default ./weights), with crop
    boxes cached in `crop_cache` (default runs/<task>, shared with training).
    With out_dir, also writes report.json, summary.md and figures.html there.
    """
    classes = _check_models(task, models)
    roots = [Path(data_dirs)] if isinstance(data_dirs, str | Path) else [Path(d) for d in data_dirs]
    positive = classes.index(get_task(task).positive_class)
    splits: dict[tuple[str, tuple[int, int], str], SplitData] = {}
    cache = crop_cache or Path("runs") / task

    def split_at(name: str, card: ModelCard) -> SplitData:
        key = (name, (card.input_size[0], card.input_size[1]), card.input_crop)
        if key not in splits:
            cropper = lung_cropper(task, card.input_crop, cache, lungs_weights)
            splits[key] = load_split(roots, name, classes, card.input_size, cropper)
        return splits[key]

    need_val = len(models) > 1
    test_p, val_p = {}, {}
    for card, model in models:
        test_p[card.name] = predict_probabilities(model, card, split_at("test", card).images, batch_size)
        if need_val:
            val_p[card.name] = predict_probabilities(model, card, split_at("val", card).images, batch_size)
    first = models[0][0]  # every input size lists the same files in the same order
    test = split_at("test", first)
    truth = test.labels == positive
    groups = subgroups(test, roots)
    bootstrap = {"resamples": resamples, "seed": seed}
    report: dict[str, Any] = {
        "task": task,
        "data_dirs": [root.name for root in roots],
        "split": "test",
        "classes": list(classes),
        "positive_class": classes[positive],
        "test_counts": test.counts(),
        "test_counts_by_source": test.counts_by_source(),
        "lungs_found": {
            card.name: split_at("test", card).lungs_found_counts() for card, _ in models if card.input_crop == "lungs"
        },
        "batch_size": batch_size,
        "bootstrap": {"method": "stratified percentile", "resamples": resamples, "seed": seed, "level": 0.95},
        "models": {},
        "ensemble": None,
    }
    for card, _ in models:
        p_positive = test_p[card.name][:, positive]
        entry = score(truth, p_positive, card.threshold, **bootstrap)
        report["models"][card.name] = {
            "architecture": card.architecture,
            "threshold_rule": card.threshold_rule,
            "temperature": card.temperature,
            **entry,
            "subgroups": _score_subgroups(groups, truth, p_positive, card.threshold, **bootstrap),
        }
    if need_val:
        val = split_at("val", first)
        val_mean = np.mean([val_p[card.name][:, positive] for card, _ in models], axis=0)
        point = choose_threshold(val_mean, val.labels == positive)
        test_mean = np.mean([test_p[card.name][:, positive] for card, _ in models], axis=0)
        report["ensemble"] = {
            "members": [card.name for card, _ in models],
            "combination": "mean calibrated probability",
            "threshold_rule": THRESHOLD_RULE,
            **score(truth, test_mean, point.threshold, **bootstrap),
            "subgroups": _score_subgroups(groups, truth, test_mean, point.threshold, **bootstrap),
        }
    if out_dir is not None:
        write_report(report, Path(out_dir))
    return report


CURVE_POINTS = 80
"""Points kept per stored curve: enough to draw it, few enough to keep cards small."""


def _thin(curve: dict[str, list[float]], points: int = CURVE_POINTS) -> dict[str, list[float]]:
    """Every column of a curve at `points` evenly spaced indices (first and last kept), rounded to 4 decimals."""
    length = len(next(iter(curve.values())))
    keep: list[int] = np.unique(np.linspace(0, length - 1, min(points, length)).round().astype(int)).tolist()
    return {key: [round(float(values[i]), 4) for i in keep if i < len(values)] for key, values in curve.items()}


def _without_curves(groups: dict[str, Any]) -> dict[str, Any]:
    """Subgroup scores without their full ROC (a thinned copy goes into the curves)."""
    return {name: {key: value for key, value in scored.items() if key != "roc"} for name, scored in groups.items()}


def plot_curves(entry: dict[str, Any]) -> dict[str, Any]:
    """What the Model cards page draws for one scored entry: thinned ROC and PR curves, the reliability bins,
    and the same ROC per subgroup (source or view)."""
    return {
        "roc": _thin(entry["roc"]),
        "pr": _thin(entry["pr"]),
        "reliability": entry["reliability"],
        "subgroup_roc": {name: _thin(scored["roc"]) for name, scored in entry["subgroups"].items() if "roc" in scored},
    }


def ensemble_summary(report: dict[str, Any]) -> dict[str, Any] | None:
    """The ensemble's test results and curves, for the file beside the cards (the ensemble has no card)."""
    entry = report["ensemble"]
    if entry is None:
        return None
    keep = ("members", "combination", "threshold_rule", "threshold", "metrics", "ece", "confusion_matrix")
    return {
        "task": report["task"],
        "data_dirs": report["data_dirs"],
        **{key: entry[key] for key in keep},
        "subgroups": _without_curves(entry["subgroups"]),
        "curves": plot_curves(entry),
    }


def update_card_metrics(card: ModelCard, report: dict[str, Any], *, save: bool = True) -> ModelCard:
    """Put the model's test results from `report` into its card (and save it where it was loaded from)."""
    if report["task"] != card.task or card.name not in report["models"]:
        raise EvaluationError(f"the report for {report['task']} has no results for model {card.name!r}")
    entry = report["models"][card.name]
    card.metrics = {  # other measurements (localisation) stay
        **card.metrics,
        "test": entry["metrics"],
        "ece": entry["ece"],
        "confusion_matrix": entry["confusion_matrix"],
        "threshold": entry["threshold"],
        "data_dirs": report["data_dirs"],
        "test_counts": report["test_counts"],
        "subgroups": _without_curves(entry["subgroups"]),
        "curves": plot_curves(entry),
        "bootstrap": report["bootstrap"],
        "batch_size": report["batch_size"],
    }
    if save:
        if card.card_path is None:
            raise EvaluationError(f"model card {card.name!r} was not loaded from a file; cannot save it")
        card.save(card.card_path)
    return card


def _results(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every scored entry by name, the ensemble last."""
    entries = dict(report["models"])
    if report["ensemble"] is not None:
        entries[ENSEMBLE] = report["ensemble"]
    return entries


def summary_markdown(report: dict[str, Any]) -> str:
    """One row per model (and the ensemble): the headline metrics with their 95% intervals."""
    counts = ", ".join(f"{n} {name}" for name, n in report["test_counts"].items())
    lines = [
        f"## {report['task']}: {' + '.join(report['data_dirs'])} test splits ({counts})",
        "",
        f"Positive class {report['positive_class']}. 95% intervals: {report['bootstrap']['method']} bootstrap, "
        f"{report['bootstrap']['resamples']} resamples, seed {report['bootstrap']['seed']}.",
        "",
        "| model | threshold | " + " | ".join(SUMMARY_METRICS) + " | ECE |",
        "|---|---:|" + "---|" * len(SUMMARY_METRICS) + "---:|",
    ]
    for name, entry in _results(report).items():
        cells = " | ".join(format_with_ci(entry["metrics"][m]) for m in SUMMARY_METRICS)
        lines.append(f"| {name} | {entry['threshold']:.3f} | {cells} | {entry['ece']:.3f} |")
    group_names = list(next(iter(_results(report).values()))["subgroups"])
    if group_names:
        lines += ["", "Per source and view (same thresholds):", ""]
        lines += ["| model | subgroup | n (pos / neg) | " + " | ".join(SUBGROUP_METRICS) + " |"]
        lines += ["|---|---|---|" + "---|" * len(SUBGROUP_METRICS)]
        for name, entry in _results(report).items():
            for group, scored in entry["subgroups"].items():
                counts = f"{scored['counts']['positive']} / {scored['counts']['negative']}"
                if "metrics" in scored:
                    cells = " | ".join(format_with_ci(scored["metrics"][m]) for m in SUBGROUP_METRICS)
                else:
                    cells = " | ".join("n/a" for _ in SUBGROUP_METRICS)
                lines.append(f"| {name} | {group} | {counts} | {cells} |")
    return "\n".join(lines) + "\n"


def report_figures(report: dict[str, Any]) -> dict[str, Any]:
    """Plotly figures of the report: ROC, precision-recall, reliability, forest plot, a confusion matrix per entry."""
    from lungviz.reporting import model_figures

    entries = _results(report)
    scored = [model_figures.ScoredModel.from_report_entry(name, entry) for name, entry in entries.items()]
    negative, positive = (c for c in report["classes"] if c != report["positive_class"]), report["positive_class"]
    negative_class = next(negative)
    figures = {
        "roc": model_figures.roc_figure(scored),
        "pr": model_figures.pr_figure(scored, positive),
        "reliability": model_figures.reliability_figure(scored, positive),
        "forest": model_figures.forest_figure(scored),
    }
    for name, entry in entries.items():
        figure = model_figures.confusion_figure(entry["confusion_matrix"], negative_class, positive)
        figures[f"confusion {name}"] = figure.update_layout(title=f"{name}: confusion matrix at its threshold (test)")
    return figures


def write_report(report: dict[str, Any], out_dir: Path) -> None:
    """report.json, summary.md and figures.html (one self-contained page: plotly.js embedded once, works offline)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out_dir / "summary.md").write_text(summary_markdown(report))
    figures = report_figures(report).values()
    body = "\n".join(
        figure.to_html(full_html=False, include_plotlyjs=index == 0) for index, figure in enumerate(figures)
    )
    title = f"LungViz evaluation: {report['task']}"
    (out_dir / "figures.html").write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
        f"</head><body><h1>{title}</h1>\n{body}\n</body></html>\n"
    )
