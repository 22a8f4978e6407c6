"""LungViz dashboard: upload chest images and compare what several models decide and where they look.

Run with `python dashboard.py` (the models load while the server starts) or
`streamlit run dashboard.py`. This page only lays out widgets and calls
`lungviz`. Two caches keep it responsive during a demo:

* the process's one `AnalysisSession` (`shared_session`: model cards, loaded
  models, the gate and the lung segmenter), so each model is loaded once per process;
* decoded images and analyses live in the user's session, keyed by everything
  that changes a model's answer (file name and digest, frame, window, task, models,
  method, class to explain). Opacity, colormap and outline are not in the key:
  moving them only redraws overlays from the cached heatmaps. A heatmap's
  faithfulness check is kept on its result inside the cached analysis, so it
  survives reruns and goes away with the heatmap it checked.
"""

from __future__ import annotations

import hashlib
import io
import sys
import zipfile
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx
from streamlit.typing import UploadedFile

from lungviz.errors import (
    ExplanationError,
    ImageInputError,
    LungVizError,
    ModelCardError,
    ModelLoadError,
)
from lungviz.inference.agreement import LOW_CORRELATION, assess_agreement
from lungviz.inference.explanations import DEFAULT_METHOD, METHODS
from lungviz.inference.faithfulness import VERDICT_FRACTION, check_heatmap
from lungviz.inference.images import (
    CT_WINDOWS,
    DEFAULT_CT_WINDOW,
    ChestImage,
    Window,
    load_image,
)
from lungviz.inference.prediction import PREDICTED, ModelResult
from lungviz.inference.session import AUTO, Analysis, AnalysisSession, shared_session
from lungviz.models.cards import ModelCard
from lungviz.models.registry import weights_dir
from lungviz.reporting.export import OverlayNames, overlay_filename, png_bytes, to_csv, to_json_lines
from lungviz.reporting.figures import agreement_matrix, comparison_chart, faithfulness_chart, probability_chart
from lungviz.reporting.markdown import literal
from lungviz.reporting.overlay import (
    COLORMAPS,
    DEFAULT_COLORMAP,
    DEFAULT_OPACITY,
    OUTLINE_STYLES,
    outline_region,
    render_overlay,
)
from lungviz.reporting.study_report import ReportSettings, pdf_report, summary_rows
from lungviz.reporting.tables import model_summary

CUSTOM_WINDOW = "custom"
UPLOADER = "uploads"  # the file uploader's key in st.session_state
MIN_COLUMNS = 3  # a lone model still gets a third of the page, not a giant overlay
ENTRIES_PER_FILE = 4  # decoded frames and analyses kept per uploaded file and user, least recently used dropped
# (no bare string literals at module level here: Streamlit's "magic" would print them on the page)

DISCLAIMER = (
    "**Research tool, not a medical device.** LungViz is not cleared for clinical use: its models "
    "learnt from small public data sets and its heatmaps show where a model's evidence lies, "
    "not where disease is."
)


# An emoji page icon becomes an inline SVG; a ":material/...:" one is fetched from fonts.gstatic.com (README promises
# no network). The ":material/...:" icons inside the page are fine: Streamlit ships that font and serves it itself.
@dataclass(frozen=True)
class Upload:
    """An uploaded file; `key` (from its name and content) names its widgets and cache entries."""

    name: str
    data: bytes
    key: str

    @classmethod
    def of(cls, name: str, data: bytes) -> Upload:
        digest = hashlib.sha256(name.encode() + b"\0")
        digest.update(data)  # not name + data: that would copy the whole file
        return cls(name, data, digest.hexdigest()[:16])


@dataclass(frozen=True)
class Controls:
    """The sidebar's choices: the first four decide what runs, the rest only how it is drawn."""

    task: str
    models: tuple[str, ...]
    method: str
    target: str
    opacity: float
    colormap: str
    outline: str | None


def analysis_session() -> AnalysisSession:
    """The server's one session; its models load in the background (from server start with `python dashboard.py`)."""
    session = shared_session(weights_dir())
    session.start_warm_up()
    return session


def remembered(upload: Upload, store: str, key: Hashable, compute: Callable[[], Any]) -> Any:
    """`compute()` once per key for this file in this user's session (see ENTRIES_PER_FILE)."""
    cache: dict = st.session_state.setdefault("cache", {}).setdefault(upload.key, {}).setdefault(store, {})
    if key in cache:
        cache[key] = cache.pop(key)  # most recently used goes last
    else:
        cache[key] = compute()
        while len(cache) > ENTRIES_PER_FILE:
            cache.pop(next(iter(cache)))
    return cache[key]


def forget_removed_files(uploads: Sequence[Upload]) -> None:
    """Drop what was cached for files the user took out of the uploader."""
    cache: dict = st.session_state.setdefault("cache", {})
    for key in set(cache) - {upload.key for upload in uploads}:
        del cache[key]


def uploaded_files() -> list[Upload]:
    st.file_uploader(
        "Chest X-rays or CT slices",
        accept_multiple_files=True,  # and any file name: the content decides (DICOM from a PACS often has none)
        help="PNG, JPEG, TIFF, BMP or DICOM, with or without an extension: LungViz reads what a file contains, "
        "so a DICOM file exported without one (IM0001) works as it is.",
        key=UPLOADER,
    )
    # Streamlit's own objects (the return value is a copy of them), so that release_removed_files can close them.
    files = {file.file_id: file for file in st.session_state[UPLOADER] if isinstance(file, UploadedFile)}
    release_removed_files(files)
    uploads = (Upload.of(file.name, file.getvalue()) for file in files.values())
    return list({upload.key: upload for upload in uploads}.values())  # the same file dropped twice shows once


def release_removed_files(files: dict[str, UploadedFile]) -> None:
    """Close Streamlit's objects of the files taken out of the uploader since the last run, freeing their bytes.

    Streamlit keeps the uploader's previous value until the next run, and a closed
    tab's whole session for minutes: until then each open UploadedFile would keep
    a removed file's bytes in memory (up to server.maxUploadSize each).
    """
    held: dict[str, UploadedFile] = st.session_state.setdefault("uploaded_files", {})
    for file_id in held.keys() - files.keys():
        held.pop(file_id).close()
    held.update(files)


def sidebar(session: AnalysisSession) -> Controls:
    with st.sidebar:
        st.header("Analysis")
        task = st.selectbox(
            "Task",
            [AUTO, *session.tasks],
            format_func=lambda t: "Auto (from the image)" if t == AUTO else t,
            help="Auto reads the DICOM header, else asks the modality gate.",
        )
        tasks = session.tasks if task == AUTO else [task]
        names_by_task = {t: [card.name for card in session.cards[t]] for t in tasks}
        names = list(dict.fromkeys(name for task_names in names_by_task.values() for name in task_names))
        models = st.multiselect(
            "Models", names, default=names, help="  \n".join(f"{t}: {', '.join(n)}" for t, n in names_by_task.items())
        )
        method = st.selectbox(
            "Explanation method",
            list(METHODS),
            index=list(METHODS).index(DEFAULT_METHOD),
            format_func=lambda m: METHODS[m].label,
        )
        classes = list(dict.fromkeys(c for t in tasks for card in session.cards[t] for c in card.classes))
        target = st.selectbox(
            "Class to explain",
            [PREDICTED, *classes],
            format_func=lambda c: "Predicted class" if c == PREDICTED else c,
            help="A class of another task falls back to the predicted class.",
        )
        st.header("Display")
        opacity = st.slider("Heatmap opacity", 0.0, 1.0, DEFAULT_OPACITY, 0.05)
        colormap = st.selectbox("Colormap", list(COLORMAPS), index=list(COLORMAPS).index(DEFAULT_COLORMAP))
        outline = st.radio(
            "Outline of the hottest region",
            OUTLINE_STYLES,
            horizontal=True,
            format_func=lambda style: (style or "none").capitalize(),
        )
        st.caption(f"Models from `{session.root}`. See the Model cards page for how each was trained and tested.")
    return Controls(task, tuple(models), method, target, opacity, colormap, outline)


def window_control(upload: Upload) -> Window:
    """Preset or custom CT window for this file."""
    presets = [*CT_WINDOWS, CUSTOM_WINDOW]
    preset = st.selectbox(
        "CT window",
        presets,
        index=presets.index(DEFAULT_CT_WINDOW),
        format_func=lambda p: CT_WINDOWS[p].describe() if p in CT_WINDOWS else "Custom",
        key=f"window-{upload.key}",
    )
    if preset != CUSTOM_WINDOW:
        return CT_WINDOWS[preset]
    start = CT_WINDOWS[DEFAULT_CT_WINDOW]
    center_column, width_column = st.columns(2)
    center = center_column.number_input("Center (HU)", value=float(start.center), step=10.0, key=f"center-{upload.key}")
    width = width_column.number_input(
        "Width (HU)", min_value=1.0, value=float(start.width), step=10.0, key=f"width-{upload.key}"
    )
    return Window(center, width)


def prepared_image(upload: Upload) -> ChestImage:
    """The file decoded (once per frame), with the frame and CT window the user picked."""
    image = remembered(upload, "images", 0, lambda: load_image(upload.data, upload.name))
    if image.frame_count > 1:
        frame = st.slider("Frame", 0, image.frame_count - 1, 0, key=f"frame-{upload.key}")
        image = remembered(upload, "images", frame, lambda: load_image(upload.data, upload.name, frame=frame))
    if image.hounsfield is not None:
        window = window_control(upload)
        if window != image.window:
            image = image.with_window(window)
    return image


def analyse(session: AnalysisSession, upload: Upload, image: ChestImage, controls: Controls) -> Analysis:
    """Run (or recall) the models on one prepared image; a status box shows progress while they run."""
    key = (image.frame, image.window, controls.task, controls.models, controls.method, controls.target)
    status = st.status(f"Analysing {literal(upload.name)}...", expanded=True)

    def run() -> Analysis:
        with status:
            bar = st.progress(0.0, text="Checking what kind of image this is")

            def progress(message: str, step: int, total: int) -> None:
                bar.progress(step / max(total, 1), text=literal(message))

            return session.analyse_image(
                image,
                file=upload.name,
                task=controls.task,
                models=list(controls.models),
                method=controls.method,
                target=controls.target,
                progress=progress,
            )

    try:
        analysis = remembered(upload, "analyses", key, run)
    except Exception:
        status.update(label=f"Analysing {literal(upload.name)} failed", state="error", expanded=False)
        raise
    seconds = sum(result.seconds for result in analysis.results)
    done = (
        f"{len(analysis.results)} {analysis.task} model(s) ran in {seconds:.2f} s" if analysis.task else "No model ran"
    )
    status.update(label=done, state="complete", expanded=False)
    return analysis


def overlay(image: ChestImage, result: ModelResult, controls: Controls) -> np.ndarray:
    return render_overlay(
        image.pixels, result.heatmap, opacity=controls.opacity, colormap=controls.colormap, outline=controls.outline
    )


def show_routing(analysis: Analysis) -> None:
    st.markdown(f"**Modality:** {analysis.modality.describe()}  \n**Task:** {analysis.task or 'none (not classified)'}")
    if analysis.warning:
        st.warning(literal(analysis.warning), icon=":material/warning:")


def show_metadata(image: ChestImage) -> None:
    """The safe technical fields the reader kept; open by default for DICOM, whose header has the most to say."""
    dicom = "Modality" in image.metadata
    with st.expander("DICOM header (technical fields only)" if dicom else "File details", expanded=dicom):
        st.table([{"field": key, "value": literal(value)} for key, value in image.metadata.items()])


def show_model(
    upload: Upload, image: ChestImage, result: ModelResult, card: ModelCard, controls: Controls
) -> np.ndarray:
    """One model's column, headed by what tells architectures apart; returns its overlay (RGB) for the downloads."""
    st.subheader(result.name)
    st.caption(model_summary(card))
    rgb = overlay(image, result, controls)
    st.image(rgb, caption=f"{METHODS[result.method].label} for {result.explained_class}", width="stretch")
    if (survived := card.failed_randomisation(result.method)) is not None:
        st.warning(
            f"{METHODS[result.method].label} failed the randomisation check for this model: its maps stay alike "
            f"(rank correlation {survived:.2f}) when the model's weights are destroyed, so read this map as the "
            "image's structure, not the model's evidence.",
            icon=":material/warning:",
        )
    positive = result.positive_class
    st.metric(
        "Prediction", result.predicted, help=f"{positive} when calibrated P({positive}) >= {result.threshold:.3f}"
    )
    st.plotly_chart(probability_chart(result), key=f"probabilities-{upload.key}-{result.name}")
    st.caption(
        f"P({positive}) = {result.positive_probability:.1%}, threshold {result.threshold:.1%}, {result.seconds:.2f} s"
    )
    if result.lung_attention is not None:
        st.caption(f"Heat inside the lungs: {result.lung_attention:.0%}")
    st.download_button(
        "Overlay PNG",
        lambda: png_bytes(rgb),
        file_name=overlay_filename(upload.name, result.name),
        mime="image/png",
        on_click="ignore",
        key=f"png-{upload.key}-{result.name}",
        icon=":material/download:",
    )
    return rgb


def show_check(session: AnalysisSession, upload: Upload, analysis: Analysis, result: ModelResult) -> None:
    """The "Check this heatmap" action and, once run, its verdict and curves (kept on the result)."""
    if result.faithfulness is None:
        slot = st.empty()  # the button goes once its check is done
        clicked = slot.button(
            "Check this heatmap",
            key=f"check-{upload.key}-{result.name}",
            icon=":material/fact_check:",
            help="Remove (and reveal) the image's pixels hottest first and follow the probability, against a random "
            "map and the plain image gradient: a faithful map makes it fall faster than both.",
        )
        if not clicked or analysis.image is None or analysis.task is None:
            return
        card = next(card for card in session.cards[analysis.task] if card.name == result.name)
        try:
            with st.spinner(f"Checking the heatmap of {literal(result.name)}..."):
                result.faithfulness = check_heatmap(
                    session.classifier(card), analysis.image.pixels, result, analysis.lungs
                )
        except LungVizError as error:
            st.error(literal(f"{result.name}: the heatmap could not be checked: {error}"), icon=":material/error:")
            return
        # The page's boundary again: an unforeseen failure (TensorFlow) is this column's message, not a traceback.
        except Exception as error:  # noqa: BLE001
            message = f"{result.name}: the heatmap could not be checked: {type(error).__name__}: {error}"
            st.error(literal(message), icon=":material/error:")
            return
        slot.empty()
    check = result.faithfulness
    st.caption(literal(check.verdict(VERDICT_FRACTION).capitalize() + f" ({check.seconds:.1f} s)."))
    st.plotly_chart(faithfulness_chart(check), key=f"faithfulness-{upload.key}-{result.name}")


def show_agreement(upload: Upload, analysis: Analysis) -> None:
    """Do the models agree? Decisions, the ensemble's P(positive) and spread, how alike their heatmaps are."""
    agreement = assess_agreement(analysis.results)
    if agreement is None or len(agreement.decisions) < 2:
        return
    st.markdown(f"**Do the models agree on {literal(upload.name)}?**")
    disagreements = agreement.disagreements(LOW_CORRELATION)
    if disagreements:
        st.warning(literal("Look here first: " + "; ".join(disagreements) + "."), icon=":material/compare_arrows:")
    positive, ensemble = agreement.positive_class, agreement.ensemble
    st.caption(
        f"Ensemble mean P({positive}) {ensemble['mean']:.1%}: range {ensemble['min']:.1%} to {ensemble['max']:.1%}, "
        f"standard deviation {ensemble['std']:.1%}."
    )
    st.table(
        [
            {"model": literal(name), "decision": literal(agreement.decisions[name]), f"P({positive})": f"{p:.1%}"}
            for name, p in agreement.probabilities.items()
        ]
    )
    st.plotly_chart(agreement_matrix(agreement), key=f"agreement-{upload.key}")
    st.caption(
        f"Heatmaps compared on a common grid: rank correlation below {LOW_CORRELATION} means two models "
        "rank the image's regions differently; the overlap is of each map's hottest 10%."
    )


def show_file(session: AnalysisSession, upload: Upload, controls: Controls) -> tuple[Analysis, dict[str, np.ndarray]]:
    """Everything about one file, and its overlays by model; a bad file shows its error and leaves the others alone."""
    st.header(literal(upload.name), divider="gray")
    try:
        image_column, facts_column = st.columns([1, 4])
        picture = image_column.empty()
        routing = facts_column.container()
        with facts_column:
            image = prepared_image(upload)
        size = f"{image.pixels.shape[1]} x {image.pixels.shape[0]}"
        picture.image(image.pixels, caption=f"As analysed ({size})", width="stretch", clamp=True)
        analysis = analyse(session, upload, image, controls)
        if analysis.lungs is not None and analysis.lungs.found:
            outlined = outline_region(image.pixels, analysis.lungs.mask)
            lungs = f"lungs outlined, {analysis.lungs.fraction:.0%} of the image"
            picture.image(outlined, caption=f"As analysed ({size}); {lungs}", width="stretch")
    except ImageInputError as error:
        st.error(literal(str(error)), icon=":material/error:")
        return Analysis(file=upload.name, error=str(error)), {}
    except (ModelLoadError, ExplanationError) as error:
        st.error(literal(f"{upload.name}: could not be analysed: {error}"), icon=":material/error:")
        return Analysis(file=upload.name, error=str(error)), {}
    # The page's boundary: an unforeseen failure (the gate, TensorFlow) stops this file only, never the page.
    except Exception as error:  # noqa: BLE001
        message = f"{type(error).__name__}: {error}"
        st.error(literal(f"{upload.name}: could not be analysed: {message}"), icon=":material/error:")
        return Analysis(file=upload.name, error=message), {}
    with routing:
        show_routing(analysis)
    with facts_column:
        show_metadata(image)
    if analysis.task is None:
        st.info("Not classified. Pick a task in the sidebar to run the models anyway.")
        return analysis, {}
    if not analysis.results:
        st.info(f"No {analysis.task} model is selected in the sidebar.")
        return analysis, {}
    overlays = {}
    cards = {card.name: card for card in session.cards[analysis.task]}
    for column, result in zip(st.columns(max(len(analysis.results), MIN_COLUMNS)), analysis.results, strict=False):
        with column:
            overlays[result.name] = show_model(upload, image, result, cards[result.name], controls)
            show_check(session, upload, analysis, result)
    st.markdown(f"**All models on {literal(upload.name)}**")
    st.plotly_chart(comparison_chart(analysis.results), key=f"comparison-{upload.key}")
    show_agreement(upload, analysis)
    return analysis, overlays


def zipped_pngs(images: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:  # PNG is compressed already
        for name, rgb in images.items():
            archive.writestr(name, png_bytes(rgb))
    return buffer.getvalue()


def show_downloads(analyses: list[Analysis], overlays: dict[str, np.ndarray]) -> None:
    """Results of every file (rejected ones keep their error row) and the overlays as drawn now."""
    st.header("Downloads", divider="gray")
    records = [analysis.record() for analysis in analyses]
    csv_column, json_column, zip_column = st.columns(3)
    csv_column.download_button(
        "Results (CSV)",
        to_csv(records),
        file_name="lungviz_results.csv",
        mime="text/csv",
        on_click="ignore",
        icon=":material/table:",
    )
    json_column.download_button(
        "Results (JSON Lines)",
        to_json_lines(records),
        file_name="lungviz_results.jsonl",
        mime="application/jsonl",
        on_click="ignore",
        icon=":material/data_object:",
    )
    zip_column.download_button(
        "All overlays (ZIP)",
        lambda: zipped_pngs(overlays),
        file_name="lungviz_overlays.zip",
        mime="application/zip",
        on_click="ignore",
        disabled=not overlays,
        icon=":material/folder_zip:",
    )


def no_models_message(root: Path) -> str:
    return (
        f"**No models found in `{root}`.** LungViz looks for `<task>/<name>.keras` files, each with its "
        f"model card `<name>.json` beside it, for the tasks `xray-pneumonia` and `ct-covid`.\n\n"
        f"- A fresh clone ships them in `weights/`; restore an emptied folder with `git checkout -- weights`.\n"
        f"- Or train them: `scripts/train_models.sh` reproduces every shipped model from the data sets "
        f"(see README), and `python -m lungviz train --data DIR --task TASK --arch ARCH` trains one into "
        f"`weights/<task>/`.\n"
        f"- Or point the `LUNGVIZ_WEIGHTS` environment variable at a folder laid out the same way."
    )


def main() -> None:
    st.set_page_config(page_title="LungViz", page_icon="🫁", layout="wide")
    st.title("LungViz")
    st.caption("Explainable chest X-ray and CT classification: several models side by side, with their heatmaps.")
    st.warning(DISCLAIMER, icon=":material/info:")
    try:
        session = analysis_session()
    except ModelCardError as error:
        st.error(f"A model card is broken, so the models cannot be listed: {literal(str(error))}")
        return
    if not session.tasks:
        st.info(no_models_message(session.root))
        return
    controls = sidebar(session)
    uploads = uploaded_files()
    forget_removed_files(uploads)
    if not uploads:
        st.info("Drop one or several chest X-rays or CT slices above to see each model's decision and heatmap.")
        return
    analyses, overlays, names = [], {}, OverlayNames()
    for index, upload in enumerate(uploads):
        analysis, drawn = show_file(session, upload, controls)
        analyses.append(analysis)
        overlays.update({names.claim(index, upload.name, model): rgb for model, rgb in drawn.items()})
    show_study(session, analyses, controls)
    show_downloads(analyses, overlays)


def show_study(session: AnalysisSession, analyses: list[Analysis], controls: Controls) -> None:
    """All files at once: a sortable summary table (click a column to sort) and the PDF study report."""
    st.header("Study summary", divider="gray")
    st.dataframe(summary_rows(analyses), hide_index=True)
    tasks = session.tasks if controls.task == AUTO else [controls.task]
    cards = [card for task in tasks for card in session.cards[task] if card.name in controls.models]
    settings = ReportSettings(method=controls.method, target=controls.target, task=controls.task)
    st.download_button(
        "Study report (PDF)",
        lambda: pdf_report(analyses, settings, cards),
        file_name="lungviz_study_report.pdf",
        mime="application/pdf",
        on_click="ignore",
        icon=":material/picture_as_pdf:",
    )


def serve() -> None:
    """`python dashboard.py [streamlit options]`: the models load while the server starts, then this page is served.

    `streamlit run dashboard.py` serves the same page, but loads the models
    only when the first viewer opens it.
    """
    from streamlit.web import cli as streamlit_cli

    shared_session(weights_dir()).start_warm_up()
    sys.argv = ["streamlit", "run", __file__, *sys.argv[1:]]
    sys.exit(streamlit_cli.main())


# A page run (by `streamlit run`, or by the server `serve` started) renders the page; `python dashboard.py` serves.
if get_script_run_ctx(suppress_warning=True) is not None:
    main()
elif __name__ == "__main__":
    serve()
