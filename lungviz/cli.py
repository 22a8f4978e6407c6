"""Command line: `python -m lungviz predict|train|evaluate ...`.

`predict --json` prints one JSON object per input file per line, in input order;
other tools parse it, so its keys are a stable interface (see README). Bad
files become records with an `error` message; they never stop the run and never
print a traceback. Exit status: 0 when the inputs were processed (even if some
were rejected), 2 for usage errors.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from lungviz.cards import TASKS

USAGE_ERROR = 2


class UsageError(Exception):
    """Bad arguments: reported on stderr with exit status 2."""


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lungviz", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser("predict", help="classify and explain chest images")
    predict.add_argument("files", nargs="+", metavar="FILE", help="PNG, JPEG, TIFF, BMP or DICOM files")
    predict.add_argument("--task", default="auto", choices=["auto", *TASKS],
                         help="task to run; 'auto' routes by modality (DICOM header or the modality gate)")
    predict.add_argument("--models", default=None, help="comma-separated model names (default: all of the task)")
    predict.add_argument("--method", default="gradcam", help="explanation method (default gradcam; 'none' to skip)")
    predict.add_argument("--target", default="predicted", help="class to explain (default: the predicted class)")
    predict.add_argument("--save-heatmaps", type=Path, default=None, metavar="DIR",
                         help="write one overlay PNG per file and model into DIR")
    predict.add_argument("--json", action="store_true", help="print JSON Lines, one object per file")
    predict.add_argument("--weights", type=Path, default=None, help="weights folder (default: ./weights)")
    predict.set_defaults(handler=_run_predict)

    cards = commands.add_parser("cards", help="print the table of shipped models from their cards")
    cards.add_argument("--update-readme", action="store_true", help="rewrite the table in README.md")
    cards.add_argument("--weights", type=Path, default=None, help="weights folder (default: ./weights)")
    cards.set_defaults(handler=_run_cards)
    gate = commands.add_parser("gate", help="fit or evaluate the modality / out-of-distribution gate")
    gate.add_argument("action", choices=["fit", "evaluate"])
    gate.add_argument("--xray", type=Path, required=True, help="chest X-ray data set (train/val/test folders)")
    gate.add_argument("--ct", type=Path, required=True, help="chest CT data set (train/val/test folders)")
    gate.add_argument("--weights", type=Path, default=None, help="weights folder (default: ./weights)")
    gate.set_defaults(handler=_run_gate)
    return parser


def _run_gate(args: argparse.Namespace) -> int:
    import json

    from lungviz import modality
    from lungviz.registry import weights_dir

    root = args.weights or weights_dir()
    data_dirs = {"xray": args.xray, "ct": args.ct}
    for folder in data_dirs.values():
        if not folder.is_dir():
            raise UsageError(f"data folder {folder} does not exist")
    if args.action == "fit":
        report = modality.train_gate(data_dirs, root / modality.GATE_DIR)
    else:
        gate = modality.load_gate(root)
        if gate is None:
            raise UsageError(f"no gate in {root / modality.GATE_DIR}; run 'gate fit' first")
        report = modality.evaluate_gate(gate, data_dirs)
    print(json.dumps(report, indent=2))
    return 0


def _run_cards(args: argparse.Namespace) -> int:
    from lungviz.cards import markdown_table, replace_readme_table
    from lungviz.registry import DEFAULT_WEIGHTS_DIR, discover

    table = markdown_table(discover(args.weights))
    if args.update_readme:
        readme = DEFAULT_WEIGHTS_DIR.parent / "README.md"
        readme.write_text(replace_readme_table(readme.read_text(), table))
    print(table)
    return 0


def _run_predict(args: argparse.Namespace) -> int:
    from lungviz.session import AnalysisSession

    from lungviz.explanations import METHODS

    method = None if args.method == "none" else args.method
    if method is not None and method not in METHODS:
        raise UsageError(f"unknown method {args.method!r}; choose from: none, {', '.join(METHODS)}")
    session = AnalysisSession(weights=args.weights)
    wanted = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    session.check_model_names(wanted, None if args.task == "auto" else args.task)
    if args.save_heatmaps is not None:
        args.save_heatmaps.mkdir(parents=True, exist_ok=True)
    for file in args.files:
        record, overlays = session.analyse_path(
            file, task=args.task, models=wanted, method=method, target=args.target,
            want_overlays=args.save_heatmaps is not None)
        for filename, png in overlays.items():
            (args.save_heatmaps / filename).write_bytes(png)
        print(_format(record, as_json=args.json), flush=True)
    return 0


def _format(record: dict, *, as_json: bool) -> str:
    if as_json:
        from lungviz.export import to_json_lines

        return to_json_lines([record]).rstrip("\n")
    if record["error"]:
        return f"{record['file']}: ERROR {record['error']}"
    modality = record["modality"] or {}
    lines = [f"{record['file']}: task {record['task'] or '-'}, modality {modality.get('predicted')}"]
    if record.get("warning"):
        lines.append(f"  warning: {record['warning']}")
    for model in record["models"]:
        positive = model["positive_class"]
        lines.append(f"  {model['name']:<24} {model['predicted']:<10} "
                     f"P({positive})={model['probabilities'][positive]:.3f} "
                     f"threshold={model['threshold']:.3f} {model['seconds']:.2f}s")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except UsageError as error:
        parser.exit(USAGE_ERROR, f"{parser.prog} {args.command}: error: {error}\n")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
