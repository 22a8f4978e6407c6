"""Realistic test inputs for the image reader, made in memory.

A synthetic chest radiograph (dark air, bright body, darker lung fields, a
brighter heart and spine, a gradient and noise) is written with Pillow in each
format and mode LungViz reads, and with pydicom as DICOM radiographs and CT
slices. Every DICOM carries patient identifiers so tests can prove they never
leak into metadata or messages.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

PHI = {
    "PatientName": "Doe^Jane^Quincy",
    "PatientID": "PID-4471-0093",
    "PatientBirthDate": "19580214",
    "AccessionNumber": "ACC77120045",
    "InstitutionName": "Saint Example Memorial Hospital",
    "ReferringPhysicianName": "Strange^Stephen",
    "StudyDate": "20240611",
    "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.99887766554433",
    "OperatorsName": "Tech^Tina",
    "StationName": "XR-ROOM-7-WEST",
}
"""Identifying attributes every test DICOM carries; none may ever appear in LungViz output."""

CHEST_SHAPE = (320, 256)


def chest_regions(height: int, width: int) -> dict[str, np.ndarray]:
    """Boolean masks of a frontal chest: body, lungs, heart, spine."""
    y, x = np.mgrid[-1 : 1 : height * 1j, -1 : 1 : width * 1j]
    body = (x / 0.88) ** 2 + (y / 0.98) ** 2 < 1
    lungs = (((np.abs(x) - 0.42) / 0.26) ** 2 + ((y + 0.1) / 0.6) ** 2) < 1
    heart = ((x - 0.12) / 0.25) ** 2 + ((y - 0.3) / 0.22) ** 2 < 1
    spine = body & (np.abs(x) < 0.07)
    return {"body": body, "lungs": lungs & ~heart & ~spine, "heart": heart & ~spine, "spine": spine}


def chest_radiograph(height: int = CHEST_SHAPE[0], width: int = CHEST_SHAPE[1], seed: int = 0) -> np.ndarray:
    """A float64 frontal chest radiograph in [0, 1], display convention (bone bright)."""
    regions = chest_regions(height, width)
    image = 0.04 + 0.06 * np.linspace(0, 1, height)[:, None] * np.ones((1, width))
    for region, level in (("body", 0.55), ("lungs", 0.22), ("heart", 0.62), ("spine", 0.88)):
        image[regions[region]] = level
    image += np.random.default_rng(seed).normal(0, 0.02, image.shape)
    return np.clip(image, 0, 1)


def chest_hounsfield(height: int = CHEST_SHAPE[0], width: int = CHEST_SHAPE[1], seed: int = 0) -> np.ndarray:
    """An int16 chest slice in Hounsfield units: air, soft tissue, lungs at -600, bone."""
    regions = chest_regions(height, width)
    hu = np.full((height, width), -1000.0)
    for region, level in (("body", 40), ("lungs", -600), ("heart", 45), ("spine", 700)):
        hu[regions[region]] = level
    hu += np.random.default_rng(seed).normal(0, 8, hu.shape)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)  # the range a 12-bit CT stores


def to_8bit(gray: np.ndarray) -> np.ndarray:
    return np.rint(gray * 255).astype(np.uint8)


def alpha_ramp(height: int, width: int) -> np.ndarray:
    """Opaque in the middle, fading to fully transparent at the left and right edges."""
    ramp = np.clip(np.minimum(np.arange(width), np.arange(width)[::-1]) / (width / 4), 0, 1)
    return np.rint(np.tile(ramp, (height, 1)) * 255).astype(np.uint8)


def encode(picture: Image.Image, file_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, file_format, **options)
    return buffer.getvalue()


def picture_case(mode: str, file_format: str, gray: np.ndarray) -> tuple[bytes, np.ndarray]:
    """`gray` written in a Pillow mode and format, and the [0, 1] image a viewer should show."""
    levels = to_8bit(gray)
    expected = levels / 255.0
    height, width = gray.shape
    if mode == "L":
        picture = Image.fromarray(levels)
    elif mode == "RGB":
        picture = Image.fromarray(np.dstack([levels] * 3))
    elif mode in ("RGBA", "LA"):
        alpha = alpha_ramp(height, width)
        picture = Image.fromarray(np.dstack([levels] * 3 + [alpha])).convert(mode)
        expected = expected * alpha / 255.0
    elif mode == "P":  # shuffled grey palette: reading the indices as grey would be wrong
        order = np.random.default_rng(1).permutation(256)
        picture = Image.fromarray(np.argsort(order)[levels].astype(np.uint8), "P")
        picture.putpalette(np.repeat(order, 3).astype(np.uint8).tobytes())
    elif mode == "CMYK":
        picture = Image.fromarray(np.dstack([levels] * 3)).convert("CMYK")
    else:
        raise ValueError(mode)
    options = {"quality": 95} if file_format == "JPEG" else {}
    return encode(picture, file_format, **options), expected


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height 8-bit grey pixels (the data is absent)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def dicom_dataset(
    stored: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    sop_class: str = DigitalXRayImageStorageForPresentation,
    **attributes,
) -> FileDataset:
    """A DICOM file dataset with identifiers, optional native pixel data and extra attributes."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset(None, {}, file_meta=meta, preamble=b"\x00" * 128)
    dataset.SOPClassUID = sop_class
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    for keyword, value in PHI.items():
        setattr(dataset, keyword, value)
    if stored is not None:
        depth = bits_stored or stored.dtype.itemsize * 8
        dataset.set_pixel_data(stored, photometric, depth, generate_instance_uid=False)
    for keyword, value in attributes.items():
        setattr(dataset, keyword, value)
    return dataset


def dicom_bytes(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def radiograph_dicom(gray: np.ndarray, *, photometric: str = "MONOCHROME2", **attributes) -> bytes:
    """A 12-bit DX radiograph; MONOCHROME1 stores the inverse (bone dark) as such detectors do."""
    stored = np.rint(gray * 4095).astype(np.uint16)
    if photometric == "MONOCHROME1":
        stored = 4095 - stored
    return dicom_bytes(
        dicom_dataset(
            stored,
            photometric=photometric,
            bits_stored=12,
            Modality="DX",
            BodyPartExamined="CHEST",
            ViewPosition="PA",
            **attributes,
        )
    )


def ct_dicom(hu: np.ndarray, *, slope: float = 1.0, intercept: float = -1024.0, **attributes) -> bytes:
    """CT slice(s) stored as unsigned values that RescaleSlope/Intercept turn back into `hu`."""
    stored = np.rint((hu.astype(np.float64) - intercept) / slope).astype(np.uint16)
    return dicom_bytes(
        dicom_dataset(
            stored,
            sop_class=CTImageStorage,
            Modality="CT",
            BodyPartExamined="CHEST",
            RescaleSlope=slope,
            RescaleIntercept=intercept,
            SliceThickness=1.25,
            KVP=120,
            **attributes,
        )
    )


def compressed_dicom(transfer_syntax: str, gray: np.ndarray) -> bytes:
    """A radiograph whose pixel data claims a compressed transfer syntax (the codestream is junk)."""
    dataset = dicom_dataset(np.rint(gray * 255).astype(np.uint8), Modality="DX")
    dataset.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + bytes(64)])
    dataset["PixelData"].VR = "OB"
    dataset["PixelData"].is_undefined_length = True
    dataset.file_meta.TransferSyntaxUID = transfer_syntax
    return dicom_bytes(dataset)


def multiframe_ct(hu_frames: np.ndarray, *, enhanced: bool) -> bytes:
    """A CT volume in one file: legacy (one rescale for all frames) or enhanced (per-frame functional groups).

    The enhanced variant gives every frame its own Rescale Intercept, as scanners may.
    """
    if not enhanced:
        return ct_dicom(hu_frames)
    intercepts = [-1024.0 - 100.0 * index for index in range(len(hu_frames))]
    stored = np.stack([hu - intercept for hu, intercept in zip(hu_frames, intercepts, strict=False)]).astype(np.uint16)
    dataset = dicom_dataset(stored, sop_class=CTImageStorage, Modality="CT")
    per_frame = []
    for intercept in intercepts:
        transformation = Dataset()
        transformation.RescaleSlope, transformation.RescaleIntercept, transformation.RescaleType = 1, intercept, "HU"
        group = Dataset()
        group.PixelValueTransformationSequence = [transformation]
        per_frame.append(group)
    dataset.PerFrameFunctionalGroupsSequence = per_frame
    return dicom_bytes(dataset)
