"""Many viewers at once: N headless Chromium sessions upload to one dashboard server together.

Run from the repository root (prints figures, asserts nothing; needs Chromium):

    .venv/bin/python -m benchmarks.concurrency [--sessions 1 4 8] [--weights DIR] [--timeout 180]

One server is started with `python dashboard.py` (the models load while it
starts) and warmed by one upload. Then, for each N, N browser contexts (one
Streamlit session each, like N people's laptops) open the page and, once every
uploader shows, all drop a different chest X-ray at the same moment. A
session's time runs from its drop to the last model's answer on its screen
("All models on FILE"). The lone session's time is the median of three (its
row shows all three); the ratio compares the slowest of N with N uploads in a
row (N x that time): below 1.0x the crowd is served faster than a queue of
people would be.

Images: X-rays from ../shared/data/kermany_chest_xray_pneumonia/test when
present, else synthetic chest radiographs (tests/images_factory.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.dashboard_server import CHROMIUM, CHROMIUM_ARGS, REPOSITORY, served_dashboard

KERMANY_TEST = REPOSITORY.parent / "shared" / "data" / "kermany_chest_xray_pneumonia" / "test"
LONE_RUNS = 3
RESULT_MARKER = "All models on"
"""The dashboard writes this under a file once every model's column is drawn."""


def chest_images(count: int) -> list[Path]:
    """`count` different X-rays: real test images alternating between classes, else synthetic radiographs."""
    if KERMANY_TEST.is_dir():
        normal, pneumonia = (sorted((KERMANY_TEST / label).iterdir()) for label in ("NORMAL", "PNEUMONIA"))
        mixed = [path for pair in zip(normal, pneumonia, strict=False) for path in pair]
        return mixed[:count]
    from PIL import Image

    from tests.images_factory import chest_radiograph, encode, to_8bit

    folder = Path(tempfile.mkdtemp(prefix="lungviz-concurrency-"))
    paths = [folder / f"synthetic-chest-{seed}.png" for seed in range(count)]
    for seed, path in enumerate(paths):
        path.write_bytes(encode(Image.fromarray(to_8bit(chest_radiograph(seed=seed))), "PNG"))
    return paths


async def upload_together(browser, url: str, files: list[Path], timeout: float) -> list[float]:
    """Seconds from drop to result in each of len(files) sessions that drop their file at the same moment."""
    contexts = [await browser.new_context(viewport={"width": 1400, "height": 900}) for _ in files]
    try:
        pages = [await context.new_page() for context in contexts]
        await asyncio.gather(*(page.goto(url) for page in pages))
        uploaders = [page.locator("input[type=file]") for page in pages]
        await asyncio.gather(*(uploader.wait_for(state="attached", timeout=timeout * 1000) for uploader in uploaders))

        async def drop(page, uploader, path: Path) -> float:
            started = time.perf_counter()
            await uploader.set_input_files(str(path))
            await page.get_by_text(RESULT_MARKER).first.wait_for(timeout=timeout * 1000)
            return time.perf_counter() - started

        times = await asyncio.gather(*(drop(*args) for args in zip(pages, uploaders, files, strict=True)))
        errors = [await page.locator("[data-testid=stException], [data-testid=stAlertContentError]").count()
                  for page in pages]  # fmt: skip
        if any(errors):
            raise RuntimeError(f"{sum(errors)} error box(es) on the pages: the figures would not mean anything")
        return list(times)
    finally:
        for context in contexts:
            await context.close()


async def measure(url: str, sessions: list[int], timeout: float) -> None:
    from playwright.async_api import async_playwright

    files = chest_images(max(max(sessions), LONE_RUNS) + 1)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            await upload_together(browser, url, files[-1:], timeout)  # warms the models' first runs and the page
            lone_times = [(await upload_together(browser, url, [path], timeout))[0] for path in files[:LONE_RUNS]]
            lone = statistics.median(lone_times)
            print("| sessions | each session's upload-to-result (s) | slowest | N in a row | slowest / in a row |")
            print("|---:|---|---:|---:|---:|")
            for count in sessions:
                times = lone_times if count == 1 else await upload_together(browser, url, files[:count], timeout)
                slowest, in_a_row = (lone if count == 1 else max(times)), count * lone
                each = ", ".join(f"{seconds:.1f}" for seconds in sorted(times))
                ratio = slowest / in_a_row
                print(f"| {count} | {each} | {slowest:.1f} s | {in_a_row:.1f} s | {ratio:.2f}x |", flush=True)
        finally:
            await browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 4, 8], help="numbers of sessions at once")
    parser.add_argument("--weights", type=Path, default=None, help="weights folder (default: the shipped models)")
    parser.add_argument("--timeout", type=float, default=180, help="seconds any one page may take")
    args = parser.parse_args()
    if not CHROMIUM.is_file():
        sys.exit(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    threads = os.environ.get("LUNGVIZ_TF_THREADS", "the cores")
    print(f"{len(os.sched_getaffinity(0))} CPU cores, TensorFlow threads: {threads}; one server, `python dashboard.py`")
    print(f"(the 1-session time is the median of {LONE_RUNS} lone uploads)\n")
    with served_dashboard(args.weights, prewarm=True) as (url, _):
        asyncio.run(measure(url, args.sessions, args.timeout))


if __name__ == "__main__":
    main()
