"""Image input: the bytes of an uploaded file to a display-ready grayscale chest image.

Every reader (dashboard upload, CLI path, tests) goes through `load_image`, which
returns a `ChestImage` whose `pixels` are float32, 2-D, in [0, 1], at the file's
own resolution. Decisions a radiologist would ask about:

* DICOM is recognised by content (the "DICM" magic at byte 128), never by the
  file name, so a DICOM called "image.png" or "IM0001" is still read as DICOM.
* 8-bit pictures are shown as stored: someone already chose their contrast.
* 16-bit, 32-bit and float pictures usually fill only part of their container
  (a 12-bit detector in a 16-bit PNG divided by 65535 would look black), so they
  get an automatic linear window from the 0.1th to the 99.9th percentile of
  their values: the full dynamic range of the image, without a few hot pixels or
  burned-in labels setting the scale. Float images already inside [0, 1] are
  taken as display values and kept as stored. NaN or infinite values are refused
  rather than guessed.
* Transparent pixels are composited over black (premultiplied alpha), as a
  radiology viewer's black background would show them; dropping alpha instead
  would reveal whatever colour happens to sit under fully transparent padding.
* DICOM radiographs use the file's own VOI LUT or window; MONOCHROME1 is
  inverted so bone is bright. CT is converted to Hounsfield units, kept on the
  image (`hounsfield`) so the UI can re-window without re-reading, and shown in
  the lung window unless another is asked for: this is a chest tool, and lung
  window is how the CT models' training slices were viewed.
* `metadata` holds only DICOM attributes on an explicit allow-list of technical
  fields, so names, IDs, dates, UIDs and institutions cannot reach the screen,
  the logs or an export. Errors from the DICOM parser are reported without their
  text for the same reason (they can quote header values).
* Sizes are checked from the header before any pixel is decoded, so a small file
  that claims a huge image (a decompression bomb) is refused cheaply.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pydicom
from PIL import ExifTags, Image, ImageOps
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi, get_decoder, pixel_array
from pydicom.sequence import Sequence

from lungviz.errors import ChoiceError, ImageInputError

SUPPORTED = "PNG, JPEG, TIFF, BMP and DICOM"
PICTURE_FORMATS = ("PNG", "JPEG", "TIFF", "BMP")
"""Pillow decoders LungViz allows; others (e.g. EPS, which runs Ghostscript) are never tried."""

MAX_PIXELS = 50_000_000
"""Per frame; far above any chest radiograph (a 43 x 43 cm detector at 100 um is 18.5 MP)."""
MIN_SIDE = 64
MAX_ASPECT = 4.0
AUTO_PERCENTILES = (0.1, 99.9)
XRAY_MODALITIES = {"CR", "DX", "DR", "RG"}  # projection radiographs; MG, XA and RF are X-ray but never a chest film
"""DICOM modalities of projection radiographs; CT is the only other hint."""

SAFE_DICOM_FIELDS = (
    "Modality",
    "BodyPartExamined",
    "ViewPosition",
    "ImageLaterality",
    "PatientPosition",
    "ImageType",
    "Manufacturer",
    "ManufacturerModelName",
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "PixelSpacing",
    "ImagerPixelSpacing",
    "SliceThickness",
    "SpacingBetweenSlices",
    "KVP",
    "ExposureTime",
    "XRayTubeCurrent",
    "Exposure",
    "ConvolutionKernel",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "PresentationLUTShape",
)
"""The only DICOM attributes copied to `metadata`: technical, never identifying the patient,
the staff, the institution, the date or the study (no names, IDs, dates, UIDs, free-text comments)."""

PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
FRAME_GROUP_SEQUENCES = ("PixelValueTransformationSequence", "FrameVOILUTSequence", "PixelMeasuresSequence")
FRAME_KEYWORDS = (
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "ModalityLUTSequence",
    "WindowCenter",
    "WindowWidth",
    "WindowCenterWidthExplanation",
    "VOILUTFunction",
    "VOILUTSequence",
    "BitsStored",
    "PixelRepresentation",
    "PhotometricInterpretation",
    "PixelSpacing",
    "SliceThickness",
)
"""Attributes that enhanced multi-frame files move into per-frame functional groups."""

_GDCM = "python-gdcm (pip install python-gdcm)"
_OPENJPEG = "pylibjpeg-openjpeg (pip install pylibjpeg pylibjpeg-openjpeg)"
_DECODER_PACKAGES = {
    # 12-bit lossy JPEG: pydicom lets only libjpeg decode it, and pylibjpeg-libjpeg is GPL-3.0, so LungViz
    # does not install it; a user who accepts that licence can.
    uid.JPEGExtended12Bit: "pylibjpeg-libjpeg for 12-bit samples (GPL-3.0; pip install pylibjpeg pylibjpeg-libjpeg)",
    uid.JPEGLSLossless: "pyjpegls (pip install pyjpegls) or python-gdcm",
    uid.JPEGLSNearLossless: "pyjpegls (pip install pyjpegls) or python-gdcm",
    uid.JPEG2000Lossless: _OPENJPEG,
    uid.JPEG2000: _OPENJPEG,
    uid.HTJ2KLossless: _OPENJPEG,
    uid.HTJ2KLosslessRPCL: _OPENJPEG,
    uid.HTJ2K: _OPENJPEG,
}
"""Transfer syntax -> the decoder package to install when decoding fails; anything else: python-gdcm.

The runtime dependencies ship a decoder for every compressed syntax pydicom supports (python-gdcm,
pylibjpeg-openjpeg, pyjpegls, Pillow, pydicom's own RLE and deflate), except 12-bit JPEG Extended."""

_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG", True),
    (b"\xff\xd8\xff", "JPEG", True),
    (b"II*\x00", "TIFF", True),
    (b"MM\x00*", "TIFF", True),
    (b"BM", "BMP", True),
    (b"%PDF", "a PDF document", False),
    (b"PK\x03\x04", "a ZIP archive", False),
    (b"GIF8", "a GIF image", False),
    (b"\x1f\x8b", "a gzip archive", False),
)
"""Leading bytes -> what the file is, and whether LungViz reads that format."""

_CONTROL_BYTES = bytes(sorted(set(range(32)) - set(b"\t\n\r\f")))
"""Bytes that never occur in text files."""
_PICTURE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)
"""What Pillow raises on truncated or corrupt data."""


@dataclass(frozen=True)
class Window:
    """A display window: `center` maps to mid-grey, `center +- width / 2` to black and white."""

    center: float
    width: float
    name: str = "custom"
    function: str = "linear"
    """"linear" or "sigmoid" (DICOM VOI LUT Function); presets and custom windows are linear."""

    def __post_init__(self) -> None:
        if not self.width > 0:
            raise ValueError(f"window width must be positive, got {self.width}")
        if self.function not in ("linear", "sigmoid"):
            raise ValueError(f"window function must be linear or sigmoid, got {self.function!r}")

    def describe(self) -> str:
        shape = "" if self.function == "linear" else f", {self.function}"
        return f"{self.name} (center {self.center:g}, width {self.width:g}{shape})"


CT_WINDOWS: dict[str, Window] = {
    "lung": Window(-600, 1500, "lung"),
    "mediastinum": Window(40, 400, "mediastinum"),
    "bone": Window(400, 1800, "bone"),
}
"""Standard chest CT presets in Hounsfield units."""
DEFAULT_CT_WINDOW = "lung"


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """Values (e.g. Hounsfield units) through a window to float32 display pixels in [0, 1].

    Linear windows follow DICOM's LINEAR_EXACT form, so the center lands exactly
    on 0.5; sigmoid windows follow DICOM's SIGMOID function.
    """
    scaled = (np.asarray(values, dtype=np.float32) - np.float32(window.center)) / np.float32(window.width)
    if window.function == "sigmoid":
        return (1.0 / (1.0 + np.exp(-4.0 * scaled))).astype(np.float32)
    scaled += np.float32(0.5)
    return np.clip(scaled, 0.0, 1.0, out=scaled)


def resolve_window(window: Window | str) -> Window:
    """A Window from a preset name (see CT_WINDOWS), or the Window itself."""
    if isinstance(window, str):
        try:
            return CT_WINDOWS[window]
        except KeyError:
            raise ChoiceError(f"unknown window {window!r}; presets are {', '.join(CT_WINDOWS)}") from None
    return window


@dataclass(eq=False)
class ChestImage:
    """A grayscale chest image ready for display and models, plus what is safe to know about it."""

    pixels: np.ndarray = field(repr=False)
    """float32, 2-D, in [0, 1], original resolution."""
    name: str
    modality_hint: str | None = None
    """"xray" or "ct" when a DICOM header says so, else None."""
    metadata: dict[str, str] = field(default_factory=dict)
    frame: int = 0
    frame_count: int = 1
    window: Window | None = None
    """The window that made `pixels`, or None where the values were shown as stored."""
    hounsfield: np.ndarray | None = field(default=None, repr=False)
    """float32 Hounsfield units of the frame, for CT only."""

    def with_window(self, window: Window | str) -> ChestImage:
        """The same CT frame shown through another window, without re-reading the file."""
        if self.hounsfield is None:
            raise ValueError(f"{self.name} has no Hounsfield units to re-window (it is not CT)")
        chosen = resolve_window(window)
        return replace(
            self,
            pixels=apply_window(self.hounsfield, chosen),
            window=chosen,
            metadata={**self.metadata, "Window": chosen.describe()},
        )


def load_image(data: bytes, name: str, *, frame: int = 0, window: Window | str | None = None) -> ChestImage:
    """Read a PNG, JPEG, TIFF, BMP or DICOM file's bytes as a chest image.

    `frame` picks one frame of a multi-frame DICOM or page of a TIFF. `window`
    (a Window or a CT_WINDOWS name) overrides how DICOM values are shown.
    Raises ImageInputError with a message naming the file and the problem.
    """
    if not data:
        raise ImageInputError(name, "file is empty (0 bytes)")
    chosen = None if window is None else resolve_window(window)
    if is_dicom(data):
        return _load_dicom(data, name, frame, chosen)
    if chosen is not None:
        raise ImageInputError(name, "a display window applies to DICOM pixel values; this file is not DICOM")
    return _load_picture(data, name, frame)


def is_dicom(data: bytes) -> bool:
    """True for a DICOM Part 10 file: 128-byte preamble, then "DICM"."""
    return data[128:132] == b"DICM"


def _check_frame(name: str, frame: int, frame_count: int) -> None:
    if not 0 <= frame < frame_count:
        raise ImageInputError(
            name,
            f"frame {frame} does not exist: the file has {frame_count} "
            f"frame{'s' if frame_count != 1 else ''}, numbered 0 to {frame_count - 1}",
        )


def _check_size(name: str, width: int, height: int) -> None:
    """Refuse from the header alone: decompression bombs, thumbnails and strips."""
    if width * height > MAX_PIXELS:
        raise ImageInputError(
            name,
            f"image is too large ({width}x{height} pixels, {width * height / 1e6:.0f} "
            f"megapixels); LungViz accepts up to {MAX_PIXELS / 1e6:.0f} megapixels",
        )
    if min(width, height) < MIN_SIDE:
        raise ImageInputError(
            name, f"image is too small ({width}x{height} pixels); the shorter side must be at least {MIN_SIDE} pixels"
        )
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise ImageInputError(
            name,
            f"image is {width}x{height} pixels, an aspect ratio of "
            f"{max(width, height) / min(width, height):.1f}:1; a chest image is "
            f"at most {MAX_ASPECT:g}:1",
        )


def _check_values(name: str, values: np.ndarray) -> None:
    if values.dtype.kind == "f":
        not_numbers = values.size - np.count_nonzero(np.isfinite(values))
        if not_numbers:
            raise ImageInputError(name, f"image has {not_numbers} pixels that are not numbers (NaN or infinity)")
    if values.min() == values.max():
        raise ImageInputError(name, f"image is blank (every pixel has the value {values.flat[0]:g})")


def _auto_window(values: np.ndarray) -> Window:
    """The window spanning the robust range of the values (see module docstring)."""
    low, high = (float(v) for v in np.percentile(values, AUTO_PERCENTILES))
    if high <= low:  # nearly constant: a few pixels differ, use them all
        low, high = float(values.min()), float(values.max())
    return Window((low + high) / 2, high - low, f"auto {AUTO_PERCENTILES[0]:g}-{AUTO_PERCENTILES[1]:g} percentile")


def _luma(rgb: np.ndarray, full_scale: float) -> np.ndarray:
    """ITU-R BT.601 luma of an (H, W, 3) array, in [0, 1]; alpha (4th channel) composites over black."""
    gray = rgb[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) / np.float32(full_scale)
    if rgb.shape[-1] == 4:
        gray *= rgb[..., 3].astype(np.float32) / np.float32(full_scale)
    return np.clip(gray, 0.0, 1.0, out=gray)


def _describe_unreadable(data: bytes) -> str:
    for magic, kind, readable in _SIGNATURES:
        if data.startswith(magic):
            return (
                f"{kind} file is truncated or corrupt"
                if readable
                else (f"not an image LungViz can read (this is {kind}): supported are {SUPPORTED}")
            )
    head = data[:2048]
    kind = " (this is a text file)" if head.translate(None, _CONTROL_BYTES) == head else ""
    return f"not an image LungViz can read{kind}: supported are {SUPPORTED}"


def _load_picture(data: bytes, name: str, frame: int) -> ChestImage:
    try:
        picture = Image.open(io.BytesIO(data), formats=PICTURE_FORMATS)
    except Image.DecompressionBombError:
        raise ImageInputError(
            name,
            f"image is too large (over {2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f} megapixels); "
            f"LungViz accepts up to {MAX_PIXELS / 1e6:.0f} megapixels",
        ) from None
    except _PICTURE_ERRORS:
        raise ImageInputError(name, _describe_unreadable(data)) from None
    with picture:
        frame_count = getattr(picture, "n_frames", 1)
        _check_frame(name, frame, frame_count)
        try:
            picture.seek(frame)
            _check_size(name, *picture.size)
            orientation = picture.getexif().get(ExifTags.Base.Orientation, 1)
            picture.load()
            upright = ImageOps.exif_transpose(picture)
        except ImageInputError:
            raise  # a size refusal, not a decoding failure (ImageInputError is also a ValueError)
        except _PICTURE_ERRORS as error:
            raise ImageInputError(name, f"{picture.format} file is truncated or corrupt ({error})") from None
    mode = upright.mode
    metadata = {
        "Format": str(picture.format),
        "Mode": mode,
        "Columns": str(upright.width),
        "Rows": str(upright.height),
        "Frames": str(frame_count),
    }
    if orientation in range(2, 9):
        metadata["Orientation"] = f"EXIF orientation {orientation} applied"
    window = None
    if mode.startswith("I") or mode == "F":
        values = np.asarray(upright)
        _check_values(name, values)
        if mode == "F" and values.min() >= 0 and values.max() <= 1:
            pixels = values.astype(np.float32)
        else:
            window = _auto_window(values)
            pixels = apply_window(values, window)
    else:
        if mode == "L":
            pixels = np.asarray(upright, dtype=np.float32) / np.float32(255)
        else:
            transparent = "A" in mode or "a" in mode or "transparency" in upright.info
            pixels = _luma(np.asarray(upright.convert("RGBA" if transparent else "RGB")), 255)
        _check_values(name, pixels)
    metadata["Window"] = window.describe() if window else "as stored"
    return ChestImage(pixels=pixels, name=name, metadata=metadata, frame=frame, frame_count=frame_count, window=window)


def _load_dicom(data: bytes, name: str, frame: int, window: Window | None) -> ChestImage:
    """Parse, check and convert; any parser failure becomes one message.

    pydicom raises many exception types on malformed headers, and their text can
    quote header values (patient data), so neither the type nor the text is shown.
    """
    try:
        return _dicom_image(pydicom.dcmread(io.BytesIO(data)), name, frame, window)
    except ImageInputError:
        raise
    except Exception:  # noqa: BLE001 - untrusted input, see docstring
        raise ImageInputError(name, "DICOM file is truncated or corrupt (its header cannot be read)") from None


def _dicom_image(dataset: Dataset, name: str, frame: int, window: Window | None) -> ChestImage:
    columns, rows = int(dataset.get("Columns", 0)), int(dataset.get("Rows", 0))
    frame_count = int(dataset.get("NumberOfFrames") or 1)
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    modality = str(dataset.get("Modality", "")).upper()
    if not any(keyword in dataset for keyword in PIXEL_DATA_KEYWORDS):
        if "SOPClassUID" not in dataset:
            raise ImageInputError(
                name, "DICOM file is truncated or corrupt (its header has neither an image nor a SOP class)"
            )
        if rows and columns:
            raise ImageInputError(
                name,
                f"DICOM file is truncated: its header describes a {columns}x{rows} image but the pixel data is missing",
            )
        # The SOP class is a standard UID naming the kind of object, not the patient or study.
        raise ImageInputError(
            name,
            f"DICOM file has no image (SOP class {dataset.SOPClassUID.name}); "
            f"LungViz needs an image such as a radiograph or a CT slice",
        )
    _check_frame(name, frame, frame_count)
    _check_size(name, columns, rows)
    if photometric == "PALETTE COLOR":
        raise ImageInputError(name, "DICOM pseudo-colour (PALETTE COLOR) images are not supported")
    stored = _decode_frame(dataset, name, frame)
    view = _frame_view(dataset, frame)
    metadata = {keyword: _dicom_text(view.get(keyword, dataset.get(keyword))) for keyword in SAFE_DICOM_FIELDS}
    metadata = {keyword: text for keyword, text in metadata.items() if text}
    metadata["TransferSyntax"] = _transfer_syntax(dataset).name
    metadata["Frames"] = str(frame_count)
    hint = "ct" if modality == "CT" else "xray" if modality in XRAY_MODALITIES else None
    hounsfield = None
    if stored.ndim == 3:  # RGB, or YBR already converted to RGB by pydicom
        if window is not None:
            raise ImageInputError(name, f"a display window needs grayscale values; this DICOM is {photometric}")
        pixels = _luma(stored, 2 ** int(dataset.get("BitsStored", 8)) - 1)
        _check_values(name, pixels)
        description = "as stored (colour converted to grey)"
    else:
        values = apply_modality_lut(stored, view)
        _check_values(name, values)
        if hint == "ct":
            hounsfield = values.astype(np.float32)
            window = window or CT_WINDOWS[DEFAULT_CT_WINDOW]
            pixels = apply_window(hounsfield, window)
            description = window.describe()
        elif window is None and view.get("VOILUTSequence"):
            pixels, description = _apply_voi_lut(values, view), f"VOI LUT from file{_explanation(view)}"
        else:
            window = window or _file_window(view) or _auto_window(values)
            pixels = apply_window(values, window)
            description = window.describe()
        if photometric == "MONOCHROME1":
            pixels = 1.0 - pixels
            description += ", inverted (MONOCHROME1)"
    metadata["Window"] = description
    return ChestImage(
        pixels=pixels.astype(np.float32, copy=False),
        name=name,
        modality_hint=hint,
        metadata=metadata,
        frame=frame,
        frame_count=frame_count,
        window=window,
        hounsfield=hounsfield,
    )


def _transfer_syntax(dataset: Dataset) -> uid.UID:
    return uid.UID(dataset.file_meta.get("TransferSyntaxUID", uid.ImplicitVRLittleEndian))


def _decode_frame(dataset: Dataset, name: str, frame: int) -> np.ndarray:
    """One frame's stored values; a missing or failing decoder names the package to install."""
    syntax = _transfer_syntax(dataset)
    package = _DECODER_PACKAGES.get(syntax, _GDCM)
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise ImageInputError(
            name, f"DICOM pixel data is compressed as {syntax.name}, which LungViz cannot decode"
        ) from None
    if not decoder.is_available:
        raise ImageInputError(
            name,
            f"DICOM pixel data is compressed as {syntax.name} and no decoder for it is installed; install {package}",
        )
    try:
        return pixel_array(dataset, index=frame)
    except (RuntimeError, ValueError, AttributeError, KeyError, TypeError, OSError) as error:
        if not syntax.is_compressed:
            raise ImageInputError(name, "DICOM pixel data is truncated or corrupt") from None
        reason = str(error).strip().splitlines()[-1].strip()
        raise ImageInputError(
            name,
            f"the installed decoders could not decode this {syntax.name} pixel data "
            f"({reason}); if the file is intact, install {package}",
        ) from None


def _frame_view(dataset: Dataset, frame: int) -> Dataset:
    """The attributes that describe one frame's values, with enhanced multi-frame functional groups applied."""
    view = Dataset()
    view.file_meta = dataset.file_meta  # LUT data byte order
    for keyword in FRAME_KEYWORDS:
        if keyword in dataset:
            view[keyword] = dataset[keyword]
    shared = dataset.get("SharedFunctionalGroupsSequence") or []
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence") or []
    groups = [*shared[:1], *per_frame[frame : frame + 1]]
    for group in groups:
        for sequence in FRAME_GROUP_SEQUENCES:
            for element in (group.get(sequence) or [Dataset()])[0]:
                view[element.tag] = element
    return view


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, MultiValue) else value


def _explanation(view: Dataset) -> str:
    explanation = _dicom_text(_first(view.get("WindowCenterWidthExplanation"))) or (
        _dicom_text(view.VOILUTSequence[0].get("LUTExplanation")) if view.get("VOILUTSequence") else ""
    )
    return f" ({explanation})" if explanation else ""


def _file_window(view: Dataset) -> Window | None:
    """The first window stored in the file, if it has one."""
    center, width = _first(view.get("WindowCenter")), _first(view.get("WindowWidth"))
    if center is None or width is None or float(width) <= 0:
        return None
    function = "sigmoid" if str(view.get("VOILUTFunction", "")).upper() == "SIGMOID" else "linear"
    label = _dicom_text(_first(view.get("WindowCenterWidthExplanation"))) or "from file"
    return Window(float(center), float(width), label, function)


def _apply_voi_lut(values: np.ndarray, view: Dataset) -> np.ndarray:
    """The file's first VOI LUT, scaled by the range of the table itself.

    Tables often declare 16-bit entries but use fewer, so the declared depth would darken the image.
    """
    descriptor = view.VOILUTSequence[0].LUTDescriptor
    entries, first = descriptor[0] or 2**16, descriptor[1]
    table = apply_voi(np.arange(first, first + entries), view).astype(np.float32)
    low, high = float(table.min()), float(table.max())
    mapped = apply_voi(np.rint(values).astype(np.int64), view).astype(np.float32)
    return (mapped - low) / np.float32(max(high - low, 1))


def _dicom_text(value: object) -> str:
    """A header value as short display text (free text too); sequences and binary values are dropped."""
    if value is None or isinstance(value, (bytes, Sequence)):
        return ""
    if isinstance(value, MultiValue):
        return "\\".join(str(item) for item in value)[:64]
    return str(value)[:64]
