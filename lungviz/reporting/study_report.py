"""A study report: the files analysed in one go, as a sortable table and as a PDF with one page per file.

The table (`summary_rows`) is plain rows with numbers left as numbers, so a data
frame sorts them. The PDF (`pdf_report`, or `StudyReport` page by page) is what a
reader takes away: the settings and each model's card metrics first, then per
file the image with its lungs, each model's overlay, the probabilities against
the thresholds and how far the models agree. It is drawn with reportlab on a
fixed grid, so each file stays on exactly one page; images are PNG-encoded in
memory and shrunk to what a page can show. Only file names and technical results
appear, never DICOM patient fields.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape

import cv2
import numpy as np
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.utils import ImageReader, simpleSplit
from reportlab.pdfbase.pdfmetrics import stringWidth
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import Paragraph, Table, TableStyle

from lungviz import __version__
from lungviz.errors import ChoiceError
from lungviz.inference.agreement import Agreement, assess_agreement
from lungviz.inference.explanations import DEFAULT_METHOD
from lungviz.inference.prediction import PREDICTED, ModelResult
from lungviz.models.cards import ModelCard
from lungviz.reporting.export import png_bytes
from lungviz.reporting.overlay import outline_region, render_overlay
from lungviz.reporting.tables import format_with_ci, subgroup_aucs
from lungviz.tasks import TASKS

if TYPE_CHECKING:  # the session imports the reporting package: only the type is needed here
    from lungviz.inference.session import Analysis

NOTICE = "Research use only: not a medical device; not for diagnosis"
MAX_IMAGE_SIDE = 512
"""Longest side, in pixels, of an image embedded in the PDF: sharp at the size a page shows it, small in bytes."""

# Page geometry, in points (1/72 inch).
PAGE_WIDTH, PAGE_HEIGHT = A4
MARGIN = 36.0
CONTENT_WIDTH = PAGE_WIDTH - 2 * MARGIN
FOOTER_TOP = MARGIN + 18
GAP = 8.0
CAPTION_LINES = 3
CAPTION_SIZE = 7.5
ROW_HEIGHT = 14.0
TEXT = "Helvetica"
BOLD = "Helvetica-Bold"
POSITIVE_COLOUR = colors.HexColor("#c0392b")
NEGATIVE_COLOUR = colors.HexColor("#2e86c1")
ENSEMBLE_COLOUR = colors.HexColor("#555555")
WARNING_COLOUR = colors.HexColor("#a04000")


@dataclass(frozen=True)
class ReportSettings:
    """How the files were analysed, printed on the first page so the report can be reproduced."""

    method: str | None = DEFAULT_METHOD
    target: str = PREDICTED
    task: str = "auto"
    created: datetime = field(default_factory=lambda: datetime.now().astimezone())
    version: str = __version__


# --------------------------------------------------------------------------- the summary table


def summary_columns(model_names: Sequence[str]) -> list[str]:
    """The summary table's columns for these models, in display order."""
    per_model = [column for name in model_names for column in (f"{name} decision", f"{name} P(positive)")]
    return [
        "file",
        "modality",
        "task",
        *per_model,
        "ensemble P(positive)",
        "ensemble SD",
        "decisions agree",
        "heatmap rank correlation",
        "hottest 10% overlap",
        "lung attention",
        "warnings",
        "error",
    ]


def summary_rows(
    analyses: Sequence[Analysis], *, sort_by: str | None = None, descending: bool = False
) -> list[dict[str, Any]]:
    """One row per file, every row with the same columns (`summary_columns`), for a sortable data frame.

    Numbers stay numbers (rounded to 4 places) so the table sorts them as
    numbers; a value that does not apply (a model the file's task lacks, a
    file that could not be read) is None. `sort_by` orders the rows by one
    column, empty cells last in either direction; None keeps the input order.
    """
    names = list(dict.fromkeys(result.name for analysis in analyses for result in analysis.results))
    columns = summary_columns(names)
    if sort_by is not None and sort_by not in columns:
        raise ChoiceError(f"cannot sort by {sort_by!r}; choose from {', '.join(columns)}")
    rows = [_summary_row(analysis, names) for analysis in analyses]
    if sort_by is None:
        return rows
    filled = sorted((row for row in rows if row[sort_by] is not None), key=lambda row: row[sort_by], reverse=descending)
    return filled + [row for row in rows if row[sort_by] is None]


def _summary_row(analysis: Analysis, model_names: Sequence[str]) -> dict[str, Any]:
    by_name = {result.name: result for result in analysis.results}
    row: dict[str, Any] = {
        "file": analysis.file,
        "modality": analysis.modality.predicted if analysis.modality else None,
        "task": analysis.task,
    }
    for name in model_names:
        result = by_name.get(name)
        row[f"{name} decision"] = result.predicted if result else None
        row[f"{name} P(positive)"] = _rounded(result.positive_probability if result else None)
    agreement = assess_agreement(analysis.results)
    ensemble = agreement.ensemble if agreement else {}
    row.update(
        {
            "ensemble P(positive)": _rounded(ensemble.get("mean")),
            "ensemble SD": _rounded(ensemble.get("std")),
            "decisions agree": None if agreement is None else not agreement.decisions_differ,
            "heatmap rank correlation": _rounded(_mean(agreement.rank_correlation.values()) if agreement else None),
            "hottest 10% overlap": _rounded(_mean(agreement.hottest_iou.values()) if agreement else None),
            "lung attention": _rounded(_mean(result.lung_attention for result in analysis.results)),
            "warnings": analysis.warning,
            "error": analysis.error,
        }
    )
    return row


def _mean(values: Iterable[float | None]) -> float | None:
    """Mean of the values that exist; None when none do."""
    present = [value for value in values if value is not None]
    return float(np.mean(present)) if present else None


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


# --------------------------------------------------------------------------- the PDF


def pdf_report(analyses: Sequence[Analysis], settings: ReportSettings, cards: Iterable[ModelCard]) -> bytes:
    """The whole study as PDF bytes: the settings and models first, then one page per file, in input order."""
    report = StudyReport(settings, cards)
    for analysis in analyses:
        report.add(analysis)
    return report.finish()


class StudyReport:
    """A PDF written page by page, so a long run holds only the current file's images in memory.

    `pdf_report` is the one-call form; the CLI adds each file as soon as it is analysed.
    """

    def __init__(self, settings: ReportSettings, cards: Iterable[ModelCard]) -> None:
        self._buffer = io.BytesIO()
        self._canvas = Canvas(self._buffer, pagesize=A4, pageCompression=1)
        self._canvas.setTitle("LungViz study report")
        self._canvas.setCreator(f"LungViz {settings.version}")
        self._canvas.setSubject(NOTICE)
        self._version = settings.version
        self._files = 0
        _first_page(self._canvas, settings, list(cards))
        self._end_page()

    def add(self, analysis: Analysis) -> None:
        """Draw one file's page."""
        self._files += 1
        _file_page(self._canvas, analysis, self._files)
        self._end_page()

    def finish(self) -> bytes:
        """The finished PDF; nothing can be added after it."""
        self._canvas.save()
        return self._buffer.getvalue()

    def _end_page(self) -> None:
        canvas = self._canvas
        canvas.setStrokeColor(colors.grey)
        canvas.setLineWidth(0.5)
        canvas.line(MARGIN, FOOTER_TOP - 4, PAGE_WIDTH - MARGIN, FOOTER_TOP - 4)
        canvas.setFillColor(colors.black)
        canvas.setFont(BOLD, 8)
        canvas.drawString(MARGIN, MARGIN + 2, NOTICE)
        canvas.setFont(TEXT, 8)
        canvas.drawRightString(
            PAGE_WIDTH - MARGIN, MARGIN + 2, f"LungViz {self._version} study report, page {canvas.getPageNumber()}"
        )
        canvas.showPage()


def _first_page(canvas: Canvas, settings: ReportSettings, cards: list[ModelCard]) -> None:
    """Title, the notice, the settings, and each task's models with their card metrics and limitations."""
    y = PAGE_HEIGHT - MARGIN
    canvas.setFont(BOLD, 20)
    canvas.drawString(MARGIN, y - 20, "LungViz study report")
    y -= 34
    canvas.setStrokeColor(POSITIVE_COLOUR)
    canvas.setLineWidth(1.2)
    canvas.rect(MARGIN, y - 22, CONTENT_WIDTH, 22)
    canvas.setFillColor(POSITIVE_COLOUR)
    canvas.setFont(BOLD, 11)
    canvas.drawCentredString(PAGE_WIDTH / 2, y - 15, NOTICE)
    y -= 40
    y = _heading(canvas, "Settings", y)
    settings_rows = [
        ["explanation method", settings.method or "none (no heatmaps)"],
        ["class explained", "the class each model decided on" if settings.target == PREDICTED else settings.target],
        ["task", "auto (routed by modality)" if settings.task == "auto" else settings.task],
        ["date", settings.created.strftime("%Y-%m-%d %H:%M %Z").strip()],
        ["LungViz version", settings.version],
    ]
    y = _table(canvas, [[_cell(a), _cell(b)] for a, b in settings_rows], [130, CONTENT_WIDTH - 130], y, header=False)
    y = _heading(canvas, "Models", y - 6)
    if not cards:
        _text_lines(canvas, ["No models were given."], MARGIN, y, TEXT, 9)
        return
    header = ["model", "architecture", "input", "threshold", "test ROC-AUC (95% CI)", "sensitivity", "specificity"]
    widths: list[float] = [76, 66, 36, 42, 74, 74, 74]  # a value with its interval fits on one line
    widths.append(CONTENT_WIDTH - sum(widths))
    header.append("ROC-AUC per source")
    by_task: dict[str, list[ModelCard]] = {}
    for card in cards:
        by_task.setdefault(card.task, []).append(card)
    for task, task_cards in by_task.items():
        title = TASKS[task].title if task in TASKS else task
        y = _text_lines(canvas, [f"{title} ({task})"], MARGIN, y, BOLD, 10) - 2
        rows = [[_cell(text, bold=True) for text in header]] + [_card_row(card) for card in task_cards]
        y = _table(canvas, rows, widths, y)
        if task in TASKS:
            limitations = [f"- {limitation}" for limitation in TASKS[task].limitations]
            y = _wrapped(canvas, ["Limitations the cards state:", *limitations], MARGIN, y, TEXT, 8, CONTENT_WIDTH)
        y -= 6
    _wrapped(
        canvas,
        [
            "Metrics come from each model's card: its test split, with 95% stratified bootstrap intervals; "
            "'-' where a card has none. Thresholds and calibration were fitted on validation data."
        ],
        MARGIN,
        y,
        TEXT,
        8,
        CONTENT_WIDTH,
    )


def _card_row(card: ModelCard) -> list[Paragraph]:
    test = card.metrics.get("test", {})
    return [
        _cell(card.name),
        _cell(card.family or card.architecture),
        _cell(f"{card.input_size[0]}x{card.input_size[1]}"),
        _cell(f"{card.threshold:.3f}"),
        _cell(format_with_ci(test.get("roc_auc"))),
        _cell(format_with_ci(test.get("sensitivity"))),
        _cell(format_with_ci(test.get("specificity"))),
        _cell(subgroup_aucs(card)),
    ]


def _file_page(canvas: Canvas, analysis: Analysis, number: int) -> None:
    """One file: what it is, any error or warning, its images, the probabilities and the models' agreement."""
    y = _wrapped(canvas, [f"File {number}: {analysis.file}"], MARGIN, PAGE_HEIGHT - MARGIN, BOLD, 13, CONTENT_WIDTH)
    if analysis.error:
        _wrapped(canvas, [f"Not analysed: {analysis.error}"], MARGIN, y - 4, BOLD, 10, CONTENT_WIDTH, POSITIVE_COLOUR)
        return
    y = _wrapped(canvas, [_describe(analysis)], MARGIN, y - 2, TEXT, 9, CONTENT_WIDTH)
    agreement = assess_agreement(analysis.results)
    notes = [f"Warning: {analysis.warning}"] if analysis.warning else []
    notes += [f"Models disagree: {text}" for text in (agreement.disagreements() if agreement else [])]
    y = _wrapped(canvas, notes, MARGIN, y - 2, TEXT, 9, CONTENT_WIDTH, WARNING_COLOUR, max_lines=8)
    if analysis.image is None:
        return
    bottom = FOOTER_TOP + GAP
    if analysis.results:
        chart_height = _chart_height(len(analysis.results))
        matrix_height = _matrix_height(agreement)
        bottom += max(chart_height, matrix_height) + GAP
        chart_width = CONTENT_WIDTH * (0.55 if matrix_height else 1.0)
        _draw_probabilities(canvas, analysis.results, agreement, MARGIN, bottom - GAP, chart_width)
        if agreement is not None and matrix_height:
            _draw_agreement(canvas, agreement, MARGIN + chart_width + 2 * GAP, bottom - GAP)
    _draw_images(canvas, analysis.image.pixels, analysis, MARGIN, y - GAP, y - GAP - bottom)


def _describe(analysis: Analysis) -> str:
    """The page's one-line context: modality, task, lungs."""
    modality = analysis.modality.describe() if analysis.modality else "unknown"
    lungs = analysis.lungs
    if lungs is None:
        lungs_text = "not looked for"
    elif lungs.found:
        lungs_text = f"found ({lungs.fraction:.0%} of the image, by {lungs.method})"
    else:
        lungs_text = "not found"
    return f"Modality: {modality}. Task: {analysis.task or 'not classified'}. Lungs: {lungs_text}."


@dataclass(frozen=True)
class _Panel:
    rgb: np.ndarray
    caption: list[str]
    colour: colors.Color = colors.black


def _draw_images(canvas: Canvas, original: np.ndarray, analysis: Analysis, x: float, top: float, height: float) -> None:
    """The image (lungs outlined) and each model's overlay, in the largest grid the space allows."""
    scale = min(1.0, MAX_IMAGE_SIDE / max(original.shape))
    pixels = _resized(original, scale, cv2.INTER_AREA)
    lungs = analysis.lungs
    if lungs is not None and lungs.found:
        mask = _resized(lungs.mask.astype(np.uint8), scale, cv2.INTER_NEAREST).astype(bool)
        source = _Panel(outline_region(pixels, mask), ["the image, lungs outlined in green"])
    else:
        source = _Panel(_gray_rgb(pixels), ["the image (no lung outline)"])
    panels = [source] + [_model_panel(result, pixels, scale) for result in analysis.results]
    columns, size = _grid(len(panels), CONTENT_WIDTH, height)
    caption_height = CAPTION_LINES * (CAPTION_SIZE + 1.5)
    for index, panel in enumerate(panels):
        row, column = divmod(index, columns)
        left = x + column * (size + GAP)
        image_top = top - row * (size + caption_height + GAP)
        height_px, width_px = panel.rgb.shape[:2]
        shown = size / max(height_px, width_px)  # the image fills the square's longer side, captioned right below
        width, height = width_px * shown, height_px * shown
        reader = ImageReader(io.BytesIO(png_bytes(panel.rgb)))
        canvas.drawImage(reader, left, image_top - height, width, height)
        _text_lines(canvas, panel.caption, left, image_top - height - 2, TEXT, CAPTION_SIZE, panel.colour, size)


def _model_panel(result: ModelResult, pixels: np.ndarray, scale: float) -> _Panel:
    attention = "" if result.lung_attention is None else f", heat in lungs {result.lung_attention:.0%}"
    caption = [
        result.name,
        f"{result.predicted}: P({result.positive_class}) {result.positive_probability:.3f}",
        f"threshold {result.threshold:.3f}{attention}",
    ]
    colour = POSITIVE_COLOUR if result.predicted == result.positive_class else NEGATIVE_COLOUR
    if result.heatmap is None:
        return _Panel(_gray_rgb(pixels), [*caption[:2], "no heatmap"], colour)
    heatmap = np.clip(_resized(result.heatmap, scale, cv2.INTER_AREA), 0.0, 1.0)
    return _Panel(render_overlay(pixels, heatmap), caption, colour)


def _grid(count: int, width: float, height: float) -> tuple[int, float]:
    """(columns, square panel side) giving the largest panels that fit `count` of them with their captions."""
    caption = CAPTION_LINES * (CAPTION_SIZE + 1.5) + GAP
    best = (1, 0.0)
    for columns in range(1, count + 1):
        rows = math.ceil(count / columns)
        side = min((width - (columns - 1) * GAP) / columns, height / rows - caption, 250.0)
        if side > best[1]:
            best = (columns, side)
    return best


def _resized(array: np.ndarray, scale: float, interpolation: int) -> np.ndarray:
    if scale >= 1.0:
        return array
    height, width = array.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(array, size, interpolation=interpolation)


def _gray_rgb(pixels: np.ndarray) -> np.ndarray:
    return np.repeat(np.round(pixels * 255).astype(np.uint8)[..., None], 3, axis=-1)


def _chart_height(models: int) -> float:
    return 26 + ROW_HEIGHT * (models + 1) + 14


def _draw_probabilities(
    canvas: Canvas, results: Sequence[ModelResult], agreement: Agreement | None, x: float, top: float, width: float
) -> None:
    """Horizontal bars of each model's P(positive) with its threshold as a tick, and the ensemble's mean +- SD."""
    label_width, value_width = 92.0, 58.0
    bar_left, bar_width = x + label_width, width - label_width - value_width
    positive = results[0].positive_class
    _text_lines(canvas, [f"P({positive}) per model"], x, top, BOLD, 8.5)
    key = f"tick: the model's threshold; red: decided {positive}, blue: not"
    _text_lines(canvas, [key], x, top - 11, TEXT, 7, width=width)
    y = top - 26
    rows: list[tuple[str, float, colors.Color, float | None, str]] = [
        (
            r.name,
            r.positive_probability,
            POSITIVE_COLOUR if r.predicted == r.positive_class else NEGATIVE_COLOUR,
            r.threshold,
            f"{r.positive_probability:.3f}",
        )
        for r in results
    ]
    spread = 0.0
    if agreement is not None:
        mean, spread = agreement.ensemble["mean"], agreement.ensemble["std"]
        rows.append(("ensemble (mean)", mean, ENSEMBLE_COLOUR, None, f"{mean:.3f} ± {spread:.3f}"))
    for name, value, colour, threshold, text in rows:
        canvas.setFillColor(colors.HexColor("#eeeeee"))
        canvas.rect(bar_left, y - 10, bar_width, 9, stroke=0, fill=1)
        canvas.setFillColor(colour)
        canvas.rect(bar_left, y - 10, bar_width * value, 9, stroke=0, fill=1)
        canvas.setStrokeColor(colors.black)
        canvas.setLineWidth(1)
        if threshold is not None:
            canvas.line(bar_left + bar_width * threshold, y - 12, bar_left + bar_width * threshold, y + 1)
        else:  # the ensemble: a whisker of one standard deviation either side of the mean
            low, high = max(0.0, value - spread), min(1.0, value + spread)
            canvas.line(bar_left + bar_width * low, y - 5.5, bar_left + bar_width * high, y - 5.5)
        _text_lines(canvas, [_fitted(name, TEXT, 8, label_width - 4)], x, y, TEXT, 8)
        _text_lines(canvas, [text], bar_left + bar_width + 4, y, TEXT, 8)
        y -= ROW_HEIGHT
    canvas.setFillColor(colors.black)
    canvas.setFont(TEXT, 7)
    for tick in (0.0, 0.5, 1.0):
        canvas.drawCentredString(bar_left + bar_width * tick, y - 4, f"{tick:g}")


def _mapped_models(agreement: Agreement | None) -> list[str]:
    """The models whose heatmaps were compared, in order."""
    pairs = agreement.rank_correlation if agreement else {}
    return list(dict.fromkeys(name for pair in pairs for name in pair))


def _matrix_cell(agreement: Agreement) -> float:
    return min(30.0, 150.0 / max(1, len(_mapped_models(agreement))))


def _matrix_height(agreement: Agreement | None) -> float:
    """Height of the agreement matrix; 0 where fewer than two heatmaps were compared."""
    names = _mapped_models(agreement)
    if agreement is None or len(names) < 2:
        return 0.0
    return 16 + 10 + _matrix_cell(agreement) * len(names) + 2 * 10


def _draw_agreement(canvas: Canvas, agreement: Agreement, x: float, top: float) -> None:
    """Models x models: heatmap rank correlation above the diagonal, hottest-10% overlap (IoU) below it."""
    names = _mapped_models(agreement)
    cell = _matrix_cell(agreement)
    label_width = 14.0
    _text_lines(canvas, ["How alike the heatmaps are"], x, top, BOLD, 8.5)
    grid_top = top - 26
    canvas.setFont(TEXT, 7)
    canvas.setFillColor(colors.black)
    for index in range(len(names)):
        canvas.drawCentredString(x + label_width + (index + 0.5) * cell, grid_top + 3, str(index + 1))
        canvas.drawRightString(x + label_width - 3, grid_top - (index + 0.5) * cell - 2.5, str(index + 1))
    for row, first in enumerate(names):
        for column, second in enumerate(names):
            left, bottom = x + label_width + column * cell, grid_top - (row + 1) * cell
            if row == column:
                value, colour = None, colors.HexColor("#dddddd")
            else:
                pair = (first, second) if (first, second) in agreement.rank_correlation else (second, first)
                source = agreement.rank_correlation if row < column else agreement.hottest_iou
                value = source.get(pair)
                colour = _shade(value)
            canvas.setFillColor(colour)
            canvas.setStrokeColor(colors.white)
            canvas.rect(left, bottom, cell, cell, stroke=1, fill=1)
            if row != column:
                canvas.setFillColor(colors.white if value is not None and value > 0.6 else colors.black)
                canvas.setFont(TEXT, 7)
                canvas.drawCentredString(
                    left + cell / 2, bottom + cell / 2 - 2.5, "-" if value is None else f"{value:.2f}"
                )
    legend_x = x + label_width + len(names) * cell + GAP
    legend = [f"{index + 1} = {name}" for index, name in enumerate(names)]
    _text_lines(canvas, legend, legend_x, grid_top, TEXT, 7, width=PAGE_WIDTH - MARGIN - legend_x)
    key = ["above the diagonal: rank correlation (Spearman r)", "below: overlap of the hottest 10% (IoU)"]
    _text_lines(canvas, key, x, grid_top - len(names) * cell - 3, TEXT, 7, width=PAGE_WIDTH - MARGIN - x)


def _shade(value: float | None) -> colors.Color:
    """White at 0 to deep blue at 1; negative correlations shade towards red."""
    if value is None:
        return colors.HexColor("#f4f4f4")
    strength = min(1.0, abs(value))
    end = (0.13, 0.35, 0.62) if value >= 0 else (0.75, 0.22, 0.17)
    return colors.Color(*(1.0 + (channel - 1.0) * strength for channel in end))


# --------------------------------------------------------------------------- text and tables


def _heading(canvas: Canvas, text: str, y: float) -> float:
    return _text_lines(canvas, [text], MARGIN, y, BOLD, 13) - 4


def _text_lines(
    canvas: Canvas,
    lines: Sequence[str],
    x: float,
    top: float,
    font: str,
    size: float,
    colour: colors.Color = colors.black,
    width: float | None = None,
) -> float:
    """Draw lines from `top` down (each cut to `width` if given); returns the y below the last one."""
    canvas.setFont(font, size)
    canvas.setFillColor(colour)
    y = top
    for line in lines:
        y -= size + 1.5
        canvas.drawString(x, y + 1.5, line if width is None else _fitted(line, font, size, width))
    return y - 2


def _wrapped(
    canvas: Canvas,
    paragraphs: Sequence[str],
    x: float,
    top: float,
    font: str,
    size: float,
    width: float,
    colour: colors.Color = colors.black,
    max_lines: int = 12,
) -> float:
    """Draw paragraphs wrapped to `width` (long words such as paths broken anywhere), at most `max_lines` lines."""
    lines = [line for paragraph in paragraphs for line in _wrap(paragraph, font, size, width)]
    if len(lines) > max_lines:
        lines = [*lines[: max_lines - 1], _fitted(lines[max_lines - 1] + " …", font, size, width)]
    return _text_lines(canvas, lines, x, top, font, size, colour) if lines else top


def _wrap(text: str, font: str, size: float, width: float) -> list[str]:
    lines = []
    for line in simpleSplit(text, font, size, width) or [""]:
        while stringWidth(line, font, size) > width and len(line) > 1:  # a word longer than the line
            cut = max(1, next(i for i in range(len(line), 0, -1) if stringWidth(line[:i], font, size) <= width))
            lines.append(line[:cut])
            line = line[cut:]
        lines.append(line)
    return lines


def _fitted(text: str, font: str, size: float, width: float) -> str:
    """`text`, or its start with an ellipsis when it is wider than `width`."""
    if stringWidth(text, font, size) <= width:
        return text
    while text and stringWidth(text + "…", font, size) > width:
        text = text[:-1]
    return text + "…"


_CELL = ParagraphStyle("cell", fontName=TEXT, fontSize=7.5, leading=9)
_HEADER_CELL = ParagraphStyle("header", parent=_CELL, fontName=BOLD)


def _cell(text: str, *, bold: bool = False) -> Paragraph:
    """A table cell that wraps; the text is escaped, so a name can never become markup."""
    return Paragraph(escape(text), _HEADER_CELL if bold else _CELL)


def _table(canvas: Canvas, rows: list[list[Paragraph]], widths: list[float], top: float, header: bool = True) -> float:
    table = Table(rows, colWidths=widths)
    style = [
        ("GRID", (0, 0), (-1, -1), 0.4, colors.HexColor("#bbbbbb")),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("TOPPADDING", (0, 0), (-1, -1), 2),
        ("LEFTPADDING", (0, 0), (-1, -1), 3),
        ("RIGHTPADDING", (0, 0), (-1, -1), 3),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
    ]
    if header:
        style.append(("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#eeeeee")))
    table.setStyle(TableStyle(style))
    _, height = table.wrapOn(canvas, CONTENT_WIDTH, top - FOOTER_TOP)
    table.drawOn(canvas, MARGIN, top - height)
    return top - height - 6
