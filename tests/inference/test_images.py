import io
import pickle
import time
import zipfile

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom import uid as pydicom_uid
from pydicom.data import get_testdata_file
from pydicom.pixels import get_decoder, pixel_array
from pydicom.uid import UID, BasicTextSRStorage, JPEGLSLossless

from lungviz.errors import ImageInputError
from lungviz.inference import images as images_module
from lungviz.inference.images import (
    CT_WINDOWS,
    MAX_PIXELS,
    ChestImage,
    Window,
    apply_window,
    load_image,
)
from tests.images_factory import (
    PHI,
    chest_hounsfield,
    chest_radiograph,
    chest_regions,
    compressed_dicom,
    ct_dicom,
    dicom_bytes,
    dicom_dataset,
    encode,
    multiframe_ct,
    picture_case,
    png_header_only,
    radiograph_dicom,
    to_8bit,
)

GRAY = chest_radiograph()
HU = chest_hounsfield()


def window_by_hand(values: np.ndarray, center: float, width: float) -> np.ndarray:
    return np.clip((values.astype(np.float64) - (center - width / 2)) / width, 0, 1)


def assert_display_ready(image: ChestImage, shape: tuple[int, int]) -> None:
    assert image.pixels.dtype == np.float32
    assert image.pixels.shape == shape
    assert image.pixels.min() >= 0.0
    assert image.pixels.max() <= 1.0


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def bundled(name: str) -> bytes:
    """One of the sample files that ship inside pydicom."""
    with open(get_testdata_file(name), "rb") as file:
        return file.read()


def pixel_syntax(file: str) -> UID:
    return dcmread(get_testdata_file(file), stop_before_pixels=True).file_meta.TransferSyntaxUID


# --- Pictures -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "file_format", "tolerance"),
    [
        ("L", "PNG", 1e-6),
        ("L", "BMP", 1e-6),
        ("L", "TIFF", 1e-6),
        ("L", "JPEG", 0.02),
        ("RGB", "PNG", 1e-6),
        ("RGB", "JPEG", 0.02),
        ("RGBA", "PNG", 1e-6),
        ("LA", "PNG", 1e-6),
        ("P", "PNG", 1e-6),
        ("P", "BMP", 1e-6),
        ("CMYK", "JPEG", 0.03),
    ],
)
def test_pictures_become_the_grey_image_a_viewer_shows(mode, file_format, tolerance):
    data, expected = picture_case(mode, file_format, GRAY)
    image = load_image(data, f"chest.{file_format.lower()}")
    assert_display_ready(image, GRAY.shape)
    assert np.abs(image.pixels - expected).mean() <= tolerance
    assert image.modality_hint is None
    assert image.hounsfield is None
    assert image.metadata["Format"] == file_format
    assert image.name == f"chest.{file_format.lower()}"


def test_transparent_pixels_are_composited_over_black_not_dropped():
    data, _ = picture_case("RGBA", "PNG", np.full(GRAY.shape, 0.8))
    pixels = load_image(data, "padded.png").pixels
    assert pixels[:, 0].max() == 0.0  # fully transparent edge
    assert pixels[:, GRAY.shape[1] // 2] == pytest.approx(0.8, abs=1 / 255)


@pytest.mark.parametrize("file_format", ["PNG", "TIFF"])
def test_16_bit_images_use_their_full_range_not_the_container_depth(file_format):
    stored = (np.rint(GRAY * 4095) + 100).astype(np.uint16)  # a 12-bit detector in a 16-bit file
    image = load_image(encode(Image.fromarray(stored), file_format), "detector.png")
    assert_display_ready(image, GRAY.shape)
    assert image.pixels.min() == 0.0
    assert image.pixels.max() == 1.0
    assert correlation(image.pixels, GRAY) > 0.99
    assert image.window is not None
    assert image.metadata["Window"].startswith("auto")


def test_16_bit_scaling_ignores_a_few_hot_pixels():
    stored = np.rint(GRAY * 4095).astype(np.uint16)
    stored[:3, :3] = 65535  # burned-in marker
    pixels = load_image(encode(Image.fromarray(stored), "PNG"), "marker.png").pixels
    lungs = chest_regions(*GRAY.shape)["lungs"]
    assert pixels[lungs].mean() == pytest.approx(GRAY[lungs].mean(), abs=0.03)


@pytest.mark.parametrize(("scale", "offset", "stretched"), [(1.0, 0.0, False), (3000.0, -1000.0, True)])
def test_float_tiff_is_kept_when_already_0_to_1_and_stretched_otherwise(scale, offset, stretched):
    values = (GRAY * scale + offset).astype(np.float32)
    image = load_image(encode(Image.fromarray(values, "F"), "TIFF"), "float.tif")
    assert_display_ready(image, GRAY.shape)
    if stretched:
        assert image.pixels.min() == 0.0
        assert image.pixels.max() == 1.0
        assert correlation(image.pixels, GRAY) > 0.99
    else:
        np.testing.assert_allclose(image.pixels, values, atol=1e-7)
        assert image.window is None


def test_exif_orientation_6_comes_out_rotated_clockwise():
    gray = GRAY[:, :200].copy()
    gray[:40, :40] = 1.0  # marker top-left as stored
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.fromarray(to_8bit(gray)), "JPEG", quality=95, exif=exif)
    image = load_image(data, "phone.jpg")
    upright = np.rot90(gray, k=-1)
    assert image.pixels.shape == upright.shape
    assert np.abs(image.pixels - upright).mean() < 0.02
    assert image.pixels[:30, -30:].mean() > 0.95  # marker now top-right
    assert "6" in image.metadata["Orientation"]


def test_a_tiff_page_is_chosen_like_a_dicom_frame():
    pages = [Image.fromarray(to_8bit(chest_radiograph(seed=seed))) for seed in range(3)]
    data = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    image = load_image(data, "pages.tif", frame=2)
    assert image.frame == 2
    assert image.frame_count == 3
    np.testing.assert_allclose(image.pixels, to_8bit(chest_radiograph(seed=2)) / 255.0, atol=1e-6)


def test_reading_a_3000_square_16_bit_png_takes_well_under_a_second():
    stored = np.rint(chest_radiograph(3000, 3000) * 16383).astype(np.uint16)
    data = encode(Image.fromarray(stored), "PNG", compress_level=1)
    timings = []
    for _ in range(2):
        start = time.perf_counter()
        image = load_image(data, "big.png")
        timings.append(time.perf_counter() - start)
    assert image.pixels.shape == (3000, 3000)
    assert min(timings) < 1.0


# --- DICOM --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_radiographs_show_bone_bright_whatever_the_photometric_interpretation(photometric):
    image = load_image(radiograph_dicom(GRAY, photometric=photometric), "dx.dcm")
    assert_display_ready(image, GRAY.shape)
    assert correlation(image.pixels, GRAY) > 0.99
    regions = chest_regions(*GRAY.shape)
    assert image.pixels[regions["spine"]].mean() > image.pixels[regions["lungs"]].mean() + 0.4
    assert image.modality_hint == "xray"
    assert image.metadata["PhotometricInterpretation"] == photometric
    assert ("inverted" in image.metadata["Window"]) == (photometric == "MONOCHROME1")


@pytest.mark.parametrize("function", ["LINEAR_EXACT", "SIGMOID"])
def test_radiograph_uses_the_window_stored_in_the_file(function):
    data = radiograph_dicom(GRAY, WindowCenter=1500, WindowWidth=2000, VOILUTFunction=function)
    image = load_image(data, "dx.dcm")
    stored = np.rint(GRAY * 4095)
    expected = (
        window_by_hand(stored, 1500, 2000)
        if function == "LINEAR_EXACT"
        else 1 / (1 + np.exp(-4 * (stored - 1500) / 2000))
    )
    np.testing.assert_allclose(image.pixels, expected, atol=1e-5)
    assert (image.window.center, image.window.width) == (1500, 2000)


def voi_lut_dicom(table: np.ndarray, explanation: str) -> bytes:
    """A radiograph of GRAY with one VOI LUT of 4096 entries declared 16-bit."""
    lut = dicom_dataset(None)
    lut.add_new("LUTDescriptor", "US", [4096, 0, 16])
    lut.add_new("LUTData", "US", table.tolist())
    lut.LUTExplanation = explanation
    return radiograph_dicom(GRAY, VOILUTSequence=[lut])


def test_radiograph_voi_lut_is_scaled_by_the_table_not_its_declared_depth():
    entries = np.arange(4096)
    table = np.rint(4095 * np.sqrt(entries / 4095)).astype(np.uint16)  # 12-bit values, declared 16-bit
    image = load_image(voi_lut_dicom(table, "GAMMA"), "cr.dcm")
    np.testing.assert_allclose(image.pixels, table[np.rint(GRAY * 4095).astype(int)] / 4095, atol=1e-6)
    assert "VOI LUT" in image.metadata["Window"]
    assert "GAMMA" in image.metadata["Window"]


@pytest.mark.parametrize(
    "make",
    [
        lambda text: radiograph_dicom(GRAY, WindowCenter=1500, WindowWidth=2000, WindowCenterWidthExplanation=text),
        lambda text: voi_lut_dicom(np.arange(4096, dtype=np.uint16), text),
    ],
    ids=["window explanation", "LUT explanation"],
)
def test_free_text_naming_the_window_is_cut_like_any_header_text(make):
    text = "SOFT TISSUE " * 5 + "dictated by Dr Smith for Jane Doe"  # 60 + 33 characters
    window = load_image(make(text), "dx.dcm").metadata["Window"]
    assert text[:64] in window
    assert "Smith" not in window
    assert "Jane" not in window


@pytest.mark.parametrize(("slope", "intercept"), [(1.0, -1024.0), (0.5, -1024.0)])
@pytest.mark.parametrize("window", [None, "lung", "mediastinum", "bone", Window(-500, 1000, "custom")])
def test_ct_is_read_in_hounsfield_units_and_windowed(slope, intercept, window):
    image = load_image(ct_dicom(HU, slope=slope, intercept=intercept), "ct.dcm", window=window)
    assert image.modality_hint == "ct"
    np.testing.assert_array_equal(image.hounsfield, HU.astype(np.float32))
    chosen = CT_WINDOWS[window or "lung"] if not isinstance(window, Window) else window
    assert image.window == chosen
    np.testing.assert_allclose(image.pixels, window_by_hand(HU, chosen.center, chosen.width), atol=1e-6)


def test_lung_window_puts_minus_600_hu_at_mid_grey():
    image = load_image(ct_dicom(HU), "ct.dcm")
    at_600 = image.hounsfield == -600
    assert at_600.sum() > 100
    assert np.all(image.pixels[at_600] == 0.5)
    assert image.metadata["Window"].startswith("lung")


def test_rewindowing_a_ct_image_matches_reading_it_with_that_window():
    image = load_image(ct_dicom(HU), "ct.dcm")
    bone = image.with_window("bone")
    np.testing.assert_array_equal(bone.pixels, load_image(ct_dicom(HU), "ct.dcm", window="bone").pixels)
    np.testing.assert_array_equal(apply_window(image.hounsfield, CT_WINDOWS["bone"]), bone.pixels)
    assert bone.metadata["Window"].startswith("bone")
    assert image.window.name == "lung"
    with pytest.raises(ValueError, match="not CT"):
        load_image(radiograph_dicom(GRAY), "dx.dcm").with_window("lung")


@pytest.mark.parametrize("enhanced", [False, True])
def test_multiframe_ct_reads_the_chosen_frame(enhanced):
    frames = np.stack([chest_hounsfield(seed=seed) for seed in range(3)])
    data = multiframe_ct(frames, enhanced=enhanced)
    for index in range(3):
        image = load_image(data, "volume.dcm", frame=index)
        assert (image.frame, image.frame_count) == (index, 3)
        np.testing.assert_array_equal(image.hounsfield, frames[index])
    assert image.metadata["Frames"] == "3"


@pytest.mark.parametrize("frame", [3, -1])
@pytest.mark.parametrize("kind", ["dicom", "tiff"])
def test_a_frame_out_of_range_says_how_many_there_are(kind, frame):
    if kind == "dicom":
        data = multiframe_ct(np.stack([HU] * 3), enhanced=False)
    else:
        pages = [Image.fromarray(to_8bit(GRAY))] * 3
        data = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    with pytest.raises(ImageInputError, match=f"frame {frame} does not exist: the file has 3 frames"):
        load_image(data, "volume", frame=frame)


@pytest.mark.parametrize("name", ["image.png", "IM0001", "scan.jpg"])
def test_dicom_is_detected_by_content_not_by_name(name):
    image = load_image(radiograph_dicom(GRAY), name)
    assert image.metadata["Modality"] == "DX"
    assert image.name == name


def test_a_png_named_dcm_is_read_as_png():
    data, expected = picture_case("L", "PNG", GRAY)
    image = load_image(data, "study.dcm")
    assert image.metadata["Format"] == "PNG"
    np.testing.assert_allclose(image.pixels, expected, atol=1e-6)


def test_rgb_dicom_becomes_grey():
    levels = to_8bit(GRAY)
    rgb = np.dstack([levels, levels, np.zeros_like(levels)])
    data = dicom_bytes(dicom_dataset(rgb, photometric="RGB", Modality="OT"))
    pixels = load_image(data, "secondary.dcm").pixels
    np.testing.assert_allclose(pixels, levels * (0.299 + 0.587) / 255, atol=1e-5)


DICOM_WITH_PHI = {
    "radiograph": lambda: radiograph_dicom(GRAY, WindowCenter=2000, WindowWidth=4000),
    "monochrome1": lambda: radiograph_dicom(GRAY, photometric="MONOCHROME1"),
    "ct": lambda: ct_dicom(HU),
    "enhanced multi-frame": lambda: multiframe_ct(np.stack([HU, HU]), enhanced=True),
}


@pytest.mark.parametrize("kind", DICOM_WITH_PHI)
def test_patient_identifiers_never_reach_metadata(kind):
    image = load_image(DICOM_WITH_PHI[kind](), "study.dcm")
    shown = str(image.metadata) + repr(image)
    assert image.metadata["Modality"] in ("DX", "CT")  # technical fields do come through
    for keyword, value in PHI.items():
        assert keyword not in shown
        assert value not in shown
        for part in value.split("^"):
            assert part not in shown


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: dicom_bytes(dicom_dataset(None, sop_class=BasicTextSRStorage, Modality="SR")),
            "DICOM file has no image (SOP class Basic Text SR Storage)",
        ),
        (lambda: bundled("rtplan.dcm"), "DICOM file has no image (SOP class RT Plan Storage)"),
        (lambda: dicom_bytes(dicom_dataset(None, Rows=512, Columns=512)), "truncated: its header describes a 512x512"),
        (lambda: radiograph_dicom(GRAY)[:-5000], "DICOM pixel data is truncated or corrupt"),
        (lambda: radiograph_dicom(GRAY)[:300], "DICOM file is truncated or corrupt"),
        (
            lambda: dicom_bytes(dicom_dataset(np.zeros((64, 64), np.uint16), Rows=10000, Columns=10000)),
            "too large (10000x10000 pixels, 100 megapixels)",
        ),
        (lambda: radiograph_dicom(np.full((100, 100), 0.3)), "image is blank"),
    ],
)
def test_unusable_dicom_files_get_a_specific_message_without_identifiers(build, message):
    with pytest.raises(ImageInputError, match=message.replace("(", r"\(").replace(")", r"\)")) as raised:
        load_image(build(), "report.dcm")
    assert str(raised.value).startswith("report.dcm: ")
    assert not any(value in str(raised.value) for value in PHI.values())


def test_pydicom_ct_sample_matches_its_own_rescale():
    dataset_pixels = pixel_array(get_testdata_file("CT_small.dcm"))
    image = load_image(bundled("CT_small.dcm"), "CT_small.dcm")
    np.testing.assert_array_equal(image.hounsfield, dataset_pixels.astype(np.float32) - 1024)
    assert image.modality_hint == "ct"
    assert image.metadata["RescaleIntercept"] == "-1024"


def test_pydicom_mr_sample_uses_its_stored_window_and_has_no_hint():
    image = load_image(bundled("MR_small.dcm"), "MR_small.dcm")
    assert image.modality_hint is None
    assert (image.window.center, image.window.width) == (600, 1600)
    assert_display_ready(image, (64, 64))


@pytest.mark.parametrize(
    ("file", "reference", "lossless"),
    [
        ("MR_small_RLE.dcm", "MR_small.dcm", True),
        ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm", True),
        ("MR_small_jp2klossless.dcm", "MR_small.dcm", True),
        # pydicom ships no uncompressed SC_rgb; its RLE twin is decoded by pydicom itself
        ("SC_rgb_jpeg_gdcm.dcm", "SC_rgb_rle.dcm", True),  # JPEG Lossless, Process 14 SV1
        ("SC_rgb_jls_lossy_sample.dcm", "SC_rgb_rle.dcm", False),  # JPEG-LS near-lossless
        ("SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_rle.dcm", False),  # JPEG Baseline
        ("JPEG2000.dcm", None, False),
        ("GDCMJ2K_TextGBR.dcm", None, True),
        ("image_dfl.dcm", None, True),  # deflated
    ],
)
def test_pydicom_compressed_samples_decode_like_their_uncompressed_twins(file, reference, lossless):
    image = load_image(bundled(file), file)
    if reference is None:  # no uncompressed twin ships: the decoded values as pydicom gives them
        stored = pixel_array(dcmread(get_testdata_file(file)))
        assert_display_ready(image, stored.shape[:2])
        gray = stored if stored.ndim == 2 else stored @ np.array([0.299, 0.587, 0.114])  # RGB after YBR conversion
        assert correlation(image.pixels, gray) > 0.98
        return
    twin = load_image(bundled(reference), reference)
    assert_display_ready(image, twin.pixels.shape)
    if lossless:
        np.testing.assert_allclose(image.pixels, twin.pixels, atol=1e-6)
    else:
        assert correlation(image.pixels, twin.pixels) > 0.98


def test_every_compressed_syntax_pydicom_can_decode_has_an_installed_decoder():
    """(JPEG Extended's decoders take 8-bit samples only; its 12-bit samples are the next test's.)"""
    syntaxes = [UID(s) for s in pydicom_uid.AllTransferSyntaxes if UID(s).is_compressed]
    missing = {s.name for s in syntaxes if _decodable(s) and not get_decoder(s).is_available}
    assert missing == set()


def _decodable(syntax: UID) -> bool:
    try:
        get_decoder(syntax)
    except NotImplementedError:  # pydicom has no decoder for it at all (e.g. MPEG video)
        return False
    return True


def test_missing_decoder_names_the_transfer_syntax_and_the_package(monkeypatch):
    class Unavailable:
        is_available = False

    monkeypatch.setattr(images_module, "get_decoder", lambda syntax: Unavailable())
    with pytest.raises(
        ImageInputError,
        match="compressed as JPEG-LS Lossless Image Compression and no decoder for it is installed; install pyjpegls",
    ):
        load_image(compressed_dicom(JPEGLSLossless, GRAY), "jpegls.dcm")


def test_12_bit_lossy_jpeg_names_the_optional_gpl_decoder():
    with pytest.raises(ImageInputError, match=r"JPEG Extended .* pixel data .*pylibjpeg-libjpeg .*GPL-3.0"):
        load_image(bundled("JPEG-lossy.dcm"), "JPEG-lossy.dcm")


# --- Bad input ----------------------------------------------------------------------------------------------


def zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("scan.png", picture_case("L", "PNG", GRAY)[0])
    return buffer.getvalue()


def picture_of(height: int, width: int, value: float | None = None) -> bytes:
    gray = chest_radiograph(height, width) if value is None else np.full((height, width), value)
    return picture_case("L", "PNG", gray)[0]


SUPPORTED = r"supported are PNG, JPEG, TIFF, BMP and DICOM"
BAD_INPUTS = {
    "empty": (lambda: b"", r"file is empty \(0 bytes\)"),
    "truncated png": (lambda: picture_of(320, 256)[:2000], "PNG file is truncated or corrupt"),
    "truncated jpeg": (lambda: picture_case("L", "JPEG", GRAY)[0][:3000], "JPEG file is truncated or corrupt"),
    "png header only": (lambda: picture_of(320, 256)[:20], "PNG file is truncated or corrupt"),
    "text": (
        lambda: b"Findings: no consolidation.\nImpression: normal.\n",
        rf"not an image LungViz can read \(this is a text file\): {SUPPORTED}",
    ),
    "pdf": (lambda: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", r"\(this is a PDF document\)"),
    "zip": (zip_bytes, rf"not an image LungViz can read \(this is a ZIP archive\): {SUPPORTED}"),
    "random bytes": (
        lambda: b"\x07" + np.random.default_rng(3).bytes(4096),
        f"not an image LungViz can read: {SUPPORTED}",
    ),
    "bomb beyond Pillow's limit": (lambda: png_header_only(100_000, 100_000), "image is too large"),
    "bomb within Pillow's limit": (lambda: png_header_only(8000, 8000), r"too large \(8000x8000 pixels, 64 megapixels"),
    "tiny": (lambda: picture_of(8, 8), r"too small \(8x8 pixels\); the shorter side must be at least 64"),
    "thin strip": (lambda: picture_of(50, 1000), r"too small \(1000x50 pixels\)"),
    "extreme aspect": (lambda: picture_of(200, 1000), r"1000x200 pixels, an aspect ratio of 5.0:1"),
    "blank": (lambda: picture_of(256, 256, 0.5), r"image is blank \(every pixel has the value 0.50"),
    "nan in float tiff": (
        lambda: encode(
            Image.fromarray(np.where(chest_regions(*GRAY.shape)["lungs"], np.nan, GRAY).astype(np.float32), "F"), "TIFF"
        ),
        r"pixels that are not numbers \(NaN or infinity\)",
    ),
}


@pytest.mark.parametrize("kind", BAD_INPUTS)
def test_bad_input_gets_one_specific_message_naming_the_file(kind):
    build, message = BAD_INPUTS[kind]
    with pytest.raises(ImageInputError, match=message) as raised:
        load_image(build(), "upload.bin")
    assert str(raised.value).startswith("upload.bin: ")
    assert isinstance(raised.value, ValueError)
    assert str(pickle.loads(pickle.dumps(raised.value))) == str(raised.value)


@pytest.mark.parametrize(
    ("name", "shape", "problem"),
    [
        ("tiny_1x1.png", (1, 1), "image is too small (1x1 pixels); the shorter side must be at least 64 pixels"),
        (
            "strip_4000x3.png",
            (3, 4000),
            "image is too small (4000x3 pixels); the shorter side must be at least 64 pixels",
        ),
        (
            "wide_1000x200.png",
            (200, 1000),
            "image is 1000x200 pixels, an aspect ratio of 5.0:1; a chest image is at most 4:1",
        ),
    ],
)
def test_a_valid_picture_of_the_wrong_size_is_called_that_not_corrupt(name, shape, problem):
    """Real, intact PNGs: the message is the size problem alone, without 'truncated or corrupt'."""
    pixels = (np.arange(shape[0] * shape[1]) % 251).reshape(shape).astype(np.uint8)
    with pytest.raises(ImageInputError) as raised:
        load_image(encode(Image.fromarray(pixels), "PNG"), name)
    assert str(raised.value) == f"{name}: {problem}"


def test_bomb_is_refused_from_the_header_before_decoding():
    width, height = 7072, 7072  # just over the limit; a decoded 8-bit image would need 50 MB
    assert width * height > MAX_PIXELS
    with pytest.raises(ImageInputError, match="too large"):
        load_image(png_header_only(width, height), "bomb.png")
    # The same header within the limit is only found broken once decoding starts.
    with pytest.raises(ImageInputError, match="truncated or corrupt"):
        load_image(png_header_only(7000, 7000), "bomb.png")


def test_windows_need_dicom_values_and_known_preset_names():
    data = picture_case("L", "PNG", GRAY)[0]
    with pytest.raises(ImageInputError, match="window applies to DICOM"):
        load_image(data, "chest.png", window="lung")
    with pytest.raises(ValueError, match="unknown window 'liver'; presets are lung, mediastinum, bone"):
        load_image(ct_dicom(HU), "ct.dcm", window="liver")
    with pytest.raises(ValueError, match="width must be positive"):
        Window(40, 0)


@pytest.mark.parametrize(
    "name", ["chest.png", "chest.jpg", "chest.jpeg", "chest.tif", "chest.tiff", "chest.bmp", "chest.dcm", "chest.dicom"]
)
@pytest.mark.parametrize("renamed", [False, True], ids=["as named", "extension dropped"])
def test_every_supported_format_loads_with_its_usual_extension_or_none(name, renamed):
    """The content decides, as the uploader accepts any file: DICOM from a PACS often has no extension."""
    file_format = Image.registered_extensions().get("." + name.split(".")[1])
    data = picture_case("L", file_format, GRAY)[0] if file_format else radiograph_dicom(GRAY)
    assert_display_ready(load_image(data, name.split(".")[0] if renamed else name), GRAY.shape)
