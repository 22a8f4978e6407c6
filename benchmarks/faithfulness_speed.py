"""How long one "Check this heatmap" costs per model: deletion and insertion curves of three maps.

Run from the repository root (prints figures, asserts nothing):

    .venv/bin/python -m benchmarks.faithfulness_speed [--task xray-pneumonia] [--repeats N]

Each shipped model of the task analyses one real test image (../shared/data when
present, else a synthetic one) with Grad-CAM, then `check_heatmap` runs on its
result: the median of N checks after a warm-up (the first check of a model also
traces its input-gradient function), beside one forward pass at batch 1.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from benchmarks.latency import image_files
from benchmarks.timing import median_seconds
from lungviz.inference.faithfulness import STEPS, check_heatmap
from lungviz.inference.images import load_image
from lungviz.inference.session import AnalysisSession


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="xray-pneumonia")
    parser.add_argument("--repeats", type=int, default=5, help="timed checks per model (median reported)")
    args = parser.parse_args()
    session = AnalysisSession()
    path = image_files(args.task)[0]
    image = load_image(path.read_bytes(), path.name)
    analysis = session.analyse_image(image, task=args.task)
    print(f"{args.task}, {path.name}, {STEPS} steps per curve, CPU threads: {os.cpu_count()}\n")
    print("| model | input | forward pass (batch 1) | check | deletion AUC | random | gradient |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for result in analysis.results:
        classifier = session.classifier(next(c for c in session.cards[args.task] if c.name == result.name))
        probe = np.zeros((1, *classifier.card.input_size, 3), np.float32)
        forward = median_seconds(lambda c=classifier, x=probe: c.predict_batch(x), args.repeats)
        check = median_seconds(
            lambda c=classifier, r=result: check_heatmap(c, image.pixels, r, analysis.lungs), args.repeats, warmup=1
        )
        areas = check_heatmap(classifier, image.pixels, result, analysis.lungs).to_dict()
        height, width = classifier.card.input_size
        print(
            f"| {result.name} | {height}x{width} | {forward * 1000:.0f} ms | {check:.2f} s | "
            f"{areas['deletion_auc']:.3f} | {areas['random_deletion_auc']:.3f} | {areas['gradient_deletion_auc']:.3f} |"
        )


if __name__ == "__main__":
    main()
