"""Command line: `python -m lungviz predict|train|evaluate ...`.

`predict --json` prints one JSON object per input file per line, in input order;
other tools parse it, so its keys are a stable interface (see README). Bad
files become records with an `error` message; they never stop the run and never
print a traceback. Exit status: 0 when the inputs were processed (even if some
were rejected), 2 for usage errors. Every `LungVizError` (a bad argument,
card, data set or model file) is the user's to fix and is reported as a usage
error; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lungviz.errors import LungVizError
from lungviz.tasks import TASKS

if TYPE_CHECKING:  # the CLI imports TensorFlow only for the commands that need it
    from lungviz.inference.session import Analysis, AnalysisSession

USAGE_ERROR = 2


class UsageError(LungVizError):
    """Bad arguments that argparse cannot see (a missing folder, an empty weights folder)."""


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lungviz", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser("predict", help="classify and explain chest images")
    predict.add_argument("files", nargs="+", metavar="FILE", help="PNG, JPEG, TIFF, BMP or DICOM files")
    predict.add_argument(
        "--task",
        default="auto",
        choices=["auto", *TASKS],
        help="task to run; 'auto' routes by modality (DICOM header or the modality gate)",
    )
    predict.add_argument("--models", default=None, help="comma-separated model names (default: all of the task)")
    predict.add_argument("--method", default="gradcam", help="explanation method (default gradcam; 'none' to skip)")
    predict.add_argument("--target", default="predicted", help="class to explain (default: the predicted class)")
    predict.add_argument(
        "--save-heatmaps",
        type=Path,
        default=None,
        metavar="DIR",
        help="write one overlay PNG per file and model into DIR",
    )
    predict.add_argument(
        "--faithfulness",
        action="store_true",
        help="check each heatmap: deletion and insertion areas against a random and an image-gradient map",
    )
    predict.add_argument("--json", action="store_true", help="print JSON Lines, one object per file")
    predict.add_argument("--weights", type=Path, default=None, help="weights folder (default: ./weights)")
    predict.set_defaults(handler=_run_predict)

    cards = commands.add_parser("cards", help="print the table of shipped models from their cards")
    cards.add_argument("--update-readme", action="store_true", help="rewrite the table in README.md")
    cards.add_argument("--weights", type=Path, default=None, help="weights folder (default: ./weights)")
    cards.set_defaults(handler=_run_cards)
    train = commands.add_parser("train", help="fine-tune or train a classifier on a folder-per-class data set")
    train.add_argument(
        "--data",
        type=Path,
        required=True,
        action="append",
        help="data set with train/ and val/ (and test/) folders; repeat it to train on several sources",
    )
    train.add_argument("--task", required=True, choices=list(TASKS))
    train.add_argument("--arch", required=True, help="efficientnet_lite0|1|2, simple_cnn or a keras.applications name")
    train.add_argument("--name", default=None, help="model name (default: the architecture)")
    train.add_argument("--out", type=Path, default=None, help="where the .keras and card go (default weights/<task>)")
    train.add_argument("--run-dir", type=Path, default=None, help="checkpoints and logs (default runs/<task>/<name>)")
    train.add_argument("--input-size", type=int, default=224, help="square input side in pixels")
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--head-epochs", type=int, default=30, help="stage 1: new head on the frozen backbone")
    train.add_argument("--epochs", type=int, default=15, help="stage 2 fine-tuning (or the whole from-scratch run)")
    train.add_argument("--lr", type=float, default=None, help="stage 2 learning rate (default 1e-4, scratch 1e-3)")
    train.add_argument("--finetune-blocks", type=_blocks, default=2, help="top backbone blocks to fine-tune, or 'all'")
    train.add_argument("--patience", type=int, default=4, help="early stopping patience on validation AUC")
    train.add_argument("--no-augment", action="store_true", help="switch augmentation off")
    train.add_argument(
        "--whole-image", action="store_true", help="feed whole images instead of lung crops (ablations only)"
    )
    train.add_argument(
        "--imagenet-weights",
        type=Path,
        default=None,
        help="ImageNet weights file for a keras.applications architecture",
    )
    train.add_argument("--seed", type=int, default=42)
    train.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    train.set_defaults(handler=_run_train)

    evaluate = commands.add_parser(
        "evaluate", help="test-split metrics with 95%% bootstrap CIs, per model and ensemble"
    )
    evaluate.add_argument("--task", required=True, choices=list(TASKS))
    evaluate.add_argument(
        "--data",
        type=Path,
        required=True,
        action="append",
        help="data set with val/ and test/ folders; repeat it to score several sources (pooled and each)",
    )
    evaluate.add_argument("--models", default=None, help="comma-separated model names (default: all of the task)")
    evaluate.add_argument("--out", type=Path, default=None, help="write report.json, summary.md and figures.html")
    evaluate.add_argument("--update-cards", action="store_true", help="write the test metrics into the model cards")
    evaluate.add_argument("--json", action="store_true", help="print the full report as JSON")
    evaluate.add_argument("--weights", type=Path, default=None, help="weights folder (default: ./weights)")
    evaluate.set_defaults(handler=_run_evaluate)

    lungs = commands.add_parser("lungs", help="train or evaluate the chest X-ray lung segmenter")
    lungs.add_argument("action", choices=["train", "evaluate"])
    lungs.add_argument("--data", type=Path, required=True, help="COVID-QU-Ex lung masks (labels.csv, train/, val/)")
    lungs.add_argument("--epochs", type=int, default=14)
    lungs.add_argument("--input-size", type=int, default=160, help="square input side, a multiple of 16")
    lungs.add_argument("--limit", type=int, default=None, help="use only the first N images of each split (tests)")
    lungs.add_argument("--run-dir", type=Path, default=Path("runs") / "lungs", help="checkpoints and history")
    lungs.add_argument("--weights", type=Path, default=None, help="weights folder (default: ./weights)")
    lungs.set_defaults(handler=_run_lungs)

    localise = commands.add_parser("localisation", help="where the X-ray models' heatmaps point on annotated findings")
    localise.add_argument("--qu-ex", type=Path, help="COVID-QU-Ex infection masks (labels.csv, val/COVID)")
    localise.add_argument("--nih", type=Path, help="NIH ChestX-ray14 subset with radiologist boxes (boxes.csv)")
    localise.add_argument("--methods", default="gradcam", help="comma-separated explanation methods")
    localise.add_argument("--models", default=None, help="comma-separated model names (default: all X-ray models)")
    localise.add_argument(
        "--choose-cam-layer",
        action="store_true",
        help="score each model's Grad-CAM at its CAM layer and its architecture's other candidates on the first "
        "annotated source; the best is used (and, with --update-cards, written into the card)",
    )
    localise.add_argument(
        "--limit", type=int, default=None, help="score a fixed random sample of at most N images per source (faster)"
    )
    localise.add_argument("--update-cards", action="store_true", help="write the scores into the model cards")
    localise.add_argument("--weights", type=Path, default=None, help="weights folder (default: ./weights)")
    localise.set_defaults(handler=_run_localisation)

    randomise = commands.add_parser(
        "randomisation", help="sanity check of the explanation methods: do the maps change when the model is destroyed?"
    )
    randomise.add_argument("--task", required=True, choices=list(TASKS))
    randomise.add_argument("--data", type=Path, required=True, action="append", help="data set(s) with a val/ split")
    randomise.add_argument("--methods", default="gradcam", help="comma-separated explanation methods")
    randomise.add_argument("--models", default=None, help="comma-separated model names (default: all of the task)")
    randomise.add_argument("--images", type=int, default=8, help="validation images to compare maps on")
    randomise.add_argument("--update-cards", action="store_true", help="write the results into the model cards")
    randomise.add_argument("--weights", type=Path, default=None, help="weights folder (default: ./weights)")
    randomise.set_defaults(handler=_run_randomisation)

    gate = commands.add_parser("gate", help="fit or evaluate the modality / out-of-distribution gate")
    gate.add_argument("action", choices=["fit", "evaluate"])
    gate.add_argument(
        "--xray", type=Path, action="append", required=True, help="chest X-ray data set (train/val/test); repeatable"
    )
    gate.add_argument(
        "--ct",
        type=Path,
        action="append",
        required=True,
        help="chest CT data set (train/val/test), or DICOM CT file(s): a .dcm or a folder of them; repeatable",
    )
    gate.add_argument(
        "--leave-one-source-out",
        action="store_true",
        help="evaluate: fit without each chest source in turn and route its images (needs two sources of a "
        "modality), and without each non-chest family in turn and count it called other",
    )
    gate.add_argument("--cache", type=Path, default=None, help="folder to keep image features in between runs")
    gate.add_argument("--json", action="store_true", help="print the report as JSON instead of tables")
    gate.add_argument("--weights", type=Path, default=None, help="weights folder (default: ./weights)")
    gate.set_defaults(handler=_run_gate)

    report = commands.add_parser(
        "report", help="analyse files and write a PDF study report: settings and models, then one page per file"
    )
    report.add_argument("files", nargs="+", metavar="FILE", help="PNG, JPEG, TIFF, BMP or DICOM files")
    report.add_argument("--out", type=Path, required=True, help="the PDF to write (its folder must exist)")
    report.add_argument(
        "--task",
        default="auto",
        choices=["auto", *TASKS],
        help="task to run; 'auto' routes by modality (DICOM header or the modality gate)",
    )
    report.add_argument("--models", default=None, help="comma-separated model names (default: all of the task)")
    report.add_argument("--method", default="gradcam", help="explanation method (default gradcam; 'none' to skip)")
    report.add_argument("--target", default="predicted", help="class to explain (default: the predicted class)")
    report.add_argument("--weights", type=Path, default=None, help="weights folder (default: ./weights)")
    report.set_defaults(handler=_run_report)
    return parser


def _require_folder(folder: Path, what: str) -> None:
    if not folder.is_dir():
        raise UsageError(f"{what} folder {folder} does not exist")


def _run_train(args: argparse.Namespace) -> int:
    from lungviz.models.registry import weights_dir
    from lungviz.training.trainer import TrainConfig, train

    for folder in args.data:
        _require_folder(folder, "data")
    name = args.name or args.arch.replace("_", "-")
    config = TrainConfig(
        task=args.task,
        data_dirs=tuple(args.data),
        input_crop="none" if args.whole_image else "lungs",
        architecture=args.arch,
        name=name,
        run_dir=args.run_dir or Path("runs") / args.task / name,
        export_dir=args.out or weights_dir() / args.task,
        input_size=(args.input_size, args.input_size),
        batch_size=args.batch_size,
        head_epochs=args.head_epochs,
        epochs=args.epochs,
        learning_rate=args.lr,
        finetune_blocks=args.finetune_blocks,
        patience=args.patience,
        augment=not args.no_augment,
        imagenet_weights=args.imagenet_weights,
        seed=args.seed,
        resume=args.resume,
        command="python -m lungviz " + shlex.join(args.argv),
    )
    result = train(config)
    print(f"saved {result.model_path} and {result.card_path}")
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    import json

    from lungviz.models.registry import ensemble_summary_path, load_model, select_cards
    from lungviz.training.evaluation import (
        ensemble_summary,
        evaluate_task,
        summary_markdown,
        update_card_metrics,
    )

    for folder in args.data:
        _require_folder(folder, "data")
    session = _session(args.weights)
    cards = select_cards(session.cards[args.task], _names(args.models))
    if not cards:
        raise UsageError(f"no models for task {args.task} in {session.root}")
    models = [(card, load_model(card)) for card in cards]
    report = evaluate_task(args.task, args.data, models, args.out, lungs_weights=session.root)
    if args.update_cards:
        for card in cards:
            update_card_metrics(card, report)
        if (summary := ensemble_summary(report)) is not None:
            path = ensemble_summary_path(args.task, session.root)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(report, indent=2) if args.json else summary_markdown(report))
    return 0


def _run_gate(args: argparse.Namespace) -> int:
    import json

    from lungviz.inference import modality
    from lungviz.models.registry import weights_dir
    from lungviz.training import gate as gate_fitting

    root = args.weights or weights_dir()
    sources = [gate_fitting.GateSource("xray", p) for p in args.xray] + [
        gate_fitting.GateSource("ct", p) for p in args.ct
    ]
    for source in sources:
        source.check()
    if args.action == "fit":
        print(json.dumps(gate_fitting.train_gate(sources, root / modality.GATE_DIR, cache=args.cache), indent=2))
        return 0
    card = modality.gate_card(root)
    results: dict[str, object]
    if args.leave_one_source_out:
        results = gate_fitting.evaluate_held_out(sources, cache=args.cache)
        print(json.dumps(results, indent=2) if args.json else gate_fitting.held_out_table(results))
    else:
        gate = modality.load_gate(root)
        if gate is None or card is None:
            raise UsageError(f"no gate in {root / modality.GATE_DIR}; run 'gate fit' first")
        evaluation = gate_fitting.evaluate_gate(gate, sources)
        print(json.dumps(evaluation, indent=2) if args.json else gate_fitting.evaluation_table(evaluation))
        results = {"evaluation": evaluation}
    if card is not None:  # the rates belong on the card of the gate they describe
        (root / modality.GATE_DIR / modality.CARD_FILE).write_text(json.dumps({**card, **results}, indent=2) + "\n")
    return 0


def _run_lungs(args: argparse.Namespace) -> int:
    import json

    from lungviz.inference.lungs import LUNGS_DIR, SEGMENTER_CARD, XrayLungSegmenter
    from lungviz.models.registry import weights_dir
    from lungviz.training.segmentation import evaluate_segmenter, load_masked_split, train_segmenter

    _require_folder(args.data, "data")
    folder = (args.weights or weights_dir()) / LUNGS_DIR
    if args.action == "train":
        card = train_segmenter(args.data, folder, args.run_dir, input_size=(args.input_size, args.input_size),
                               epochs=args.epochs, limit=args.limit,
                               command="python -m lungviz " + shlex.join(args.argv))  # fmt: skip
        report = card["evaluation"]
    else:
        report = evaluate_segmenter(XrayLungSegmenter.load(folder), load_masked_split(args.data, "val", args.limit))
        card = json.loads((folder / SEGMENTER_CARD).read_text())
        (folder / SEGMENTER_CARD).write_text(json.dumps({**card, "evaluation": {"split": "val", **report}}, indent=2))
    print(json.dumps(report, indent=2))
    return 0


def _run_localisation(args: argparse.Namespace) -> int:
    import json
    from dataclasses import replace

    from lungviz.inference.explanations import check_method
    from lungviz.inference.explanations.graph import cam_resolution
    from lungviz.inference.prediction import Classifier
    from lungviz.models.architectures import get_architecture
    from lungviz.models.registry import select_cards
    from lungviz.training.localisation import (
        best_layer,
        compare_layers,
        covid_qu_ex_infections,
        localisation_scores,
        nih_boxes,
        sample_images,
        with_lungs,
    )

    methods = _names(args.methods) or []
    for method in methods:
        check_method(method)
    sources = {}
    if args.qu_ex is not None:
        _require_folder(args.qu_ex, "COVID-QU-Ex")
        sources["covid-qu-ex infection masks (val)"] = covid_qu_ex_infections(args.qu_ex)[0]
    if args.nih is not None:
        _require_folder(args.nih, "NIH")
        sources["nih pneumonia boxes"] = nih_boxes(args.nih)
    if not sources:
        raise UsageError("give --qu-ex, --nih or both: the annotated images to score the heatmaps on")
    if args.limit is not None:
        if args.limit < 1:
            raise UsageError("--limit must be a positive number of images")
        sources = {source: sample_images(images, args.limit) for source, images in sources.items()}
    session = _session(args.weights)
    sources = {source: with_lungs(images, session.segmenter) for source, images in sources.items()}
    cards = select_cards(session.cards["xray-pneumonia"], _names(args.models))
    report: dict[str, dict[str, dict[str, object]]] = {}
    layer_report: dict[str, dict[str, object]] = {}
    for card in cards:
        classifier = session.classifier(card)
        if args.choose_cam_layer:
            first_source, annotated = next(iter(sources.items()))
            candidates = [card.cam_layer, *get_architecture(card.architecture).other_cam_layers]
            by_layer = compare_layers(classifier, annotated, candidates, "gradcam")
            chosen = best_layer(by_layer)
            layer_report[card.name] = {"scored_on": first_source, "layers": by_layer, "chosen": chosen}
            if chosen != card.cam_layer:
                card = replace(card, cam_layer=chosen, cam_resolution=cam_resolution(classifier.model, chosen))
                classifier = Classifier(card, classifier.model)
        report[card.name] = {
            source: {method: localisation_scores(classifier, images, method) for method in methods}
            for source, images in sources.items()
        }
        if args.update_cards and card.card_path is not None:  # (registry cards always know their file)
            card.metrics = {**card.metrics, "localisation": report[card.name]}
            if card.name in layer_report:
                card.metrics["cam_layer_choice"] = layer_report[card.name]
            card.save(card.card_path)
    print(json.dumps({"localisation": report, "cam_layers": layer_report} if layer_report else report, indent=2))
    return 0


def _run_randomisation(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from lungviz.inference.explanations import check_method
    from lungviz.models.registry import select_cards
    from lungviz.preprocessing import gray_batch_to_input
    from lungviz.tasks import get_task
    from lungviz.training.datasets import load_split, lung_cropper
    from lungviz.training.randomisation import randomisation_check

    methods = _names(args.methods) or []
    for method in methods:
        check_method(method)
    for folder in args.data:
        _require_folder(folder, "data")
    if args.images < 2:
        raise UsageError("--images must be at least 2")
    session = _session(args.weights)
    report: dict[str, dict[str, object]] = {}
    samples: dict[tuple[tuple[int, ...], str], np.ndarray] = {}  # models sharing an input size share the images
    for card in select_cards(session.cards[args.task], _names(args.models)):
        key = (tuple(card.input_size), card.input_crop)
        if key not in samples:
            cropper = lung_cropper(args.task, card.input_crop, Path("runs") / args.task, session.root)
            val = load_split(args.data, "val", get_task(args.task).classes, card.input_size, cropper)
            chosen = np.sort(np.random.default_rng(0).choice(len(val), min(args.images, len(val)), replace=False))
            samples[key] = gray_batch_to_input(val.images[chosen])
        model = session.classifier(card).model
        results = randomisation_check(model, card.cam_layer, samples[key], methods)
        report[card.name] = {method: result.to_dict() for method, result in results.items()}
        if args.update_cards and card.card_path is not None:
            card.metrics = {**card.metrics, "randomisation": report[card.name]}
            card.save(card.card_path)
    print(json.dumps(report, indent=2))
    return 0


def _run_cards(args: argparse.Namespace) -> int:
    from lungviz.models.registry import DEFAULT_WEIGHTS_DIR, discover
    from lungviz.reporting.tables import markdown_table, replace_readme_table

    if args.update_readme and args.weights is not None:
        raise UsageError("--update-readme documents the shipped models; it cannot be used with --weights")
    table = markdown_table(discover(args.weights))
    if args.update_readme:
        readme = DEFAULT_WEIGHTS_DIR.parent / "README.md"
        readme.write_text(replace_readme_table(readme.read_text(), table))
    print(table)
    return 0


def _run_report(args: argparse.Namespace) -> int:
    """Each file analysed and drawn on its page as it comes, progress on stderr; bad files get an error page.

    Exit status as for predict: 0 once the inputs were processed, even if every
    file was rejected (each page says why); 2 for usage errors.
    """
    from lungviz.inference.explanations import check_method
    from lungviz.reporting.study_report import ReportSettings, StudyReport

    method = None if args.method == "none" else args.method
    check_method(method)
    if not args.out.parent.is_dir():
        raise UsageError(f"folder {args.out.parent} for the report does not exist")
    session = _session(args.weights)
    wanted = _names(args.models)
    session.check_request(wanted, args.task, args.target)
    tasks = session.tasks if args.task == "auto" else [args.task]
    cards = [card for task in tasks for card in session.cards[task] if wanted is None or card.name in wanted]
    report = StudyReport(ReportSettings(method=method, target=args.target, task=args.task), cards)
    failed = 0
    for index, file in enumerate(args.files, start=1):
        where = f"[{index}/{len(args.files)}] {file}"
        _progress(f"{where}: reading")

        def model_progress(message: str, step: int, total: int, where: str = where) -> None:
            _progress(f"{where}: {message}")  # the session's steps name the model being run

        analysis = session.analyse_path(
            file, task=args.task, models=wanted, method=method, target=args.target, progress=model_progress
        )
        if analysis.error:
            failed += 1
            _progress(f"{where}: ERROR {analysis.error}")
        report.add(analysis)
    try:
        args.out.write_bytes(report.finish())
    except OSError as error:
        raise UsageError(f"cannot write the report to {args.out} ({error.strerror or error})") from error
    rejected = f", {failed} of them could not be analysed (see their pages)" if failed else ""
    print(f"wrote {args.out}: {len(args.files)} file(s){rejected}")
    return 0


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _blocks(value: str) -> int | str:
    """--finetune-blocks: a non-negative count or 'all'."""
    if value == "all":
        return value
    if value.isdigit():
        return int(value)
    raise argparse.ArgumentTypeError(f"expected a number of blocks or 'all', not {value!r}")


def _names(value: str | None) -> list[str] | None:
    return [name.strip() for name in value.split(",") if name.strip()] if value else None


def _session(weights: Path | None):
    """The registry's models, or a usage error that says why there are none."""
    from lungviz.inference.session import AnalysisSession
    from lungviz.models.registry import weights_dir

    root = weights or weights_dir()
    if not root.is_dir():
        raise UsageError(f"weights folder {root} does not exist")
    session = AnalysisSession(weights=root)
    if not session.tasks:
        raise UsageError(f"no models in {root} (expected <task>/<name>.keras with <name>.json beside it)")
    return session


def _run_predict(args: argparse.Namespace) -> int:
    from lungviz.inference.explanations import check_method
    from lungviz.reporting.export import OverlayNames

    method = None if args.method == "none" else args.method
    check_method(method)
    if args.faithfulness and method is None:
        raise UsageError("--faithfulness checks heatmaps; choose a --method other than 'none'")
    session = _session(args.weights)
    wanted = _names(args.models)
    session.check_request(wanted, args.task, args.target)
    if args.save_heatmaps is not None:
        args.save_heatmaps.mkdir(parents=True, exist_ok=True)
    names = OverlayNames()
    # Several files at a time, so that their model calls share batches; records still come in input order.
    analyses = session.analyse_paths(args.files, task=args.task, models=wanted, method=method, target=args.target)
    for index, analysis in enumerate(analyses):
        if args.faithfulness:
            _check_heatmaps(session, analysis)
        if args.save_heatmaps is not None:
            _save_heatmaps(analysis, args.save_heatmaps, names.claim, index)
        print(_format(analysis.record(), as_json=args.json), flush=True)
    return 0


def _check_heatmaps(session: AnalysisSession, analysis: Analysis) -> None:
    """Each model's heatmap checked for faithfulness, kept on its result for the record; a failure is a warning."""
    from lungviz.inference.faithfulness import check_heatmap

    if analysis.image is None or analysis.task is None:
        return
    cards = {card.name: card for card in session.cards[analysis.task]}
    for result in analysis.results:
        if result.heatmap is None:
            continue
        try:
            classifier = session.classifier(cards[result.name])
            result.faithfulness = check_heatmap(classifier, analysis.image.pixels, result, analysis.lungs)
        except LungVizError as error:
            analysis.warn(f"the heatmap of {result.name} was not checked: {error}")


def _save_heatmaps(analysis: Analysis, folder: Path, claim: Callable[[int, str, str], str], index: int) -> None:
    """Each model's overlay PNG and raw map (.npy) of one file; a file that cannot be written is its warning."""
    from lungviz.reporting.export import npy_bytes, png_bytes
    from lungviz.reporting.overlay import render_overlay

    if analysis.image is None:
        return
    for result in analysis.results:
        if result.heatmap is None:
            continue
        overlay = folder / claim(index, Path(analysis.file).name, result.name)
        outputs = (
            ("overlay", overlay, png_bytes(render_overlay(analysis.image.pixels, result.heatmap))),
            ("heatmap", overlay.with_suffix(".npy"), npy_bytes(result.heatmap)),
        )
        for what, target, content in outputs:
            try:
                target.write_bytes(content)
            except OSError as error:  # a full disk or a refused name: this file's warning, the batch goes on
                analysis.warn(f"{what} {target.name} was not saved ({error.strerror or error})")


def _format(record: dict, *, as_json: bool) -> str:
    if as_json:
        from lungviz.reporting.export import to_json_lines

        return to_json_lines([record]).rstrip("\n")
    if record["error"]:
        return f"{record['file']}: ERROR {record['error']}"
    modality, lungs = record["modality"] or {}, record.get("lungs")
    lungs_text = "" if lungs is None else f", lungs {'found' if lungs['found'] else 'not found'}"
    lines = [f"{record['file']}: task {record['task'] or '-'}, modality {modality.get('predicted')}{lungs_text}"]
    if record.get("warning"):
        lines.append(f"  warning: {record['warning']}")
    for model in record["models"]:
        positive, attention = model["positive_class"], model.get("lung_attention")
        lines.append(
            f"  {model['name']:<24} {model['predicted']:<10} "
            f"P({positive})={model['probabilities'][positive]:.3f} "
            f"threshold={model['threshold']:.3f} {model['seconds']:.2f}s"
            + ("" if attention is None else f" heat in lungs {attention:.0%}")
        )
        if (faithfulness := model.get("faithfulness")) is not None:
            lines.append(
                f"  {'':<24} heatmap deletion/insertion area {faithfulness['deletion_auc']:.3f}/"
                f"{faithfulness['insertion_auc']:.3f}, random {faithfulness['random_deletion_auc']:.3f}/"
                f"{faithfulness['random_insertion_auc']:.3f}, gradient {faithfulness['gradient_deletion_auc']:.3f}/"
                f"{faithfulness['gradient_insertion_auc']:.3f} (lower/higher is better)"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = _build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return args.handler(args)
    except LungVizError as error:
        parser.exit(USAGE_ERROR, f"{parser.prog} {args.command}: error: {error}\n")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
