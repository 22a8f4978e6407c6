"""Files as a user would upload them: a chest-radiograph-like PNG and CT DICOMs, made in memory.

Shared by the dashboard's AppTest tests and the browser test. The CT slice is
stored the way scanners store it (unsigned values with a rescale slope and
intercept to Hounsfield units) and its header carries patient identifiers, so
tests can check that they never reach the screen.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "PID-0042-LUNGVIZ"
RESCALE_SLOPE, RESCALE_INTERCEPT = 2.0, -2048.0


def _ellipse(shape: tuple[int, int], center: tuple[float, float], radii: tuple[float, float]) -> np.ndarray:
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return ((rows - center[0]) / radii[0]) ** 2 + ((cols - center[1]) / radii[1]) ** 2 <= 1.0


def _lungs(shape: tuple[int, int]) -> np.ndarray:
    height, width = shape
    return (_ellipse(shape, (height * 0.5, width * 0.32), (height * 0.3, width * 0.13))
            | _ellipse(shape, (height * 0.5, width * 0.68), (height * 0.3, width * 0.13)))


def chest_png(shape: tuple[int, int] = (256, 224), seed: int = 0) -> bytes:
    """An 8-bit radiograph-like picture: bright body and mediastinum, dark lung fields, noise."""
    height, width = shape
    body = _ellipse(shape, (height * 0.55, width * 0.5), (height * 0.5, width * 0.45))
    image = np.where(body, 0.75, 0.05) - 0.45 * _lungs(shape)
    image += 0.03 * np.random.default_rng(seed).normal(size=shape)
    ok, encoded = cv2.imencode(".png", np.clip(image * 255, 0, 255).astype(np.uint8))
    assert ok
    return encoded.tobytes()


def ct_hounsfield(shape: tuple[int, int] = (128, 128), seed: int = 0) -> np.ndarray:
    """An axial chest slice in HU: air outside, soft tissue body, two lungs around -850, a bony spine."""
    height, width = shape
    hu = np.full(shape, -1000.0)
    hu[_ellipse(shape, (height * 0.5, width * 0.5), (height * 0.4, width * 0.47))] = 40.0
    hu[_lungs(shape)] = -850.0
    hu[_ellipse(shape, (height * 0.8, width * 0.5), (height * 0.06, width * 0.06))] = 700.0
    return hu + 15.0 * np.random.default_rng(seed).normal(size=shape)


def ct_dicom(frames: int = 1, modality: str = "CT", shape: tuple[int, int] = (128, 128)) -> bytes:
    """A DICOM Part 10 CT file (one or several frames) with identifying patient fields in its header."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.InstitutionName = PATIENT_NAME, PATIENT_ID, "Example General Hospital"
    ds.Modality, ds.BodyPartExamined = modality, "CHEST"
    ds.Rows, ds.Columns = shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = RESCALE_SLOPE, RESCALE_INTERCEPT, "HU"
    ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 1.25
    volume = np.stack([ct_hounsfield(shape, seed=i) for i in range(frames)])
    stored = np.round((volume - RESCALE_INTERCEPT) / RESCALE_SLOPE).astype(np.uint16)
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = stored.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
