import numpy as np
import pytest

from lungviz.inference.images import ChestImage
from lungviz.inference.modality import ModalityGate, assess_modality, load_gate
from lungviz.models.registry import DEFAULT_WEIGHTS_DIR
from lungviz.tasks import MODALITIES
from lungviz.training.gate import fit_gate, natural_images


class _MeanEmbedding:
    """A stand-in embedding: features are fixed per-modality clusters chosen by image brightness."""

    def __call__(self, batch, training=False):
        brightness = np.asarray(batch).mean(axis=(1, 2, 3)) / 255.0
        return np.stack([brightness * 10, (1 - brightness) * 10, np.zeros_like(brightness)], axis=1)


def _clusters(rng, centre, n=400):
    return rng.normal(centre, 1.0, size=(n, len(centre)))


@pytest.fixture
def gate():
    rng = np.random.default_rng(0)
    centres = {"xray": [0.0, 0.0, 0.0, 0.0], "ct": [8.0, 0.0, 0.0, 0.0]}
    train = {m: _clusters(rng, c) for m, c in centres.items()}
    val = {m: _clusters(rng, c, 200) for m, c in centres.items()}
    return fit_gate(None, train, val, components=4, quantile=0.99), centres


def test_gate_routes_each_cluster_and_flags_far_points(gate):
    fitted, centres = gate
    rng = np.random.default_rng(1)
    for index, modality in enumerate(MODALITIES):
        distances = fitted.distances(_clusters(rng, centres[modality], 500))
        assert np.mean(distances.argmin(axis=1) == index) > 0.99
        assert np.mean(distances.min(axis=1) > fitted.threshold) < 0.03
    far = fitted.distances(_clusters(rng, [4.0, 12.0, -12.0, 0.0], 100))
    assert np.all(far.min(axis=1) > fitted.threshold)


def test_assessment_uses_the_embedding_and_the_threshold():
    rng = np.random.default_rng(2)
    embed = _MeanEmbedding()
    dark, bright = np.full((1, 8, 8, 3), 30.0), np.full((1, 8, 8, 3), 220.0)
    train = {
        "xray": np.asarray(embed(dark)) + rng.normal(0, 0.2, (300, 3)),
        "ct": np.asarray(embed(bright)) + rng.normal(0, 0.2, (300, 3)),
    }
    gate = fit_gate(embed, train, train, components=3)
    assert gate.assess(np.full((100, 100), 30 / 255, np.float32)).predicted == "xray"
    assert gate.assess(np.full((100, 100), 220 / 255, np.float32)).predicted == "ct"
    middle = gate.assess(np.full((100, 100), 0.5, np.float32))
    assert middle.predicted == "other"
    assert middle.score > 1
    assert middle.source == "gate"


@pytest.mark.parametrize(
    ("hint", "dicom_modality", "expected", "source"),
    [
        ("ct", "CT", "ct", "dicom"),
        ("xray", "DX", "xray", "dicom"),
        (None, "MR", "other", "dicom"),
        (None, "us", "other", "dicom"),
        (None, "OT", None, "none"),
        (None, "SC", None, "none"),
    ],
)
def test_dicom_header_is_trusted_before_the_gate(hint, dicom_modality, expected, source):
    image = ChestImage(
        pixels=np.zeros((64, 64), np.float32), name="x.dcm", modality_hint=hint, metadata={"Modality": dicom_modality}
    )
    assessment = assess_modality(image, gate=None)
    assert (assessment.predicted, assessment.source) == (expected, source)


@pytest.mark.parametrize(
    ("dicom_modality", "expected"),
    [("DX", "xray"), ("CR", "xray"), ("CT", "ct"), ("MG", "other"), ("XA", "other"), ("MR", "other")],
)
def test_dicom_modality_of_a_read_file_routes_it(dicom_modality, expected):
    from lungviz.inference.images import load_image
    from tests.images_factory import chest_radiograph, dicom_bytes, dicom_dataset

    stored = np.rint(chest_radiograph(128, 128) * 4095).astype(np.uint16)
    data = dicom_bytes(dicom_dataset(stored, bits_stored=12, Modality=dicom_modality))
    assert assess_modality(load_image(data, "x.dcm"), gate=None).predicted == expected


def test_without_gate_or_header_the_modality_is_unknown():
    image = ChestImage(pixels=np.zeros((64, 64), np.float32), name="x.png", modality_hint=None, metadata={})
    assert assess_modality(image, None).to_dict() == {"predicted": None, "score": None, "source": "none"}


@pytest.fixture(scope="module")
def shipped_gate() -> ModalityGate:
    gate = load_gate(DEFAULT_WEIGHTS_DIR)
    assert gate is not None, f"the repository ships a gate in {DEFAULT_WEIGHTS_DIR}/gate"
    return gate


def test_shipped_gate_calls_natural_images_other(shipped_gate):
    verdicts = [shipped_gate.assess(pixels).predicted for pixels in natural_images().values()]
    assert np.mean([v == "other" for v in verdicts]) >= 0.9


@pytest.mark.parametrize(
    ("modality", "folder"),
    [("xray", "kermany_chest_xray_pneumonia"), ("xray", "nih_chestxray14_pneumonia"), ("ct", "sars_cov2_ct")],
)
def test_shipped_gate_on_real_test_images(shipped_gate, shared_data, modality, folder):
    from lungviz.training import datasets

    data = datasets.load_split(shared_data / folder, "test", datasets.dataset_classes(shared_data / folder), (224, 224))
    sample = data.images[:: max(1, len(data.images) // 40)]
    verdicts = [shipped_gate.assess(image / 255.0).predicted for image in sample]
    assert np.mean([v == modality for v in verdicts]) >= 0.9


def test_shipped_gate_routes_a_full_field_dicom_ct_slice_shown_as_a_picture(shipped_gate):
    """CT_small.dcm rendered as an upload shows it, then judged on its pixels alone (as a PNG export would be)."""
    from lungviz.training.gate import bundled_dicom_ct, dicom_renderings

    verdicts = [shipped_gate.assess(pixels).predicted for pixels in dicom_renderings([bundled_dicom_ct()])]
    assert verdicts.count("ct") >= 3, verdicts
