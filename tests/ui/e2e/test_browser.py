"""End to end: the dashboard served by `streamlit run`, used from a real headless Chromium.

A user drops a PNG radiograph and a CT DICOM slice onto the uploader and waits
for every model's answer, and nothing is fetched from any host but the app's
own. Another drops files with hostile or awkward names and checks what the page
shows and what the downloads hold; a third checks the server is not reachable
from the network. Debian's Chromium (/usr/bin/chromium) is driven by
Playwright; the tests skip when that browser is absent. The server runs with
`client.showErrorDetails=full` so that a bug could not hide behind the
user-facing "none" of .streamlit/config.toml.

The same run makes README's screenshot: set `LUNGVIZ_SCREENSHOT` to where it
should go (e.g. docs/screenshot.png), and optionally `LUNGVIZ_E2E_WEIGHTS` to a
real weights folder and `LUNGVIZ_E2E_FILES` to image paths (os.pathsep
separated) to show real models on real images instead of the test fixtures.
"""

from __future__ import annotations

import csv
import os
import socket
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.dashboard_server import CHROMIUM, CHROMIUM_ARGS, free_port, served_dashboard
from lungviz.reporting.markdown import WORD_JOINER
from tests.images_factory import (
    chest_hounsfield,
    chest_radiograph,
    ct_dicom,
    encode,
    to_8bit,
)

RESULTS_SECONDS = 180  # models load on the first upload
ERROR_ELEMENTS = "[data-testid=stException], [data-testid=stAlertContentError]"
"""Streamlit's exception box and st.error, by their test ids."""

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"),
]


@pytest.fixture
def weights(request) -> Path:
    chosen = os.environ.get("LUNGVIZ_E2E_WEIGHTS")
    return Path(chosen) if chosen else request.getfixturevalue("weights_root")


def _served(weights: Path, log: Path):
    """The dashboard on these weights, with error details on so that a bug cannot hide (the address is config's)."""
    return served_dashboard(weights, log=log, options=["--client.showErrorDetails", "full"])


@pytest.fixture
def dashboard_url(weights, tmp_path) -> Iterator[str]:
    with _served(weights, tmp_path / "streamlit.log") as (url, _):
        yield url


@pytest.fixture
def test_models_url(weights_root, tmp_path) -> Iterator[str]:
    """The dashboard on the small test models whatever LUNGVIZ_E2E_WEIGHTS says (their outputs are counted)."""
    with _served(weights_root, tmp_path / "streamlit.log") as (url, _):
        yield url


@pytest.fixture
def upload_paths(tmp_path) -> list[Path]:
    """Files to drop on the uploader: a PNG radiograph and a CT slice with rescale slope and intercept."""
    chosen = os.environ.get("LUNGVIZ_E2E_FILES")
    if chosen:
        return [Path(path) for path in chosen.split(os.pathsep)]
    png, dicom = tmp_path / "chest_xray.png", tmp_path / "chest_ct.dcm"
    png.write_bytes(encode(Image.fromarray(to_8bit(chest_radiograph())), "PNG"))
    dicom.write_bytes(
        ct_dicom(chest_hounsfield().astype(np.float64), slope=2.0, intercept=-2048.0, PixelSpacing=[0.7, 0.7])
    )
    return [png, dicom]


def elsewhere(app_url: str, urls: list[str]) -> list[str]:
    """The URLs that go to any host but the app's own server (inline data: URLs go nowhere)."""
    return [url for url in urls if not url.startswith((f"{app_url}/", "data:", f"blob:{app_url}/"))]


def _first_file_area(page, upload_paths: list[Path]) -> dict[str, float]:
    """The page from the top down to the second file's header: what README shows."""
    size = page.viewport_size
    if len(upload_paths) < 2:
        return {"x": 0, "y": 0, **size}
    second = page.get_by_role("heading", name=upload_paths[1].name).bounding_box()
    return {"x": 0, "y": 0, "width": size["width"], "height": second["y"] - 16}


def test_uploaded_png_and_dicom_get_every_models_answer_in_a_real_browser(
    dashboard_url, upload_paths, weights, tmp_path
):
    from playwright.sync_api import expect, sync_playwright

    from lungviz.models.registry import discover

    model_names = {card.name for cards in discover(weights).values() for card in cards}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            requested: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            page.goto(dashboard_url)
            expect(page.get_by_text("Research tool, not a medical device")).to_be_visible(timeout=60_000)

            page.locator("input[type=file]").set_input_files(upload_paths)
            for path in upload_paths:
                expect(page.get_by_text(f"All models on {path.name}")).to_be_visible(timeout=RESULTS_SECONDS * 1000)
            expect(page.get_by_test_id("stStatusWidget")).to_have_count(0, timeout=60_000)  # the script has finished
            # Streamlit scrolls inside its main block, so grow the window to the content to capture all of it.
            height = page.get_by_test_id("stMain").evaluate("main => main.scrollHeight")
            page.set_viewport_size({"width": 1600, "height": height})
            page.wait_for_timeout(1500)  # let the plotly charts and images paint

            page.screenshot(path=tmp_path / "dashboard.png")
            if readme_screenshot := os.environ.get("LUNGVIZ_SCREENSHOT"):
                Path(readme_screenshot).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=readme_screenshot, clip=_first_file_area(page, upload_paths))
            text = page.inner_text("body")
            alerts = page.locator(ERROR_ELEMENTS).all_inner_texts()
            icons = page.locator("link[rel~=icon]").evaluate_all("links => links.map(link => link.href)")
            page.get_by_role("link", name="Model cards").click()
            expect(page.get_by_role("heading", name="Model cards")).to_be_visible(timeout=60_000)
            icons += page.locator("link[rel~=icon]").evaluate_all("links => links.map(link => link.href)")
        finally:
            browser.close()

    assert not elsewhere(dashboard_url, requested), "the page must not call out (README: no network at run time)"
    assert not elsewhere(dashboard_url, icons), "the page icon must not come from another host"
    assert not alerts
    assert "Traceback" not in text
    headings = [line.strip() for line in text.splitlines()]
    for name in model_names:
        assert headings.count(name) >= 1, f"no column for model {name}"
    assert {"NORMAL", "PNEUMONIA"} & set(headings)
    assert {"non-COVID", "COVID"} & set(headings)


def test_odd_file_names_stay_text_and_every_overlay_and_row_reaches_the_downloads(
    test_models_url, weights_root, tmp_path
):
    """Names that are Markdown, that share a stem, that are 250 characters long, have no extension or look like a
    formula, dropped together."""
    from playwright.sync_api import expect, sync_playwright

    from lungviz.models.registry import discover

    beacon = f"http://127.0.0.1:{free_port()}/beacon.png"  # nothing listens there, but a request would be seen
    analysed = {
        f"![beacon]({beacon}).png": encode(Image.fromarray(to_8bit(chest_radiograph())), "PNG"),
        "same.png": encode(Image.fromarray(to_8bit(chest_radiograph(seed=1))), "PNG"),
        "same.jpg": encode(Image.fromarray(to_8bit(chest_radiograph(seed=2))), "JPEG"),
        "x" * 246 + ".png": encode(Image.fromarray(to_8bit(chest_radiograph(seed=3))), "PNG"),
        "IM0001": ct_dicom(chest_hounsfield(), slope=2.0, intercept=-2048.0),  # DICOM as a PACS exports it
    }
    rejected = {"[click](javascript:alert(document.domain)).png": b"not an image", "=SUM(1,2).png": b"nor this"}
    files = {**analysed, **rejected}
    cards = discover(weights_root)  # no gate in the fixture: pictures go to the X-ray models, the CT DICOM to CT
    overlay_count = (len(analysed) - 1) * len(cards["xray-pneumonia"]) + len(cards["ct-covid"])
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000}, accept_downloads=True)
            requested: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            page.goto(test_models_url)
            expect(page.get_by_text("Research tool, not a medical device")).to_be_visible(timeout=60_000)
            page.locator("input[type=file]").set_input_files(
                [{"name": name, "mimeType": "application/octet-stream", "buffer": data} for name, data in files.items()]
            )
            expect(page.get_by_text("All models on")).to_have_count(len(analysed), timeout=RESULTS_SECONDS * 1000)
            expect(page.get_by_test_id("stStatusWidget")).to_have_count(0, timeout=60_000)
            headings = page.get_by_test_id("stMain").locator("h2").all_inner_texts()
            active = page.locator(f"a[href^='javascript'], img[src='{beacon}']").count()
            zipped = _download(page, "All overlays (ZIP)", tmp_path)
            table = _download(page, "Results (CSV)", tmp_path)
        finally:
            browser.close()

    assert sorted(text.replace(WORD_JOINER, "").strip() for text in headings) == sorted(
        [*files, "Study summary", "Downloads"]
    )
    assert active == 0
    assert not elsewhere(test_models_url, requested)
    with zipfile.ZipFile(zipped) as archive:
        names = archive.namelist()
        archive.extractall(tmp_path / "overlays")  # on a real file system: a name too long or unsafe fails here
    assert len({name.casefold() for name in names}) == overlay_count
    assert sorted(path.name for path in (tmp_path / "overlays").iterdir()) == sorted(names)
    assert sum("same__" in name for name in names) == 2 * len(cards["xray-pneumonia"])  # same.png and same.jpg
    assert sum(name.startswith("x" * 60) for name in names) == len(cards["xray-pneumonia"])
    assert sum(name.startswith("IM0001__") for name in names) == len(cards["ct-covid"])
    with table.open(newline="") as rows:
        cells = [row["file"] for row in csv.DictReader(rows)]
    assert sorted(set(cells)) == sorted([*analysed, "[click](javascript:alert(document.domain)).png", "'=SUM(1,2).png"])


def _download(page, label: str, folder: Path) -> Path:
    """Click a download button and keep what it gives."""
    with page.expect_download() as download:
        page.get_by_test_id("stDownloadButton").filter(has_text=label).get_by_role("button").click()
    path = folder / download.value.suggested_filename
    download.value.save_as(path)
    return path


def test_the_server_listens_on_loopback_only_unless_told_otherwise(test_models_url):
    """.streamlit/config.toml sets server.address: from another machine the port is closed."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # a UDP "connection" sends nothing; it picks the outward interface
        except OSError:
            pytest.skip("this machine has no network interface besides loopback")
        outward = probe.getsockname()[0]
    port = int(test_models_url.rsplit(":", 1)[1])
    with urllib.request.urlopen(f"{test_models_url}/_stcore/health", timeout=5) as response:
        assert response.status == 200
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((outward, port), timeout=5).close()


def test_python_dashboard_py_serves_the_page_with_its_models_warmed_up(weights_root, upload_paths, tmp_path):
    """README's start command: the models load while the server starts, in the server's own process."""
    from playwright.sync_api import expect, sync_playwright

    options = ["--client.showErrorDetails", "full"]
    server = served_dashboard(weights_root, log=tmp_path / "server.log", options=options, prewarm=True)
    with server as (url, _), sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(url)
            page.locator("input[type=file]").set_input_files(upload_paths[0])
            expect(page.get_by_text(f"All models on {upload_paths[0].name}")).to_be_visible(
                timeout=RESULTS_SECONDS * 1000
            )
            assert page.locator(ERROR_ELEMENTS).count() == 0
        finally:
            browser.close()


def test_model_cards_page_draws_the_comparison_from_the_shipped_cards(tmp_path):
    """The shipped cards carry their curves: the page draws them in a real browser with no data set and no JSON.

    `LUNGVIZ_CARDS_SCREENSHOT` (e.g. docs/model_cards.png) also saves README's picture of the page's top.
    """
    from playwright.sync_api import expect, sync_playwright

    from lungviz.models.registry import DEFAULT_WEIGHTS_DIR

    with _served(DEFAULT_WEIGHTS_DIR, tmp_path / "streamlit.log") as (url, _), sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1400})
            page.goto(f"{url}/Model_cards")
            expect(page.get_by_role("heading", name="Model cards")).to_be_visible(timeout=60_000)
            for title in ("ROC (test)", "Test metrics with 95% intervals", "Learning curves"):
                expect(page.get_by_text(title).first).to_be_visible(timeout=60_000)
            page.wait_for_timeout(1500)  # let the plotly charts paint
            if screenshot := os.environ.get("LUNGVIZ_CARDS_SCREENSHOT"):
                page.screenshot(path=screenshot)
            text = page.inner_text("body")
            alerts = page.locator(ERROR_ELEMENTS).all_inner_texts()
        finally:
            browser.close()
    assert not alerts
    assert "Traceback" not in text
    assert '{"' not in text, "raw JSON on the Model cards page"
