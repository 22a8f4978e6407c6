"""How much memory the dashboard's server keeps after rejected uploads.

Run from the repository root (needs Debian's Chromium at /usr/bin/chromium):

    .venv/bin/python -m benchmarks.upload_memory [--count 3] [--size-mb N]

Starts `streamlit run dashboard.py` on a free loopback port with the settings of
.streamlit/config.toml and the shipped models, opens it in headless Chromium and, `--count` times,
uploads a file of junk bytes just under `server.maxUploadSize` (or `--size-mb`),
waits for the dashboard to reject it, then removes it from the uploader. It
prints the server's resident memory (VmRSS from /proc/PID/status) after the page
loaded, after each upload was rejected and removed, once the browser has been
closed, and its peak (VmHWM). Every wait has a deadline and the server is stopped at the end, so
the run ends by itself.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import tomllib
from pathlib import Path

from benchmarks.dashboard_server import CHROMIUM, CHROMIUM_ARGS, REPOSITORY, served_dashboard

MAX_COUNT = 10
REJECT_SECONDS = 300  # a file near the limit takes a while to travel and be read on a busy 2-core machine
REMOVE_SECONDS = 60


def upload_limit_mb() -> int:
    """`server.maxUploadSize` as .streamlit/config.toml sets it (Streamlit's default, 200, otherwise)."""
    config = tomllib.loads((REPOSITORY / ".streamlit" / "config.toml").read_text())
    return int(config.get("server", {}).get("maxUploadSize", 200))


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """Resident memory now (VmRSS) or at its peak so far (VmHWM), from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


def junk_file(folder: Path, index: int, size_mb: float) -> Path:
    """`size_mb` million bytes no reader recognises (no PNG, JPEG, TIFF, BMP or DICOM signature)."""
    path = folder / f"junk-{index}.dcm"
    remaining, block = int(size_mb * 1e6), os.urandom(16 * 1024 * 1024)
    with path.open("wb") as out:
        out.write(b"JUNK")
        remaining -= 4
        while remaining > 0:
            out.write(block[:remaining])
            remaining -= len(block)
    return path


def finished(page) -> None:
    """Wait until the script run is over (Streamlit's running indicator gone), so that its temporaries are freed."""
    from playwright.sync_api import expect

    expect(page.get_by_test_id("stStatusWidget")).to_have_count(0, timeout=REMOVE_SECONDS * 1000)


def measure(count: int, size_mb: float, settle_seconds: float) -> None:
    from playwright.sync_api import expect, sync_playwright

    with tempfile.TemporaryDirectory() as folder, served_dashboard() as (url, server):
        print(f"server started: {rss_mib(server.pid):7.0f} MiB RSS")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(url)
            expect(page.get_by_text("Research tool, not a medical device")).to_be_visible(timeout=60_000)
            print(f"page loaded:    {rss_mib(server.pid):7.0f} MiB RSS  (before)")
            for index in range(count):
                path = junk_file(Path(folder), index, size_mb)
                page.locator("input[type=file]").set_input_files(path)
                rejected = page.get_by_text(f"{path.name}: not an image LungViz can read")
                too_large = page.get_by_text("File must be")
                expect(rejected.or_(too_large)).to_be_visible(timeout=REJECT_SECONDS * 1000)
                if too_large.count():
                    raise SystemExit(f"the uploader refused {size_mb:g} MB: {too_large.inner_text()}")
                finished(page)
                print(f"{path.name} ({size_mb:g} MB) rejected: {rss_mib(server.pid):7.0f} MiB RSS")
                path.unlink()
                page.get_by_test_id("stFileChipDeleteBtn").first.click()
                expect(rejected).to_have_count(0, timeout=REMOVE_SECONDS * 1000)
                finished(page)
                print(f"{path.name} removed:  {rss_mib(server.pid):7.0f} MiB RSS")
            browser.close()
        time.sleep(settle_seconds)
        print(f"browser closed: {rss_mib(server.pid):7.0f} MiB RSS  (after, {settle_seconds:g} s later)")
        print(f"peak:           {rss_mib(server.pid, 'VmHWM'):7.0f} MiB RSS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    limit = upload_limit_mb()
    parser.add_argument("--count", type=int, default=3, help=f"rejected uploads, at most {MAX_COUNT}")
    # The uploader counts a megabyte as 10^6 bytes (the server as 2^20), so stay under the smaller reading.
    parser.add_argument("--size-mb", type=float, default=limit - 1, help=f"MB per upload (default {limit - 1})")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds to wait after closing the browser")
    args = parser.parse_args()
    if not 1 <= args.count <= MAX_COUNT:
        parser.error(f"--count must be between 1 and {MAX_COUNT}")
    print(f"server.maxUploadSize = {limit} MB; {args.count} uploads of {args.size_mb:g} MB of junk")
    measure(args.count, args.size_mb, args.settle)


if __name__ == "__main__":
    main()
