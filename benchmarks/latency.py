"""Where a user's time goes: one warm image, the CLI's cold start, and the browser's first result.

Run from the repository root (prints figures, asserts nothing):

    .venv/bin/python -m benchmarks.latency [--only warm|cold|browser] [--repeats N]

* warm: one image through the whole pipeline (gate, lungs, the task's shipped
  models with Grad-CAM) against the sum of the compiled forward passes at batch
  1 of the networks it runs plus the lung step (the floor: a heatmap cannot
  cost less than the pass that gives the probabilities).
* cold: `python -m lungviz predict FILE --json` in a new process, against
  `python -c "import tensorflow"`, the part no LungViz change can remove.
* browser: a fresh server, started with `streamlit run dashboard.py` (models
  load when the first page opens) or `python dashboard.py` (models load while
  the server starts); seconds from opening the page to the first model's answer
  on screen, when the file is dropped as soon as the uploader shows (a real
  user takes longer to pick one, which only helps).

Images: a real test image of each task from ../shared/data when present, else
a synthetic chest-like image (then only "task given" is meaningful).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from benchmarks.dashboard_server import CHROMIUM, CHROMIUM_ARGS, REPOSITORY, served_dashboard
from benchmarks.timing import median_seconds

SHARED = REPOSITORY.parent / "shared" / "data"
TEST_IMAGES = {
    "xray-pneumonia": SHARED / "kermany_chest_xray_pneumonia" / "test" / "PNEUMONIA",
    "ct-covid": SHARED / "sars_cov2_ct" / "test" / "COVID",
}
FIRST_RESULT_SECONDS = 180
PRESENTER_DELAY = 30
"""Seconds between starting a demo server and opening its page (a presenter who starts it before the talk)."""


def image_files(task: str) -> list[Path]:
    """Real test images of the task, or one synthetic chest-like PNG written to a temporary file."""
    folder = TEST_IMAGES[task]
    if folder.is_dir():
        return sorted(folder.iterdir())
    from PIL import Image

    rows, cols = np.mgrid[:512, :512] / 512.0
    body = 0.3 + 0.5 * np.exp(-(((rows - 0.5) / 0.35) ** 2 + ((cols - 0.5) / 0.3) ** 2))
    path = Path(tempfile.mkdtemp()) / f"synthetic-{task}.png"
    Image.fromarray((body * 255).astype(np.uint8)).save(path)
    return [path]


def warm(repeats: int) -> None:
    import tensorflow as tf

    from lungviz.inference.images import load_image
    from lungviz.inference.session import AnalysisSession

    session = AnalysisSession()
    session.warm_up()
    print(f"## Warm: one image through the whole pipeline, batch of one (median of {repeats} calls)\n")
    print("| task | image | models' forward passes | gate forward | lung step | pipeline | ratio to the passes |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for task in session.tasks:
        # The first image the gate routes to the task, so that the pipeline runs the task's models.
        routed = (load_image(path.read_bytes(), path.name) for path in image_files(task)[:50])
        image = next((i for i in routed if session.analyse_image(i, method=None).task == task), None)
        if image is None:
            print(f"| {task} | no test image routed to it | | | | | |")
            continue
        floor = 0.0
        for card in session.cards[task]:
            forward = tf.function(session.classifier(card).model)
            batch = tf.zeros((1, *card.input_size, 3))
            floor += median_seconds(lambda f=forward, b=batch: f(b, training=False).numpy(), repeats)
        gate, blank = session.gate, tf.zeros((1, 224, 224, 3))
        gate_forward = 0.0 if gate is None else median_seconds(lambda g=gate, b=blank: g.embedding(b), repeats)
        lung_step = median_seconds(lambda i=image, t=task: session.lungs(i, t), repeats)
        pipeline = median_seconds(lambda i=image: session.analyse_image(i), repeats)
        passes = floor + gate_forward + lung_step
        times = " | ".join(f"{seconds * 1e3:.1f} ms" for seconds in (floor, gate_forward, lung_step, pipeline))
        print(f"| {task} | {image.name} | {times} | {pipeline / passes:.2f}x |")
    print("\n(The lung step is the X-ray segmenter's pass with its post-processing, or the CT lungs from intensities;")
    print("the ratio's floor adds it to the compiled passes of the gate and the models.)\n")


def _process_seconds(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=REPOSITORY, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def cold(repeats: int) -> None:
    path = image_files("xray-pneumonia")[0]
    runs = max(3, repeats // 3)
    baseline = statistics.median(_process_seconds([sys.executable, "-c", "import tensorflow"]) for _ in range(runs))
    predict = statistics.median(
        _process_seconds([sys.executable, "-m", "lungviz", "predict", str(path), "--json"]) for _ in range(runs)
    )
    print(f"## Cold start (median of {runs} new processes)\n")
    print("| command | seconds | ratio |")
    print("|---|---:|---:|")
    print(f"| `python -c 'import tensorflow'` | {baseline:.2f} | 1.00x |")
    print(f"| `python -m lungviz predict {path.name} --json` | {predict:.2f} | {predict / baseline:.2f}x |\n")


def browser() -> None:
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.is_file():
        print(f"## Browser: skipped, no Chromium at {CHROMIUM}\n")
        return
    path = image_files("xray-pneumonia")[0]
    print(
        "## Browser: a fresh server, the page opened as soon as it answers, the file dropped when the uploader shows\n"
    )
    print("| server started with | page opened | uploader visible | first model's answer on screen |")
    print("|---|---|---:|---:|")
    runs = (
        (False, "streamlit run dashboard.py", 0),
        (True, "python dashboard.py", 0),
        (True, "python dashboard.py", PRESENTER_DELAY),
    )
    for prewarm, command, delay in runs:
        with served_dashboard(prewarm=prewarm) as (url, _), sync_playwright() as playwright:
            time.sleep(delay)
            chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = chromium.new_page()
            opened = time.perf_counter()
            page.goto(url)
            page.locator("input[type=file]").set_input_files(str(path), timeout=FIRST_RESULT_SECONDS * 1000)
            shown = time.perf_counter()
            page.get_by_text("Prediction").first.wait_for(timeout=FIRST_RESULT_SECONDS * 1000)
            answered = time.perf_counter()
            chromium.close()
        when = f"{delay} s after the server answered" if delay else "as soon as the server answered"
        print(f"| `{command}` | {when} | {shown - opened:.1f} s | {answered - opened:.1f} s after the page opened |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["warm", "cold", "browser"], default=None)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPU cores, Python {sys.version.split()[0]}\n")
    if args.only in (None, "warm"):
        warm(args.repeats)
    if args.only in (None, "cold"):
        cold(args.repeats)
    if args.only in (None, "browser"):
        browser()


if __name__ == "__main__":
    main()
